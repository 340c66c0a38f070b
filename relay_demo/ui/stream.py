"""One relay generation streamed to the UI: a worker thread runs the relay under the pair's lock, the
handler reads a queue and yields :class:`Snapshot` objects (merged spans, live counters, the final result).

    for snap in generate(pair, [{"role": "user", "content": "2+3?"}], policy, limits, sampling):
        snap.spans, snap.counters, snap.result

Why a thread: a loaded pair is shared by every user and runs one generation at a time (``Pair.lock``).
If the handler held the lock itself, a user who closes the tab would leave it held until the generator is
garbage-collected. Here Gradio closes the handler's generator, which sets a flag; the worker stops at the
next token and releases the lock. A waiting request says so and gives up after ``LOCK_WAIT_S``.

Stop is a normal end, not a cancelled event: the Stop button presses the user's :class:`StopButton` (kept in
``gr.State``), ``generate`` sees it and the worker ends the row as ``"stopped"``, so the last snapshot holds a
result like any other: the partial answer and its exact counters.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..backends.base import Sampling, chat_ids
from ..cost import PARTS, teacher_alone_flops
from ..policies import Policy, make_policy
from ..relay import Limits, Phase, RelayBatch, RelayResult, validate_prompt

LOCK_WAIT_S = 120.0  # a request waits this long for the pair before it gives up with a message
STREAM_EVERY_S = 0.05  # the UI is refreshed at most this often (batches tokens, keeps tok/s high)


class StopButton:
    """One user's Stop button, shared by the Stop click and that user's generations (in ``gr.State``, so one
    per browser session). A press stops the generation running now, or the one the user has sent and that
    still waits in Gradio's queue; never one sent later.

    A click on Send runs :meth:`clicked` first (``queue=False``, the generation follows with ``.then``), so a
    press while the request is still queued (its handler not yet called) counts for it. A request that never
    starts (cleared while queued) leaves no press behind for the next one; API calls (no click) just start."""

    def __init__(self):
        self.run = self.pressed_at = 0  # the last generation started; the run the last press stopped
        self.clicks = 0  # Sends clicked (``clicked``), started or still queued

    def clicked(self) -> None:
        """Send was clicked: its generation is queued and ``start`` will give it this number (at least one
        past the last generation, API calls included)."""
        self.clicks = max(self.clicks, self.run) + 1

    def start(self):
        """A new generation begins: the function it polls for a press."""
        self.run = max(self.run + 1, self.clicks)
        run = self.run
        return lambda: self.pressed_at >= run

    def press(self) -> None:
        self.pressed_at = max(self.run, self.clicks)

    @staticmethod
    def counted(state) -> dict:
        """The keywords of the listener that counts a click (``button.click(**StopButton.counted(state))
        .then(generation)``): ``state`` is the ``gr.State`` holding this user's button."""
        return {
            "fn": StopButton.clicked,
            "inputs": state,
            "outputs": None,
            "queue": False,
            "api_visibility": "private",
        }


@dataclass
class Snapshot:
    """What the UI shows at one moment of a generation."""

    spans: list[dict] = field(default_factory=list)  # merged {source, text, tokens, call}
    counters: dict = field(default_factory=dict)
    result: RelayResult | None = None
    error: str = ""
    waiting: bool = False  # queued behind another user's generation
    stopped: bool = False  # the user pressed Stop (a result is there when it had started)

    @property
    def text(self) -> str:
        return "".join(s["text"] for s in self.spans)


