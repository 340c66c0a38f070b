"""The Gradio app: ``build_demo(...) -> gr.Blocks`` with four tabs (Playground, Compare, Explorer, About).

    from relay_demo.ui import build_demo, launch_options, QUEUE
    demo = build_demo()                       # nothing loads here: models load on the first generation
    demo.queue(**QUEUE).launch(**launch_options())

``app.py`` does exactly that with host and port from arguments or the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..pairs import ROOT
from .render import CSS

# A 2-core CPU Space: generations are serialized per pair anyway (Pair.lock), so two workers suffice to
# keep one generating while the next one prepares; up to 32 events wait, later ones get "queue full".
QUEUE = {"default_concurrency_limit": 2, "max_size": 32}
DEFAULT_RESULTS = ROOT / "results"
# The settings sidebar starts open (a desktop wants it); on a phone it would cover the page, so it folds there
# once the page has loaded, through Gradio's own toggle (the user can open it again).
FOLD_SIDEBAR_ON_PHONE = """() => {
  if (window.innerWidth >= 768) return;
  const bar = document.querySelector('.sidebar');
  const toggle = document.querySelector('[aria-label="Toggle Sidebar"]');
  if (bar && toggle && bar.classList.contains('open')) toggle.click();
}"""


def launch_options() -> dict:
    """What ``Blocks.launch`` needs for the app to look right (Gradio 6 takes css/theme at launch)."""
    import gradio as gr

    return {"css": CSS, "theme": gr.themes.Soft(primary_hue="cyan", secondary_hue="amber")}


def build_demo(results_dir: str | Path | None = None, *, hosted: bool | None = None):
    """The app. ``results_dir``: the results folder the Explorer reads (default: ``$RELAY_RESULTS_DIR`` or
    ``results/``). ``hosted``: public-Space restrictions (default: ``$RELAY_HOSTED``)."""
    import gradio as gr

    from . import about, compare, explorer, handlers, playground, settings

    results = Path(results_dir or os.environ.get("RELAY_RESULTS_DIR") or DEFAULT_RESULTS)
    hosted = handlers.hosted() if hosted is None else hosted
    with gr.Blocks(title="RelayLLM Studio", analytics_enabled=False, fill_width=True) as demo:
        gr.Markdown(
            "## RelayLLM Studio · a small student writes, a large teacher takes over when called\n"
            + ("*Hosted mode: registered pairs only.*" if hosted else "")
        )
        ctl = settings.build(hosted)
        with gr.Tabs():
            playground.build(ctl, hosted)
            compare.build(ctl, hosted)
            explorer.build(results)
            about.build(results, ctl.components["pair"])
        demo.load(None, js=FOLD_SIDEBAR_ON_PHONE)
    return demo
