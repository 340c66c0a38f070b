"""HTTP routes of the OpenAI-compatible server and its command line."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from dataclasses import replace
from types import SimpleNamespace

from ..backends.base import Sampling
from ..flags import add_remote_flags, pair_kwargs, policy_from_args
from ..knobs import TEMPERATURE, add_cli_flags
from ..protocol import strip_commands
from .requests import POLICY_KNOBS, STAT_KEYS, ApiError, Prompter, Settings, _Request, openai_finish
from .scheduler import Scheduler

log = logging.getLogger("relay_demo.serve")


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
        try:
            return await answer(request)
        except ApiError:
            scheduler.count("rejected")
            raise

    async def answer(request: Request):
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
            # the answer as a client reads it; the commands stay in the relay spans
            message = {"role": "assistant", "content": strip_commands(result.text)}
            finish = openai_finish(result)
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
        pending = None  # an event taken from the queue while merging spans, handled next
        while True:
            kind, *rest = pending or await req.events.get()
            pending = None
            if kind == "span":
                # the spans already queued behind this one, of the same source, go in the same chunk: a client
                # slower than the decoder gets fewer, larger events instead of falling further behind
                source, text = rest
                while not req.events.empty():
                    nxt = req.events.get_nowait()
                    if nxt[0] != "span" or nxt[1] != source:
                        pending = nxt
                        break
                    text += nxt[2]
                if source == "command":  # the content stays the answer, as a non-streamed reply's is
                    yield chunk({}, relay={"source": source, "text": text})
                else:
                    yield chunk({"content": text}, relay={"source": source})
            elif kind == "error":
                yield event(ApiError(500, rest[0], None, "decoding_failed").body())
                break
            else:
                result = rest[0]
                yield chunk({}, openai_finish(result), relay=_stats(result))
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
        scheduler.count("failed")
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
    from ..pairs import PAIRS
    from ..policies import POLICIES

    g = sub.add_parser("serve", help="an OpenAI-compatible relay server")
    g.add_argument("--pair", required=True, choices=PAIRS)
    g.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    g.add_argument("--policy", default="learned", choices=list(POLICIES), help="default policy of a request")
    add_cli_flags(g)  # the policy knobs, declared once (relay_demo/knobs.py); --router is the only router
    g.add_argument(
        "--max-new-tokens", type=int, default=None, help="largest max_tokens (default: the pair's)"
    )
    g.add_argument("--max-n", type=int, default=None)
    g.add_argument("--max-calls", type=int, default=None)
    g.add_argument("--max-wall-s", type=float, default=None, help="wall-time limit of one request")
    g.add_argument("--temperature", type=float, default=TEMPERATURE.default, help="when a request gives none")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-batch", type=int, default=32, help="rows decoded together, at most")
    g.add_argument("--max-queue", type=int, default=64, help="requests waiting, at most; past that 429")
    g.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="pieces of text a streamed chunk gathers, at most (one source each; 1: every piece at once)",
    )
    g.add_argument(
        "--stream-every-ms",
        type=float,
        default=20.0,
        help="a stream gets a text chunk at most this often; pieces decoded in between gather (its first "
        "text, a change of writer and the end go out at once; 0: every piece as it comes)",
    )
    add_remote_flags(g)


def serve(a) -> int:
    import uvicorn

    from ..pairs import load_pair

    policy_from_args(a)  # bad flags fail here, before any model loads
    remote = pair_kwargs(a)
    if a.max_batch < 1 or a.max_queue < 0 or a.stream_interval < 1:
        raise ValueError("--max-batch and --stream-interval must be >= 1 and --max-queue >= 0")
    if not 0 <= a.stream_every_ms <= 10_000:
        raise ValueError(f"--stream-every-ms must be between 0 and 10000, got {a.stream_every_ms}")
    Sampling(temperature=TEMPERATURE.check(a.temperature), top_p=a.top_p)  # a request's range, before loading
    pair = load_pair(a.pair, backend=a.backend, **remote)
    given = {"max_tokens": a.max_new_tokens, "max_n": a.max_n, "max_calls": a.max_calls}
    overrides = {k: v for k, v in given.items() if v is not None}
    defaults = SimpleNamespace(policy=a.policy, router=a.path, **{k: getattr(a, k) for k in POLICY_KNOBS})
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
        stream_interval=a.stream_interval,
        stream_every_s=a.stream_every_ms / 1000,
    )
    app = create_app(settings)
    print(f"relay server: pair {pair.name} on http://{a.host}:{a.port}/v1", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0
