"""The Explorer's summary table as shown: each figure formatted, "n/a" where it is undefined, and under the
table a legend that says why each n/a is there (a blank cell reads as a missing result).

    shown = summary_table(summary)    # strings: one column per TABLE_COLUMNS label, 95% intervals beside
    html = na_legend(summary)         # "n/a, where a figure is undefined. A method without a knob: param
                                      # (student, teacher). ..."; empty when no cell is n/a
"""

from __future__ import annotations

import math
from collections import defaultdict

import pandas as pd

from ..cost import DEFINITIONS
from ..results.paired import setting_key
from ..results.summary import MEAN, NO_SAVING, SHARES, interval_text
from . import render

NA = render.NA
PCT = (
    "accuracy",
    "call_ratio",
    *SHARES,
    "apgr",
    "cpt50",
    "cpt80",
    "saving_call",
    "saving_query",
    "saving_flops",
)
TABLE_COLUMNS = {
    "method": "method",
    "param": "param",
    "n": "n",
    "accuracy": "accuracy",
    "call_ratio": "call ratio",
    "flops": "FLOPs / problem",
    "flops_vs_teacher": "FLOPs vs teacher",
    "decode_vs_teacher": "decode vs teacher",
    "prefill_vs_teacher": "prefill vs teacher",
    "wall_vs_teacher": "wall vs teacher",
    "apgr": "APGR",
    "cpt50": "CPT 50%",
    "cpt80": "CPT 80%",
    "saving_call": "saving: calls",
    "saving_query": "saving: queries (paper)",
    "saving_flops": "saving: FLOPs",
}
# each figure's 95% interval (relay_demo/results/summary.py, INTERVALS) in a column right after it
INTERVAL_COLUMNS = {"accuracy": ("acc", 1), "call_ratio": ("call_ratio", 2), "apgr": ("apgr", 1)}
COST_HELP = render.definitions_html(  # under the table: what its cost columns measure
    (TABLE_COLUMNS[k], DEFINITIONS[k]) for k in SHARES
)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(col: str, v) -> str:
    if _missing(v):
        return NA
    if col in PCT:
        return f"{100 * v:.2f}%"
    if col == "flops":
        return render.fmt_flops(float(v))
    if col == "param":
        return f"{v:g}"
    return str(int(v)) if col == "n" else str(v)


