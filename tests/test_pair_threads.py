"""Two library calls at once on one loaded pair (threads) give what they give one after the other.

vLLM's step loop is shared by every request of an engine: without the pair's lock, two ``relay_batch`` calls
from two threads steal each other's outputs; and vLLM's CPU attention refuses a thread whose OpenMP thread
count differs from the loading thread's, unless the engine gives it that count."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from relay_demo.backends.base import Sampling
from relay_demo.pairs import load_pair
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, relay, relay_batch


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_concurrent_calls_on_one_pair_do_not_corrupt_each_other(backend):
    pair = load_pair("tiny-random", backend)
    policy = make_policy("interval", every=5, n=3)
    limits = Limits(max_tokens=40)
    prompts = [["hello there", "a b c"], ["count: 1 2 3", "xyz"], ["one more"]]
    want = [
        [r.text for r in relay_batch(pair, p, policy, limits=limits, sampling=Sampling(0))] for p in prompts
    ]
    got: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            torch._C.set_num_threads(1)  # a worker with another OpenMP thread count than the loading thread
            got[i] = [
                r.text for r in relay_batch(pair, prompts[i], policy, limits=limits, sampling=Sampling(0))
            ]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and [got[i] for i in range(len(prompts))] == want


def test_a_caller_that_holds_the_lock_can_still_call_the_library():
    pair = load_pair("tiny-random", "hf")
    with pair.lock:  # as the app and the server do around their own loops
        assert relay(pair, "hi", make_policy("student-only"), limits=Limits(max_tokens=4)).finish_reason


FRESH_LOADS = """
import threading, traceback
from relay_demo.pairs import load_pair, param_counts

start = threading.Barrier(3)
errors = []

def run(f, name):
    start.wait()
    try:
        f(name)
    except BaseException:
        errors.append(traceback.format_exc())

# two pairs loading and a third pair's sizes counted (the About tab on a pair change), all at once
jobs = [(load_pair, "tiny-random"), (load_pair, "tiny-arith"), (param_counts, "tiny-arith-base")]
threads = [threading.Thread(target=run, args=job) for job in jobs]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("".join(errors) or "all loaded")
"""


def test_a_fresh_process_loads_pairs_from_threads_at_once(repo_dir):
    # a fresh interpreter: nothing imported yet, as in a freshly started app (issue 31, finding 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-c", FRESH_LOADS]
    run = subprocess.run(cmd, cwd=repo_dir, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("all loaded"), run.stdout + run.stderr[-3000:]
