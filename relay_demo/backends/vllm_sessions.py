"""Sessions kept alive in vLLM between runs: the parked requests of :mod:`relay_demo.backends.vllm_engine`.

vLLM (0.32) can resume a request made with ``resumable=True``: when one of its chunks finishes, the engine
core parks it with its KV blocks (status ``WAITING_FOR_STREAMING_REQ``) instead of freeing it, and a request
added later under the same internal id appends its prompt tokens and prefills only those. A parked request
holds everything up to, not including, the last token its chunk sampled (a stop token too): the next chunk
sends that token again, then the ids the session gained. When a session resumes: the engine's docstring.

The in-process ``LLMEngine`` never builds resumable requests itself, so :func:`add_chunk` does what its
``add_request`` does, with ``resumable=True``, keeping the output processor apart from the engine core:

* each chunk gets a fresh output-processor state with its own copy of the ids (in-process, the processor and
  the scheduler would otherwise share one list and both extend it on a resume), dropped when the chunk ends
  (:func:`chunk_done`), so ``has_unfinished_requests()`` (and ``LLM.generate``, which steps until nothing is
  left) never waits for a parked session;
* a parked request is freed by the engine core's ``abort_requests`` with its internal id;
* a cancelled chunk is parked from outside between two steps (:func:`pause`), the way the scheduler parks a
  chunk that ends, instead of being aborted (which would free the session's KV); so is a chunk that a stop
  string ended (AsyncLLM refuses stop strings on resumable requests: the output processor matches them, but
  the engine core knows nothing of them and would go on).

:class:`Keeper` (one per engine) keeps the parked sessions least recently used first and evicts from the
front: each holds a scheduler slot (parked requests count toward ``max_num_seqs``: were all slots parked, a
new request would wait forever) and its KV blocks (which the prefix cache cannot evict), so at most half of
either is left to parked sessions; a run's jobs past that get plain requests.
"""

from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from .base import Session


class VLLMSession(Session):
    """A sequence for vLLM: the ids, and the request vLLM keeps parked for it between runs, if any."""

    def __init__(self, prompt_ids: list[int], engine=None):
        super().__init__(prompt_ids)
        self.released = False
        self.parked: Parked | None = None
        self._engine = weakref.ref(engine) if engine is not None else None

    def truncate(self, n: int) -> None:
        super().truncate(n)
        if self.parked is not None and n < self.parked.held:  # vLLM holds tokens that are gone now
            self._forget()

    def release(self) -> None:
        """Free the parked request's KV (prefix-cache blocks are shared and evicted by vLLM)."""
        self.released = True
        self._forget()

    def _forget(self) -> None:
        """Its parked request is of no more use: freed now, or after the engine's run in progress."""
        engine = self._engine() if self._engine is not None else None
        keeper = getattr(engine, "_keeper", None)
        if keeper is not None:
            keeper.drop(self)
            if not engine._running and engine.llm is not None:
                keeper.free_doomed()


@dataclass
class Parked:
    """A session's request parked in vLLM: ``held`` = how many of the session's ids vLLM holds."""

    internal_id: str  # the engine core's id (vLLM adds a random suffix to the one given)
    held: int
    keeper: Keeper  # of the engine that holds it


def add_chunk(llm_engine, req_id: str, ids: list[int], params, parked: Parked | None) -> str:
    """Add one chunk of a resumable request for a session of ``ids``: a new request, or the continuation of
    ``parked`` (sending only ``ids[parked.held:]``). Outputs carry ``req_id``. Returns the internal id."""
    from vllm.inputs import TokensPrompt

    internal = parked.internal_id if parked is not None else req_id
    tokens = ids if parked is None else ids[parked.held :]
    request = llm_engine.input_processor.process_inputs(
        internal,
        TokensPrompt(prompt_token_ids=list(tokens)),
        params,
        supported_tasks=llm_engine.get_supported_tasks(),
        resumable=True,
    )
    if parked is None:
        llm_engine.input_processor.assign_request_id(request)  # internal id = req_id + random suffix
    else:
        request.external_req_id = req_id
    view = copy.copy(request)  # the output processor's own list (see the module docstring)
    view.prompt_token_ids = list(ids)  # the whole context: its detokenizer's and logprobs' view
    llm_engine.output_processor.add_request(view, None, None, 0)
    llm_engine.engine_core.add_request(request)
    return request.request_id


def chunk_done(llm_engine, internal_id: str) -> None:
    """The chunk ended and its request is parked in the engine core: forget it in the output processor."""
    op = llm_engine.output_processor
    state = op.request_states.get(internal_id)
    if state is not None:
        op._finish_request(state)


def _scheduler(llm_engine):
    return llm_engine.engine_core.engine_core.scheduler


