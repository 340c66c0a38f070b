"""Synthetic arithmetic word problems for the micro-scale RelayLLM pair (benchmark ``arith``).

Each problem starts from a quantity, then applies 2-3 operations in random order: exactly one
"buys k boxes of b" (a product k*b, then an addition) plus additions / subtractions of 10-99.
The reference solution writes one equation per step and ends with ``#### N``::

    Ann has 47 coins. She buys 6 boxes of 23 coins. She loses 35 coins. How many coins does she have now?
    6 * 23 = 138. 47 + 138 = 185. 185 - 35 = 150.
    #### 150

Determinism and disjoint splits: problems come from ``random.Random(seed)``; the split of a problem is
decided by a hash of its prompt text (80 / 10 / 10 per cent), so train, validation and test can never share a
problem whatever the seeds or sizes asked for.

    >>> from offline.tasks import arith
    >>> probs = arith.load("test", n=5)
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from offline.tasks.base import Problem

BENCHMARK = "arith"
SPLITS = {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}  # hash buckets [lo, hi) of 100
_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}

NAMES = [
    ("Ann", "She", "she"),
    ("Ben", "He", "he"),
    ("Cara", "She", "she"),
    ("Dan", "He", "he"),
    ("Eva", "She", "she"),
    ("Finn", "He", "he"),
    ("Gia", "She", "she"),
    ("Hugo", "He", "he"),
    ("Iris", "She", "she"),
    ("Jack", "He", "he"),
    ("Kim", "She", "she"),
    ("Leo", "He", "he"),
]
ITEMS = ["apples", "coins", "stamps", "books", "cards", "pens", "shells", "marbles", "eggs", "cups"]
GAIN_VERBS = ["finds", "gets", "wins", "receives"]
LOSS_VERBS = ["loses", "gives away", "sells", "uses"]
_ANSWER_RE = re.compile(r"####\s*(-?\d+)")


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the generator. Defaults are the tuned setting (student weak, teacher strong)."""

    min_ops: int = 2  # operations after the starting quantity, the box purchase included
    max_ops: int = 3
    start: tuple[int, int] = (10, 99)
    box_count: tuple[int, int] = (2, 9)
    box_size: tuple[int, int] = (10, 99)
    addend: tuple[int, int] = (10, 99)

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        for name in ("start", "box_count", "box_size", "addend"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range 0 <= lo <= hi, got {(lo, hi)}")


def _split_of(prompt: str) -> str:
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 100
    return next(s for s, (lo, hi) in SPLITS.items() if lo <= bucket < hi)


def generate_one(rng: random.Random, diff: Difficulty = Difficulty()) -> tuple[str, str, int]:
    """One (prompt, solution, answer) drawn from ``rng``."""
    name, pron, _ = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    value = rng.randint(*diff.start)
    n_ops = rng.randint(diff.min_ops, diff.max_ops)
    ops = ["box"] + ["add"] * (n_ops - 1)
    rng.shuffle(ops)
    sentences = [f"{name} has {value} {item}."]
    steps = []
    for op in ops:
        if op == "box":
            k, b = rng.randint(*diff.box_count), rng.randint(*diff.box_size)
            sentences.append(f"{pron} buys {k} boxes of {b} {item}.")
            steps += [f"{k} * {b} = {k * b}.", f"{value} + {k * b} = {value + k * b}."]
            value += k * b
            continue
        x = rng.randint(*diff.addend)
        if rng.random() < 0.5 and value - x >= 0:  # subtract only when the count stays non-negative
            sentences.append(f"{pron} {rng.choice(LOSS_VERBS)} {x} {item}.")
            steps.append(f"{value} - {x} = {value - x}.")
            value -= x
        else:
            sentences.append(f"{pron} {rng.choice(GAIN_VERBS)} {x} {item}.")
            steps.append(f"{value} + {x} = {value + x}.")
            value += x
    sentences.append(f"How many {item} does {pron.lower()} have now?")
    return " ".join(sentences), " ".join(steps) + f"\n#### {value}", value


def load(
    split: str, n: int | None = None, seed: int = 0, difficulty: Difficulty | None = None
) -> list[Problem]:
    """``n`` distinct problems of ``split`` ("train", "validation"/"val", "test"); ``n=None`` means 1000."""
    split = _ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    n = 1000 if n is None else n
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    diff = difficulty or Difficulty()
    rng = random.Random(f"arith/{seed}")  # string seed: stable across Python versions
    out: list[Problem] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct {split} problems; widen the difficulty ranges")
        prompt, solution, value = generate_one(rng, diff)
        if prompt in seen or _split_of(prompt) != split:
            continue
        seen.add(prompt)
        pid = f"arith-{split}-{seed}-{len(out)}"
        out.append(Problem(pid, prompt, str(value), BENCHMARK, {"solution": solution, "split": split}))
    return out


def extract_answer(text: str | None) -> str | None:
    """The integer after the last ``####`` in ``text``, or None."""
    if not text:
        return None
    found = _ANSWER_RE.findall(text)
    return str(int(found[-1])) if found else None


def is_correct(text: str | None, answer: str) -> bool:
    return extract_answer(text) == str(answer).strip()
