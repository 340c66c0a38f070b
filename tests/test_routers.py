"""The CITER router job (offline/routers.py) on tiny models built here: labels, rollouts, training, saving.

.venv/bin/python -m pytest tests/test_routers.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offline import router_mlp as M
from offline import routers as R
from offline.common import Jsonl
from offline.tasks.base import Problem
from relay_demo.policies import RouterMLP, make_policy
from relay_demo.tiny_random import byte_tokenizer

from .models import chain_model, random_qwen2

torch.set_num_threads(1)


def _problem(i: int, a: int, b: int) -> Problem:
    return Problem(
        f"p{i}", f"{a} + {b}?", str(a + b), "arith", {"solution": f"{a} + {b} = {a + b}.\n#### {a + b}"}
    )


PROBLEMS = [_problem(i, a, b) for i, (a, b) in enumerate([(1, 2), (3, 4), (12, 5), (7, 7), (20, 3), (9, 1)])]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def scripted(tok):
    """A student whose greedy next token follows the first problem's reference (by last token only)."""
    prompt, ref = R.encode(tok, PROBLEMS[0])
    ids = [prompt[-1], *ref]
    successor: dict[int, int] = {}
    for a, b in zip(ids[:-1], ids[1:], strict=True):
        successor.setdefault(a, b)
    return chain_model(tok, successor, seed=1).eval()


def test_token_kinds_follow_citer_rule():
    ref = np.array([5, 6, 7, 8])
    student = np.array([5, 0, 0, 8])
    teacher = np.array([0, 6, 0, 8])
    kinds = R.token_kinds(ref, student, teacher)
    assert kinds.tolist() == [R.KIND_STUDENT, R.KIND_TEACHER, R.KIND_UNROLLED, R.KIND_STUDENT]
    all_kinds = np.array([R.KIND_STUDENT, R.KIND_TEACHER, R.KIND_NEITHER_OK, R.KIND_NEITHER_FAIL])
    assert R.targets(all_kinds).tolist() == [0, 1, 0, 1]


def test_teacher_forced_matches_one_forward(tok, scripted):
    teacher = random_qwen2(tok, seed=3).eval()
    pos = R.teacher_forced(tok, scripted, teacher, PROBLEMS[:3], batch_size=2)  # padding in the second batch
    prompt, ref = R.encode(tok, PROBLEMS[2])
    rows = pos.problem == 2
    assert pos.ref[rows].tolist() == ref
    with torch.no_grad():
        out = scripted(input_ids=torch.tensor([prompt + ref]), output_hidden_states=True)
    at = slice(len(prompt) - 1, len(prompt) - 1 + len(ref))
    np.testing.assert_allclose(pos.hidden[rows], out.hidden_states[-1][0, at].numpy(), atol=1e-4)
    assert pos.student[rows].tolist() == out.logits[0, at].argmax(-1).tolist()
    # the scripted student gets much of the first problem right (bytes repeat), as built
    first = pos.problem == 0
    assert (pos.student[first] == pos.ref[first]).mean() > 0.5


def test_rollouts_graded_on_the_final_answer(tok):
    student = random_qwen2(tok, seed=5).eval()
    p = PROBLEMS[0]
    prompt, _ = R.encode(tok, p)
    right = prompt + tok("1 + 2 = 3.\n#### 3\n", add_special_tokens=False)["input_ids"]
    wrong = prompt + tok("1 + 2 = 4.\n#### 4\n", add_special_tokens=False)["input_ids"]
    ok = R.rollouts_correct(tok, student, [right, wrong, right[:-3]], [p, p, p], batch=2, max_new_tokens=4)
    assert ok[:2] == [True, False]


def test_rollouts_batched_with_padding_continue_as_one_by_one(tok, monkeypatch):
    """Prefixes of different lengths share a left-padded batch; each continues as it would alone."""
    student = random_qwen2(tok, seed=5).eval()
    prefixes = [
        R.encode(tok, p)[0] + R.encode(tok, p)[1][:k] for p, k in zip(PROBLEMS, (0, 3, 7, 1), strict=False)
    ]
    seen = {}
    monkeypatch.setattr(
        R, "_graded", lambda tok, problem, prefix, new: seen.setdefault(len(seen), new) and False
    )
    R.rollouts_correct(tok, student, prefixes, PROBLEMS[:4], batch=4, max_new_tokens=6)
    batched = [seen[k] for k in range(4)]  # in the batch's order: by length
    seen.clear()
    for p in sorted(prefixes, key=len):
        R.rollouts_correct(tok, student, [p], PROBLEMS[:1], batch=1, max_new_tokens=6)
    assert batched == [seen[k] for k in range(4)]


