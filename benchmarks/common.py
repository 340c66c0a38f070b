"""Shared plumbing for the benchmark scripts: argument parsing, timing, table and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--pair", default="tiny-random")
    ap.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm, remote")
    ap.add_argument("--teacher-url", help="remote backend: the pair's teacher on a vLLM server")
    ap.add_argument("--quick", action="store_true", help="fewer prompts and tokens (a few minutes)")
    ap.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object on the last line"
    )
    return ap


def load(pair_name: str, backend: str, teacher_url: str | None = None):
    """Load a pair with end-of-sequence disabled, so every run decodes exactly the tokens asked for.
    ``backend="remote"``: the transformers student with the teacher on the vLLM server at ``teacher_url``."""
    from relay_demo.pairs import load_pair

    if backend == "remote":
        if not teacher_url:
            raise SystemExit("the remote backend needs --teacher-url URL (a vLLM server of the teacher)")
        pair = load_pair(pair_name, backend="hf", teacher_url=teacher_url)
    else:
        pair = load_pair(pair_name, backend=backend)
    for engine in (pair.student, pair.teacher):
        engine.eos_ids = set()
    return pair


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def time_inside(engine) -> list[float]:
    """From now on, count in ``[0]`` the seconds spent inside ``engine.run``: its own steps, not the work of
    the loop that consumes them."""
    spent, run = [0.0], type(engine).run

    def counted(jobs):
        steps = run(engine, jobs)
        try:
            while True:
                t = time.perf_counter()
                try:
                    deltas = next(steps)
                except StopIteration:
                    return
                finally:
                    spent[0] += time.perf_counter() - t
                yield deltas
        finally:
            steps.close()

    engine.run = counted
    return spent


def timed_cpu(fn, *a, **kw):
    """(result, wall seconds, CPU seconds of this process). CPU time is what a shared machine cannot inflate
    by making us wait for a core, so ratios of it are the steadier figure here."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t, time.process_time() - c


def drain(engine, jobs) -> int:
    n = 0
    for deltas in engine.run(jobs):
        n += sum(len(d.token_ids) for d in deltas)
    return n


def machine() -> str:
    threads = os.environ.get("OMP_NUM_THREADS")
    python = platform.python_version()
    return f"{platform.machine()} {os.cpu_count()} cores, Python {python}, OMP_NUM_THREADS={threads}"


def table(rows: list[dict], cols: list[str]) -> str:
    fmt = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(fmt[c]) for c in cols)]
    lines += ["  ".join(_cell(r.get(c)).rjust(fmt[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)


def finish(figures: dict, as_json: bool) -> None:
    figures["machine"] = machine()
    if as_json:
        print(json.dumps(figures))
