"""The call inspector: click a teacher or command span to see why that call happened, what it asked and
got, what it cost, and what the student alone would have written in its place.

A finished answer keeps an *inspection record* (:func:`record`): the pair, both models' prompt ids, the
response ids, the relay's per-call records (``RelayResult.call_log``), the policy, limits and sampling it ran
with and, when the prompt is one of the pair's examples with a known answer, that answer. The student's own
tokens in a call's place are computed only on a click (greedy, calls blocked; cached per call in
:mod:`relay_demo.calls`), so they never delay a stream. "Continue without this call" compares like with like:
the answer from the call on beside the relay continued from the same place with the same policy, sampling
and limits, only that call blocked (:mod:`relay_demo.relay.branch`).

    rec = record("tiny-random", pair, result, messages, policy=policy, limits=limits, sampling=sampling)
    html = call_html(rec, 0, alone=student_text)                 # the panel for the first call
    html = continue_html(rec, 0, branch)                         # both endings side by side
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import gradio as gr

from .. import pairs
from ..backends.base import Sampling, chat_ids
from ..calls import ended_text, student_alone
from ..protocol import strip_commands
from ..relay.branch import teacher_view, without_call
from . import render

# Delegated click: the chat's HTML is re-rendered while it streams, its container stays.
CLICK_JS = """
element.addEventListener('click', (e) => {
  const span = e.target.closest('[data-call]');
  if (!span) return;
  const turn = span.closest('[data-turn]');
  trigger('inspect', {turn: turn ? Number(turn.dataset.turn) : 0, call: Number(span.dataset.call)});
});
element.addEventListener('keydown', (e) => {
  if ((e.key === 'Enter' || e.key === ' ') && e.target.closest('[data-call]')) {
    e.preventDefault();
    e.target.click();
  }
});
"""
EMPTY = "Click a teacher or command span of a finished answer to inspect that call."
NOTHING = '<span class="relay-empty">(nothing)</span>'


def record(pair_name: str, pair, result, messages: list[dict], *, policy, limits, sampling: Sampling) -> dict:
    """What the inspector needs of one finished answer (kept in the Gradio state, per user): ``messages`` the
    prompt it answered; ``policy``, ``limits`` and ``sampling`` what it ran with."""
    return {
        "pair": pair_name,
        "prompt_ids": list(result.prompt_ids),
        "teacher_prompt_ids": chat_ids(pair.teacher.tokenizer, messages, pair.chat_kwargs),
        "token_ids": list(result.token_ids),
        "calls": [c.to_json() for c in result.call_log],
        "max_tokens": limits.max_tokens,  # the answer's own limit
        "policy": policy,
        "limits": limits,
        "sampling": sampling,
        "seed_row": 0,  # stream.generate runs each answer as the only row, row 0, of its own batch
        "gold": pairs.example_answer(pair_name, messages[-1]["content"]),
        "spans": [
            {"source": s.source, "text": s.text, "tokens": len(s.token_ids), "call": s.call}
            for s in result.spans
        ],
    }


def _get(rec: dict | None, k) -> dict | None:
    calls = (rec or {}).get("calls") or []
    return calls[k] if isinstance(k, int) and 0 <= k < len(calls) else None


def _teacher_text(rec: dict, k: int) -> str:
    return "".join(s["text"] for s in rec["spans"] if s["source"] == "teacher" and s.get("call") == k)


def _rows(c: dict) -> str:
    # a command's N as the student wrote it, then what the caps (max N, the tokens left) granted
    asked = f"N written {c['asked']}" if c["trigger"] == "command" else f"asked {c['asked']}"
    if c["granted"] != c["asked"]:
        asked += f" · granted {c['granted']} (capped)"
    cells = [
        ("trigger", c["detail"]),
        ("tokens", f"{asked} · written {c['written']}"),
        ("span ended", ended_text(c["ended"])),
        ("teacher", f"{c['teacher_s']:.3g} s · prefilled {c['prefill']} tokens to catch up"),
        ("at", f"response token {c['at']}"),
    ]
    return "".join(f"<tr><th>{render.esc(k)}</th><td>{render.esc(v)}</td></tr>" for k, v in cells)


def _side(title: str, source: str, text: str, extra: str = "", elem: str = "", tokens: int = 0) -> str:
    body = render.span_html(source, text, tokens, source) if text else NOTHING
    ident = f' id="{elem}"' if elem else ""
    return (
        f'<div class="relay-side"{ident}><h5>{render.esc(title)}</h5>'
        f'<div class="relay-out">{body}</div>{extra}</div>'
    )


def call_html(rec: dict | None, k: int | None, alone: str | None = None, error: str = "") -> str:
    """The panel for call ``k``: its record, the teacher's span and (once computed) the student's own."""
    c = _get(rec, k)
    if c is None:
        return render.note_html(EMPTY, "info")
    n = len(rec["calls"])
    if error:
        own = render.note_html(error)
    elif alone is None:
        own = '<span class="relay-empty">computing the student\'s own tokens…</span>'
    else:
        own = ""
    sides = _side(
        f"teacher wrote ({c['written']} tokens)", "teacher", _teacher_text(rec, k), tokens=c["written"]
    )
    student = alone if alone is not None else ""
    sides += _side(
        f"student alone, greedy, in its place ({c['granted']} tokens at most)",
        "student",
        student,
        own,
        elem="inspector-student",
        tokens=c["granted"],
    )
    return (
        f'<div class="relay-inspector"><h4>Call {k + 1} of {n}</h4><table>{_rows(c)}</table>'
        f'<div class="relay-sides">{sides}</div></div>'
    )


def verdict_html(answer: str | None, gold: str | None) -> str:
    from ..answers import answers_match

    shown = render.esc(answer) if answer else "no final answer"
    if gold is None or answer is None:
        return f'<div class="relay-answer">Final answer: <b>{shown}</b></div>'
    ok = answers_match(answer, gold)
    mark = '<span class="relay-right">right</span>' if ok else '<span class="relay-wrong">wrong</span>'
    expected = render.esc(gold)
    return f'<div class="relay-answer">Final answer: <b>{shown}</b> · {mark} (expected {expected})</div>'


def continue_html(rec: dict | None, k: int | None, branch: dict | None, error: str = "") -> str:
    """The answer as given (from call ``k`` on) beside the relay continued from there without that call
    (``branch``: its ``spans`` and ``token_ids``), what differs between them and, where the teacher wrote what
    the student writes there itself, that the call changed nothing."""
    from ..answers import extract_answer

    c = _get(rec, k)
    if c is None:
        return render.note_html(EMPTY, "info")
    if error:
        return render.note_html(error)
    if branch is None:
        return render.note_html(
            f"Continuing from call {k + 1} without it (same policy and sampling)…", "info"
        )
    before, after = _split_at(rec, c["at"])
    full_with = strip_commands("".join(s["text"] for s in rec["spans"]))
    ending = "".join(s["text"] for s in branch["spans"])
    full_without = strip_commands(before + ending)
    sides = "".join(
        f'<div class="relay-side" id="{elem}"><h5>{render.esc(title)}</h5><div class="relay-out">'
        # calls are not clickable here: an ending's spans only show who wrote what
        f"{render.spans_html({**s, 'call': None} for s in spans) or NOTHING}</div>"
        f"{verdict_html(extract_answer(full), rec.get('gold'))}</div>"
        for elem, title, spans, full in (
            ("continue-with", f"as answered, with call {k + 1}", after, full_with),
            ("continue-without", f"without call {k + 1}, the rest as before", branch["spans"], full_without),
        )
    )
    notes = [_what_differs(rec, k)]
    if _changed_nothing(rec, c, branch):
        notes.append(
            f"The teacher wrote exactly what the student writes here itself ({c['written']} tokens): "
            f"call {k + 1} changed nothing."
            + (" Both endings are the same." if full_with == full_without else "")
        )
    note = "".join(f'<p class="relay-differs">{render.esc(n)}</p>' for n in notes)
    return f'<div class="relay-inspector">{note}<div class="relay-sides">{sides}</div></div>'


def _what_differs(rec: dict, k: int) -> str:
    s: Sampling = rec["sampling"]
    how = "greedy" if s.temperature == 0 else f"temperature {s.temperature:g}, seed {s.seed}"
    how += f", top-p {s.top_p:g}" if s.top_p < 1 else ""
    text = (
        f"Both endings run from the same text with the same policy ({rec['policy'].describe()}), sampling "
        f"({how}) and limits, later calls included; only call {k + 1} is blocked, at that one position."
    )
    if s.temperature > 0:
        text += (
            " Sampled: the draws after this point are not the ones the answer used, so part of any "
            "difference is chance (at temperature 0 only the call differs)."
        )
    return text


def _changed_nothing(rec: dict, c: dict, branch: dict) -> bool:
    """Whether the student, without the call, writes the teacher's tokens in their place (after its own
    command, which is text where the call is blocked)."""
    skip = (
        branch["spans"][0]["tokens"] if branch["spans"] and branch["spans"][0]["source"] == "command" else 0
    )
    teacher = rec["token_ids"][c["start"] : c["start"] + c["written"]]
    return bool(teacher) and branch["token_ids"][skip : skip + len(teacher)] == teacher


def _split_at(rec: dict, at: int) -> tuple[str, list[dict]]:
    """The response text before token ``at`` and the spans from there on (a call always starts a span)."""
    before, after, pos = [], [], 0
    for s in rec["spans"]:
        if pos + s["tokens"] <= at:
            before.append(s["text"])
        else:
            after.append(s)
        pos += s["tokens"]
    return "".join(before), after


def inspect(get_pair, rec: dict | None, k: int | None) -> Iterator[str]:
    """Panel for call ``k``: at once with the record, then with the student's own tokens."""
    c = _get(rec, k)
    yield call_html(rec, k)
    if c is None:
        return
    try:
        pair = get_pair(rec["pair"])
        _, text, _ = student_alone(pair, rec["prompt_ids"], rec["token_ids"], c["at"], max(1, c["granted"]))
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        yield call_html(rec, k, error=f"Could not run the student: {e}")
        return
    yield call_html(rec, k, alone=text)