def pause(llm_engine, internal_id: str) -> bool:
    """Park a running resumable request between two steps, as the scheduler does when a chunk stops. False
    (nothing done) where that is not safe: not running, no token sampled yet, or scheduling ahead."""
    from vllm.v1.request import RequestStatus

    sched = _scheduler(llm_engine)
    request = sched.requests.get(internal_id)
    if (
        request is None
        or request.status != RequestStatus.RUNNING
        or request.num_output_tokens == 0  # still in (chunked) prefill
        or request.num_output_placeholders
        or request.spec_token_ids
        or sched.scheduler_config.async_scheduling
        or request not in sched.running
    ):
        return False
    sched.running.remove(request)
    sched._handle_stopped_request(request)  # -> WAITING_FOR_STREAMING_REQ, its KV kept
    chunk_done(llm_engine, internal_id)
    return True


def held_by_core(llm_engine, internal_id: str) -> int | None:
    """How many ids the engine core holds for a parked request (None: it is not parked)."""
    from vllm.v1.request import RequestStatus

    request = _scheduler(llm_engine).requests.get(internal_id)
    if request is None or request.status != RequestStatus.WAITING_FOR_STREAMING_REQ:
        return None
    return request.num_computed_tokens


class Keeper:
    """The parked sessions of one in-process engine, least recently used first, within ``max_seqs``
    requests and ``max_tokens`` held ids. Sessions are weakly referenced: one dropped without ``release()``
    is freed at the next :meth:`free_doomed`."""

    def __init__(self, llm_engine, max_seqs: int, max_tokens: int):
        self.llm_engine = llm_engine
        self.max_seqs, self.max_tokens = max(1, max_seqs), max(1, max_tokens)
        self._by_id: OrderedDict[str, tuple[weakref.ref, int]] = OrderedDict()  # id -> (session, held)
        self.doomed: list[str] = []  # internal ids to free at the next safe point (between runs)

    def __len__(self) -> int:
        return len(self._by_id)

    def _held(self) -> int:
        return sum(held for _, held in self._by_id.values())

    def park(self, session, internal_id: str, expected: int) -> None:
        """A chunk of ``session`` ended: keep its request, if the engine core holds what it should (the
        session's ids up to ``expected``), else free it."""
        held = held_by_core(self.llm_engine, internal_id)
        if held is None or held != expected or held > len(session.ids) or session.released:
            self.doomed.append(internal_id)
            return
        self.drop(session)  # one made by another engine, if any
        session.parked = Parked(internal_id, held, self)
        self._by_id[internal_id] = (weakref.ref(session), held)

    def unpark(self, session) -> Parked | None:
        """Take the session's parked request out of the table (the caller resumes or dooms it); None if it
        has none in this engine."""
        parked = session.parked
        if parked is None or parked.keeper is not self:
            return None
        session.parked = None
        self._by_id.pop(parked.internal_id, None)
        return parked

    def drop(self, session) -> None:
        """The session no longer needs its parked request: free it at the next safe point of its engine."""
        parked = session.parked
        if parked is not None:
            parked.keeper.unpark(session)
            parked.keeper.doomed.append(parked.internal_id)

    def _evict(self, internal_id: str) -> None:
        ref, _ = self._by_id.pop(internal_id)
        session = ref()
        if session is not None and session.parked is not None and session.parked.internal_id == internal_id:
            session.parked = None
        self.doomed.append(internal_id)

    def free_doomed(self) -> None:
        """Free the doomed requests and those of sessions garbage-collected without ``release()``."""
        for internal_id in [i for i, (ref, _) in self._by_id.items() if ref() is None]:
            self._evict(internal_id)
        if self.doomed:
            self.llm_engine.engine_core.abort_requests(self.doomed)
            self.doomed = []

    def plan(self, jobs, max_model_len: int, enabled: bool = True) -> dict[int, Parked | None]:
        """Which jobs run as resumable requests (all that may, if ``enabled``): job index -> the parked
        request to resume (None: a new one). Every other job gets a plain request and its parked one is
        freed; the least recently used other sessions are evicted to make room."""
        plan: dict[int, Parked | None] = {}
        n_tokens = 0
        for i, job in enumerate(jobs):
            s = job.session
            if job.cancelled or job.max_tokens <= 0:  # nothing runs: the parked request stays valid
                continue
            parked = self.unpark(s)
            tokens = min(len(s.ids) + job.max_tokens, max_model_len)
            if enabled and len(plan) < self.max_seqs and n_tokens + tokens <= self.max_tokens:
                if parked is not None and parked.held >= len(s.ids):  # a chunk reads at least one id
                    self.doomed.append(parked.internal_id)
                    parked = None
                plan[i], n_tokens = parked, n_tokens + tokens
            elif parked is not None:
                self.doomed.append(parked.internal_id)
        while self._by_id and (
            len(self._by_id) + len(plan) > self.max_seqs or self._held() + n_tokens > self.max_tokens
        ):
            self._evict(next(iter(self._by_id)))
        self.free_doomed()
        return plan

    def clear(self) -> None:
        """The engine is gone: forget everything (its requests died with it)."""
        for ref, _ in self._by_id.values():
            session = ref()
            if session is not None:
                session.parked = None
        self._by_id.clear()
        self.doomed = []
