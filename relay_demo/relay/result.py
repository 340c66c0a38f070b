"""What a caller of the relay loop gives it and gets back: the limits, the streamed spans, the result."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from ..calls import Call

STUDENT, TEACHER, COMMAND = "student", "teacher", "command"  # who wrote a span
HARD_MAX_TOKENS = 1 << 20  # no configuration may ask for more response tokens than this


@dataclass(frozen=True)
class Limits:
    """Every bound that ends a generation. The official code: 5 calls, 8192 tokens."""

    max_n: int = 256  # tokens per call, at most
    max_calls: int = 5
    max_tokens: int = 8192  # response tokens: student + command + teacher
    max_wall_s: float | None = None
    max_prompt_tokens: int = 32768

    def __post_init__(self):
        for name in ("max_n", "max_tokens", "max_prompt_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.max_calls, bool) or not isinstance(self.max_calls, int) or self.max_calls < 0:
            raise ValueError(f"max_calls must be a non-negative integer, got {self.max_calls!r}")
        if self.max_tokens > HARD_MAX_TOKENS:
            raise ValueError(f"max_tokens must be at most {HARD_MAX_TOKENS}, got {self.max_tokens}")
        if self.max_wall_s is not None and not (self.max_wall_s > 0):
            raise ValueError(f"max_wall_s must be positive, got {self.max_wall_s!r}")


@dataclass
class Span:
    source: str  # "student" | "teacher" | "command"
    token_ids: list[int]
    text: str
    call: int | None = None  # the call (index into RelayResult.call_log) of a command or teacher span


@dataclass
class RelayResult:
    prompt_ids: list[int]
    token_ids: list[int]  # the response as the student sees it
    source_mask: list[int]  # per response token: 1 = student wrote it (text or command), 0 = teacher
    text: str
    spans: list[Span]
    finish_reason: str  # "eos" | "max_tokens" | "timeout" | "stalled" | "teacher_unavailable" | "cancelled"
    student_tokens: int
    teacher_tokens: int
    command_tokens: int
    calls: int
    call_ratio: float
    flops: float  # 2 * params per token each model ran a forward pass on (prefill included)
    wall_s: float
    wall_student_s: float
    wall_teacher_s: float
    student_computed: int  # token positions the student ran (prefill + decode)
    teacher_computed: int
    teacher_prefill: list[int] = field(
        default_factory=list
    )  # per handoff: tokens the teacher ran to catch up
    teacher_new: list[int] = field(default_factory=list)  # per handoff: tokens it had never seen
    call_log: list[Call] = field(default_factory=list)  # per call: trigger, asked, written, why it ended
    # -- FLOPs split (issue #20; relay_demo/cost.py defines each): the three sum to ``flops``
    flops_student: float = 0.0  # 2 * student params * student_computed
    flops_teacher_decode: float = 0.0  # 2 * teacher params * tokens the teacher sampled (one position each)
    flops_teacher_prefill: float = 0.0  # 2 * teacher params * its other positions: catching up on context
    end_reason: str = ""  # how the text ended: finish_reason, except that it is never "teacher_unavailable"
    teacher_error: str | None = None  # why the teacher became unavailable, when it did

    def stats(self) -> dict:
        keys = ("student_tokens", "teacher_tokens", "command_tokens", "calls", "call_ratio", "finish_reason")
        out = {k: getattr(self, k) for k in keys}
        out["wall_s"] = round(self.wall_s, 4)
        out["flops"] = self.flops
        out.update(
            flops_student=self.flops_student,
            flops_teacher_decode=self.flops_teacher_decode,
            flops_teacher_prefill=self.flops_teacher_prefill,
        )
        return out

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "spans": [
                {"source": s.source, "text": s.text, "tokens": len(s.token_ids), "call": s.call}
                for s in self.spans
            ],
            "stats": self.stats(),
            "calls": [c.to_json() for c in self.call_log],
        }


def build_result(row, pair, teacher_only: bool) -> RelayResult:
    """A finished row's RelayResult (``state.Row``); its sessions are the caller's to release."""
    a, student, teacher = row.acct, row.student.session, row.teacher.session
    total = len(a.ids)
    ps, pt = pair.student.n_params, pair.teacher.n_params
    sc = student.computed if student else 0
    tc = teacher.computed if teacher else 0
    return RelayResult(
        prompt_ids=list(row.teacher.prompt if teacher_only else row.student.prompt),
        token_ids=list(a.ids),
        source_mask=list(a.mask),
        text="".join(a.text_parts),
        spans=a.spans,
        finish_reason="teacher_unavailable" if row.teacher.error else row.finish or "max_tokens",
        student_tokens=a.counts[STUDENT],
        teacher_tokens=a.counts[TEACHER],
        command_tokens=a.counts[COMMAND],
        calls=a.calls,
        call_ratio=a.counts[TEACHER] / total if total else 0.0,
        flops=2.0 * (ps * sc + pt * tc),
        # -- FLOPs split: both engines count a run that samples k tokens after a catch-up of P positions as
        # P + k - 1 positions (the last sampled token is fed by the next run), and the catch-up's last
        # position samples the first token: so k positions are decode and the other tc - k prefill
        flops_student=2.0 * ps * sc,
        flops_teacher_decode=2.0 * pt * a.teacher_sampled,
        flops_teacher_prefill=2.0 * pt * (tc - a.teacher_sampled),
        wall_s=a.wall[STUDENT] + a.wall[TEACHER],
        wall_student_s=a.wall[STUDENT],
        wall_teacher_s=a.wall[TEACHER],
        student_computed=sc,
        teacher_computed=tc,
        teacher_prefill=a.teacher_prefill,
        teacher_new=a.teacher_new,
        call_log=a.call_log,
        end_reason=row.finish or "max_tokens",
        teacher_error=row.teacher.error,
    )


class StreamResult:
    """Iterate for Span deltas; ``.value`` holds the RelayResult once the iteration is over."""

    def __init__(self, gen: Generator[Span, None, RelayResult]):
        self._gen = gen
        self.value: RelayResult | None = None

    def __iter__(self):
        self.value = yield from self._gen
        return self.value
