"""The tiny-arith generator and tokenizer: deterministic, disjoint splits, answers right by recomputation."""

from __future__ import annotations

import re

import pytest

from offline.tasks import arith

GAINS = "|".join(arith.GAIN_VERBS)
LOSSES = "|".join(arith.LOSS_VERBS)


def solve(prompt: str) -> int:
    """Recompute the answer from the prompt's words alone (independent of the generator's bookkeeping)."""
    value = int(re.match(r"\w+ has (\d+) ", prompt).group(1))
    for sentence in prompt.split(". ")[1:]:
        if m := re.search(r"buys (\d+) boxes of (\d+) ", sentence):
            value += int(m.group(1)) * int(m.group(2))
        elif m := re.search(rf"(?:{GAINS}) (\d+) ", sentence):
            value += int(m.group(1))
        elif m := re.search(rf"(?:{LOSSES}) (\d+) ", sentence):
            value -= int(m.group(1))
    return value


def test_deterministic_by_seed():
    assert arith.load("train", 50, seed=3) == arith.load("train", 50, seed=3)
    assert [p.prompt for p in arith.load("train", 50, seed=3)] != [
        p.prompt for p in arith.load("train", 50, seed=4)
    ]


def test_splits_disjoint_across_seeds():
    texts = {s: {p.prompt for seed in (0, 1) for p in arith.load(s, 400, seed=seed)} for s in arith.SPLITS}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    assert len({p.prompt for p in arith.load("test", 400)}) == 400  # no duplicates inside a split


def test_answers_correct_by_recomputation():
    for p in arith.load("test", 300, seed=7):
        assert int(p.answer) == solve(p.prompt) >= 0
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", p.meta["solution"])
        assert 2 <= len(steps) <= 4
        for a, op, b, c in steps:
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c)
        assert arith.extract_answer(p.meta["solution"]) == p.answer
        assert p.benchmark == "arith"


def test_difficulty_knobs():
    easy = arith.load("train", 100, difficulty=arith.Difficulty(min_ops=1, max_ops=1))
    assert all(p.meta["solution"].count("=") == 2 for p in easy)  # only the box: product + addition
    with pytest.raises(ValueError):
        arith.Difficulty(min_ops=3, max_ops=2)
    with pytest.raises(ValueError):
        arith.load("nope")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("x\n#### 42", "42"),
        ("#### 1 #### 007", "7"),
        ("no answer", None),
        (None, None),
        ("####", None),
        ("#### -5", "-5"),
    ],
)
def test_extract_answer(text, expected):
    assert arith.extract_answer(text) == expected


def test_tokenizer_digits_and_commands():
    from offline.tokenizer import CALL_CLOSE, CALL_OPEN, build

    tok = build(n_texts=300)
    ids = tok("12 + 345 = 357 <call>3</call>", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert CALL_OPEN in pieces and CALL_CLOSE in pieces  # single tokens of their own
    assert all(len(p.lstrip("Ġ")) <= 1 for p in pieces if p.lstrip("Ġ").isdigit())  # one token per digit
    assert tok.decode(ids) == "12 + 345 = 357 <call>3</call>"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|user|>hi<|assistant|>"
    assert tok.eos_token == "<|end|>" and tok.pad_token_id != tok.eos_token_id
