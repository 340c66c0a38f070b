"""Train a tiny Qwen3-architecture model from scratch on tiny-arith solutions (student or teacher base).

Plain PyTorch loop (pre-training from scratch needs no trainer features): next-token loss on the answer
tokens only, AdamW with warm-up and cosine decay, a greedy validation accuracy every ``eval_every`` steps,
and an optional early stop once validation accuracy reaches ``stop_at_val_acc`` (how the student is kept
deliberately weak). Saves bf16 safetensors + tokenizer, logs JSON lines (step, loss, val_acc, wall_s).

    OMP_NUM_THREADS=1 .venv/bin/python -m offline.train_base --config offline/recipes/tiny-arith/base.yaml
    OMP_NUM_THREADS=1 .venv/bin/python -m offline.train_base --config offline/recipes/tiny-arith/base.yaml \
        max_steps=10 out=/tmp/t snapshot_at_val_acc=null snapshot_out=null

Shared helpers (loading, generation, metric logs) are in ``offline/common.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from offline import config as cfglib
from offline.common import MetricLog, generate, load_model, prompt_ids
from offline.tasks import arith
from offline.tasks.base import Problem


@dataclass
class ModelCfg:
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    kv_heads: int = 4
    head_dim: int = 32  # vLLM's CPU attention kernels need a multiple of 32
    intermediate: int = 384
    max_positions: int = 512

    def validate(self) -> None:
        if self.head_dim < 32 or self.head_dim % 32:
            raise ValueError(f"head_dim must be a multiple of 32 (vLLM CPU kernels), got {self.head_dim}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")


@dataclass
class TrainBaseCfg:
    out: str = "results/models/tiny-arith/student-base"
    tokenizer: str | None = None  # a saved tokenizer folder; None builds it (offline.tokenizer) with seed
    model: ModelCfg = field(default_factory=ModelCfg)
    seed: int = 0
    n_train: int = 60000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 4000
    max_minutes: float | None = None  # stop on wall clock too (CPU budget)
    eval_every: int = 200
    n_eval: int = 300  # validation problems per periodic eval (greedy)
    n_final_eval: int = 500
    stop_at_val_acc: float | None = None
    # one run can yield both models: the first checkpoint whose validation accuracy reaches the snapshot level
    # is saved to snapshot_out (the weak student) and training goes on to stop_at_val_acc (the teacher)
    snapshot_at_val_acc: float | None = None
    snapshot_out: str | None = None
    init_from: str | None = None  # start from these weights instead of a random init (continued training)
    # resumable: every ``checkpoint_every`` steps (0 = at each validation) the weights, optimizer, data order
    # and clock go to ``<out>/trainer-state/state.pt`` (ignored by git); a rerun of the command goes on there
    checkpoint_every: int = 0
    threads: int = 1
    metrics: str | None = None  # JSON lines file; None = no log

    def validate(self) -> None:
        if self.batch_size < 1 or self.max_steps < 1 or self.n_train < self.batch_size:
            raise ValueError("need batch_size >= 1, max_steps >= 1 and n_train >= batch_size")
        if self.stop_at_val_acc is not None and not 0 < self.stop_at_val_acc <= 1:
            raise ValueError(f"stop_at_val_acc must be in (0, 1], got {self.stop_at_val_acc}")
        if (self.snapshot_at_val_acc is None) != (self.snapshot_out is None):
            raise ValueError("snapshot_at_val_acc and snapshot_out go together")


def make_model(tok: PreTrainedTokenizerBase, m: ModelCfg, seed: int = 0) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3 causal LM sized by ``m`` for vocabulary ``tok``."""
    torch.manual_seed(seed)
    conf = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=m.hidden,
        intermediate_size=m.intermediate,
        num_hidden_layers=m.layers,
        num_attention_heads=m.heads,
        num_key_value_heads=m.kv_heads,
        head_dim=m.head_dim,
        max_position_embeddings=m.max_positions,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return Qwen3ForCausalLM(conf)


