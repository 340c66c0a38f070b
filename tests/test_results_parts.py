"""Chunked, resumable results files (relay_demo/results/parts.py), including SIGKILL at random moments.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_results_parts.py -q
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from relay_demo.results import parts as rio

ROOT = Path(__file__).resolve().parents[1]

# A fake, fast row producer run in a subprocess: rows are a pure function of their key, so an interrupted and
# resumed run must end with exactly the rows of an uninterrupted one. Small chunks and max_parts=3 make parts
# and compactions happen all the time, so kills land in the middle of both.
WRITER = r"""
import hashlib, sys, time
from relay_demo.results import parts as rio

results, run_id, paced = sys.argv[1], sys.argv[2], sys.argv[3] == "paced"
methods = [("student", None), ("confidence", 0.5), ("confidence", 0.9)]

def row(method, param, i):
    h = int(hashlib.sha256(f"{method}{param}{i}".encode()).hexdigest()[:8], 16)
    return {"run_id": run_id, "pair": "toy", "method": method, "param": param, "benchmark": "arith",
            "problem_id": f"p{i:03d}", "correct": float(h % 2), "student_tokens": float(h % 97),
            "teacher_tokens": float(h % 13), "command_tokens": 0.0, "calls": float(h % 3), "flops": float(h),
            "wall_s": 0.0, "response": f"#### {h % 1000}", "spans": "[]", "extracted": str(h % 1000),
            "finish_reason": "eos"}

w = rio.open_run(results, run_id, {"job": "fake"}, chunk_rows=7, max_parts=3)
print("ready", len(w.done), flush=True)
for method, param in methods:
    for i in range(120):
        if not w.is_done(method, param, "arith", f"p{i:03d}"):
            if paced:  # one row per line the test sends: it decides how far the writer gets before its kill
                sys.stdin.readline()
            w.add([row(method, param, i)])
            if paced:
                print("added", flush=True)
w.close()
print("finished", flush=True)
"""


def _row(i: int, method: str = "student", param: float | None = None, **kw) -> dict:
    base = {
        "run_id": "r",
        "pair": "toy",
        "method": method,
        "param": param,
        "benchmark": "arith",
        "problem_id": f"p{i}",
        "correct": 1.0,
        "student_tokens": 3.0,
        "teacher_tokens": 1.0,
        "command_tokens": 0.0,
        "calls": 1.0,
        "flops": 10.0,
        "wall_s": 0.1,
        "response": "r",
        "spans": "[]",
        "extracted": None,
        "finish_reason": "eos",
    }
    return base | kw


def _spawn(results: Path, run_id: str, pace: str) -> subprocess.Popen:
    """The writer: ``pace`` "paced" (one row per line sent to it) or "free" (as fast as it goes)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", WRITER, str(results), run_id, pace]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["method", "param", "problem_id"], na_position="first").reset_index(drop=True)


def test_chunked_write_and_resume(tmp_path):
    with rio.open_run(tmp_path, "r", {"a": 1}, chunk_rows=2) as w:
        assert w.add([_row(i) for i in range(5)]) == 5
    parts, dead = rio.live_parts(tmp_path / "runs" / "r")
    assert len(parts) == 1 and not dead  # compacted on close
    with rio.open_run(tmp_path, "r", {"a": 1}, chunk_rows=2) as w:
        assert w.is_done("student", None, "arith", "p3")
        assert not w.is_done("student", 0.5, "arith", "p3")
        assert w.add([_row(i) for i in range(7)]) == 2  # only the two new keys
        assert w.add([_row(1, "confidence", 0.5)]) == 1
    df = rio.read_samples(tmp_path / "runs" / "r")
    assert len(df) == 8 and not df.duplicated(["method", "param", "problem_id"]).any()
    manifest = rio.read_manifest(tmp_path / "runs" / "r")
    assert manifest["finished_at"] and len(manifest["sessions"]) == 2 and manifest["rows"] == 8
    assert "pandas" in manifest["packages"] and "machine" in manifest and "commit" in manifest["git"]


