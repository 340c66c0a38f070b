"""Warm-up SFT of a real student with LoRA, on call labels from rollouts (``offline/label_calls.py``).

    OMP_NUM_THREADS=2 .venv/bin/python -m offline.warmup_lora \\
        --config offline/recipes/qwen2.5-coder-0.5b-1.5b/warmup.yaml                # the relay student
    ... --config offline/recipes/qwen2.5-coder-0.5b-1.5b/warmup.yaml commands=false \\
        out=results/models/qwen2.5-coder-0.5b-1.5b/sft-only                          # the SFT-only control

Each labelled example is the student's own text up to the cut, the command ``<call>N</call>``, the teacher's
span and the student's continuation; a correct solution kept without a call is the student's text alone. The
loss covers what the student writes (its text, the command, the end token): the prompt and the teacher's span
are masked (``assistant_masks`` = 0; the source mask). The **SFT-only control** (``commands: false``) trains
on the same trajectories with no command, the teacher's tokens then counting as the student's: it tells
distillation apart from learning when to call.

``<call>`` / ``</call>`` take two spare embedding rows (``relay_demo.adapters``); LoRA on every projection
plus those two rows of ``embed_tokens`` and ``lm_head`` (peft ``trainable_token_indices``) are what train.
TRL's ``SFTTrainer`` computes its loss through a fused LM head that skips the trained rows (and fails on
peft's wrapper), so the loss here is the model's own (``transformers.Trainer.compute_loss``).

Resumable: checkpoints every ``save_steps`` under ``<out>/trainer-state/`` (ignored by git); a rerun continues
from the last one. The adapter and tokenizer are written to ``out`` (about 35 MB), the loss log and cost to
``metrics``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from offline import config as cfglib
from offline.common import trainer_dir
from offline.tasks import load_benchmark
from relay_demo import ROOT
from relay_demo.adapters import name_base


@dataclass
class LoraWarmupCfg:
    student: str = "models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct"
    # written into the adapter's config as its base model (never the local folder: a machine path)
    base_name: str = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    labels: str = "results/training/qwen2.5-coder-0.5b-1.5b/labels"  # examples.jsonl of label_calls
    benchmark: str = "gsm8k"
    split: str = "train"
    out: str = "results/models/qwen2.5-coder-0.5b-1.5b/relay-lora"
    metrics: str = "results/training/qwen2.5-coder-0.5b-1.5b/warmup.jsonl"
    commands: bool = True  # false: the SFT-only control (same trajectories, no command, nothing masked)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    lr: float = 1e-4
    # The two command rows start as untrained placeholders. Adam moves a weight by about lr a step, so at the
    # LoRA rate 42 steps moved them by 0.07 in norm (typical rows: 0.51) and <call> stayed at rank ~2,500
    # where the labels put it: the rows get a rate of their own.
    token_lr: float = 5e-3
    # start from this adapter (LoRA and command rows) instead of a fresh one: a further epoch of a finished
    # run, with a schedule of its own, into another ``out``
    init_adapter: str = ""
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 2
    grad_accum: int = 8
    max_length: int = 1280
    save_steps: int = 10
    seed: int = 0
    dtype: str = "bfloat16"  # 147-159 training tok/s here against 41 in float32
    threads: int = 2

    def validate(self) -> None:
        if self.lora_r < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.save_steps < 1:
            raise ValueError("lora_r, batch_size, grad_accum and save_steps must be >= 1")
        if not self.lr > 0 or not self.token_lr > 0:
            raise ValueError(f"lr and token_lr must be > 0, got {self.lr}, {self.token_lr}")
        if self.init_adapter and not (_path(self.init_adapter) / "adapter_config.json").is_file():
            raise ValueError(f"init_adapter {self.init_adapter!r} holds no adapter_config.json")
        if self.init_adapter and _path(self.init_adapter).resolve() == _path(self.out).resolve():
            raise ValueError("init_adapter and out must differ: the run would overwrite its own start")


def _path(p: str) -> Path:
    return ROOT / p


def build_rows(tok, examples: list[dict], prompts: dict[str, list[int]], commands: bool) -> list[dict]:
    """Token rows with ``assistant_masks``: 1 where the student writes, 0 on the prompt and teacher span."""
    from relay_demo.adapters import command_ids

    call, end = command_ids(tok)
    rows = []
    for e in examples:
        prompt = prompts[e["id"]]
        pieces = [(prompt, 0), (e["prefix_ids"], 1)]
        if e["n"] and commands:
            command = [call, *tok.encode(str(e["n"]), add_special_tokens=False), end]
            pieces += [(command, 1), (e["teacher_ids"], 0), (e["cont_ids"], 1)]
        elif e["n"]:  # the control: the teacher's span counts as the student's
            pieces += [(e["teacher_ids"], 1), (e["cont_ids"], 1)]
        ids = [t for piece, _ in pieces for t in piece]
        mask = [m for piece, m in pieces for _ in piece]
        rows.append({"input_ids": ids, "assistant_masks": mask})
    return rows


def load_examples(cfg: LoraWarmupCfg, tok) -> list[dict]:
    from relay_demo.backends.base import chat_ids

    path = _path(cfg.labels) / "examples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run offline.label_calls first")
    examples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_id = {p.id: p for p in load_benchmark(cfg.benchmark, split=cfg.split)}
    missing = [e["id"] for e in examples if e["id"] not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} labelled problems are not in {cfg.benchmark}/{cfg.split}: {missing[:3]}"
        )

    prompts = {e["id"]: chat_ids(tok, by_id[e["id"]].prompt) for e in examples}
    return build_rows(tok, examples, prompts, cfg.commands)


def make_model(cfg: LoraWarmupCfg, tok):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from relay_demo.adapters import command_ids

    model = AutoModelForCausalLM.from_pretrained(_path(cfg.student), dtype=getattr(torch, cfg.dtype))
    if cfg.init_adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, _path(cfg.init_adapter), is_trainable=True)
    rows = list(command_ids(tok))
    if model.config.tie_word_embeddings:
        # one shared matrix: a delta on embed_tokens alone, lm_head follows it
        trainable = {"embed_tokens": rows}
    else:
        trainable = {"embed_tokens": rows, "lm_head": rows}
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        trainable_token_indices=trainable,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def train(cfg: LoraWarmupCfg) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, Trainer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from relay_demo.adapters import add_command_tokens

    torch.set_num_threads(cfg.threads)
    tok = AutoTokenizer.from_pretrained(_path(cfg.student))
    from transformers import AutoConfig

    n_rows = AutoConfig.from_pretrained(_path(cfg.student)).vocab_size
    tok = add_command_tokens(tok, n_rows)
    rows = load_examples(cfg, tok)
    rows = [r for r in rows if len(r["input_ids"]) <= cfg.max_length]
    model = make_model(cfg, tok)
    out = _path(cfg.out)
    ckpt = Path(trainer_dir(out))  # checkpoints inside the adapter folder, ignored by git
    metrics = _path(cfg.metrics)
    metrics.parent.mkdir(parents=True, exist_ok=True)

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **_):
            if logs and "loss" in logs:
                with metrics.open("a", encoding="utf-8") as f:
                    row = {"out": cfg.out, "step": state.global_step, "loss": logs["loss"]}
                    f.write(json.dumps(row) + "\n")

    class _SFT(SFTTrainer):
        compute_loss = Trainer.compute_loss  # the model's own loss: see the module docstring

        def create_optimizer(self, model=None):
            if self.optimizer is None:  # LoRA at lr, the command rows at token_lr (see LoraWarmupCfg)
                named = [(n, p) for n, p in (model or self.model).named_parameters() if p.requires_grad]
                rows = [p for n, p in named if "trainable_tokens_delta" in n]
                rest = [p for n, p in named if "trainable_tokens_delta" not in n]
                groups = [{"params": rest, "lr": cfg.lr}, {"params": rows, "lr": cfg.token_lr}]
                self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
            return self.optimizer

    args = SFTConfig(
        output_dir=str(ckpt),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=3,
        logging_steps=1,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        bf16=cfg.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        max_length=cfg.max_length,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = _SFT(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Log()]
    )
    resume = ckpt.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt.iterdir())
    t0 = time.monotonic()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    what = "The warm-up relay student" if cfg.commands else "The SFT-only control (no command)"
    name_base(out, cfg.base_name, f"{what}: LoRA SFT on call labels (`python -m offline.warmup_lora`).")
    n_tokens = sum(len(r["input_ids"]) for r in rows)
    summary = {
        "out": cfg.out,
        "commands": cfg.commands,
        "examples": len(rows),
        "tokens_per_epoch": n_tokens,
        "student_tokens_per_epoch": sum(sum(r["assistant_masks"]) for r in rows),
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "minutes_this_session": round((time.monotonic() - t0) / 60, 1),
        "config": cfglib.to_dict(cfg),
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    cfg = cfglib.parse_or_exit(LoraWarmupCfg, argv, "python -m offline.warmup_lora")
    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
