"""The RL stage's dev points (``offline.rl_relay``): a round's student on held-out train problems.

A point is the greedy relay and its teacher-free twin on the dev problems (never a test split), with the
teacher-alone answers of the committed dev run: accuracy, call ratio, calls per problem, where the calls go
(problems only the teacher solves, problems the teacher fails too) and how many problems the calls turn from
wrong (twin) to right (relay). Each row keeps its per-problem answers (``relay_ok`` / ``free_ok``: one
character a dev problem, in dev order), so two points can be compared paired on the same problems, and a
point at another call bias reuses its round's twin (the twin never calls: the bias cannot move it).

The call bias of the product is chosen here, on dev: ``sweep_rounds`` x ``sweep_biases`` adds those points
to the curve without training (``python -m offline.rl_relay --config RL.yaml sweep_rounds=[8]
sweep_biases=[-1]``).
"""

from __future__ import annotations

import time
from pathlib import Path

from offline.rl_parts import repo_path
from offline.tasks import grade_response
from offline.tasks.base import Problem


def grade(benchmark: str, text: str, problem: Problem) -> bool:
    from relay_demo.protocol import strip_commands

    return bool(grade_response(benchmark, strip_commands(text), problem).correct)


def teacher_alone(dev_run: str) -> dict[str, bool]:
    """Problem id -> the teacher alone is right, from the committed dev run (same problems, greedy)."""
    from relay_demo.results import parts as rio

    frame = rio.read_samples(repo_path(dev_run))
    frame = frame[frame["method"] == "teacher"]
    return {str(p): bool(c) for p, c in zip(frame["problem_id"], frame["correct"], strict=True)}


def bits(oks: list[bool]) -> str:
    return "".join("1" if ok else "0" for ok in oks)


def unbits(text: str) -> list[bool]:
    return [c == "1" for c in text]


def bias_of(row: dict, default: float) -> float:
    """A curve row's call bias (rows written before the field existed were at the recipe's bias)."""
    return float(row.get("call_bias", default))


def dev_point(
    cfg, engines, adapter: Path, dev: list[Problem], rnd: int, call_bias: float, free_ok: str | None = None
) -> dict:
    """Greedy relay (at ``call_bias``) and its teacher-free twin on the dev problems, and where the calls
    went. ``free_ok``: the twin's answers of this round from an earlier point (then it is not rerun).
    ``engines.student_of(adapter)`` gives the pair (cfg: an ``RlCfg``)."""
    from relay_demo.backends.base import Sampling
    from relay_demo.policies import make_policy
    from relay_demo.relay import Limits, relay_batch

    t0 = time.monotonic()
    pair = engines.student_of(adapter)
    limits = Limits(max_n=cfg.max_n, max_calls=cfg.max_calls, max_tokens=cfg.eval_max_tokens)
    policy = make_policy("learned", call_bias=call_bias)
    prompts = [p.prompt for p in dev]
    greedy = Sampling(temperature=0.0, seed=0)
    relay = relay_batch(pair, prompts, policy, limits=limits, sampling=greedy)
    ok = [grade(cfg.benchmark, r.text, p) for r, p in zip(relay, dev, strict=True)]
    if free_ok is None or len(free_ok) != len(dev):
        free_limits = Limits(max_n=cfg.max_n, max_calls=0, max_tokens=cfg.eval_max_tokens)
        free = relay_batch(pair, prompts, policy, limits=free_limits, sampling=greedy)
        ok_free = [grade(cfg.benchmark, r.text, p) for r, p in zip(free, dev, strict=True)]
    else:
        ok_free = unbits(free_ok)
    teacher = teacher_alone(cfg.dev_run)
    calling = [i for i, r in enumerate(relay) if r.calls > 0]
    response = sum(r.student_tokens + r.teacher_tokens + r.command_tokens for r in relay)
    return {
        "round": rnd,
        "adapter": adapter.name,
        "call_bias": float(call_bias),
        "n": len(dev),
        "accuracy": sum(ok) / len(dev),
        "teacher_free_accuracy": sum(ok_free) / len(dev),
        "call_ratio": sum(r.teacher_tokens for r in relay) / max(1, response),
        "calls_per_problem": sum(r.calls for r in relay) / len(dev),
        "problems_calling": len(calling),
        # of the problems the relay called on: the teacher alone solves them, the student's twin does not
        "calling_teacher_only": sum(teacher.get(dev[i].id, False) and not ok_free[i] for i in calling),
        "calling_teacher_fails": sum(not teacher.get(dev[i].id, False) for i in calling),
        "turned_right": sum(ok[i] and not ok_free[i] for i in calling),  # wrong without the calls, right with
        "turned_wrong": sum(ok_free[i] and not ok[i] for i in calling),
        "relay_ok": bits(ok),
        "free_ok": bits(ok_free),
        "secs": round(time.monotonic() - t0, 1),
        "dtype": engines.dtype,  # greedy decodes differ between bfloat16 and float32: compare like with like
    }


