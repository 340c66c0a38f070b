"""Relay overhead and teacher re-reads, per backend.

    .venv/bin/python benchmarks/relay_overhead.py [--quick] [--json] [--pair tiny-random] [--backends hf,vllm]

    # the teacher on a vLLM OpenAI server (backend "remote": the transformers student, the served teacher):
    python -m vllm.entrypoints.openai.api_server --model ~/.cache/relay_demo/tiny-random-v2/teacher \
        --dtype float32 --max-model-len 4096 --block-size 32 --enable-prefix-caching \
        --enable-prompt-tokens-details --enforce-eager --port 8011 &
    .venv/bin/python benchmarks/relay_overhead.py --quick --backends hf,remote --teacher-url http://127.0.0.1:8011

(a) Overhead: the same prompts, handoffs forced at the same positions (the ``interval`` policy), decoded
    one stream at a time. overhead = relay wall time / ideal, where ideal = the student decoding its tokens
    alone + the teacher decoding its tokens alone + one teacher prefill of only the unseen tokens per
    handoff (each measured on the same engine, same lengths). 1.00 means handing over costs nothing extra.
    Each figure is the best of 5 interleaved repeats; ``overhead_cpu`` is the same ratio in CPU time of this
    process, which other jobs on a shared machine cannot inflate.
(b) Re-reads: as one answer grows to 2k tokens, the teacher tokens computed at each handoff against the
    tokens new to it since its last turn (transformers: exact KV reuse; vLLM: sessions kept alive between
    runs, exact too, with prefix caching, which only reuses whole blocks, where a session cannot resume;
    remote: the server's own cached-token counts, prefix caching alone).
"""

from __future__ import annotations

import random

from common import drain, finish, load, parser, table, timed_cpu

from relay_demo.backends.base import Job, Sampling
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, relay

GREEDY = Sampling(temperature=0)


def ideal_seconds(pair, prompt_ids_s, prompt_ids_t, result) -> tuple[float, float]:
    """Student alone + teacher alone + teacher prefill of the unseen tokens at each handoff: (wall, CPU)."""
    wall = cpu = 0.0
    s = pair.student.session(prompt_ids_s)
    _, w, c = timed_cpu(drain, pair.student, [Job(s, result.student_tokens + result.command_tokens, GREEDY)])
    wall, cpu = wall + w, cpu + c
    t = pair.teacher.session(prompt_ids_t)
    _, w, c = timed_cpu(drain, pair.teacher, [Job(t, result.teacher_tokens, GREEDY)])
    wall, cpu = wall + w, cpu + c
    rng = random.Random(0)
    vocab = len(pair.teacher.tokenizer) - 1
    context = list(prompt_ids_t)
    for k, new in enumerate(result.teacher_new):
        if k == 0:  # the first handoff reads the prompt too: that prefill is in "teacher alone" already
            context += [rng.randrange(vocab) for _ in range(new - len(prompt_ids_t))]
            continue
        warm = pair.teacher.session(context)
        drain(pair.teacher, [Job(warm, 1, GREEDY)])  # the context is now cached
        warm.extend([rng.randrange(vocab) for _ in range(new - 1)])
        _, w, c = timed_cpu(drain, pair.teacher, [Job(warm, 1, GREEDY)])
        wall, cpu = wall + w, cpu + c
        context = warm.ids
        warm.release()
    s.release()
    t.release()
    return wall, cpu


def overhead(pair, prompts, every, n, max_tokens, repeats=5) -> dict:
    from relay_demo.backends.base import chat_ids

    policy = make_policy("interval", every=every, n=n)
    limits = Limits(max_tokens=max_tokens, max_calls=10**6, max_n=n)
    relay(pair, prompts[0], policy, limits=limits, sampling=GREEDY)  # warm-up
    relay_w = relay_c = ideal_w = ideal_c = 0.0
    calls = tokens = 0
    for p in prompts:
        # best of `repeats`, relay and ideal interleaved: this machine is shared, and noise only adds time
        ids = chat_ids(pair.student.tokenizer, p, {}), chat_ids(pair.teacher.tokenizer, p, {})
        runs, ideals = [], []
        for _ in range(repeats):
            runs.append(timed_cpu(relay, pair, p, policy, limits=limits, sampling=GREEDY))
            ideals.append(ideal_seconds(pair, *ids, runs[0][0]))
        r = runs[0][0]
        relay_w += min(w for _, w, _ in runs)
        relay_c += min(c for _, _, c in runs)
        ideal_w += min(w for w, _ in ideals)
        ideal_c += min(c for _, c in ideals)
        calls += r.calls
        tokens += len(r.token_ids)
    return {
        "relay_s": relay_w,
        "ideal_s": ideal_w,
        "overhead": relay_w / ideal_w,
        "relay_cpu_s": relay_c,
        "ideal_cpu_s": ideal_c,
        "overhead_cpu": relay_c / ideal_c,
        "calls": calls,
        "tokens": tokens,
    }


def rereads(pair, every, n, max_tokens) -> dict:
    policy = make_policy("interval", every=every, n=n)
    r = relay(
        pair,
        "Tell me a long story.",
        policy,
        limits=Limits(max_tokens=max_tokens, max_calls=10**6, max_n=n),
        sampling=GREEDY,
    )
    pre, new = r.teacher_prefill[1:], r.teacher_new[1:]  # the first handoff also reads the prompt
    return {
        "handoffs": len(pre),
        "teacher_computed": sum(pre),
        "new_tokens": sum(new),
        "teacher_tokens_per_new_token": sum(pre) / max(1, sum(new)),
        "worst_handoff": max((a / b for a, b in zip(pre, new, strict=True)), default=0.0),
        "context_tokens": len(r.token_ids),
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--every", type=int, default=48, help="student tokens between forced handoffs")
    ap.add_argument("--n", type=int, default=8, help="teacher tokens per handoff")
    a = ap.parse_args()
    n_prompts, max_tokens, long = (3, 256, 1024) if a.quick else (8, 512, 2048)
    prompts = [f"Question {i}: explain step {i} of the method in detail." for i in range(n_prompts)]
    figures, rows = {"pair": a.pair, "every": a.every, "n": a.n}, []
    for backend in a.backends.split(","):
        pair = load(a.pair, backend, a.teacher_url)
        o = overhead(pair, prompts, a.every, a.n, max_tokens)
        rr = rereads(pair, a.every, a.n, long)
        figures[f"overhead_{backend}"] = round(o["overhead"], 4)
        figures[f"overhead_cpu_{backend}"] = round(o["overhead_cpu"], 4)
        figures[f"teacher_tokens_per_new_token_{backend}"] = round(rr["teacher_tokens_per_new_token"], 4)
        rows.append({"backend": backend, **o, **rr})
        pair.close()
    # the headline figure is the transformers engine's (exact reuse); vLLM's is reported beside it
    first = a.backends.split(",")[0]
    figures["teacher_tokens_per_new_token"] = figures[f"teacher_tokens_per_new_token_{first}"]
    print(
        table(
            rows,
            [
                "backend",
                "tokens",
                "calls",
                "relay_s",
                "ideal_s",
                "overhead",
                "overhead_cpu",
                "handoffs",
                "new_tokens",
                "teacher_computed",
                "teacher_tokens_per_new_token",
                "worst_handoff",
            ],
        )
    )
    finish(figures, a.json)


if __name__ == "__main__":
    main()