class _Counter:
    """Live counts and a FLOPs estimate from the spans seen so far; exact figures replace them at the end."""

    def __init__(self, pair, n_prompt: int, teacher_only: bool = False):
        self.ps, self.pt = pair.student.n_params, pair.teacher.n_params
        self.n_prompt = n_prompt
        self.teacher_only = teacher_only  # one teacher turn from the prompt, no call, no student
        self.counts = {"student": 0, "teacher": 0, "command": 0}
        self.calls = 0
        self.teacher_seen = 0  # non-command response positions the teacher has run (KV cache: each once)
        self.last = None
        self.t0 = time.perf_counter()

    def add(self, source: str, tokens: int) -> None:
        if source == "teacher" and self.last != "teacher" and not self.teacher_only:
            self.calls += 1
        self.counts[source] += tokens
        if source == "teacher":
            self.teacher_seen = self.counts["student"] + self.counts["teacher"]
        self.last = source

    def live(self) -> dict:
        c = self.counts
        total = sum(c.values())
        # the teacher ran the prompt and the text up to its last token once (a KV cache), one position of
        # each catch-up sampling its first token: the rest of those positions is prefill
        turns = 1 if self.teacher_only else self.calls
        ran = self.n_prompt + self.teacher_seen - turns if self.teacher_seen else 0
        split = {
            "flops_student": 0.0 if self.teacher_only else 2.0 * self.ps * (self.n_prompt + total),
            "flops_teacher_decode": 2.0 * self.pt * c["teacher"],
            "flops_teacher_prefill": 2.0 * self.pt * max(ran - c["teacher"], 0),
        }
        return {
            "student_tokens": c["student"],
            "teacher_tokens": c["teacher"],
            "command_tokens": c["command"],
            "calls": self.calls,
            "call_ratio": c["teacher"] / total if total else 0.0,
            "flops": sum(split.values()),
            **split,
            "teacher_alone_flops": teacher_alone_flops(self.pt, self.n_prompt, c["student"] + c["teacher"]),
        }

    def final(self, r: RelayResult) -> dict:
        clean = r.student_tokens + r.teacher_tokens  # the teacher alone writes no commands
        wall = time.perf_counter() - self.t0
        return {
            "student_tokens": r.student_tokens,
            "teacher_tokens": r.teacher_tokens,
            "command_tokens": r.command_tokens,
            "calls": r.calls,
            "call_ratio": r.call_ratio,
            "flops": r.flops,
            **{k: getattr(r, k) for k in PARTS},
            "teacher_alone_flops": teacher_alone_flops(self.pt, len(r.prompt_ids), clean),
            "wall_s": r.wall_s,
            "final": True,
            "finish": r.finish_reason,
            "tok_s": len(r.token_ids) / wall if wall > 0 else 0.0,
        }


def _merge(spans: list[dict], source: str, text: str, tokens: int, call: int | None = None) -> None:
    last = spans[-1] if spans else None
    if last is not None and last["source"] == source and last.get("call") == call and source != "command":
        last["text"] += text
        last["tokens"] += tokens
    else:
        spans.append({"source": source, "text": text, "tokens": tokens, "call": call})


def prompt_tokens(pair, messages) -> int:
    return len(chat_ids(pair.student.tokenizer, messages, pair.chat_kwargs))


