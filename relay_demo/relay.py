"""The relay loop: a student writes, the teacher takes over for N tokens when asked, the student resumes.

    pair = load_pair("tiny-arith")
    gen = relay_stream(pair, "What is 17 * 23?", make_policy("learned"))
    for span in gen: ...                     # Span deltas as they are decoded (streaming)
    result = gen.value                       # RelayResult, see StreamResult below
    results = relay_batch(pair, prompts, policy)   # many sequences at once

How a sequence moves (``_Seq.phase``):

* ``student``: the student continues its own session. Each new token is first shown to the policy
  (``trigger``: the teacher should write this position) and, if kept, to the command detector.
  When ``</call>`` completes a command (``protocol.find_command``), or a policy triggers, the student's job
  is cancelled and the sequence moves to ``teacher`` with the number of tokens to hand over.
* ``teacher``: the teacher's session first receives what is new since its last turn: the student's
  segment *with commands removed* (``protocol.strip_commands``; ids are reused when the command sits on token
  boundaries, otherwise the cleaned text is re-tokenized). The teacher writes at most N tokens; they are
  appended to the student's session as ids, and the student resumes seeing its command and those tokens.
* ``done``: an end token from either model, the token budget, or the wall-clock limit.

Teacher unavailable (a remote teacher down, too slow, or gone mid-answer: ``ModelUnavailable``): the rows
whose turn it was keep every token written so far, their call ends as ``teacher_unavailable``, and they go on
with the student alone, with no more handoffs (a teacher-only row continues with the student from the
teacher's last token). Their ``finish_reason`` is then ``"teacher_unavailable"``; ``end_reason`` keeps how
the text ended.

Rounds: all sequences in the student phase run as one batch; then all sequences in the teacher phase run as
one batch; repeat. With KV caches (transformers) or prefix caching (vLLM) a round costs each model only the
tokens it has not seen. A student round ends when each sequence has stopped or, with ``preempt`` (the default
in greedy decoding), as soon as the sequences waiting for the teacher are as many as those still writing: the
writers are paused (their jobs cancelled, their tokens kept) and rejoin the next student round with the
sequences the teacher has served, so the student's batch does not shrink to a long tail of single rows while
most sequences wait. A paused row re-reads at most one cache block. In greedy decoding this changes no output;
with sampling a row's random stream would depend on when its neighbours hand over, so it is off there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from .backends.base import Job, ModelEngine, ModelUnavailable, Sampling, Session, chat_ids
from .calls import Call
from .policies import Policy
from .protocol import CLOSE, OPEN, find_command, single_token_id, strip_commands

STUDENT, TEACHER, COMMAND = "student", "teacher", "command"
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
    finish_reason: str  # "eos" | "max_tokens" | "timeout" | "stalled" | "teacher_unavailable"
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


class _Detok:
    """Incremental detokenizer: the text each new token adds, robust to multi-byte characters."""

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "_tokenizer", None)  # the Rust tokenizer: 4x cheaper than the wrapper
        self.decode = backend.decode if backend is not None else tokenizer.decode
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, tid: int) -> str:
        self.ids.append(tid)
        before = self.decode(self.ids[self.prefix : self.read], skip_special_tokens=False)
        after = self.decode(self.ids[self.prefix :], skip_special_tokens=False)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class _Seq:
    """One sequence's state across rounds."""

    def __init__(
        self, row: int, s_prompt: list[int], t_prompt: list[int], policy: Policy, tokenizer, seed: int
    ):
        self.row = row
        self.s_prompt, self.t_prompt = s_prompt, t_prompt
        self.student: Session | None = None
        self.teacher: Session | None = None
        self.detok = _Detok(tokenizer)
        self.pstate = policy.new_state(seed)
        self.phase = TEACHER if policy.teacher_only else STUDENT
        self.handoff_n = 0
        self.finish: str | None = None
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.text_parts: list[str] = []
        self.spans: list[Span] = []
        # the student's current segment: tokens since the last handoff, their text and char offsets
        self.seg_ids: list[int] = []
        self.seg_text = ""
        self.seg_ends: list[int] = []
        self.emitted = 0  # segment tokens already streamed
        self.counts = {STUDENT: 0, TEACHER: 0, COMMAND: 0}
        self.calls = 0
        self.wall = {STUDENT: 0.0, TEACHER: 0.0}
        self.teacher_prefill: list[int] = []  # per handoff: tokens the teacher ran to catch up
        self.teacher_new: list[int] = []  # per handoff: tokens of its view it had never run
        self.teacher_known = 0  # teacher view tokens already run through the teacher
        self.teacher_sampled = 0  # tokens the teacher's runs sampled: its decode positions (FLOPs split)
        self.cmd = None  # (first token index, Command) of the command that ended the segment
        self.call_log: list[Call] = []
        self.teacher_error: str | None = None  # teacher_unavailable (issue #19): no more handoffs once set

    @property
    def n_response(self) -> int:
        return len(self.ids) + len(self.seg_ids) - self.emitted  # held-back tokens count too

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


