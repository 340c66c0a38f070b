"""Warm-up SFT: teach the student the ``<call>N</call>`` syntax on solutions with commands inserted.

Each example is a correct solution (the generator's reference, which is what the teacher writes when right)
with commands inserted; after a command ``<call>N</call>`` the next N solution tokens count as the
teacher's. Labels are -100 on the prompt and on teacher-written tokens, so the loss only covers what the
student writes: its text, its commands and the end token. Strategies:

* ``random`` (the official code): 0-3 commands at random token positions, N drawn from 1..max_n.
* ``targeted`` (ours): one teacher-forced pass of the student over the solution; a command goes right
  before each span where the student's top token is wrong or its top probability is below ``conf_tau``
  (at most ``max_calls`` spans, the least confident first), N = the span's length (capped at ``max_n``).

Trained with TRL's ``SFTTrainer`` on pre-tokenized ``input_ids`` / ``labels``.

    OMP_NUM_THREADS=1 .venv/bin/python -m offline.warmup --config offline/recipes/tiny-arith/warmup.yaml
    OMP_NUM_THREADS=1 .venv/bin/python -m offline.warmup \
        --config offline/recipes/tiny-arith/warmup.yaml strategy=random
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Literal

import torch

from offline import config as cfglib
from offline.common import LogCallback, MetricLog, load_kept, load_model, prompt_ids, relay_eval, trainer_dir
from offline.tasks import arith
from offline.tasks.base import Problem


@dataclass
class WarmupCfg:
    student: str = "results/models/tiny-arith/student-base"
    teacher: str | None = "results/models/tiny-arith/teacher"  # for the relay evaluation after training
    out: str = "results/models/tiny-arith/student-warmup"
    problems: str | None = "results/training/tiny-arith/filter_kept.jsonl"  # None: fresh train-split problems
    n_examples: int = 3000
    seed: int = 200
    strategy: Literal["random", "targeted"] = "targeted"
    max_calls: int = 3  # commands per example at most (random: drawn from 0..max_calls)
    max_n: int = 4  # tokens per command at most
    conf_tau: float = 0.5  # targeted: also flag positions whose top probability is below this
    # also train on each solution without commands, so the student keeps learning the hard digits that the
    # commands take away from its own targets (without it, greedy accuracy alone fell 34% -> 22%)
    clean_copies: bool = False
    # ...but without a label at the positions where the copy with commands writes <call>: otherwise the two
    # copies teach opposite targets in the same context and the student learns to call only half the time
    # (measured: 0.56 calls per problem after SFT on data with 1.33)
    mask_clean_at_calls: bool = False
    # targeted: a span that starts inside a number runs to the number's end (at most max_n tokens), so the
    # student never continues a number the teacher started (it got the next digit wrong after N=1 calls)
    to_number_end: bool = False
    init_command_tokens: bool = True  # <call>/</call> start at the mean embedding
    lr: float = 1e-3
    batch_size: int = 32
    epochs: float = 1.0
    max_steps: int = -1
    n_eval: int = 300
    threads: int = 1
    metrics: str | None = "results/training/tiny-arith/warmup.jsonl"

    def validate(self) -> None:
        if self.max_calls < 0 or self.max_n < 1 or self.n_examples < 1:
            raise ValueError("need max_calls >= 0, max_n >= 1, n_examples >= 1")
        if not 0 <= self.conf_tau <= 1:
            raise ValueError(f"conf_tau must be in [0, 1], got {self.conf_tau}")


def command_ids(tok, n: int) -> list[int]:
    return tok(f"<call>{n}</call>", add_special_tokens=False)["input_ids"]


def build_example(tok, prompt: list[int], answer: list[int], calls: list[tuple[int, int]]) -> dict:
    """Insert commands into ``answer``: ``calls`` = [(position, n)], sorted, non-overlapping.

    Returns input_ids, labels (-100 on prompt and teacher tokens) and source (1 student, 0 teacher) of the
    response, the latter for tests and statistics."""
    ids, labels, source = list(prompt), [-100] * len(prompt), []
    i = 0
    for pos, n in sorted(calls):
        if pos < i:
            raise ValueError(f"overlapping commands at {pos}")
        ids += answer[i:pos]
        labels += answer[i:pos]
        source += [1] * (pos - i)
        cmd = command_ids(tok, n)
        ids, labels, source = ids + cmd, labels + cmd, source + [1] * len(cmd)
        teacher = answer[pos : pos + n]
        ids, labels, source = ids + teacher, labels + [-100] * len(teacher), source + [0] * len(teacher)
        i = pos + len(teacher)
    ids, labels, source = ids + answer[i:], labels + answer[i:], source + [1] * (len(answer) - i)
    return {"input_ids": ids, "labels": labels, "source": source, "calls": len(calls)}


def random_calls(rng: random.Random, length: int, cfg: WarmupCfg) -> list[tuple[int, int]]:
    """0..max_calls commands at random positions (the last token, EOS, is never handed over)."""
    k = rng.randint(0, cfg.max_calls)
    positions = sorted(rng.sample(range(max(1, length - 1)), min(k, max(1, length - 1))))
    calls, end = [], 0
    for pos in positions:
        if pos >= end:
            n = rng.randint(1, cfg.max_n)
            n = min(n, length - 1 - pos) or 1
            calls.append((pos, n))
            end = pos + n
    return calls


@torch.no_grad()
def student_flags(model, prompt: list[int], answer: list[int], conf_tau: float) -> list[tuple[int, float]]:
    """Positions of ``answer`` where the teacher-forced student is wrong or unsure, with its top prob."""
    x = torch.tensor([prompt + answer])
    probs = torch.softmax(model(input_ids=x).logits[0, len(prompt) - 1 : -1].float(), -1)
    top_p, top_id = probs.max(-1)
    target = torch.tensor(answer)
    flagged = (top_id != target) | (top_p < conf_tau)
    return [(i, float(top_p[i])) for i in torch.nonzero(flagged).flatten().tolist() if i < len(answer) - 1]


def targeted_calls(flags: list[tuple[int, float]], cfg: WarmupCfg) -> list[tuple[int, int]]:
    """Group consecutive flagged positions into spans; keep the ``max_calls`` least confident spans."""
    spans: list[list[tuple[int, float]]] = []
    for pos, p in flags:
        if spans and pos == spans[-1][-1][0] + 1 and len(spans[-1]) < cfg.max_n:
            spans[-1].append((pos, p))
        else:
            spans.append([(pos, p)])
    spans.sort(key=lambda s: min(p for _, p in s))
    return sorted((s[0][0], len(s)) for s in spans[: cfg.max_calls])


def extend_to_number_end(
    calls: list[tuple[int, int]], pieces: list[str], max_n: int
) -> list[tuple[int, int]]:
    """Lengthen each (position, n) span while the token after it is a digit, up to ``max_n`` tokens,
    without running into the next span."""
    out = []
    for k, (pos, n) in enumerate(calls):
        stop = calls[k + 1][0] if k + 1 < len(calls) else len(pieces) - 1
        while n < max_n and pos + n < stop and pieces[pos + n].isdigit():
            n += 1
        out.append((pos, n))
    return out


@torch.no_grad()
def init_command_embeddings(model, tok) -> None:
    """Set the embeddings of ``<call>``/``</call>`` to the mean of the other tokens' embeddings.

    Why: the base model never saw these tokens, so their (tied) embeddings are still random and their logits
    sit far below every trained token. SFT then drags all hidden states towards them and wrecks the student's
    arithmetic (measured without this: clean-solution NLL 0.05 -> 0.15, greedy accuracy 32% -> 10%). From the
    mean embedding they start as an average guess and mostly their own row has to move."""
    emb = model.get_input_embeddings().weight
    ids = tok.convert_tokens_to_ids(["<call>", "</call>"])
    others = torch.ones(emb.shape[0], dtype=torch.bool)
    others[ids] = False
    emb[ids] = emb[others].mean(0)


def build_dataset(model, tok, problems: list[Problem], cfg: WarmupCfg) -> list[dict]:
    rng = random.Random(cfg.seed)
    rows = []
    for p in problems:
        prompt = prompt_ids(tok, p.prompt)
        answer = tok(p.meta["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if cfg.strategy == "random":
            calls = random_calls(rng, len(answer), cfg)
        else:
            calls = targeted_calls(student_flags(model, prompt, answer, cfg.conf_tau), cfg)
            if cfg.to_number_end:
                calls = extend_to_number_end(calls, tok.convert_ids_to_tokens(answer), cfg.max_n)
        rows.append(build_example(tok, prompt, answer, calls))
        if cfg.clean_copies and calls:
            clean = build_example(tok, prompt, answer, [])
            if cfg.mask_clean_at_calls:
                for pos, _ in calls:
                    clean["labels"][len(prompt) + pos] = -100
            rows.append(clean)
    return rows


def _problems(cfg: WarmupCfg) -> list[Problem]:
    if cfg.problems:
        kept = load_kept(cfg.problems)
        return random.Random(cfg.seed).sample(kept, min(cfg.n_examples, len(kept)))
    return arith.load("train", cfg.n_examples, seed=cfg.seed)


def dataset_stats(rows: list[dict]) -> dict:
    resp = sum(len(r["source"]) for r in rows)
    teacher = sum(r["source"].count(0) for r in rows)
    return {
        "examples": len(rows),
        "teacher_token_share": round(teacher / max(1, resp), 4),
        "commands_per_example": round(sum(r["calls"] for r in rows) / max(1, len(rows)), 3),
        "with_call_frac": round(sum(r["calls"] > 0 for r in rows) / max(1, len(rows)), 3),
    }


def train(cfg: WarmupCfg) -> dict:
    """Build the data, run SFTTrainer, save to ``cfg.out``; returns the summary."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(cfg.threads)
    log = MetricLog(cfg.metrics, f"warmup:{cfg.strategy}")
    model, tok = load_model(cfg.student)
    if cfg.init_command_tokens:
        init_command_embeddings(model, tok)
    t0 = time.time()
    rows = build_dataset(model, tok, _problems(cfg), cfg)
    stats = dataset_stats(rows)
    log(event="data", seconds=round(time.time() - t0, 1), **stats)
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    args = SFTConfig(
        output_dir=trainer_dir(cfg.out),
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=256,
        seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.add_callback(LogCallback(log))
    t1 = time.time()
    trainer.train()
    model.to(torch.bfloat16).save_pretrained(cfg.out)
    tok.save_pretrained(cfg.out)
    saved, _ = load_model(cfg.out)
    val = arith.load("validation", cfg.n_eval, seed=cfg.seed)
    summary = dict(
        event="done", train_s=round(time.time() - t1, 1), steps=trainer.state.global_step, out=cfg.out
    )
    if cfg.teacher:  # the student with its own commands served by the teacher (greedy): what GRPO starts from
        from relay_demo.backends.hf_engine import HFEngine
        from relay_demo.pairs import Pair
        from relay_demo.policies import make_policy
        from relay_demo.relay import Limits

        limits = Limits(max_n=16, max_calls=5, max_tokens=128)
        pair = Pair(
            "warmup", HFEngine(saved, tok, "student"), HFEngine.load(cfg.teacher, name="teacher"), limits
        )
        summary.update(
            {f"val_relay_{k}": v for k, v in relay_eval(pair, val, make_policy("learned"), limits).items()}
        )
    log(**summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    return train(cfglib.parse(WarmupCfg, argv))


if __name__ == "__main__":
    main()
