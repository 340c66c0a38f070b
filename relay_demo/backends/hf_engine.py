"""The transformers engine: one model, one KV cache per sequence, kept across handoffs.

Each :class:`HFSession` holds the keys and values of every token it has already run, so a handoff costs
the other model only the tokens it has not seen (``computed`` counts them). A batch of sessions is run
together by left-padding their caches into one ``DynamicCache`` with a 2-D attention mask (holes are
masked, positions are explicit) and decoding all rows in lock-step. Afterwards each session keeps a view
of its row of the batch tensors, holes and all, so the next run over the same rows (the usual case: the
student's rows come back after a handoff) takes them as they are, or selects rows in one op per layer,
instead of copying them one by one; holes are compacted away once they widen the batch by a quarter. A
single session runs on its own cache with no copy at all: the app's path.
The sessions and the batch-cache operations live in ``hf_cache.py``.

    engine = HFEngine.load("results/models/tiny-arith/teacher")
    session = engine.session(prompt_ids)
    for deltas in engine.run([Job(session, max_tokens=32, sampling=Sampling(0))]):
        ...
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch

from .base import Delta, Job, ModelEngine
from .hf_cache import HFSession, join_groups, merge, rows_of, split, width_groups


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if eos is None:
            continue
        ids.update([eos] if isinstance(eos, int) else list(eos))
    return ids


def _sample(logits: torch.Tensor, job: Job, session: HFSession) -> int:
    """Sample one token from ``logits`` [vocab] (float32) under the job's settings."""
    s = job.sampling
    if job.logit_bias:
        logits = logits.clone()
        for tok, bias in job.logit_bias.items():
            logits[tok] += bias
    if s.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()):  # a temperature so small that logits / T overflow: greedy
        return int(torch.argmax(logits))
    if s.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < s.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    if session.generator is None and s.seed is not None:
        session.generator = torch.Generator().manual_seed(int(s.seed) + job.row)
    return int(torch.multinomial(probs, 1, generator=session.generator))