def _chat_ids(engine: ModelEngine, prompt, chat_kwargs: dict) -> list[int]:
    return chat_ids(engine.tokenizer, prompt, chat_kwargs)


def validate_prompt(prompt) -> None:
    """Empty or malformed prompts get a clear error before any model runs."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        messages = prompt
    else:
        raise ValueError("a prompt is a string or a list of {'role', 'content'} messages")
    if not messages or not all(isinstance(m.get("content"), str) for m in messages):
        raise ValueError("every message needs text content")
    if not messages[-1]["content"].strip():
        raise ValueError("the prompt is empty")
    for m in messages:
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (e.g. invalid bytes read with surrogateescape)
            raise ValueError(
                f"the prompt is not valid text: an unpaired surrogate {m['content'][e.start]!r} at character "
                f"{e.start} (invalid UTF-8 bytes in the input?)"
            ) from None


def _open_command(text: str) -> int | None:
    """Where the last ``<call>`` of ``text`` starts if no ``</call>`` closes it yet, else None."""
    lo = text.rfind(OPEN)
    return lo if lo >= 0 and text.find(CLOSE, lo) < 0 else None


class _Relay:
    def __init__(self, pair, policy: Policy, limits: Limits, sampling: Sampling, preempt: bool | None = None):
        if policy.needs_hidden and not pair.student.supports_hidden:
            raise NotImplementedError(
                f"policy {policy.name!r} needs the student's hidden states, which the {pair.student.backend} "
                "backend does not expose; use the transformers backend (hf)"
            )
        want = getattr(getattr(policy, "router", None), "hidden_size", None)
        model = getattr(pair.student, "model", None)
        have = getattr(getattr(model, "config", None), "hidden_size", None)
        if want is not None and isinstance(have, int) and want != have:
            raise ValueError(
                f"the router was trained on hidden states of size {want}; this student's are {have}"
            )
        self.pair, self.policy, self.limits, self.sampling = pair, policy, limits, sampling
        self.preempt = (sampling.temperature == 0) if preempt is None else bool(preempt)
        self.n_paused = 0  # student jobs paused by an early end of their round
        self.tok = pair.student.tokenizer
        self.call_bias = None  # the learned policy's bias on the student's <call> token
        if getattr(policy, "call_bias", 0.0):
            call_id = single_token_id(self.tok, OPEN)
            if call_id is None:
                raise ValueError(
                    f"call_bias needs {OPEN} to be one token of the student's vocabulary; in this student's "
                    "tokenizer it is several (the student was not trained with it as a token of its own)"
                )
            self.call_bias = {call_id: policy.call_bias}

    # -- setup -------------------------------------------------------------------------------------

    def start(self, prompts: list) -> list[_Seq]:
        seqs = []
        for row, prompt in enumerate(prompts):
            validate_prompt(prompt)
            s_ids = _chat_ids(self.pair.student, prompt, self.pair.chat_kwargs)
            t_ids = _chat_ids(self.pair.teacher, prompt, self.pair.chat_kwargs)
            longest = max(len(s_ids), len(t_ids))
            if longest > self.limits.max_prompt_tokens:
                raise ValueError(
                    f"prompt {row} is {longest} tokens; this pair accepts at most "
                    f"{self.limits.max_prompt_tokens}"
                )
            seed = (self.sampling.seed or 0) * 7919 + row
            seqs.append(_Seq(row, s_ids, t_ids, self.policy, self.tok, seed))
        return seqs

    # -- the loop ----------------------------------------------------------------------------------

    def drive(self, seqs: list[_Seq]) -> Iterator[tuple[int, Span]]:
        self.t0 = time.perf_counter()
        while True:
            moved = False
            for phase, engine in ((STUDENT, self.pair.student), (TEACHER, self.pair.teacher)):
                rows = [s for s in seqs if s.phase == phase]
                if rows:
                    moved = True
                    yield from self.round(engine, phase, rows)
            if not moved:
                return

    def remaining(self, s: _Seq) -> int:
        return self.limits.max_tokens - s.n_response

    def timed_out(self) -> bool:
        lim = self.limits.max_wall_s
        return lim is not None and time.perf_counter() - self.t0 > lim

    def round(self, engine: ModelEngine, phase: str, rows: list[_Seq]) -> Iterator[tuple[int, Span]]:
        """Run one model on every sequence of this phase until each stops, streaming what it writes."""
        jobs = [self.make_job(s, phase) for s in rows]
        produced = [0] * len(rows)
        paused = [False] * len(rows)
        ended = [False] * len(rows)  # the engine finished the job (teacher_unavailable spares these rows)
        lost = [False] * len(rows)  # the teacher became unavailable before it finished this row's turn
        can_pause = phase == STUDENT and self.preempt and len(rows) > 1  # once per round
        start = time.perf_counter()
        try:
            for deltas in engine.run(jobs):
                for d in deltas:
                    s, job = rows[d.job], jobs[d.job]
                    produced[d.job] += len(d.token_ids)
                    ended[d.job] = ended[d.job] or d.finish is not None
                    if phase == STUDENT:
                        yield from self.on_student(s, job, d)
                    else:
                        yield from self.on_teacher(s, job, d)
                if self.timed_out():
                    for s, job in zip(rows, jobs, strict=True):
                        job.cancel()
                        s.finish = s.finish or "timeout"
                elif can_pause:
                    can_pause = not self.maybe_pause(rows, jobs, paused)
        except ModelUnavailable as e:  # teacher_unavailable (issue #19); a student's failure ends the batch
            if phase != TEACHER:
                raise
            lost = [not done and s.finish is None for s, done in zip(rows, ended, strict=True)]
            self.teacher_lost([s for s, x in zip(rows, lost, strict=True) if x], str(e))
        elapsed = time.perf_counter() - start
        for s, n, p, x in zip(rows, produced, paused, lost, strict=True):
            s.wall[phase] += elapsed
            self.after_round(s, phase, n, paused=p)
            if phase == TEACHER and s.call_log:  # this turn served the last call (teacher-only has none)
                finish = "teacher_unavailable" if x else s.finish
                s.call_log[-1].close(n, elapsed, s.teacher.last_prefill, finish, self.limits.max_n)
            if s.phase == "done":
                yield from self.flush(s, STUDENT)

    def teacher_lost(self, rows: list[_Seq], error: str) -> None:
        """teacher_unavailable (issue #19): these rows' teacher turn failed. What was written stays (the
        teacher's tokens are already in the student's session); the rows go on with the student alone."""
        for s in rows:
            s.teacher_error = error
            if s.student is None:  # teacher-only: the student picks up from the teacher's last token
                s.student = self.pair.student.session(s.s_prompt + s.ids)

    def can_call(self, s: _Seq) -> bool:
        """Whether the row may still hand over: calls left, and no teacher that became unavailable."""
        return s.calls < self.limits.max_calls and s.teacher_error is None

    def maybe_pause(self, rows: list[_Seq], jobs: list[Job], paused: list[bool]) -> bool:
        """End the student round early once the rows waiting for the teacher are as many as the writers."""
        writing = [
            i
            for i, (s, job) in enumerate(zip(rows, jobs, strict=True))
            if s.phase == STUDENT and s.finish is None and not job.cancelled
        ]
        waiting = sum(1 for s in rows if s.phase == TEACHER)
        if writing and waiting >= len(writing):
            for i in writing:
                jobs[i].cancel()  # its tokens so far stay in its session; later ones are dropped
                paused[i] = True
            self.n_paused += len(writing)
            return True
        return False

    def make_job(self, s: _Seq, phase: str) -> Job:
        budget = self.remaining(s)
        if phase == STUDENT:
            if s.student is None:
                s.student = self.pair.student.session(s.s_prompt)
            honour = self.policy.honours_commands and self.can_call(s)
            stop = (CLOSE,) if honour else ()
            triggers = self.policy.uses_trigger and self.can_call(s)
            return Job(
                s.student,
                budget,
                self.sampling,
                stop,
                want_top_prob=triggers and self.policy.needs_top_prob,
                want_hidden=triggers and self.policy.needs_hidden,
                row=s.row,
                # never inside an open command: the bias would make the student write <call><call>...
                logit_bias=self.call_bias if honour and _open_command(s.seg_text) is None else None,
            )
        # teacher: catch up on what the student wrote since the teacher's last turn, commands removed
        if s.teacher is None:
            s.teacher = self.pair.teacher.session(s.t_prompt)
        s.teacher.extend(self.teacher_view(s))
        s.seg_ids, s.seg_text, s.seg_ends, s.emitted = [], "", [], 0
        s.teacher_new.append(len(s.teacher.ids) - s.teacher_known)
        n = budget if self.policy.teacher_only else min(s.handoff_n, budget)
        if s.call_log:
            s.call_log[-1].granted, s.call_log[-1].start = n, len(s.ids)
        return Job(s.teacher, n, self.sampling, row=s.row)

    # -- student side ------------------------------------------------------------------------------

    def on_student(self, s: _Seq, job: Job, d) -> Iterator[tuple[int, Span]]:
        if job.cancelled and d.finish is None and not d.token_ids:
            return
        for i, tid in enumerate(d.token_ids):
            if job.cancelled:  # tokens after a handoff decision in the same step are dropped
                s.student.truncate(len(s.student.ids) - (len(d.token_ids) - i))
                break
            top = d.top_probs[i] if d.top_probs else None
            hid = d.hidden[i] if d.hidden is not None else None
            if self.policy.uses_trigger and self.can_call(s) and self.policy.trigger(s.pstate, top, hid):
                # the teacher writes this position: drop the student's token, hand over
                s.student.truncate(len(s.student.ids) - (len(d.token_ids) - i))
                yield from self.flush(s, STUDENT)
                why = self.policy.why(top, hid)
                s.call_log.append(Call(s.calls, self.policy.name, why, self.policy.n, at=len(s.ids)))
                self.handoff(s, self.policy.n, job)
                break
            if tid in self.pair.student.eos_ids:
                yield from self.flush(s, STUDENT)
                yield s.row, s.add(STUDENT, [tid], "")
                s.finish = "eos"
                break
            yield from self.push_student_token(s, tid, job)
            if self.call_bias and tid in self.call_bias and not job.cancelled:
                job.cancel()  # the command's N and </call> are written unbiased, in the next student round
        if d.finish == "eos" and s.finish is None and s.phase == STUDENT and not job.cancelled:
            s.finish = "eos"

    def push_student_token(self, s: _Seq, tid: int, job: Job) -> Iterator[tuple[int, Span]]:
        piece = s.detok.push(tid)
        s.seg_ids.append(tid)
        s.seg_text += piece
        s.seg_ends.append(len(s.seg_text))
        if not self.policy.honours_commands:
            yield from self.flush(s, STUDENT)
            return
        # a command can only end in the characters this token added (plus the 6 before them)
        window = s.seg_text[max(0, len(s.seg_text) - len(piece) - len(CLOSE) + 1) :]
        at = window.find(CLOSE)
        if at >= 0:
            end = len(s.seg_text) - len(window) + at + len(CLOSE)
            cmd = find_command(s.seg_text[:end], self.limits.max_n)
            if cmd is not None:
                yield from self.command(s, cmd, job)
                return
        yield from self.flush(s, STUDENT, hold=self.held_from(s))

    def held_from(self, s: _Seq) -> int:
        """Char index from which the segment might still become a command: those tokens are held back."""
        text = s.seg_text
        lo = _open_command(text)
        if lo is not None:
            return lo
        for k in range(min(len(OPEN) - 1, len(text)), 0, -1):  # a suffix that could grow into "<call>"
            if OPEN.startswith(text[-k:]):
                return len(text) - k
        return len(text)

    def flush(self, s: _Seq, source: str, hold: int | None = None) -> Iterator[tuple[int, Span]]:
        """Stream the segment's tokens whose text ends before char ``hold`` (all of them by default)."""
        upto = len(s.seg_ids)
        if hold is not None:
            while upto > s.emitted and s.seg_ends[upto - 1] > hold:
                upto -= 1
        if upto > s.emitted:
            start_char = s.seg_ends[s.emitted - 1] if s.emitted else 0
            text = s.seg_text[start_char : s.seg_ends[upto - 1]]
            tids = s.seg_ids[s.emitted : upto]
            s.emitted = upto
            yield s.row, s.add(source, tids, text)

    def command(self, s: _Seq, cmd, job: Job) -> Iterator[tuple[int, Span]]:
        """A complete command ends the segment: stream it as a command span and hand over if allowed."""
        first = next(i for i, e in enumerate(s.seg_ends) if e > cmd.start)
        first = max(first, s.emitted)
        start_char = s.seg_ends[first - 1] if first else 0
        yield from self.flush(s, STUDENT, hold=start_char)
        s.emitted = first
        tids, text = s.seg_ids[first:], s.seg_text[start_char:]
        honoured = self.can_call(s)  # past max_calls (or the teacher gone) a command is text, and no call
        at = len(s.ids)
        yield s.row, s.add(COMMAND, tids, text, call=s.calls if honoured else None)
        s.emitted = len(s.seg_ids)
        if honoured:
            s.cmd = (first, cmd)
            written = s.seg_text[cmd.start : cmd.end]
            s.call_log.append(Call(s.calls, "command", f"the student wrote {written}", cmd.n, at=at))
            self.handoff(s, cmd.n, job)

    def handoff(self, s: _Seq, n: int, job: Job) -> None:
        job.cancel()
        s.calls += 1
        s.handoff_n = max(1, min(n, self.limits.max_n))
        s.phase = TEACHER

    def teacher_view(self, s: _Seq) -> list[int]:
        """The segment as the teacher sees it: commands removed, ids reused when they line up."""
        ids, text = s.seg_ids, s.seg_text
        cmd_info, s.cmd = s.cmd, None
        clean = strip_commands(text)
        if cmd_info is not None:
            first, cmd = cmd_info
            aligned = (s.seg_ends[first - 1] if first else 0) == cmd.start and s.seg_ends[-1] == cmd.end
            if aligned and clean == text[: cmd.start] and len(s.seg_ends) and cmd.end == len(text):
                return ids[:first]
        elif clean == text:
            return list(ids)
        return self.tok.encode(clean, add_special_tokens=False) if clean else []

    # -- teacher side ------------------------------------------------------------------------------

    def on_teacher(self, s: _Seq, job: Job, d) -> Iterator[tuple[int, Span]]:
        call = None if self.policy.teacher_only else s.calls - 1
        for tid in d.token_ids:
            if s.student is not None:  # teacher-only runs have no student
                s.student.extend([tid])
            if tid in self.pair.teacher.eos_ids:
                yield s.row, s.add(TEACHER, [tid], "", call)
                s.finish = "eos"
                job.cancel()
                break
            yield s.row, s.add(TEACHER, [tid], s.detok.push(tid), call)

    # -- bookkeeping -------------------------------------------------------------------------------

    def after_round(self, s: _Seq, phase: str, produced: int, paused: bool = False) -> None:
        if phase == TEACHER:
            s.teacher_sampled += produced
            s.teacher_prefill.append(s.teacher.last_prefill)
            s.teacher_known = len(s.teacher.ids) - 1  # its last sampled token was never run
        if s.finish is None and self.remaining(s) <= 0:
            s.finish = "max_tokens"
        if s.finish is None and self.timed_out():
            s.finish = "timeout"
        if s.finish is not None:
            s.phase = "done"
            return
        if phase == TEACHER:
            s.phase = STUDENT
        elif s.phase == STUDENT and produced == 0 and not paused:
            s.finish, s.phase = "stalled", "done"  # a student round that wrote nothing would loop forever

    def result(self, s: _Seq) -> RelayResult:
        total = len(s.ids)
        ps, pt = self.pair.student.n_params, self.pair.teacher.n_params
        sc = s.student.computed if s.student else 0
        tc = s.teacher.computed if s.teacher else 0
        for sess in (s.student, s.teacher):
            if sess is not None:
                sess.release()
        return RelayResult(
            prompt_ids=list(s.s_prompt if not self.policy.teacher_only else s.t_prompt),
            token_ids=list(s.ids),
            source_mask=list(s.mask),
            text="".join(s.text_parts),
            spans=s.spans,
            finish_reason="teacher_unavailable" if s.teacher_error else s.finish or "max_tokens",
            student_tokens=s.counts[STUDENT],
            teacher_tokens=s.counts[TEACHER],
            command_tokens=s.counts[COMMAND],
            calls=s.calls,
            call_ratio=s.counts[TEACHER] / total if total else 0.0,
            flops=2.0 * (ps * sc + pt * tc),
            # -- FLOPs split: both engines count a run that samples k tokens after a catch-up of P positions
            # as P + k - 1 positions (the last sampled token is fed by the next run), and the catch-up's last
            # position samples the first token: so k positions are decode and the other tc - k prefill
            flops_student=2.0 * ps * sc,
            flops_teacher_decode=2.0 * pt * s.teacher_sampled,
            flops_teacher_prefill=2.0 * pt * (tc - s.teacher_sampled),
            wall_s=s.wall[STUDENT] + s.wall[TEACHER],
            wall_student_s=s.wall[STUDENT],
            wall_teacher_s=s.wall[TEACHER],
            student_computed=sc,
            teacher_computed=tc,
            teacher_prefill=s.teacher_prefill,
            teacher_new=s.teacher_new,
            call_log=s.call_log,
            end_reason=s.finish or "max_tokens",
            teacher_error=s.teacher_error,
        )


