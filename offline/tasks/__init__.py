"""Benchmark registry: name -> loader and grader.

``load_benchmark(name, split="test", n=None, seed=0)`` returns a list of :class:`~offline.tasks.base.Problem`;
``grade_response(name, response, problem)`` returns a :class:`~relay_demo.answers.Grade`. Modules load lazily,
so importing this package costs nothing.

    >>> from offline.tasks import BENCHMARKS, load_benchmark, grade_response
    >>> probs = load_benchmark("gsm8k", n=3)
    >>> grade_response("gsm8k", "... #### 18", probs[0]).correct   # whatever the first sampled problem is
"""

from __future__ import annotations

import importlib

from offline.tasks.base import Problem
from relay_demo.answers import Grade

MATH_BENCHMARKS = ("math500", "gsm8k", "minerva_math", "olympiadbench", "aime24", "aime25", "amc23")
PAPER_BENCHMARKS = ("math500", "gsm8k", "minerva_math", "olympiadbench", "aime24", "aime25")
BENCHMARKS = ("arith", *MATH_BENCHMARKS)


def _check(name: str) -> None:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


def load_benchmark(name: str, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
    """Problems of ``name`` (``n=None``: the whole split; arith's own default size applies)."""
    _check(name)
    if name == "arith":
        return importlib.import_module("offline.tasks.arith").load(split, n=n, seed=seed)
    from offline.tasks import math_benchmarks

    return math_benchmarks.load(name, split=split, n=n, seed=seed)


def grade_response(name: str, response: str | None, problem: Problem, time_limit: float = 5.0) -> Grade:
    """Grade ``response`` to ``problem`` of benchmark ``name`` with that benchmark's answer extraction."""
    _check(name)
    if name == "arith":
        arith = importlib.import_module("offline.tasks.arith")
        got = arith.extract_answer(response)
        ok = got is not None and got == str(problem.answer).strip()
        return Grade(ok, got, "no-answer" if got is None else ("match" if ok else "mismatch"))
    from offline.tasks import math_benchmarks

    return math_benchmarks.grade_response(response, problem, time_limit=time_limit)
