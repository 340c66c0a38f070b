"""Cost metrics of a collaboration method against its student and teacher.

APGR, CPT, the random-query router and the saving against it.

Pure functions over numbers and numpy arrays (no I/O); ``relay_demo.store`` calls them on query results.

Definitions (``acc_s``, ``acc_t``: accuracy of the student alone and of the teacher alone, same problems):

* **call ratio**: the teacher's share of response tokens, ``teacher_tokens / (student + command + teacher
  tokens)`` summed over the problems (the paper's "call ratio").
* **APGR** (average performance gap recovered): ``(acc - acc_s) / (acc_t - acc_s)``; 1 means teacher level.
* **CPT(x)** (call-performance threshold, RouteLLM): the smallest call ratio at which a method's curve reaches
  ``acc_s + x * (acc_t - acc_s)``, interpolating linearly between its points sorted by call ratio,
  starting from the student at call ratio 0. None when the curve never gets there.
* **random-query router** at ``p``: each whole query goes to the teacher with probability ``p``, else to the
  student. Expected accuracy ``(1-p) acc_s + p acc_t`` (exactly, per problem); its call ratio is the ratio of
  expected teacher tokens to expected tokens, ``p T_t / (p T_t + (1-p) T_s)`` with ``T_s``, ``T_t`` the total
  response tokens of the student and teacher runs; its FLOPs ``(1-p) F_s + p F_t``.
* **accuracy-matched router**: ``p* = (acc - acc_s) / (acc_t - acc_s)``, the share of queries the random
  router must send to the teacher to reach a method's accuracy (undefined when ``acc > acc_t`` or there is
  no gap).
* **saving** against it: ``1 - call_ratio / router_call_ratio(p*)`` (teacher-token share, the default),
  ``1 - call_ratio / p*`` (the paper's figure, which compares the relay's token share with the router's query
  share), and ``1 - flops / router_flops(p*)`` (total FLOPs). The paper's 98.2% is the second:
  Qwen3-1.7B -> 8B relay 49.52% at 1.07% call ratio, student 42.50%, teacher 54.12% -> p* = 60.4%,
  1 - 1.07 / 60.4 = 98.2%. When the two models write answers of similar length the first two agree.
  A method that never calls the teacher (call ratio 0: an SFT- or GRPO-only student, the relay student with
  calls blocked) has no saving: its accuracy is another student's, not a mix of these two models, and
  "saving 100%" would credit the teacher for tokens it never wrote.

    >>> apgr(0.4952, 0.4250, 0.5412)   # ~0.604
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _gap(acc_s: float, acc_t: float) -> float | None:
    gap = acc_t - acc_s
    return gap if abs(gap) > 1e-12 else None


def apgr(acc: float, acc_s: float, acc_t: float) -> float:
    """Share of the student -> teacher accuracy gap recovered; NaN when the two are equal."""
    gap = _gap(acc_s, acc_t)
    return (acc - acc_s) / gap if gap is not None else math.nan


def cpt(points: Sequence[tuple[float, float]], acc_s: float, acc_t: float, x: float) -> float | None:
    """Smallest call ratio reaching ``x`` of the gap on the curve ``[(call_ratio, accuracy), ...]``.

    The curve starts at the student, ``(0, acc_s)``. Points are sorted by call ratio; the crossing is
    linearly interpolated between the last point below the target and the first at or above it.
    """
    if not 0 <= x <= 1:
        raise ValueError(f"x must be in [0, 1], got {x}")
    gap = _gap(acc_s, acc_t)
    if gap is None or gap < 0:
        return None  # no gap to recover (or the "teacher" is worse): CPT is not defined
    target = acc_s + x * gap - 1e-12  # accuracies are means of 0/1: do not miss an exact hit by rounding
    curve = [(0.0, acc_s)] + sorted((float(c), float(a)) for c, a in points)
    if curve[0][1] >= target:
        return 0.0
    for (c0, a0), (c1, a1) in itertools.pairwise(curve):
        if a1 >= target:  # the first crossing; every earlier point is below target, so a0 < target <= a1
            return c0 + (target - a0) * (c1 - c0) / (a1 - a0)
    return None


# ---------------------------------------------------------------- random-query router


@dataclass(frozen=True)
class Side:
    """Per-problem results of one model alone (aligned with the other side on the same problems)."""

    correct: np.ndarray  # 0/1 per problem
    tokens: np.ndarray  # response tokens per problem
    teacher_tokens: np.ndarray  # tokens written by the teacher (0 for the student run, all for the teacher)
    flops: np.ndarray

    @classmethod
    def of(cls, correct, tokens, teacher_tokens, flops) -> Side:
        arrays = [np.asarray(a, dtype=float) for a in (correct, tokens, teacher_tokens, flops)]
        if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
            raise ValueError("correct, tokens, teacher_tokens and flops must be 1-D arrays of one length")
        return cls(*arrays)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.correct.size else math.nan


def _check_pair(student: Side, teacher: Side) -> None:
    if student.correct.shape != teacher.correct.shape:
        raise ValueError(
            f"student and teacher cover different problem counts: "
            f"{student.correct.size} vs {teacher.correct.size}"
        )
    if student.correct.size == 0:
        raise ValueError("no problems")


def _check_p(p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")


@dataclass(frozen=True)
class RouterPoint:
    p: float  # share of queries sent to the teacher
    accuracy: float
    call_ratio: float  # expected teacher tokens / expected response tokens
    flops: float  # expected FLOPs per problem


def random_query(student: Side, teacher: Side, p: float) -> RouterPoint:
    """Exact expectation of the random-query router at ``p`` over the problems."""
    _check_pair(student, teacher)
    _check_p(p)
    acc = (1 - p) * student.accuracy + p * teacher.accuracy
    t_tok = (1 - p) * student.teacher_tokens.sum() + p * teacher.teacher_tokens.sum()
    all_tok = (1 - p) * student.tokens.sum() + p * teacher.tokens.sum()
    flops = (1 - p) * student.flops.mean() + p * teacher.flops.mean()
    return RouterPoint(p, float(acc), float(t_tok / all_tok) if all_tok else 0.0, float(flops))


@dataclass(frozen=True)
class Simulation:
    p: float
    mean: float  # mean accuracy over seeds
    lo: float  # lower edge of the band (percentile)
    hi: float


def simulate_random_query(
    student: Side, teacher: Side, p: float, *, n_seeds: int = 1000, seed: int = 0, band: float = 0.95
) -> Simulation:
    """Accuracy of the random-query router drawn ``n_seeds`` times (RouteLLM's random router), with a band.

    Each draw sends every problem independently to the teacher with probability ``p``; the band holds the
    central ``band`` share of the draws' accuracies.
    """
    _check_pair(student, teacher)
    _check_p(p)
    if n_seeds < 1 or not 0 < band < 1:
        raise ValueError(f"need n_seeds >= 1 and 0 < band < 1, got {n_seeds}, {band}")
    rng = np.random.default_rng(seed)
    to_teacher = rng.random((n_seeds, student.correct.size)) < p
    accs = np.where(to_teacher, teacher.correct, student.correct).mean(axis=1)
    lo, hi = np.quantile(accs, [(1 - band) / 2, (1 + band) / 2])
    return Simulation(p, float(accs.mean()), float(lo), float(hi))


def matched_p(acc: float, acc_s: float, acc_t: float) -> float | None:
    """Share of queries the random router must send to the teacher to reach ``acc`` (None if it cannot)."""
    gap = _gap(acc_s, acc_t)
    if gap is None or gap < 0:
        return None
    p = (acc - acc_s) / gap
    if p > 1 + 1e-12:
        return None  # better than the teacher: no mix of the two reaches it
    return min(max(p, 0.0), 1.0)


@dataclass(frozen=True)
class Saving:
    """A method's cost against the accuracy-matched random-query router (see the module docstring)."""

    p_star: float | None
    router_call_ratio: float | None
    router_flops: float | None
    saving_call: float | None  # 1 - call_ratio / router_call_ratio(p*)
    saving_query: float | None  # 1 - call_ratio / p* (the paper's 98.2%)
    saving_flops: float | None  # 1 - flops / router_flops(p*)


def _one_minus_ratio(a: float, b: float | None) -> float | None:
    return None if b is None or b <= 0 else 1 - a / b


def saving_vs_random(acc: float, call_ratio: float, flops: float, student: Side, teacher: Side) -> Saving:
    """Saving of a method (``acc`` at ``call_ratio``, ``flops`` per problem) vs the matched router."""
    p = matched_p(acc, student.accuracy, teacher.accuracy)
    if p is None:
        return Saving(None, None, None, None, None, None)
    router = random_query(student, teacher, p)
    if call_ratio <= 0:  # another student, not a mix of the two (module docstring)
        return Saving(p, router.call_ratio, router.flops, None, None, None)
    return Saving(
        p,
        router.call_ratio,
        router.flops,
        _one_minus_ratio(call_ratio, router.call_ratio),
        _one_minus_ratio(call_ratio, p),
        _one_minus_ratio(flops, router.flops),
    )


def paper_saving(relay_acc: float, relay_call_ratio: float, acc_s: float, acc_t: float) -> float | None:
    """The paper's headline: ``1 - relay_call_ratio / p*`` from aggregate numbers only."""
    p = matched_p(relay_acc, acc_s, acc_t)
    return _one_minus_ratio(relay_call_ratio, p) if relay_call_ratio > 0 else None
