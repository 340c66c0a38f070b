"""The learned policy's ``call_bias``: a logit bias on the student's ``<call>`` token, on both backends.

Uses the committed tiny-arith relay student (``<call>`` is one token of its vocabulary) and teacher.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from offline.tasks import arith
from relay_demo.backends.base import Sampling
from relay_demo.backends.hf_engine import HFEngine
from relay_demo.pairs import Pair, load_pair
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, relay, relay_batch
from relay_demo.tiny_random import byte_tokenizer

from .models import random_qwen2

os.environ.setdefault("OMP_NUM_THREADS", "1")
MODELS = Path(__file__).resolve().parent.parent / "results/models/tiny-arith"
LIMITS = Limits(max_n=16, max_calls=5, max_tokens=128)
COMMAND = re.compile(r"<call>\d+</call>")


@pytest.mark.parametrize("bad", ["x", float("inf"), float("nan"), 101, -101, None])
def test_bad_call_bias_is_refused(bad):
    with pytest.raises(ValueError, match="call_bias"):
        make_policy("learned", call_bias=bad)


def test_call_bias_is_a_reported_param():
    assert make_policy("learned").params() == {}
    assert make_policy("learned", call_bias=2).describe() == "learned(call_bias=2.0)"


def test_call_bias_needs_call_as_one_token():
    """A byte-level student spells <call> with six tokens: biasing one of them would be meaningless."""
    tok = byte_tokenizer()
    s, t = random_qwen2(tok, hidden=64, seed=1), random_qwen2(tok, hidden=64, seed=2)
    pair = Pair("t", HFEngine(s, tok, "student"), HFEngine(t, tok, "teacher"), Limits(max_tokens=8))
    with pytest.raises(ValueError, match="one token"):
        relay(pair, "q", make_policy("learned", call_bias=1.0), sampling=Sampling(0.0))
    # without a bias the same student relays as before
    assert relay(pair, "q", make_policy("learned"), sampling=Sampling(0.0)).finish_reason


def _load(backend: str) -> Pair:
    if backend == "vllm":
        pytest.importorskip("vllm")
    return load_pair("tiny-arith", backend=backend)


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_bias_moves_the_student_along_its_curve(backend):
    """More bias, more calls; every <call> the student writes becomes a well-formed command (the bias is
    lifted inside an open command, else the student would write <call><call>...)."""
    if not (MODELS / "student-relay").is_dir():
        pytest.skip("the committed tiny-arith models are absent")
    pair = _load(backend)
    prompts = [p.prompt for p in arith.load("validation", 24, seed=11)]
    calls = {}
    for bias in (0.0, 4.0):
        results = relay_batch(
            pair, prompts, make_policy("learned", call_bias=bias), limits=LIMITS, sampling=Sampling(0.0)
        )
        calls[bias] = sum(r.calls for r in results)
        for r in results:
            commands = [s.text for s in r.spans if s.source == "command"]
            assert all(COMMAND.fullmatch(c.strip()) for c in commands), commands
            assert "<call><call>" not in r.text
            assert r.calls == len(commands) <= LIMITS.max_calls
    assert calls[4.0] > calls[0.0] * 1.5, calls