def _interval(df: pd.DataFrame, stem: str, digits: int) -> list[str]:
    lo, hi = (df[f"{stem}_{e}"] if f"{stem}_{e}" in df else [math.nan] * len(df) for e in ("lo", "hi"))
    return [interval_text(a, b, digits) or NA for a, b in zip(lo, hi, strict=True)]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Summary rows formatted for display (percentages with their 95% intervals, FLOPs with units, n/a where
    a figure is undefined). A click on a row opens that setting's samples (its method and param cells name
    it)."""
    shown = pd.DataFrame(
        {label: [_fmt(col, v) for v in df[col]] if col in df else [] for col, label in TABLE_COLUMNS.items()}
    )
    for col, (stem, digits) in INTERVAL_COLUMNS.items():
        at = shown.columns.get_loc(TABLE_COLUMNS[col]) + 1
        shown.insert(at, f"{TABLE_COLUMNS[col]} 95%", _interval(df, stem, digits))
    wall = TABLE_COLUMNS["wall_vs_teacher"]
    marked = _mixed(df) & shown[wall].ne(NA).to_numpy()
    shown.loc[marked, wall] = shown.loc[marked, wall] + "*"
    return shown


MIXED = (
    "its run was written under several git commits, so its times and the teacher's may be of different loops"
)


def _mixed(df: pd.DataFrame):
    """Rows whose wall-time ratio mixes loops (``store.summary``'s ``wall_mixed``), as a boolean array."""
    if "wall_mixed" not in df:
        return pd.Series(False, index=range(len(df))).to_numpy()
    return df["wall_mixed"].fillna(False).astype(bool).to_numpy()


def mixed_note(df: pd.DataFrame) -> str:
    """Under the table, where some wall-time ratio is marked: what the mark means."""
    if not (_mixed(df) & df.get("wall_vs_teacher", pd.Series(dtype=float)).notna().to_numpy()).any():
        return ""
    return f'<div class="relay-defs"><b>*</b> {render.esc(TABLE_COLUMNS["wall_vs_teacher"])}: {MIXED}.</div>'


GAP = "needs the student's and the teacher's answers to the same problems, and a gap between them"


def why_na(col: str, r) -> str:
    """Why row ``r``'s figure ``col`` (a summary column; ``<figure>_95`` for an interval) is undefined."""
    if col == "param":
        return "a method without a knob"
    if col in ("decode_vs_teacher", "prefill_vs_teacher") and not _missing(r["flops_vs_teacher"]):
        return "its run recorded no FLOPs split into decode and prefill"
    if col in SHARES:
        return "no answer of the teacher alone on the same problems of the same run to divide by"
    if col in ("apgr", "apgr_95", "cpt50", "cpt80") and _missing(r["apgr"]):
        return GAP
    if col == "apgr_95" and r["benchmark"] != MEAN:
        return (
            "the paired bootstrap over problems needs the student's and the teacher's answers to this "
            "setting's problems, and a gap between them in every resample (a few problems can tie)"
        )
    if col in ("cpt50", "cpt80"):
        return "the method's settings never reach that share of the gap between the student and the teacher"
    if col.startswith("saving"):
        if r["method"] in NO_SAVING:
            return "the student, the teacher and the random router are what a saving is measured against"
        if r["call_ratio"] <= 0:
            return (
                "it never calls (another student, not a mix of the student and the teacher): no call to save"
            )
        if _missing(r["p_star"]):
            return "no mix of the student and the teacher has its accuracy (it beats the teacher)"
        if r["p_star"] == 0:
            return "no better than the student: the random router matches it without a call"
    if r["benchmark"] == MEAN:
        return "a mean over benchmarks: this figure needs each problem's answers"
    return "not defined for this row"


def na_legend(df: pd.DataFrame) -> str:
    """Under the table: for each reason, the columns it empties and the settings it empties them for."""
    cells = [(c, label) for c, label in TABLE_COLUMNS.items()]
    cells += [(f"{c}_95", f"{TABLE_COLUMNS[c]} 95%") for c in INTERVAL_COLUMNS]
    shown = summary_table(df)
    empty: dict[str, dict[str, list[str]]] = defaultdict(
        lambda: defaultdict(list)
    )  # reason -> setting -> cols
    for i, (_, r) in enumerate(df.iterrows()):
        for col, label in cells:
            if shown[label].iloc[i] == NA:
                empty[why_na(col, r)][setting_key(r["method"], r["param"])].append(label)
    parts = []
    for why, settings in empty.items():
        by_cols: dict[tuple, list[str]] = defaultdict(list)
        for key, labels in settings.items():
            by_cols[tuple(labels)].append(key)
        where = "; ".join(f"{', '.join(c)} ({_names(keys, df)})" for c, keys in by_cols.items())
        parts.append(f"<li>{render.esc(why[0].upper() + why[1:])}: {render.esc(where)}.</li>")
    if not parts:
        return ""
    return f'<div class="relay-defs"><b>{NA}</b>, where a figure is undefined:<ul>{"".join(parts)}</ul></div>'


def _names(keys: list[str], df: pd.DataFrame) -> str:
    """The settings as written, a method's name alone where all its settings are there."""
    out = []
    for method in dict.fromkeys(k.split("@")[0] for k in keys):
        mine = [k for k in keys if k.split("@")[0] == method]
        every = [setting_key(m, p) for m, p in zip(df["method"], df["param"], strict=True) if m == method]
        out += [method] if len(mine) == len(every) else mine
    return ", ".join(out)