def branch(pair, rec: dict, k: int):
    """The relay of record ``rec`` continued from call ``k`` with that call blocked (a ``RelayResult``)."""
    at, tok = rec["calls"][k]["at"], pair.teacher.tokenizer
    ids = (
        rec["prompt_ids"] + rec["token_ids"][:at],
        rec["teacher_prompt_ids"] + teacher_view(rec["spans"], rec["token_ids"], at, tok),
    )
    limits = replace(rec["limits"], max_calls=max(0, rec["limits"].max_calls - k))  # k calls were made
    return without_call(
        pair, rec["policy"], ids, limits, rec["sampling"], max_tokens=max(1, rec["max_tokens"] - at),
        seed_row=rec["seed_row"],
    )  # fmt: skip


def continue_without(get_pair, rec: dict | None, k: int | None) -> Iterator[str]:
    """Both endings of call ``k``: a note at once, then the relay continued from it without the call."""
    c = _get(rec, k)
    yield continue_html(rec, k, None)
    if c is None:
        return
    try:
        r = branch(get_pair(rec["pair"]), rec, k)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        yield continue_html(rec, k, None, error=f"Could not continue without the call: {e}")
        return
    spans = [{"source": x.source, "text": x.text, "tokens": len(x.token_ids)} for x in r.spans]
    yield continue_html(rec, k, {"spans": spans, "token_ids": list(r.token_ids)})


