"""Two-step warm-up SFT and two-step GRPO on tiny random models: a loss is logged, parameters change, and
teacher-written positions get exactly zero gradient."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from offline.common import prompt_ids  # noqa: E402
from offline.tasks import arith  # noqa: E402
from offline.train_base import ModelCfg, make_model  # noqa: E402
from offline.warmup import WarmupCfg, build_example, random_calls, targeted_calls  # noqa: E402

TINY = ModelCfg(hidden=32, layers=1, heads=1, kv_heads=1, head_dim=32, intermediate=64, max_positions=256)


@pytest.fixture(scope="module")
def tok():
    from offline.tokenizer import build

    return build(n_texts=200)


def _logit_grads(model, loss_fn):
    """Gradient of ``loss_fn()`` with respect to the final hidden states (the LM head's input).

    TRL may compute the loss with a fused LM head that never materialises logits, so we hook the final norm:
    its output at position t feeds only the prediction made at t."""
    kept = {}

    def hook(_, __, out):
        out.retain_grad()
        kept["logits"] = out

    h = model.model.norm.register_forward_hook(hook)
    try:
        model.zero_grad()
        loss_fn().backward()
    finally:
        h.remove()
    return kept["logits"].grad


def test_build_example_masks_teacher_tokens(tok):
    p = arith.load("train", 1)[0]
    prompt = prompt_ids(tok, p.prompt)
    answer = tok(p.meta["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ex = build_example(tok, prompt, answer, [(3, 2), (10, 1)])
    resp_ids, resp_labels = ex["input_ids"][len(prompt) :], ex["labels"][len(prompt) :]
    assert ex["source"].count(0) == 3 and ex["calls"] == 2
    assert all(lab == -100 for lab, s in zip(resp_labels, ex["source"], strict=True) if s == 0)
    assert all(lab == i for lab, i, s in zip(resp_labels, resp_ids, ex["source"], strict=True) if s == 1)
    text = tok.decode(resp_ids)
    assert text.count("<call>2</call>") == 1 and text.count("<call>1</call>") == 1
    # removing the commands gives back the solution: the teacher continues the same text
    assert (
        text.replace("<call>2</call>", "").replace("<call>1</call>", "") == p.meta["solution"] + tok.eos_token
    )


def test_call_placement_strategies():
    import random

    cfg = WarmupCfg(max_calls=3, max_n=4)
    rng = random.Random(0)
    for _ in range(200):
        calls = random_calls(rng, 40, cfg)
        assert len(calls) <= 3 and all(0 <= pos and 1 <= n <= 4 and pos + n < 40 for pos, n in calls)
    flags = [(5, 0.2), (6, 0.3), (20, 0.9), (30, 0.1)]
    assert targeted_calls(flags, WarmupCfg(max_calls=2, max_n=4)) == [(5, 2), (30, 1)]
    assert targeted_calls(flags, WarmupCfg(max_calls=5, max_n=1)) == [(5, 1), (6, 1), (20, 1), (30, 1)]


def test_two_step_sft_loss_params_and_zero_teacher_gradient(tok, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = make_model(tok, TINY, seed=0)
    rows = []
    for p in arith.load("train", 8):
        prompt = prompt_ids(tok, p.prompt)
        answer = tok(p.meta["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(build_example(tok, prompt, answer, [(4, 3)]))
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    before = [q.detach().clone() for q in model.parameters()]
    trainer.train()
    assert any("loss" in h for h in trainer.state.log_history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    grads = _logit_grads(model, lambda: trainer.compute_loss(model, batch))
    labels = batch["labels"]
    # logits at position t predict token t+1: teacher tokens are the targets at t where labels[t+1] == -100
    for row, r in enumerate(rows[:4]):
        start = len(r["input_ids"]) - len(r["source"])
        for j, s in enumerate(r["source"]):
            t = start + j - 1
            if s == 0:
                assert labels[row, t + 1] == -100
                assert torch.count_nonzero(grads[row, t]) == 0
        assert torch.count_nonzero(grads[row, start - 1 : start + 3]) > 0  # student positions do learn


def test_two_step_grpo_loss_params_and_zero_teacher_gradient(tok, tmp_path):
    from offline.grpo import GrpoCfg, build_trainer
    from relay_demo.backends.hf_engine import HFEngine

    student = make_model(tok, TINY, seed=1)
    teacher = HFEngine(make_model(tok, TINY, seed=2), tok, "teacher")
    # forced handoffs (interval policy) so that every rollout holds teacher tokens; random models never
    # solve a problem, so a length reward is added to give the groups some variance to learn from
    cfg = GrpoCfg(
        problems=None,
        n_problems=8,
        calls=True,
        policy="interval",
        policy_args={"every": 3, "n": 2},
        num_generations=2,
        prompts_per_step=2,
        max_steps=2,
        max_tokens=12,
        lr=1e-2,
        metrics=None,
        out=str(tmp_path / "student"),  # the trainer's own folder goes under it, never into results/
    )

    def length_reward(completions, relay_text, **_):
        return [len(t) / 10 for t in relay_text]

    trainer, _ = build_trainer(cfg, student, tok, teacher, extra_rewards=(length_reward,))
    seen = []
    orig = trainer.compute_loss

    def spy(model, inputs, *a, **k):
        seen.append(inputs)
        return orig(model, inputs, *a, **k)

    trainer.compute_loss = spy
    before = [q.detach().clone() for q in student.parameters()]
    trainer.train()
    assert any("loss" in h for h in trainer.state.log_history)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))

    inputs = seen[-1]
    tool_mask, completion_mask = inputs["tool_mask"], inputs["completion_mask"]
    assert (tool_mask * completion_mask == 0).any() and (tool_mask * completion_mask == 1).any()
    student.train()
    grads = _logit_grads(student, lambda: orig(student, inputs))
    # the trainer forwards prompt + completion and scores completion token k with the logits at P + k - 1
    P = inputs["prompt_ids"].shape[1]
    comp = grads[:, P - 1 : P - 1 + completion_mask.shape[1]]
    teacher_pos = (tool_mask == 0) & (completion_mask == 1)
    assert torch.count_nonzero(comp[teacher_pos]) == 0
    assert torch.count_nonzero(comp[(tool_mask == 1) & (completion_mask == 1)]) > 0


@dataclass
class Inner:  # module level: config annotations are resolved with typing.get_type_hints
    width: int = 8
    names: list[str] = field(default_factory=list)


@dataclass
class Job:
    lr: float = 1e-3
    steps: int = 10
    out: str | None = None
    flag: bool = False
    span: tuple[int, int] = (1, 2)
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


def test_config_loader_nested_overrides_and_errors(tmp_path):
    from offline.config import ConfigError, load, parse

    p = tmp_path / "job.yaml"
    p.write_text("lr: 1\ninner: {width: 16}\nspan: [3, 4]\n")
    cfg = parse(Job, ["--config", str(p), "inner.names=[a, b]", "flag=true", "out=null", "steps=5"])
    assert cfg == Job(lr=1.0, steps=5, out=None, flag=True, span=(3, 4), inner=Inner(16, ["a", "b"]))
    assert isinstance(cfg.lr, float)
    assert load(Job, p, ["lr=3e-4"]).lr == 3e-4  # YAML 1.1 reads 3e-4 as a string
    for bad in (
        ["steps=0"],
        ["steps=1.5"],
        ["lr=fast"],
        ["flag=1"],
        ["inner.depth=2"],
        ["span=[1]"],
        ["lr"],
        ["inner=3"],
    ):
        with pytest.raises(ConfigError):
            load(Job, p, bad)
    with pytest.raises(ConfigError):
        load(Job, tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "job,recipe",
    [
        ("offline.train_base:TrainBaseCfg", "tiny-arith/base.yaml"),
        ("offline.train_base:TrainBaseCfg", "tiny-arith/teacher.yaml"),
        ("offline.filter:FilterCfg", "tiny-arith/filter.yaml"),
        ("offline.warmup:WarmupCfg", "tiny-arith/warmup.yaml"),
        ("offline.grpo:GrpoCfg", "tiny-arith/grpo-relay.yaml"),
        ("offline.grpo:GrpoCfg", "tiny-arith/grpo-only.yaml"),
        ("offline.routers:RouterCfg", "tiny-arith/router.yaml"),
        ("offline.filter:FilterCfg", "qwen3-1.7b-8b/filter.yaml"),
        ("offline.warmup:WarmupCfg", "qwen3-1.7b-8b/warmup.yaml"),
        ("offline.grpo:GrpoCfg", "qwen3-1.7b-8b/grpo-relay.yaml"),
        ("offline.grpo:GrpoCfg", "qwen3-1.7b-8b/grpo-only.yaml"),
        ("offline.rl_relay:RlCfg", "qwen2.5-coder-0.5b-1.5b/rl.yaml"),
        ("offline.rl_relay:RlCfg", "qwen3-1.7b-8b/rl.yaml"),
    ],
)
def test_checked_in_recipes_load(job, recipe):
    import importlib
    from pathlib import Path

    from offline.config import load

    module, name = job.split(":")
    cls = getattr(importlib.import_module(module), name)
    load(cls, Path(__file__).resolve().parent.parent / "offline" / "recipes" / recipe)


def test_targeted_dataset_with_clean_copies_and_command_init(tok):
    from offline.warmup import build_dataset, init_command_embeddings

    model = make_model(tok, TINY, seed=3)
    problems = arith.load("train", 4)
    cfg = WarmupCfg(strategy="targeted", max_calls=2, max_n=3, conf_tau=0.9, clean_copies=True)
    rows = build_dataset(model, tok, problems, cfg)
    with_calls = [r for r in rows if r["calls"]]
    assert len(with_calls) == 4 and len(rows) == 8  # a random model is unsure everywhere
    assert all(r["calls"] <= 2 and 0 in r["source"] for r in with_calls)
    assert all(1 == min(r["source"]) for r in rows if not r["calls"])  # clean copies: all student-written
    init_command_embeddings(model, tok)
    emb = model.get_input_embeddings().weight
    call_id, close_id = tok.convert_tokens_to_ids(["<call>", "</call>"])
    assert torch.allclose(emb[call_id], emb[close_id])


def test_train_base_resumes_where_it_was_killed(tmp_path, tok, monkeypatch):
    """A run killed after its step-4 checkpoint, rerun, ends with the weights of a run never killed."""
    import offline.train_base as tb
    from offline.common import load_model

    tok.save_pretrained(str(tmp_path / "tok"))
    base = dict(tokenizer=str(tmp_path / "tok"), model=TINY, n_train=64, batch_size=8, max_steps=6)
    base.update(warmup_steps=2, eval_every=100, checkpoint_every=2, n_eval=2, n_final_eval=2)
    whole = tb.train(tb.TrainBaseCfg(out=str(tmp_path / "whole"), **base))

    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dying_step(self, *a, **k):  # the machine goes away during the fifth optimizer step
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    cfg = tb.TrainBaseCfg(out=str(tmp_path / "killed"), **base)
    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        tb.train(cfg)
    steps_run = []

    def counted_step(self, *a, **k):
        steps_run.append(1)
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted_step)
    resumed = tb.train(cfg)
    assert len(steps_run) == 2  # steps 5 and 6 only: 1-4 came from the checkpoint
    assert resumed["steps"] == whole["steps"] == 6
    a, _ = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "killed")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert tb.train(cfg)["steps"] == 6 and len(steps_run) == 2  # a finished job's rerun trains nothing more