class StreamResult:
    """Iterate for Span deltas; ``.value`` holds the RelayResult once the iteration is over."""

    def __init__(self, gen: Generator[Span, None, RelayResult]):
        self._gen = gen
        self.value: RelayResult | None = None

    def __iter__(self):
        self.value = yield from self._gen
        return self.value


def relay_batch(
    pair,
    prompts: list,
    policy: Policy,
    *,
    limits: Limits | None = None,
    sampling: Sampling | None = None,
    on_span=None,
    preempt: bool | None = None,
) -> list[RelayResult]:
    """Relay-decode many prompts at once. ``on_span(row, span)`` sees every delta as it happens.
    ``preempt``: end student rounds early (module docstring); default on in greedy decoding only."""
    relay = _Relay(pair, policy, limits or pair.limits, sampling or Sampling(), preempt)
    # two calls at once on one pair would interleave their engine steps (vLLM's are shared): one at a time
    with getattr(pair, "lock", None) or contextlib.nullcontext():
        seqs = relay.start(list(prompts))
        for row, span in relay.drive(seqs):
            if on_span is not None:
                on_span(row, span)
        return [relay.result(s) for s in seqs]


def _stream(relay: _Relay, seq: _Seq) -> Generator[Span, None, RelayResult]:
    for _, span in relay.drive([seq]):
        yield span
    return relay.result(seq)


def relay_stream(
    pair, prompt, policy: Policy, *, limits: Limits | None = None, sampling: Sampling | None = None
) -> StreamResult:
    """Relay-decode one prompt, yielding Span deltas; the RelayResult is ``.value`` afterwards. A generator
    may be resumed from any thread, so it takes no lock: a caller sharing the pair across threads holds
    ``pair.lock`` while it iterates (as the app does)."""
    relay = _Relay(pair, policy, limits or pair.limits, sampling or Sampling())
    (seq,) = relay.start([prompt])  # now, so bad input fails at the call and not at the first next()
    return StreamResult(_stream(relay, seq))


def relay(pair, prompt, policy: Policy, **kw) -> RelayResult:
    """Relay-decode one prompt and return the result."""
    return relay_batch(pair, [prompt], policy, **kw)[0]
