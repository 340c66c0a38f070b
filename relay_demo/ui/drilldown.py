"""The Explorer's selected point: its samples, a page at a time, and its paired comparison with a baseline.

A point is a setting (``relay@0``, ``sft-only``: ``relay_demo.results.paired.setting_key``), chosen by a
click on a chart point or a summary row, or in the list. The sample list filters by setting, right/wrong,
called/not called and text, and pages through every match (no setting is out of reach behind another's
rows); the comparison is the store's (``Store.compare``) as an HTML table.

    page = sample_page(store, "tiny-arith", "arith", Filters(setting="relay", outcome="wrong"))
    html = compare_html(store, "tiny-arith", "arith", "relay", "student")
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from ..results import paired
from ..store import Store
from . import render

PAGE = 50  # samples listed at a time
ALL = "all settings"
OUTCOMES = ("any", "right", "wrong")
CALLED = ("any", "called", "not called")
NO_TRACE = ("random-query",)  # computed expectations over two answers: nothing to open


@dataclass(frozen=True)
class Filters:
    setting: str = ALL
    outcome: str = "any"
    called: str = "any"
    text: str = ""  # in the problem id or the response
    page: int = 1
    methods: tuple[str, ...] = ()  # the Explorer's method checkboxes (empty: every method)


@dataclass
class SamplePage:
    choices: list[tuple[str, str]] = field(default_factory=list)  # (label, key) for the dropdown
    page: int = 1
    pages: int = 1
    total: int = 0

    @property
    def note(self) -> str:
        if not self.total:
            return "No sample matches these filters."
        first = (self.page - 1) * PAGE + 1
        last = first + len(self.choices) - 1
        return f"Samples {first}–{last} of {self.total} · page {self.page} of {self.pages}"


def settings(store: Store, pair: str, benchmark: str) -> list[str]:
    """The settings of a benchmark whose rows are answers (what can be opened and compared), in the
    summary's order. Only the rows named exactly ``pair``, as the drill-down opens (a bare name would also
    select its rows of each dtype)."""
    pts = store.points(pair, benchmark, exact=True)
    pts = pts[~pts["method"].isin(NO_TRACE)]
    return list(dict.fromkeys(paired.keys(pts)))


def _where(store: Store, pair: str, benchmark: str, f: Filters) -> tuple[str, list]:
    """SQL conditions and parameters for ``f``; ValueError on a filter that is not one of the choices."""
    if f.outcome not in OUTCOMES or f.called not in CALLED:
        raise ValueError(f"outcome must be one of {OUTCOMES} and called one of {CALLED}")
    conds = ["pair = ?", "benchmark = ?", f"method NOT IN ({', '.join('?' for _ in NO_TRACE)})"]
    params: list = [pair, benchmark, *NO_TRACE]
    if f.methods:
        conds.append(f"method IN ({', '.join('?' for _ in f.methods)})")
        params += list(f.methods)
    if f.setting != ALL:
        rows = store.query(
            "SELECT DISTINCT method, param FROM samples WHERE pair = ? AND benchmark = ?", [pair, benchmark]
        )
        match = rows[paired.keys(rows) == f.setting] if len(rows) else rows
        if match.empty:
            raise ValueError(f"no setting {f.setting!r} on {pair} · {benchmark}")
        conds.append("method = ? AND param IS NOT DISTINCT FROM ?")
        param = match["param"].iloc[0]
        params += [match["method"].iloc[0], None if pd.isna(param) else float(param)]
    conds += {"right": ["correct >= 0.5"], "wrong": ["correct < 0.5"], "any": []}[f.outcome]
    conds += {"called": ["calls > 0"], "not called": ["COALESCE(calls, 0) = 0"], "any": []}[f.called]
    if f.text.strip():
        conds.append("(problem_id ILIKE ? OR response ILIKE ?)")
        params += [f"%{f.text.strip()}%"] * 2
    return " AND ".join(conds), params


def _label(r) -> str:
    key = paired.setting_key(r.method, r.param).replace("@", " ")
    mark = "✓" if r.correct >= 0.5 else "✗"
    calls = f"{int(r.calls or 0)} call{'' if int(r.calls or 0) == 1 else 's'}"
    return f"{key} · {r.problem_id} · {mark} · {calls} · {int(r.teacher_tokens)} teacher tok"


def sample_page(store: Store, pair: str, benchmark: str, f: Filters = Filters()) -> SamplePage:
    """One page of the samples matching ``f`` (the page clamped to those there are)."""
    where, params = _where(store, pair, benchmark, f)
    total = int(store.query(f"SELECT count(*) AS n FROM samples WHERE {where}", params)["n"].iloc[0])
    pages = max(1, math.ceil(total / PAGE))
    page = min(max(1, int(f.page or 1)), pages)
    df = store.query(
        f"SELECT method, param, problem_id, correct, teacher_tokens, calls FROM samples WHERE {where} "
        f"ORDER BY method, param NULLS FIRST, problem_id LIMIT {PAGE} OFFSET {(page - 1) * PAGE}",
        params,
    )
    choices = [(_label(r), sample_key(r.method, r.param, r.problem_id)) for r in df.itertuples(index=False)]
    return SamplePage(choices, page, pages, total)


def sample_key(method: str, param, problem_id: str) -> str:
    return json.dumps([method, None if param is None or pd.isna(param) else float(param), problem_id])


# ---------------------------------------------------------------- the paired comparison


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}%"


def compare_html(store: Store, pair: str, benchmark: str, a: str | None, b: str | None) -> str:
    """The paired table of the selected setting ``a`` against the baseline ``b`` (escaped HTML), or a note
    saying why there is none."""
    if not a or a == ALL:
        return render.note_html("Click a chart point or a summary row to compare that setting.", "info")
    if not b:
        return render.note_html("Pick a baseline under “compare with…”.", "info")
    try:
        c = store.compare(pair, benchmark, a, b)
    except ValueError as e:
        return render.note_html(str(e))
    d, m = c.diff, c.diff.mcnemar
    rows = [
        ("accuracy", _pct(c.a_accuracy), _pct(c.b_accuracy), d.accuracy, d.accuracy_ci),
        ("gap recovered (APGR)", "", "", d.apgr, d.apgr_ci),
    ]
    esc = render.esc
    head = "".join(f"<th>{esc(h)}</th>" for h in ("", c.a, c.b, "difference (A − B)", "95% interval"))
    body = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(x)}</td><td>{esc(y)}</td><td>{esc(paired.points(v))} points</td>"
        f"<td>[{esc(paired.points(lo))}, {esc(paired.points(hi))}]</td></tr>"
        for name, x, y, v, (lo, hi) in rows
    )
    facts = [
        f"On the same {c.n} problems (runs: {', '.join(c.runs)}).",
        f"{c.a} right where {c.b} is wrong: {m.a_only}; the reverse: {m.b_only}; "
        f"exact McNemar p = {m.p:.2g}.",
        paired.verdict(c),
    ]
    return (
        f'<table class="relay-compare"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        + "".join(f"<p>{esc(t)}</p>" for t in facts)
        + f'<p id="compare-power">{esc(paired.power_line(c))}</p>'
    )


def pick_key(value: str | None, pair: str | None, benchmark: str | None) -> str | None:
    """The setting a chart click names (``relay@0``, or ``relay@0|pair|benchmark`` on the every-pair APGR
    chart); None when it is another pair's or benchmark's point."""
    if not value or not isinstance(value, str):
        return None
    key, *where = value.split("|")
    return key if not where or where == [pair, benchmark] else None


def row_key(row: list | None) -> str | None:
    """The setting of a clicked summary-table row (its method and param cells as displayed)."""
    if not row or len(row) < 2 or not row[0]:
        return None
    method, param = str(row[0]), str(row[1] or "").strip()
    try:
        return paired.setting_key(method, float(param) if param and param != render.NA else None)
    except ValueError:
        return None
