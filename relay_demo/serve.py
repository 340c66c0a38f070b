"""An OpenAI-compatible server over the relay loop: ``python -m relay_demo serve --pair NAME``.

    GET  /v1/models              the pair (and its student and teacher)
    POST /v1/chat/completions    stream or not; every text chunk says who wrote it: "relay": {"source"}
    GET  /relay/status           rows decoding, requests waiting, totals (for tests and operators)

Batching. The relay loop of this version runs a fixed batch in rounds (student round, teacher round, ...).
It has no public way to add or drop a row, but its ``drive`` computes each round's rows afresh from the list
of sequences it was given. One scheduler thread owns the engines (under ``pair.lock``) and runs one batch at a
time: requests waiting when a batch starts join it, and a request that arrives while it decodes is appended
to that list, so it joins at the next round instead of waiting for the batch to end. A student round can
last a whole answer (student-only, or a student that never calls), so a newcomer ends it early: its writers
are paused as the loop's own preemption pauses them (job cancelled, tokens kept, one cache block re-read),
which changes no greedy output; with sampling a row's draws then depend on its neighbours' arrivals (as
with any batching server, a seed is best effort under concurrency). Teacher rounds are never cut.

Requests of one batch share what the loop keeps per batch (the policy with its knobs, ``max_calls``,
``max_n``, greedy or not); each row keeps its own sampling (temperature, top_p, seed), token budget and
deadline. A request whose
settings differ waits until the running batch drains (first come, first served: nothing more joins a batch
while an older request of another kind waits). ``_ServeRelay`` is the only code that leans on the loop's
internals; the continuous-batching rewrite of relay.py replaces it with the loop's own add/cancel.

A row whose job is over for good (an end token, its budget) gets its last chunk at once, not when the
round's slowest row ends; its sessions are released when that round ends (the engine writes every row's
cache back then).

Cancellation. A client that disconnects (or a row past its wall-time limit) has its current engine job
cancelled at the next token the scheduler sees: the engine gives it no more tokens after that step (in a hf
batch its slot rides along as a masked pad until the round ends). When the round ends the row is finished
and its sessions released: its own KV cache is dropped at once; a row of the round's shared batch tensors is
freed when the next round rebuilds them. A cancelled row that is not in the running round (waiting for the
other model) is finished and released before the next round; a request still in the queue is just removed.

Bounds: at most ``--max-batch`` rows decode together and ``--max-queue`` more wait; past that, 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

from .backends.base import Sampling
from .protocol import OPEN
from .relay import STUDENT, Limits, _chat_ids, _Relay, _Seq, _single_token_id, validate_prompt

log = logging.getLogger("relay_demo.serve")

POLICY_KNOBS = ("n", "tau", "p", "every", "threshold", "call_bias")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH = {"eos": "stop", "stalled": "stop"}  # relay finish -> OpenAI finish_reason; the rest are "length"
STAT_KEYS = ("student_tokens", "teacher_tokens", "command_tokens", "calls", "call_ratio", "finish_reason")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def type(self) -> str:
        return {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- request body -> policy, limits, sampling ---------------------------------------------------------


def policy_from_body(body: dict, defaults: SimpleNamespace):
    """The request's policy: its ``policy`` and knobs, mapped to ``make_policy`` as the CLI maps its flags
    (``cli.policy_from_args``). Without ``policy`` the server's policy and knobs apply, the body's knobs on
    top; a body naming a policy brings its own knobs only. A router's weights come only from --router."""
    from .cli import policy_from_args

    ns = SimpleNamespace(**{k: None for k in POLICY_KNOBS}, policy=defaults.policy, router=defaults.router)
    if "policy" in body:
        ns.policy = body["policy"]
        if not isinstance(ns.policy, str):
            raise ApiError(400, "policy must be a string", "policy", "invalid_value")
    else:
        for k in POLICY_KNOBS:
            setattr(ns, k, getattr(defaults, k))
    for k in POLICY_KNOBS:
        if body.get(k) is not None:
            setattr(ns, k, body[k])
    try:
        return policy_from_args(ns)
    except (ValueError, TypeError) as e:
        raise ApiError(400, str(e).replace("--", "").replace("call-bias", "call_bias"), "policy") from None


def _int_field(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"{name} must be an integer, got {v!r}", name, "invalid_type")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ApiError(400, f"{name} must be {rng}, got {v}", name, "invalid_value")
    return v


