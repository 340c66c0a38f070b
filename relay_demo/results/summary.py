"""The summary table over the store's points, in pandas (no SQL: ``relay_demo.store`` runs the queries).

:func:`enrich` adds to one (pair, benchmark) group of points what SQL does not say well
(``relay_demo.results.metrics``): APGR against the pair's student and teacher, CPT(50%) / CPT(80%) of each
method's curve, the saving against the accuracy-matched random-query router and the simulated band of the
random-query rows; :func:`mean_rows` averages over a pair's benchmarks as the paper does.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import stats
from ..cost import PARTS
from . import metrics
from .paired import keys
from .views import DTYPE_SEP

METHOD_ORDER = (
    "student",
    "teacher",
    "relay",
    "relay-teacher-free",
    "relay-sft",
    "relay-sft-teacher-free",
    "sft-only",
    "relay-call-bias",
    "random-query",
    "random-token",
    "confidence",
    "router",
)  # tables and legends list methods in this order, others after them
MEAN = "mean"  # the benchmark name of rows averaged over a pair's benchmarks (the paper reports such means)
NO_SAVING = ("student", "teacher", "random-query")
# cost against the teacher alone on the same problems (relay_demo/cost.py; the store's points compute them)
SHARES = ("flops_vs_teacher", "decode_vs_teacher", "prefill_vs_teacher", "wall_vs_teacher")
# 95% intervals: accuracy by Wilson (random-query: its simulated band), call ratio and APGR by a paired
# bootstrap over problems (relay_demo/stats.py); empty on the averaged rows and where a side is missing
INTERVALS = ("acc_lo", "acc_hi", "call_ratio_lo", "call_ratio_hi", "apgr_lo", "apgr_hi")
SUMMARY_COLUMNS = [
    "pair",
    "benchmark",
    "method",
    "param",
    "n",
    "accuracy",
    "call_ratio",
    "flops",
    *SHARES,
    "apgr",
    "cpt50",
    "cpt80",
    "p_star",
    "saving_call",
    "saving_query",
    "saving_flops",
    *INTERVALS,
    "tokens",
    "calls",
    "wall_s",
    *PARTS,
]


def _aligned(student: metrics.Side | None, teacher: metrics.Side | None) -> bool:
    return student is not None and teacher is not None and student.correct.size == teacher.correct.size


def _gap_metrics(points: pd.DataFrame, acc_s: float, acc_t: float) -> None:
    """APGR of every point and CPT(50%) / CPT(80%) of each method's curve, in place."""
    points["apgr"] = [metrics.apgr(a, acc_s, acc_t) for a in points["accuracy"]]
    for _, rows in points.groupby("method"):
        curve = list(zip(rows["call_ratio"], rows["accuracy"], strict=True))
        for x, col in ((0.5, "cpt50"), (0.8, "cpt80")):
            value = metrics.cpt(curve, acc_s, acc_t, x)
            points.loc[rows.index, col] = np.nan if value is None else value


def enrich(group: pd.DataFrame, student, teacher, n_seeds: int, rows: pd.DataFrame) -> pd.DataFrame:
    """``group``'s points with the summary's columns; ``rows``: the group's per-problem rows (intervals)."""
    for col in SUMMARY_COLUMNS:
        if col not in group:
            group[col] = np.nan
    intervals(group, rows)
    if not _aligned(student, teacher):
        return group  # no APGR without both baselines on the same problems
    acc_s, acc_t = student.accuracy, teacher.accuracy
    _gap_metrics(group, acc_s, acc_t)
    for i, row in group.iterrows():
        if row["method"] == "random-query" and not pd.isna(row["param"]):
            sim = metrics.simulate_random_query(student, teacher, float(row["param"]), n_seeds=n_seeds)
            group.loc[i, ["acc_lo", "acc_hi"]] = [sim.lo, sim.hi]
        elif row["method"] not in NO_SAVING:
            s = metrics.saving_vs_random(row["accuracy"], row["call_ratio"], row["flops"], student, teacher)
            group.loc[i, ["p_star", "saving_call", "saving_query", "saving_flops"]] = [
                np.nan if v is None else v for v in (s.p_star, s.saving_call, s.saving_query, s.saving_flops)
            ]
    return group


def intervals(points: pd.DataFrame, rows: pd.DataFrame, seed: int = stats.SEED) -> None:
    """The 95% intervals (:data:`INTERVALS`) of one (pair, benchmark) group of points, in place.

    ``rows``: that group's per-problem rows (method, param, problem_id, correct, teacher_tokens, tokens).
    The settings on the same problems share one set of resampled problems; APGR's interval resamples a
    problem's method, student and teacher rows together, so it needs the three on the same problems."""
    if rows.empty:
        return
    wide = rows.assign(key=keys(rows)).pivot(
        index="problem_id", columns="key", values=["correct", "teacher_tokens", "tokens"]
    )
    present = wide["correct"].notna()
    index = dict(zip(keys(points), points.index, strict=True))
    for _, same in present.T.groupby(list(present.index)):  # settings with the same problems
        sub = wide[present[same.index[0]].to_numpy()]
        settings = [k for k in same.index if k in index]
        if not settings:
            continue
        correct = sub["correct"][settings].to_numpy()
        sides = [sub["correct"][k].to_numpy() for k in ("student", "teacher") if k in same.index]
        s, t = sides if len(sides) == 2 else (None, None)
        ci = stats.setting_intervals(
            correct,
            sub["teacher_tokens"][settings].to_numpy(),
            sub["tokens"][settings].to_numpy(),
            s,
            t,
            seed=seed,
        )
        rows_at = [index[k] for k in settings]
        for name, (lo, hi) in ci.items():
            points.loc[rows_at, f"{name}_lo"], points.loc[rows_at, f"{name}_hi"] = lo, hi
        # Wilson's needs answers; enrich() gives the random-query rows (expectations) their simulated band
        graded = np.isin(correct, (0.0, 1.0)).all(axis=0) & (points.loc[rows_at, "method"] != "random-query")
        if graded.any():
            wilson = [stats.wilson(int(c.sum()), len(c)) for c in correct.T[graded.to_numpy()]]
            points.loc[graded.index[graded], ["acc_lo", "acc_hi"]] = wilson


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    key = df["method"].map(lambda m: rank.get(m, len(rank)))
    order = ["pair", "benchmark", "_rank", "method", "param"]
    df = df.assign(_rank=key).sort_values(order, na_position="first")
    return df.drop(columns="_rank").reset_index(drop=True)


