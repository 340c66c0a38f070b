"""Pairs that load the same model share its engine (issue 31, item 9: three Qwen pairs held three teachers).

tiny-arith and tiny-arith-base name one teacher folder (results/models/tiny-arith/teacher) and two students.
Each test starts and ends with no pair loaded, so the reference counts are this test's own.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_engine_sharing.py -q
"""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from relay_demo import pairs
from relay_demo.backends.base import Sampling
from relay_demo.policies import make_policy
from relay_demo.relay import relay
from relay_demo.ui import pair_info

TEACHER = str(pairs.ROOT / "results/models/tiny-arith/teacher")


@pytest.fixture(autouse=True)
def no_pair_loaded():
    pairs.unload_pairs(pairs.PAIRS)
    yield
    pairs.unload_pairs(pairs.PAIRS)


def engines_of(path: str) -> dict[tuple, int]:
    return {k: n for k, n in pairs.open_engines().items() if k[0] == path}


def answer(pair) -> str:
    prompt = pairs.examples(pair.name)[0]
    return relay(pair, prompt, make_policy("confidence"), limits=pair.limits, sampling=Sampling(0)).text


def test_two_pairs_with_one_teacher_hold_one_teacher_engine_until_both_close():
    arith, base = pairs.load_pair("tiny-arith"), pairs.load_pair("tiny-arith-base")
    assert arith.teacher is base.teacher and arith.student is not base.student
    assert list(engines_of(TEACHER).values()) == [2] and len(pairs.open_engines()) == 3
    before = answer(base)

    arith.close()
    assert list(engines_of(TEACHER).values()) == [1] and len(pairs.open_engines()) == 2
    assert answer(base) == before  # the other pair's teacher is still there and still the same model

    teacher = weakref.ref(base.teacher)
    base.close()
    base.close()  # a second close lets go of nothing more
    assert pairs.open_engines() == {}
    del arith, base
    gc.collect()
    assert teacher() is None, "a closed engine is still referenced: its memory is not freed"

    again = pairs.load_pair("tiny-arith-base")  # loads anew
    assert list(engines_of(TEACHER).values()) == [1] and answer(again) == before


def test_pairs_that_share_an_engine_take_turns_and_the_others_do_not_wait():
    arith, base, other = (pairs.load_pair(n) for n in ("tiny-arith", "tiny-arith-base", "tiny-random"))
    got = {}

    def try_locks():  # another thread: an RLock held here would let this thread in again
        got["base"] = base.lock.acquire(blocking=False)
        got["other"] = other.lock.acquire(timeout=5)
        for name, pair in (("base", base), ("other", other)):
            if got[name]:
                pair.lock.release()

    with arith.lock:
        t = threading.Thread(target=try_locks)
        t.start()
        t.join()
    assert got == {"base": False, "other": True}
    assert base.lock.acquire(timeout=5)  # all of its locks or none: nothing was left half-held
    base.lock.release()


def weights(name: str) -> int:
    return 4 * sum(pairs.param_counts(name))  # float32


def student_weights(name: str) -> int:
    return 4 * pairs.param_counts(name)[0]


def test_a_weight_budget_closes_the_least_recently_used_pairs_not_the_shared_engines():
    pairs.load_pair("tiny-arith")
    # within budget: both stay, the shared teacher counted once
    both = weights("tiny-arith") + student_weights("tiny-arith-base")
    base = pairs.load_pair("tiny-arith-base", max_weight_bytes=both)
    assert pairs.loaded_pairs() == {"tiny-arith", "tiny-arith-base"}
    # tiny-arith-base was used last: closing tiny-arith (its student, not the shared teacher) makes room
    pairs.load_pair("tiny-random", max_weight_bytes=weights("tiny-random") + weights("tiny-arith-base"))
    assert pairs.loaded_pairs() == {"tiny-arith-base", "tiny-random"}
    assert list(engines_of(TEACHER).values()) == [1]

    started, done = threading.Event(), threading.Event()

    def generate():  # another user's generation holds the pair
        with base.lock:
            started.set()
            done.wait(30)

    t = threading.Thread(target=generate)
    t.start()
    started.wait(30)
    try:  # no room even for itself: every pair that is not generating goes, and this one still loads
        pairs.load_pair("tiny-arith", max_weight_bytes=0)
    finally:
        done.set()
        t.join()
    assert pairs.loaded_pairs() == {"tiny-arith-base", "tiny-arith"}
    assert answer(base)


def test_the_app_keeps_its_pairs_within_its_weight_budget(monkeypatch):
    monkeypatch.setenv("RELAY_MAX_MODEL_GB", str((weights("tiny-arith-base") + 1000) / 1e9))
    pair_info.get_pair("tiny-arith-base")
    pair_info.get_pair("tiny-random")
    assert pairs.loaded_pairs() == {"tiny-random"}
    monkeypatch.setenv("RELAY_MAX_MODEL_GB", "0")  # no bound
    pair_info.get_pair("tiny-arith-base")
    assert pairs.loaded_pairs() == {"tiny-random", "tiny-arith-base"}


def test_the_default_budget_is_a_share_of_the_memory_limit(monkeypatch):
    monkeypatch.delenv("RELAY_MAX_MODEL_GB", raising=False)
    monkeypatch.setattr(pair_info, "memory_limit", lambda: 16 * 2**30)  # a cpu-basic Space
    budget = pair_info.weight_budget()
    bf16_three, fp32_two, fp32_three = 6.05e9, 10.13e9, 12.10e9  # three Qwen pairs' weights, shared
    assert bf16_three < fp32_two <= budget < fp32_three


@pytest.mark.parametrize("backend", ["vllm"])
def test_shared_vllm_engines_keep_vllms_process_state(backend):
    """In-process vLLM engines share global state that the last one to close tears down: a shared engine
    must count once there, and closing one pair must not break the other's."""
    pytest.importorskip("vllm")
    from relay_demo.backends import vllm_engine

    before = vllm_engine._open_engines
    arith = pairs.load_pair("tiny-arith", backend)
    base = pairs.load_pair("tiny-arith-base", backend)
    assert arith.teacher is base.teacher and vllm_engine._open_engines == before + 3
    want = answer(base)
    arith.close()
    assert vllm_engine._open_engines == before + 2 and answer(base) == want
    base.close()
    assert vllm_engine._open_engines == before and pairs.open_engines() == {}
