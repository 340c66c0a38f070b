"""The relay loop: a student writes, the teacher takes over for N tokens when asked, the student resumes.

    batch = RelayBatch(pair, make_policy("learned"))
    row = batch.add("What is 17 * 23?")       # rows may be added and cancelled while the batch runs
    for row, item in batch.events(): ...      # (row, Span) as decoded; (row, RelayResult) once it ends

A row (``state.Row``) is in one phase at a time (``state.Phase``): STUDENT, its student session continues;
TEACHER, the teacher reads what is new since its last turn (the student's segment with commands removed,
``commands.teacher_view``), then writes at most N tokens, appended to the student's session as ids; DONE.
Each engine step's tokens go through ``_student_delta`` or ``_teacher_delta``; a job's last delta ends the
row's turn (``_turn_over``): its next phase, or its end, reported at once. None of it depends on the schedule.

Scheduling (``schedule``, with the measurement behind it): the engines take turns, each on every row
waiting for it, because both share one machine; a student run ends early when most rows wait for the
teacher (``preempt``) or rows were added during it. A teacher that fails (``ModelUnavailable``) leaves its
rows to the student alone (``state.Row.lose_teacher``, ``finish_reason`` ``"teacher_unavailable"``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from ..backends.base import Job, ModelUnavailable, Sampling
from ..calls import Call
from ..policies import Policy
from . import commands, schedule
from .detok import Detok
from .inputs import check_policy, prompt_ids
from .result import COMMAND, STUDENT, TEACHER, RelayResult, Span, StreamResult, build_result
from .state import Phase, Row, Segment, StudentSide, TeacherSide

Event = tuple[Row, Span | RelayResult]


class RelayBatch:
    """Rows relay-decoded together. ``add`` and ``cancel`` may be called at any time, also between two
    events of a running ``events()``; a row added during a run joins the next run of its model."""

    def __init__(self, pair, policy: Policy, limits=None, sampling=None, preempt: bool | None = None):
        self.call_bias = check_policy(pair, policy)  # the learned policy's bias on the student's <call>
        self.pair, self.policy, self.tok = pair, policy, pair.student.tokenizer
        self.limits, self.sampling = limits or pair.limits, sampling or Sampling()
        self.preempt = (self.sampling.temperature == 0) if preempt is None else bool(preempt)
        self.rows: list[Row] = []  # rows not finished, in the order they were added
        self.added = self.n_paused = 0  # n_paused: student jobs ended early by the scheduler
        self.running, self.run_phase = [], None  # the engine run in progress: its rows, its phase
        self.newcomers = False  # rows added during the student run in progress
        self.ended: list[Row] = []  # rows cancelled between turns, not yet reported
        self.release_later: list[Row] = []  # rows finished during a run: released after it
        self.last = Phase.TEACHER  # the phase of the latest run: the student goes first

    def add(self, prompt=None, *, ids=None, sampling=None, max_tokens=None, seed_row=None) -> Row:
        """A new row. ``ids``: (student, teacher) prompt ids, instead of a prompt to tokenize. ``sampling``
        and ``max_tokens`` default to the batch's; ``seed_row`` (default: its index) seeds its draws."""
        index, sampling, limits = self.added, sampling or self.sampling, self.limits
        s_ids, t_ids = ids if ids is not None else prompt_ids(self.pair, prompt, limits, index)
        seed_row = index if seed_row is None else seed_row
        pstate = self.policy.new_state((sampling.seed or 0) * 7919 + seed_row)
        phase = Phase.TEACHER if self.policy.teacher_only else Phase.STUDENT
        sides = StudentSide(s_ids, pstate), TeacherSide(t_ids), Detok(self.tok), sampling
        row = Row(index, seed_row, *sides, max_tokens or limits.max_tokens, phase, limits.max_wall_s)
        self.added += 1
        self.rows.append(row)
        self.newcomers = self.newcomers or self.run_phase is Phase.STUDENT
        return row

    def cancel(self, row: Row, why: str = "cancelled") -> None:
        """End ``row`` now: in a run, its job gets no tokens after this step and the run reports it; between
        turns it is reported at the next event. ``why`` becomes its finish reason."""
        if row.phase is Phase.DONE:
            return
        row.finish = row.finish or why
        if row.job is not None:
            row.job.cancel()
        else:
            row.phase = Phase.DONE
            self.ended.append(row)

    def close(self) -> None:
        """Release every unfinished row's sessions (after a failure, or a caller that stops early)."""
        while self.rows:
            self.rows.pop().release()

    def events(self) -> Iterator[Event]:
        """Run until no row is left: (row, Span) as tokens are decoded, (row, RelayResult) as rows end."""
        yield from self._report_ended()
        while (phase := schedule.next_phase(self.rows, self.last)) is not None:  # which engine runs next
            self.last = phase
            yield from self._run(phase)
            yield from self._report_ended()

    def _run(self, phase: Phase) -> Iterator[Event]:
        """One engine run over every row in ``phase``, streaming what it writes as it writes it."""
        rows = [r for r in self.rows if r.phase is phase]
        engine = self.pair.student if phase is Phase.STUDENT else self.pair.teacher
        jobs = [self._job(r) for r in rows]
        self.running, self.run_phase, self.newcomers = rows, phase, False
        can_pause = phase is Phase.STUDENT and self.preempt and len(rows) > 1  # once per run
        t0, lost = time.perf_counter(), []
        try:
            for deltas in engine.run(jobs):
                for d in deltas:
                    row = rows[d.job]
                    row.produced += len(d.token_ids)
                    # 1. the new tokens: streamed, or held back, or a handoff (_student_delta)
                    if phase is Phase.STUDENT:
                        yield from self._student_delta(row, d)
                    else:
                        yield from self._teacher_delta(row, d.token_ids)
                    # 2. the job's last delta ends the row's turn: next phase, or the row is done
                    if d.finish is not None:
                        yield from self._turn_over(row, phase, t0)
                # 3. between steps: rows past their deadline end (those waiting for the other model too);
                # the student run may end early
                now = time.perf_counter()
                for row in [r for r in self.rows if now > r.deadline]:
                    self.cancel(row, "timeout")
                if phase is Phase.STUDENT and (n := schedule.pause(rows, can_pause, self.newcomers)):
                    self.n_paused, can_pause, self.newcomers = self.n_paused + n, False, False
                yield from self._report_ended()
        except ModelUnavailable as e:  # teacher_unavailable (issue #19); a student's failure ends the batch
            if phase is Phase.STUDENT:
                raise
            lost = [r for r in rows if r.job is not None and r.finish is None]
            for row in lost:
                row.lose_teacher(str(e), self.pair.student)
        finally:
            self.running, self.run_phase = [], None
            for row in self.release_later:  # the engine is done with every session of the run
                row.release()
            self.release_later = []
        for row in rows:
            if row.job is not None:  # a turn that never saw its last delta: the teacher failed during it
                yield from self._turn_over(row, phase, t0, lost=row in lost)
            if row.phase is not Phase.DONE:  # it waited for the run's slowest row: the whole run counts
                row.acct.wall[phase] += time.perf_counter() - t0

    def _job(self, row: Row) -> Job:
        """The row's next turn as an engine job."""
        st, te, budget = row.student, row.teacher, row.remaining
        if row.phase is Phase.STUDENT:
            st.session = st.session or self.pair.student.session(st.prompt)
            return row.begin_turn(
                row.student_job(self.policy, row.may_call(self.limits.max_calls), self.call_bias)
            )
        # the teacher catches up on what the student wrote since its last turn, commands removed
        te.session = te.session or self.pair.teacher.session(te.prompt)
        te.session.extend(commands.teacher_view(st.seg, st.cmd, self.tok))
        st.seg, st.cmd = Segment(), None
        row.acct.teacher_new.append(len(te.session.ids) - te.known)
        n = budget if self.policy.teacher_only else min(te.n, budget)
        if row.acct.call_log:
            row.acct.call_log[-1].granted, row.acct.call_log[-1].start = n, len(row.acct.ids)
        return row.begin_turn(Job(te.session, n, row.sampling, row=row.seed_row))

    # -- one student token: policy trigger, end token, command or text ----------------------------------

    def _student_delta(self, row: Row, d) -> Iterator[Event]:
        st, job, acct, tids = row.student, row.job, row.acct, d.token_ids
        for i, tid in enumerate(tids):
            if job.cancelled:  # tokens after a handoff decision in the same step are dropped
                st.session.truncate(len(st.session.ids) - (len(tids) - i))
                return
            # a policy may decide that the teacher writes this position: drop the token, hand over
            top = d.top_probs[i] if d.top_probs else None
            hid = d.hidden[i] if d.hidden is not None else None
            if (
                self.policy.uses_trigger
                and row.may_call(self.limits.max_calls)
                and self.policy.trigger(st.pstate, top, hid)
            ):
                st.session.truncate(len(st.session.ids) - (len(tids) - i))
                yield from self._stream(row, STUDENT, *st.seg.take())
                why = self.policy.why(top, hid)
                acct.call_log.append(Call(acct.calls, self.policy.name, why, self.policy.n, at=len(acct.ids)))
                row.hand_over(self.policy.n, self.limits.max_n)
                return
            if tid in self.pair.student.eos_ids:  # its end token ends the answer
                yield from self._stream(row, STUDENT, *st.seg.take())
                yield from self._stream(row, STUDENT, [tid], "")
                row.finish = "eos"
                return
            # the token joins the segment: a command it completes hands over; text that may still become a
            # command is held back; the rest is streamed
            piece = row.detok.push(tid)
            st.seg.push(tid, piece)
            honours = self.policy.honours_commands
            cmd = commands.completed_command(st.seg.text, piece, self.limits.max_n) if honours else None
            if cmd is not None:
                yield from self._command(row, cmd)
            else:  # stream what can no longer become a command
                hold = commands.held_from(st.seg.text) if honours else None
                yield from self._stream(row, STUDENT, *st.seg.take(hold))
            if self.call_bias and tid in self.call_bias and not job.cancelled:
                job.cancel()  # the command's N and </call> are written unbiased, in the next student turn
        if d.finish == "eos" and row.finish is None and row.phase is Phase.STUDENT and not job.cancelled:
            row.finish = "eos"

    def _command(self, row: Row, cmd) -> Iterator[Event]:
        """A complete command ends the segment: the text before it, then the command span; a handoff if
        calls are left (past max_calls, with the teacher gone or at ``Row.block_at``: text, no call)."""
        seg, acct = row.student.seg, row.acct
        first = commands.first_token(seg.ends, seg.emitted, cmd.start)
        yield from self._stream(row, STUDENT, *seg.take(seg.ends[first - 1] if first else 0))
        at = len(acct.ids)  # the command's first token: a call there may be one that is blocked
        honoured = row.may_call(self.limits.max_calls, at)
        yield from self._stream(row, COMMAND, *seg.take(), call=acct.calls if honoured else None)
        if honoured:
            row.student.cmd = (first, cmd)
            written = f"the student wrote {seg.text[cmd.start : cmd.end]}"
            acct.call_log.append(Call(acct.calls, "command", written, cmd.asked, at=at))
            row.hand_over(cmd.n, self.limits.max_n)

    def _stream(self, row: Row, source: str, tids: list[int], text: str, call=None) -> Iterator[Event]:
        if tids:
            yield row, row.acct.add(source, tids, text, call)

    # -- one teacher token ---------------------------------------------------------------------------

    def _teacher_delta(self, row: Row, tids: list[int]) -> Iterator[Event]:
        call = None if self.policy.teacher_only else row.acct.calls - 1
        for tid in tids:
            if row.student.session is not None:  # teacher-only runs have no student
                row.student.session.extend([tid])
            if tid in self.pair.teacher.eos_ids:
                yield row, row.acct.add(TEACHER, [tid], "", call)
                row.finish = "eos"
                row.job.cancel()
                return
            yield row, row.acct.add(TEACHER, [tid], row.detok.push(tid), call)

    def _turn_over(self, row: Row, phase: Phase, t0: float, lost: bool = False) -> Iterator[Event]:
        """The row's job is over: account for the turn, then the row's next phase, or its end."""
        row.job, acct, elapsed = None, row.acct, time.perf_counter() - t0
        row.finish = row.finish or row.over_limit()
        if phase is Phase.TEACHER:
            row.teacher_turn_over()
            if acct.call_log:  # this turn served the last call (teacher-only rows have none)
                finish, prefill = "teacher_unavailable" if lost else row.finish, acct.teacher_prefill[-1]
                acct.call_log[-1].close(row.produced, elapsed, prefill, finish, self.limits.max_n)
            row.phase = Phase.STUDENT if row.finish is None else row.phase
        elif row.phase is Phase.STUDENT and row.produced == 0 and not row.paused:
            row.finish = row.finish or "stalled"  # a student turn that wrote nothing would loop forever
        if row.finish is not None:  # (a row that goes on is charged the whole run when it ends: _run)
            acct.wall[phase] += elapsed
            yield from self._finish(row)

    def _finish(self, row: Row) -> Iterator[Event]:
        row.phase = Phase.DONE
        yield from self._stream(row, STUDENT, *row.student.seg.take())  # a held-back "<ca" is text after all
        result = build_result(row, self.pair, self.policy.teacher_only)
        self.rows.remove(row)
        if row in self.running:  # hf writes every row's cache back when the run ends
            self.release_later.append(row)
        else:
            row.release()
        yield row, result

    def _report_ended(self) -> Iterator[Event]:
        while self.ended:
            yield from self._finish(self.ended.pop(0))


