"""Helpers the jobs share (a job imports these and the library, never another job).

* :class:`MetricLog`: JSON lines of a job's metrics, echoed to stdout.
* :func:`load_model`, :func:`prompt_ids`, :func:`generate`: a causal LM and its tokenizer from a folder, a
  prompt's chat ids, batched greedy or sampled completions (the base-model trainer and the filter).
* :func:`load_kept`: the problems a filter run kept (warm-up and GRPO train on them).
* :func:`relay_eval`: accuracy and call ratio of a pair under a policy (warm-up's and GRPO's validation).
* :class:`LogCallback`, :func:`trainer_dir`: a TRL trainer's logs into a :class:`MetricLog`, and where the
  trainer may write (under the run's own output folder, so two runs never share one).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback

from offline.tasks import arith
from offline.tasks.base import Problem
from relay_demo.backends.base import Sampling, chat_ids
from relay_demo.pairs import Pair
from relay_demo.relay import Limits, relay_batch


class MetricLog:
    """Append JSON lines to ``path`` (or nowhere) and echo them."""

    def __init__(self, path: str | None, stage: str):
        self.path, self.stage, self.t0 = (Path(path) if path else None), stage, time.time()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **row) -> None:
        row = {"stage": self.stage, "wall_s": round(time.time() - self.t0, 2), **row}
        print(json.dumps(row), flush=True)
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype), AutoTokenizer.from_pretrained(
        str(path)
    )


def prompt_ids(tok: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """One user turn's ids through the chat template (``relay_demo.backends.base.chat_ids``)."""
    return chat_ids(tok, prompt)


@torch.no_grad()
def generate(
    model,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    temperature: float = 0.0,
    num_return: int = 1,
    max_new_tokens: int = 96,
    batch_size: int = 256,
    seed: int = 0,
) -> list[list[str]]:
    """``num_return`` completions per prompt (greedy when temperature == 0), decoded with commands kept."""
    model.eval()
    torch.manual_seed(seed)
    out: list[list[str]] = []
    side, tok.padding_side = tok.padding_side, "left"
    for i in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(tok, p) for p in prompts[i : i + batch_size]]
        n = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (n - len(c)) + c for c in chunk])
        att = (torch.arange(n)[None, :] >= torch.tensor([n - len(c) for c in chunk])[:, None]).long()
        kw = (
            dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            if temperature > 0
            else dict(do_sample=False)
        )
        gen = model.generate(
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **kw,
        )
        texts = tok.batch_decode(gen[:, n:], skip_special_tokens=False)
        texts = [t.split(tok.eos_token)[0].replace(tok.pad_token, "") for t in texts]
        out += [texts[j : j + num_return] for j in range(0, len(texts), num_return)]
    tok.padding_side = side
    model.train()
    return out


def load_kept(path: str | Path) -> list[Problem]:
    """The problems a filter run kept, as ``Problem`` objects."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [
        Problem(r["id"], r["prompt"], r["answer"], arith.BENCHMARK, {"solution": r["solution"]})
        for r in rows
        if r["kept"]
    ]


def relay_eval(
    pair: Pair,
    problems: list[Problem],
    policy,
    limits: Limits,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 250,
) -> dict:
    """Accuracy, call ratio (teacher tokens / all response tokens, pooled) and calls per problem."""
    correct = teacher = total = calls = 0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        res = relay_batch(
            pair,
            [p.prompt for p in chunk],
            policy,
            limits=limits,
            sampling=Sampling(temperature=temperature, seed=seed),
        )
        for p, r in zip(chunk, res, strict=True):
            correct += arith.is_correct(r.text, p.answer)
            teacher, total, calls = teacher + r.teacher_tokens, total + len(r.token_ids), calls + r.calls
    n = max(1, len(problems))
    return {"acc": correct / n, "call_ratio": teacher / max(1, total), "calls_per_problem": calls / n, "n": n}


class LogCallback(TrainerCallback):
    """Forward the trainer's logs (loss, GRPO reward, ...) into our JSON lines."""

    def __init__(self, log: MetricLog, keys: tuple[str, ...] = ("loss", "learning_rate", "grad_norm")):
        self.log, self.keys = log, keys

    def on_log(self, args, state, control, logs=None, **_):
        if logs:
            row = {k: v for k, v in logs.items() if any(k.startswith(p) for p in self.keys)}
            if row:
                self.log(step=state.global_step, **row)


def trainer_dir(out: str | Path) -> str:
    """The folder a trainer may write to: inside the run's own output folder (ignored by git)."""
    return str(Path(out) / "trainer-state")


class Jsonl:
    """Rows appended chunk by chunk and fsynced; a torn last line (a kill mid-write) is cut off on open."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut != len(data):
                with path.open("r+b") as f:
                    f.truncate(cut)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