def test_drop_removes_a_method_for_regeneration(tmp_path):
    with rio.open_run(tmp_path, "r", {"a": 1}, chunk_rows=2) as w:
        w.add([_row(i) for i in range(3)] + [_row(i, "relay") for i in range(3)])
        w.add([_row(i, "confidence", 0.5) for i in range(2)])  # still buffered when drop runs
        assert w.drop(["relay", "unknown"]) == 3
        assert not w.is_done("relay", None, "arith", "p0") and w.is_done("confidence", 0.5, "arith", "p1")
        assert w.drop(["relay"]) == 0
        assert w.add([_row(0, "relay", correct=0.0)]) == 1  # generated again
    df = rio.read_samples(tmp_path / "runs" / "r")
    assert sorted(df["method"].value_counts().items()) == [("confidence", 2), ("relay", 1), ("student", 3)]
    assert df.loc[df["method"] == "relay", "correct"].tolist() == [0.0]
    assert len(rio.live_parts(tmp_path / "runs" / "r")[0]) == 1


def test_resume_with_other_settings_is_refused(tmp_path):
    rio.open_run(tmp_path, "r", {"temperature": 0.7}).close()
    with pytest.raises(ValueError, match="other settings"):
        rio.open_run(tmp_path, "r", {"temperature": 0.0})


def test_second_writer_is_refused(tmp_path):
    w = rio.open_run(tmp_path, "r", {})
    with pytest.raises(RuntimeError, match="another process"):
        rio.RunWriter(tmp_path / "runs" / "r")
    w.close()


def test_bad_rows_and_ids_are_errors(tmp_path):
    with pytest.raises(ValueError, match="run_id"):
        rio.open_run(tmp_path, "../escape", {})
    w = rio.open_run(tmp_path, "r", {})
    with pytest.raises(ValueError, match="missing columns"):
        w.add([{"method": "x", "param": None, "benchmark": "b", "problem_id": "1"}])
    w.close()


def test_dead_parts_and_temp_files_from_a_killed_compaction_are_ignored(tmp_path):
    run = tmp_path / "runs" / "r"
    samples = run / rio.SAMPLES
    samples.mkdir(parents=True)
    rio._write_part(samples, 1, rio.to_table([_row(0)]), covers=[])
    rio._write_part(samples, 2, rio.to_table([_row(1)]), covers=[])
    # a compaction killed after its rename, before the deletes; and a half-written temporary file
    both = rio.to_table([_row(0), _row(1)])
    rio._write_part(samples, 3, both, covers=["part-000001.parquet", "part-000002.parquet"])
    (samples / ".part-000004.parquet.tmp").write_bytes(b"half a file")
    assert len(rio.read_samples(run)) == 2  # covered parts are dead even before their deletion
    w = rio.open_run(tmp_path, "r", {})  # a new writer deletes the dead parts and the temporary file
    assert sorted(p.name for p in samples.iterdir()) == ["part-000003.parquet"]
    assert w.is_done("student", None, "arith", "p1")
    w.add([_row(2)])
    w.close()
    assert sorted(rio.read_samples(run)["problem_id"]) == ["p0", "p1", "p2"]


def test_sigkill_at_random_rows_loses_and_duplicates_nothing(tmp_path):
    reference = _spawn(tmp_path / "ref", "run", "free")
    assert reference.wait(timeout=120) == 0
    expected = _sorted(rio.read_samples(tmp_path / "ref" / "runs" / "run"))
    assert len(expected) == 360

    rng = random.Random(1234)
    progress = []
    for _ in range(3):
        # the writer adds one row per line it is sent: after a random number of rows it gets one more go-ahead
        # and the kill at once, so the kill lands while that row is added or flushed (or just before), and the
        # writer can never have finished (no wall-clock luck: it waits for the test between rows)
        proc = _spawn(tmp_path / "killed", "run", "paced")
        ready = proc.stdout.readline()
        assert ready.startswith("ready"), ready
        progress.append(int(ready.split()[1]))
        for _ in range(rng.randint(8, 60)):
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith("added")
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    final = _spawn(tmp_path / "killed", "run", "free")
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0 and "finished" in out
    progress.append(int(out.split()[1]))
    got = _sorted(rio.read_samples(tmp_path / "killed" / "runs" / "run"))
    print("rows found at each start:", progress)
    assert 0 < progress[-1] < 360, f"resume did not start part-way: {progress}"
    pd.testing.assert_frame_equal(got, expected)
    manifest = json.loads((tmp_path / "killed" / "runs" / "run" / "manifest.json").read_text())
    assert len(manifest["sessions"]) == 4 and manifest["finished_at"]
