"""Relay decoding. ``loop``: the loop (``RelayBatch``) and ``relay_batch`` / ``relay_stream`` / ``relay``.
Beside it: ``state`` (a row's state, ``Phase``), ``schedule`` (which engine runs next), ``commands`` (command
detection, hold-back, the teacher's view), ``detok``, ``inputs`` (prompts and the policy checked), ``result``
(Limits, Span, RelayResult)."""

from .inputs import validate_prompt
from .loop import RelayBatch, relay, relay_batch, relay_stream
from .result import (
    COMMAND,
    HARD_MAX_TOKENS,
    STUDENT,
    TEACHER,
    Limits,
    RelayResult,
    Span,
    StreamResult,
)
from .state import Phase, Row

__all__ = [
    "COMMAND",
    "HARD_MAX_TOKENS",
    "STUDENT",
    "TEACHER",
    "Limits",
    "Phase",
    "RelayBatch",
    "RelayResult",
    "Row",
    "Span",
    "StreamResult",
    "relay",
    "relay_batch",
    "relay_stream",
    "validate_prompt",
]
