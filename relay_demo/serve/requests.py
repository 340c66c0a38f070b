"""Request bodies of the OpenAI-compatible server: fields checked, turned into prompt ids, policy, limits and
sampling, with OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

from ..backends.base import Sampling, TemplateError, chat_ids
from ..flags import policy_from_args
from ..knobs import KNOBS, TEMPERATURE
from ..protocol import OPEN, single_token_id
from ..relay import Limits, Row, validate_prompt

log = logging.getLogger("relay_demo.serve")


POLICY_KNOBS = tuple(k for k in KNOBS if k != "path")  # a request may not name a router folder
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH = {"eos": "stop", "stalled": "stop"}  # relay finish -> OpenAI finish_reason; the rest are "length"


def openai_finish(result) -> str:
    """OpenAI's finish_reason: how the text ended ("stop" or "length"); a teacher that became unavailable
    shows in ``relay.finish_reason`` only."""
    return FINISH.get(result.end_reason or result.finish_reason, "length")


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
    (``flags.policy_from_args``). Without ``policy`` the server's policy and knobs apply, the body's knobs on
    top; a body naming a policy brings its own knobs only. A router's weights come only from --router."""
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
    temperature: float = TEMPERATURE.default
    top_p: float = 1.0
    max_wall_s: float | None = None
    api_key: str | None = None
    max_batch: int = 32
    max_queue: int = 64
    stream_interval: int = 1  # a streamed chunk carries up to this many pieces of one source (vLLM's option)
    stream_every_s: float = 0.02  # and a stream gets a chunk at most this often (its first text at once)


@dataclass
class _Request:
    id: str
    key: tuple
    policy: object
    limits: Limits  # per batch: max_n, max_calls (max_tokens is per row)
    sampling: Sampling
    max_tokens: int
    s_ids: list[int]
    t_ids: list[int]
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    row: Row | None = None  # its row in the running RelayBatch

    pending: list | None = None  # [source, text, pieces] not streamed yet (see span)
    sent_at: float = float("-inf")  # when its latest text chunk was handed to the event loop

    def span(self, source: str, text: str, s: Settings, now: float) -> None:
        """Gather ``text`` of ``source``. A chunk goes out once ``s.stream_interval`` pieces of one source
        have gathered and ``s.stream_every_s`` has passed since the stream's previous chunk (:meth:`due`), and
        at once when the source changes or the answer ends (:meth:`flush`). So a stream's first text leaves at
        once; a fast decoder's pieces then leave in one chunk per period (each chunk costs the server and the
        client a JSON event and a socket write), a slow one's one by one, as they come."""
        if self.pending is not None and self.pending[0] != source:
            self.flush(now)
        if self.pending is None:
            self.pending = [source, "", 0]
        self.pending[1] += text
        self.pending[2] += 1
        self.due(s, now)

    def due(self, s: Settings, now: float) -> None:
        """Send what has gathered if it is due (called for every piece, and between the scheduler's events so
        that a row waiting for the other model does not hold its text back)."""
        if self.pending is not None and self.pending[2] >= s.stream_interval:
            if now - self.sent_at >= s.stream_every_s:
                self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.pending is not None:
            self.emit(("span", self.pending[0], self.pending[1]))
            self.pending = None
            self.sent_at = time.monotonic() if now is None else now

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
        temperature = _float_field(body, "temperature", TEMPERATURE.lo, TEMPERATURE.hi)
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
        if getattr(policy, "call_bias", 0.0) and single_token_id(self.student.tokenizer, OPEN) is None:
            raise ApiError(
                400, f"call_bias needs {OPEN} to be one token of the student's vocabulary", "call_bias"
            )
        sampling = Sampling(
            temperature=s.temperature if temperature is None else temperature,
            top_p=s.top_p if top_p is None else top_p,
            seed=secrets.randbelow(1 << 31) if seed is None else seed,
        )
        with self.lock:
            try:
                s_ids = chat_ids(self.student.tokenizer, messages, s.pair.chat_kwargs)
                t_ids = chat_ids(self.teacher.tokenizer, messages, s.pair.chat_kwargs)
            except TemplateError as e:
                param = f"messages[{e.index}]"
                raise ApiError(
                    400,
                    f"{param}: the chat template of {s.pair.name} has no place for a {e.role} message (it "
                    "leaves it out or rewrites it); send this text in a user message instead",
                    param,
                    "unsupported_role",
                ) from None
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
            max_tokens=max_tokens,
            s_ids=s_ids,
            t_ids=t_ids,
            deadline=None if s.max_wall_s is None else time.monotonic() + s.max_wall_s,
            loop=loop,
        )
