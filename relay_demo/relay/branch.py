"""A finished answer continued from one of its calls with that call blocked: the call inspector's
counterfactual, compared like with like.

The branch is a new row of the same relay: the same policy (later calls happen as they would), the same
sampling (temperature, top-p, seed and the row number the draws are seeded with) and limits (minus the calls
already made), from the same text; only the call at its first position is refused (``Row.block_at``:
``<call>`` blocked there by ``protocol.block_calls_bias``, a command that starts there is text, a policy
trigger is not consulted).

    r = relay(pair, prompt, policy, limits=limits, sampling=sampling)
    c = r.call_log[0]
    s_ids = r.prompt_ids + r.token_ids[: c.at]
    t_ids = teacher_prompt_ids + teacher_view(spans, r.token_ids, c.at, tok)
    b = without_call(pair, policy, (s_ids, t_ids), replace(limits, max_calls=limits.max_calls - c.index),
                     sampling, max_tokens=limits.max_tokens - c.at)
"""

from __future__ import annotations

from ..protocol import block_calls_bias, strip_commands
from .loop import RelayBatch
from .result import COMMAND, TEACHER, RelayResult


def teacher_view(spans: list[dict], ids: list[int], at: int, tok) -> list[int]:
    """What the teacher reads of the response's first ``at`` tokens (``ids``; ``spans``: ``{source, text,
    tokens}`` in order): its own tokens as written, the student's with commands removed (as
    ``commands.teacher_view`` does for each stretch the student wrote between two teacher turns)."""
    out: list[int] = []
    seg: list[tuple[str, list[int], str]] = []  # the student's spans since the teacher last wrote
    pos = 0
    for s in spans:
        n = min(s["tokens"], at - pos)  # a call starts a span, so ``at`` falls between two spans
        if n <= 0:
            break
        part = (s["source"], ids[pos : pos + n], s["text"])
        pos += n
        if s["source"] == TEACHER:
            out += _student_view(seg, tok) + part[1]
            seg = []
        else:
            seg.append(part)
    return out + _student_view(seg, tok)


def _student_view(seg: list[tuple[str, list[int], str]], tok) -> list[int]:
    """The student's ids where its commands were whole tokens, else its text without them re-tokenised."""
    if all(src != COMMAND or not strip_commands(text) for src, _, text in seg):
        return [i for src, ids, _ in seg if src != COMMAND for i in ids]
    text = strip_commands("".join(text for *_, text in seg))
    return tok.encode(text, add_special_tokens=False) if text else []


def without_call(
    pair, policy, ids: tuple[list[int], list[int]], limits, sampling, *, max_tokens: int, seed_row: int = 0
) -> RelayResult:
    """The relay from ``ids`` (student, teacher: each model's prompt and the answer up to the call) under
    ``policy``, ``limits`` and ``sampling``, its row seeded as ``seed_row``, with no call at its first
    position. Takes the pair's lock, so it waits for a running generation instead of disturbing it."""
    batch = RelayBatch(pair, policy, limits, sampling)
    with pair.lock:
        row = batch.add(ids=ids, max_tokens=max_tokens, seed_row=seed_row)
        row.block_at, row.block_bias = 0, block_calls_bias(pair.student.tokenizer)
        try:
            return next(item for _, item in batch.events() if isinstance(item, RelayResult))
        finally:
            batch.close()
