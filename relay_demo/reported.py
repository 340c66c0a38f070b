"""Numbers reported in the RelayLLM paper, for the "reported in the paper" overlay of the charts.

Source: RelayLLM (token-level collaborative decoding of a small and a large language model), main results:
Qwen3-1.7B student relaying to a Qwen3-8B teacher, mean accuracy over the six math benchmarks (MATH-500,
GSM8K, Minerva, OlympiadBench, AIME-24, AIME-25). The query-level random router that matches the relay's
accuracy sends 60.4% of queries to the teacher, hence the paper's "98.2% cost reduction" (1 - 1.07 / 60.4;
see ``relay_demo.results.metrics``). Accuracies and shares are fractions here. We never ran this pair:
these are the paper's.
"""

from __future__ import annotations

LABEL = "reported in the paper"
PAIR = "relayllm-qwen3-1.7b-8b"
BENCHMARK = "mean of 6"

STUDENT_ACC = 0.4250  # Qwen3-1.7B alone
TEACHER_ACC = 0.5412  # Qwen3-8B alone
RELAY_ACC = 0.4952  # RelayLLM (learned <call>N</call>)
RELAY_CALL_RATIO = 0.0107  # teacher-token share of the relay's responses
RANDOM_ROUTER_MATCHED_P = 0.604  # share of queries a random router sends to the teacher to match RELAY_ACC


def points() -> list[dict]:
    """The reported points as rows shaped like ``relay_demo.store`` summary rows."""
    common = {"pair": PAIR, "benchmark": BENCHMARK, "param": None, "source": LABEL}
    return [
        {**common, "method": "student", "call_ratio": 0.0, "accuracy": STUDENT_ACC},
        {**common, "method": "teacher", "call_ratio": 1.0, "accuracy": TEACHER_ACC},
        {**common, "method": "relay", "call_ratio": RELAY_CALL_RATIO, "accuracy": RELAY_ACC},
        {**common, "method": "random-query", "call_ratio": RANDOM_ROUTER_MATCHED_P, "accuracy": RELAY_ACC},
    ]


def apgr_points() -> list[dict]:
    """The reported relay point on the share-of-the-gap axis (student = 0, teacher = 1): comparable across
    pairs and benchmarks, unlike an accuracy, so the only axis on which it may stand beside our own pairs."""
    apgr = (RELAY_ACC - STUDENT_ACC) / (TEACHER_ACC - STUDENT_ACC)
    common = {"pair": PAIR, "benchmark": BENCHMARK, "param": None, "source": LABEL}
    return [{**common, "method": "relay", "call_ratio": RELAY_CALL_RATIO, "apgr": apgr}]
