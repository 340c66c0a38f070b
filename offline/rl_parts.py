"""The RL job's two machines (``offline/rl_relay.py``): the vLLM engines that roll out and evaluate, and the
LoRA learner that takes the policy-gradient step. ``cfg`` is that job's ``RlCfg``."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from offline.tasks.base import Problem
from relay_demo import ROOT
from relay_demo.adapters import name_base
from relay_demo.pairs import resolve


def repo_path(p: str) -> Path:
    """A recipe's path: absolute against the repository root (``relay_demo.pairs.resolve``), or a hub id."""
    return Path(resolve(p))


# -- the engines -----------------------------------------------------------------------------------


def merged_copy(base: Path, adapter: Path, cache: Path) -> Path:
    """``relay_demo.adapters.merged_student`` in a child process: the merge holds two float32 copies of the
    student, and memory a process has once held is not all given back, while this one keeps two vLLM
    engines and the learner for hours."""
    import subprocess

    code = (
        "import sys; from relay_demo.adapters import merged_student; "
        "print(merged_student(sys.argv[1], sys.argv[2], cache=sys.argv[3]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(base), str(adapter), str(cache)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


class Engines:
    """The frozen teacher (loaded once) and the student of the current round (reloaded when it changes)."""

    def __init__(self, cfg):
        from relay_demo.backends.vllm_engine import VLLMEngine
        from relay_demo.pairs import registry, resolve_dtype

        self.cfg = cfg
        kw = dict(cfg.engine)
        self.dtype = resolve_dtype(kw.pop("dtype", "bfloat16"))
        self.kw = kw
        self.teacher = VLLMEngine.load(str(repo_path(cfg.teacher)), dtype=self.dtype, name="teacher", **kw)
        self.chat_kwargs = dict(registry()[cfg.pair].get("chat_kwargs", {}))
        self.student = None
        self.adapter: Path | None = None
        self.reload_s = 0.0

    def drop_student(self) -> None:
        """Free the round's student before the update (the next round reloads it with the new adapter)."""
        if self.student is not None:
            self.student.close()
        self.student, self.adapter = None, None

    def student_of(self, adapter: Path):
        """A pair whose student is ``adapter`` merged into the base (``relay_demo.adapters``)."""
        from relay_demo.backends.vllm_engine import VLLMEngine
        from relay_demo.pairs import Pair
        from relay_demo.relay import Limits

        if adapter != self.adapter:
            t0 = time.monotonic()
            self.drop_student()
            cache = repo_path(self.cfg.work) / "merged"
            folder = merged_copy(repo_path(self.cfg.student), adapter, cache)
            self.student = VLLMEngine.load(str(folder), dtype=self.dtype, name="student", **self.kw)
            for old in cache.iterdir():  # vLLM holds the weights now; 2 GB a copy
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
            self.adapter = adapter
            self.reload_s = time.monotonic() - t0
        limits = Limits(max_n=self.cfg.max_n, max_calls=self.cfg.max_calls, max_tokens=self.cfg.max_tokens)
        return Pair("rl", self.student, self.teacher, limits, self.chat_kwargs, "vllm")

    def teacher_samples(
        self, problems: list[Problem], k: int, temperature: float, seed: int
    ) -> list[list[str]]:
        """``k`` whole teacher answers a problem (vLLM's ``n``: the prompt is read once)."""
        from vllm import SamplingParams, TokensPrompt

        from relay_demo.backends.base import chat_ids

        tok = self.teacher.tokenizer
        params = SamplingParams(
            n=k,
            temperature=temperature,
            seed=seed,
            max_tokens=self.cfg.eval_max_tokens,
            stop_token_ids=sorted(self.teacher.eos_ids),
        )
        prompts = [TokensPrompt(prompt_token_ids=chat_ids(tok, p.prompt, self.chat_kwargs)) for p in problems]
        out = self.teacher.llm.generate(prompts, params, use_tqdm=False)
        return [[c.text for c in r.outputs] for r in out]


# -- advantages and the update ---------------------------------------------------------------------


def advantages(rewards: list[float], scale: bool) -> list[float]:
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    if std < 1e-6:  # every rollout scored alike: nothing to prefer
        return [0.0] * len(rewards)
    return [(r - mean) / (std if scale else 1.0) for r in rewards]


def lora_moved(before: dict, after: dict) -> float:
    """``‖ΔW_after − ΔW_before‖ / ‖ΔW_before‖`` over all LoRA layers, ``ΔW = B·A`` (the weight change the
    adapter adds; ``before``/``after``: ``{layer: (B, A)}``); 0.0 when there is none."""
    moved = size = 0.0
    for layer, (b0, a0) in before.items():
        b1, a1 = after[layer]
        w0 = b0.float() @ a0.float()
        moved += float((b1.float() @ a1.float() - w0).square().sum())
        size += float(w0.square().sum())
    return (moved / size) ** 0.5 if size else 0.0


class Learner:
    """The LoRA student under training (transformers + peft) and its optimizer."""

    def __init__(self, cfg, adapter: Path):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from relay_demo.pairs import resolve_dtype

        self.cfg = cfg
        dtype = getattr(torch, resolve_dtype(cfg.train_dtype))
        base = AutoModelForCausalLM.from_pretrained(repo_path(cfg.student), dtype=dtype)
        self.model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
        self.model.train()
        # rollouts decoded at a call bias came from the student's logits plus that bias on <call>: the loss
        # scores them under the same policy, so the update is on-policy for what was sampled
        self.call_bias, self.call_id = float(cfg.call_bias), None
        if self.call_bias:
            from relay_demo.adapters import adapter_tokenizer, command_ids

            ids = command_ids(adapter_tokenizer(repo_path(cfg.student), adapter))
            if ids is None:
                raise ValueError(
                    f"call_bias {self.call_bias} needs <call> as one token of {adapter}'s student"
                )
            self.call_id = ids[0]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        rows = [p for n, p in named if "trainable_tokens_delta" in n]
        rest = [p for n, p in named if "trainable_tokens_delta" not in n]
        groups = [{"params": rest, "lr": cfg.lr}] + ([{"params": rows, "lr": cfg.token_lr}] if rows else [])
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
        state = adapter / "optimizer.pt"
        if state.is_file():
            self.opt.load_state_dict(torch.load(state, weights_only=True))
        # a trained round without its optimizer state (carried from another machine: offline/rl_carry.py):
        # AdamW's moments start afresh, and the first update's row says so
        self.restarted = not state.is_file() and adapter.name != "round-000"

    def step(self, rows: list[dict]) -> dict:
        """One optimizer step on ``rows`` (their advantages non-zero); returns loss and token counts."""
        import torch

        live = [r for r in rows if r["advantage"] != 0.0 and sum(r["source_mask"])]
        n_tokens = sum(sum(r["source_mask"]) for r in live)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        seen = 0
        for k in range(0, len(live), self.cfg.micro_batch):
            batch = live[k : k + self.cfg.micro_batch]
            loss = self._loss(*self._batch(batch)) / n_tokens
            loss.backward()
            total += float(loss.detach())
            seen += int(sum(len(r["prompt_ids"]) + len(r["token_ids"]) for r in batch))
        norm = float(torch.nn.utils.clip_grad_norm_(self._params(), self.cfg.max_grad_norm)) if live else 0.0
        before = self._lora_pairs(copy=True)
        if live:
            self.opt.step()
        restarted, self.restarted = self.restarted, False
        return {
            "loss": total,
            "grad_norm": norm,
            "trained_rollouts": len(live),
            "trained_tokens": n_tokens,
            "forward_tokens": seen,
            # Adam moves every weight by about lr whatever the gradient's size (exactly lr at its first step):
            # how far this step moved the adapter's weight change B·A, as a share of its size
            "moved": round(lora_moved(before, self._lora_pairs()), 5),
            **({"optimizer": "restarted"} if restarted else {}),
        }

    def _lora_pairs(self, copy: bool = False) -> dict:
        """Each LoRA layer's ``(B, A)`` (copies with ``copy``), by layer name."""
        pairs: dict[str, list] = {}
        for name, p in self.model.named_parameters():
            for side, key in (("lora_A", 1), ("lora_B", 0)):
                if f".{side}." in name:
                    t = p.detach().clone() if copy else p.detach()
                    pairs.setdefault(name.split(f".{side}.")[0], [None, None])[key] = t
        return pairs

    def _params(self):
        return [p for g in self.opt.param_groups for p in g["params"]]

    def _batch(self, batch: list[dict]):
        """Right-padded ids, the loss mask over response tokens the student wrote, advantages, attention."""
        import torch

        seqs = [r["prompt_ids"] + r["token_ids"] for r in batch]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        attn = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.float32)
        for i, (r, s) in enumerate(zip(batch, seqs, strict=True)):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
            start = len(r["prompt_ids"])
            mask[i, start : len(s)] = torch.tensor(r["source_mask"], dtype=torch.float32)
        adv = torch.tensor([r["advantage"] for r in batch], dtype=torch.float32)
        return ids, mask, adv, attn

    def _loss(self, ids, mask, adv, attn):
        """``-sum(A * log p)`` over the positions that predict a student-written token. The LM head runs on
        those positions only: the full logits of two 700-token rows over Qwen's 151,936-token vocabulary, in
        float32 with their softmax and gradient, took about 4 GB, and the job was killed for memory."""
        import torch
        import torch.nn.functional as F

        inner = self.model.get_base_model()  # the causal LM with the LoRA layers (and token rows) in it
        hidden = inner.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
        target = mask[:, 1:] > 0
        logits = inner.lm_head(hidden[target]).float()
        if self.call_id is not None:  # the sampled policy: the student's logits plus the call bias
            bias = torch.zeros(logits.shape[-1], dtype=logits.dtype)
            bias[self.call_id] = self.call_bias
            logits = logits + bias
        logp = -F.cross_entropy(logits, ids[:, 1:][target], reduction="none")
        return -(adv[:, None].expand_as(target)[target] * logp).sum()

    def save(self, out: Path) -> None:
        """The adapter (with the base's name, not this machine's path) and the optimizer, atomically."""
        import torch

        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        init = json.loads((repo_path(self.cfg.init_adapter) / "adapter_config.json").read_text())
        about = f"The relay student after the RL stage's round {out.name} (`python -m offline.rl_relay`)."
        name_base(tmp, init.get("base_model_name_or_path"), about)
        torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
