"""The ``tiny-random`` pair, built on the fly: two tiny random Qwen3 models and a byte-level tokenizer, saved
once to a cache folder so that both backends load the very same weights. Tests build their own tiny models
from the same helpers."""

from __future__ import annotations

import os
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer():
    """A byte-level tokenizer with no merges: 256 byte tokens plus chat specials. Built in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_qwen3(vocab_size: int, hidden: int, layers: int, seed: int, eos_id: int, pad_id: int):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # initializer_range 0.2 (not 0.02): a random model then writes varied tokens instead of one token forever
    cfg = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 32,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.2,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(cfg)


def build_tiny_random(folder: str | Path | None = None) -> Path:
    """Build (once) the tiny-random pair: student hidden 64 x 2 layers, teacher hidden 128 x 2 layers."""
    folder = (
        Path(folder or os.environ.get("RELAY_CACHE_DIR", Path.home() / ".cache" / "relay_demo"))
        / "tiny-random-v2"
    )
    if (folder / "teacher" / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".partial{os.getpid()}")
    tok = byte_tokenizer()
    for role, hidden, seed in (("student", 64, 1), ("teacher", 128, 2)):
        model = tiny_qwen3(len(tok), hidden, 2, seed, tok.eos_token_id, tok.pad_token_id)
        model.save_pretrained(tmp / role)
        tok.save_pretrained(tmp / role)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder
