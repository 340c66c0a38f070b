"""One row's state, split by who reads it: the student side, the teacher side, the accounting."""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

from ..backends.base import Job, Sampling, Session
from ..calls import Call
from ..protocol import CLOSE, Command
from .commands import open_command
from .detok import Detok
from .result import COMMAND, STUDENT, TEACHER, Span


class Phase(enum.StrEnum):
    """Whose turn a row is waiting for or in (the values name ``RelayResult.wall_*_s`` keys too)."""

    STUDENT = STUDENT
    TEACHER = TEACHER
    DONE = "done"


@dataclass
class Segment:
    """What the student wrote since the teacher last read the text: ids, text, each token's end offset."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    ends: list[int] = field(default_factory=list)
    emitted: int = 0  # tokens already streamed; the others are held back (they may become a command)

    def push(self, tid: int, piece: str) -> None:
        self.ids.append(tid)
        self.text += piece
        self.ends.append(len(self.text))

    def take(self, hold: int | None = None) -> tuple[list[int], str]:
        """The tokens not yet streamed whose text ends by char ``hold`` (all by default), now streamed."""
        upto = len(self.ids)
        while hold is not None and upto > self.emitted and self.ends[upto - 1] > hold:
            upto -= 1
        if upto <= self.emitted:
            return [], ""
        start = self.ends[self.emitted - 1] if self.emitted else 0
        tids, text = self.ids[self.emitted : upto], self.text[start : self.ends[upto - 1]]
        self.emitted = upto
        return tids, text


@dataclass
class StudentSide:
    prompt: list[int]
    pstate: object  # the policy's per-row state
    session: Session | None = None  # opened at the row's first student turn
    seg: Segment = field(default_factory=Segment)
    cmd: tuple[int, Command] | None = None  # first token and Command that ended the segment


@dataclass
class TeacherSide:
    prompt: list[int]
    session: Session | None = None
    n: int = 0  # tokens granted by the handoff it is serving
    known: int = 0  # tokens of its view already run through the teacher
    error: str | None = None  # teacher_unavailable (issue #19): no more handoffs once set


@dataclass
class Accounts:
    """The response as the result reports it: tokens, who wrote them, spans, counts, calls, time."""

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {STUDENT: 0, TEACHER: 0, COMMAND: 0})
    calls: int = 0
    call_log: list[Call] = field(default_factory=list)
    wall: dict = field(default_factory=lambda: {STUDENT: 0.0, TEACHER: 0.0})
    teacher_prefill: list[int] = field(default_factory=list)  # per handoff: tokens it ran to catch up
    teacher_new: list[int] = field(default_factory=list)  # per handoff: tokens of its view it had never run
    teacher_sampled: int = 0  # tokens the teacher's runs sampled: its decode positions (FLOPs split)

    def add(self, source: str, tids: list[int], text: str, call: int | None = None) -> Span:
        """Record tokens in the response; merge into the last span of the same source (and call)."""
        self.ids.extend(tids)
        self.mask.extend([0 if source == TEACHER else 1] * len(tids))
        self.text_parts.append(text)
        self.counts[source] += len(tids)
        last = self.spans[-1] if self.spans else None
        if last is not None and last.source == source and last.call == call and source != COMMAND:
            last.token_ids.extend(tids)
            last.text += text
        else:
            self.spans.append(Span(source, list(tids), text, call))
        return Span(source, list(tids), text, call)


@dataclass(eq=False)
class Row:
    """One sequence of a RelayBatch. ``index``: its place in the order rows were added."""

    index: int
    seed_row: int  # the row number its random draws are seeded as
    student: StudentSide
    teacher: TeacherSide
    detok: Detok  # one text for both models: the teacher's tokens continue the student's
    sampling: Sampling
    max_tokens: int = 0
    phase: Phase = Phase.STUDENT
    max_wall_s: float | None = None
    acct: Accounts = field(default_factory=Accounts)
    finish: str | None = None  # how the text ended, once it has
    deadline: float = math.inf  # perf_counter time past which it times out (set at its first turn)
    started: bool = False
    # -- the turn in progress
    job: Job | None = None  # None between turns
    start_len: int = 0  # the session's length when the turn began
    produced: int = 0  # tokens the engine gave this turn
    paused: bool = False  # its turn was ended early by the scheduler (not stalled)
    # -- one response position where the row may not call (a call's counterfactual: relay/branch.py)
    block_at: int | None = None
    block_bias: dict[int, float] | None = None  # protocol.block_calls_bias: keeps <call> out of that position

    @property
    def position(self) -> int:
        """The response position of the next token; held-back tokens count as written."""
        return len(self.acct.ids) + len(self.student.seg.ids) - self.student.seg.emitted

    @property
    def remaining(self) -> int:
        """Response tokens left."""
        return self.max_tokens - self.position

    def hand_over(self, n: int, max_n: int) -> None:
        """The student's turn ends: the teacher writes next, at most ``n`` tokens (clamped to 1..max_n)."""
        self.job.cancel()
        self.acct.calls += 1
        self.teacher.n = max(1, min(n, max_n))
        self.phase = Phase.TEACHER

    def may_call(self, max_calls: int, at: int | None = None) -> bool:
        """Whether the row may hand over at response position ``at`` (default: the next token's): calls left,
        no teacher that became unavailable, and not the blocked position."""
        at = self.position if at is None else at
        return self.acct.calls < max_calls and self.teacher.error is None and at != self.block_at

    def release(self) -> None:
        """Free both sessions' caches (the engine must be done with them)."""
        for session in (self.student.session, self.teacher.session):
            if session is not None:
                session.release()

    def over_limit(self) -> str | None:
        """The limit the row has reached, if any: its token budget or its wall time."""
        if self.remaining <= 0:
            return "max_tokens"
        return "timeout" if time.perf_counter() > self.deadline else None

    def begin_turn(self, job: Job) -> Job:
        if not self.started:  # the wall-clock limit counts from the row's first turn
            self.started = True
            wall = self.max_wall_s
            self.deadline = math.inf if wall is None else time.perf_counter() + wall
        self.job, self.start_len, self.produced, self.paused = job, len(job.session.ids), 0, False
        return job

    def student_job(self, policy, may_call: bool, call_bias: dict | None) -> Job:
        """The student's next turn: it stops at ``</call>`` and gets the call bias only while it may call."""
        if self.position == self.block_at:  # that one token alone, <call> blocked, no policy trigger
            return Job(self.student.session, 1, self.sampling, row=self.seed_row, logit_bias=self.block_bias)
        honour, triggers = policy.honours_commands and may_call, policy.uses_trigger and may_call
        # never inside an open command: the bias would make the student write <call><call>...
        bias = call_bias if honour and open_command(self.student.seg.text) is None else None
        if getattr(policy, "block_calls", False):  # student-only with calls blocked: at every token
            bias = call_bias
        return Job(
            self.student.session,
            self.remaining,
            self.sampling,
            (CLOSE,) if honour else (),
            want_top_prob=triggers and policy.needs_top_prob,
            want_hidden=triggers and policy.needs_hidden,
            row=self.seed_row,
            logit_bias=bias,
        )

    def teacher_turn_over(self) -> None:
        """Account for the teacher's turn: its decode positions, its catch-up, what it has now run."""
        session = self.teacher.session
        self.acct.teacher_sampled += self.produced
        self.acct.teacher_prefill.append(session.last_prefill)
        self.teacher.known = len(session.ids) - 1  # its last sampled token was never run

    def lose_teacher(self, error: str, student_engine) -> None:
        """teacher_unavailable (issue #19): the teacher failed during this row's turn. What was written stays
        (the student's session has the teacher's tokens), the call ends as ``teacher_unavailable``, and the
        row goes on with the student alone, with no more handoffs (a teacher-only row's student picks up from
        the teacher's last token). ``end_reason`` keeps how the text ended."""
        self.teacher.error = error
        if self.student.session is None:
            self.student.session = student_engine.session(self.student.prompt + self.acct.ids)