def build(trace: gr.HTML, get_record, records: gr.State, prefix: str, get_pair) -> tuple:
    """Under a trace whose HTML was built with ``js_on_load=CLICK_JS``: the panel, the button, the wiring.

    ``get_record(records_value, turn) -> record | None`` picks the inspected answer from the state. Returns
    the components a new answer clears (panel, chosen call, continuation), for ``cleared()``."""
    ids = {"panel": "call-inspector", "button": "inspect-continue", "out": "call-continue"}
    if prefix:
        ids = {k: f"{prefix}-{v}" for k, v in ids.items()}
    panel = gr.HTML(render.note_html(EMPTY, "info"), elem_id=ids["panel"], js_on_load=None)
    button = gr.Button("Continue without this call", elem_id=ids["button"], size="sm")
    out = gr.HTML("", elem_id=ids["out"], js_on_load=None)
    chosen = gr.State(None)  # (turn, call) of the inspected call

    def on_inspect(value, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        turn, k = data.get("turn"), data.get("call")
        if not isinstance(turn, int) or not isinstance(k, int):
            yield render.note_html(EMPTY, "info"), None, ""
            return
        rec = get_record(value, turn)
        for html in inspect(get_pair, rec, k):
            yield html, (turn, k), ""

    def on_continue(value, sel):
        if not sel:
            yield render.note_html("Click a teacher or command span first.", "info")
            return
        turn, k = sel
        yield from continue_without(get_pair, get_record(value, turn), k)

    common = {"concurrency_id": "relay", "show_progress": "minimal", "api_visibility": "private"}
    trace.inspect(on_inspect, records, [panel, chosen, out], **common)
    button.click(on_continue, [records, chosen], out, **common)
    return panel, chosen, out


def cleared() -> tuple:
    """What ``build``'s components show when the answer they inspected is replaced by a new one."""
    return render.note_html(EMPTY, "info"), None, ""
