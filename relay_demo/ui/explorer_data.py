"""The Explorer's logic as plain functions over a results folder (``relay_demo.store``, ``.charts``).

Each call opens a fresh read-only :class:`relay_demo.store.Store`: results written while the app runs show
up on the next refresh, and no DuckDB connection is shared between users' threads.

    view = explorer_view("results", "tiny-arith", "arith", ["relay", "confidence"], log_x=True, reported=True)
    view.accuracy_fig, view.flops_fig, view.table, view.samples
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import charts, reported
from ..store import MEAN, Store
from . import drilldown, render
from .drilldown import Filters
from .provenance import provenance_html
from .summary_cells import TABLE_COLUMNS, mixed_note, na_legend, summary_table

Y_AXES = ("accuracy", "apgr")
# the second chart's x: FLOPs per problem, or decode FLOPs against the teacher alone on the same problems
COST_AXES = ("flops", "decode")


@dataclass
class ExplorerView:
    accuracy_fig: object | None = None
    flops_fig: object | None = None
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(TABLE_COLUMNS.values())))
    samples: list[tuple[str, str]] = field(default_factory=list)  # (label, key) for the drill-down
    note: str = ""
    na_legend: str = ""  # HTML under the table: why its n/a cells are undefined
    provenance: str = ""  # HTML: the runs behind the charts, from their manifests


def open_store(results_dir: str | Path) -> tuple[Store, list[str]]:
    """A store over ``results_dir`` and what it left out (``Store.skipped``), as text for the UI.

    Not the warnings caught while it opens: catching them is process-wide, so it also caught other threads'
    (Gradio's queue deprecating a pandas keyword) and showed them in the Explorer's note."""
    store = Store(results_dir)
    return store, [f"skipping {path}: {why}" for path, why in store.skipped]


def filters(results_dir: str | Path, pair: str | None = None) -> dict:
    """Choices for the filters: pairs, the benchmarks of ``pair`` (default: the first), methods present.

    Only the rows named exactly ``pair``, as the pair list names them (a bare name would also select its
    ``<pair> · <dtype>`` rows: two student rows of two dtypes under one label)."""
    store, _ = open_store(results_dir)
    pairs = store.pairs()
    pair = pair if pair in pairs else (pairs[0] if pairs else None)
    benchmarks = store.benchmarks(pair, exact=True) if pair else []
    if len(benchmarks) > 1:
        benchmarks = [*benchmarks, MEAN]
    methods = sorted(set(store.points(pair, exact=True)["method"])) if pair else []
    return {
        "pairs": pairs,
        "pair": pair,
        "benchmarks": benchmarks,
        "benchmark": benchmarks[0] if benchmarks else None,
        "methods": methods,
    }


def explorer_view(
    results_dir: str | Path,
    pair: str | None,
    benchmark: str | None,
    methods: list[str] | None,
    *,
    log_x: bool = False,
    show_reported: bool = True,
    y_axis: str = "accuracy",
    cost_axis: str = "flops",
) -> ExplorerView:
    """Charts, summary table and drill-down choices for one pair and benchmark, restricted to ``methods``.

    ``y_axis="apgr"``: the first chart draws every pair and benchmark of the store on the share of the gap
    recovered (student 0, teacher 1), where pairs compare fairly and the paper's reported point may stand. On
    the accuracy axis the paper's points appear only on the paper's own pair. ``cost_axis="decode"``: the
    second chart's x is decode FLOPs against the teacher alone on the same problems (relay_demo/cost.py)."""
    if y_axis not in Y_AXES:
        raise ValueError(f"y_axis must be one of {Y_AXES}, got {y_axis!r}")
    if cost_axis not in COST_AXES:
        raise ValueError(f"cost_axis must be one of {COST_AXES}, got {cost_axis!r}")
    if not pair or not benchmark:
        return ExplorerView(note="No results yet: run an evaluation (offline/evaluate.py) to fill results/.")
    store, skipped = open_store(results_dir)
    one = None if benchmark == MEAN else benchmark
    summary = store.summary(pair, one, mean=benchmark == MEAN, exact=True)
    summary = summary[summary["benchmark"] == benchmark]
    if methods:
        summary = summary[summary["method"].isin(methods)]
    note = "; ".join(skipped)
    if summary.empty:
        return ExplorerView(note=note or f"No rows for pair {pair}, benchmark {benchmark} and these methods.")
    title = f"{pair} · {benchmark}"
    if y_axis == "apgr":
        every = store.summary(None, None)
        if methods:
            every = every[every["method"].isin(methods)]
        paper = pd.DataFrame(reported.apgr_points()) if show_reported else None
        first = charts.apgr_vs_call_ratio(
            every, log_x=log_x, reported=paper, title="Share of the gap recovered vs call ratio · every pair"
        )
    else:  # another pair's accuracy is not comparable: the paper's points only on the paper's own pair
        paper = pd.DataFrame(reported.points()) if show_reported and pair == reported.PAIR else None
        first = charts.accuracy_vs_call_ratio(
            summary, log_x=log_x, reported=paper, title=f"Accuracy vs call ratio · {title}"
        )
    if cost_axis == "decode":
        cost_fig = charts.decode_vs_accuracy(
            summary, title=f"Accuracy vs decode FLOPs, teacher alone = 100 · {title}"
        )
    else:
        cost_fig = charts.flops_vs_accuracy(summary, title=f"Accuracy vs FLOPs per problem · {title}")
    view = ExplorerView(
        accuracy_fig=first,
        flops_fig=cost_fig,
        table=summary_table(summary),
        na_legend=na_legend(summary) + mixed_note(summary),
        note=note,
        provenance=provenance_html(store.manifests, pair, store.run_ids(pair)),
    )
    if benchmark != MEAN:
        view.samples = drilldown.sample_page(
            store, pair, benchmark, Filters(methods=tuple(methods or ()))
        ).choices
    return view


def open_samples(
    results_dir, pair, benchmark, f: Filters
) -> tuple[list[tuple[str, str]], str | None, int, str]:
    """The drill-down after a filter, a page or a click: (choices, the first one's key, page, note HTML)."""
    if not pair or not benchmark or benchmark == MEAN:
        return [], None, 1, render.note_html("Pick a pair and one benchmark to list its samples.", "info")
    store, _ = open_store(results_dir)
    try:
        page = drilldown.sample_page(store, pair, benchmark, f)
    except ValueError as e:
        return [], None, 1, render.note_html(str(e))
    first = page.choices[0][1] if page.choices else None
    return page.choices, first, page.page, render.note_html(page.note, "info")


def drill_settings(results_dir, pair, benchmark) -> list[str]:
    """What the drill-down's setting list and the "compare with…" list offer."""
    if not pair or not benchmark or benchmark == MEAN:
        return []
    store, _ = open_store(results_dir)
    return drilldown.settings(store, pair, benchmark)


def comparison(results_dir, pair, benchmark, setting, baseline) -> str:
    """The paired table of the selected setting against the baseline (HTML)."""
    if not pair or not benchmark or benchmark == MEAN:
        return render.note_html("Pick a pair and one benchmark to compare settings.", "info")
    store, _ = open_store(results_dir)
    return drilldown.compare_html(store, pair, benchmark, setting, baseline)


SOURCES = ("student", "teacher", "command")


def trace_spans(raw) -> list[dict]:
    """The spans of a samples row when they are a trace (a list of {source, text}), else [] (a random-query
    row stores the expectation it was computed from as an object; a damaged file may store anything)."""
    try:
        spans = json.loads(raw or "[]")
    except (TypeError, ValueError):
        return []
    if not isinstance(spans, list):
        return []
    ok = [
        s
        for s in spans
        if isinstance(s, dict) and s.get("source") in SOURCES and isinstance(s.get("text"), str)
    ]
    return ok if len(ok) == len(spans) else []


def _row_trace(row, pair: str) -> str:
    spans = trace_spans(row["spans"])
    if not spans:  # no trace recorded: show the response as the student's
        spans = [
            {"source": "student", "text": row["response"] or "", "tokens": int(row["student_tokens"] or 0)}
        ]
    param = row["param"]
    head = (
        f"{row['method']}{'' if pd.isna(param) else f' {param:g}'} · {row['problem_id']} · "
        f"{'correct' if row['correct'] >= 0.5 else 'wrong'} · extracted {row['extracted'] or '–'} · "
        f"student {int(row['student_tokens'])} / teacher {int(row['teacher_tokens'])} / command "
        f"{int(row['command_tokens'])} tokens · {int(row['calls'])} calls"
    )
    names = {"student": f"{pair} student", "teacher": f"{pair} teacher"}
    return f'<div class="relay-answer">{render.esc(head)}</div>' + render.trace_html(
        spans, names, empty="(empty response)"
    )


def sample_trace(results_dir: str | Path, pair: str | None, benchmark: str | None, key: str | None) -> str:
    """One evaluated sample's relay trace, coloured like the Playground, with its outcome; then the same
    problem as every other method setting answered it, side by side (random-query rows are expectations: no
    trace)."""
    if not key or not pair or not benchmark:
        return render.note_html("Pick a sample to see who wrote which tokens.", "info")
    try:
        method, param, problem_id = json.loads(key)
    except (ValueError, TypeError):
        return render.note_html(f"Not a sample key: {key!r}")
    store, _ = open_store(results_dir)
    df = store.query(
        "SELECT * FROM samples WHERE pair = ? AND benchmark = ? AND problem_id = ? "
        "ORDER BY method, param NULLS FIRST",
        [pair, benchmark, problem_id],
    )
    chosen = df[(df["method"] == method) & (df["param"].isna() if param is None else df["param"] == param)]
    if chosen.empty:
        return render.note_html("That sample is not in the results any more.")
    others = df.drop(chosen.index)
    others = others[others["method"] != "random-query"]  # expectations over two answers, not a trace
    html = _row_trace(chosen.iloc[0], pair) + render.legend_html()
    if len(others):
        cols = "".join(f'<div class="relay-side">{_row_trace(r, pair)}</div>' for _, r in others.iterrows())
        html += (
            f"<h4>Every other method on {render.esc(problem_id)}</h4>"
            f'<div class="relay-sides" id="sample-sides">{cols}</div>'
        )
    return html


def runs_markdown(results_dir: str | Path) -> str:
    """The runs in the results folder, with the machine each ran on (for the About tab)."""
    store, _ = open_store(results_dir)
    if not store.manifests:
        return "No evaluation runs in results/ yet."
    lines = ["| run | pair | finished | machine |", "|---|---|---|---|"]
    for m in store.manifests:
        mach = m.get("machine") or {}
        where = f"{mach.get('processor', '?')}, {mach.get('cpus', '?')} CPUs, {mach.get('platform', '')}"
        cells = [
            m.get("run_id"),
            (m.get("config") or {}).get("pair"),
            m.get("finished_at") or f"not finished (last written {m.get('updated_at') or '?'})",
            where,
        ]
        lines.append("| " + " | ".join(str(c or "").replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)