def _worker(pair, batch: RelayBatch, row, out: queue.Queue, stop: threading.Event, halt: threading.Event):
    """Run the relay under the pair's lock, pushing ("span", Span) / ("done", result) / ("error", msg).
    ``stop``: the reader is gone, end now; ``halt``: the user pressed Stop, end the row as "stopped" and
    report its result."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while not pair.lock.acquire(timeout=0.2):
        if stop.is_set():
            return
        if halt.is_set():
            out.put(("halted", None))
            return
        if time.monotonic() > deadline:
            out.put(("error", "The model is busy with other requests; please try again in a minute."))
            return
    events = batch.events()
    try:
        out.put(("started", None))
        for _, item in events:
            if stop.is_set():
                return
            if isinstance(item, RelayResult):
                out.put(("done", item))
                return
            out.put(("span", item))
            if halt.is_set() and row.phase is not Phase.DONE:
                batch.cancel(row, "stopped")
    except Exception as e:  # noqa: BLE001 - the user sees the message; the app keeps serving
        out.put(("error", f"Generation failed: {type(e).__name__}: {e}"))
    finally:
        events.close()  # ends the engine's run loop before another request may use the pair
        batch.close()
        pair.lock.release()


def generate(
    pair, messages: list[dict], policy: Policy, limits: Limits, sampling: Sampling, stopped=None
) -> Iterator[Snapshot]:
    """Stream one relay generation as snapshots (the first token at once, then at most one per
    STREAM_EVERY_S); the last one holds the result.

    Bad input raises ValueError before anything runs. Closing the iterator abandons the generation;
    ``stopped()`` turning true (a :class:`StopButton` press) ends it as "stopped", with a result. A press
    before the pair was free (or before this call, while the request was queued) ends it with no result and
    ``snap.stopped`` set.
    """
    validate_prompt(messages)
    if stopped is not None and stopped():  # pressed while the request waited in Gradio's queue: no batch,
        yield Snapshot(stopped=True)  # so no row holds engine sessions that only the worker would release
        return
    batch = RelayBatch(pair, policy, limits, sampling)
    row = batch.add(messages)  # now, so bad input fails here and not in the worker
    counter = _Counter(pair, prompt_tokens(pair, messages), policy.teacher_only)
    snap = Snapshot(counters=counter.live())
    out: queue.Queue = queue.Queue()
    stop, halt = threading.Event(), threading.Event()
    args = (pair, batch, row, out, stop, halt)
    threading.Thread(target=_worker, args=args, daemon=True, name="relay-worker").start()
    started = False
    try:
        while True:
            if stopped is not None and not halt.is_set() and stopped():
                halt.set()
            try:
                kind, payload = out.get(timeout=0.25)
            except queue.Empty:
                if not started and not snap.waiting:  # the pair is busy with another user's generation
                    snap.waiting = True
                    yield snap
                continue
            last = time.monotonic()
            while True:  # drain what is ready, so that a fast model is not slowed down by the UI
                if kind == "started":
                    started, snap.waiting = True, False
                    counter.t0 = time.perf_counter()
                elif kind == "span":
                    first = not snap.spans
                    _merge(snap.spans, payload.source, payload.text, len(payload.token_ids), payload.call)
                    counter.add(payload.source, len(payload.token_ids))
                    if first:  # the first token is shown at once (first-token latency), later ones batched
                        break
                elif kind == "done":
                    snap.result, snap.counters = payload, counter.final(payload)
                    snap.stopped = payload.finish_reason == "stopped"
                    yield snap
                    return
                elif kind == "halted":
                    snap.stopped = True
                    yield snap
                    return
                else:
                    snap.error = payload
                    yield snap
                    return
                wait = STREAM_EVERY_S - (time.monotonic() - last)
                if wait <= 0:
                    break
                try:
                    kind, payload = out.get(timeout=wait)
                except queue.Empty:
                    break
            snap.counters = counter.live()
            yield snap
    finally:
        stop.set()


# The wall time a user pays is compared with the teacher alone's on the same prompt and settings, measured by
# running it. On a pair whose teacher has at most this many parameters that run takes milliseconds on a CPU,
# so the Playground does it after every answer; on a larger pair it would cost as much as an answer of its
# own and hold the shared pair meanwhile, so there it runs only on request: the Compare tab's teacher column.
AUTO_TIME_PARAMS = 50_000_000


def time_teacher_alone(pair, messages: list[dict], limits: Limits, sampling: Sampling) -> dict:
    """The teacher alone on the same prompt and settings: the counters' keys for its wall time and tokens (or
    a note saying why there is none)."""
    last = Snapshot()
    for snap in generate(pair, messages, make_policy("teacher-only"), limits, sampling):
        last = snap
    return teacher_alone_keys(last.result, last.error)


def teacher_alone_keys(result: RelayResult | None, error: str = "") -> dict:
    """What the counters of another answer to the same prompt need from the teacher alone's ``result``."""
    if result is None:
        return {"teacher_alone_note": f"the teacher alone did not finish ({error or 'stopped'})"}
    return {"teacher_alone_wall_s": result.wall_s, "teacher_alone_tokens": len(result.token_ids)}
