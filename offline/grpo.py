"""GRPO on relay rollouts (TRL ``GRPOTrainer`` + our ``rollout_func``) with the difficulty-aware reward.

Each step samples ``prompts_per_step`` problems, relay-decodes ``num_generations`` rollouts of each with
the student under training (its own ``<call>N</call>`` commands hand N tokens to the frozen teacher),
scores them per problem group (offline.rewards) and updates the student on the tokens it wrote only
(``env_mask`` = the relay's source mask). ``calls: false`` is the GRPO-only baseline: the same trainer
with the ``student-only`` policy (commands ignored) and the plain accuracy reward.

    OMP_NUM_THREADS=1 .venv/bin/python -m offline.grpo --config offline/recipes/tiny-arith/grpo-relay.yaml
    OMP_NUM_THREADS=1 .venv/bin/python -m offline.grpo \
        --config offline/recipes/tiny-arith/grpo-only.yaml max_steps=2
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from offline import config as cfglib
from offline.common import LogCallback, MetricLog, load_kept, load_model, relay_eval, trainer_dir
from offline.rewards import RewardCfg, trl_reward_func
from offline.tasks import arith
from offline.trl_rollout import make_rollout_func
from relay_demo.backends.hf_engine import HFEngine
from relay_demo.pairs import Pair
from relay_demo.policies import make_policy
from relay_demo.relay import Limits


@dataclass
class GrpoCfg:
    student: str = "results/models/tiny-arith/student-warmup"
    teacher: str = "results/models/tiny-arith/teacher"
    out: str = "results/models/tiny-arith/student-relay"
    problems: str | None = "results/training/tiny-arith/filter_kept.jsonl"  # None: fresh train problems
    n_problems: int = 2000
    seed: int = 300
    calls: bool = True  # False: the GRPO-only baseline (student-only policy, commands ignored)
    policy: str = "learned"  # who hands over during rollouts when calls is true (relay_demo.policies)
    policy_args: dict = field(default_factory=dict)
    reward: RewardCfg = field(default_factory=RewardCfg)
    num_generations: int = 8
    prompts_per_step: int = 8
    max_steps: int = 60
    lr: float = 1e-4
    beta: float = 0.0
    loss_type: str = "dapo"
    temperature: float = 0.7
    max_n: int = 16
    max_calls: int = 5
    max_tokens: int = 128
    eval_every: int = 20
    n_eval: int = 200
    # save the validated checkpoint with the best accuracy (step 0, the starting student, included; ties go
    # to the later step) instead of the last one: GRPO at this scale can lose accuracy
    keep_best: bool = False
    threads: int = 1
    metrics: str | None = "results/training/tiny-arith/grpo.jsonl"

    def validate(self) -> None:
        if self.num_generations < 2:
            raise ValueError("GRPO needs num_generations >= 2 (advantages are relative within a group)")
        if self.prompts_per_step < 1 or self.max_steps < 1:
            raise ValueError("need prompts_per_step >= 1 and max_steps >= 1")


def limits_of(cfg: GrpoCfg) -> Limits:
    return Limits(max_n=cfg.max_n, max_calls=cfg.max_calls if cfg.calls else 0, max_tokens=cfg.max_tokens)


class RelayEvalCallback(TrainerCallback):
    """Validation accuracy and call ratio of the current student (greedy relay) every ``every`` steps."""

    def __init__(
        self, teacher, tok, problems, policy, limits, every: int, log: MetricLog, keep_best: bool = False
    ):
        self.teacher, self.tok, self.problems, self.policy = teacher, tok, problems, policy
        self.limits, self.every, self.log, self.keep_best = limits, every, log, keep_best
        self.best: tuple[dict, int, dict] | None = None  # (metrics, step, weights) of the best validation

    def run(self, model, step: int) -> dict:
        was = model.training
        pair = Pair("eval", HFEngine(model, self.tok, "student"), self.teacher, self.limits)
        m = relay_eval(pair, self.problems, self.policy, self.limits)
        model.train(was)
        self.log(step=step, **{f"val_{k}": v for k, v in m.items()})
        if self.keep_best and (self.best is None or m["acc"] >= self.best[0]["acc"]):
            self.best = (m, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
        return m

    def on_step_end(self, args, state, control, model=None, **_):
        if self.every and state.global_step % self.every == 0:
            self.run(model, state.global_step)


def _dataset(cfg: GrpoCfg):
    from datasets import Dataset

    if cfg.problems:
        kept = load_kept(cfg.problems)
        problems = random.Random(cfg.seed).sample(kept, min(cfg.n_problems, len(kept)))
    else:
        problems = arith.load("train", cfg.n_problems, seed=cfg.seed)
    return Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": p.prompt}], "problem_id": p.id, "answer": p.answer}
            for p in problems
        ]
    )


def build_trainer(cfg: GrpoCfg, model, tok, teacher, log: MetricLog | None = None, extra_rewards: tuple = ()):
    """The configured ``GRPOTrainer`` (separate from ``train`` so tests can run two steps on tiny models)."""
    from trl import GRPOConfig, GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    policy = make_policy(cfg.policy, **cfg.policy_args) if cfg.calls else make_policy("student-only")
    args = GRPOConfig(
        output_dir=trainer_dir(cfg.out),
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        max_completion_length=cfg.max_tokens,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=5,
        temperature=cfg.temperature,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tok,
        args=args,
        train_dataset=_dataset(cfg),
        reward_funcs=[
            trl_reward_func(cfg.reward if cfg.calls else RewardCfg(kind="accuracy"), arith.is_correct),
            *extra_rewards,
        ],
        rollout_func=make_rollout_func(teacher, policy, limits_of(cfg), cfg.temperature, cfg.seed),
    )
    if log is not None:
        trainer.add_callback(
            LogCallback(log, keys=("loss", "reward", "rewards/", "grad_norm", "completions/mean"))
        )
    return trainer, policy


def train(cfg: GrpoCfg) -> dict:
    torch.set_num_threads(cfg.threads)
    log = MetricLog(cfg.metrics, f"grpo:{'relay' if cfg.calls else 'only'}")
    model, tok = load_model(cfg.student)
    teacher = (
        HFEngine.load(cfg.teacher, name="teacher") if cfg.calls else HFEngine(model, tok, "unused-teacher")
    )
    trainer, policy = build_trainer(cfg, model, tok, teacher, log)
    val = arith.load("validation", cfg.n_eval, seed=cfg.seed)
    evaluator = RelayEvalCallback(
        teacher, tok, val, policy, limits_of(cfg), cfg.eval_every, log, keep_best=cfg.keep_best
    )
    trainer.add_callback(evaluator)
    log(event="start", config=cfglib.to_dict(cfg))
    evaluator.run(model, 0)
    t0 = time.time()
    trainer.train()
    train_s = time.time() - t0
    final = (
        evaluator.run(model, trainer.state.global_step) if trainer.state.global_step % cfg.eval_every else {}
    )
    kept = trainer.state.global_step
    if evaluator.best is not None and evaluator.best[1] != kept:
        final, kept, weights = evaluator.best
        model.load_state_dict(weights)
    model.to(torch.bfloat16).save_pretrained(cfg.out)
    tok.save_pretrained(cfg.out)
    summary = dict(
        event="done",
        train_s=round(train_s, 1),
        steps=trainer.state.global_step,
        kept_step=kept,
        out=cfg.out,
        **final,
    )
    log(**summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    return train(cfglib.parse(GrpoCfg, argv))


if __name__ == "__main__":
    main()