def test_labels_same_model_never_needs_teacher(tok, scripted):
    pos = R.teacher_forced(tok, scripted, scripted, PROBLEMS)
    kinds = R.label(tok, scripted, PROBLEMS, pos, max_rollouts=1000, max_new_tokens=24)
    s_ok = pos.student == pos.ref
    assert (kinds[s_ok] == R.KIND_STUDENT).all()
    assert not (kinds == R.KIND_TEACHER).any()
    assert np.isin(kinds[~s_ok], (R.KIND_NEITHER_OK, R.KIND_NEITHER_FAIL)).all()
    # a cap leaves the rest unrolled
    capped = R.label(tok, scripted, PROBLEMS, pos, max_rollouts=3, max_new_tokens=8)
    assert np.isin(capped, (R.KIND_NEITHER_OK, R.KIND_NEITHER_FAIL)).sum() == min(3, int((~s_ok).sum()))


def test_auroc():
    assert M.auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert M.auroc(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert M.auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(M.auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def scores_of(router, x):
    return np.array([router.score(v) for v in x])


def test_train_mlp_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 16)).astype(np.float32) * 3 + 5
    y = (x[:, 0] > 5.5).astype(np.float32)
    is_val = np.arange(600) >= 480
    router, facts = M.train_mlp(
        x, y, is_val, R.RouterCfg(width=16, max_epochs=100, minibatch=64), log=lambda *_: None
    )
    assert facts["val_auroc"] > 0.95
    scores = scores_of(router, x[is_val])
    assert facts["val_share_above"]["0.5"] == pytest.approx(float((scores > 0.5).mean()), abs=1e-9)
    assert M.auroc(y[is_val], scores) == pytest.approx(facts["val_auroc"], abs=1e-4)


def test_run_saves_a_router_the_policy_loads(tok, scripted, tmp_path):
    teacher = random_qwen2(tok, seed=3).eval()
    cfg = R.RouterCfg(out=str(tmp_path / "router"), max_rollouts=20, rollout_max_new_tokens=8, width=8)
    cfg.val_frac, cfg.max_epochs = 0.34, 30
    router = R.run(cfg, problems=PROBLEMS, models=(tok, scripted, teacher), log=lambda *_: None)
    loaded = RouterMLP.load(tmp_path / "router")
    meta = json.loads((tmp_path / "router" / "config.json").read_text())
    assert meta["hidden_size"] == 64 and meta["n_problems"] == len(PROBLEMS)
    assert sum(meta["label_counts"].values()) == meta["positions"]
    h = np.random.default_rng(1).normal(size=(5, 64)).astype(np.float32)
    for v in h:
        assert 0.0 <= loaded.score(v) <= 1.0
        assert loaded.score(v) == pytest.approx(router.score(v), abs=1e-6)
    policy = make_policy("router", path=str(tmp_path / "router"), threshold=0.5)
    assert isinstance(policy.trigger(None, None, h[0]), bool)


class _Killed(RuntimeError):
    pass


class _DiesAfter(torch.nn.Module):
    """Wraps a model; its ``budget``-th forward or generate call raises, like a job killed at that point."""

    def __init__(self, inner, budget: int = 10**9):
        super().__init__()
        self.inner, self.budget, self.calls = inner, budget, {"forward": 0, "generate": 0}

    def _tick(self, what: str):
        self.budget -= 1
        if self.budget < 0:
            raise _Killed
        self.calls[what] += 1

    def forward(self, *a, **kw):
        self._tick("forward")
        return self.inner(*a, **kw)

    def generate(self, *a, **kw):
        self._tick("generate")
        return self.inner.generate(*a, **kw)


