"""Teacher filter: the teacher's pass@k on each training problem, and which problems GRPO keeps.

Keep rule (configurable): a problem is kept when the teacher solved it at least ``min_pass`` times out of
``k`` samples at ``temperature``. The official code keeps a problem solved at least once in 16
(``k=16, min_pass=1``); the paper's text drops problems failed more than 5 times in 10 (``k=10, min_pass=5``).
Writes one JSON line per problem (id, prompt, answer, solution, passes, kept) to ``out`` and a summary line
to ``metrics``.

    OMP_NUM_THREADS=1 .venv/bin/python -m offline.filter --config offline/recipes/tiny-arith/filter.yaml
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from offline import config as cfglib
from offline.common import MetricLog, generate, load_model
from offline.tasks import arith
from offline.tasks.base import Problem


@dataclass
class FilterCfg:
    teacher: str = "results/models/tiny-arith/teacher"
    n_problems: int = 2000  # training problems scored (the GRPO pool is drawn from the kept ones)
    seed: int = 100  # problems of the train split drawn with this seed (not the base models' seeds)
    k: int = 4
    min_pass: int = 1
    temperature: float = 0.7
    max_new_tokens: int = 96
    batch_size: int = 256
    threads: int = 1
    out: str = "results/training/tiny-arith/filter_kept.jsonl"
    metrics: str | None = "results/training/tiny-arith/filter.jsonl"

    def validate(self) -> None:
        if not 1 <= self.min_pass <= self.k:
            raise ValueError(f"need 1 <= min_pass <= k, got min_pass={self.min_pass}, k={self.k}")
        if self.temperature <= 0:
            raise ValueError("pass@k needs sampling: temperature > 0")


def pass_counts(model, tok, problems: list[Problem], cfg: FilterCfg) -> list[int]:
    """How many of ``k`` samples solve each problem."""
    texts = generate(
        model,
        tok,
        [p.prompt for p in problems],
        temperature=cfg.temperature,
        num_return=cfg.k,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=max(1, cfg.batch_size // cfg.k),
        seed=cfg.seed,
    )
    return [sum(arith.is_correct(t, p.answer) for t in ts) for ts, p in zip(texts, problems, strict=True)]


def run(cfg: FilterCfg) -> dict:
    torch.set_num_threads(cfg.threads)
    log = MetricLog(cfg.metrics, "filter")
    model, tok = load_model(cfg.teacher)
    problems = arith.load("train", cfg.n_problems, seed=cfg.seed)
    t0 = time.time()
    passes = pass_counts(model, tok, problems, cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for p, n in zip(problems, passes, strict=True):
            row = {
                "id": p.id,
                "prompt": p.prompt,
                "answer": p.answer,
                "solution": p.meta["solution"],
                "passes": n,
                "kept": n >= cfg.min_pass,
            }
            f.write(json.dumps(row) + "\n")
    kept = sum(n >= cfg.min_pass for n in passes)
    summary = dict(
        event="done",
        n_problems=len(problems),
        k=cfg.k,
        min_pass=cfg.min_pass,
        kept=kept,
        kept_frac=kept / max(1, len(problems)),
        teacher_pass1=sum(passes) / max(1, cfg.k * len(problems)),
        seconds=round(time.time() - t0, 1),
        out=str(out),
    )
    log(**summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run(cfglib.parse(FilterCfg, argv))


if __name__ == "__main__":
    main()
