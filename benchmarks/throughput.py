"""Tokens per second, single-stream and batched, relay against student-only, per backend.

    .venv/bin/python benchmarks/throughput.py [--quick] [--json] [--pair tiny-random] [--backends hf,vllm]

The relay hands one token to the teacher every ``--every`` student tokens (default 19: a 5% call ratio),
so the figure shows what the handoffs cost a batch: ``relay_vs_student`` = relay tok/s / student-only tok/s.
Response tokens of both models count; end-of-sequence is disabled so every run writes the same number.

Batched only, a second relay hands over at random positions (random-token, p = 1/every), as real policies do:
rows then stop at different moments, which is what the early end of student runs is for. It runs with
``preempt`` on (the default in greedy decoding) and off: ``preempt_gain`` = on tok/s / off tok/s.

Batched only, against the ideal: ``relay_vs_ideal`` = the time the relay's tokens would take if each model
wrote its own share at its own batched speed with nothing lost at handoffs (the relay's student tokens at the
student-only tok/s + its teacher tokens at the teacher-only tok/s, both measured on the same rows in the same
run) / the relay's time. It separates what the loop loses (1 - ratio) from what the teacher's tokens cost.

Batched only, a ceiling: ``relay_ceiling`` = student-only time for the relay's number of tokens / (that time +
the time spent inside the teacher's engine during the relay's run): what ``relay_vs_student`` would be if the
student's share of the run cost no more than the student alone. The teacher reads every token the student
writes before it writes its own (its catch-up), so on a pair where that reading is dear the ceiling is the
bound, however well the two engines are scheduled.
"""

from __future__ import annotations

from typing import NamedTuple

from common import finish, load, parser, table, time_inside, timed

from relay_demo.backends.base import Sampling
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, relay_batch

GREEDY = Sampling(temperature=0)


class Run(NamedTuple):
    tok_s: float
    call_ratio: float
    teacher_s: float  # seconds inside the teacher's engine
    tokens: int


def tok_per_s(pair, policy, prompts, max_tokens, **kw) -> Run:
    """The fastest of three runs of ``policy`` on ``prompts``."""
    limits = Limits(max_tokens=max_tokens, max_calls=10**6, max_n=max(1, policy.n))
    relay_batch(
        pair, prompts[:1], policy, limits=Limits(max_tokens=8, max_calls=10**6), sampling=GREEDY
    )  # warm
    # best of three: this machine is shared, and noise only ever adds time
    runs, teacher_s = [], time_inside(pair.teacher)
    for _ in range(3):
        before = teacher_s[0]
        out, dt = timed(relay_batch, pair, prompts, policy, limits=limits, sampling=GREEDY, **kw)
        runs.append((dt, teacher_s[0] - before, out))
    dt, inside, results = min(runs, key=lambda run: run[0])
    tokens = sum(len(r.token_ids) for r in results)
    teacher = sum(r.teacher_tokens for r in results)
    return Run(tokens / dt, teacher / tokens, inside, tokens)


def ceiling(student_tok_s: float, run: Run) -> float:
    """Student-only time for the run's tokens / (that + the run's time inside the teacher's engine)."""
    alone = run.tokens / student_tok_s
    return round(alone / (alone + run.teacher_s), 4)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--every", type=int, default=19)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    max_tokens = 128 if a.quick else 256
    figures, rows = {"pair": a.pair, "every": a.every, "batch": a.batch, "max_tokens": max_tokens}, []
    for backend in a.backends.split(","):
        pair = load(a.pair, backend)
        for label, n in (("single", 1), (f"batch{a.batch}", a.batch)):
            prompts = [f"Prompt number {i}: continue the list." for i in range(n)]
            s = tok_per_s(pair, make_policy("student-only"), prompts, max_tokens).tok_s
            relay = tok_per_s(pair, make_policy("interval", every=a.every, n=1), prompts, max_tokens)
            r, ratio = relay.tok_s, relay.call_ratio
            rows.append(
                {
                    "backend": backend,
                    "mode": label,
                    "student_tok_s": s,
                    "relay_tok_s": r,
                    "call_ratio": ratio,
                    "relay_vs_student": r / s,
                }
            )
            key = f"{backend}_{'single' if n == 1 else 'batched'}"
            figures[f"{key}_student_tok_s"] = round(s, 1)
            figures[f"{key}_relay_tok_s"] = round(r, 1)
            figures[f"{key}_relay_vs_student"] = round(r / s, 4)
            figures[f"{key}_call_ratio"] = round(ratio, 4)
            if n > 1:
                t = tok_per_s(pair, make_policy("teacher-only"), prompts, max_tokens).tok_s
                rand = make_policy("random-token", p=1 / a.every, n=1, seed=0)
                random_on = tok_per_s(pair, rand, prompts, max_tokens, preempt=True)
                on, rratio = random_on.tok_s, random_on.call_ratio
                off = tok_per_s(pair, rand, prompts, max_tokens, preempt=False).tok_s
                figures[f"{key}_relay_ceiling"] = rows[-1]["ceiling"] = ceiling(s, relay)
                figures[f"{key}_random_relay_ceiling"] = ceiling(s, random_on)
                # seconds per token of the ideal (each model's share at its own speed) over the relay's
                ideal = {"": (ratio, r), "random_": (rratio, on)}
                for name, (share, tok_s) in ideal.items():
                    figures[f"{key}_{name}relay_vs_ideal"] = round(((1 - share) / s + share / t) * tok_s, 4)
                figures[f"{key}_teacher_tok_s"] = round(t, 1)
                rows[-1]["relay_vs_ideal"] = figures[f"{key}_relay_vs_ideal"]
                rows.append(
                    {
                        "backend": backend,
                        "mode": f"{label} random, preempt off/on",
                        "student_tok_s": s,
                        "relay_tok_s": f"{off:.1f} / {on:.1f}",
                        "call_ratio": rratio,
                        "relay_vs_student": f"{off / s:.3f} / {on / s:.3f}",
                        "relay_vs_ideal": figures[f"{key}_random_relay_vs_ideal"],
                        "ceiling": figures[f"{key}_random_relay_ceiling"],
                    }
                )
                figures[f"{key}_random_relay_tok_s"] = round(on, 1)
                figures[f"{key}_random_relay_nopreempt_tok_s"] = round(off, 1)
                figures[f"{key}_random_call_ratio"] = round(rratio, 4)
                figures[f"{key}_preempt_gain"] = round(on / off, 4)
        pair.close()
    cols = [
        "backend",
        "mode",
        "student_tok_s",
        "relay_tok_s",
        "call_ratio",
        "relay_vs_student",
        "relay_vs_ideal",
        "ceiling",
    ]
    print(table(rows, cols))
    finish(figures, a.json)


if __name__ == "__main__":
    main()
