"""Both backends run the same relay: greedy parity on tiny models, and commands over BPE tokens on vLLM."""

from __future__ import annotations

import pytest
import torch

from relay_demo.backends.base import Sampling, chat_ids
from relay_demo.backends.hf_engine import HFEngine
from relay_demo.pairs import Pair, build_tiny_random
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, RelayBatch, RelayResult, relay_batch

from .models import BPE_SPANS, BPE_TEXT, bpe_chain_models, qwen_tokenizer, save

pytest.importorskip("vllm")
from relay_demo.backends import vllm_engine  # noqa: E402

GREEDY = Sampling(temperature=0)
PROMPTS = ["What is 2 + 2?", "Write one short sentence about the sea, please.", "x", "Count: 1, 2, 3,"]


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


@pytest.fixture(scope="module")
def folders(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tiny = build_tiny_random(root)  # byte-level vocabulary: fast on both backends
    cs, ct = (
        save(m, tok, root / f"chain-{role}")
        for m, role in zip(bpe_chain_models(tok), ("student", "teacher"), strict=True)
    )
    return {"random": (str(tiny / "student"), str(tiny / "teacher")), "chain": (cs, ct)}


def _load(paths, backend, **limits):
    if backend == "hf":
        s, t = (HFEngine.load(p, dtype="float32") for p in paths)
    else:
        s, t = (
            vllm_engine.VLLMEngine.load(p, dtype="float32", max_model_len=1024, kv_cache_gib=1) for p in paths
        )
    return Pair("parity", s, t, Limits(**limits), backend=backend)


@pytest.fixture(scope="module")
def pairs(folders):
    out = {b: _load(folders["random"], b, max_tokens=48, max_n=8, max_calls=6) for b in ("hf", "vllm")}
    yield out
    out["vllm"].close()


def _top3(engine, ids) -> list[int]:
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.topk(logits, 3).indices.tolist()


@pytest.mark.parametrize(
    "policy",
    [
        make_policy("interval", every=7, n=3),
        make_policy("teacher-only"),
        make_policy("random-token", p=0.15, n=2),
    ],
    ids=lambda p: p.name,
)
def test_greedy_relay_parity(pairs, policy):
    """Same relay token ids on both backends; where they diverge, each token is in the other's top 3."""
    hf = relay_batch(pairs["hf"], PROMPTS, policy, sampling=GREEDY)
    vl = relay_batch(pairs["vllm"], PROMPTS, policy, sampling=GREEDY)
    exact = 0
    for p, a, b in zip(PROMPTS, hf, vl, strict=True):
        if a.token_ids == b.token_ids:
            exact += 1
            assert (a.source_mask, a.calls) == (b.source_mask, b.calls)
            continue
        i = next(k for k, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False)) if x != y)
        assert a.source_mask[: i + 1] == b.source_mask[: i + 1]  # the same model wrote the diverging token
        engine = pairs["hf"].student if a.source_mask[i] else pairs["hf"].teacher
        prompt = chat_ids(engine.tokenizer, p, {})
        top = _top3(engine, prompt + a.token_ids[:i])  # interval/teacher-only: no commands, same view
        assert a.token_ids[i] in top and b.token_ids[i] in top, f"prompt {p!r}: diverged at {i}"
    assert exact >= len(PROMPTS) - 1, "more than one prompt diverged"


def test_teacher_reads_only_new_tokens(pairs):
    """Both read exactly the new tokens at each handoff: transformers from its KV cache, vLLM from the session
    it keeps alive between runs (with the prefix cache alone it would re-read up to a partial block, 31)."""
    policy = make_policy("interval", every=40, n=4)
    limits = Limits(max_tokens=300, max_n=4, max_calls=100)
    for backend, slack in (("hf", 0), ("vllm", 0)):
        (r,) = relay_batch(pairs[backend], ["Tell me a story."], policy, limits=limits, sampling=GREEDY)
        assert r.calls >= 5
        for pre, new in zip(r.teacher_prefill[1:], r.teacher_new[1:], strict=True):
            assert new <= pre <= new + slack, (backend, pre, new)


def test_command_over_bpe_tokens_on_vllm(folders, tok):
    pair = _load(folders["chain"], "vllm", max_tokens=64, max_n=16)
    try:
        (r,) = relay_batch(pair, ["hi"], make_policy("learned"), sampling=GREEDY)
    finally:
        pair.close()
    assert r.text == BPE_TEXT
    assert [(x.source, x.text) for x in r.spans] == BPE_SPANS
    assert (r.calls, r.command_tokens, r.teacher_tokens, r.finish_reason) == (1, 8, 3, "eos")
    # the student's session outlives its stop string </call> and the handoff: both models compute each
    # position once, exactly as the transformers engine does
    (h,) = relay_batch(
        _load(folders["chain"], "hf", max_tokens=64, max_n=16),
        ["hi"],
        make_policy("learned"),
        sampling=GREEDY,
    )
    assert h.text == BPE_TEXT
    assert (r.student_computed, r.teacher_computed) == (h.student_computed, h.teacher_computed)


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_early_round_end_changes_no_greedy_output(pairs, backend):
    """Pausing the writers once enough rows wait for the teacher: same tokens, and it really paused."""
    prompts = PROMPTS * 2
    policy = make_policy("random-token", p=0.08, n=2)
    runs = {}
    for preempt in (False, True):
        batch = RelayBatch(pairs[backend], policy, pairs[backend].limits, GREEDY, preempt=preempt)
        rows = [batch.add(p) for p in prompts]
        done = {row: item for row, item in batch.events() if isinstance(item, RelayResult)}
        runs[preempt] = batch, [done[r] for r in rows]
    (off, plain), (on, early) = runs[False], runs[True]
    assert off.n_paused == 0 and on.n_paused > 0
    for a, b in zip(plain, early, strict=True):
        assert a.token_ids == b.token_ids
        assert a.source_mask == b.source_mask
        assert (a.calls, a.finish_reason, a.teacher_tokens) == (b.calls, b.finish_reason, b.teacher_tokens)
    # the default: on in greedy decoding only (with sampling a row's draws would depend on its neighbours)
    assert RelayBatch(pairs[backend], policy, pairs[backend].limits, GREEDY).preempt
    sampled = Sampling(temperature=0.7, seed=1)
    assert not RelayBatch(pairs[backend], policy, pairs[backend].limits, sampled).preempt


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_flops_split_is_exact_on_both_backends(pairs, backend):
    """Decode = one teacher position per token it wrote; prefill = every other position (on vLLM including the
    re-read of a partly cached block); the three parts sum to the FLOPs."""
    policy = make_policy("interval", every=7, n=3)
    pt = pairs[backend].teacher.n_params
    for r in relay_batch(pairs[backend], PROMPTS, policy, sampling=GREEDY):
        turns = len(r.teacher_prefill)  # every turn wrote a token here: the budget outlasts the handoffs
        assert r.calls == turns > 0 and r.teacher_tokens >= turns
        assert r.flops_student + r.flops_teacher_decode + r.flops_teacher_prefill == pytest.approx(r.flops)
        assert r.flops_teacher_decode == 2 * pt * r.teacher_tokens
        assert r.flops_teacher_prefill == 2 * pt * (sum(r.teacher_prefill) - turns)
        assert r.teacher_computed == sum(r.teacher_prefill) + r.teacher_tokens - turns
        assert r.flops_student == 2 * pairs[backend].student.n_params * r.student_computed
