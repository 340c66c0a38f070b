"""The RL stage for a real pair: on-policy relay rounds scored by the paper's difficulty-aware reward.

    make qwen-pair                                        # once: the models, into models/qwen2.5-coder
    OMP_NUM_THREADS=2 .venv/bin/python -m offline.rl_relay \
        --config offline/recipes/qwen2.5-coder-0.5b-1.5b/rl.yaml
    ... rl.yaml rounds=1 eval_every=1 problems_per_round=2 group=4 dev_n=4 work=/tmp/rl   # a short trial

Each **round** is one GRPO step done in three resumable parts:

1. *Rollouts.* The student of this round (the merged copy of its adapter, on vLLM) relay-decodes ``group``
   samples of each of ``problems_per_round`` problems; its ``<call>N</call>`` commands are served by the
   frozen teacher through the project's own relay loop (``relay_batch``), exactly as the app and the
   evaluation run them. Graded answers go into the paper's difficulty-aware reward per problem group
   (``offline.rewards``); advantages are group-relative ((r - mean) / std within the group).
2. *Update.* One policy-gradient step of the LoRA student (transformers + peft) on the rollouts whose
   advantage is not zero: ``-A * log p(token)`` summed over the tokens the *student* wrote (the relay's
   source mask: the teacher's tokens never enter the loss), divided by the number of those tokens
   (token-level normalisation, as DAPO). One step on fresh samples is on-policy: the importance ratio is 1
   and PPO's clipping would never act, so none is computed.
3. *Dev point* (every ``eval_every`` rounds, ``offline/rl_dev.py``): greedy relay and its teacher-free twin
   on held-out train problems (never a test split), with the teacher-alone answers of the committed dev run,
   into the learning curve (``curve``): accuracy, call ratio, calls per problem, the share of calls on
   problems only the teacher solves, how many problems the calls turn from wrong (teacher-free) to right
   (relay), and the per-problem answers for paired comparisons. ``sweep_rounds`` / ``sweep_biases`` add
   points at other call biases without training: the checkpoint and the bias are chosen there.

Why rounds and not TRL's ``GRPOTrainer``: its ``rollout_func`` would decode with the training model itself
under transformers, where the unmerged peft student writes about 4 tokens/s (../shared/notes/
qwen-pair-training.md); a round's 64 relay rollouts on vLLM with a merged copy, teacher handoffs included,
ran at 97 tokens/s on 2 threads here. The reward, the group advantages and the source mask are the same as
in ``offline/grpo.py`` (the tiny pair's TRL job); the cost of each part is logged per round.

**Training problems** come from the train split in a seeded order, minus the dev problems and the problems
the warm-up was labelled on, filtered by the teacher's pass rate as the paper does: a problem is kept when
the teacher solves it in at least one of ``filter_k`` samples. Filtering runs lazily, ``filter_chunk``
problems at a time, whenever the next round needs more kept problems than there are.

Everything lands under ``work`` (ignored by git): ``filter.jsonl``, ``rollouts/round-NNN.jsonl``,
``adapters/round-NNN/`` (the adapter and optimizer state after NNN updates; round-000 is ``init_adapter``).
Killed at any moment, a rerun continues from the last finished part. ``metrics`` (one row a round), ``curve``
and ``carry`` (the newest round, for a fresh machine to go on from: ``offline/rl_carry.py``) are committed.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from offline import config as cfglib
from offline import rl_carry, rl_dev
from offline.common import Jsonl
from offline.rewards import RewardCfg, Rollout, case_counts, group_rewards
from offline.rl_parts import Engines, Learner, advantages, repo_path
from offline.tasks import load_benchmark
from offline.tasks.base import Problem
from relay_demo.adapters import cast_adapter, name_base


@dataclass
class RlCfg:
    pair: str = "qwen2.5-coder-0.5b-1.5b-relay"  # registry name: base student, teacher, chat settings
    student: str = "models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct"  # the base the adapters sit on
    teacher: str = "models/qwen2.5-coder/qwen2.5-coder-1.5b-instruct"
    init_adapter: str = "results/models/qwen2.5-coder-0.5b-1.5b/relay-lora"
    work: str = "results/models/qwen2.5-coder-0.5b-1.5b/relay-rl/trainer-state"
    metrics: str = "results/training/qwen2.5-coder-0.5b-1.5b/rl.jsonl"
    curve: str = "results/training/qwen2.5-coder-0.5b-1.5b/rl-dev.jsonl"
    benchmark: str = "gsm8k"
    split: str = "train"
    seed: int = 0
    dev_ids: str = "results/training/qwen2.5-coder-0.5b-1.5b/labels/dev_ids.json"
    dev_n: int = 100  # the first dev_n of dev_ids: eval-dev.yaml's problems
    dev_run: str = "results/runs/qwen2.5-coder-0.5b-1.5b-dev"  # its teacher rows: who solves a dev problem
    exclude: list[str] = field(default_factory=lambda: ["results/training/qwen2.5-coder-0.5b-1.5b/labels"])
    filter_k: int = 2
    filter_temperature: float = 0.7
    filter_chunk: int = 32
    rounds: int = 40
    problems_per_round: int = 8
    group: int = 8
    temperature: float = 0.7  # the paper's rollout temperature
    call_bias: float = 0.0
    max_n: int = 100
    max_calls: int = 5
    max_tokens: int = 640  # rollouts; the dev points use eval_max_tokens, as the evaluation recipes
    eval_max_tokens: int = 1024
    eval_every: int = 4
    reward: RewardCfg = field(default_factory=RewardCfg)
    scale_rewards: bool = True  # divide by the group's std (GRPO); false: centred only (Dr. GRPO)
    lr: float = 5e-5
    token_lr: float = 5e-5  # the two command rows (the warm-up gave them their own, larger rate)
    max_grad_norm: float = 1.0
    micro_batch: int = 2
    engine: dict = field(default_factory=lambda: {"dtype": "bfloat16", "kv_cache_gib": 2})
    train_dtype: str = "bfloat16"  # or auto (relay_demo.pairs.resolve_dtype), as the engines' dtype
    keep_adapters: int = 3  # round adapters kept besides those at dev points
    threads: int = 2
    # dev points at other call biases, without training (offline/rl_dev.py): the bias is chosen on dev
    sweep_rounds: list[int] = field(default_factory=list)
    sweep_biases: list[float] = field(default_factory=list)
    # updates in one process, then it exits (0: no limit); run it in a loop (rl.yaml): the process grew by
    # about 3 GB a round with each reloaded student and was killed for memory after 4 rounds and a dev point
    max_updates: int = 0
    # export: the adapter of round export_round (chosen on dev) into export_to, for the relay pair to serve
    export_round: int | None = None
    export_to: str = ""
    export_dtype: str = "bfloat16"  # the served copy; the pair merges into bf16 weights (float32: as trained)
    carry: str = ""  # a committed folder: the newest round outlives the machine (offline/rl_carry.py)

    def validate(self) -> None:
        if self.group < 2:
            raise ValueError("group must be >= 2: advantages are relative within a problem's group")
        if min(self.problems_per_round, self.rounds, self.filter_k, self.filter_chunk, self.eval_every) < 1:
            raise ValueError("problems_per_round, rounds, filter_k, filter_chunk, eval_every must be >= 1")
        if not 0 < self.temperature <= 2 or not 0 <= self.filter_temperature <= 2:
            raise ValueError("temperature must be in (0, 2], filter_temperature in [0, 2]")
        if self.filter_k > 1 and self.filter_temperature == 0:
            raise ValueError("filter_k > 1 greedy samples would all be the same: give filter_temperature")
        if not self.lr > 0 or not self.token_lr >= 0:
            raise ValueError("lr must be > 0 and token_lr >= 0")
        if self.export_dtype not in ("bfloat16", "float32"):
            raise ValueError("export_dtype must be bfloat16 or float32")
        if (self.export_round is None) != (not self.export_to):
            raise ValueError("an export needs both export_round and export_to")
        if bool(self.sweep_rounds) != bool(self.sweep_biases):
            raise ValueError("a dev sweep needs both sweep_rounds and sweep_biases")


# -- problems --------------------------------------------------------------------------------------


def dev_problems(cfg: RlCfg, by_id: dict[str, Problem]) -> list[Problem]:
    ids = json.loads(repo_path(cfg.dev_ids).read_text(encoding="utf-8"))
    return [by_id[i] for i in ids[: cfg.dev_n]]


def pool(cfg: RlCfg, problems: list[Problem]) -> list[Problem]:
    """Train problems in a seeded order, minus the dev ids and the problems an ``exclude`` folder labelled."""
    banned = set(json.loads(repo_path(cfg.dev_ids).read_text(encoding="utf-8")))
    for folder in cfg.exclude:
        for name in ("rollouts.jsonl", "examples.jsonl"):
            banned |= {r["id"] for r in Jsonl(repo_path(folder) / name).rows()}
    order = [p for p in problems if p.id not in banned]
    random.Random(f"rl/{cfg.benchmark}-{cfg.split}/{cfg.seed}").shuffle(order)
    return order


def grade(cfg: RlCfg, text: str, problem: Problem) -> bool:
    return rl_dev.grade(cfg.benchmark, text, problem)


# -- stage 1: the teacher filter -------------------------------------------------------------------


def kept_problems(cfg: RlCfg, engines: Engines, ordered: list[Problem], need: int, log) -> list[Problem]:
    """The first ``need`` kept problems of ``ordered``, filtering further chunks when there are too few."""
    store = Jsonl(repo_path(cfg.work) / "filter.jsonl")
    done = {r["id"]: r for r in store.rows()}
    by_pos = list(ordered)
    while True:
        kept = [p for p in by_pos if p.id in done and done[p.id]["kept"]]
        if len(kept) >= need:
            return kept[:need]
        todo = [p for p in by_pos if p.id not in done][: cfg.filter_chunk]
        if not todo:
            raise RuntimeError(f"the pool has only {len(kept)} kept problems; {need} needed")
        t0 = time.monotonic()
        samples = engines.teacher_samples(todo, cfg.filter_k, cfg.filter_temperature, cfg.seed + len(done))
        rows = []
        for p, texts in zip(todo, samples, strict=True):
            solved = sum(grade(cfg, t, p) for t in texts)
            rows.append({"id": p.id, "solved": solved, "k": cfg.filter_k, "kept": solved > 0})
        store.append(rows)
        done.update({r["id"]: r for r in rows})
        log(stage="filter", problems=len(rows), kept=sum(r["kept"] for r in rows), secs=time.monotonic() - t0)


# -- stage 2a: rollouts ----------------------------------------------------------------------------


def rollouts(cfg: RlCfg, pair, problems: list[Problem]) -> list[dict]:
    """``group`` relay samples of each problem, graded, rewarded and given group-relative advantages."""
    from relay_demo.backends.base import Sampling
    from relay_demo.policies import make_policy
    from relay_demo.relay import relay_batch

    prompts = [p.prompt for p in problems for _ in range(cfg.group)]
    # no per-request seed: vLLM 0.32 on CPU fails a seeded request whose sampled token it discards after a
    # chunked prefill ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync), which
    # killed round 3 here; a round's rollouts are written once, so a resumed run never needs to redraw them
    sampling = Sampling(temperature=cfg.temperature, seed=None)
    results = relay_batch(pair, prompts, make_policy("learned", call_bias=cfg.call_bias), sampling=sampling)
    rows = []
    for i, p in enumerate(problems):
        group = results[i * cfg.group : (i + 1) * cfg.group]
        outcome = [Rollout(grade(cfg, r.text, p), r.calls > 0, r.call_ratio) for r in group]
        rewards = group_rewards(outcome, cfg.reward)
        for r, o, rew, adv in zip(
            group, outcome, rewards, advantages(rewards, cfg.scale_rewards), strict=True
        ):
            rows.append(
                {
                    "id": p.id,
                    "correct": o.correct,
                    "calls": r.calls,
                    "call_ratio": r.call_ratio,
                    "reward": rew,
                    "advantage": adv,
                    "finish": r.finish_reason,
                    "prompt_ids": r.prompt_ids,
                    "token_ids": r.token_ids,
                    "source_mask": r.source_mask,
                }
            )
    return rows


# -- the rounds ------------------------------------------------------------------------------------


def _round_dir(cfg: RlCfg, rnd: int) -> Path:
    return repo_path(cfg.work) / "adapters" / f"round-{rnd:03d}"


def _last_round(cfg: RlCfg) -> int:
    """The number of updates already saved (round-000 is the starting adapter)."""
    folder = repo_path(cfg.work) / "adapters"
    if not (folder / "round-000" / "adapter_config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "round-000.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(repo_path(cfg.init_adapter), tmp)
        tmp.rename(folder / "round-000")
    done = [
        int(p.name[6:]) for p in folder.glob("round-[0-9][0-9][0-9]") if (p / "adapter_config.json").is_file()
    ]
    return max(done)


def check_work_state(cfg: RlCfg, start: int) -> None:
    """Refuse to run when ``metrics`` logs more updates than ``work`` holds adapters: the work folder (ignored
    by git) was lost or swapped, and training on would log a second round 0 under the first run's rounds."""
    logged = [r["round"] for r in Jsonl(repo_path(cfg.metrics)).rows() if r.get("stage") == "update"]
    if logged and max(logged) + 1 > start:
        raise SystemExit(
            f"{cfg.metrics} logs updates up to round {max(logged)}, but {cfg.work} holds adapters only up to "
            f"round {start}: its work state is gone. Restore the folder, or start a new run with its own "
            "files (metrics=..., curve=..., work=...) so the first run's log stays as it is."
        )