def _float_field(body: dict, name: str, lo: float, hi: float, open_low: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(400, f"{name} must be a number, got {v!r}", name, "invalid_type")
    if not (lo < v <= hi if open_low else lo <= v <= hi):
        raise ApiError(400, f"{name} must be in {'(' if open_low else '['}{lo}, {hi}], got {v}", name)
    return float(v)


def messages_from_body(body: dict, special: list[str]) -> list[dict]:
    """The ``messages`` as the chat template gets them. Text that spells one of the tokenizer's special tokens
    (``<|im_start|>`` ...) is refused: user text never opens a chat role of its own."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list", "messages", "invalid_value")
    out = []
    for i, m in enumerate(msgs):
        param = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"{param}: role must be one of {', '.join(ROLES)}", param, "invalid_value")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, f"{param}: only text content parts are supported", param, "invalid_value")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{param}: content must be text", param, "invalid_value")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(
                400, f"{param}: content is not valid Unicode text", param, "invalid_text"
            ) from None
        if "\x00" in content:
            raise ApiError(400, f"{param}: content contains a NUL character", param, "invalid_text")
        for tok in special:
            if tok in content:
                raise ApiError(
                    400, f"{param}: content may not contain the special token {tok!r}", param, "invalid_text"
                )
        out.append({"role": ROLES[m["role"]], "content": content})
    try:
        validate_prompt(out)
    except ValueError as e:
        raise ApiError(400, str(e), "messages", "invalid_value") from None
    return out


@dataclass
class Settings:
    """The server's side: the pair, its defaults (from the command line) and bounds."""

    pair: object
    policy: SimpleNamespace  # policy, router and knobs, as the CLI parsed them
    limits: Limits
    temperature: float = 0.7
    top_p: float = 1.0
    max_wall_s: float | None = None
    api_key: str | None = None
    max_batch: int = 32
    max_queue: int = 64


@dataclass
class _Request:
    id: str
    key: tuple
    policy: object
    limits: Limits  # per batch: max_n, max_calls (max_tokens is per row)
    sampling: Sampling
    policy_seed: int
    max_tokens: int
    s_ids: list[int]
    t_ids: list[int]
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    seq: _Seq | None = None

    def emit(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


class Prompter:
    """Turns a request body into a :class:`_Request`. Tokenizes with private copies of the tokenizers: the
    scheduler thread decodes with the engines' own, and a Rust tokenizer must not be used from two threads."""

    def __init__(self, settings: Settings):
        self.s = settings
        pair = settings.pair
        s_tok = copy.deepcopy(pair.student.tokenizer)
        t_tok = (
            s_tok
            if pair.teacher.tokenizer is pair.student.tokenizer
            else copy.deepcopy(pair.teacher.tokenizer)
        )
        self.student, self.teacher = SimpleNamespace(tokenizer=s_tok), SimpleNamespace(tokenizer=t_tok)
        self.special = sorted(
            {t for tok in (s_tok, t_tok) for t in tok.all_special_tokens if len(t) > 1}, key=len, reverse=True
        )
        self.lock = threading.Lock()

    def build(self, body: dict, loop) -> _Request:
        s = self.s
        messages = messages_from_body(body, self.special)
        policy = policy_from_body(body, s.policy)
        pair_max = s.limits.max_tokens
        max_tokens = _int_field(body, "max_completion_tokens", 1, pair_max)
        mt = _int_field(body, "max_tokens", 1, pair_max)
        max_tokens = max_tokens or mt or pair_max
        max_calls = _int_field(body, "max_calls", 0, s.limits.max_calls)
        max_n = _int_field(body, "max_n", 1, s.limits.max_n)
        temperature = _float_field(body, "temperature", 0.0, 2.0)
        top_p = _float_field(body, "top_p", 0.0, 1.0, open_low=True)
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ApiError(400, f"seed must be a non-negative integer, got {seed!r}", "seed", "invalid_value")
        stream_options = body.get("stream_options")
        if stream_options is not None and not isinstance(stream_options, dict):
            raise ApiError(400, "stream_options must be an object", "stream_options")
        limits = replace(
            s.limits,
            max_calls=s.limits.max_calls if max_calls is None else max_calls,
            max_n=max_n or s.limits.max_n,
            max_wall_s=None,  # per row, enforced by the scheduler
        )
        if policy.needs_hidden and not s.pair.student.supports_hidden:
            raise ApiError(400, f"policy {policy.name!r} needs the hf backend", "policy")
        if getattr(policy, "call_bias", 0.0) and _single_token_id(self.student.tokenizer, OPEN) is None:
            raise ApiError(
                400, f"call_bias needs {OPEN} to be one token of the student's vocabulary", "call_bias"
            )
        sampling = Sampling(
            temperature=s.temperature if temperature is None else temperature,
            top_p=s.top_p if top_p is None else top_p,
            seed=secrets.randbelow(1 << 31) if seed is None else seed,
        )
        with self.lock:
            s_ids = _chat_ids(self.student, messages, s.pair.chat_kwargs)
            t_ids = _chat_ids(self.teacher, messages, s.pair.chat_kwargs)
        longest = max(len(s_ids), len(t_ids))
        if longest > s.limits.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt is {longest} tokens; this pair accepts at most {s.limits.max_prompt_tokens}",
                "messages",
                "context_length_exceeded",
            )
        key = (policy.describe(), limits.max_calls, limits.max_n, sampling.temperature == 0)
        return _Request(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            key=key,
            policy=policy,
            limits=limits,
            sampling=sampling,
            policy_seed=sampling.seed * 7919,  # what relay_stream gives its (only) row 0
            max_tokens=max_tokens,
            s_ids=s_ids,
            t_ids=t_ids,
            deadline=None if s.max_wall_s is None else time.monotonic() + s.max_wall_s,
            loop=loop,
        )


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
        if not failed and not req.cancelled:
            req.emit(("end", result))


# -- HTTP -----------------------------------------------------------------------------------------


def _stats(result) -> dict:
    out = {k: getattr(result, k) for k in STAT_KEYS}
    out["wall_s"] = round(result.wall_s, 4)
    return out


def _usage(req: _Request, result) -> dict:
    n = len(result.token_ids)
    return {"prompt_tokens": len(req.s_ids), "completion_tokens": n, "total_tokens": len(req.s_ids) + n}


def create_app(settings: Settings):
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    prompter = Prompter(settings)
    scheduler = Scheduler(settings)
    pair = settings.pair

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or invalid API key", None, "invalid_api_key")

    async def run_until_disconnect(receive, work) -> bool:
        """Run ``work`` until it ends or the client disconnects; True when it ended."""
        ended = False
        async with anyio.create_task_group() as tg:

            async def run():
                nonlocal ended
                await work()
                ended = True
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
            tg.cancel_scope.cancel()
        return ended

    class Stream(StreamingResponse):
        """Server-sent events that stop, and cancel the request, as soon as the client disconnects."""

        def __init__(self, req: _Request, gen):
            super().__init__(gen, media_type="text/event-stream", headers={"cache-control": "no-cache"})
            self.req = req

        async def __call__(self, scope, receive, send):
            try:
                await run_until_disconnect(receive, lambda: self.stream_response(send))
            finally:
                scheduler.cancel(self.req)

    class Deferred(Response):
        """A JSON answer computed while watching for a disconnect (which cancels the request)."""

        def __init__(self, req: _Request, compute):
            self.req, self.compute, self.response = req, compute, None

        async def __call__(self, scope, receive, send):
            async def work():
                self.response = await self.compute()

            try:
                ended = await run_until_disconnect(receive, work)
            finally:
                scheduler.cancel(self.req)
            if ended:
                await self.response(scope, receive, send)

    async def models(request: Request):
        check_key(request)
        now = int(time.time())
        data = [
            {"id": pair.name, "object": "model", "created": now, "owned_by": "relay_demo",
             "relay": {"student": pair.student.name, "teacher": pair.teacher.name, "backend": pair.backend}},
        ]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def status(request: Request):
        check_key(request)
        return JSONResponse(scheduler.status())

    async def chat(request: Request):
        check_key(request)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required", "model", "invalid_value")
        if model != pair.name:
            msg = f"the model {model!r} does not exist; this server has {pair.name!r}"
            raise ApiError(404, msg, "model", "model_not_found")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be a boolean", "stream", "invalid_type")
        req = prompter.build(body, asyncio.get_running_loop())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        scheduler.submit(req)
        created = int(time.time())
        base = {"id": req.id, "created": created, "model": pair.name}
        if stream:
            return Stream(req, sse(req, base, include_usage))

        async def compute():
            spans, result = [], None
            while result is None:
                kind, *rest = await req.events.get()
                if kind == "error":
                    return error(ApiError(500, rest[0], None, "decoding_failed"))
                if kind == "end":
                    result = rest[0]
            spans = [{"source": sp.source, "text": sp.text} for sp in result.spans if sp.text]
            message = {"role": "assistant", "content": result.text}
            finish = FINISH.get(result.finish_reason, "length")
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            relay = {**_stats(result), "spans": spans}
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [choice],
                    "relay": relay,
                    "usage": _usage(req, result),
                }
            )

        return Deferred(req, compute)

    async def sse(req: _Request, base: dict, include_usage: bool):
        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        def chunk(delta: dict, finish=None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return event({**base, "object": "chat.completion.chunk", "choices": [choice], **extra})

        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, *rest = await req.events.get()
            if kind == "span":
                source, text = rest
                yield chunk({"content": text}, relay={"source": source})
            elif kind == "error":
                yield event(ApiError(500, rest[0], None, "decoding_failed").body())
                break
            else:
                result = rest[0]
                yield chunk({}, FINISH.get(result.finish_reason, "length"), relay=_stats(result))
                if include_usage:
                    usage = _usage(req, result)
                    yield event({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                break
        yield "data: [DONE]\n\n"

    async def on_api_error(request, exc: ApiError):
        return error(exc)

    async def on_http_error(request, exc: HTTPException):
        msg = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error(ApiError(exc.status_code, f"{msg}: {request.method} {request.url.path}"))

    async def on_any_error(request, exc: Exception):
        log.exception("request failed")
        return error(ApiError(500, f"internal error ({type(exc).__name__})", None, "internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    app = Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/relay/status", status, methods=["GET"]),
        ],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_any_error},
        lifespan=lifespan,
    )
    app.state.scheduler = scheduler
    return app


# -- command line -----------------------------------------------------------------------------------


def add_parser(sub) -> None:
    from .pairs import PAIRS
    from .policies import POLICIES

    g = sub.add_parser("serve", help="an OpenAI-compatible relay server")
    g.add_argument("--pair", required=True, choices=PAIRS)
    g.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    g.add_argument("--policy", default="learned", choices=list(POLICIES), help="default policy of a request")
    g.add_argument("--n", type=int, default=None)
    g.add_argument("--tau", type=float, default=None)
    g.add_argument("--p", type=float, default=None)
    g.add_argument("--every", type=int, default=None)
    g.add_argument(
        "--router", default=None, help="folder of a trained router (the only router a request gets)"
    )
    g.add_argument("--threshold", type=float, default=None)
    g.add_argument("--call-bias", type=float, default=None)
    g.add_argument(
        "--max-new-tokens", type=int, default=None, help="largest max_tokens (default: the pair's)"
    )
    g.add_argument("--max-n", type=int, default=None)
    g.add_argument("--max-calls", type=int, default=None)
    g.add_argument("--max-wall-s", type=float, default=None, help="wall-time limit of one request")
    g.add_argument("--temperature", type=float, default=0.7, help="when a request gives none")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-batch", type=int, default=32, help="rows decoded together, at most")
    g.add_argument("--max-queue", type=int, default=64, help="requests waiting, at most; past that 429")


def serve(a) -> int:
    import uvicorn

    from .cli import policy_from_args
    from .pairs import load_pair

    policy_from_args(a)  # bad flags fail here, before any model loads
    if a.max_batch < 1 or a.max_queue < 0:
        raise ValueError("--max-batch must be >= 1 and --max-queue >= 0")
    Sampling(temperature=a.temperature, top_p=a.top_p)
    pair = load_pair(a.pair, backend=a.backend)
    given = {"max_tokens": a.max_new_tokens, "max_n": a.max_n, "max_calls": a.max_calls}
    overrides = {k: v for k, v in given.items() if v is not None}
    defaults = SimpleNamespace(policy=a.policy, router=a.router, **{k: getattr(a, k) for k in POLICY_KNOBS})
    settings = Settings(
        pair=pair,
        policy=defaults,
        limits=replace(pair.limits, **overrides),
        temperature=a.temperature,
        top_p=a.top_p,
        max_wall_s=a.max_wall_s or pair.limits.max_wall_s,
        api_key=a.api_key,
        max_batch=a.max_batch,
        max_queue=a.max_queue,
    )
    app = create_app(settings)
    print(f"relay server: pair {pair.name} on http://{a.host}:{a.port}/v1", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0
