"""Relay students as small adapters: ``<call>`` / ``</call>`` as single tokens, and the merged copy engines
load.

    from relay_demo.adapters import add_command_tokens, merged_student
    tok = add_command_tokens(AutoTokenizer.from_pretrained(base))    # <call> = one id, no embedding resize
    folder = merged_student(base, "results/models/qwen2.5-coder-0.5b-1.5b/relay-lora")   # built once, cached

**Command tokens.** Qwen2.5's embedding has 151,936 rows for 151,665 tokens. A tokenizer converted from GGUF
names the spare rows ``[PAD151665]`` ... ``[PAD151935]``; the hub's tokenizer stops at 151,664. Either way the
two commands take the first two spare ids (151665, 151666): placeholders are renamed in the vocabulary, or the
tokens are added, and both are registered as special tokens, so ``"x<call>32</call>y"`` encodes as
``[x, <call>, 3, 2, </call>, y]``, the relay's text protocol sees them exactly (its detokeniser keeps special
tokens), and the embedding is never resized. A logit bias on ``<call>`` is then one id.

**Merged copy.** vLLM 0.32 refuses an adapter with trained embedding rows (peft's ``trainable_token_indices``:
"unsupported LoRA weight"), and an unmerged peft model runs at a quarter of the base model's speed under
transformers. So both backends load one merged copy: base weights in float32, the adapter (LoRA and the new
rows) folded in, saved in float32 (merging in bf16 moved logits by up to 0.34 on this pair; the engines cast
on load as they do for the base model) with the adapter's tokenizer (:func:`adapter_tokenizer`). It is built
once into ``$RELAY_CACHE_DIR/merged/<key>`` (key: a hash of the adapter's files and the base folder's config),
atomically, and checked against the unmerged model on a probe sequence before it is used.

**The adapter's tokenizer.** A folder with its own ``tokenizer.json`` uses it; one without (a committed
adapter leaves out the 11 MB file) uses the base model's, with the command tokens added by
:func:`add_command_tokens` when the adapter trained their rows (``trainable_token_indices``): the same
tokenizer training saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

CALL, END = "<call>", "</call>"
_PLACEHOLDER = re.compile(r"^\[PAD(\d+)\]$")
MERGE_TOLERANCE = 1e-3  # max |logit difference| merged vs unmerged, both float32


def command_ids(tok) -> tuple[int, int] | None:
    """The ids of ``<call>`` and ``</call>`` when each is one token of ``tok``, else None."""
    ids = [tok.convert_tokens_to_ids(t) for t in (CALL, END)]
    unk = getattr(tok, "unk_token_id", None)
    if any(i is None or i == unk for i in ids):
        return None
    if any(tok.encode(t, add_special_tokens=False) != [i] for t, i in zip((CALL, END), ids, strict=True)):
        return None
    return ids[0], ids[1]


def add_command_tokens(tok, n_rows: int | None = None):
    """``tok`` with ``<call>`` / ``</call>`` as special single tokens in spare rows (a new tokenizer object).

    ``n_rows``: the model's embedding rows; the new ids must fall below it (no resize). Idempotent."""
    from tokenizers import AddedToken, Tokenizer

    if command_ids(tok) is not None:
        return tok
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    placeholders = sorted(
        i for t, i in vocab.items() if _PLACEHOLDER.match(t) and int(_PLACEHOLDER.match(t)[1]) == i
    )
    if len(placeholders) >= 2:
        names = {i: t for t, i in vocab.items()}
        for new, i in zip((CALL, END), placeholders[:2], strict=True):
            del vocab[names[i]]
            vocab[new] = i
        tok = _with_backend(tok, Tokenizer.from_str(json.dumps(spec)))
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in (CALL, END)]},
        replace_extra_special_tokens=False,
    )
    ids = command_ids(tok)
    if ids is None:
        raise ValueError("could not make <call> and </call> single tokens of this tokenizer")
    if n_rows is not None and max(ids) >= n_rows:
        raise ValueError(
            f"<call>/</call> got ids {ids}, past the model's {n_rows} embedding rows: no spare rows to use"
        )
    return tok


