"""The difficulty-aware reward: each regime on hand-made groups, grouping by problem, edge cases."""

from __future__ import annotations

import pytest

from offline.config import ConfigError, load
from offline.rewards import (
    RewardCfg,
    Rollout,
    batch_rewards,
    case_counts,
    group_case,
    group_rewards,
    trl_reward_func,
)

CFG = RewardCfg()
R = Rollout


def test_regime_solved_without_call():
    group = [R(True, False, 0.0), R(True, True, 0.25), R(False, True, 0.1), R(False, False, 0.0)]
    assert group_rewards(group, CFG) == [1.5, 0.75, 0.0, 0.0]


def test_regime_only_calls_solved():
    group = [R(True, True, 0.1), R(False, False, 0.0), R(False, True, 0.3)]
    assert group_rewards(group, CFG) == pytest.approx([0.9, -1.0, 0.0])


def test_regime_nobody_solved_rho_is_call_ratio_or_constant():
    group = [R(False, True, 0.2), R(False, False, 0.0)]
    assert group_rewards(group, CFG) == [0.2, 0.0]
    assert group_rewards(group, RewardCfg(rho=0.05)) == [0.05, 0.0]


def test_constants_come_from_config():
    cfg = RewardCfg(solo_bonus=2.0, wrong_solo_penalty=-0.5)
    assert group_rewards([R(True, False, 0.0)], cfg) == [2.0]
    assert group_rewards([R(True, True, 0.5), R(False, False, 0.0)], cfg) == [0.5, -0.5]


def test_edge_cases_all_calls_no_calls_empty():
    assert group_rewards([], CFG) == []
    assert group_rewards([R(True, True, 0.1), R(True, True, 0.4)], CFG) == pytest.approx([0.9, 0.6])
    assert group_rewards([R(False, True, 0.1), R(False, True, 0.4)], CFG) == [0.1, 0.4]
    assert group_rewards([R(True, False, 0.0), R(False, False, 0.0)], CFG) == [1.5, 0.0]
    assert group_rewards([R(False, False, 0.0)] * 3, CFG) == [0.0] * 3
    with pytest.raises(ValueError):
        group_rewards([R(True, True, 1.5)], CFG)


def test_groups_are_per_problem_not_per_batch():
    # problem a was solved without a call; problem b only with one. Batch-level logic would give b's
    # wrong-without-call rollout 0 (because a's solo success is in the batch); per problem it gets -1.
    ids = ["a", "b", "a", "b"]
    rolls = [R(True, False, 0.0), R(True, True, 0.1), R(False, False, 0.0), R(False, False, 0.0)]
    assert batch_rewards(ids, rolls, CFG) == pytest.approx([1.5, 0.9, 0.0, -1.0])
    with pytest.raises(ValueError):
        batch_rewards(["a"], rolls, CFG)


def test_group_cases_are_the_reward_regimes_and_are_counted_with_zeros():
    solo = [(True, False), (False, True)]  # (correct, called)
    callers = [(True, True), (False, False)]
    nobody = [(False, True), (False, False)]
    assert [group_case(g) for g in (solo, callers, nobody)] == ["solved_solo", "only_callers", "nobody"]
    assert group_case([(True, True), (True, False)]) == "solved_solo"  # a solo success decides the case
    assert case_counts([callers, nobody, callers]) == {"solved_solo": 0, "only_callers": 2, "nobody": 1}
    # the counted case is the one that set the rewards
    assert group_rewards([R(c, k, 0.1 if k else 0.0) for c, k in callers], CFG) == pytest.approx([0.9, -1.0])


def test_accuracy_kind_and_trl_adapter():
    def is_correct(text, answer):
        return text.endswith(answer)

    kw = dict(prompts=[""] * 2, completions=[""] * 2, problem_id=["a", "a"], answer=["7", "7"])
    fn = trl_reward_func(RewardCfg(kind="accuracy"), is_correct)
    assert fn(**kw, relay_text=["#### 7", "#### 8"], calls=[0, 2], call_ratio=[0.0, 0.3]) == [1.0, 0.0]
    fn = trl_reward_func(CFG, is_correct)
    assert fn(**kw, relay_text=["#### 7", "#### 8"], calls=[1, 0], call_ratio=[0.2, 0.0]) == pytest.approx(
        [0.8, -1.0]
    )


def test_recipe_validation(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("kind: difficulty_aware\nrho: call_ratio\n")
    assert load(RewardCfg, p).rho == "call_ratio"
    assert load(RewardCfg, p, ["rho=0.1"]).rho == 0.1
    for bad in (["rho=sometimes"], ["kind=other"], ["solo_bonus=[1]"], ["typo=1"]):
        with pytest.raises(ConfigError):
            load(RewardCfg, p, bad)
