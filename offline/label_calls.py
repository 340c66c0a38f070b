"""Call labels from real rollouts: where one teacher span turns the student's wrong answer right.

    OMP_NUM_THREADS=2 .venv/bin/python -m offline.label_calls \\
        --config offline/recipes/qwen2.5-coder-0.5b-1.5b/label.yaml          # resumes where it stopped
    ... label.yaml n_problems=64 out_dir=/tmp/labels-try                     # key=value overrides

Three stages run chunk by chunk (``chunk`` problems through all three, then the next chunk), so a run stopped
early has finished labels on a prefix of the problems. Each appends its rows to a jsonl file in ``out_dir``;
a job killed at any moment loses at most the step in flight, and a rerun skips everything already written.

1. ``rollouts``: the student's greedy solution to each of ``n_problems`` GSM8K *train* problems (a seeded
   order; its first ``dev_size`` problems are held out, never labelled, and listed in ``dev_ids.json`` for
   choosing thresholds, biases and checkpoints later), graded with the benchmark's own grader.
2. ``scores``: one teacher-forced pass over each wrong solution (vLLM prompt log-probs): at every position the
   margin between the teacher's top token and the student's token; the ``n_cuts`` positions of largest margin,
   at least ``min_gap`` tokens apart, earliest first, are the candidate cuts.
3. ``trials``: for each wrong solution, trials in the order (cut 1, N₁), (cut 2, N₁), ..., then the larger Ns
   at the first cuts (``trial_plan``): the teacher writes N tokens from the cut (greedy; it may end earlier
   with an end token), the student finishes greedily; the first trial that turns the answer right is the
   solution's call. Trials run round by round over a chunk, so a round costs one batched teacher call and one
   student call.
4. ``examples``: ``examples.jsonl``, the SFT data: every labelled call (student prefix, N, teacher span,
   student continuation) and a seeded share ``keep_correct`` of the correct solutions with no call;
   ``stats.json``: counts, tokens and wall minutes per stage, where the fixes fall. Stage 4 is cheap and
   rebuilt on every run.

Token ids, not text, are stored: student and teacher share the tokenizer, the warm-up job joins the pieces as
ids (with ``<call>N</call>`` between them), so nothing is re-tokenised. The response is what the evaluation
job sees: the problem as the user message, the pair's chat template, greedy decoding, ``max_tokens`` in all.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from offline import config as cfglib
from offline.common import Jsonl
from offline.tasks import grade_response, load_benchmark
from offline.tasks.base import Problem
from offline.vllm_batch import PairModels
from relay_demo import ROOT


@dataclass
class LabelCfg:
    pair: str = "qwen2.5-coder-0.5b-1.5b"
    benchmark: str = "gsm8k"
    split: str = "train"
    n_problems: int = 1500  # labelled problems (K), after the held-out ones
    dev_size: int = 200  # held-out train problems: the first of the seeded order, never labelled
    seed: int = 0
    out_dir: str = "results/training/qwen2.5-coder-0.5b-1.5b/labels"
    max_tokens: int = 1024  # the whole response, as in the evaluation recipe
    chunk: int = 64  # problems per checkpoint (and per batched engine call)
    n_cuts: int = 3  # candidate cuts per wrong solution
    min_gap: int = 8  # tokens between two candidate cuts
    min_margin: float = 1.0  # nats: a cut where the teacher barely disagrees is no candidate
    # (cut index, N): tried in this order until one turns the answer right
    trial_plan: list[tuple[int, int]] = field(default_factory=lambda: [(0, 32), (1, 32), (2, 32), (0, 96)])
    keep_correct: float = 0.5  # share of correct solutions kept as no-call examples
    # both engines; the teacher-forced pass peaked at 11 GB without a cap on the tokens of one step
    engine: dict = field(
        default_factory=lambda: {"dtype": "bfloat16", "kv_cache_gib": 3, "max_num_batched_tokens": 2048}
    )
    grading_time_limit: float = 5.0

    def validate(self) -> None:
        if self.n_problems < 1 or self.dev_size < 0 or self.chunk < 1 or self.max_tokens < 8:
            raise ValueError("n_problems and chunk must be >= 1, dev_size >= 0, max_tokens >= 8")
        if self.n_cuts < 1 or self.min_gap < 1:
            raise ValueError("n_cuts and min_gap must be >= 1")
        if not 0.0 <= self.keep_correct <= 1.0:
            raise ValueError(f"keep_correct must be in [0, 1], got {self.keep_correct}")
        for cut, n in self.trial_plan:
            if not (0 <= cut < self.n_cuts) or n < 1:
                raise ValueError(f"trial ({cut}, {n}): cut must be in [0, n_cuts), N >= 1")


def out_path(cfg: LabelCfg) -> Path:
    """The output folder; a relative ``out_dir`` is read from the repository root (and stored as given)."""
    return ROOT / cfg.out_dir


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- problems --------------------------------------------------------------------------------------


def split_problems(cfg: LabelCfg) -> tuple[list[Problem], list[Problem]]:
    """(held-out dev problems, problems to label): one seeded order of the train split, dev first."""
    problems = load_benchmark(cfg.benchmark, split=cfg.split)
    order = list(range(len(problems)))
    random.Random(f"label/{cfg.benchmark}-{cfg.split}/{cfg.seed}").shuffle(order)
    dev = [problems[i] for i in sorted(order[: cfg.dev_size])]
    label = [problems[i] for i in order[cfg.dev_size : cfg.dev_size + cfg.n_problems]]
    return dev, label


def keep_share(pid: str, share: float, seed: int) -> bool:
    """A stable coin per problem (no RNG state): the same problems are kept on every rebuild."""
    h = hashlib.sha256(f"{seed}/{pid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < share


# -- the engine calls ------------------------------------------------------------------------------


def pick_cuts(margins: list[tuple[float, int]], n_cuts: int, min_gap: int, min_margin: float) -> list[int]:
    """The ``n_cuts`` positions of largest margin, at least ``min_gap`` apart, returned earliest first."""
    ranked = sorted(range(len(margins)), key=lambda i: (-margins[i][0], i))
    chosen: list[int] = []
    for i in ranked:
        if margins[i][0] < min_margin or len(chosen) == n_cuts:
            break
        if all(abs(i - j) >= min_gap for j in chosen):
            chosen.append(i)
    return sorted(chosen)


# -- stages ----------------------------------------------------------------------------------------


class Stage:
    """One stage's output file and its cost (tokens, seconds), summed over sessions in ``costs.jsonl``."""

    def __init__(self, cfg: LabelCfg, name: str):
        self.name = name
        self.log = Jsonl(out_path(cfg) / f"{name}.jsonl")
        self.costs = Jsonl(out_path(cfg) / "costs.jsonl")

    def record(self, models: PairModels, rows: list[dict], seconds: float, before: dict) -> None:
        self.log.append(rows)
        spent = {k: models.tokens[k] - before[k] for k in models.tokens}
        self.costs.append(
            [{"stage": self.name, "problems": len(rows), "seconds": round(seconds, 2), **spent}]
        )


