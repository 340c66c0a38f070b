"""`slow`: the real Qwen2.5-Coder 0.5B -> 1.5B pair relay-decodes through both backends.

Fetch the models first (1.5 GB):
PYTHON=.venv/bin/python bash ../shared/tools/fetch-qwen25-coder-pair.sh models/qwen2.5-coder
then:  make test ARGS="-m slow tests/test_qwen_pair.py"
"""

from __future__ import annotations

import pytest

from relay_demo.backends.base import Sampling
from relay_demo.pairs import available, load_pair
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, relay_batch

PAIR = "qwen2.5-coder-0.5b-1.5b"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not available(PAIR)[0], reason=f"{PAIR} not fetched: {available(PAIR)[1]}"),
]
PROMPT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_real_pair_relays_on_both_backends(backend):
    pair = load_pair(PAIR, backend=backend, fresh=True)
    try:
        limits = Limits(max_tokens=96, max_n=8, max_calls=5)
        (r,) = relay_batch(
            pair,
            [PROMPT],
            make_policy("confidence", tau=0.6, n=4),
            limits=limits,
            sampling=Sampling(temperature=0),
        )
    finally:
        pair.close()
    assert r.student_tokens > 0 and r.teacher_tokens > 0 and r.calls >= 1
    assert len(r.token_ids) == len(r.source_mask) <= 96
    assert r.text.strip() and "\ufffd" not in r.text
    assert any(ch.isdigit() for ch in r.text)  # it is doing arithmetic, not babbling