def encode_example(tok: PreTrainedTokenizerBase, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) with labels -100 on the prompt; the answer ends with EOS."""
    p = prompt_ids(tok, prompt)
    a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p + a, [-100] * len(p) + a


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training."""
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), n), -100, dtype=torch.long)
    att = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], lab[i, : len(y)], att[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": lab, "attention_mask": att}


def accuracy(model, tok, problems: list[Problem], temperature: float = 0.0, seed: int = 0) -> float:
    texts = generate(model, tok, [p.prompt for p in problems], temperature=temperature, seed=seed)
    hits = sum(arith.is_correct(t[0], p.answer) for t, p in zip(texts, problems, strict=True))
    return hits / max(1, len(problems))


def _lr_at(step: int, cfg: TrainBaseCfg) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def load_tokenizer(cfg: TrainBaseCfg) -> PreTrainedTokenizerBase:
    if cfg.tokenizer:
        return AutoTokenizer.from_pretrained(cfg.tokenizer)
    from offline.tokenizer import build

    return build(seed=cfg.seed)


def train(cfg: TrainBaseCfg) -> dict:
    """Train, save to ``cfg.out`` and return the final metrics."""
    torch.set_num_threads(cfg.threads)
    log = MetricLog(cfg.metrics, f"train_base:{Path(cfg.out).name}")
    tok = load_tokenizer(cfg)
    if cfg.init_from:
        model, _ = load_model(cfg.init_from)
    else:
        model = make_model(tok, cfg.model, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    data = [
        encode_example(tok, p.prompt, p.meta["solution"]) for p in arith.load("train", cfg.n_train, cfg.seed)
    ]
    val = arith.load("validation", cfg.n_eval, seed=cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(cfg.seed)
    st = {"step": 0, "snapped": False, "finished": False, "train_s": 0.0}
    state_path = Path(cfg.out) / "trainer-state" / "state.pt"
    if state_path.is_file():
        st = _load_state(state_path, model, opt, rng)
        log(event="resume", step=st["step"], train_s=round(st["train_s"], 1), finished=st["finished"])
    else:
        log(event="start", params=n_params, n_train=len(data), config=cfglib.to_dict(cfg))
    every = cfg.checkpoint_every or cfg.eval_every
    t0 = time.time() - st["train_s"]  # the clock (max_minutes, train_s) goes on from the checkpoint
    model.train()
    while not st["finished"]:
        step = st["step"]
        batch = collate(rng.sample(data, cfg.batch_size), tok.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        st["step"] = step = step + 1
        if step % 50 == 0:
            log(step=step, loss=round(loss.item(), 4), lr=g["lr"])
        if step % cfg.eval_every == 0:
            val_acc = accuracy(model, tok, val)
            log(step=step, val_acc=val_acc, train_minutes=round((time.time() - t0) / 60, 2))
            if cfg.snapshot_out and not st["snapped"] and val_acc >= cfg.snapshot_at_val_acc:
                st["snapped"] = True
                snap = dataclasses.replace(cfg, out=cfg.snapshot_out)
                save_and_eval(model, tok, snap, log, step, time.time() - t0, n_params)
            if cfg.stop_at_val_acc is not None and val_acc >= cfg.stop_at_val_acc:
                st["finished"] = True
        if step >= cfg.max_steps or (cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes):
            st["finished"] = True
        if st["finished"] or step % every == 0:
            st["train_s"] = time.time() - t0
            _save_state(state_path, st, model, opt, rng)
    return save_and_eval(model, tok, cfg, log, st["step"], st["train_s"], n_params)


def _save_state(path: Path, st: dict, model, opt, rng: random.Random) -> None:
    """Write the checkpoint atomically (a kill mid-write leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"st": st, "model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate()}, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, model, opt, rng: random.Random) -> dict:
    blob = torch.load(path, weights_only=False)
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["opt"])
    rng.setstate(blob["rng"])
    return dict(blob["st"])


def save_and_eval(
    model, tok, cfg: TrainBaseCfg, log: MetricLog, step: int, train_s: float, n_params: int
) -> dict:
    """Save bf16 weights, reload them and measure greedy accuracy of what was saved."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(str(out))  # a copy: training may go on
    tok.save_pretrained(str(out))
    saved, _ = load_model(out)
    final_val = arith.load("validation", cfg.n_final_eval, seed=cfg.seed + 1)
    acc = accuracy(saved, tok, final_val)
    result = dict(
        event="done",
        steps=step,
        train_s=round(train_s, 1),
        params=n_params,
        val_acc_greedy=acc,
        n_val=len(final_val),
        out=str(out),
    )
    log(**result)
    return result


def main(argv: list[str] | None = None) -> dict:
    return train(cfglib.parse(TrainBaseCfg, argv))


if __name__ == "__main__":
    main()
