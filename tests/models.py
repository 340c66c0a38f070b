"""Tiny models built locally for the tests (no hub).

``chain_model`` makes a real Qwen2 model that writes a scripted token sequence: attention and MLP outputs
are zeroed, so the residual stream is the current token's embedding, and the LM head maps each token of
the script to its successor with a large margin. Both backends load it from a folder like any model, which
lets a test force commands split over several BPE tokens, a student that calls forever, or a teacher
that never stops.
"""

from __future__ import annotations

from pathlib import Path

import torch

QWEN_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "qwen2.5-tokenizer"


def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_TOKENIZER)


def random_qwen2(tok, hidden: int = 64, layers: int = 2, seed: int = 0, init: float = 0.2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 32,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        initializer_range=init,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def chain_model(tok, successor: dict[int, int], seed: int = 0, hidden: int = 64):
    """A Qwen2 model whose greedy next token after ``a`` is ``successor[a]``."""
    model = random_qwen2(tok, hidden=hidden, layers=1, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        model.lm_head.weight.zero_()
        for a, b in successor.items():
            v = torch.randn(hidden, generator=g)
            emb[a] = v
            model.lm_head.weight[b] += 10.0 * v / v.norm()
    return model


def save(model, tok, folder: Path) -> str:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def chain(tok, pieces: list[str]) -> list[int]:
    """Token ids of ``pieces``, each of which must be exactly one token."""
    ids = []
    for p in pieces:
        enc = tok.encode(p, add_special_tokens=False)
        assert len(enc) == 1, f"{p!r} is not one token: {enc}"
        ids.append(enc[0])
    return ids


def links(ids: list[int]) -> dict[int, int]:
    return dict(zip(ids[:-1], ids[1:], strict=True))


# A scripted relay: the student writes ' Let me think:<call>3</call>.' as 8 BPE pieces glued to ':' and '.',
# the teacher (which sees ' Let me think:.', command stripped, last token ':.') writes ' The answer is', and
# the student finishes with ' Done'. Both backends must produce exactly BPE_SPANS.
BPE_TEXT = " Let me think:<call>3</call>. The answer is Done"
BPE_SPANS = [
    ("student", " Let me think"),
    ("command", ":<call>3</call>."),
    ("teacher", " The answer is"),
    ("student", " Done"),
]


def bpe_chain_models(tok):
    """(student, teacher) chain models that play the scripted relay above under the learned policy."""
    student = chain(tok, ["\n", " Let", " me", " think", ":<", "call", ">", "3", "</", "cal", "l", ">."])
    after = chain(tok, [" is", " Done"]) + [tok.eos_token_id]
    teacher = chain(tok, [":.", " The", " answer", " is", " The"])
    return chain_model(tok, links(student) | links(after), seed=3), chain_model(tok, links(teacher), seed=4)
