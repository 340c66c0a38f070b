"""The server's scheduler: one thread owns the engines and batches the rows of requests in flight (see the
package docstring)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque

from ..relay import STUDENT, _Relay, _Seq
from .requests import ApiError, Settings, _Request

log = logging.getLogger("relay_demo.serve")


# -- the scheduler ------------------------------------------------------------------------------------


def _no_release() -> None:
    pass


class _ServeRelay(_Relay):
    """The relay loop with rows that come and go between rounds (see the module docstring)."""

    def __init__(self, pair, head: _Request):
        super().__init__(
            pair, head.policy, head.limits, head.sampling, preempt=head.sampling.temperature == 0
        )
        self.seqs: list[_Seq] = []
        self.reqs: dict[int, _Request] = {}
        self.jobs: dict[int, object] = {}
        self.in_round: set[int] = set()
        self.phase_now: str | None = None
        self.newcomers = False  # rows added during the running round
        self.release_later: list = []
        self.rows = itertools.count()
        self.key = head.key  # what its rows share: policy and knobs, max_calls, max_n, greedy or not

    def add(self, req: _Request) -> None:
        s = _Seq(next(self.rows), req.s_ids, req.t_ids, self.policy, self.tok, req.policy_seed)
        s.sampling, s.max_tokens = req.sampling, req.max_tokens
        req.seq = s
        self.seqs.append(s)  # drive() reads this list at every round
        self.reqs[s.row] = req

    def remaining(self, s: _Seq) -> int:
        return s.max_tokens - s.n_response

    def make_job(self, s: _Seq, phase: str):
        job = super().make_job(s, phase)
        job.sampling, job.row = s.sampling, 0  # each row its own sampling; seeds as a single-row relay's
        job.start_len = len(job.session.ids)
        self.jobs[s.row] = job
        return job

    def round(self, engine, phase, rows):
        self.in_round, self.phase_now, self.newcomers = {s.row for s in rows}, phase, False
        self.round_t0 = time.perf_counter()
        try:
            yield from super().round(engine, phase, rows)
        finally:
            self.in_round, self.phase_now = set(), None
            for sess in self.release_later:  # rows finished during the round: the engine is done with them
                sess.release()
            self.release_later = []

    def finish(self, s: _Seq):
        """The row's RelayResult. Its sessions are released now, or, if its round is still running (the
        engine writes every row's cache back when a round ends), as soon as that round ends."""
        if s.row not in self.in_round:
            return self.result(s)
        sessions = [x for x in (s.student, s.teacher) if x is not None]
        for x in sessions:
            x.release = _no_release  # an instance attribute shadows the method while result() runs
        try:
            return self.result(s)
        finally:
            for x in sessions:
                del x.release
            self.release_later.extend(sessions)

    def finish_early(self, s: _Seq) -> list | None:
        """A row whose engine job is over for good (an end token, its token budget) is finished now, not when
        the round's slowest row ends: what it held back is flushed (returned), its answer can be sent and its
        sessions released. A cancelled row waits for the round's end (its job may still see one step)."""
        if s.row not in self.in_round or s.phase == "done":
            return None
        if not (s.finish == "eos" or (s.finish is None and self.remaining(s) <= 0)):
            return None
        spans = [span for _, span in self.flush(s, STUDENT)]  # a held-back "<ca" is text after all
        s.finish = s.finish or "max_tokens"
        s.wall[self.phase_now] += time.perf_counter() - self.round_t0
        s.phase = "done"
        return spans

    def end_round_early(self) -> bool:
        """Let rows that arrived during a student round in: pause its writers as the loop's own preemption
        does (jobs cancelled, tokens kept; they rejoin the next student round). Only once every writer has
        kept a token this round (a row that wrote nothing would count as stalled). Teacher rounds are never
        cut: a handoff writes its N tokens (and lasts at most max_n tokens)."""
        if self.phase_now != STUDENT:
            return False
        live = [
            self.jobs[s.row]
            for s in self.seqs
            if s.row in self.in_round
            and s.phase == STUDENT
            and s.finish is None
            and not self.jobs[s.row].cancelled
        ]
        if not live or any(len(j.session.ids) <= j.start_len for j in live):
            return False
        for job in live:
            job.cancel()
        self.n_paused += len(live)
        return True

    def stop(self, s: _Seq, why: str) -> None:
        if s.phase == "done":
            return
        s.finish = s.finish or why
        if s.row in self.in_round:
            job = self.jobs.get(s.row)
            if job is not None:
                job.cancel()  # no tokens after this step; the round's end finishes the row
        else:
            s.phase = "done"