def relay_batch(pair, prompts, policy, *, limits=None, sampling=None, on_span=None, preempt=None):
    """Relay-decode many prompts at once. ``on_span(row, span)`` sees every delta as it happens.
    ``preempt``: end student runs early (module docstring); default on in greedy decoding only."""
    batch = RelayBatch(pair, policy, limits, sampling, preempt)
    # two calls at once on one pair would interleave their engine steps (vLLM's are shared): one at a time
    with getattr(pair, "lock", None) or contextlib.nullcontext():
        rows = [batch.add(p) for p in prompts]
        results = {}
        for row, item in batch.events():
            if isinstance(item, RelayResult):
                results[row.index] = item
            elif on_span is not None:
                on_span(row.index, item)
        return [results[r.index] for r in rows]


def _spans(batch: RelayBatch):
    for _, item in batch.events():
        if isinstance(item, RelayResult):
            return item
        yield item


def relay_stream(pair, prompt, policy: Policy, *, limits=None, sampling=None) -> StreamResult:
    """Relay-decode one prompt, yielding Span deltas; the RelayResult is ``.value`` afterwards. A generator
    may be resumed from any thread, so it takes no lock: a caller sharing the pair across threads holds
    ``pair.lock`` while it iterates (as the app does)."""
    batch = RelayBatch(pair, policy, limits, sampling)
    batch.add(prompt)  # now, so bad input fails at the call and not at the first next()
    return StreamResult(_spans(batch))


def relay(pair, prompt, policy: Policy, **kw) -> RelayResult:
    """Relay-decode one prompt and return the result."""
    return relay_batch(pair, [prompt], policy, **kw)[0]
