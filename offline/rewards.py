"""Rewards for GRPO on relay rollouts: the paper's difficulty-aware reward and plain accuracy.

The difficulty-aware reward of the RelayLLM paper looks at the *group* of rollouts of one problem:

* some rollout solved it **without** a call (easy for the student): correct without a call -> ``solo_bonus``
  (1.5), correct with a call -> ``1 - call_ratio``, wrong -> 0;
* only rollouts **with** a call solved it (needs help): correct with a call -> ``1 - call_ratio``,
  wrong without a call -> ``wrong_solo_penalty`` (-1), wrong with a call -> 0;
* nobody solved it (too hard): ``rho`` if it called (``rho: call_ratio`` uses that rollout's call ratio,
  a number is a constant), 0 if not.

Groups are formed by problem id, never by "whatever batch the trainer hands us" (the official code's
batch-level test mixes easy and hard problems). A rollout's ``called`` is "it wrote at least one command".

    >>> cfg = RewardCfg()
    >>> group_rewards([Rollout(True, False, 0.0), Rollout(True, True, 0.1), Rollout(False, True, 0.2)], cfg)
    [1.5, 0.9, 0.0]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple


class Rollout(NamedTuple):
    correct: bool
    called: bool
    call_ratio: float  # teacher tokens / all response tokens, in [0, 1]


@dataclass(frozen=True)
class RewardCfg:
    kind: Literal["difficulty_aware", "accuracy"] = "difficulty_aware"
    solo_bonus: float = 1.5
    wrong_solo_penalty: float = -1.0
    rho: float | str = "call_ratio"  # reward for calling on a problem nobody solved

    def validate(self) -> None:
        if isinstance(self.rho, str) and self.rho != "call_ratio":
            raise ValueError(f"rho must be a number or 'call_ratio', got {self.rho!r}")

    def __post_init__(self):
        self.validate()


def _check(r: Rollout) -> None:
    if not 0.0 <= r.call_ratio <= 1.0:
        raise ValueError(f"call_ratio must be in [0, 1], got {r.call_ratio}")


Case = Literal["solved_solo", "only_callers", "nobody"]
CASES: tuple[Case, ...] = ("solved_solo", "only_callers", "nobody")


def group_case(group: Sequence[tuple[bool, bool]]) -> Case:
    """Which of the reward's three cases a group of (correct, called) rollouts falls in."""
    if any(correct and not called for correct, called in group):
        return "solved_solo"
    return "only_callers" if any(correct for correct, _ in group) else "nobody"


def case_counts(groups: Sequence[Sequence[tuple[bool, bool]]]) -> dict[str, int]:
    """How many groups fall in each case (all three keys, zeros included): the "only callers" groups are the
    ones that teach where a call helps."""
    cases = [group_case(g) for g in groups]
    return {c: cases.count(c) for c in CASES}


def group_rewards(group: Sequence[Rollout], cfg: RewardCfg) -> list[float]:
    """Rewards of one problem's rollouts (same order). An empty group gets an empty list."""
    for r in group:
        _check(r)
    if cfg.kind == "accuracy":
        return [1.0 if r.correct else 0.0 for r in group]
    case = group_case([(r.correct, r.called) for r in group])
    out = []
    for r in group:
        if case == "solved_solo":
            out.append(
                cfg.solo_bonus if r.correct and not r.called else (1.0 - r.call_ratio) if r.correct else 0.0
            )
        elif case == "only_callers":
            out.append((1.0 - r.call_ratio) if r.correct else (0.0 if r.called else cfg.wrong_solo_penalty))
        elif r.called:
            out.append(r.call_ratio if cfg.rho == "call_ratio" else float(cfg.rho))
        else:
            out.append(0.0)
    return out


def batch_rewards(problem_ids: Sequence[str], rollouts: Sequence[Rollout], cfg: RewardCfg) -> list[float]:
    """Rewards for a flat batch: rollouts are grouped by ``problem_ids`` wherever they sit in the batch."""
    if len(problem_ids) != len(rollouts):
        raise ValueError(f"{len(problem_ids)} problem ids for {len(rollouts)} rollouts")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, pid in enumerate(problem_ids):
        groups[pid].append(i)
    out = [0.0] * len(rollouts)
    for idx in groups.values():
        for i, r in zip(idx, group_rewards([rollouts[i] for i in idx], cfg), strict=True):
            out[i] = r
    return out


def trl_reward_func(cfg: RewardCfg, is_correct: Callable[[str, str], bool]) -> Callable[..., list[float]]:
    """A TRL ``reward_funcs`` entry. It reads the dataset's ``problem_id`` / ``answer`` and the columns our
    rollout function adds (``relay_text``, ``calls``, ``call_ratio``); correctness is judged on the relay text
    with commands removed, because TRL's decoded completions drop the special command tokens but keep N."""

    def relay_reward(
        prompts, completions, problem_id, answer, relay_text, calls, call_ratio, **_
    ) -> list[float]:
        rollouts = [
            Rollout(bool(is_correct(t, a)), int(n) > 0, float(x))
            for t, a, n, x in zip(relay_text, answer, calls, call_ratio, strict=True)
        ]
        return batch_rewards([str(p) for p in problem_id], rollouts, cfg)

    relay_reward.__name__ = f"relay_{cfg.kind}"
    return relay_reward
