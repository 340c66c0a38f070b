"""A results folder seeded with broken runs: every good run is listed, each broken file named in one line,
exit 0.

Non-object manifest, ungraded (NaN / null) rows, a FIFO named like a part, a stray part that claims to replace
another, a missing --results folder, and random-query rows in the Explorer's drill-down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay_demo import store
from relay_demo.results import parts as rio
from relay_demo.ui import explorer_data

REPO = Path(__file__).resolve().parent.parent


def _row(rid, method, i, correct, param=None, spans="[]"):
    return {
        "run_id": rid, "pair": rid, "method": method, "param": param, "benchmark": "arith", "problem_id":
        f"p{i}", "correct": correct, "student_tokens": 10.0, "teacher_tokens": 0.0, "command_tokens": 0.0,
        "calls": 0.0, "flops": 1e9, "wall_s": 0.1, "response": "#### 1", "spans": spans, "extracted": "1",
        "finish_reason": "eos",
    }  # fmt: skip


def _run(results: Path, rid: str, first_correct=1.0) -> Path:
    rows = [_row(rid, "student", i, first_correct if i == 0 else float(i % 2)) for i in range(4)]
    rows += [_row(rid, "teacher", i, 1.0) for i in range(4)]
    with rio.open_run(results, rid, {"pair": rid}) as w:
        w.add(rows)
    return results / "runs" / rid


@pytest.fixture()
def broken(tmp_path):
    res = tmp_path / "results"
    _run(res, "good")
    (_run(res, "listman") / "manifest.json").write_text("[1, 2]")
    (_run(res, "numman") / "manifest.json").write_text("7")
    _run(res, "nan", first_correct=float("nan"))
    _run(res, "null", first_correct=None)
    os.mkfifo(_run(res, "fifo") / "samples.parquet" / "part-000777.parquet")
    # a stray part claiming to replace the real one, without its rows: honouring it would hide 8 rows
    stray = _run(res, "stray") / "samples.parquet"
    rio._write_part(stray, 99, rio.to_table([_row("stray", "student", 9, 1.0)]), ["part-000001.parquet"])
    return res


def test_every_good_run_is_listed_and_each_broken_file_named(broken):
    with pytest.warns(UserWarning):
        s = store.Store(broken)
    df = s.summary()
    assert sorted(set(df["pair"])) == ["fifo", "good", "listman", "nan", "null", "numman", "stray"]
    n = df.set_index(["pair", "method"])["n"]
    assert n["stray", "student"] == 4 and n["stray", "teacher"] == 4  # the real part's rows stay visible
    assert n["nan", "student"] == 3 and n["null", "student"] == 3  # the ungraded row is left out, not a 0
    skipped = {str(p.relative_to(broken)): why for p, why in s.skipped}
    assert "JSON object" in skipped["runs/listman/manifest.json"]
    assert "JSON object" in skipped["runs/numman/manifest.json"]
    assert "runs/fifo/samples.parquet/part-000777.parquet" in skipped
    assert "lacks some of its rows" in skipped["runs/stray/samples.parquet/part-000099.parquet"]
    assert "without a valid grade" in skipped["runs/nan"] and "without a valid grade" in skipped["runs/null"]


def test_the_cli_lists_good_runs_names_broken_ones_and_exits_0(broken):
    out = subprocess.run(
        [sys.executable, "-m", "relay_demo.store", "summary", "--results", str(broken)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    for pair in ("good", "listman", "fifo", "stray"):
        assert pair in out.stdout
    warned = [line for line in out.stderr.splitlines() if line.startswith("warning: skipping")]
    assert len(warned) == 6  # two manifests, the FIFO, the stray part, two runs with ungraded rows


def test_a_writer_never_deletes_rows_a_stray_part_claims(broken):
    with pytest.raises(ValueError, match="lacks some of its rows"):
        rio.open_run(broken, "stray", {"pair": "stray"})
    assert (broken / "runs" / "stray" / "samples.parquet" / "part-000001.parquet").is_file()


def test_a_missing_results_folder_is_an_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "relay_demo.store", "summary", "--results", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 2 and "no such folder" in out.stderr and "Traceback" not in out.stderr


def test_drill_down_of_a_random_query_row_shows_no_trace_but_no_crash(tmp_path):
    res = tmp_path / "results"
    rows = [
        _row(
            "rq",
            "random-query",
            0,
            0.5,
            param=0.5,
            spans=json.dumps({"expectation_of": ["s", "t"], "p": 0.5}),
        )
    ]
    with rio.open_run(res, "rq", {"pair": "rq"}) as w:
        w.add(rows)
    html = explorer_data.sample_trace(res, "rq", "arith", json.dumps(["random-query", 0.5, "p0"]))
    assert "#### 1" in html  # the response, shown as the student's
    assert explorer_data.trace_spans('{"a": 1}') == [] and explorer_data.trace_spans("[1, 2]") == []
    assert explorer_data.trace_spans('[{"source": "teacher", "text": "x"}]') == [
        {"source": "teacher", "text": "x"}
    ]
