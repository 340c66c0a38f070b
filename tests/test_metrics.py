"""APGR, CPT, the random-query router and the saving against it (relay_demo/results/metrics.py).

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from relay_demo import reported as R
from relay_demo.results import metrics as M


def _sides(n=400, seed=0):
    rng = np.random.default_rng(seed)
    s_correct = (rng.random(n) < 0.4).astype(float)
    t_correct = np.maximum(s_correct, (rng.random(n) < 0.5)).astype(float)
    student = M.Side.of(s_correct, rng.integers(50, 150, n), np.zeros(n), rng.uniform(1e9, 2e9, n))
    t_tokens = rng.integers(80, 200, n)
    teacher = M.Side.of(t_correct, t_tokens, t_tokens, rng.uniform(5e9, 9e9, n))
    return student, teacher


def test_apgr_on_hand_made_numbers():
    assert M.apgr(0.6, 0.4, 0.8) == pytest.approx(0.5)
    assert M.apgr(0.4, 0.4, 0.8) == 0
    assert M.apgr(0.9, 0.4, 0.8) == pytest.approx(1.25)  # beyond the teacher
    assert math.isnan(M.apgr(0.5, 0.5, 0.5))


def test_cpt_interpolates_from_the_student():
    # student 40%, teacher 80%: 50% of the gap is 60%, 80% of the gap is 72%
    curve = [(0.2, 0.5), (0.4, 0.7), (0.6, 0.76)]
    assert M.cpt(curve, 0.4, 0.8, 0.5) == pytest.approx(0.3)  # halfway between (0.2, 50%) and (0.4, 70%)
    assert M.cpt(curve, 0.4, 0.8, 0.8) == pytest.approx(0.4 + 0.2 * (0.72 - 0.7) / (0.76 - 0.7))
    assert M.cpt(list(reversed(curve)), 0.4, 0.8, 0.5) == pytest.approx(0.3)  # order of points is irrelevant
    assert M.cpt([(0.1, 0.5)], 0.4, 0.8, 0.5) is None  # never reaches the target
    assert M.cpt([(0.1, 0.8)], 0.4, 0.8, 0.5) == pytest.approx(0.05)  # from the student anchor (0, 40%)
    assert M.cpt(curve, 0.8, 0.4, 0.5) is None  # no gap to recover
    with pytest.raises(ValueError):
        M.cpt(curve, 0.4, 0.8, 1.5)


def test_random_query_expectation_matches_the_mean_of_simulations():
    student, teacher = _sides()
    for p in (0.0, 0.1, 0.37, 0.8, 1.0):
        exact = M.random_query(student, teacher, p).accuracy
        means = [M.simulate_random_query(student, teacher, p, n_seeds=50, seed=s).mean for s in range(40)]
        # 2000 draws of a mean of 400 Bernoulli mixes: standard error < 0.0012
        assert np.mean(means) == pytest.approx(exact, abs=0.004), p
        sim = M.simulate_random_query(student, teacher, p, n_seeds=2000, seed=7)
        assert sim.lo <= exact <= sim.hi
    mid = M.simulate_random_query(student, teacher, 0.5, n_seeds=2000)
    assert mid.hi - mid.lo > 0.01  # a real band, not a point


def test_random_query_endpoints_and_cost():
    student, teacher = _sides()
    lo, hi = M.random_query(student, teacher, 0.0), M.random_query(student, teacher, 1.0)
    assert (lo.accuracy, lo.call_ratio) == (student.accuracy, 0.0)
    assert (hi.accuracy, hi.call_ratio) == (teacher.accuracy, 1.0)
    assert hi.flops == pytest.approx(teacher.flops.mean())
    mid = M.random_query(student, teacher, 0.5)
    ts, tt = student.tokens.sum(), teacher.tokens.sum()
    assert mid.call_ratio == pytest.approx(tt / (tt + ts))
    with pytest.raises(ValueError):
        M.random_query(student, teacher, 1.2)


def test_matched_p_and_saving():
    student, teacher = _sides()
    acc_s, acc_t = student.accuracy, teacher.accuracy
    target = acc_s + 0.25 * (acc_t - acc_s)
    s = M.saving_vs_random(target, 0.02, student.flops.mean() * 1.1, student, teacher)
    assert s.p_star == pytest.approx(0.25)
    router = M.random_query(student, teacher, 0.25)
    assert router.accuracy == pytest.approx(target)
    assert s.saving_call == pytest.approx(1 - 0.02 / router.call_ratio)
    assert s.saving_query == pytest.approx(1 - 0.02 / 0.25)
    assert s.saving_flops == pytest.approx(1 - student.flops.mean() * 1.1 / router.flops)
    better_than_teacher = M.saving_vs_random(acc_t + 0.05, 0.02, 1.0, student, teacher)
    assert better_than_teacher.p_star is None and better_than_teacher.saving_call is None


def test_the_papers_headline_numbers():
    p = M.matched_p(R.RELAY_ACC, R.STUDENT_ACC, R.TEACHER_ACC)
    assert p == pytest.approx(R.RANDOM_ROUTER_MATCHED_P, abs=5e-4)  # 60.4%
    saving = M.paper_saving(R.RELAY_ACC, R.RELAY_CALL_RATIO, R.STUDENT_ACC, R.TEACHER_ACC)
    assert round(100 * saving, 1) == 98.2


def test_mismatched_sides_are_errors():
    student, _ = _sides(10)
    _, teacher = _sides(12)
    with pytest.raises(ValueError, match="different problem counts"):
        M.random_query(student, teacher, 0.5)
    with pytest.raises(ValueError, match="1-D"):
        M.Side.of([1, 0], [1], [0, 0], [1, 1])
