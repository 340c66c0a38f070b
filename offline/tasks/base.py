"""What every benchmark loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One problem: ``prompt`` is the user message given to the models, ``answer`` the reference."""

    id: str
    prompt: str
    answer: str
    benchmark: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)
