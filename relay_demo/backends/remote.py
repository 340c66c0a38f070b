"""Remote backend: a model on a running vLLM OpenAI server, driven by token ids over HTTP.

Usage::

    from relay_demo.backends.base import Job, Sampling
    from relay_demo.backends.remote import RemoteEngine

    # the server:  python -m vllm.entrypoints.openai.api_server --model PATH --enable-prefix-caching \\
    #                  --enable-prompt-tokens-details
    eng = RemoteEngine.load("http://gpu-box:8000", tokenizer="path/to/the/model/folder")
    s = eng.session(eng.tokenizer("Hello")["input_ids"])
    for deltas in eng.run([Job(s, max_tokens=32, sampling=Sampling(temperature=0))]):
        ...  # each Delta's tokens are already appended to s.ids
    eng.close()

Or through a pair: ``load_pair("tiny-random", teacher_url=URL)`` (``student_url=`` too: ``relay_demo.pairs``).

How it works: each job is one streamed ``POST /v1/completions`` whose ``prompt`` is ``session.ids`` (a list of
token ids: nothing is re-tokenized) with ``return_token_ids`` (vLLM >= 0.10), so every chunk carries the new
token ids. A reader thread per job parses its stream; ``run`` yields what has arrived, step by step. The
server keeps no session: its automatic prefix cache makes re-sending the whole context cost only the tokens
past the last cached block, as with the in-process vLLM engine's fresh requests (``vllm_engine.py``, which
also keeps sessions alive between runs), whose conventions this engine follows (finish reasons, ``computed`` /
``last_prefill``, seeds ``seed + job.row``, raw top probs).

* Cancelling a job closes its stream; vLLM aborts a request whose client went away.
* ``session.last_prefill`` = prompt tokens minus the server's ``usage.prompt_tokens_details.cached_tokens``
  (the server needs ``--enable-prompt-tokens-details``; without it every prompt token counts, a bound). The
  server reports that count only at the end of a stream; a job cancelled before then counts the tokens this
  session had not sent before (the partial block the server re-reads is unknown then).
* ``top_probs`` come from ``logprobs: 1`` (the server's default ``--logprobs-mode raw_logprobs``: the model's
  distribution before temperature, top-p and logit bias, as the in-process engine asks for).
* A stop string that is one token (``</call>`` of a trained student) is sent as a stop token id.
* The server unreachable, too slow (``read_timeout_s`` without a byte), failing (5xx) or going away mid-answer
  raises :class:`~relay_demo.backends.base.ModelUnavailable`; the relay loop then goes on with the student
  alone. A request the server refuses (4xx) raises ``RuntimeError`` with the server's message.
* Tokenizer: the student and teacher share one; ``tokenizer`` is a local folder (the model's own, which also
  gives the parameter count for FLOPs and the end ids) or a hub id. At load the server's ``/tokenize`` is
  asked to encode a probe string and must agree with it.
"""

from __future__ import annotations

import logging
import math
import queue
from collections.abc import Iterator
from pathlib import Path

from .base import Delta, Job, ModelEngine, ModelUnavailable, Session, check_jobs, eos_ids
from .remote_http import Stream, check_tokenizer, get_json, open_client

log = logging.getLogger("relay_demo.remote")

DEFAULT_READ_TIMEOUT_S = 60.0  # longest silence of a streaming answer; a GPU server answers in milliseconds


class RemoteSession(Session):
    """A sequence for a remote server: only the ids; the KV lives in the server's prefix cache."""

    def __init__(self, prompt_ids: list[int]):
        super().__init__(prompt_ids)
        self.sent = 0  # tokens of ``ids`` the server has already been sent (an earlier prompt or output)
        self.released = False

    def truncate(self, n: int) -> None:
        super().truncate(n)
        self.sent = min(self.sent, n)

    def release(self) -> None:
        self.released = True  # nothing to free here: the server's cache blocks are shared and evicted by LRU


class _Live:
    """Book-keeping of one job while its stream runs."""

    def __init__(self, index: int, job: Job, reader: Stream):
        self.index, self.job, self.reader = index, job, reader
        self.prompt_len = len(job.session.ids)
        self.n_generated = 0
        self.finish: str | None = None
        self.tokens: list[int] = []  # held back once the finish is known, until the usage report arrives
        self.top: list[float] = []
        self.usage: dict | None = None


