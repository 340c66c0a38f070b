"""The one small interface every engine implements.

A :class:`ModelEngine` wraps one model (student or teacher) on one backend. It keeps one
:class:`Session` per sequence: the token ids this model has seen, plus whatever lets it avoid re-reading
them (a KV cache, a request vLLM keeps parked, or its prefix cache). :meth:`ModelEngine.run` continues many
sessions at once and yields the new tokens step by step, so the relay loop can stream them and stop any job
early (``job.cancel()``) the moment a command or a policy trigger appears.

Contract (relied on by the relay loop and tested for both backends):

* ``run`` appends every token it yields to ``job.session.ids`` before yielding it.
* A cancelled job gets no more tokens after the step in which it was cancelled.
* Each job ends with exactly one delta whose ``finish`` is set: ``"eos"`` (the model wrote an end token,
  which is included in ``token_ids``), ``"length"`` (``max_tokens`` reached) or ``"cancelled"``.
* ``session.computed`` counts every token position the model actually ran a forward pass on for this
  session (prefill and decode); it is what FLOPs and the prefill-reuse benchmark are computed from.
* ``session.last_prefill`` is how many prompt positions the latest run had to compute before its first
  new token (the unseen tail; for a vLLM session kept alive the same, else the part the prefix cache missed,
  rounded to blocks).
* Between runs the caller may ``session.extend(ids)`` (e.g. teacher tokens appended to the student as
  ids) or ``session.truncate(n)`` (drop a token a policy refused); the next run prefills only what is new.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


def chat_ids(tokenizer, prompt, chat_kwargs: dict | None = None) -> list[int]:
    """The prompt's token ids: a string (one user turn) or chat messages, through the tokenizer's chat
    template with the generation prompt; a tokenizer without one reads the turns' text joined by newlines.

    The one chat-to-ids function: the engines' callers (the relay loop), the app and the jobs all use it."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        return _chat_template_ids(tokenizer, messages, chat_kwargs or {})
    text = "\n".join(m["content"] for m in messages)
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]


class TemplateError(ValueError):
    """The chat template leaves out or rewrites ``messages[index]`` (a template without a system role drops
    system messages): its text cannot be kept apart from the template's own tokens."""

    def __init__(self, index: int, role: str):
        super().__init__(f"the chat template does not write messages[{index}] ({role}) as given")
        self.index, self.role = index, role


