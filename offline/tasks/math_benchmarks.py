"""The paper's math benchmarks (MATH-500, GSM8K, Minerva, OlympiadBench, AIME-24, AIME-25) and AMC-23.

Where the data comes from: ``<data dir>/<name>/test.jsonl``, where the data dir is ``$RELAY_DATA_DIR`` when
set, else ``../shared/data/benchmarks`` seen from the repository root when it exists. Without either, the test
split is read from the Hugging Face hub through ``datasets`` (online users). The jsonl files are the published
rows, so both paths go through the same row -> :class:`Problem` function.

Prompt: the problem followed by the official Qwen math chain-of-thought instruction, "Please reason step by
step, and put your final answer within \\boxed{}." (Qwen2.5-Math / Qwen3 evaluation, used by the paper). For
OlympiadBench the prompt also says when several answers are expected and which unit is implied, as its
official prompt does. Reference answers: GSM8K's number after ``####``; Minerva's last ``\\boxed{}`` of the
solution; OlympiadBench's ``final_answer`` (``$`` delimiters removed); the ``answer`` field elsewhere.

    >>> from offline.tasks.math_benchmarks import load
    >>> probs = load("gsm8k", n=5)            # a seeded sample of 5, in file order
    >>> probs[0].prompt.endswith("\\\\boxed{}.")
    True
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

from offline.tasks.base import Problem
from relay_demo import ROOT as REPO_ROOT
from relay_demo.answers import Grade, extract_boxed, grade

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# name -> (hub dataset, config, split) for users without the local data folder (not reachable from this
# machine: the loader maps the same published fields, so the first online run is the check).
HUB = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "minerva_math": ("math-ai/minervamath", None, "test"),
    "olympiadbench": ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("math-ai/aime25", None, "test"),
    "amc23": ("math-ai/amc23", None, "test"),
}
# The one training split (for labels, routers, thresholds): GSM8K train, ``<data dir>/gsm8k/train.jsonl``.
TRAIN_HUB = {"gsm8k": ("openai/gsm8k", "main", "train")}
SPLITS = {name: ("test", "train") if name in TRAIN_HUB else ("test",) for name in HUB}


def data_dir() -> Path | None:
    """The local benchmark folder, or None when there is none (then the hub is used)."""
    env = os.environ.get("RELAY_DATA_DIR")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise FileNotFoundError(f"RELAY_DATA_DIR={env} is not a folder")
        return path
    default = REPO_ROOT.parent / "shared" / "data" / "benchmarks"
    return default if default.is_dir() else None


def _number(value) -> str:
    """27.0 -> "27": AMC answers are stored as floats."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _gsm8k(row: dict, i: int) -> tuple[str, str, str, dict]:
    m = re.search(r"####\s*(.+)$", row["answer"].strip())
    if not m:
        raise ValueError(f"gsm8k row {i}: no '####' in the answer")
    answer = m.group(1).replace(",", "").strip()
    return (
        str(row.get("idx", i)),
        row["question"],
        answer,
        {"solution": gsm8k_solution(row["answer"], answer)},
    )


def gsm8k_solution(text: str, answer: str) -> str:
    """GSM8K's worked solution as a reference response in the prompt's format: calculator annotations
    (``<<48/2=24>>``) removed, the ``#### N`` line written as the instruction asks (``\\boxed{N}``)."""
    body = re.sub(r"<<[^>]*>>", "", text.strip())
    body = re.sub(r"\n?####.*$", "", body).rstrip()
    return f"{body}\nThe answer is \\boxed{{{answer}}}."


def _math500(row: dict, i: int) -> tuple[str, str, str, dict]:
    meta = {"subject": row.get("subject"), "level": row.get("level")}
    return str(row.get("unique_id", i)), row["problem"], row["answer"], meta


