"""Intervals and paired tests for the figures the store reports: pure functions over per-problem arrays.

The methods of one run answer the same problems, so they are compared problem by problem (paired), which is
much tighter than two independent intervals. Everything that resamples takes a seed, so a table regenerates
identically.

* :func:`wilson`: a 95% interval for an accuracy (k right of n), Wilson's score interval.
* :func:`bootstrap_ci`: percentile intervals of statistics of sums over problems resampled with replacement
  (``scipy.stats.bootstrap`` draws the problems), the rows of one problem kept together: the method's, the
  student's, the teacher's. Each resample's sums are one matrix product, so a benchmark's every setting
  shares one set of resamples and a summary of 40 settings takes a fraction of a second.
* :func:`apgr_ci`, :func:`call_ratio_ci`, :func:`setting_intervals`, :func:`accuracy_difference`: the
  store's uses of it.
* :func:`mcnemar`: discordant counts and the exact McNemar p-value of two methods' 0/1 answers.
* :func:`detectable_difference`: the smallest accuracy difference a paired test finds with 80% power at a
  given n and discordance (Connor's normal approximation for McNemar's test).

    wilson(56, 200)                              # (0.2222, 0.3460)
    mcnemar(a_correct, b_correct).p              # exact two-sided
    detectable_difference(200, 0.12)             # ~0.068: 6.8 points
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for ``k`` successes of ``n``; (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _binary(x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1 or not np.isin(a, (0.0, 1.0)).all():
        raise ValueError("answers must be a 1-D array of 0/1 grades (an expectation is not an answer)")
    return a


def _resampled_sums(columns: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray]):
    """``statistic`` of the column sums over resampled problems, as scipy's bootstrap calls it: it passes
    problem indices (``idx``, shape (..., n)); each resample's counts times ``columns`` (n x k) are its sums,
    one matrix product for every column at once."""
    n = columns.shape[0]

    def over(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx)
        flat = idx.reshape(-1, n)
        offsets = n * np.arange(len(flat))[:, None]
        counts = np.bincount((flat + offsets).ravel(), minlength=flat.size).reshape(flat.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = statistic((counts @ columns).T)  # (m, resamples)
        return out.reshape(out.shape[0], *idx.shape[:-1])

    return over


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    columns,
    *,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of ``statistic(sums)``, where ``sums`` (k x resamples) are the sums of the k
    ``columns`` (n problems x k, one row per problem) over problems resampled with replacement: the same
    problems for every column, so the rows of one problem stay together (a paired bootstrap). ``statistic``
    returns m statistics per resample (m x resamples); nan where some resample leaves one undefined."""
    x = np.asarray(columns, dtype=float)
    if x.ndim != 2:
        raise ValueError("columns must be a 2-D array: one row per problem, one column per series")
    with np.errstate(divide="ignore", invalid="ignore"):
        m = statistic(x.sum(axis=0)[:, None]).shape[0]  # how many statistics
    if x.shape[0] < 2:
        return np.full(m, np.nan), np.full(m, np.nan)
    # a nan statistic is the answer (undefined), not a warning scipy words for another case (BCa's)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            (np.arange(x.shape[0]),),
            _resampled_sums(x, statistic),
            vectorized=True,
            method="percentile",  # BCa fails on degenerate data (a method against itself)
            n_resamples=n_resamples,
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
        )
    ci = res.confidence_interval
    return np.atleast_1d(ci.low).astype(float), np.atleast_1d(ci.high).astype(float)


def _paired(*arrays) -> np.ndarray:
    data = [np.asarray(a, dtype=float) for a in arrays]
    if len({a.shape for a in data}) != 1 or data[0].ndim != 1:
        raise ValueError("paired arrays must be 1-D and of one length (the same problems)")
    return np.column_stack(data)


