"""vLLM backend of the relay engine (see :mod:`relay_demo.backends.base` for the contract).

Usage::

    from relay_demo.backends.base import Job, Sampling
    from relay_demo.backends.vllm_engine import VLLMEngine

    eng = VLLMEngine.load("Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16", max_model_len=4096)
    s = eng.session(eng.tokenizer("Hello")["input_ids"])
    for deltas in eng.run([Job(s, max_tokens=32, sampling=Sampling(temperature=0))]):
        ...  # each Delta's tokens are already appended to s.ids
    eng.close()

How it works: one in-process ``vllm.LLM`` per model, driven step by step through its ``LLMEngine``
(``add_request`` / ``step`` / ``abort_request``, delta outputs): the synchronous equivalent of AsyncLLM
streaming, so the relay loop can read every step and cancel jobs between steps.

Sessions kept alive (:mod:`relay_demo.backends.vllm_sessions`): a job's request is *resumable*; when its chunk
ends (or the job is cancelled) vLLM parks it with its KV, and the session's next run resumes it, sending only
the ids the session gained since (``Session.extend``) plus the chunk's last sampled token, which vLLM does not
keep: a handoff re-reads nothing old (teacher tokens per new token 1.000 as on the transformers engine, 1.40
with the prefix cache alone). A job gets a fresh request on the whole ``session.ids`` instead (the prefix
cache then makes the re-read the tokens past the last fully cached block: at most ``block_size - 1`` old ones,
31 with the CPU default of 32), its parked request freed, when: the session was truncated below what vLLM
holds (dropping only the last sampled token is fine); the engine is multiprocess; ``resume_sessions`` is
False; or parked sessions would take more than half of ``max_num_seqs`` or of the KV cache (least recently
used other sessions are evicted first: a parked request holds a slot and its KV). ``VLLMSession.release()``
frees the parked request; a session dropped without it is freed at the engine's next run. Traps: the engine
core does not check a resumed session's length (past ``max_model_len`` it dies), so a resumed chunk's
``max_tokens`` is capped at ``max_model_len - len(ids)``; seeded sampling on a resumed session continues its
first chunk's generator (the fresh path re-seeds every run); stop strings, which AsyncLLM refuses on resumable
requests, work in-process: the output processor matches them and the chunk is parked where it stopped.

Conventions:

* ``session.last_prefill`` = prompt tokens vLLM did not find in its prefix cache (``len(ids) -
  num_cached_tokens``), or on a resumed chunk the ids it sent (vLLM reports 0 cached tokens there, though it
  read only those). ``session.computed`` adds, per run, that prefill plus every generated token
  except the newest: the last sampled token has not been fed to the model yet (the next run feeds it
  as part of its prompt). Same convention as the transformers engine: positions a forward ran on.
* Finish: ``"eos"`` for any id in ``eos_ids`` (all of them are vLLM stop ids; the token is kept),
  ``"length"`` at ``max_tokens`` or when the sequence reaches ``max_model_len``.
* Seeds: ``Sampling.seed`` of ``None`` uses the engine's global RNG; otherwise the job is seeded
  with ``seed + job.row``, so rows of a batch differ and a rerun with the same seed repeats.
* ``top_probs``: probability of the most likely token under the raw model distribution (before
  temperature / top-p), from vLLM's ``logprobs_mode="raw_logprobs"``.
* Stop strings: passed to vLLM with ``include_stop_str_in_output=True``. vLLM (0.32) keeps exactly
  the tokens up to and including the one that completes the string and drops any later ones, so
  ``token_ids`` stay the real model output. Such a job ends with ``finish="cancelled"``: to the relay
  it is the same as cancelling right after that token, which it does itself when it sees a command.
* Hidden states: vLLM exposes none per token, so ``want_hidden`` raises ``NotImplementedError``
  (routers that need them run on the transformers backend).

Environment, set only when not already set and before vLLM is imported:
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (in-process engine; two engines share one process),
``VLLM_CACHE_ROOT`` (``$XDG_CACHE_HOME/relay_demo/vllm``), ``OMP_NUM_THREADS`` (core count: unset
makes the CPU backend ~30x slower) and, per engine, ``VLLM_CPU_KVCACHE_SPACE`` (``kv_cache_gib``,
default 1 GiB, so a student and a teacher fit next to each other on a small CPU box).
Note: vLLM's CPU worker replaces ``torch.set_num_threads`` by a no-op for the whole process.
Threads: the CPU attention kernel refuses to run on a thread whose OpenMP thread count differs from the one
its metadata was planned with (``cpu_attn_impl.hpp: thread_num ... (2 vs. 1)``), which is what a library
call from a fresh thread (an app handler, a server worker) can meet; ``run`` gives the calling thread the
thread count the engine was loaded with.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import weakref
from collections.abc import Iterator
from typing import Any

from .base import Delta, Job, ModelEngine, check_jobs, count_params, eos_ids
from .vllm_sessions import Keeper, Parked, VLLMSession, add_chunk, chunk_done, pause

DEFAULT_KV_CACHE_GIB = 1.0  # per engine, CPU only; two engines + training fit in 24 GiB
CPU_BLOCK_SIZE = 32  # the CPU attention backend needs a multiple of 32; smaller = cheaper re-reads
DEFAULT_MAX_MODEL_LEN = 4096
# In-process engines alive in this process: they share vLLM's global distributed state (see _shutdown_core).
_open_engines = 0


def _default_env() -> None:
    """Environment vLLM reads at import / engine start; the user's own settings win."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(cache_home, "relay_demo", "vllm"))
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _match_threads(n: int) -> None:
    """Give the calling thread ``n`` OpenMP threads (per thread in OpenMP; vLLM patched out
    ``torch.set_num_threads``, the binding underneath still works)."""
    import torch

    if torch.get_num_threads() != n:
        torch._C.set_num_threads(n)


