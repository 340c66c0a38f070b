"""The RL stage's learning curve (relay_demo.charts.learning_curve): constructed rows, checked on the figure.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_charts.py -q
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest

from relay_demo.charts import learning_curve
from relay_demo.charts.training import wilson


def _curve(rounds=(0, 4, 8)) -> pd.DataFrame:
    rows = []
    for i, r in enumerate(rounds):
        rows.append(
            {
                "round": r,
                "adapter": f"round-{r:03d}",
                "n": 100,
                "accuracy": 0.27 + 0.01 * i,
                "teacher_free_accuracy": 0.24,
                "call_ratio": 0.04 - 0.005 * i,
                "calls_per_problem": 0.3,
                "problems_calling": 25 - i,
                "calling_teacher_only": 10,
                "calling_teacher_fails": 14 - i,
                "turned_right": 3 + i,
                "turned_wrong": 1,
                "secs": 10.0,
            }
        )
    return pd.DataFrame(rows)


def _rounds(n=3) -> pd.DataFrame:
    rows = [{"stage": "filter", "problems": 32, "kept": 20, "secs": 1.0}]
    for r in range(n):
        rows.append(
            {
                "stage": "rollouts",
                "round": r,
                "rollouts": 64,
                "accuracy": 0.3,
                "called": 0.2,
                "call_ratio": 0.03,
                "reward": 0.1 * r,
                "groups_with_signal": 5,
                "secs": 1.0,
            }
        )
        rows.append({"stage": "update", "round": r, "secs": 1.0, "loss": 0.1, "grad_norm": 0.5})
    return pd.DataFrame(rows)


def _trace(fig: go.Figure, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, f"{name!r}: {[t.name for t in fig.data]}"
    return found[0]


def test_wilson_known_answer():
    # Wilson's score interval for 27 of 100 at 95%: centre (k + z²/2) / (n + z²), half-width z/(n+z²)·√(...)
    lo, hi = wilson(27, 100)
    assert lo == pytest.approx(0.19270, abs=1e-4) and hi == pytest.approx(0.36432, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


def test_traces_and_wilson_error_bars():
    fig = learning_curve(_curve(), _rounds())
    relay = _trace(fig, "relay (greedy)")
    assert list(relay.y) == pytest.approx([27.0, 28.0, 29.0])
    # error bars carry the 95% Wilson interval of k = 27 of n = 100, in percent around the point
    assert relay.error_y.array[0] == pytest.approx(36.432 - 27.0, abs=1e-2)
    assert relay.error_y.arrayminus[0] == pytest.approx(27.0 - 19.270, abs=1e-2)
    assert relay.error_y.symmetric is False
    twin = _trace(fig, "teacher-free twin (calls off)")
    lo, hi = wilson(24, 100)
    assert twin.error_y.array[0] == pytest.approx(100 * hi - 24) and twin.error_y.arrayminus[
        0
    ] == pytest.approx(24 - 100 * lo)
    assert "n = 100" in relay.text[0] and "[19.3, 36.4]" in relay.text[0]
    assert list(_trace(fig, "call ratio (%, left)").y) == pytest.approx([4.0, 3.5, 3.0])
    assert list(_trace(fig, "calls per problem (right)").y) == pytest.approx([0.3] * 3)
    right, wrong = _trace(fig, "calls turn wrong → right"), _trace(fig, "calls turn right → wrong")
    assert isinstance(right, go.Bar) and list(right.y) == [3, 4, 5] and list(wrong.y) == [1, 1, 1]
    only = _trace(fig, "… of them only the teacher solves (share)")
    assert list(only.text) == ["40%", "42%", "43%"]  # 10 of 25, 24, 23 calling problems
    # the rollouts panel: only the "rollouts" rows, per round
    assert list(_trace(fig, "mean reward (right)").y) == pytest.approx([0.0, 0.1, 0.2])
    assert list(_trace(fig, "correct (%, left)").x) == [0, 1, 2]
    assert "round" in fig.layout.xaxis4.title.text and "100 held-out" in fig.layout.title.text


def test_reference_lines_when_given():
    fig = learning_curve(_curve(), student=0.25, teacher=0.55)
    student, teacher = _trace(fig, "student alone (dev) 25.0%"), _trace(fig, "teacher alone (dev) 55.0%")
    assert list(student.y) == pytest.approx([25.0] * 2) and list(teacher.y) == pytest.approx([55.0] * 2)
    assert list(student.x) == [-0.5, 8.5]  # across the whole curve
    bare = learning_curve(_curve())
    assert not [t for t in bare.data if "alone" in (t.name or "")]
    only_teacher = learning_curve(_curve(), teacher=0.55)
    assert [t.name for t in only_teacher.data if "alone" in t.name] == ["teacher alone (dev) 55.0%"]


def test_one_row_curve_and_no_rounds():
    fig = learning_curve(_curve(rounds=(0,)), None, student=0.25, teacher=0.55)
    assert len(_trace(fig, "relay (greedy)").y) == 1
    assert list(_trace(fig, "student alone (dev) 25.0%").x) == [-0.5, 0.5]
    assert not [t for t in fig.data if t.name == "mean reward (right)"]  # no rollouts panel
    assert "xaxis4" not in fig.layout and fig.layout.xaxis3.title.text.startswith("round")
    # rounds without any rollout row (only the filter ran) is no panel either
    fig = learning_curve(_curve(rounds=(0,)), _rounds(0))
    assert not [t for t in fig.data if t.name == "mean reward (right)"]


def test_resumed_duplicates_keep_the_last_row_and_bad_input_says_why():
    curve = pd.concat([_curve(), _curve(rounds=(8,)).assign(accuracy=0.5)])
    assert list(_trace(learning_curve(curve), "relay (greedy)").y) == pytest.approx([27.0, 28.0, 50.0])
    with pytest.raises(ValueError, match="turned_right"):
        learning_curve(_curve().drop(columns=["turned_right"]))
    with pytest.raises(ValueError, match="no rows"):
        learning_curve(_curve().iloc[:0])


def test_a_bias_sweep_stays_off_the_curve_and_a_scaling_switch_is_marked():
    sweep = _curve(rounds=(4,)).assign(accuracy=0.9, call_bias=-1.0)
    curve = pd.concat([_curve(), sweep])  # older rows have no call_bias: they are at the recipe's bias
    assert list(_trace(learning_curve(curve), "relay (greedy)").y) == pytest.approx([27.0, 28.0, 29.0])
    at_minus_one = learning_curve(curve, call_bias=-1.0)
    assert list(_trace(at_minus_one, "relay (greedy)").y) == pytest.approx([90.0])
    with pytest.raises(ValueError, match="call bias 2"):
        learning_curve(curve, call_bias=2.0)
    rounds = _rounds(4)
    rounds.loc[rounds["round"] >= 2, "scale_rewards"] = False  # rows before the field: scaling on
    fig = learning_curve(_curve(), rounds)
    assert {s.x0 for s in fig.layout.shapes if s.type == "line"} == {1.5}  # across the panels
    assert [a.x for a in fig.layout.annotations if "std scaling off" in a.text] == [1.5]
    assert not [s for s in learning_curve(_curve(), _rounds(4)).layout.shapes if s.type == "line"]
