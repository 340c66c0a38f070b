"""The selected pair's purpose line and example prompts above a prompt box, swapped when the pair changes.

Examples come from the registry (``examples:`` in ``relay_demo/pairs.yaml``), so the toy shows problems of its
own task and a real pair GSM8K-style ones; clicking one fills the prompt box.
"""

from __future__ import annotations

import gradio as gr

from .. import pairs


def purpose_md(name: str | None) -> str:
    try:
        return f"**{name}**: {pairs.purpose(name)}" if name else ""
    except ValueError:  # an unknown pair: the sidebar's status line says why
        return ""


def samples(name: str | None) -> list[list[str]]:
    try:
        return [[e] for e in pairs.examples(name)] if name else []
    except ValueError:
        return []


def hint(name: str | None, prompt: str | None) -> str | None:
    """The off-task hint for ``prompt`` on pair ``name`` (None when it fits or the pair is unknown)."""
    try:
        return pairs.off_task_hint(name, prompt or "") if name and (prompt or "").strip() else None
    except ValueError:
        return None


def build(prompt: gr.Textbox, pair: gr.Dropdown, prefix: str) -> None:
    """Call inside the tab's layout, under ``prompt``; ``pair`` is the sidebar's pair dropdown."""
    purpose = gr.Markdown(purpose_md(pair.value), elem_id=f"{prefix}-purpose")
    ds = gr.Dataset(
        components=[prompt],
        samples=samples(pair.value),
        label="Examples that fit this pair",
        elem_id=f"{prefix}-examples",
        samples_per_page=6,
    )
    ds.click(lambda s: s[0] if s else gr.skip(), ds, prompt, queue=False, api_visibility="private")
    pair.change(
        lambda name: (purpose_md(name), gr.Dataset(samples=samples(name))),
        pair,
        [purpose, ds],
        queue=False,
        api_visibility="private",
    )
