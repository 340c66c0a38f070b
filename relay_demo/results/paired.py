"""Two method settings compared problem by problem (pandas over the store's per-problem rows; no SQL).

A setting is named ``METHOD`` or ``METHOD@PARAM`` (``relay@0``, ``sft-only``), as the store's CLI and the
Explorer write it. :func:`compare` pairs the two settings' answers by problem, refuses rows that are not on
the same problems, and returns a :class:`Comparison` (``relay_demo.stats.Difference`` plus who is who);
:func:`verdict` says it in words.

    cmp = compare(rows, "relay@1", "sft-only")        # rows: method, param, problem_id, correct, run_id
    verdict(cmp)  # "relay@1 is ahead of sft-only by 4.0 points, 95% interval [...]; exact McNemar p = ..."
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import stats


def setting_key(method: str, param) -> str:
    """``relay@0``, ``confidence@0.3``; a method without a knob is its name alone."""
    return method if param is None or pd.isna(param) else f"{method}@{float(param):g}"


def keys(rows: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [setting_key(m, p) for m, p in zip(rows["method"], rows["param"], strict=True)], rows.index
    )


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    a_accuracy: float
    b_accuracy: float
    runs: tuple[str, ...]  # the runs the two settings' rows come from
    diff: stats.Difference

    @property
    def n(self) -> int:
        return self.diff.mcnemar.n


def _answers(rows: pd.DataFrame, key: str, known: list[str], where: str) -> pd.DataFrame:
    mine = rows[keys(rows) == key] if len(rows) else rows
    if mine.empty:
        raise ValueError(f"no setting {key!r} on {where}; settings there: {', '.join(known) or 'none'}")
    if not mine["correct"].isin((0.0, 1.0)).all():
        raise ValueError(
            f"{key} rows are expectations computed from the student and teacher rows, not answers: "
            "no paired test on them"
        )
    return mine.set_index("problem_id").sort_index()


def _same_problems(a: pd.DataFrame, b: pd.DataFrame, ka: str, kb: str) -> None:
    if a.index.equals(b.index):
        return
    common = len(a.index.intersection(b.index))
    runs = ", ".join(sorted({*a["run_id"], *b["run_id"]}))
    raise ValueError(
        f"{ka} and {kb} are not on the same problems: {len(a)} and {len(b)} problems, {common} in common "
        f"(runs {runs}); a paired comparison needs two settings evaluated on the same problems"
    )


def _baseline(rows: pd.DataFrame, method: str, index: pd.Index) -> np.ndarray | None:
    """The student's or teacher's answers on exactly these problems, or None."""
    side = rows[(rows["method"] == method) & rows["param"].isna()].set_index("problem_id").sort_index()
    return side["correct"].to_numpy() if side.index.equals(index) else None


def compare(rows: pd.DataFrame, a: str, b: str, *, where: str = "these results", seed: int = stats.SEED):
    """Paired comparison of settings ``a`` and ``b`` over ``rows`` (one pair and benchmark: method, param,
    problem_id, correct, run_id). ValueError, saying why, when a setting is missing, holds expectations,
    or the two are not on the same problems."""
    known = sorted(set(keys(rows))) if len(rows) else []
    ra, rb = _answers(rows, a, known, where), _answers(rows, b, known, where)
    _same_problems(ra, rb, a, b)
    student, teacher = _baseline(rows, "student", ra.index), _baseline(rows, "teacher", ra.index)
    diff = stats.accuracy_difference(
        ra["correct"].to_numpy(), rb["correct"].to_numpy(), student, teacher, seed=seed
    )
    runs = tuple(sorted({*ra["run_id"], *rb["run_id"]}))
    return Comparison(a, b, float(ra["correct"].mean()), float(rb["correct"].mean()), runs, diff)


def points(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:+.1f}"  # undefined: no gap in some resample


def verdict(c: Comparison) -> str:
    """The comparison in one sentence: who leads by how much, the interval, the test and what it means."""
    d, (lo, hi), p = c.diff.accuracy, c.diff.accuracy_ci, c.diff.mcnemar.p
    if d == 0:
        lead = f"{c.a} and {c.b} are level"
    else:
        lead = f"{c.a} is {'ahead of' if d > 0 else 'behind'} {c.b} by {100 * abs(d):.1f} points"
    noise = "more than noise" if p < 0.05 else "within noise"
    return f"{lead}, 95% interval [{points(lo)}, {points(hi)}]; exact McNemar p = {p:.2g}: {noise}"


def power_line(c: Comparison) -> str:
    """What n problems can show, from the observed discordance (80% power, two-sided alpha 0.05)."""
    share, d = c.diff.mcnemar.discordance, c.diff.detectable
    if math.isnan(d):
        why = (
            "no problem is answered differently"
            if share == 0
            else "too few problems are answered differently"
        )
        return f"power: {why}; on {c.n} problems no difference is detectable with 80% power"
    return (
        f"power: with {100 * share:.1f}% of the {c.n} problems answered differently, a paired test detects "
        f"a difference of {100 * d:.1f} points 80% of the time (two-sided, alpha 0.05)"
    )


def report(pair: str, benchmark: str, c: Comparison) -> str:
    """The comparison as ``store compare`` prints it: a table, the counts, the power, the verdict."""
    d = c.diff
    runs = ", ".join(c.runs)
    rows = [
        ("accuracy", f"{100 * c.a_accuracy:.1f}%", f"{100 * c.b_accuracy:.1f}%", d.accuracy, d.accuracy_ci),
        ("APGR", "", "", d.apgr, d.apgr_ci),
    ]
    table = pd.DataFrame(
        [
            [name, a, b, f"{points(x)} points", f"[{points(lo)}, {points(hi)}]"]
            for name, a, b, x, (lo, hi) in rows
        ],
        columns=["", c.a, c.b, "difference (A - B)", "95% interval"],
    )
    m = d.mcnemar
    return "\n".join(
        [
            f"{pair} · {benchmark} · A = {c.a} against B = {c.b} on the same {c.n} problems (runs: {runs})",
            table.to_string(index=False),
            f"discordant: {c.a} right / {c.b} wrong on {m.a_only}, the reverse on {m.b_only}; "
            f"exact McNemar p = {m.p:.2g}",
            power_line(c),
            f"verdict: {verdict(c)}",
        ]
    )


def as_json(c: Comparison) -> dict:
    """The comparison as ``store compare --json`` prints it (nan as null)."""
    d, m = c.diff, c.diff.mcnemar
    out = {
        "a": c.a,
        "b": c.b,
        "n": c.n,
        "runs": list(c.runs),
        "a_accuracy": c.a_accuracy,
        "b_accuracy": c.b_accuracy,
        "accuracy_diff": d.accuracy,
        "accuracy_diff_lo": d.accuracy_ci[0],
        "accuracy_diff_hi": d.accuracy_ci[1],
        "apgr_diff": d.apgr,
        "apgr_diff_lo": d.apgr_ci[0],
        "apgr_diff_hi": d.apgr_ci[1],
        "a_only": m.a_only,
        "b_only": m.b_only,
        "mcnemar_p": m.p,
        "discordance": m.discordance,
        "detectable_diff": d.detectable,
        "verdict": verdict(c),
    }
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}  # valid JSON