class HFEngine(ModelEngine):
    backend = "hf"
    supports_hidden = True

    def __init__(self, model, tokenizer, name: str = "model"):
        model.eval()
        n_params = sum(p.numel() for p in model.parameters())
        super().__init__(name, tokenizer, n_params, _eos_ids(model, tokenizer))
        self.model = model
        self.device = next(model.parameters()).device
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids or {0}))
        self.wall_s = 0.0  # time spent inside this engine, for the relay's per-model wall clock

    @classmethod
    def load(cls, path: str, *, dtype: str = "float32", name: str | None = None, device: str = "cpu", **kw):
        """Load a local folder or a hub id. No remote code is ever trusted."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        tok = AutoTokenizer.from_pretrained(path, **kw)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kw).to(device)
        return cls(model, tok, name=name or str(path))

    def session(self, prompt_ids: list[int]) -> HFSession:
        if not prompt_ids:
            raise ValueError("a session needs at least one prompt token")
        return HFSession(prompt_ids)

    # -- forward helpers ---------------------------------------------------------------------------

    def _forward(self, input_ids, cache, attention_mask, position_ids, want_hidden: bool):
        out = self.model(
            input_ids=input_ids,
            past_key_values=cache,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            output_hidden_states=want_hidden,
            logits_to_keep=1,
        )
        hidden = out.hidden_states[-1][:, -1].float() if want_hidden else None
        return out.logits[:, -1].float(), out.past_key_values, hidden

    def _prefill_single(self, session: HFSession, want_hidden: bool):
        """Feed what the session's cache has not seen yet; return the last logits (and hidden state)."""
        if session.n_cached >= len(session.ids):  # everything cached: re-run the last token for its logits
            session.forget(1)
        new = session.ids[session.n_cached :]
        session.own_cache(self.model.config)
        pos = torch.arange(session.n_cached, len(session.ids), device=self.device)[None]
        ids = torch.tensor([new], device=self.device)
        logits, session.cache, hidden = self._forward(ids, session.cache, None, pos, want_hidden)
        session.computed += len(new)
        session.last_prefill = len(new)
        session.n_cached = len(session.ids)
        return logits[0], None if hidden is None else hidden[0]

    # -- the run loop ------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, jobs: list[Job]) -> Iterator[list[Delta]]:
        if any(j.want_hidden for j in jobs) and not self.supports_hidden:
            raise NotImplementedError("hidden states are not available on this engine")
        start = time.perf_counter()
        try:
            if len(jobs) == 1:
                yield from self._run_single(jobs[0])
            else:
                yield from self._run_batch(jobs)
        finally:
            self.wall_s += time.perf_counter() - start

    def _emit(self, i: int, job: Job, logits, hidden, done: list[bool], argmax: int | None = None) -> Delta:
        """Sample the next token of job ``i`` from ``logits`` (``argmax``: a greedy job's token, already
        known), record it, decide whether the job ends."""
        session = job.session
        tok = argmax if argmax is not None else _sample(logits, job, session)
        session.ids.append(tok)
        top = None
        if job.want_top_prob:
            top = [float(1.0 / torch.exp(logits - logits.max()).sum())]
        hid = None if hidden is None else hidden.numpy(force=True)[None].astype(np.float32)
        generated = len(session.ids) - job._start_len
        finish = "eos" if tok in self.eos_ids else "length" if generated >= job.max_tokens else None
        done[i] = finish is not None
        return Delta(i, [tok], top, hid, finish)

    def _run_single(self, job: Job) -> Iterator[list[Delta]]:
        session: HFSession = job.session
        job._start_len = len(session.ids)
        done = [False]
        if job.max_tokens <= 0 or job.cancelled:
            yield [
                Delta(
                    0, [], [] if job.want_top_prob else None, None, "cancelled" if job.cancelled else "length"
                )
            ]
            return
        logits, hidden = self._prefill_single(session, job.want_hidden)
        while True:
            delta = self._emit(0, job, logits, hidden, done)
            yield [delta]
            if done[0]:
                return
            if job.cancelled:
                yield [Delta(0, [], [] if job.want_top_prob else None, None, "cancelled")]
                return
            pos = torch.tensor([[session.n_cached]], device=self.device)
            ids = torch.tensor([[session.ids[-1]]], device=self.device)
            logits, session.cache, hidden = self._forward(ids, session.cache, None, pos, job.want_hidden)
            logits, hidden = logits[0], None if hidden is None else hidden[0]
            session.computed += 1
            session.n_cached += 1

    def _prefill_batch(self, act: list[HFSession], cache, mask, want_hidden: bool):
        """Feed each row's unseen tokens, right-aligned in a block of its group's widest row. Rows whose
        unseen tokens differ much in number (a teacher catching up on student segments of random lengths)
        are fed in two groups, short and long, so that the short ones are not padded to the longest; their
        caches are then joined into one batch (the short group's left-padded with masked columns)."""
        new = [s.ids[s.n_cached :] for s in act]
        groups = width_groups([len(n) for n in new])
        outs = []
        for rows in groups:
            sub_cache = (
                cache if len(groups) == 1 or cache is None else rows_of(cache, rows, 0, self.model.config)
            )
            width = max(len(new[r]) for r in rows)
            block = []  # per row: ids, mask and positions, right-aligned
            for r in rows:
                s, n, gap = act[r], new[r], width - len(new[r])
                positions = list(range(s.n_cached, s.n_cached + len(n)))
                block += [[self.pad_id] * gap + n, [0] * gap + [1] * len(n), [0] * gap + positions]
                s.computed += len(n)
                s.last_prefill = len(n)
                s.n_cached += len(n)
            ids, nmask, pos = torch.tensor(block, device=self.device).view(len(rows), 3, width).unbind(1)
            sub_mask = torch.cat([mask[rows] if len(groups) > 1 else mask, nmask], dim=1)
            logits, sub_cache, hidden = self._forward(ids, sub_cache, sub_mask, pos, want_hidden)
            outs.append((logits, sub_cache, sub_mask, hidden))
        if len(groups) == 1:
            return outs[0]
        return join_groups(outs, groups, self.model.config, self.device)

    def _run_batch(self, jobs: list[Job]) -> Iterator[list[Delta]]:
        sessions: list[HFSession] = [j.session for j in jobs]
        if len({id(s) for s in sessions}) != len(sessions):
            raise ValueError("a session can be in only one job of a run")
        done = [False] * len(jobs)
        first: list[Delta] = []
        for i, j in enumerate(jobs):
            j._start_len = len(j.session.ids)
            if j.max_tokens <= 0 or j.cancelled:
                done[i] = True
                first.append(Delta(i, [], None, None, "cancelled" if j.cancelled else "length"))
        if first:
            yield first
        live = [i for i in range(len(jobs)) if not done[i]]
        if not live:
            return
        for i in live:  # keep the last token out of the cache so that prefill always yields logits
            s = sessions[i]
            if s.n_cached >= len(s.ids):
                s.forget(1)
        act = [sessions[i] for i in live]
        cache, mask = merge(act, self.model.config, self.device)
        want_hidden = any(jobs[i].want_hidden for i in live)
        greedy = [j.sampling.temperature == 0 and not j.logit_bias for j in jobs]  # token = the argmax
        any_greedy = any(greedy)
        logits, cache, mask, hidden = self._prefill_batch(act, cache, mask, want_hidden)
        running = [True] * len(act)
        while True:
            # greedy rows' tokens in one op (not computed when every row samples)
            deltas, argmax = [], logits.argmax(-1).tolist() if any_greedy else None
            for r, i in enumerate(live):
                if not running[r]:
                    continue
                hid = None if hidden is None else hidden[r]
                deltas.append(self._emit(i, jobs[i], logits[r], hid, done, argmax[r] if greedy[i] else None))
                if done[i]:
                    running[r] = False
            yield deltas
            # the consumer may have cancelled jobs while it looked at these tokens
            stopped = []
            for r, i in enumerate(live):
                if running[r] and jobs[i].cancelled:
                    running[r] = False
                    done[i] = True
                    stopped.append(Delta(i, [], None, None, "cancelled"))
            if stopped:
                yield stopped
            if not any(running):
                break
            if running.count(False) * 4 >= len(act):  # a quarter of the batch is padding: drop those rows
                keep = [r for r in range(len(act)) if running[r]]
                gone = [r for r in range(len(act)) if not running[r]]
                split([act[r] for r in gone], cache, mask, rows=gone)  # views of this step's tensors
                first = int(mask[keep].any(0).long().argmax())  # columns that are holes in every kept row
                cache, mask = rows_of(cache, keep, first, self.model.config), mask[keep, first:]
                act, live, running = [act[r] for r in keep], [live[r] for r in keep], [True] * len(keep)
            # One decode step for every row; finished rows feed a masked pad so the batch stays rectangular
            # (until they are a quarter of it, above: then they leave with their keys and values).
            rows = list(zip(act, running, strict=True))
            feed = [(s.ids[-1], 1, s.n_cached) if on else (self.pad_id, 0, 0) for s, on in rows]
            step_ids, step_mask, step_pos = torch.tensor(feed, device=self.device).T[:, :, None]
            for s, on in rows:
                s.computed += on
                s.n_cached += on
            mask = torch.cat([mask, step_mask], dim=1)
            logits, cache, hidden = self._forward(step_ids, cache, mask, step_pos, want_hidden)
        split(act, cache, mask)
        # The last sampled token of each row was never fed: the cache holds ids[:n_cached] exactly.