class _Live:
    """Book-keeping of one job while its request runs."""

    def __init__(self, index: int, job: Job):
        self.index = index
        self.job = job
        self.prompt_len = len(job.session.ids)
        self.n_generated = 0
        self.prefilled = False
        self.internal_id: str | None = None  # a resumable request's id in the engine core
        self.prefill: int | None = None  # a resumed chunk's prefill: the ids it sent


class VLLMEngine(ModelEngine):
    """One model served by an in-process vLLM ``LLM``; see the module docstring."""

    backend = "vllm"
    supports_hidden = False
    resume_sessions = True  # keep sessions' requests parked between runs (False: a fresh request per run)

    def __init__(self, name: str, llm, tokenizer, n_params: int, eos_ids: set[int]):
        super().__init__(name, tokenizer, n_params, eos_ids)
        self.llm = llm
        self._threads = _torch_threads()  # the loading thread's OpenMP thread count, kept for every caller
        self._req_counter = itertools.count()
        self._running = False  # run() shares one vLLM engine: a second concurrent run would steal its outputs
        # vLLM's own finalizer tears down the process-wide distributed state, which would break the
        # other engine of the pair; ours does that only when the last engine goes.
        client = llm.llm_engine.engine_core
        if hasattr(client, "_finalizer") and client._finalizer.detach() is not None:
            global _open_engines
            _open_engines += 1
            self._finalizer = weakref.finalize(self, _shutdown_core, client)
            cfg = llm.llm_engine.vllm_config
            kv_tokens = (cfg.cache_config.num_gpu_blocks or 0) * cfg.cache_config.block_size
            half_seqs = cfg.scheduler_config.max_num_seqs // 2
            self._keeper: Keeper | None = Keeper(llm.llm_engine, half_seqs, kv_tokens // 2)
        else:  # multiprocess client: each engine core lives in its own process; its shutdown is local
            self._finalizer = weakref.finalize(self, client.shutdown)
            self._keeper = None  # resuming needs the in-process engine core (see vllm_sessions)

    @classmethod
    def load(
        cls,
        path_or_hub_id: str,
        *,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        seed: int = 0,
        kv_cache_gib: float | None = None,
        block_size: int | None = None,
        name: str | None = None,
        **engine_kwargs: Any,
    ) -> VLLMEngine:
        """Load a local folder or hub id. ``engine_kwargs`` go to ``vllm.LLM`` (e.g.
        ``gpu_memory_utilization=0.45`` to fit two engines on one GPU). ``kv_cache_gib`` sizes the CPU
        KV cache of this engine (default: ``$VLLM_CPU_KVCACHE_SPACE`` or 1 GiB). ``name`` labels the engine
        (default: the path). ``max_model_len`` defaults to 4096 or the model's own context length if that is
        shorter (the tiny-arith models have 512 positions)."""
        _default_env()
        from transformers import AutoConfig, AutoTokenizer
        from vllm import LLM
        from vllm.platforms import current_platform

        tokenizer = AutoTokenizer.from_pretrained(path_or_hub_id)
        if max_model_len is None:
            config = AutoConfig.from_pretrained(path_or_hub_id)
            own = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_MODEL_LEN
            max_model_len = min(DEFAULT_MAX_MODEL_LEN, int(own))
        on_cpu = current_platform.is_cpu()
        if block_size is None and on_cpu:
            block_size = CPU_BLOCK_SIZE
        if block_size is not None:
            engine_kwargs["block_size"] = block_size
        kv_gib = kv_cache_gib or float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or DEFAULT_KV_CACHE_GIB)
        if on_cpu:
            engine_kwargs.setdefault("distributed_executor_backend", "uni")
        saved_kv = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        # read once, while the engine starts; vLLM accepts whole GiB only
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(kv_gib)))
        try:
            llm = LLM(
                path_or_hub_id,
                tokenizer=path_or_hub_id,
                dtype=dtype,
                max_model_len=max_model_len,
                seed=seed,
                enable_prefix_caching=True,  # the whole point: handoffs re-read only new tokens
                enforce_eager=engine_kwargs.pop("enforce_eager", on_cpu),
                logprobs_mode="raw_logprobs",  # top probs of the model, not of the temperature-scaled one
                **engine_kwargs,
            )
        finally:
            if saved_kv is None:
                os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            else:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = saved_kv
        return cls(
            name=name or path_or_hub_id,
            llm=llm,
            tokenizer=tokenizer,
            n_params=count_params(path_or_hub_id),
            eos_ids=eos_ids(path_or_hub_id, tokenizer),
        )

    @property
    def max_model_len(self) -> int:
        """Prompt + generated tokens of one sequence; a job reaching it ends with ``"length"``."""
        return self.llm.llm_engine.model_config.max_model_len

    def session(self, prompt_ids: list[int]) -> VLLMSession:
        return VLLMSession(prompt_ids, self)

    # ------------------------------------------------------------------ run
    def _params(self, job: Job, max_tokens: int | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = job.sampling
        return SamplingParams(
            max_tokens=job.max_tokens if max_tokens is None else max_tokens,
            temperature=s.temperature,  # 0 -> greedy in vLLM
            top_p=s.top_p,
            seed=None if s.seed is None else s.seed + job.row,
            ignore_eos=not self.eos_ids,  # an engine with no end ids (benchmarks) never stops early
            stop_token_ids=sorted(self.eos_ids),  # every eos id stops, not just the tokenizer's
            stop=list(job.stop_strings) or None,
            include_stop_str_in_output=True,
            detokenize=bool(job.stop_strings),  # text is only needed to match stop strings
            logprobs=1 if job.want_top_prob else None,
            logit_bias=job.logit_bias or None,
            output_kind=RequestOutputKind.DELTA,
        )

    def run(self, jobs: list[Job]) -> Iterator[list[Delta]]:
        """Add every job as one request, step the engine, yield the deltas of each step."""
        if self.llm is None:
            raise RuntimeError(f"engine {self.name} is closed")
        if self._running:
            raise RuntimeError("VLLMEngine.run is not re-entrant: exhaust or close the previous run first")
        check_jobs(jobs, VLLMSession, self.max_model_len, "vLLM")
        _match_threads(self._threads)
        eng = self.llm.llm_engine
        live: dict[str, _Live] = {}
        first: list[Delta] = []
        keeper = self._keeper
        plan = {} if keeper is None else keeper.plan(jobs, self.max_model_len, self.resume_sessions)
        self._running = True
        try:
            for i, job in enumerate(jobs):
                job.session.last_prefill = 0  # until vLLM reports its prefix-cache hit
                if job.cancelled or job.max_tokens <= 0:  # nothing to run (vLLM rejects max_tokens=0)
                    first.append(
                        Delta(job=i, token_ids=[], finish="cancelled" if job.cancelled else "length")
                    )
                    continue
                req_id = f"relay-{next(self._req_counter)}"
                live[req_id] = _Live(i, job)
                self._add(eng, req_id, live[req_id], plan)
            if first:
                yield first
            while live:
                deltas = self._abort_cancelled(live)
                if live:
                    for out in eng.step():
                        state = live.get(out.request_id)
                        if state is not None:
                            deltas.append(self._delta(state, out))
                            if deltas[-1].finish is not None:
                                del live[out.request_id]
                                if state.internal_id is not None and out.outputs[0].finish_reason != "abort":
                                    self._park(state)
                if deltas:
                    yield deltas
        finally:
            # The caller stopped iterating (or an error): leave no request behind in the engine.
            if live:
                eng.abort_request(list(live))
            self._running = False
            if keeper is not None:  # free what sessions released or truncated during the run held, and
                # the parked requests that were never resumed (an error while adding the jobs)
                keeper.doomed += [p.internal_id for p in plan.values() if p is not None]
                keeper.free_doomed()

    def _add(self, eng, req_id: str, state: _Live, plan: dict[int, Parked | None]) -> None:
        """A plain request on the whole session, or a resumable one (a new one, or a parked one resumed)."""
        from vllm.inputs import TokensPrompt

        job, ids = state.job, state.job.session.ids
        if state.index not in plan:
            eng.add_request(req_id, TokensPrompt(prompt_token_ids=list(ids)), self._params(job))
            return
        parked = plan[state.index]
        # the engine core does not check a resumed session's length: stop at max_model_len
        params = self._params(job, min(job.max_tokens, self.max_model_len - len(ids)))
        state.internal_id = add_chunk(eng, req_id, ids, params, parked)
        del plan[state.index]  # added: what is left in the plan when the run ends was never resumed
        # num_cached_tokens reads 0 on resumed chunks: their prefill is the ids they sent
        state.prefill = None if parked is None else len(ids) - parked.held

    def _abort_cancelled(self, live: dict[str, _Live]) -> list[Delta]:
        """End cancelled jobs: a resumable chunk is parked as if it had ended (its session resumes next
        run), any other request is aborted."""
        gone = [r for r, st in live.items() if st.job.cancelled]
        eng = self.llm.llm_engine
        kept = [r for r in gone if self._pause(live[r])]
        if len(kept) < len(gone):
            eng.abort_request([r for r in gone if r not in kept])
        return [Delta(job=live.pop(r).index, token_ids=[], finish="cancelled") for r in gone]

    def _pause(self, state: _Live) -> bool:
        """Park a cancelled resumable chunk between steps; False: it must be aborted."""
        ok = state.internal_id is not None and state.n_generated > 0 and not state.job.session.released
        if ok := ok and pause(self.llm.llm_engine, state.internal_id):
            self._park(state)
        return ok

    def _park(self, state: _Live) -> None:
        """A resumable chunk ended: vLLM holds the session's ids but the last sampled one. A stop string
        ends it in the output processor only: the engine core's request is parked here (see ``pause``)."""
        pause(self.llm.llm_engine, state.internal_id)
        chunk_done(self.llm.llm_engine, state.internal_id)
        self._keeper.park(state.job.session, state.internal_id, state.prompt_len + state.n_generated - 1)

    def _delta(self, state: _Live, out) -> Delta:
        comp = out.outputs[0]
        session = state.job.session
        tokens = [int(t) for t in comp.token_ids]
        if not state.prefilled and (tokens or comp.finish_reason):
            state.prefilled = True
            cached = out.num_cached_tokens or 0
            session.last_prefill = state.prefill if state.prefill is not None else state.prompt_len - cached
            session.computed += session.last_prefill
        if tokens:
            # every new token but the newest has been fed; so has the previous step's newest
            session.computed += len(tokens) - (1 if state.n_generated == 0 else 0)
            state.n_generated += len(tokens)
        session.ids.extend(tokens)
        top = _top_probs(comp.logprobs, len(tokens)) if state.job.want_top_prob else None
        return Delta(job=state.index, token_ids=tokens, top_probs=top, finish=self._finish(comp))

    def _finish(self, comp) -> str | None:
        reason = comp.finish_reason
        if reason is None:
            return None
        if reason == "length":
            return "length"
        if reason == "stop" and isinstance(comp.stop_reason, str):
            return "cancelled"  # a stop string: as if the relay cancelled right after it
        if reason == "stop":
            return "eos"
        if reason == "abort":
            return "cancelled"
        raise RuntimeError(f"vLLM finished a request with an unexpected reason {reason!r}")

    def close(self) -> None:
        """Free the model and its KV cache now (also runs when the engine is garbage-collected)."""
        if self._keeper is not None:
            self._keeper.clear()  # the parked requests go with the engine
        self._finalizer()
        self.llm = None
        gc.collect()


def _shutdown_core(client) -> None:
    """Free one in-process engine core; tear down vLLM's process-wide state only with the last one."""
    global _open_engines
    _open_engines -= 1
    core = client.engine_core
    if _open_engines > 0:
        core.model_executor.shutdown()
        core.scheduler.shutdown()
        gc.unfreeze()  # EngineCore froze its startup objects (weights) out of the collector's reach
    else:
        core.shutdown()


def _top_probs(logprobs, n: int) -> list[float]:
    """exp of the rank-1 entry of each position (vLLM returns top-1 plus the sampled token)."""
    if logprobs is None or len(logprobs) != n:
        raise RuntimeError(
            f"vLLM returned {0 if logprobs is None else len(logprobs)} logprobs for {n} tokens"
        )
    probs = []
    for position in logprobs:
        best = min(position.values(), key=lambda lp: lp.rank)
        probs.append(math.exp(best.logprob))
    return probs
