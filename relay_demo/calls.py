"""One record per teacher call, and the student's own counterfactual for it.

The relay loop writes a :class:`Call` for every handoff (``RelayResult.call_log``; command and teacher spans
carry its index as ``Span.call``): what triggered it, the tokens asked and granted, what the teacher wrote,
why its span ended, its time and the tokens it prefilled. The app's call inspector reads these records
and asks :func:`student_alone` what the student would have written in the teacher's place.

    r = relay(pair, "2+3?", make_policy("interval", every=8, n=4))
    c = r.call_log[0]  # Call(index=0, trigger="interval", asked=4, written=4, ...)
    ids, text, finish = student_alone(pair, r.prompt_ids, r.token_ids, c.at, c.granted)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass

from .backends.base import Job, Sampling
from .protocol import block_calls_bias

ENDED = {
    "n": "N reached",
    "eos": "the teacher wrote its end token",
    "max_tokens": "the answer's token limit",
    "timeout": "the time limit",
    "stopped": "stopped before N (cancelled)",
    "teacher_unavailable": "the teacher became unavailable (the student went on alone)",
}


@dataclass
class Call:
    index: int  # 0-based, in the order of the answer
    trigger: str  # "command" (the student wrote <call>N</call>) or the policy's name
    detail: str  # the command as written, or the policy's reason with its score
    asked: int  # N as the command or the policy asked it
    at: int = 0  # response position where the student's text before the call ends (the command excluded)
    start: int = 0  # response position of the teacher's first token
    granted: int = 0  # N after the caps (max N, tokens left in the answer)
    written: int = 0  # tokens the teacher wrote
    ended: str = ""  # a key of ENDED
    teacher_s: float = 0.0  # wall time of the teacher's turn: from its batched run's start to this row's end
    prefill: int = 0  # tokens the teacher ran to catch up before writing

    def close(self, written: int, seconds: float, prefill: int, finish: str | None, max_n: int) -> None:
        """Fill in the teacher's side once its turn is over."""
        self.written, self.teacher_s, self.prefill = written, seconds, prefill
        if finish == "teacher_unavailable":  # the relay says so only for a turn the teacher did not finish
            self.ended = "teacher_unavailable"
        elif finish == "eos":  # only the teacher writes during its turn
            self.ended = "eos"
        elif written >= self.granted:
            capped_by_answer = self.granted < min(self.asked, max_n)
            self.ended = "max_tokens" if capped_by_answer else "n"
        elif finish == "timeout":
            self.ended = "timeout"
        elif finish == "max_tokens":
            self.ended = "max_tokens"
        else:
            self.ended = "stopped"

    def to_json(self) -> dict:
        return asdict(self)


def ended_text(key: str) -> str:
    """Why a call's span ended, in words (``Call.ended``; empty while the teacher is writing)."""
    return ENDED.get(key, key or "still running")


_CACHE: OrderedDict[tuple, tuple[list[int], str, str]] = OrderedDict()
_CACHE_SIZE = 256
_CACHE_LOCK = threading.Lock()


def student_alone(
    pair, prompt_ids: list[int], response_ids: list[int], at: int, n: int
) -> tuple[list[int], str, str]:
    """The student's own greedy continuation from response position ``at``, with calls blocked: at most
    ``n`` tokens, ending early at its end token. Returns (token ids, text, finish: "eos" | "length").

    Calls are blocked by a -100 logit bias on ``<call>`` where it is one token (a trained student); an
    untrained student writes commands as plain text, which is what it would write alone. Cached per
    (pair, context, n); takes the pair's lock, so it waits for a running generation instead of disturbing it.
    """
    if not 0 <= at <= len(response_ids):
        raise ValueError(f"call position {at} is outside the answer ({len(response_ids)} tokens)")
    if not 1 <= n <= pair.limits.max_tokens:
        raise ValueError(f"n must be between 1 and {pair.limits.max_tokens}, got {n}")
    context = list(prompt_ids) + list(response_ids[:at])
    key = (id(pair), tuple(context), n)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    student = pair.student
    n = min(n, max(1, getattr(student, "max_model_len", len(context) + n) - len(context)))
    job = Job(
        student.session(context),
        n,
        Sampling(temperature=0.0, seed=0),
        logit_bias=block_calls_bias(student.tokenizer),
    )
    ids: list[int] = []
    finish = "length"
    with pair.lock:
        try:
            for deltas in student.run([job]):
                for d in deltas:
                    for tid in d.token_ids:
                        if tid in student.eos_ids:
                            finish = "eos"
                            job.cancel()
                            break
                        ids.append(tid)
                    if d.finish == "eos":
                        finish = "eos"
                if finish == "eos" or len(ids) >= n:
                    job.cancel()
        finally:
            job.session.release()
    ids = ids[:n]
    out = (ids, student.tokenizer.decode(ids, skip_special_tokens=False), finish)
    with _CACHE_LOCK:
        _CACHE[key] = out
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return out
