"""Build the tiny-arith tokenizer locally (no hub) and save it as a Hugging Face tokenizer.

Byte-level BPE trained on the generator's own text, with Qwen2's pre-tokenizer rule "one token per digit"
(the student's errors sit on digits, and a per-digit vocabulary lets it copy and carry digit by digit).
``<call>`` and ``</call>`` are special tokens of their own, so a command is exactly ``<call> N </call>``
(three tokens for N < 10). The chat template is minimal: ``<|user|>{prompt}<|assistant|>{answer}<|end|>``.

    from offline.tokenizer import build
    build().save_pretrained("/tmp/tok")   # writes tokenizer.json, tokenizer_config.json, ...

A helper, not a job: ``offline.train_base`` builds it (seed 0) and saves it beside both models.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from offline.tasks import arith

PAD, EOS, USER, ASSISTANT = "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"
CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
SPECIALS = [PAD, EOS, USER, ASSISTANT, CALL_OPEN, CALL_CLOSE]
# Qwen2's split pattern: letters glue to one leading non-letter, every digit is alone.
_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus(n: int, seed: int) -> list[str]:
    texts = []
    for p in arith.load("train", n=n, seed=seed):
        texts += [p.prompt, p.meta["solution"]]
    return texts


def build(vocab_size: int = 400, n_texts: int = 3000, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the BPE on generated problems and wrap it as a ``PreTrainedTokenizerFast``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(n_texts, seed), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT, CALL_OPEN, CALL_CLOSE],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left
    fast.model_max_length = 512
    return fast
