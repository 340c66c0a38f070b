"""Train a CITER-style token router: an MLP over the student's last hidden state -> P(teacher should write).

    python -m offline.routers --config offline/recipes/tiny-arith/router.yaml
    python -m offline.routers --config offline/recipes/tiny-arith/router.yaml n_problems=50 max_rollouts=200

How (CITER, Zheng et al. 2025, adapted to this repository's conventions):

1. Teacher-forced pass over ``n_problems`` problems of a *training* split (the test split is refused). For
   every position of the reference response (the solution text plus EOS) we keep the student's last hidden
   state -- ``hidden_states[-1]`` at the position whose logits predict that token, exactly the vector the
   relay's HF engine hands to the ``router`` policy -- and the student's and the teacher's argmax tokens.
2. Labels (``KIND_*``): the student's argmax is the reference token -> "student ok" (target 0); else the
   teacher's is -> "needs teacher" (target 1); else ("neither") the student greedily continues from the
   reference prefix, and the target is 1 when that continuation's final answer is wrong, 0 when it is right.
   Rollouts are batched and capped at ``max_rollouts`` (a seeded random subset of the "neither" positions);
   the "neither" positions beyond the cap are left out of training, and the count is recorded.
3. Training (``offline/router_mlp.py``): class-weighted BCE, early stopping on the positions of a held-out
   share of *problems* (positions of one problem are correlated); the validation AUROC is reported.
4. Saved with :meth:`relay_demo.policies.RouterMLP.save`; ``config.json`` also records the training facts
   (problems, positions, label balance, validation AUROC, seconds, models).

Resumable: each forward batch and each batch of rollouts is kept in ``<out>/trainer-state`` as it finishes,
so a killed run, rerun with the same command, redoes neither (labelling the real pair takes about an hour).

Then: ``python -m relay_demo generate --pair tiny-arith --policy router \\
    --router results/models/tiny-arith/router``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from offline import config as cfglib
from offline.common import Jsonl
from offline.router_mlp import MLPCfg, split_by_problem, train_mlp
from offline.tasks import grade_response, load_benchmark
from offline.tasks.base import Problem
from relay_demo.backends.base import chat_ids
from relay_demo.pairs import resolve
from relay_demo.policies import RouterMLP

# position kinds; the router's target is 1 for KIND_TEACHER and KIND_NEITHER_FAIL
KIND_STUDENT, KIND_TEACHER, KIND_NEITHER_OK, KIND_NEITHER_FAIL, KIND_UNROLLED = 0, 1, 2, 3, 4
KIND_NAMES = (
    "student_ok",
    "needs_teacher",
    "neither_student_recovers",
    "neither_student_fails",
    "neither_unrolled",
)


@dataclass
class RouterCfg(MLPCfg):  # the MLP's settings (width, lr, ..., seed) from MLPCfg
    student: str = "results/models/tiny-arith/student-base"
    teacher: str = "results/models/tiny-arith/teacher"
    out: str = "results/models/tiny-arith/router"
    benchmark: str = "arith"
    split: str = "train"
    n_problems: int = 300
    held_out: str | None = (
        None  # a JSON list of problem ids never trained on (the dev set thresholds come from)
    )
    data_seed: int = 7
    batch_size: int = 32  # problems per teacher-forced forward
    max_rollouts: int = 2000  # cap on the student's greedy continuations for "neither" positions
    rollout_batch: int = 64
    rollout_max_new_tokens: int = 128
    rollout_dtype: str = "float32"  # the student's copy that rolls out (bfloat16: ~2x faster on AMX CPUs)
    val_frac: float = 0.2
    threads: int = 1

    def validate(self) -> None:
        if self.split == "test":
            raise ValueError("the router must never be trained on the test split")
        for name in ("n_problems", "batch_size", "rollout_batch", "rollout_max_new_tokens", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_rollouts < 0:
            raise ValueError("max_rollouts must be >= 0")
        if self.rollout_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"rollout_dtype: float32, bfloat16 or float16, not {self.rollout_dtype!r}")
        if not 0.0 < self.val_frac < 1.0:
            raise ValueError("val_frac must be in (0, 1)")


@dataclass
class Positions:
    """One row per reference-response position of every problem."""

    hidden: np.ndarray  # [M, H] float32: the student's last hidden state that predicts this position
    problem: np.ndarray  # [M] index into the problem list
    offset: np.ndarray  # [M] index of the position in the reference response
    ref: np.ndarray  # [M] reference token
    student: np.ndarray  # [M] student's argmax
    teacher: np.ndarray  # [M] teacher's argmax


# ---------------------------------------------------------------------------------------------- data


def load_models(cfg: RouterCfg):
    """(tokenizer, student, teacher) in float32 eval mode; the teacher must share the student's vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(cfg.student))
    t_tok = AutoTokenizer.from_pretrained(resolve(cfg.teacher))
    if t_tok.get_vocab() != tok.get_vocab():
        raise ValueError("the teacher's tokenizer differs from the student's: CITER labels compare token ids")
    models = [
        AutoModelForCausalLM.from_pretrained(resolve(p), dtype=torch.float32)
        for p in (cfg.student, cfg.teacher)
    ]
    return tok, models[0].eval(), models[1].eval()


def encode(tok, problem: Problem) -> tuple[list[int], list[int]]:
    """(prompt ids, reference response ids ending with EOS) -- the training format of the tiny pair."""
    solution = problem.meta.get("solution")
    if not solution:
        raise ValueError(f"problem {problem.id} has no reference solution (meta['solution'])")
    answer = tok(solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return chat_ids(tok, problem.prompt), answer


@torch.no_grad()
def teacher_forced(
    tok, student, teacher, problems: list[Problem], batch_size: int = 32, state: Path | None = None
) -> Positions:
    """Hidden states and both models' argmax at every reference-response position (right-padded batches)."""
    return forward_positions(
        student, teacher, [encode(tok, p) for p in problems], tok.pad_token_id, batch_size, state
    )


_FIELDS = ("hidden", "problem", "offset", "ref", "student", "teacher")


@torch.no_grad()
def forward_positions(
    student,
    teacher,
    encoded: list[tuple[list[int], list[int]]],
    pad_id: int,
    batch_size: int = 32,
    state: Path | None = None,
) -> Positions:
    """:func:`teacher_forced` on token ids: ``encoded`` holds (prompt ids, response ids) per problem.

    With ``state`` (a folder) every batch's rows are saved there as it finishes and read back on a rerun.
    """
    rows: dict[str, list] = {k: [] for k in _FIELDS}
    for b in range(0, len(encoded), batch_size):
        saved = state / f"forward-{b:06d}.npz" if state is not None else None
        if saved is not None and saved.is_file():
            with np.load(saved) as done:
                for k in _FIELDS:
                    rows[k].append(done[k])
            continue
        chunk = encoded[b : b + batch_size]
        first = len(rows["hidden"])
        n = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((len(chunk), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for i, (p, r) in enumerate(chunk):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, : len(p) + len(r)] = 1
        s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits
        for i, (p, r) in enumerate(chunk):
            at = slice(len(p) - 1, len(p) - 1 + len(r))  # the logits at position k predict token k + 1
            rows["hidden"].append(s_out.hidden_states[-1][i, at].float().numpy())
            rows["problem"].append(np.full(len(r), b + i))
            rows["offset"].append(np.arange(len(r)))
            rows["ref"].append(np.asarray(r))
            rows["student"].append(s_out.logits[i, at].argmax(-1).numpy())
            rows["teacher"].append(t_logits[i, at].argmax(-1).numpy())
        if saved is not None:
            _save_npz(saved, {k: np.concatenate(rows[k][first:]) for k in _FIELDS})
    return Positions(**{k: np.concatenate(v) for k, v in rows.items()})


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically: a kill mid-write leaves no file, so the batch is simply redone."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def token_kinds(ref: np.ndarray, student: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """CITER's first two rules; "neither" positions are KIND_UNROLLED until a rollout decides them."""
    return np.where(student == ref, KIND_STUDENT, np.where(teacher == ref, KIND_TEACHER, KIND_UNROLLED))


@torch.no_grad()
def rollouts_correct(
    tok,
    student,
    prefixes: list[list[int]],
    problems: list[Problem],
    batch: int = 64,
    max_new_tokens: int = 128,
    journal: Path | None = None,
) -> list[bool]:
    """Whether the student's greedy continuation of each (prompt + response prefix) reaches the right answer.

    Prefixes are batched by length (nearest lengths together, left-padded, the mask telling the model where
    each row starts). With ``journal`` (a JSONL file) each batch's grades are appended as it finishes and
    skipped on a rerun.
    """
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    result = [False] * len(prefixes)
    grades = Jsonl(journal) if journal is not None else None  # a line torn by a kill is cut off: redone
    done = {int(r["i"]): bool(r["ok"]) for r in grades.rows()} if grades is not None else {}
    for i, ok in done.items():
        result[i] = ok
    todo = sorted((i for i in range(len(prefixes)) if i not in done), key=lambda i: (len(prefixes[i]), i))
    for b in range(0, len(todo), batch):
        part = todo[b : b + batch]
        width = max(len(prefixes[i]) for i in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for row, i in enumerate(part):
            ids[row, width - len(prefixes[i]) :] = torch.tensor(prefixes[i])
            mask[row, width - len(prefixes[i]) :] = 1
        gen = student.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        for row, i in enumerate(part):
            result[i] = _graded(tok, problems[i], prefixes[i], gen[row, width:].tolist())
        if grades is not None:
            grades.append([{"i": i, "ok": result[i]} for i in part])
    return result


def _graded(tok, problem: Problem, prefix: list[int], new: list[int]) -> bool:
    ids = prefix[len(encode(tok, problem)[0]) :] + new  # the response: reference prefix + continuation
    ids = ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
    return grade_response(problem.benchmark, tok.decode(ids, skip_special_tokens=True), problem).correct


def label(
    tok,
    student,
    problems: list[Problem],
    pos: Positions,
    max_rollouts: int,
    seed: int = 0,
    state: Path | None = None,
    **rollout_kw,
) -> np.ndarray:
    """KIND_* of every position; at most ``max_rollouts`` "neither" positions are rolled out (seeded)."""
    kinds = token_kinds(pos.ref, pos.student, pos.teacher)
    neither = np.flatnonzero(kinds == KIND_UNROLLED).tolist()
    chosen = sorted(random.Random(seed).sample(neither, min(max_rollouts, len(neither))))
    encoded = {int(pi): encode(tok, problems[pi]) for pi in set(pos.problem[chosen].tolist())}
    prefixes = []
    for j in chosen:
        p, r = encoded[int(pos.problem[j])]
        prefixes.append(p + r[: int(pos.offset[j])])
    journal = state / "rollouts.jsonl" if state is not None else None
    ok = rollouts_correct(
        tok, student, prefixes, [problems[int(pos.problem[j])] for j in chosen], journal=journal, **rollout_kw
    )
    for j, good in zip(chosen, ok, strict=True):
        kinds[j] = KIND_NEITHER_OK if good else KIND_NEITHER_FAIL
    return kinds


def targets(kinds: np.ndarray) -> np.ndarray:
    """1 = the teacher should write this position."""
    return np.isin(kinds, (KIND_TEACHER, KIND_NEITHER_FAIL)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- job


def run(cfg: RouterCfg, problems: list[Problem] | None = None, models=None, log=print) -> RouterMLP:
    """The whole job: labels, training, save to ``cfg.out``. ``problems`` / ``models`` override for tests."""
    t0 = time.time()
    torch.set_num_threads(cfg.threads)
    tok, student, teacher = models or load_models(cfg)
    if problems is None:
        held = set(json.loads(Path(resolve(cfg.held_out)).read_text())) if cfg.held_out else set()
        n = cfg.n_problems + len(held)
        problems = load_benchmark(cfg.benchmark, split=cfg.split, n=n, seed=cfg.data_seed)
        problems = [p for p in problems if p.id not in held][: cfg.n_problems]
    state = _state_folder(cfg, problems)
    pos = teacher_forced(tok, student, teacher, problems, cfg.batch_size, state)
    log(f"{len(problems)} problems, {len(pos.ref)} positions ({time.time() - t0:.1f}s)")
    roller = student  # the copy that rolls out: the forward pass above stays in float32 (the router's inputs)
    if cfg.rollout_dtype != "float32":
        roller = copy.deepcopy(student).to(getattr(torch, cfg.rollout_dtype))
    kinds = label(
        tok,
        roller,
        problems,
        pos,
        cfg.max_rollouts,
        cfg.seed,
        state,
        batch=cfg.rollout_batch,
        max_new_tokens=cfg.rollout_max_new_tokens,
    )
    counts = {name: int((kinds == k).sum()) for k, name in enumerate(KIND_NAMES)}
    log(f"labels {counts} ({time.time() - t0:.1f}s)")
    keep = kinds != KIND_UNROLLED
    y = targets(kinds[keep])
    is_val = split_by_problem(pos.problem[keep], cfg.val_frac, cfg.seed)
    router, facts = train_mlp(pos.hidden[keep], y, is_val, cfg, log)
    router.config.update(
        {
            "trained_by": "offline/routers.py",
            "target": "1 = teacher should write (needs_teacher, or neither and the student's rollout fails)",
            "student": cfg.student,
            "teacher": cfg.teacher,
            "benchmark": cfg.benchmark,
            "split": cfg.split,
            "n_problems": len(problems),
            "positions": int(len(kinds)),
            "positions_used": int(keep.sum()),
            "val_positions": int(is_val.sum()),
            "label_counts": counts,
            "positive_share": float(y.mean()),
            "rollouts": int(counts["neither_student_recovers"] + counts["neither_student_fails"]),
            "max_rollouts": cfg.max_rollouts,
            **facts,
            "seconds": round(time.time() - t0, 1),
            "recipe": cfglib.to_dict(cfg),
        }
    )
    router.save(Path(resolve(cfg.out)))
    log(f"saved router to {cfg.out} ({router.config['seconds']}s)")
    return router


# what each stage depends on: a rerun with these unchanged resumes it; a change starts it (and those after it)
# afresh
_FORWARD_KEYS = tuple("student teacher benchmark split n_problems held_out data_seed batch_size".split())
_ROLLOUT_KEYS = ("max_rollouts", "rollout_batch", "rollout_max_new_tokens", "rollout_dtype", "seed")


def _state_folder(cfg: RouterCfg, problems: list[Problem]) -> Path:
    """``<out>/trainer-state``: finished forward batches and rollout grades (kept after the router is saved,
    so a rerun with other training settings reuses the labels; git ignores the folder)."""
    state = Path(resolve(cfg.out)) / "trainer-state"
    forward = {k: getattr(cfg, k) for k in _FORWARD_KEYS} | {"problems": [p.id for p in problems]}
    rollouts = {k: getattr(cfg, k) for k in _ROLLOUT_KEYS}
    stamps = {"forward": state / "forward-of.json", "rollouts": state / "rollouts-of.json"}

    def same(stage: str, key: dict) -> bool:
        return stamps[stage].is_file() and json.loads(stamps[stage].read_text()) == key

    if state.is_dir() and not same("forward", forward):
        shutil.rmtree(state)  # made for other problems or models: nothing in it can be reused
    state.mkdir(parents=True, exist_ok=True)
    if not same("rollouts", rollouts):
        (state / "rollouts.jsonl").unlink(missing_ok=True)
    for stage, key in (("forward", forward), ("rollouts", rollouts)):
        stamps[stage].write_text(json.dumps(key))
    return state


def main(argv: list[str] | None = None) -> int:
    cfg = cfglib.parse(RouterCfg, argv)
    router = run(cfg)
    keys = ("n_problems", "positions", "label_counts", "positive_share", "val_auroc", "val_share_above")
    keys += ("seconds",)
    print(json.dumps({k: router.config[k] for k in keys}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