def mean_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Unweighted means over one pair's benchmarks, as the paper reports: one row per (method, param) present
    on every benchmark. APGR, CPT and the paper's saving (``1 - call_ratio / p*``) are recomputed from the
    means; the per-token and FLOPs savings need per-problem data and are left empty."""
    benches = df["benchmark"].nunique()
    if benches < 2:
        return pd.DataFrame(columns=df.columns)
    cols = ["accuracy", "call_ratio", "flops", *SHARES, "tokens", "calls", "wall_s", *PARTS]
    grouped = df.groupby(["method", "param"], dropna=False)
    m = grouped[cols].mean().join(grouped["n"].sum())
    m = m.join(grouped["benchmark"].nunique().rename("b")).reset_index()
    m = m[m["b"] == benches].drop(columns="b").assign(pair=df["pair"].iloc[0], benchmark=MEAN)
    for col in SUMMARY_COLUMNS:
        if col not in m:
            m[col] = np.nan
    base = {k: m.loc[m["method"].eq(k) & m["param"].isna(), "accuracy"] for k in ("student", "teacher")}
    if base["student"].empty or base["teacher"].empty:
        return m[SUMMARY_COLUMNS]
    acc_s, acc_t = float(base["student"].iloc[0]), float(base["teacher"].iloc[0])
    _gap_metrics(m, acc_s, acc_t)
    for i, row in m[~m["method"].isin(NO_SAVING)].iterrows():
        p = metrics.matched_p(row["accuracy"], acc_s, acc_t)
        m.loc[i, "p_star"] = np.nan if p is None else p
        s = metrics.paper_saving(row["accuracy"], row["call_ratio"], acc_s, acc_t)
        m.loc[i, "saving_query"] = np.nan if s is None else s
    return m[SUMMARY_COLUMNS]


def jsonable(value):
    """A JSON-ready value: NaN as null, numpy scalars as Python numbers."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def interval_text(lo, hi, digits: int = 1) -> str:
    """``[lo, hi]`` in percent; blank where the interval is undefined."""
    return "" if pd.isna(lo) or pd.isna(hi) else f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def table(df: pd.DataFrame) -> str:
    """The CLI's summary table: shares in percent, each interval beside its figure."""
    if df.empty:
        return "no results"
    pct = ["accuracy", "call_ratio", *SHARES, "apgr", "cpt50", "cpt80", "saving_call", "saving_query"]
    shown = df[SUMMARY_COLUMNS[: SUMMARY_COLUMNS.index("p_star")] + pct[-2:]].copy()
    for col in pct:
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}%")
    # each interval right after its figure, in percent; call ratios of a few percent need two decimals
    for col, stem, digits in (("apgr", "apgr", 1), ("call_ratio", "call_ratio", 2), ("accuracy", "acc", 1)):
        bounds = zip(df[f"{stem}_lo"], df[f"{stem}_hi"], strict=True)
        ci = [interval_text(lo, hi, digits) for lo, hi in bounds]
        shown.insert(shown.columns.get_loc(col) + 1, f"{col} 95%", ci)
    shown["flops"] = shown["flops"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    shown["param"] = shown["param"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    if not df["wall_mixed"].any():
        return shown.to_string(index=False)
    shown.loc[df["wall_mixed"] & shown["wall_vs_teacher"].ne(""), "wall_vs_teacher"] += "*"
    note = "* wall_vs_teacher: its run was written under several commits; the times may be of different loops"
    return shown.to_string(index=False) + "\n" + note


def no_match(pairs: list[str], benchmarks: list[str], pair: str | None, benchmark: str | None) -> str | None:
    """Why the CLI's filters select nothing, naming what there is (``benchmarks``: those of ``pair``, or
    of every pair); None when they select something. A pair's name selects its rows of each dtype too."""
    if pair is not None and not any(p == pair or p.startswith(pair + DTYPE_SEP) for p in pairs):
        return f"--pair {pair}: no results; pairs with results: {', '.join(pairs) or 'none'}"
    if benchmark is not None and benchmark not in benchmarks:
        of = f" of pair {pair}" if pair else ""
        return f"--benchmark {benchmark}: no results{of}; benchmarks: {', '.join(benchmarks) or 'none'}"
    return None
