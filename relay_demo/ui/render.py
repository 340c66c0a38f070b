"""HTML for the app: every piece of model or user text is escaped here, and nowhere else builds markup.

Spans are coloured by who wrote them (student, teacher, command) with a legend; each span carries a
``title`` (hover) naming the model and its token count. Control characters a random model may write are
shown as Unicode control pictures (U+2400..) so the HTML stays valid and the user sees something.

    html = spans_html([{"source": "teacher", "text": "x<y", "tokens": 2}], names={"teacher": "tiny/teacher"})
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping

from .. import cost
from ..protocol import visible

SOURCES = ("student", "teacher", "command")
COLOURS = {"student": "#1f2937", "teacher": "#0e7490", "command": "#b45309"}
BACKGROUNDS = {"student": "transparent", "teacher": "#cffafe", "command": "#fef3c7"}
LABELS = {"student": "student", "teacher": "teacher", "command": "<call>N</call> command"}
NA = "n/a"  # a figure that is undefined (the Explorer's summary table; a row click reads it as no param)

CSS = """
.relay-out { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 14px; line-height: 1.6;
             white-space: pre-wrap; word-break: break-word; }
.relay-span { border-radius: 3px; padding: 0 1px; }
.relay-student { color: #1f2937; }
.relay-teacher { color: #0e7490; background: #cffafe; font-weight: 600; }
.relay-command { color: #b45309; background: #fef3c7; font-style: italic; }
.relay-legend { display: flex; gap: 14px; flex-wrap: wrap; font-size: 13px; margin: 2px 0 6px 0; }
.relay-legend .relay-span { padding: 1px 6px; }
.relay-chat { display: flex; flex-direction: column; gap: 10px; max-height: 520px; overflow-y: auto;
              padding: 8px; border: 1px solid #e5e7eb; border-radius: 8px; background: #ffffff;
              min-height: 120px; }
.relay-msg { padding: 8px 12px; border-radius: 10px; max-width: 92%; }
.relay-user { align-self: flex-end; background: #eef2ff; color: #1e1b4b; white-space: pre-wrap;
              word-break: break-word; }
.relay-bot { align-self: flex-start; background: #f9fafb; border: 1px solid #e5e7eb; }
.relay-role { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: #6b7280;
              margin-bottom: 2px; }
.relay-empty { color: #9ca3af; font-style: italic; }
.relay-counters { display: grid; grid-template-columns: repeat(auto-fit, minmax(96px, 1fr)); gap: 6px; }
.relay-counter { border: 1px solid #e5e7eb; border-radius: 8px; padding: 6px 8px; background: #fafafa; }
.relay-counter b { display: block; font-size: 16px; color: #111827; overflow-wrap: anywhere; }
.relay-counter span { font-size: 11px; color: #6b7280; text-transform: uppercase; letter-spacing: .04em; }
.relay-note { padding: 8px 12px; border-radius: 8px; border: 1px solid; font-size: 14px; }
.relay-error { background: #fef2f2; border-color: #fca5a5; color: #991b1b; }
.relay-info { background: #eff6ff; border-color: #bfdbfe; color: #1e3a8a; }
.relay-answer { margin-top: 6px; font-size: 13px; color: #374151; }
.relay-sides { display: flex; gap: 10px; overflow-x: auto; padding-bottom: 6px; }
.relay-side { flex: 0 0 min(360px, 85vw); border: 1px solid #e5e7eb; border-radius: 8px; padding: 6px; }
.relay-span[data-call] { cursor: pointer; }
.relay-span[data-call]:hover, .relay-span[data-call]:focus { outline: 2px solid #0e7490;
                                                              outline-offset: 1px; }
.relay-inspector { border: 1px solid #bae6fd; border-radius: 8px; padding: 8px 12px; background: #f0f9ff;
                   font-size: 14px; }
.relay-inspector h4 { margin: 0 0 6px 0; }
.relay-inspector .relay-differs { margin: 0 0 6px 0; font-size: 13px; color: #374151; }
.relay-inspector table { border-collapse: collapse; margin-bottom: 8px; border: none; }
.relay-inspector tr { border: none; border-bottom: 1px solid #e0f2fe; }
.relay-inspector th, .relay-inspector td { border: none; padding: 2px 10px 2px 0; background: none; }
.relay-inspector th { text-align: left; white-space: nowrap; vertical-align: top;
                      color: #374151; font-weight: 600; }
.relay-inspector td { overflow-wrap: anywhere; }
.relay-inspector .relay-side h5 { margin: 0 0 4px 0; font-size: 12px; text-transform: uppercase;
                                  letter-spacing: .04em; color: #6b7280; }
.relay-inspector .relay-sides { flex-wrap: wrap; overflow-x: visible; }
.relay-inspector .relay-side { flex: 1 1 260px; min-width: 0; overflow-wrap: anywhere; }
.relay-right { color: #166534; font-weight: 600; }
.relay-wrong { color: #991b1b; font-weight: 600; }
.relay-defs { font-size: 12px; color: #4b5563; }
.relay-provenance th { text-align: left; padding-right: 10px; white-space: nowrap; vertical-align: top; }
.relay-provenance td { overflow-wrap: anywhere; }
"""


def esc(text: str) -> str:
    """Escape for HTML text and attribute values (quotes included)."""
    return html.escape(visible(str(text)), quote=True)


def span_html(source: str, text: str, tokens: int, model: str, call: int | None = None) -> str:
    """One span; a teacher or command span of a call carries ``data-call`` (clicked: the call inspector)."""
    source = source if source in SOURCES else "student"
    title = f"{model} · {tokens} token{'s' if tokens != 1 else ''}"
    if not text:
        return ""
    extra = ""
    if isinstance(call, int) and source != "student":
        title += f" · click to inspect call {call + 1}"
        extra = f' data-call="{call}" tabindex="0" role="button"'
    return (
        f'<span class="relay-span relay-{source}" data-source="{source}" data-tokens="{tokens}"{extra} '
        f'title="{esc(title)}">{esc(text)}</span>'
    )


def spans_html(spans: Iterable[Mapping], names: Mapping[str, str] | None = None) -> str:
    """Spans ({source, text, tokens}) as coloured, hoverable HTML (no wrapper)."""
    names = names or {}
    out = []
    for s in spans:
        src = s.get("source", "student")
        model = names.get("teacher" if src == "teacher" else "student", src)
        if src == "command":
            model = f"{model} (command)"
        out.append(span_html(src, s.get("text", ""), int(s.get("tokens", 0)), model, s.get("call")))
    return "".join(out)


def legend_html() -> str:
    items = "".join(f'<span class="relay-span relay-{s}">{esc(LABELS[s])}</span>' for s in SOURCES)
    hint = "<span>(hover a span for model and tokens)</span>"
    return f'<div class="relay-legend"><span>Written by:</span>{items}{hint}</div>'


def trace_html(spans: Iterable[Mapping], names: Mapping[str, str] | None = None, empty: str = "") -> str:
    body = spans_html(spans, names)
    return f'<div class="relay-out">{body or f"<span class=relay-empty>{esc(empty)}</span>"}</div>'


def chat_html(turns: Iterable[Mapping], names: Mapping[str, str] | None = None) -> str:
    """The conversation: user turns as escaped text, assistant turns as coloured spans."""
    parts = []
    for i, t in enumerate(turns):
        parts.append(
            f'<div class="relay-msg relay-user"><div class="relay-role">you</div>{esc(t["user"])}</div>'
        )
        spans = t.get("spans") or []
        body = spans_html(spans, t.get("names") or names) or '<span class="relay-empty">…</span>'
        parts.append(
            f'<div class="relay-msg relay-bot" data-turn="{i}"><div class="relay-role">relay · '
            f"{esc(t.get('policy', ''))}"
            f'</div><div class="relay-out">{body}</div></div>'
        )
    if not parts:
        parts.append('<div class="relay-empty">Ask something, or pick an example below.</div>')
    return f'<div class="relay-chat" id="relay-chat">{"".join(parts)}</div>'


def fmt_flops(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


COUNTER_HELP = {  # what each counter means, on hover (the cost figures' definitions are relay_demo/cost.py's)
    "student tokens": "tokens the student wrote (its text and end token; commands counted apart)",
    "teacher tokens": "tokens the teacher wrote when the student handed over",
    "command tokens": "tokens of the student's <call>N</call> commands",
    "calls": "handoffs to the teacher",
    "call ratio": "teacher tokens ÷ all response tokens",
    "FLOPs": cost.DEFINITIONS["flops"] + "; estimated while streaming, exact at the end",
    "FLOPs vs teacher alone": cost.DEFINITIONS["flops_vs_teacher"],
    "student FLOPs": cost.DEFINITIONS["flops_student"],
    "teacher decode FLOPs": cost.DEFINITIONS["flops_teacher_decode"],
    "teacher prefill FLOPs": cost.DEFINITIONS["flops_teacher_prefill"],
    "wall time": cost.DEFINITIONS["wall_s"],
    "wall vs teacher alone": cost.DEFINITIONS["wall_vs_teacher"],
    "finished": "why the answer ended: an end token, the token budget, the time limit",
    "tokens/s": "response tokens per second of this answer, as streamed",
}


def fmt_share(x: float, estimate: bool = False) -> str:
    """A share of the teacher alone's cost: one decimal under 10%, none above; '–' when unknown; '~' before an
    estimate (while streaming, from the spans seen so far: the exact figure replaces it at the end)."""
    if x is None or math.isnan(x):
        return "–"
    return ("~" if estimate else "") + (f"{100 * x:.1f}%" if 100 * x < 9.95 else f"{100 * x:.0f}%")


def _wall_share(c: Mapping, share: float) -> tuple[str, str]:
    """The measured wall time against the teacher alone's, and what the hover adds about that run."""
    if c.get("teacher_alone_wall_s"):
        tokens = sum(c.get(k, 0) for k in ("student_tokens", "teacher_tokens", "command_tokens"))
        return fmt_share(share), (
            f"; here {c['wall_s']:.3g} s ({tokens} tokens) against {c['teacher_alone_wall_s']:.3g} s for the "
            f"teacher alone ({c.get('teacher_alone_tokens', '?')} tokens)"
        )
    why = c.get("teacher_alone_note") or "not measured"
    return "–", f"; {why}"


def counters_html(c: Mapping) -> str:
    """Live counters: tokens by source, calls, call ratio, FLOPs split against the teacher alone, wall time;
    each with its definition on hover."""
    ratio = c.get("call_ratio", 0.0)
    share = cost.shares({"teacher_alone_flops": 0.0, **c})
    cells = [
        ("student tokens", str(c.get("student_tokens", 0)), ""),
        ("teacher tokens", str(c.get("teacher_tokens", 0)), ""),
        ("command tokens", str(c.get("command_tokens", 0)), ""),
        ("calls", str(c.get("calls", 0)), ""),
        ("call ratio", f"{100 * ratio:.1f}%", ""),
        ("FLOPs", fmt_flops(c.get("flops", 0.0)) + ("" if c.get("final") else " (est.)"), ""),
        *(
            (name, fmt_share(share[key], estimate=not c.get("final")), "")
            for name, key in (
                ("FLOPs vs teacher alone", "flops"),
                ("student FLOPs", "flops_student"),
                ("teacher decode FLOPs", "flops_teacher_decode"),
                ("teacher prefill FLOPs", "flops_teacher_prefill"),
            )
        ),
    ]
    if c.get("final"):
        cells.append(("wall time", f"{c.get('wall_s', 0.0):.3g} s", ""))
        cells.append(("wall vs teacher alone", *_wall_share(c, share["wall_s"])))
        cells.append(("finished", c["finish"].replace("_", " "), ""))
    if c.get("tok_s"):
        cells.append(("tokens/s", f"{c['tok_s']:.0f}", ""))
    body = "".join(
        f'<div class="relay-counter" data-counter="{esc(k)}" title="{esc(COUNTER_HELP[k] + more)}">'
        f"<b>{esc(v)}</b><span>{esc(k)}</span></div>"
        for k, v, more in cells
    )
    return f'<div class="relay-counters">{body}</div>'


def definitions_html(items: Iterable[tuple[str, str]]) -> str:
    """Figures' names, each with its definition on hover and written out beside it (small print)."""
    body = "; ".join(f'<b title="{esc(d)}">{esc(k)}</b>: {esc(d)}' for k, d in items)
    return f'<div class="relay-defs">{body}</div>'


def note_html(text: str, kind: str = "error") -> str:
    """A message box (kind: error | info); empty text gives empty HTML."""
    if not text:
        return ""
    return f'<div class="relay-note relay-{"error" if kind == "error" else "info"}">{esc(text)}</div>'