def test_a_killed_run_resumes_without_redoing_finished_work(tok, scripted, tmp_path):
    teacher = random_qwen2(tok, seed=3).eval()

    def cfg(folder):
        c = R.RouterCfg(out=str(tmp_path / folder), max_rollouts=20, rollout_max_new_tokens=8, width=8)
        c.batch_size, c.rollout_batch, c.val_frac, c.max_epochs = 2, 2, 0.34, 30
        return c

    quiet = {"problems": PROBLEMS, "log": lambda *_: None}
    counted = _DiesAfter(scripted)
    whole = R.run(cfg("whole"), models=(tok, counted, teacher), **quiet)
    assert counted.calls["forward"] == 3 and counted.calls["generate"] >= 2
    # killed in the forward pass (after 2 of 3 batches), then in the rollouts (after one batch of them)
    with pytest.raises(_Killed):
        R.run(cfg("killed"), models=(tok, _DiesAfter(scripted, 2), teacher), **quiet)
    state = tmp_path / "killed" / "trainer-state"
    assert len(list(state.glob("forward-*.npz"))) == 2
    with pytest.raises(_Killed):
        R.run(cfg("killed"), models=(tok, _DiesAfter(scripted, 2), teacher), **quiet)  # 1 forward + 1 rollout
    assert len((state / "rollouts.jsonl").read_text().splitlines()) >= 1  # one batch of rollouts
    with (state / "rollouts.jsonl").open("a") as f:
        f.write('{"i": 7, "o')  # torn by the kill mid-write: that rollout is redone
    spy = _DiesAfter(scripted)
    resumed = R.run(cfg("killed"), models=(tok, spy, teacher), **quiet)
    assert spy.calls == {"forward": 0, "generate": counted.calls["generate"] - 1}  # only what was missing
    rolled = Jsonl(state / "rollouts.jsonl").rows()
    assert len(rolled) == json.loads((tmp_path / "whole" / "config.json").read_text())["rollouts"]
    h = np.random.default_rng(2).normal(size=(4, 64)).astype(np.float32)
    for v in h:
        assert resumed.score(v) == pytest.approx(whole.score(v), abs=1e-6)
    # other labels (another seed) start afresh
    other = cfg("killed")
    other.seed = 1
    R.run(other, models=(tok, scripted, teacher), **quiet)
    assert json.loads((state / "rollouts-of.json").read_text())["seed"] == 1
    # rollouts in another dtype: the forward pass is kept, the rollouts are redone
    spy = _DiesAfter(scripted)
    other.rollout_dtype = "bfloat16"
    R.run(other, models=(tok, spy, teacher), **quiet)
    assert spy.calls["forward"] == 0 and len(Jsonl(state / "rollouts.jsonl").rows()) == len(rolled)


def test_refuses_the_test_split():
    with pytest.raises(ValueError, match="test split"):
        R.RouterCfg(split="test").validate()


class _SpyRouter(RouterMLP):
    """Records the hidden states the relay hands to the router; never hands over."""

    def __init__(self, hidden: int):
        z = np.zeros
        super().__init__({"w1": z((hidden, 1)), "b1": z(1), "w2": z((1, 1)), "b2": z(1)}, {})
        self.seen: list[np.ndarray] = []

    def score(self, hidden: np.ndarray) -> float:
        self.seen.append(np.asarray(hidden, dtype=np.float32).reshape(-1))
        return 0.0


def test_training_features_are_the_vectors_the_relay_scores(tok):
    """The teacher-forced hidden state of a position is what the HF engine gives the router policy there."""
    from relay_demo.backends.base import Sampling
    from relay_demo.backends.hf_engine import HFEngine
    from relay_demo.pairs import Pair
    from relay_demo.policies import Router
    from relay_demo.relay import Limits, relay

    student, teacher = random_qwen2(tok, seed=11).eval(), random_qwen2(tok, seed=12).eval()
    pair = Pair(
        "t", HFEngine(student, tok, "student"), HFEngine(teacher, tok, "teacher"), Limits(max_tokens=12)
    )
    spy = _SpyRouter(64)
    r = relay(pair, PROBLEMS[0].prompt, Router(router=spy), sampling=Sampling(temperature=0))
    assert r.teacher_tokens == 0 and len(spy.seen) >= 5
    assert r.prompt_ids == R.encode(tok, PROBLEMS[0])[0]
    pos = R.forward_positions(student, teacher, [(r.prompt_ids, r.token_ids)], tok.pad_token_id)
    np.testing.assert_allclose(pos.hidden[: len(spy.seen)], np.stack(spy.seen), atol=1e-4)
