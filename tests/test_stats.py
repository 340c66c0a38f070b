"""Known-answer tests of relay_demo/stats.py: intervals, the exact McNemar test, power.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_stats.py -q
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from relay_demo import stats as S


def _wilson_formula(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (56, 200), (784, 1000), (1, 1)])
def test_wilson_matches_its_formula(k, n):
    assert S.wilson(k, n) == pytest.approx(_wilson_formula(k, n), abs=1e-12)


def test_wilson_refuses_impossible_counts_and_is_undefined_on_nothing():
    with pytest.raises(ValueError, match="0 <= k <= n"):
        S.wilson(11, 10)
    assert all(math.isnan(v) for v in S.wilson(0, 0))


def _table(a_only: int, b_only: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize("a_only, b_only", [(8, 2), (2, 8), (5, 5), (12, 3), (0, 7), (1, 0)])
def test_mcnemar_exact_p_is_the_binomial_tail(a_only, b_only):
    a, b = _table(a_only, b_only, both=20, neither=30)
    test = S.mcnemar(a, b)
    d, low = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(d, k) for k in range(low + 1)) / 2**d  # P(X <= low), X ~ Binomial(d, 1/2)
    assert (test.n, test.a_only, test.b_only) == (d + 50, a_only, b_only)
    assert test.p == pytest.approx(min(1.0, 2 * tail), rel=1e-12)
    assert test.discordance == pytest.approx(d / (d + 50))


def test_mcnemar_without_discordant_problems_finds_nothing():
    a, b = _table(0, 0, both=5, neither=5)
    assert S.mcnemar(a, b).p == 1.0


def test_mcnemar_refuses_expectations_and_unequal_lengths():
    with pytest.raises(ValueError, match="0/1"):
        S.mcnemar([0.3, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="not the same problems"):
        S.mcnemar([1, 0, 1], [1, 0])


def test_a_method_against_itself_is_centred_on_zero():
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.3).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no degenerate-data warning either
        d = S.accuracy_difference(a, a)
    assert d.accuracy == 0 and d.accuracy_ci == (0.0, 0.0)
    assert (d.mcnemar.a_only, d.mcnemar.b_only, d.mcnemar.p) == (0, 0, 1.0)
    assert math.isnan(d.detectable)  # nothing discordant: no yardstick


def test_balanced_discordance_gives_an_interval_around_zero():
    a, b = _table(15, 15, both=60, neither=110)
    lo, hi = S.accuracy_difference(a, b).accuracy_ci
    assert lo < 0 < hi and abs(lo + hi) < 0.02


def test_bootstrap_is_seeded_and_covers_the_estimate():
    a, b = _table(20, 8, both=50, neither=122)
    first, again = S.accuracy_difference(a, b), S.accuracy_difference(a, b)
    assert first == again
    lo, hi = first.accuracy_ci
    assert first.accuracy == pytest.approx(0.06) and 0 < lo < 0.06 < hi  # 12 more right of 200
    assert S.accuracy_difference(a, b, seed=1).accuracy_ci != first.accuracy_ci


def test_apgr_interval_resamples_the_three_rows_together():
    rng = np.random.default_rng(2)
    s = (rng.random(300) < 0.25).astype(float)
    t = np.maximum(s, rng.random(300) < 0.6)
    m = np.where(rng.random(300) < 0.5, t, s)  # half the gap, problem by problem
    acc = m.mean()
    lo, hi = S.apgr_ci(m, s, t)
    assert lo < (acc - s.mean()) / (t.mean() - s.mean()) < hi
    assert S.apgr_ci(s, s, t) == (0.0, 0.0)  # the student is 0 in every resample
    assert S.apgr_ci(t, s, t) == (1.0, 1.0)


def test_apgr_interval_is_undefined_when_a_resample_has_no_gap():
    s, t = np.array([0, 0, 0, 1.0]), np.array([1, 0, 0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(math.isnan(v) for v in S.apgr_ci(t, s, t))


def test_call_ratio_interval_is_a_ratio_of_sums():
    teacher = np.array([0, 10, 0, 30, 5.0])
    tokens = np.array([100, 100, 50, 150, 100.0])
    lo, hi = S.call_ratio_ci(teacher, tokens)
    assert 0 <= lo < teacher.sum() / tokens.sum() < hi <= 1
    with pytest.raises(ValueError, match="one length"):
        S.call_ratio_ci(teacher, tokens[:3])


def test_apgr_difference_needs_a_gap():
    a, b = _table(10, 2, both=40, neither=48)
    same = S.accuracy_difference(a, b, student=b, teacher=b)
    assert math.isnan(same.apgr) and all(math.isnan(v) for v in same.apgr_ci)
    d = S.accuracy_difference(a, b, student=b, teacher=np.ones(100))
    assert d.apgr == pytest.approx(0.08 / (1 - b.mean()))
    assert d.apgr_ci[0] < d.apgr < d.apgr_ci[1]


def test_detectable_difference_solves_connors_formula():
    n, psi = 200, 0.12
    d = S.detectable_difference(n, psi)
    za, zb = 1.959963984540054, 0.8416212335729143
    assert n == pytest.approx((za * math.sqrt(psi) + zb * math.sqrt(psi - d * d)) ** 2 / d**2)
    assert S.detectable_difference(800, psi) < d  # more problems, finer differences
    assert math.isnan(S.detectable_difference(200, 0.01))  # 2 discordant problems cannot reach 80%
    with pytest.raises(ValueError):
        S.detectable_difference(0, 0.1)


def test_detectable_difference_has_about_80_percent_power():
    # simulate paired tables at the detectable difference and count the exact test's rejections
    n, psi = 200, 0.2
    d = S.detectable_difference(n, psi)
    rng = np.random.default_rng(3)
    p = [(psi + d) / 2, (psi - d) / 2, 1 - psi]  # A only, B only, concordant
    counts = rng.multinomial(n, p, size=2000)
    rejected = [S.mcnemar(*_table(int(x), int(y), 0, n - x - y)).p < 0.05 for x, y, _ in counts]
    assert 0.72 < np.mean(rejected) < 0.88
