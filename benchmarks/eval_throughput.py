"""Evaluation throughput (problems/s, tok/s) of the evaluation job: batched relay vs batched student-only.

    .venv/bin/python benchmarks/eval_throughput.py [--quick] [--json] [--pair tiny-arith] [--backends hf,vllm]

Runs the real job (``offline.evaluate.run``: batching, grading, chunked parquet writes) on the synthetic
task's test split, into a temporary results folder, for ``student`` and for a relay method (``--relay``,
default the confidence trigger at tau 0.6, which calls about once per problem on tiny-arith; ``learned``
uses the pair's own commands). Models are loaded once per backend, outside the timing; best of
``--repeats`` runs, since noise on a shared machine only ever adds time. ``relay_vs_student`` is the
ratio of problems/s (the figure an evaluation budget depends on).

    .venv/bin/python benchmarks/eval_throughput.py --real-pair --json   # needs `make qwen-pair`

``--real-pair`` times one GSM8K sweep point of the real pair as the committed evaluation runs it (vLLM, bf16,
3 GiB of KV, batch 64, greedy, 1024-token cap): the learned relay (pair ``qwen2.5-coder-0.5b-1.5b-relay``,
call bias 0) against the same trained student alone, on the same 64 GSM8K test problems (timing only: no
choice is made from them), one run each. ``relay_vs_student_time`` = relay seconds / student seconds.
"""

from __future__ import annotations

import tempfile
import time

from common import finish, parser, table

from offline import evaluate as ev
from relay_demo.results import parts as rio

RELAY = {
    "confidence": {"name": "confidence", "params": {"tau": 0.6, "n": 1}},
    "learned": {"name": "relay"},
}


REAL_PAIR = "qwen2.5-coder-0.5b-1.5b-relay"
REAL_ENGINE = {"dtype": "bfloat16", "kv_cache_gib": 3}  # as offline/recipes/qwen2.5-coder-0.5b-1.5b/eval.yaml


def run_once(
    pair, backend: str, method: dict, n: int, batch: int, benchmark: str = "arith", limits=None
) -> tuple[float, dict]:
    cfg = ev.EvalCfg(
        pair=pair.name,
        run_id="throughput",
        benchmarks=[benchmark],
        methods=[ev.MethodCfg(**method)],
        backend=backend,
        n=n,
        batch_size=batch,
        limits=limits or {},
        results_dir=tempfile.mkdtemp(prefix="eval-throughput-"),
    )
    cfg.validate()
    generate = ev.engine_generate(cfg, lambda: pair)
    t = time.perf_counter()
    run_dir = ev.run(cfg, generate, progress=False)
    dt = time.perf_counter() - t
    s = rio.read_samples(run_dir)
    tokens = float((s["student_tokens"] + s["teacher_tokens"] + s["command_tokens"]).sum())
    return dt, {
        "problems": len(s),
        "tokens": tokens,
        "accuracy": float(s["correct"].mean()),
        "call_ratio": float(s["teacher_tokens"].sum() / max(1.0, tokens)),
    }


def main() -> None:
    ap = parser(__doc__)
    ap.set_defaults(pair="tiny-arith")
    ap.add_argument("--relay", choices=sorted(RELAY), default="confidence")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real-pair", action="store_true", help="one GSM8K sweep point of the real pair")
    a = ap.parse_args()
    from relay_demo.pairs import load_pair

    n, bench, engine, limits = (128 if a.quick else 512), "arith", {}, None
    if a.real_pair:  # one sweep point as the committed evaluation runs it; no warm-up run (it costs minutes)
        a.pair, a.backends, a.relay, a.repeats, n, bench = REAL_PAIR, "vllm", "learned", 1, 64, "gsm8k"
        engine, limits = REAL_ENGINE, {"max_tokens": 1024}
    figures = {"pair": a.pair, "problems": n, "batch": a.batch, "relay": a.relay, "benchmark": bench}
    rows = []
    for backend in a.backends.split(","):
        pair = load_pair(a.pair, backend=backend, **engine)
        if not a.real_pair:  # warm both engines' first batch
            run_once(pair, backend, {"name": "student"}, a.batch, a.batch)
            run_once(pair, backend, RELAY[a.relay], a.batch, a.batch)
        per = {}
        for label, method in (("student", {"name": "student"}), ("relay", RELAY[a.relay])):
            runs = [run_once(pair, backend, method, n, a.batch, bench, limits) for _ in range(a.repeats)]
            dt, info = min(runs, key=lambda r: r[0])
            per[label] = {"problems_s": info["problems"] / dt, "tok_s": info["tokens"] / dt, "s": dt, **info}
            rows.append({"backend": backend, "method": label, **per[label], "seconds": dt})
        ratio = per["relay"]["problems_s"] / per["student"]["problems_s"]
        rows[-1]["relay_vs_student"] = ratio
        for label, d in per.items():
            for k in ("problems_s", "tok_s", "accuracy", "call_ratio"):
                figures[f"{backend}_{label}_{k}"] = round(d[k], 4)
        figures[f"{backend}_relay_vs_student"] = round(ratio, 4)
        figures[f"{backend}_relay_vs_student_time"] = round(per["relay"]["s"] / per["student"]["s"], 4)
        pair.close()
    cols = [
        "backend",
        "method",
        "problems_s",
        "tok_s",
        "accuracy",
        "call_ratio",
        "seconds",
        "relay_vs_student",
    ]
    print(table(rows, cols))
    finish(figures, a.json)


if __name__ == "__main__":
    main()