class RemoteEngine(ModelEngine):
    """One model behind a vLLM OpenAI-compatible server; see the module docstring."""

    backend = "remote"
    supports_hidden = False

    def __init__(self, name, url, model, tokenizer, n_params, eos_ids, max_model_len, client, read_timeout_s):
        super().__init__(name, tokenizer, n_params, eos_ids)
        self.url, self.model, self.client = url, model, client
        self.max_model_len = max_model_len
        self.read_timeout_s = read_timeout_s
        self.cached_reported = True  # until a server answers without prompt_tokens_details
        self._single = {}  # stop string -> its single token id (or None), computed once

    @classmethod
    def load(
        cls,
        url: str,
        tokenizer: str,
        *,
        model: str | None = None,
        config: str | None = None,
        name: str | None = None,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_connections: int = 256,
    ) -> RemoteEngine:
        """Connect to ``url`` (``http://host:port``, ``/v1`` optional) and check it serves a model whose
        tokenizer is ``tokenizer``'s. ``model``: the served name (default: the server's only model).
        ``config``: the model's folder or hub id, for its parameter count and end ids (default: tokenizer;
        where it cannot be read, FLOPs leave the model out and the tokenizer's end ids are used).
        ``api_key``: the server's ``--api-key`` (default: ``$RELAY_REMOTE_API_KEY``)."""
        from transformers import AutoTokenizer

        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"a model URL looks like http://host:port, got {url!r}")
        url = url.rstrip("/").removesuffix("/v1")
        client = open_client(api_key, connect_timeout_s, read_timeout_s, max_connections)
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
            served = get_json(client, url + "/v1/models", url).get("data") or []
            ids = [m.get("id") for m in served]
            if model is None:
                if len(ids) != 1:
                    raise ValueError(f"{url} serves {ids}; name one with model=")
                model = ids[0]
            elif model not in ids:
                raise ValueError(f"{url} does not serve {model!r}; it serves {ids}")
            entry = served[ids.index(model)]
            check_tokenizer(client, url, model, tok, tokenizer)
            config = config or tokenizer
            n_params = _params(config)
            if not n_params:
                log.warning("%s has no config.json: FLOPs will not count the model at %s", config, url)
            try:
                eos = eos_ids(config, tok)
            except (OSError, ValueError):  # a model folder that is not on this machine: the tokenizer's end
                eos = eos_ids(tokenizer, tok)
        except BaseException:
            client.close()
            raise
        return cls(
            name=name or f"{model}@{url}",
            url=url,
            model=model,
            tokenizer=tok,
            n_params=n_params,
            eos_ids=eos,
            max_model_len=int(entry.get("max_model_len") or 1 << 30),
            client=client,
            read_timeout_s=read_timeout_s,
        )

    def session(self, prompt_ids: list[int]) -> RemoteSession:
        return RemoteSession(prompt_ids)

    def _single_token(self, text: str) -> int | None:
        if text not in self._single:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            self._single[text] = ids[0] if len(ids) == 1 else None
        return self._single[text]

    def _body(self, job: Job) -> dict:
        s = job.sampling
        stop_ids = sorted(self.eos_ids)
        stop_strings = []
        for text in job.stop_strings:
            tid = self._single_token(text)
            stop_ids.append(tid) if tid is not None else stop_strings.append(text)
        body = {
            "model": self.model,
            "prompt": list(job.session.ids),
            # the server refuses prompt + max_tokens past its context; the in-process engine says "length"
            "max_tokens": min(job.max_tokens, self.max_model_len - len(job.session.ids)),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            "ignore_eos": not self.eos_ids,  # an engine with no end ids (benchmarks) never stops early
            "stop_token_ids": stop_ids,
            "stop": stop_strings,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,  # stop strings must match special tokens such as <call> too
        }
        if s.seed is not None:
            body["seed"] = s.seed + job.row
        if job.want_top_prob:
            body["logprobs"] = 1
            body["return_tokens_as_token_ids"] = True  # byte tokens would collide as "" keys
        if job.logit_bias:
            body["logit_bias"] = {str(k): float(v) for k, v in job.logit_bias.items()}
        return body

    def run(self, jobs: list[Job]) -> Iterator[list[Delta]]:
        """One streamed request per job; yield the deltas that have arrived, until every job finished."""
        if self.client is None:
            raise RuntimeError(f"engine {self.name} is closed")
        check_jobs(jobs, RemoteSession, self.max_model_len, "remote")
        inbox: queue.Queue = queue.Queue()
        live: dict[int, _Live] = {}
        first: list[Delta] = []
        try:
            for i, job in enumerate(jobs):
                job.session.last_prefill = 0  # until the server reports its prefix-cache hit
                if job.cancelled or job.max_tokens <= 0:
                    first.append(
                        Delta(job=i, token_ids=[], finish="cancelled" if job.cancelled else "length")
                    )
                    continue
                reader = Stream(self.client, self.url, self._body(job), i, inbox)
                live[i] = _Live(i, job, reader)
                reader.start()
            if first:
                yield first
            failed = None
            while live:
                gone = [i for i, st in live.items() if st.job.cancelled]
                deltas = [self._cancel(live.pop(i)) for i in gone]
                if live:
                    # block for the first message, then take the rest; the bound also covers a server that
                    # keeps its streams open (keep-alives) without writing a token
                    try:
                        messages = [inbox.get(timeout=self.read_timeout_s)]
                    except queue.Empty:
                        quiet = f"the model server at {self.url} wrote nothing for {self.read_timeout_s:g} s"
                        raise ModelUnavailable(quiet) from None
                    while not inbox.empty():
                        messages.append(inbox.get_nowait())
                    for index, kind, payload in messages:
                        st = live.get(index)
                        if st is None or st.job.cancelled:
                            continue  # cancelled: handled at the top of the next step
                        try:
                            if kind == "error":
                                raise payload
                            delta = self._on_message(st, kind, payload)
                        except ModelUnavailable as e:  # after the deltas of this step: those are kept
                            failed = e
                            break
                        if delta is not None:
                            deltas.append(delta)
                            if delta.finish is not None:
                                del live[index]
                if deltas:
                    yield _merge(deltas)  # what arrived before a failure is in the sessions: report it
                if failed is not None:
                    raise failed
        finally:
            for st in live.values():  # the caller stopped iterating or an error: close every stream
                st.reader.stop.set()

    def _on_message(self, st: _Live, kind: str, payload) -> Delta | None:
        if kind == "usage":
            st.usage = payload
            return None
        if kind == "tokens":
            tokens = [int(t) for t in payload.get("token_ids") or ()]
            if payload.get("token_ids") is None and payload.get("text"):
                raise RuntimeError(f"the server at {self.url} returns no token ids (vLLM >= 0.10 does)")
            top = _top_probs(payload.get("logprobs"), len(tokens)) if st.job.want_top_prob else []
            if payload.get("finish_reason") is not None:
                st.finish = self._finish(payload)
            if st.finish is None:
                return self._emit(st, tokens, top)
            st.tokens += tokens  # the usage report follows at once: the last delta waits for it
            st.top += top
            return None
        # "end": the stream is over; account for the prefill from the server's cached count
        cached = ((st.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None and self.cached_reported:
            self.cached_reported = False
            log.warning(
                "%s reports no cached tokens (start it with --enable-prompt-tokens-details): every prompt "
                "token counts as computed",
                self.url,
            )
        delta = self._emit(st, st.tokens, st.top, st.finish)
        self._prefilled(st, st.prompt_len - int(cached or 0))
        return delta

    def _prefilled(self, st: _Live, n: int) -> None:
        session = st.job.session
        session.last_prefill = max(0, n)
        session.computed += session.last_prefill
        session.sent = len(session.ids)

    def _emit(self, st: _Live, tokens: list[int], top: list[float], finish: str | None = None) -> Delta:
        session = st.job.session
        if tokens:
            # every new token but the newest has been fed; so has the previous step's newest
            session.computed += len(tokens) - (1 if st.n_generated == 0 else 0)
            st.n_generated += len(tokens)
            session.ids.extend(tokens)
        probs = top if st.job.want_top_prob else None
        return Delta(job=st.index, token_ids=tokens, top_probs=probs, finish=finish)

    def _cancel(self, st: _Live) -> Delta:
        st.reader.stop.set()  # tokens held back for the usage report are dropped with the rest
        self._prefilled(st, st.prompt_len - min(st.job.session.sent, st.prompt_len))
        return Delta(job=st.index, token_ids=[], finish="cancelled")

    def _finish(self, choice: dict) -> str:
        reason, stop = choice.get("finish_reason"), choice.get("stop_reason")
        if reason == "length":
            return "length"
        if reason == "stop":
            # an end id (or the model's own eos: stop_reason None) is "eos"; a stop string or a stop token
            # that is not an end id (a </call>) is a stop the relay would have made itself
            return "eos" if stop is None or stop in self.eos_ids else "cancelled"
        if reason == "abort":
            raise ModelUnavailable(f"the model server at {self.url} aborted the request")
        raise RuntimeError(f"the server at {self.url} ended a request with an unexpected reason {reason!r}")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _merge(deltas: list[Delta]) -> list[Delta]:
    """One delta per job and step, as the relay expects (it truncates a cancelled job's tail by delta)."""
    out: dict[int, Delta] = {}
    for d in deltas:
        m = out.get(d.job)
        if m is None:
            out[d.job] = d
            continue
        m.token_ids = m.token_ids + d.token_ids
        if m.top_probs is not None:
            m.top_probs = m.top_probs + (d.top_probs or [])
        m.finish = d.finish
    return list(out.values())


def _params(folder: str) -> int:
    """The model's parameter count from its config (no weights loaded), or 0 where the folder has none."""
    from .base import count_params

    if Path(folder).exists() and not (Path(folder) / "config.json").is_file():
        return 0  # a tokenizer-only folder
    try:
        return count_params(folder)
    except (OSError, ValueError):
        return 0


def _top_probs(logprobs: dict | None, n: int) -> list[float]:
    """exp of the best entry of each position (``logprobs: 1`` gives the top-1 plus the sampled token)."""
    tops = (logprobs or {}).get("top_logprobs") or []
    if len(tops) != n:
        raise RuntimeError(f"the server returned {len(tops)} logprobs for {n} tokens")
    return [math.exp(max(position.values())) for position in tops]
