"""What each cost figure measures: the one place that defines them. The app's hover texts, the store's columns
and the README say what :data:`DEFINITIONS` says.

FLOPs are 2 × parameters × token positions a model ran a forward pass on (``RelayResult.flops``), split in
three that sum to it:

* **student**: every position the student ran: the prompt, its own tokens and commands, and the teacher's
  tokens it reads back before it resumes.
* **teacher decode**: one position per token the teacher sampled (one token at a time: a decode step each).
* **teacher prefill**: the teacher's other positions, run in parallel to catch up on context: the prompt and
  the student's text (commands removed) at its first handoff, what is new at each later one, and, on vLLM, the
  up to 31 old tokens a partly cached block makes it re-read.

**Teacher alone** is the yardstick. For one answer (the app's counters) it is the teacher writing an answer of
the same length by itself: ``2 × teacher params × (prompt + response tokens − 1)`` (commands excluded; the
engines never feed the last sampled token), so a student-only answer costs exactly ``student params / teacher
params`` of it. Over a benchmark (the store, the Explorer) it is the teacher method's own rows on the same
problems. Prefill is cheap in time next to decode (positions run in parallel), which is why the split and the
measured wall time stand beside the total.

    >>> teacher_alone_flops(4, n_prompt=10, n_response=5)
    112.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping

PARTS = ("flops_student", "flops_teacher_decode", "flops_teacher_prefill")  # sum to ``flops``

DEFINITIONS = {
    "flops": "2 × parameters × every token position each model ran a forward pass on (prefill and decode, "
    "both models)",
    "flops_vs_teacher": "all FLOPs of this answer ÷ the teacher alone's for the same answer length "
    "(2 × teacher params × (prompt + response tokens − 1))",
    "flops_student": "the student's FLOPs (every position it ran: prompt, its tokens, the teacher's tokens "
    "it read back) ÷ the teacher alone's; an answer with no call shows the size ratio student/teacher",
    "flops_teacher_decode": "the teacher's decode FLOPs (one position per token it wrote) ÷ the teacher "
    "alone's",
    "flops_teacher_prefill": "the teacher's prefill FLOPs (positions it ran, in parallel, to catch up on the "
    "prompt and the student's text at its handoffs) ÷ the teacher alone's",
    "decode_vs_teacher": "decode FLOPs (student + teacher-written tokens) ÷ the teacher alone's FLOPs on the "
    "same problems (its own rows in this run)",
    "prefill_vs_teacher": "the teacher's prefill FLOPs at handoffs ÷ the teacher alone's FLOPs on the same "
    "problems",
    "wall_s": "measured seconds of the model runs that produced this answer",
    "wall_vs_teacher": "measured wall time ÷ the teacher alone's on the same prompts and settings (its own "
    "answer, whatever its length)",
}


def teacher_alone_flops(teacher_params: int, n_prompt: int, n_response: int) -> float:
    """FLOPs of the teacher writing ``n_response`` tokens after an ``n_prompt``-token prompt by itself."""
    return 2.0 * teacher_params * (n_prompt + max(n_response - 1, 0))


def _ratio(a, b) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def shares(c: Mapping) -> dict:
    """Each FLOPs part, the total and the wall time as fractions of the teacher alone's (NaN when unknown):
    ``c`` holds ``flops``, the :data:`PARTS`, ``teacher_alone_flops`` and optionally ``wall_s`` and
    ``teacher_alone_wall_s`` (a measured teacher-alone run on the same prompt)."""
    ref = c.get("teacher_alone_flops") or 0.0
    out = {k: _ratio(float(c.get(k, math.nan)), ref) for k in ("flops", *PARTS)}
    out["wall_s"] = _ratio(float(c.get("wall_s", math.nan)), c.get("teacher_alone_wall_s") or 0.0)
    return out