def adapter_tokenizer(base: str | Path, adapter: str | Path):
    """The tokenizer of a student made of ``base`` + ``adapter`` (see the module docstring)."""
    from transformers import AutoTokenizer

    adapter = Path(adapter)
    if (adapter / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(adapter)
    tok = AutoTokenizer.from_pretrained(base)
    conf = json.loads((adapter / "adapter_config.json").read_text())
    rows = conf.get("trainable_token_indices") or {}
    want = {i for ids in (rows.values() if isinstance(rows, dict) else [rows]) for i in ids}
    if want:
        tok = add_command_tokens(tok)
        if set(command_ids(tok)) != want:
            raise ValueError(f"{adapter} trained rows {sorted(want)}, not the commands' {command_ids(tok)}")
    return tok


def adapter_tokenizer_folder(base: str | Path, adapter: str | Path) -> Path:
    """A folder holding :func:`adapter_tokenizer` (the adapter's own, or one saved once into the cache)."""
    adapter = Path(adapter)
    if (adapter / "tokenizer.json").is_file():
        return adapter
    out = _cache_root().parent / "tokenizers" / f"{adapter.name}-{merge_key(base, adapter)}"
    if not (out / "tokenizer.json").is_file():
        _build_once(out, lambda tmp: adapter_tokenizer(base, adapter).save_pretrained(tmp))
    return out


def _build_once(out: Path, build) -> None:
    """``build(tmp)`` into a fresh folder beside ``out``, then renamed to ``out`` atomically: a kill or an
    error leaves no half-built ``out``, and of two processes building at once the first one's stays."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".partial", dir=out.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _with_backend(tok, backend):
    """A copy of a fast tokenizer with another Rust tokenizer (the specials and chat template kept)."""
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        Path(d, "tokenizer.json").write_text(backend.to_str(), encoding="utf-8")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(d)


# -- model cards -----------------------------------------------------------------------------------------

NOT_WEIGHTS = ("README.md", "training_summary.json")


def name_base(folder: str | Path, base_name: str, about: str) -> None:
    """Give a saved adapter its base model's hub name instead of the local folder it was trained from, in
    ``adapter_config.json`` and in a short model card (``README.md``) that replaces peft's placeholder:
    ``about`` says what the adapter is and how it was trained."""
    folder = Path(folder)
    spec_file = folder / "adapter_config.json"
    spec = json.loads(spec_file.read_text())
    spec["base_model_name_or_path"] = base_name
    spec_file.write_text(json.dumps(spec, indent=2) + "\n")
    card = (
        f"---\nbase_model: {base_name}\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n"
        f"- base_model:adapter:{base_name}\n- lora\n- relayllm\n---\n\n# {folder.name}\n\n{about.strip()}\n\n"
        "A LoRA adapter of RelayLLM Studio (token-level collaborative decoding: the student writes "
        "`<call>N</call>` and a larger teacher writes the next N tokens). Load it through the project's pair "
        "registry (`relay_demo.pairs.load_pair`), which merges it into the base model with the two command "
        "tokens; `training_summary.json`, where present, holds its training run's settings and figures.\n"
    )
    (folder / "README.md").write_text(card, encoding="utf-8")


# -- merged copies -----------------------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("RELAY_CACHE_DIR", Path.home() / ".cache" / "relay_demo")) / "merged"


def merge_key(base: str | Path, adapter: str | Path) -> str:
    """A hash of what the merged weights depend on: the adapter's files (not its model card or training
    summary) and the base's config."""
    h = hashlib.sha256()
    for f in sorted(Path(adapter).iterdir()):
        if f.is_file() and f.name not in NOT_WEIGHTS:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    conf = Path(base) / "config.json"
    h.update(conf.read_bytes() if conf.is_file() else str(base).encode())  # a hub id: its name
    return h.hexdigest()[:16]


def merged_student(base: str | Path, adapter: str | Path, cache: str | Path | None = None) -> Path:
    """The folder of ``base`` with ``adapter`` merged in (built on first use, then reused)."""
    base, adapter = Path(base), Path(adapter)
    for what, p in (("base model", base / "config.json"), ("adapter", adapter / "adapter_config.json")):
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p}")
    out = (Path(cache) if cache else _cache_root()) / f"{adapter.name}-{merge_key(base, adapter)}"
    if not (out / "config.json").is_file():
        _build_once(out, lambda tmp: build_merged(base, adapter, tmp))
    return out


def build_merged(base: Path, adapter: Path, out: Path) -> float:
    """Merge in float32, save, reload the saved copy and compare its logits with the unmerged model's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = adapter_tokenizer(base, adapter)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, adapter)
    peft_model.eval()
    ids = command_ids(tok)
    probe = tok.encode("Tom has 3 apples and buys 4 more. How many now?", add_special_tokens=False)
    probe = torch.tensor([probe + list(ids or ())])
    with torch.no_grad():
        want = peft_model(probe).logits
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    for extra in ("generation_config.json",):
        if (base / extra).is_file() and not (out / extra).is_file():
            shutil.copy(base / extra, out / extra)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = reloaded(probe).logits
    diff = float((got - want).abs().max())
    if not diff <= MERGE_TOLERANCE:
        raise RuntimeError(
            f"merged copy of {adapter} differs from the adapter model: max |Δlogit| = {diff:.3g}"
        )
    (out / "merge_check.json").write_text(
        json.dumps({"max_abs_logit_diff": diff, "adapter": str(adapter)}) + "\n"
    )
    return diff


def cast_adapter(path: str | Path, dtype: str) -> None:
    """Rewrite an adapter's safetensors file with its floating tensors in ``dtype`` ("bfloat16" halves a
    float32 adapter; the pairs merge adapters into bf16 weights), atomically."""
    import safetensors.torch
    import torch

    path = Path(path)
    tensors = safetensors.torch.load_file(path)
    cast = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".partial")
    safetensors.torch.save_file(cast, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