def _chunked(stage: Stage, models: PairModels, items: list, size: int, work) -> None:
    """Run ``work(chunk) -> rows`` over ``items`` chunk by chunk, recording each chunk as it ends."""
    for chunk in _chunks(items, size):
        before, t0 = dict(models.tokens), time.monotonic()
        rows = work(chunk)
        stage.record(models, rows, time.monotonic() - t0, before)
        print(f"[{stage.name}] +{len(rows)} rows ({time.monotonic() - t0:.0f}s)", flush=True)


def stage_rollouts(cfg: LabelCfg, models: PairModels, problems: list[Problem]) -> dict[str, dict]:
    stage = Stage(cfg, "rollouts")
    done = {r["id"]: r for r in stage.log.rows()}
    todo = [p for p in problems if p.id not in done]

    def work(chunk: list[Problem]) -> list[dict]:
        outs = models.generate(
            "student", [models.prompt_ids(p) for p in chunk], [cfg.max_tokens] * len(chunk)
        )
        rows = []
        for p, ids in zip(chunk, outs, strict=True):
            g = grade_response(p.benchmark, models.text(ids), p, time_limit=cfg.grading_time_limit)
            rows.append({"id": p.id, "response_ids": ids, "correct": bool(g.correct)})
        return rows

    _chunked(stage, models, todo, cfg.chunk, work)
    return {r["id"]: r for r in stage.log.rows()}