def _minerva(row: dict, i: int) -> tuple[str, str, str, dict]:
    """Local rows hold the worked ``solution``; hub copies may hold a plain ``answer`` (and ``question``)."""
    if row.get("answer"):
        answer = str(row["answer"])
    else:
        boxed = extract_boxed(row["solution"])
        if not boxed:
            raise ValueError(f"minerva_math row {i}: no \\boxed{{}} in the solution")
        answer = boxed[-1]
    return str(row.get("idx", i)), row.get("problem") or row["question"], answer, {"type": row.get("type")}


def _olympiad(row: dict, i: int) -> tuple[str, str, str, dict]:
    answers = row["final_answer"]
    answers = answers if isinstance(answers, list) else [answers]
    answer = ", ".join(a.replace("$", "").strip() for a in answers)
    multiple = bool(row.get("is_multiple_answer"))
    unit = row.get("unit")
    question = row["question"] if not row.get("context") else f"{row['context']}\n\n{row['question']}"
    hints = []
    if multiple:
        hints.append(
            "The problem has several answers; put all of them, separated by commas, in one \\boxed{}."
        )
    if unit:
        hints.append(f"The unit of the answer is {unit.strip('$')}; do not write it in the \\boxed{{}}.")
    if hints:
        question = question + "\n" + " ".join(hints)
    meta = {"multiple": multiple, "answer_type": row.get("answer_type"), "unit": unit}
    return str(row.get("id", i)), question, answer, meta


def _plain(row: dict, i: int) -> tuple[str, str, str, dict]:
    """AIME-24/25 and AMC-23: ``problem`` and ``answer`` fields."""
    problem = row.get("problem") or row.get("question")
    return str(row.get("id", i)), problem, _number(row["answer"]), {"url": row.get("url")}


ROW_PARSERS: dict[str, Callable[[dict, int], tuple[str, str, str, dict]]] = {
    "gsm8k": _gsm8k,
    "math500": _math500,
    "minerva_math": _minerva,
    "olympiadbench": _olympiad,
    "aime24": _plain,
    "aime25": _plain,
    "amc23": _plain,
}


def _read_rows(name: str, split: str = "test") -> list[dict]:
    root = data_dir()
    if root is not None:
        path = root / name / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (data dir {root})")
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    import datasets  # online users only: heavy import

    repo, config, hub_split = (TRAIN_HUB if split == "train" else HUB)[name]
    return [dict(r) for r in datasets.load_dataset(repo, config, split=hub_split)]


def to_problem(name: str, row: dict, i: int, split: str = "test") -> Problem:
    pid, question, answer, meta = ROW_PARSERS[name](row, i)
    prompt = f"{question.strip()}\n{MATH_INSTRUCTION}"
    # train ids carry the split (gsm8k-train/17), so no train problem can be mistaken for a test one
    prefix = name if split == "test" else f"{name}-{split}"
    return Problem(f"{prefix}/{pid}", prompt, answer, name, meta)


def load(name: str, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
    """Problems of benchmark ``name``: all of them, or a seeded sample of ``n`` kept in file order.

    Samples are nested: the sample of 100 is contained in the sample of 200 for the same seed.
    """
    if name not in ROW_PARSERS:
        raise ValueError(f"unknown math benchmark {name!r}; known: {sorted(ROW_PARSERS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"{name} has the splits {', '.join(SPLITS[name])}, not {split!r}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    problems = [to_problem(name, row, i, split) for i, row in enumerate(_read_rows(name, split))]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: duplicate problem ids")
    if n is None or n >= len(problems):
        return problems
    # A seeded permutation's prefix: a larger n keeps every problem of a smaller one (runs can grow).
    order = list(range(len(problems)))
    random.Random(f"{name}/{seed}" if split == "test" else f"{name}-{split}/{seed}").shuffle(order)
    keep = sorted(order[:n])
    return [problems[i] for i in keep]


def grade_response(response: str | None, problem: Problem, time_limit: float = 5.0) -> Grade:
    """Grade a response to a math problem (several answers for OlympiadBench's multi-answer ones)."""
    return grade(response, problem.answer, multiple=bool(problem.meta.get("multiple")), time_limit=time_limit)