class Scheduler:
    def __init__(self, settings: Settings):
        self.s = settings
        self.cv = threading.Condition()
        self.waiting: deque[_Request] = deque()
        self.running = 0
        self.totals = {"completed": 0, "cancelled": 0, "failed": 0, "batches": 0, "joined_running": 0}
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="relay-scheduler", daemon=True)
        self.thread.start()

    # -- called from the event loop --

    def submit(self, req: _Request) -> None:
        with self.cv:
            if self.closed:
                raise ApiError(503, "the server is shutting down")
            if len(self.waiting) + self.running >= self.s.max_batch + self.s.max_queue:
                raise ApiError(
                    429,
                    f"server full ({self.s.max_batch} decoding, {self.s.max_queue} waiting); retry later",
                    None,
                    "queue_full",
                )
            self.waiting.append(req)
            self.cv.notify()

    def cancel(self, req: _Request) -> None:
        """The client is gone: drop the request from the queue, or have the scheduler stop its row."""
        with self.cv:
            req.cancelled = True
            if req in self.waiting:
                self.waiting.remove(req)
                self.totals["cancelled"] += 1

    def status(self) -> dict:
        with self.cv:
            return {"running": self.running, "waiting": len(self.waiting), **self.totals}

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()

    # -- the scheduler thread --

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.waiting and not self.closed:
                    self.cv.wait()
                if self.closed:
                    return
                head = self.waiting[0]
            try:
                relay = _ServeRelay(self.s.pair, head)
            except (ValueError, NotImplementedError) as e:
                with self.cv:
                    self.waiting.popleft()
                    self.totals["failed"] += 1
                head.emit(("error", str(e)))
                continue
            with self.s.pair.lock:
                self.totals["batches"] += 1
                self._admit(relay, running=False)
                try:
                    for row, span in relay.drive(relay.seqs):
                        req = relay.reqs.get(row)
                        if req is not None and span.text and not req.cancelled:
                            req.emit(("span", span.source, span.text))
                        self._service(relay)
                    self._service(relay, admit=False)
                except Exception as e:  # an engine failure ends this batch, not the server
                    log.exception("relay batch failed")
                    for req in list(relay.reqs.values()):
                        req.emit(("error", f"decoding failed: {type(e).__name__}"))
                        try:
                            self._finish(relay, req, failed=True)
                        except Exception:  # its state may be broken too; count it and go on
                            log.exception("releasing a failed row")

    def _admit(self, relay: _ServeRelay, running: bool = True) -> None:
        with self.cv:
            while self.waiting and len(relay.reqs) < self.s.max_batch and self.waiting[0].key == relay.key:
                req = self.waiting.popleft()
                self.running += 1
                self.totals["joined_running"] += running
                relay.add(req)
                relay.newcomers = relay.newcomers or bool(relay.in_round)

    def _service(self, relay: _ServeRelay, admit: bool = True) -> None:
        """Between two tokens: stop rows whose client left or whose time is up, finish rows that are done,
        let waiting requests of this batch's kind join it."""
        now = time.monotonic()
        for req in list(relay.reqs.values()):
            s = req.seq
            if req.cancelled:
                relay.stop(s, "cancelled")
            elif req.deadline is not None and now > req.deadline:
                relay.stop(s, "timeout")
            else:
                for span in relay.finish_early(s) or ():
                    if span.text:
                        req.emit(("span", span.source, span.text))
            if s.phase == "done":
                self._finish(relay, req)
        if admit:
            self._admit(relay)
            if relay.newcomers and relay.end_round_early():
                relay.newcomers = False

    def _finish(self, relay: _ServeRelay, req: _Request, failed: bool = False) -> None:
        s = req.seq
        relay.reqs.pop(s.row, None)
        relay.jobs.pop(s.row, None)
        if s in relay.seqs:
            relay.seqs.remove(s)
        try:
            result = relay.finish(
                s
            )  # releases both sessions (their caches), at the round's end at the latest
        finally:
            with self.cv:
                self.running -= 1
                kind = "failed" if failed else "cancelled" if req.cancelled else "completed"
                self.totals[kind] += 1
        if result.teacher_error:  # the client sees only "teacher_unavailable"; the operator sees why
            log.warning("request %s went on without its teacher: %s", req.id, result.teacher_error)
        if not failed and not req.cancelled:
            req.emit(("end", result))
