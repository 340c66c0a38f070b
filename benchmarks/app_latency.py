"""First-token latency and streaming tokens/s through the Gradio app, as a user's browser sees them.

    .venv/bin/python benchmarks/app_latency.py [--pair tiny-random] [--requests 5] [--max-tokens 256]
        [--quick] [--policies student-only,interval,random-token,teacher-only] [--json]

The app is launched in-process (the real queue, HTTP and server-sent events) and driven by ``gradio_client``
on the ``/chat`` endpoint, one request at a time after a warm-up request. End-of-sequence is disabled so every
request streams exactly ``--max-tokens`` tokens. Per policy it reports:

* ``first_token_s``: submit -> the first streamed update that shows response text (median over requests);
* ``stream_tok_s``: response tokens / (last update - first text update): the rate the text grows on screen;
* ``e2e_tok_s``: response tokens / (last update - submit).

Goal on the tiny pair: first token <= 1 s, streaming >= 50 tok/s.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from dataclasses import asdict, replace

from common import finish, parser, table

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

_TOKENS = re.compile(r'data-tokens="(\d+)"')
POLICIES = {
    "student-only": {},
    "interval": {"every": 16, "n": 4},
    "random-token": {"p": 0.05, "n": 4},
    "teacher-only": {},
}


def _args(settings) -> list:
    from relay_demo.ui import handlers as h

    d = asdict(settings)
    return [d[f] for f in h.SETTINGS_FIELDS]


def one_request(client, settings, prompt: str) -> dict:
    """Submit one chat request; time the first update with response text and the last update."""
    t0 = time.perf_counter()
    first, last, chat = None, None, ""
    job = client.submit(prompt, *_args(settings), api_name="/chat")
    for out in job:
        now = time.perf_counter()
        chat = out[0]
        if first is None and "relay-bot" in chat and "relay-span" in chat.split("relay-bot", 1)[1]:
            first = now
        last = now
    chat = job.result()[0]
    last = time.perf_counter() if last is None else max(last, time.perf_counter())
    tokens = sum(int(n) for n in _TOKENS.findall(chat.split("relay-bot", 1)[-1]))
    first = first or last
    return {"first_token_s": first - t0, "tokens": tokens, "stream_s": last - first, "total_s": last - t0}


def bench_policy(url: str, base, policy: str, requests: int) -> dict:
    from gradio_client import Client

    settings = replace(base, policy=policy, **POLICIES[policy])
    runs = []
    for i in range(requests + 1):  # the first is a warm-up
        client = Client(url, verbose=False, download_files=False)  # a fresh session, as a new user
        r = one_request(client, replace(settings, seed=i), f"Request {i}: what is {i + 17} * 23?")
        if i:
            runs.append(r)
    tokens = statistics.median(r["tokens"] for r in runs)
    return {
        "policy": policy,
        "requests": requests,
        "tokens": tokens,
        "first_token_s": statistics.median(r["first_token_s"] for r in runs),
        "first_token_max_s": max(r["first_token_s"] for r in runs),
        "stream_tok_s": statistics.median(r["tokens"] / r["stream_s"] for r in runs if r["stream_s"] > 0),
        "e2e_tok_s": statistics.median(r["tokens"] / r["total_s"] for r in runs),
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=None, help="default: the pair's limit")
    ap.add_argument("--policies", default=",".join(POLICIES))
    a = ap.parse_args()
    a.requests = 2 if a.quick else a.requests
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from relay_demo.ui import QUEUE, build_demo, launch_options
    from relay_demo.ui import handlers as h

    pair = h.get_pair(a.pair)
    for engine in (pair.student, pair.teacher):
        engine.eos_ids = set()  # every request streams exactly max_tokens tokens
    base = h.Settings(
        pair=a.pair,
        max_tokens=a.max_tokens or pair.limits.max_tokens,
        max_n=pair.limits.max_n,
        temperature=0.7,
    )
    demo = build_demo()
    demo.queue(**QUEUE).launch(prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        rows = [bench_policy(demo.local_url, base, p, a.requests) for p in a.policies.split(",")]
    finally:
        demo.close()
    print(f"app latency · pair {a.pair} · {base.max_tokens} tokens per request · {a.requests} requests each")
    print(
        table(rows, ["policy", "tokens", "first_token_s", "first_token_max_s", "stream_tok_s", "e2e_tok_s"])
    )
    finish({"pair": a.pair, "max_tokens": base.max_tokens, "rows": rows}, a.json)


if __name__ == "__main__":
    main()
