"""Rows of an evaluation run's samples table (``relay_demo.results.parts.SCHEMA``), for ``offline.evaluate``.

:func:`result_row` turns one ``RelayResult`` into a graded row; :func:`random_query_rows` computes the
random-query router's rows, the exact per-problem expectation at each ``p`` from the run's student and teacher
rows (never generated).
"""

from __future__ import annotations

import json
import math

from offline.tasks import grade_response
from offline.tasks.base import Problem
from relay_demo.cost import PARTS
from relay_demo.results.manifest import RANDOM_QUERY as RANDOM_QUERY


def result_row(cfg, method: str, param: float | None, problem: Problem, result) -> dict:
    """One samples row from a RelayResult, graded with the benchmark's own extraction (cfg: an EvalCfg)."""
    g = grade_response(problem.benchmark, result.text, problem, time_limit=cfg.grading_time_limit)
    spans = [{"source": s.source, "text": s.text, "tokens": len(s.token_ids)} for s in result.spans]
    return {
        "run_id": cfg.run_id,
        "pair": cfg.pair,
        "method": method,
        "param": param,
        "benchmark": problem.benchmark,
        "problem_id": problem.id,
        "correct": float(g.correct),
        "student_tokens": float(result.student_tokens),
        "teacher_tokens": float(result.teacher_tokens),
        "command_tokens": float(result.command_tokens),
        "calls": float(result.calls),
        "flops": float(result.flops),
        "wall_s": float(result.wall_s),
        "response": result.text,
        "spans": json.dumps(spans),
        "extracted": g.extracted,
        "finish_reason": result.finish_reason,
        **{k: float(getattr(result, k)) for k in PARTS},
    }


EXPECTED = (
    *("correct", "student_tokens", "teacher_tokens", "command_tokens", "calls", "flops", "wall_s"),
    *PARTS,
)


def _expectation(p: float, s: float, t: float) -> float | None:
    """(1 - p) s + p t; None (a null) where a student or teacher row predates a column (NaN)."""
    value = (1 - p) * s + p * t
    return None if math.isnan(value) else value


def random_query_rows(cfg, samples, benchmark: str, ps: list[float]) -> list[dict]:
    """Per-problem expectations of the random-query router from this run's student and teacher rows."""
    sel = samples[(samples["benchmark"] == benchmark) & samples["param"].isna()]
    s = sel[sel["method"] == "student"].set_index("problem_id")
    t = sel[sel["method"] == "teacher"].set_index("problem_id")
    common = sorted(set(s.index) & set(t.index))
    rows = []
    for p in ps:
        for pid in common:
            row = {c: _expectation(p, float(s.at[pid, c]), float(t.at[pid, c])) for c in EXPECTED}
            rows.append(
                {
                    **row,
                    "run_id": cfg.run_id,
                    "pair": cfg.pair,
                    "method": RANDOM_QUERY,
                    "param": float(p),
                    "benchmark": benchmark,
                    "problem_id": pid,
                    "response": "",
                    "spans": json.dumps({"expectation_of": ["student", "teacher"], "p": p}),
                    "extracted": None,
                    "finish_reason": "computed",
                }
            )
    return rows