def _first(ci: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    return float(ci[0][0]), float(ci[1][0])


def apgr_ci(correct, student, teacher, **kw) -> tuple[float, float]:
    """Interval of APGR, ``(acc - acc_s) / (acc_t - acc_s)``, a problem's three rows resampled together."""
    ci = bootstrap_ci(
        lambda s: (s[:1] - s[1:2]) / (s[2:3] - s[1:2]), _paired(correct, student, teacher), **kw
    )
    return _first(ci)


def call_ratio_ci(teacher_tokens, tokens, **kw) -> tuple[float, float]:
    """Interval of the call ratio, a ratio of sums over problems (teacher tokens / response tokens)."""
    return _first(bootstrap_ci(lambda s: s[:1] / s[1:2], _paired(teacher_tokens, tokens), **kw))


def setting_intervals(correct, teacher_tokens, tokens, student=None, teacher=None, **kw) -> dict:
    """Call ratio's and APGR's intervals of k settings on the same n problems (``correct``,
    ``teacher_tokens``, ``tokens``: n x k), from one set of resampled problems; APGR's only given the
    student's and teacher's answers on those problems (n). ``{"call_ratio": (lo, hi), "apgr": (lo, hi)}``,
    arrays of k (APGR's nan without the two sides)."""
    parts = [np.asarray(a, dtype=float) for a in (correct, teacher_tokens, tokens)]
    k = parts[0].shape[1]
    sides = student is not None and teacher is not None
    columns = np.column_stack([*parts, *([student, teacher] if sides else [])])

    def statistic(s: np.ndarray) -> np.ndarray:
        ratio = s[k : 2 * k] / s[2 * k : 3 * k]
        if not sides:
            return ratio
        return np.concatenate([ratio, (s[:k] - s[3 * k]) / (s[3 * k + 1] - s[3 * k])])

    lo, hi = bootstrap_ci(statistic, columns, **kw)
    nan = np.full(k, np.nan)
    return {"call_ratio": (lo[:k], hi[:k]), "apgr": (lo[k:], hi[k:]) if sides else (nan, nan)}


@dataclass(frozen=True)
class McNemar:
    n: int  # problems both answered
    a_only: int  # A right, B wrong
    b_only: int  # B right, A wrong
    p: float  # exact two-sided McNemar p-value: binomial test of a_only among the discordant at 1/2

    @property
    def discordance(self) -> float:
        return (self.a_only + self.b_only) / self.n if self.n else math.nan


def mcnemar(a, b) -> McNemar:
    """Discordant counts of two methods' 0/1 answers on the same problems and the exact McNemar p-value."""
    a, b = _binary(a), _binary(b)
    if a.shape != b.shape:
        raise ValueError(f"not the same problems: {a.size} answers against {b.size}")
    a_only, b_only = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    d = a_only + b_only
    p = 1.0 if d == 0 else float(stats.binomtest(a_only, d, 0.5).pvalue)
    return McNemar(int(a.size), a_only, b_only, p)


def detectable_difference(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference a two-sided paired (McNemar) test at ``alpha`` detects with ``power``
    on ``n`` problems of which a share ``discordance`` is answered differently by the two methods.

    Solves Connor's (1987) sample size, ``n d^2 = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2``, for ``d``; nan
    when nothing is discordant (no yardstick) or even ``d = psi`` (every discordant problem one way) falls
    short."""
    if n < 1 or not 0 <= discordance <= 1:
        raise ValueError(f"need n >= 1 and a discordance in [0, 1], got {n}, {discordance}")
    if discordance == 0:
        return math.nan
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)

    def shortfall(d: float) -> float:
        return math.sqrt(n) * d - za * math.sqrt(discordance) - zb * math.sqrt(max(discordance - d * d, 0.0))

    if shortfall(discordance) < 0:  # a difference cannot exceed the discordant share
        return math.nan
    return float(optimize.brentq(shortfall, 0.0, discordance))


@dataclass(frozen=True)
class Difference:
    """A paired comparison of A and B on the same problems (differences are A - B, as fractions)."""

    mcnemar: McNemar
    accuracy: float
    accuracy_ci: tuple[float, float]
    apgr: float  # nan without the student and the teacher on these problems, or without a gap
    apgr_ci: tuple[float, float]
    detectable: float  # detectable_difference at this n and the observed discordance


def accuracy_difference(a, b, student=None, teacher=None, **kw) -> Difference:
    """Paired comparison of ``a`` and ``b`` (0/1 per problem, aligned); with the student's and teacher's
    answers on the same problems also the APGR difference, all four rows resampled together."""
    test = mcnemar(a, b)
    a, b = _binary(a), _binary(b)
    n, diff = len(a), float(a.mean() - b.mean())
    diff_ci = _first(bootstrap_ci(lambda s: (s[:1] - s[1:2]) / n, _paired(a, b), **kw))
    apgr, apgr_diff_ci = math.nan, (math.nan, math.nan)
    if student is not None and teacher is not None:
        s, t = _binary(student), _binary(teacher)
        if t.mean() != s.mean():
            apgr = diff / (t.mean() - s.mean())
            columns = _paired(a, b, s, t)
            apgr_diff_ci = _first(bootstrap_ci(lambda x: (x[:1] - x[1:2]) / (x[3:4] - x[2:3]), columns, **kw))
    power = detectable_difference(test.n, test.discordance)
    return Difference(test, diff, diff_ci, apgr, apgr_diff_ci, power)