def stage_scores(
    cfg: LabelCfg, models: PairModels, problems: list[Problem], rollouts: dict
) -> dict[str, dict]:
    stage = Stage(cfg, "scores")
    done = {r["id"] for r in stage.log.rows()}
    todo = [p for p in problems if not rollouts[p.id]["correct"] and p.id not in done]

    def work(chunk: list[Problem]) -> list[dict]:
        prompts = [models.prompt_ids(p) for p in chunk]
        full = [pr + rollouts[p.id]["response_ids"] for p, pr in zip(chunk, prompts, strict=True)]
        rows = []
        for p, m in zip(chunk, models.margins(full, [len(x) for x in prompts]), strict=True):
            cuts = pick_cuts(m, cfg.n_cuts, cfg.min_gap, cfg.min_margin)
            rows.append(
                {"id": p.id, "cuts": cuts, "margins": [round(m[c][0], 3) for c in cuts], "len": len(m)}
            )
        return rows

    _chunked(stage, models, todo, cfg.chunk, work)
    return {r["id"]: r for r in stage.log.rows()}


def next_trial(cfg: LabelCfg, cuts: list[int], tried: list[dict]) -> int | None:
    """Index into ``trial_plan`` of the next trial for a solution, or None when solved or out of trials."""
    if any(t["correct"] for t in tried):
        return None
    done = {t["trial"] for t in tried}
    for k, (cut, _n) in enumerate(cfg.trial_plan):
        if k not in done and cut < len(cuts):
            return k
    return None


def stage_trials(
    cfg: LabelCfg, models: PairModels, problems: list[Problem], rollouts: dict, scores: dict
) -> list:
    stage = Stage(cfg, "trials")
    tried: dict[str, list[dict]] = {}
    for r in stage.log.rows():
        tried.setdefault(r["id"], []).append(r)
    wrong = [p for p in problems if p.id in scores]

    def work(chunk: list[Problem]) -> list[dict]:
        rows: list[dict] = []
        while True:  # one round: every unsolved solution of the chunk tries its next (cut, N)
            plan = [(p, next_trial(cfg, scores[p.id]["cuts"], tried.get(p.id, []))) for p in chunk]
            plan = [(p, k) for p, k in plan if k is not None]
            if not plan:
                return rows
            ctx, budget, cuts_n = [], [], []
            for p, k in plan:
                cut_i, n = cfg.trial_plan[k]
                pos = scores[p.id]["cuts"][cut_i]
                prefix = rollouts[p.id]["response_ids"][:pos]
                ctx.append(models.prompt_ids(p) + prefix)
                budget.append(min(n, cfg.max_tokens - pos))
                cuts_n.append((pos, n, prefix))
            teacher = models.generate("teacher", ctx, budget)
            ends = [bool(t) and t[-1] in models.pair.teacher.eos_ids for t in teacher]
            rest = [
                0 if end else cfg.max_tokens - len(prefix) - len(t)
                for (_pos, _n, prefix), t, end in zip(cuts_n, teacher, ends, strict=True)
            ]
            conts = models.generate("student", [c + t for c, t in zip(ctx, teacher, strict=True)], rest)
            for (p, k), (pos, n, prefix), t, c in zip(plan, cuts_n, teacher, conts, strict=True):
                g = grade_response(
                    p.benchmark, models.text(prefix + t + c), p, time_limit=cfg.grading_time_limit
                )
                row = {"id": p.id, "trial": k, "pos": pos, "n": n, "teacher_ids": t, "cont_ids": c}
                row["correct"] = bool(g.correct)
                tried.setdefault(p.id, []).append(row)
                rows.append(row)

    todo = [p for p in wrong if next_trial(cfg, scores[p.id]["cuts"], tried.get(p.id, [])) is not None]
    _chunked(stage, models, todo, cfg.chunk, work)
    return stage.log.rows()


