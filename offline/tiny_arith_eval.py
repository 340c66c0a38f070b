"""Final test evaluation of the tiny-arith models: what the issue's "done" criteria ask for, in one table.

Greedy relay decoding on ``n_test`` test problems: the teacher alone, each student alone, the relay students
with their own commands (``learned``), and the confidence trigger (N=1) swept over ``taus`` on chosen
students, each with accuracy, call ratio (teacher tokens / all response tokens) and the share of the
student->teacher gap recovered relative to ``gap_student``. One JSON line per row in ``out``.

    OMP_NUM_THREADS=1 .venv/bin/python -m offline.tiny_arith_eval \
        --config offline/recipes/tiny-arith/final-eval.yaml
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from offline import config as cfglib
from offline.grpo import relay_eval
from offline.tasks import arith
from offline.train_base import MetricLog
from relay_demo.backends.hf_engine import HFEngine
from relay_demo.pairs import Pair
from relay_demo.policies import make_policy
from relay_demo.relay import Limits

M = "results/models/tiny-arith"


@dataclass
class FinalEvalCfg:
    teacher: str = f"{M}/teacher"
    students: dict = field(
        default_factory=lambda: {
            "base": f"{M}/student-base",
            "grpo": f"{M}/student-grpo",
            "warmup": f"{M}/student-warmup",
            "relay": f"{M}/student-relay",
        }
    )
    relay_students: list[str] = field(
        default_factory=lambda: ["warmup", "relay"]
    )  # run with their own commands
    confidence_students: list[str] = field(default_factory=lambda: ["base", "grpo"])
    taus: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    gap_student: str = "base"  # gap recovered = (acc - acc[gap_student]) / (acc[teacher] - acc[gap_student])
    n_test: int = 1000
    seed: int = 0
    max_n: int = 16
    max_calls: int = 5
    max_tokens: int = 128
    threads: int = 1
    out: str = "results/training/tiny-arith/final_eval.jsonl"

    def validate(self) -> None:
        unknown = set(self.relay_students + self.confidence_students + [self.gap_student]) - set(
            self.students
        )
        if unknown:
            raise ValueError(f"students {sorted(unknown)} are not in students: {sorted(self.students)}")


def run(cfg: FinalEvalCfg) -> list[dict]:
    torch.set_num_threads(cfg.threads)
    log = MetricLog(cfg.out, "final_eval")
    problems = arith.load("test", cfg.n_test, seed=cfg.seed)
    limits = Limits(max_n=cfg.max_n, max_calls=cfg.max_calls, max_tokens=cfg.max_tokens)
    teacher = HFEngine.load(cfg.teacher, name="teacher")
    engines = {k: HFEngine.load(v, name=k) for k, v in cfg.students.items()}
    rows: list[dict] = []

    def measure(method: str, student: str, policy, **params) -> dict:
        t0 = time.time()
        pair = Pair("tiny-arith", engines.get(student, teacher), teacher, limits)
        m = relay_eval(pair, problems, policy, limits)
        row = dict(method=method, student=student, **params, **m, seconds=round(time.time() - t0, 1))
        rows.append(row)
        return row

    base = measure("teacher", "teacher", make_policy("teacher-only"))
    ref = {"teacher": base["acc"]}
    for name in cfg.students:
        ref[name] = measure("student-alone", name, make_policy("student-only"))["acc"]
    for name in cfg.relay_students:
        measure("relay-learned", name, make_policy("learned"))
    for name in cfg.confidence_students:
        for tau in cfg.taus:
            measure("confidence", name, make_policy("confidence", tau=tau, n=1), tau=tau)
    gap = ref["teacher"] - ref[cfg.gap_student]
    for row in rows:
        row["gap_recovered"] = (row["acc"] - ref[cfg.gap_student]) / gap if gap else None
        log(**row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    return run(cfglib.parse(FinalEvalCfg, argv))


if __name__ == "__main__":
    main()