def _prune(cfg: RlCfg, latest: int) -> None:
    """Keep round-000, every dev-point round and the newest ``keep_adapters``."""
    for p in (repo_path(cfg.work) / "adapters").glob("round-[0-9][0-9][0-9]"):
        rnd = int(p.name[6:])
        if rnd and rnd % cfg.eval_every and rnd <= latest - cfg.keep_adapters:
            shutil.rmtree(p, ignore_errors=True)


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows), encoding="utf-8")
    tmp.rename(path)


def export(cfg: RlCfg) -> Path:
    """Copy round ``export_round``'s adapter (not its optimizer state) to ``export_to`` atomically, with a
    ``training_summary.json``: the round, the recipe, the round's dev points and the rounds' total cost."""
    src, out = _round_dir(cfg, cfg.export_round), repo_path(cfg.export_to)
    if not (src / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter of round {cfg.export_round} ({src}): pruned, or not trained yet")
    rows = [r for r in Jsonl(repo_path(cfg.metrics)).rows() if r.get("round", -1) < cfg.export_round]
    summary = {
        "out": cfg.export_to,
        "round": cfg.export_round,
        "from": cfg.init_adapter,
        "updates": cfg.export_round,
        "dtype": cfg.export_dtype,
        "rollouts": sum(r.get("rollouts", 0) for r in rows if r.get("stage") == "rollouts"),
        "minutes": round(sum(r.get("secs", 0.0) for r in rows) / 60, 1),  # rollouts, updates, filtering
        "dev_points": [r for r in Jsonl(repo_path(cfg.curve)).rows() if r["round"] == cfg.export_round],
        "config": cfglib.to_dict(cfg),
    }
    tmp = rl_carry.staged_copy(src, out)
    cast_adapter(tmp / "adapter_model.safetensors", cfg.export_dtype)
    about = (
        f"The relay student after round {cfg.export_round} of the RL stage (`python -m offline.rl_relay`)."
    )
    name_base(tmp, json.loads((tmp / "adapter_config.json").read_text())["base_model_name_or_path"], about)
    (tmp / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def run(cfg: RlCfg) -> dict:
    import torch

    if cfg.export_round is not None:
        return {"exported": str(export(cfg)), "curve": []}

    work = repo_path(cfg.work)
    if cfg.carry:  # a fresh machine: the committed newest round, when the work folder is behind it
        rl_carry.restore(
            repo_path(cfg.carry), lambda r: _round_dir(cfg, r), _last_round(cfg), work / "filter.jsonl"
        )
    check_work_state(cfg, _last_round(cfg))
    torch.set_num_threads(cfg.threads)
    problems = load_benchmark(cfg.benchmark, split=cfg.split)
    dev = dev_problems(cfg, {p.id: p for p in problems})
    ordered = pool(cfg, problems)
    metrics, curve = Jsonl(repo_path(cfg.metrics)), Jsonl(repo_path(cfg.curve))
    curve_done = {r["round"] for r in curve.rows() if rl_dev.bias_of(r, cfg.call_bias) == cfg.call_bias}

    def log(**row):
        metrics.append([{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}])
        print(json.dumps(row), flush=True)

    engines = Engines(cfg)
    if cfg.sweep_rounds or cfg.sweep_biases:
        made = rl_dev.sweep(cfg, engines, lambda rnd: _round_dir(cfg, rnd), dev, curve)
        for point in made:
            print(json.dumps(point), flush=True)
        return {"rounds": _last_round(cfg), "curve": made}
    learner: Learner | None = None
    updates = 0
    start = _last_round(cfg)
    for rnd in range(start, cfg.rounds + 1):
        adapter = _round_dir(cfg, rnd)
        if (rnd % cfg.eval_every == 0 or rnd == cfg.rounds) and rnd not in curve_done:
            point = rl_dev.dev_point(cfg, engines, adapter, dev, rnd, cfg.call_bias)
            curve.append([point])
            print(json.dumps(point), flush=True)
        if rnd == cfg.rounds:
            break
        roll_file = repo_path(cfg.work) / "rollouts" / f"round-{rnd:03d}.jsonl"
        if not roll_file.is_file():
            kept = kept_problems(cfg, engines, ordered, (rnd + 1) * cfg.problems_per_round, log)
            batch = kept[rnd * cfg.problems_per_round :]
            pair = engines.student_of(adapter)
            t0 = time.monotonic()
            rows = rollouts(cfg, pair, batch)
            secs = time.monotonic() - t0
            _write_rows(roll_file, rows)
            gen = sum(len(r["token_ids"]) for r in rows)
            teacher = sum(len(r["source_mask"]) - sum(r["source_mask"]) for r in rows)
            groups = [rows[i : i + cfg.group] for i in range(0, len(rows), cfg.group)]
            log(
                stage="rollouts",
                round=rnd,
                rollouts=len(rows),
                accuracy=sum(r["correct"] for r in rows) / len(rows),
                called=sum(r["calls"] > 0 for r in rows) / len(rows),
                call_ratio=teacher / max(1, gen),
                reward=sum(r["reward"] for r in rows) / len(rows),
                groups_with_signal=sum(any(r["advantage"] for r in g) for g in groups),
                cases=case_counts([[(r["correct"], r["calls"] > 0) for r in g] for g in groups]),
                scale_rewards=cfg.scale_rewards,
                wrong_solo_penalty=cfg.reward.wrong_solo_penalty,
                rho=cfg.reward.rho,
                secs=secs,
                tokens=gen,
                teacher_tokens=teacher,
                tok_s=gen / secs,
                reload_s=engines.reload_s,
                dtype=engines.dtype,
            )
        rows = Jsonl(roll_file).rows()
        if learner is None:
            engines.drop_student()  # float32 on 24 GB: the teacher, the student and the learner did not fit
            learner = Learner(cfg, adapter)
        t0 = time.monotonic()
        stats = learner.step(rows)
        learner.save(_round_dir(cfg, rnd + 1))
        if cfg.carry:
            rl_carry.save(repo_path(cfg.carry), _round_dir(cfg, rnd + 1), rnd + 1, work / "filter.jsonl")
        secs = time.monotonic() - t0
        _prune(cfg, rnd + 1)
        log(stage="update", round=rnd, secs=secs, tok_s=stats["forward_tokens"] / secs, **stats)
        updates += 1
        if cfg.max_updates and updates >= cfg.max_updates:
            break
    return {"rounds": cfg.rounds, "curve": curve.rows()}


def main(argv: list[str] | None = None) -> int:
    cfg = cfglib.parse_or_exit(RlCfg, argv, "python -m offline.rl_relay")
    out = run(cfg)
    print(json.dumps(out.get("exported") or (out["curve"][-1] if out["curve"] else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