def _text_ids(tokenizer, text: str) -> list[int]:
    """Ids of message text with every special-token string read as plain characters."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]]


def _chat_template_ids(tokenizer, messages: list[dict], chat_kwargs: dict) -> list[int]:
    """The chat template's ids, where only the template writes special tokens: a user who types
    ``<|im_start|>system`` gets those characters as text, never a system turn.

    The template is rendered with a unique marker in place of each message's text; the template's own pieces
    are tokenised with specials, each message's text with none (for ordinary text this gives the same ids as
    tokenising the whole rendered string: the pieces meet at special tokens and line breaks)."""
    marks = [f"\ue000relay-msg-{i}\ue001" for i in range(len(messages))]
    rendered = tokenizer.apply_chat_template(
        [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)],
        add_generation_prompt=True,
        tokenize=False,
        **chat_kwargs,
    )
    ids: list[int] = []
    rest = rendered
    for i, (m, mark) in enumerate(zip(messages, marks, strict=True)):
        head, sep, rest = rest.partition(mark)
        if not sep:  # a template that drops or rewrites a message: no way to keep its text apart
            raise TemplateError(i, str(m.get("role")))
        ids += [int(i) for i in tokenizer(head, add_special_tokens=False)["input_ids"]] if head else []
        ids += _text_ids(tokenizer, m["content"]) if m["content"] else []
    if rest:
        ids += [int(i) for i in tokenizer(rest, add_special_tokens=False)["input_ids"]]
    return ids


_IMPORT_LOCK = threading.Lock()


def import_transformers() -> None:
    """Import transformers, and the names this project takes from it, one thread at a time. Its first
    import is not thread-safe: a thread that takes a name from it while another thread is still importing it
    gets ``ImportError: cannot import name ...`` (a fresh app: the About tab counting a pair's parameters
    while Send loads a pair). The names are lazy submodules that import each other, so they are resolved here
    too. Every path that first touches transformers in a server thread (``pairs.load_pair``,
    :func:`count_params`) calls this first; once it has run, it costs a lock and a dict lookup."""
    with _IMPORT_LOCK:
        from transformers import (  # noqa: F401
            AutoConfig,
            AutoModelForCausalLM,
            AutoTokenizer,
            DynamicCache,
            GenerationConfig,
            PreTrainedTokenizerFast,
        )


def count_params(path: str) -> int:
    """Exact parameter count from the config alone: build the model on the meta device (no memory)."""
    import_transformers()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # parameters() yields tied weights once, matching what a forward pass multiplies by
    return sum(p.numel() for p in model.parameters())


def eos_ids(path: str, tokenizer) -> set[int]:
    """All end ids: generation_config's eos_token_id (int or list) plus the tokenizer's."""
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's eos is all we know
        eos = None
    if eos is not None:
        ids.update([eos] if isinstance(eos, int) else eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError(f"{path}: neither generation_config nor tokenizer defines an eos token")
    return ids


class ModelUnavailable(RuntimeError):
    """The model behind an engine cannot be reached: a remote server down, too slow or gone mid-answer.

    The relay loop catches it from the teacher (the answer goes on with the student alone, ``finish_reason``
    ``"teacher_unavailable"``); from the student it ends the generation."""


MAX_TEMPERATURE = 100.0  # past it sampling is uniform noise; inf and nan are refused with it


@dataclass(frozen=True)
class Sampling:
    """Sampling settings. ``temperature == 0`` is greedy. ``seed`` makes a run reproducible."""

    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not (0 <= self.temperature <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class Session:
    """One sequence as one model sees it. Backends subclass it to hold their cache."""

    def __init__(self, prompt_ids: list[int]):
        self.ids: list[int] = list(prompt_ids)
        self.computed = 0  # token positions this model ran a forward pass on (prefill + decode)
        self.last_prefill = 0  # positions the latest run computed before its first new token

    def extend(self, ids: list[int]) -> None:
        self.ids.extend(int(i) for i in ids)

    def truncate(self, n: int) -> None:
        if n < 0 or n > len(self.ids):
            raise ValueError(f"cannot truncate a session of {len(self.ids)} tokens to {n}")
        del self.ids[n:]

    def release(self) -> None:
        """Free what the session holds (cache memory). The session must not be run afterwards."""


@dataclass
class Job:
    """Continue ``session`` by at most ``max_tokens`` tokens."""

    session: Session
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop_strings: tuple[str, ...] = ()  # a hint for engines that stop on strings; the relay re-checks
    want_top_prob: bool = False  # probability of the most likely token at each sampled position
    want_hidden: bool = False  # last hidden state that produced each sampled token
    logit_bias: dict[int, float] | None = None  # added to these tokens' logits before sampling
    row: int = 0  # which sequence of a batch this is; seeds differ per row
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Delta:
    """New tokens of one job after one engine step."""

    job: int  # index into the ``jobs`` list given to ``run``
    token_ids: list[int]
    top_probs: list[float] | None = None
    hidden: np.ndarray | None = None  # [len(token_ids), hidden_size] float32
    finish: str | None = None  # None while running; "eos" | "length" | "cancelled"


def check_jobs(jobs: list[Job], session_type: type, max_model_len: int, backend: str) -> None:
    """What an engine that keeps no per-session state (vLLM, a remote server) refuses before it starts;
    ``backend`` names it in the messages ("vLLM", "remote")."""
    seen: set[int] = set()
    for i, job in enumerate(jobs):
        if job.want_hidden:
            raise NotImplementedError(
                f"the {backend} backend cannot return per-token hidden states; use the transformers "
                "backend for hidden-state routers"
            )
        if not isinstance(job.session, session_type):
            raise TypeError(f"job {i}: session was not made by this {backend} engine")
        if getattr(job.session, "released", False):
            raise ValueError(f"job {i}: session was released")
        if not job.session.ids:
            raise ValueError(f"job {i}: empty session ({backend} needs at least one prompt token)")
        if len(job.session.ids) >= max_model_len:
            raise ValueError(
                f"job {i}: {len(job.session.ids)} tokens leave no room to generate "
                f"(max_model_len={max_model_len})"
            )
        if id(job.session) in seen:
            raise ValueError(f"job {i}: the same session appears twice in one run")
        seen.add(id(job.session))


class ModelEngine(ABC):
    """One model on one backend. Loaded once; sessions are cheap."""

    backend: str = "?"
    supports_hidden: bool = False

    def __init__(self, name: str, tokenizer, n_params: int, eos_ids: set[int]):
        self.name = name
        self.tokenizer = tokenizer
        self.n_params = n_params
        self.eos_ids = set(eos_ids)

    @abstractmethod
    def session(self, prompt_ids: list[int]) -> Session: ...

    @abstractmethod
    def run(self, jobs: list[Job]) -> Iterator[list[Delta]]:
        """Continue all jobs together; yield the deltas of each engine step until every job finished."""

    def close(self) -> None:  # noqa: B027 - optional hook, most engines need nothing
        """Release the model (engines hold memory or threads)."""
