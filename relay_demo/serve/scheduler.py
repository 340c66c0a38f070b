"""The server's scheduler: one thread owns the engines and batches the rows of requests in flight (see the
package docstring)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ..relay import RelayBatch, RelayResult
from .requests import ApiError, Settings, _Request

log = logging.getLogger("relay_demo.serve")
SERVICE_S = 0.001  # the rows are looked over at most this often (see _loop)


class Scheduler:
    def __init__(self, settings: Settings):
        self.s = settings
        self.cv = threading.Condition()
        self.waiting: deque[_Request] = deque()
        self.running = 0
        # rejected: answered with an error before decoding (bad body, unknown model, full queue); failed: a
        # request the server could not finish (a batch or the server broke)
        self.totals = {
            "completed": 0, "cancelled": 0, "rejected": 0, "failed": 0, "batches": 0, "joined_running": 0
        }  # fmt: skip
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

    def count(self, kind: str) -> None:
        """A request that never reached a batch: "rejected" or "failed"."""
        with self.cv:
            self.totals[kind] += 1

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
                # what a batch's rows share: the policy with its knobs, max_calls, max_n, greedy or not
                batch = RelayBatch(self.s.pair, head.policy, head.limits, head.sampling)
            except (ValueError, NotImplementedError) as e:
                with self.cv:
                    self.waiting.popleft()
                    self.totals["failed"] += 1
                head.emit(("error", str(e)))
                continue
            reqs: dict = {}  # row -> request
            with self.s.pair.lock:
                self.totals["batches"] += 1
                self._admit(batch, head.key, reqs, running=False)
                serviced = time.monotonic()
                try:
                    for row, item in batch.events():
                        req, now = reqs.get(row), time.monotonic()
                        if isinstance(item, RelayResult):
                            self._finish(reqs.pop(row), item)
                        elif req is not None and item.text and not req.cancelled:
                            req.span(item.source, item.text, self.s, now)
                        # an engine step's events come in a burst, one a row: the rows are looked over
                        # (cancelled, late, text due, newcomers) once a burst, not once an event
                        if now - serviced >= SERVICE_S:
                            self._service(batch, head.key, reqs, now)
                            serviced = now
                except Exception as e:  # an engine failure ends this batch, not the server
                    log.exception("relay batch failed")
                    batch.close()
                    for req in reqs.values():
                        req.flush()
                        req.emit(("error", f"decoding failed: {type(e).__name__}"))
                        self._count(req, failed=True)

    def _admit(self, batch: RelayBatch, key: tuple, reqs: dict, running: bool = True) -> None:
        """Waiting requests of the batch's kind join it (at the next run of their model)."""
        with self.cv:
            while self.waiting and len(reqs) < self.s.max_batch and self.waiting[0].key == key:
                req = self.waiting.popleft()
                self.running += 1
                self.totals["joined_running"] += running
                # seed_row 0: a request samples as it would alone (as relay_stream's only row)
                req.row = batch.add(
                    ids=(req.s_ids, req.t_ids), sampling=req.sampling, max_tokens=req.max_tokens, seed_row=0
                )
                reqs[req.row] = req

    def _service(self, batch: RelayBatch, key: tuple, reqs: dict, now: float) -> None:
        """Between two events: stop rows whose client left or whose time is up, send text whose chunk is due,
        let waiting requests of this batch's kind join it."""
        for req in reqs.values():
            if req.cancelled:
                batch.cancel(req.row, "cancelled")
            elif req.deadline is not None and now > req.deadline:
                batch.cancel(req.row, "timeout")
            else:
                req.due(self.s, now)
        self._admit(batch, key, reqs)

    def _count(self, req: _Request, failed: bool = False) -> None:
        with self.cv:
            self.running -= 1
            kind = "failed" if failed else "cancelled" if req.cancelled else "completed"
            self.totals[kind] += 1

    def _finish(self, req: _Request, result: RelayResult) -> None:
        self._count(req)
        if result.teacher_error:  # the client sees only "teacher_unavailable"; the operator sees why
            log.warning("request %s went on without its teacher: %s", req.id, result.teacher_error)
        if not req.cancelled:
            req.flush()
            req.emit(("end", result))