def build_examples(
    cfg: LabelCfg, problems: list[Problem], rollouts: dict, scores: dict, trials: list
) -> dict:
    """examples.jsonl (the warm-up data) and stats.json from the three stages' files."""
    fixed = {t["id"]: t for t in trials if t["correct"]}
    out: list[dict] = []
    for p in problems:
        r = rollouts.get(p.id)
        if r is None:
            continue
        if r["correct"] and keep_share(p.id, cfg.keep_correct, cfg.seed):
            out.append(
                {"id": p.id, "prefix_ids": r["response_ids"], "n": 0, "teacher_ids": [], "cont_ids": []}
            )
        elif p.id in fixed:
            t = fixed[p.id]
            prefix = r["response_ids"][: t["pos"]]
            out.append({"id": p.id, "prefix_ids": prefix, "n": t["n"], "teacher_ids": t["teacher_ids"],
                        "cont_ids": t["cont_ids"]})  # fmt: skip
    path = out_path(cfg) / "examples.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in out), encoding="utf-8")
    os.replace(tmp, path)
    return write_stats(cfg, problems, rollouts, scores, trials, out)


def write_stats(cfg, problems, rollouts, scores, trials, examples) -> dict:
    n_roll = sum(p.id in rollouts for p in problems)
    n_correct = sum(rollouts[p.id]["correct"] for p in problems if p.id in rollouts)
    fixed = [t for t in trials if t["correct"]]
    by_trial = {
        str(cfg.trial_plan[k]): sum(t["trial"] == k for t in fixed) for k in range(len(cfg.trial_plan))
    }
    where = [t["pos"] / max(1, len(rollouts[t["id"]]["response_ids"])) for t in fixed]
    costs: dict[str, dict] = {}
    for c in Jsonl(out_path(cfg) / "costs.jsonl").rows():
        agg = costs.setdefault(c["stage"], {})
        for k, v in c.items():
            if k != "stage":
                agg[k] = agg.get(k, 0) + v
    for agg in costs.values():
        agg["minutes"] = round(agg.pop("seconds", 0) / 60, 1)
    calls = [e for e in examples if e["n"]]
    stats = {
        "config": cfglib.to_dict(cfg),
        "problems_rolled_out": n_roll,
        "student_correct": n_correct,
        "wrong_scored": len(scores),
        "wrong_with_trials_done": len({t["id"] for t in trials}),
        "fixed_by_one_call": len(fixed),
        "fixed_by_trial": by_trial,
        "fix_position_quintiles": [sum(int(min(w, 0.999) * 5) == q for w in where) for q in range(5)],
        "examples": len(examples),
        "examples_with_call": len(calls),
        "teacher_tokens_in_calls": sum(len(e["teacher_ids"]) for e in calls),
        "response_tokens_in_calls": sum(
            len(e["prefix_ids"]) + len(e["teacher_ids"]) + len(e["cont_ids"]) for e in calls
        ),
        "cost": costs,
    }
    path = out_path(cfg) / "stats.json"
    path.write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return stats


def run(cfg: LabelCfg, models: PairModels | None = None) -> dict:
    out = out_path(cfg)
    out.mkdir(parents=True, exist_ok=True)
    dev, problems = split_problems(cfg)
    (out / "dev_ids.json").write_text(json.dumps([p.id for p in dev]) + "\n", encoding="utf-8")
    models = models or PairModels(cfg.pair, cfg.engine)
    # the three stages chunk by chunk, so that a run stopped early leaves finished labels on a prefix
    for chunk in _chunks(problems, cfg.chunk):
        rollouts = stage_rollouts(cfg, models, chunk)
        scores = stage_scores(cfg, models, chunk, rollouts)
        stage_trials(cfg, models, chunk, rollouts, scores)
        stats = rebuild(cfg, problems)
    return stats


def rebuild(cfg: LabelCfg, problems: list[Problem]) -> dict:
    """examples.jsonl and stats.json from the stage files as they are now (cheap; after every chunk)."""
    rollouts = {r["id"]: r for r in Stage(cfg, "rollouts").log.rows()}
    scores = {r["id"]: r for r in Stage(cfg, "scores").log.rows()}
    return build_examples(cfg, problems, rollouts, scores, Stage(cfg, "trials").log.rows())


def main(argv: list[str] | None = None) -> int:
    cfg = cfglib.parse_or_exit(LabelCfg, argv, "python -m offline.label_calls")
    stats = run(cfg)
    keys = ("problems_rolled_out", "student_correct", "fixed_by_one_call", "examples", "examples_with_call")
    print(json.dumps({k: stats[k] for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