def sweep(cfg, engines, adapter_of, dev: list[Problem], curve) -> list[dict]:
    """The points of ``cfg.sweep_rounds`` x ``cfg.sweep_biases`` not yet in ``curve`` (a ``Jsonl``), each
    appended as soon as it is measured (a killed sweep resumes); ``adapter_of(round)``: its folder."""
    made = []
    for rnd in cfg.sweep_rounds:
        adapter = adapter_of(rnd)
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no adapter of round {rnd} ({adapter}): pruned, or not trained yet")
        for bias in cfg.sweep_biases:
            rows = [r for r in curve.rows() if r["round"] == rnd]
            if any(bias_of(r, cfg.call_bias) == bias for r in rows):
                continue
            free = next((r["free_ok"] for r in reversed(rows) if r.get("free_ok")), None)
            point = dev_point(cfg, engines, adapter, dev, rnd, bias, free)
            curve.append([point])
            made.append(point)
    return made


# -- paired comparisons of dev points --------------------------------------------------------------


def answers(rows: list[dict], point: str) -> list[bool]:
    """A point's per-problem answers: ``ROUND@BIAS`` (the relay), ``ROUND@BIAS/free`` (its twin)."""
    return _answers(*_point(rows, point))


def _answers(row: dict, side: str) -> list[bool]:
    return unbits(row["free_ok" if side else "relay_ok"])


def _point(rows: list[dict], point: str) -> tuple[dict, str]:
    spec, _, side = point.partition("/")
    rnd, _, bias = spec.partition("@")
    try:
        rnd_i, bias_f = int(rnd), float(bias or 0.0)
    except ValueError:
        raise ValueError(
            f"{point!r}: expected ROUND@BIAS or ROUND@BIAS/free, e.g. 8@0 or 8@-1/free"
        ) from None
    if side not in ("", "free"):
        raise ValueError(f"{point!r}: the only side is /free (the teacher-free twin)")
    found = [r for r in rows if r["round"] == rnd_i and bias_of(r, 0.0) == bias_f and r.get("relay_ok")]
    if not found:
        have = sorted({f"{r['round']}@{bias_of(r, 0.0):g}" for r in rows if r.get("relay_ok")})
        raise ValueError(f"no dev point {spec} with per-problem answers; points that have them: {have}")
    return found[-1], side


def compare(rows: list[dict], a: str, b: str) -> str:
    """A - B on the same dev problems: the difference, its 95% paired-bootstrap interval, McNemar's p."""
    from relay_demo import stats
    from relay_demo.results.paired import points

    pa, pb = _point(rows, a), _point(rows, b)  # each (row, side)
    dtypes = {pa[0].get("dtype", "bfloat16"), pb[0].get("dtype", "bfloat16")}  # runs 1-2: bf16, unrecorded
    if len(dtypes) > 1:
        raise ValueError(f"{a}, {b} were decoded in {' and '.join(sorted(dtypes))}: compare like with like")
    x, y = _answers(*pa), _answers(*pb)
    d = stats.accuracy_difference(x, y)
    lo, hi = d.accuracy_ci
    only_a = sum(p and not q for p, q in zip(x, y, strict=True))
    only_b = sum(q and not p for p, q in zip(x, y, strict=True))
    noise = "more than noise" if d.mcnemar.p < 0.05 else "within noise"
    return (
        f"{a} - {b} on {len(x)} dev problems: {points(d.accuracy)} points, 95% interval [{points(lo)}, "
        f"{points(hi)}]; only {a} solves {only_a}, only {b} {only_b}; "
        f"exact McNemar p = {d.mcnemar.p:.2g}: {noise}"
    )
