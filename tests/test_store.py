"""The DuckDB store over a toy results folder built here through relay_demo.results, its CLI, and the charts.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_store.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline.evaluate import EvalCfg, MethodCfg, random_query_rows
from relay_demo import charts, reported, store
from relay_demo.results import metrics as M
from relay_demo.results import parts as rio

N = 10
# per problem: (student correct, teacher correct); student 4/10, teacher 8/10
S_OK = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
T_OK = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]


def _row(
    method, param, i, correct, st, tt, flops=1e9, calls=0.0, pair="toy", bench="arith", run_id="toy-run"
):
    return {
        "run_id": run_id,
        "pair": pair,
        "method": method,
        "param": param,
        "benchmark": bench,
        "problem_id": f"p{i}",
        "correct": float(correct),
        "student_tokens": float(st),
        "teacher_tokens": float(tt),
        "command_tokens": 0.0,
        "calls": calls,
        "flops": flops,
        "wall_s": 0.1,
        "response": "#### 1",
        "spans": "[]",
        "extracted": "1",
        "finish_reason": "eos",
    }


def _build(results):
    rows = []
    for i in range(N):
        rows.append(_row("student", None, i, S_OK[i], 100, 0, flops=1e9))
        rows.append(_row("teacher", None, i, T_OK[i], 0, 100, flops=5e9))
        rows.append(_row("relay", None, i, S_OK[i] or (i < 6), 95, 5, flops=1.3e9, calls=1))  # 6/10 at 5%
        for tau, k in ((0.3, 5), (0.6, 7), (0.9, 8)):  # confidence: 5/10, 7/10, 8/10
            rows.append(_row("confidence", tau, i, T_OK[i] if i < k else 0, 90, 10 * k, flops=2e9))
    with rio.open_run(results, "toy-run", {"pair": "toy"}) as w:
        w.add(rows)
        w.flush()
        cfg = EvalCfg(pair="toy", run_id="toy-run", benchmarks=["arith"], methods=[MethodCfg("student")])
        w.add(random_query_rows(cfg, rio.read_samples(w.run_dir), "arith", [0.0, 0.5, 1.0]))
    # a second pair in its own run, to check the filters
    with rio.open_run(results, "other-run", {"pair": "other"}) as w:
        w.add([_row("student", None, i, 1, 10, 0, pair="other", bench="gsm8k") for i in range(3)])


@pytest.fixture
def results(tmp_path):
    _build(tmp_path)
    return tmp_path


def _one(df, method, param=None):
    sel = df[(df["method"] == method) & (df["param"].isna() if param is None else df["param"] == param)]
    assert len(sel) == 1, (method, param, sel)
    return sel.iloc[0]


def test_points_and_filters(results):
    st = store.Store(results)
    assert st.skipped == [] and st.pairs() == ["other", "toy"]
    assert st.benchmarks("toy") == ["arith"]
    pts = st.points("toy", "arith")
    assert _one(pts, "student")["accuracy"] == pytest.approx(0.4)
    assert _one(pts, "teacher")["call_ratio"] == pytest.approx(1.0)
    relay = _one(pts, "relay")
    assert relay["n"] == N
    assert (relay["accuracy"], relay["call_ratio"]) == (pytest.approx(0.6), pytest.approx(0.05))
    assert _one(pts, "confidence", 0.6)["accuracy"] == pytest.approx(0.7)
    rq = _one(pts, "random-query", 0.5)
    assert rq["accuracy"] == pytest.approx(0.6) and rq["call_ratio"] == pytest.approx(0.5)
    assert rq["flops"] == pytest.approx(3e9)
    assert len(st.samples(pair="other")) == 3
    assert set(st.runs()["run_id"]) == {"toy-run", "other-run"}


def test_summary_metrics(results):
    df = store.Store(results).summary("toy", "arith", n_seeds=500)
    relay = _one(df, "relay")
    assert relay["apgr"] == pytest.approx(0.5)  # (0.6 - 0.4) / (0.8 - 0.4)
    assert relay["p_star"] == pytest.approx(0.5)
    assert relay["saving_query"] == pytest.approx(1 - 0.05 / 0.5)
    assert relay["saving_call"] == pytest.approx(1 - 0.05 / 0.5)  # equal lengths: token share = query share
    assert relay["saving_flops"] == pytest.approx(1 - 1.3e9 / 3e9)
    assert relay["cpt50"] == pytest.approx(0.05)  # the single point reaches exactly 50% of the gap
    conf = _one(df, "confidence", 0.3)
    curve = [(0.5 / 1.4, 0.5), (0.7 / 1.6, 0.7), (0.8 / 1.7, 0.8)]
    assert conf["cpt80"] == pytest.approx(M.cpt(curve, 0.4, 0.8, 0.8))
    rq = _one(df, "random-query", 0.5)
    assert rq["acc_lo"] < 0.6 < rq["acc_hi"] and pd.isna(rq["saving_call"])
    assert pd.isna(_one(df, "student")["saving_call"])


def test_summary_cli_json(results, capsys):
    assert store.main(["summary", "--json", "--results", str(results)]) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {"pair", "benchmark", "method", "param", "n", "accuracy", "call_ratio", "flops", "apgr"}
    assert keys <= set(rows[0])
    toy = {(r["method"], r["param"]) for r in rows if r["pair"] == "toy"}
    want = {("student", None), ("teacher", None), ("relay", None), ("confidence", 0.9), ("random-query", 0.5)}
    assert want <= toy
    other = [r for r in rows if r["pair"] == "other"]
    assert len(other) == 1 and other[0]["apgr"] is None  # no teacher: no APGR, and valid JSON (no NaN)
    assert store.main(["summary", "--pair", "other", "--benchmark", "gsm8k", "--results", str(results)]) == 0
    table = capsys.readouterr().out
    assert "other" in table and "toy" not in table and "100.00%" in table


def test_summary_cli_into_a_closed_pipe_ends_quietly(results):
    """`summary --json | head -1`: the reader leaves before the rows are written; no traceback, exit 141."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "relay_demo.store", "summary", "--json", "--results", str(results)]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # closed long before the child has imported duckdb and pandas
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_corrupt_and_foreign_files_are_named_and_skipped(results):
    samples = results / "runs" / "toy-run" / rio.SAMPLES
    good = sorted(samples.glob("part-*.parquet"))
    assert len(good) == 1
    (samples / "part-900000.parquet").write_bytes(b"PAR1 this is not parquet at all")
    truncated = good[0].read_bytes()[:-100]
    (samples / "part-900001.parquet").write_bytes(truncated)
    pq.write_table(pa.table({"x": [1, 2]}), samples / "part-900002.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), samples / "extra.parquet")  # foreign: not a part name
    pq.write_table(pa.table({"x": [1, 2]}), samples.parent / "scores.parquet")
    with pytest.warns(UserWarning) as caught:
        st = store.Store(results)
    text = " ".join(str(w.message) for w in caught)
    names = {
        "part-900000.parquet",
        "part-900001.parquet",
        "part-900002.parquet",
        "extra.parquet",
        "scores.parquet",
    }
    for name in names:
        assert name in text
    assert "missing columns" in text
    assert {p.name for p, _ in st.skipped} == names
    assert len(st.samples("toy")) == N * 9  # the good part still loads


def test_cli_names_a_corrupt_file_on_stderr(results, capsys):
    bad = results / "runs" / "toy-run" / rio.SAMPLES / "part-900000.parquet"
    bad.write_bytes(b"garbage")
    assert store.main(["summary", "--results", str(results)]) == 0
    captured = capsys.readouterr()
    assert "part-900000.parquet" in captured.err and "relay" in captured.out


def test_empty_results_folder(tmp_path):
    st = store.Store(tmp_path)
    assert st.summary().empty and st.pairs() == []


def test_charts(results):
    df = store.Store(results).summary("toy", "arith", n_seeds=200)
    fig = charts.accuracy_vs_call_ratio(df, log_x=True, reported=pd.DataFrame(reported.points()))
    names = [t.name for t in fig.data]
    assert {"relay", "confidence", "random-query", reported.LABEL, "random-query 95% band"} <= set(names)
    conf = next(t for t in fig.data if t.name == "confidence")
    assert conf.mode == "lines+markers" and list(conf.x) == sorted(conf.x)  # a sweep is a line along x
    assert fig.layout.xaxis.type == "log"
    assert any("student" in (a.text or "") for a in fig.layout.annotations)  # reference lines
    fl = charts.flops_vs_accuracy(df)
    assert {"student", "teacher", "relay"} <= {t.name for t in fl.data}
    relay = next(t for t in fl.data if t.name == "relay")
    assert relay.error_y.array[0] == pytest.approx(100 * (_one(df, "relay")["acc_hi"] - 0.6))
    with pytest.raises(ValueError, match="lacks columns"):
        charts.accuracy_vs_call_ratio(df.drop(columns=["call_ratio"]))


def test_every_point_carries_its_95_percent_interval(results):
    from relay_demo import stats

    df = store.Store(results).summary("toy", "arith", n_seeds=200)
    fig = charts.accuracy_vs_call_ratio(df)
    lo, hi = stats.wilson(6, 10)
    relay = next(t for t in fig.data if t.name == "relay")
    assert relay.error_y.type == "data" and relay.error_y.symmetric is False
    assert relay.error_y.array == pytest.approx((100 * (hi - 0.6),))
    assert relay.error_y.arrayminus == pytest.approx((100 * (0.6 - lo),))
    assert relay.error_x.array == pytest.approx((0,)) and list(relay.customdata) == ["relay"]
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in relay.text[0] and "n = 10 problems" in relay.text[0]
    conf = next(t for t in fig.data if t.name == "confidence")
    assert len(conf.error_y.array) == 3 and all(v > 0 for v in conf.error_y.array)
    assert list(conf.customdata) == ["confidence@0.3", "confidence@0.6", "confidence@0.9"]
    assert next(t for t in fig.data if t.name == "random-query").error_y.array is None  # its band instead
    student = next(a.text for a in fig.layout.annotations if a.text.startswith("student"))
    assert (
        student == f"student 40.0% [{100 * stats.wilson(4, 10)[0]:.1f}, {100 * stats.wilson(4, 10)[1]:.1f}]"
    )
    decode = charts.decode_vs_accuracy(df)
    assert any(t.error_y.array is not None for t in decode.data)
    apgr = charts.apgr_vs_call_ratio(df.assign(apgr_lo=df["apgr"] - 0.1, apgr_hi=df["apgr"] + 0.2))
    relay = next(t for t in apgr.data if t.name.startswith("relay"))
    assert relay.error_y.array == pytest.approx((20,)) and relay.error_y.arrayminus == pytest.approx((10,))
    assert "APGR 50.0% [40.0, 70.0]" in relay.text[0]


def test_mean_rows_over_benchmarks(tmp_path):
    rows = []
    for bench, (s_acc, t_acc, r_acc) in {"a": (2, 6, 4), "b": (4, 8, 4)}.items():  # out of 10 problems each
        for i in range(N):
            rows.append(_row("student", None, i, i < s_acc, 100, 0, bench=bench))
            rows.append(_row("teacher", None, i, i < t_acc, 0, 100, bench=bench))
            rows.append(_row("relay", None, i, i < r_acc, 98, 2, bench=bench))
        rows.append(_row("confidence", 0.5, 0, 1, 50, 50, bench=bench))
    rows.append(_row("router", 0.5, 0, 1, 50, 50, bench="a"))  # on one benchmark only: no mean row
    with rio.open_run(tmp_path, "m", {}) as w:
        w.add(rows)
    df = store.Store(tmp_path).summary("toy", mean=True)
    mean = df[df["benchmark"] == store.MEAN]
    # in METHOD_ORDER; the router, on one benchmark only, has no mean
    assert list(mean["method"]) == ["student", "teacher", "relay", "confidence"]
    relay = _one(mean, "relay")
    assert relay["accuracy"] == pytest.approx(0.4) and relay["call_ratio"] == pytest.approx(0.02)
    assert relay["apgr"] == pytest.approx((0.4 - 0.3) / (0.7 - 0.3))
    assert relay["saving_query"] == pytest.approx(1 - 0.02 / 0.25)
    assert relay["n"] == 2 * N


def test_a_problem_evaluated_by_two_runs_counts_once(results):
    import time

    time.sleep(1.1)  # manifests record seconds: the rerun must be strictly later
    with rio.open_run(results, "rerun", {"pair": "toy"}) as w:
        w.add([{**_row("student", None, i, 1, 100, 0), "run_id": "rerun"} for i in range(N)])
    st = store.Store(results)
    assert len(st.query("SELECT * FROM all_samples WHERE pair = 'toy' AND method = 'student'")) == 2 * N
    student = _one(st.points("toy", "arith"), "student")
    assert (student["n"], student["accuracy"]) == (N, 1.0)  # the later run's rows


def test_rows_of_a_train_split_are_their_own_benchmark(tmp_path):
    """A dev run on held-out train problems (ids "gsm8k-train/<n>") never mixes into the test split's."""
    rows = []
    for i in range(4):
        test = _row("student", None, i, 1, 100, 0, bench="gsm8k")
        dev = _row("student", None, i, 0, 100, 0, bench="gsm8k")
        test["problem_id"], dev["problem_id"] = f"gsm8k/{i}", f"gsm8k-train/{i}"
        rows += [test, dev]
    with rio.open_run(tmp_path, "toy-run", {"pair": "toy"}) as w:
        w.add(rows)
    points = store.Store(tmp_path).points("toy").set_index("benchmark")
    assert points.loc["gsm8k", "accuracy"] == 1.0 and points.loc["gsm8k", "n"] == 4
    assert points.loc["gsm8k-train", "accuracy"] == 0.0 and points.loc["gsm8k-train", "n"] == 4


# ---------------------------------------------------------------- cost against the teacher alone

SPLIT = {  # per problem: (student, teacher decode, teacher prefill) FLOPs and the wall time
    "student": (1e9, 0.0, 0.0, 0.1),
    "teacher": (0.0, 4e9, 1e9, 0.4),
    "relay": (1e9, 0.2e9, 0.6e9, 0.2),
}


def _split_rows(run_id="split-run", methods=SPLIT):
    rows = []
    for i in range(N):
        for method, (fs, fd, fp, wall) in methods.items():
            row = _row(method, None, i, T_OK[i], 90, 10, flops=fs + fd + fp, pair="split")
            row.update(run_id=run_id, wall_s=wall)
            row.update(flops_student=fs, flops_teacher_decode=fd, flops_teacher_prefill=fp)
            rows.append(row)
    return rows


def test_cost_against_the_teacher_alone_on_the_same_problems(tmp_path, capsys):
    with rio.open_run(tmp_path, "split-run", {"pair": "split"}) as w:
        w.add(_split_rows())
        cfg = EvalCfg(pair="split", run_id="split-run", benchmarks=["arith"], methods=[MethodCfg("student")])
        w.flush()
        w.add(random_query_rows(cfg, rio.read_samples(w.run_dir), "arith", [0.5]))
    pts = store.Store(tmp_path).points("split")
    relay = _one(pts, "relay")
    assert relay["flops_vs_teacher"] == pytest.approx(1.8 / 5)
    assert relay["decode_vs_teacher"] == pytest.approx(1.2 / 5)  # student + teacher-written tokens
    assert relay["prefill_vs_teacher"] == pytest.approx(0.6 / 5)
    assert relay["wall_vs_teacher"] == pytest.approx(0.5)
    assert relay["flops_teacher_prefill"] == pytest.approx(0.6e9)
    assert _one(pts, "student")["decode_vs_teacher"] == pytest.approx(0.2)  # no call: the size ratio
    assert _one(pts, "teacher")[["flops_vs_teacher", "wall_vs_teacher"]].tolist() == [1.0, 1.0]
    rq = _one(pts, "random-query", 0.5)  # the expectation of the split too
    assert rq["flops_teacher_decode"] == pytest.approx(2e9) and rq["decode_vs_teacher"] == pytest.approx(0.5)
    assert store.main(["summary", "--pair", "split", "--results", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "decode_vs_teacher" in table and "24.00%" in table and "12.00%" in table and "50.00%" in table


def test_a_run_written_before_the_split_still_loads(tmp_path):
    """An old part (no split columns) beside a new run: nulls where it has nothing, its total FLOPs and wall
    time against its own teacher rows still computed; a writer resuming it adds rows with the split."""
    old_schema = pa.schema([f for f in rio.SCHEMA if f.name not in rio.ADDED])
    with rio.open_run(tmp_path, "old-run", {"pair": "split"}):
        pass
    rows = [{k: v for k, v in r.items() if k not in rio.ADDED} for r in _split_rows("old-run")]
    part = tmp_path / "runs" / "old-run" / rio.SAMPLES / "part-000001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), part)
    st = store.Store(tmp_path)
    assert st.skipped == []
    relay = _one(st.points("split"), "relay")
    assert pd.isna(relay["decode_vs_teacher"]) and pd.isna(relay["flops_student"])
    assert relay["flops_vs_teacher"] == pytest.approx(1.8 / 5) and relay["wall_vs_teacher"] == pytest.approx(
        0.5
    )
    assert rio.read_samples(part.parent.parent)["flops_student"].isna().all()
    more = [dict(r, problem_id=f"q{r['problem_id']}") for r in _split_rows("old-run")]
    with rio.open_run(tmp_path, "old-run", {"pair": "split"}) as w:  # resume: new rows, then compaction
        w.add(more)
    df = rio.read_samples(part.parent.parent)
    assert len(df) == 2 * len(rows) and df["flops_student"].notna().sum() == len(more)
    relay = _one(store.Store(tmp_path).points("split"), "relay")
    assert pd.isna(relay["flops_student"])  # half the rows have no split: no average that hides it
    assert relay["decode_vs_teacher"] == pytest.approx(1.2 / 5)  # over the rows that have one


def test_summary_of_a_pair_or_benchmark_without_results_is_an_error_naming_what_there_is(results, capsys):
    with pytest.raises(SystemExit) as e:
        store.main(["summary", "--pair", "nope", "--results", str(results)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--pair nope: no results" in err and "other, toy" in err
    with pytest.raises(SystemExit) as e:
        store.main(["summary", "--pair", "toy", "--benchmark", "gsm8k", "--results", str(results)])
    assert e.value.code == 2 and "benchmarks: arith" in capsys.readouterr().err


def test_a_method_that_never_calls_the_teacher_has_no_saving(results):
    """An SFT-only student (6/10, call ratio 0) matches the router at p* = 0.5 but saves nothing: it is
    another student, not a mix of the two models; the relay beside it (5% call ratio) keeps its saving."""
    rows = [_row("sft-only", None, i, S_OK[i] or i < 6, 100, 0, run_id="sft-run") for i in range(N)]
    with rio.open_run(results, "sft-run", {"pair": "toy"}) as w:
        w.add(rows)
    df = store.Store(results).summary("toy", "arith", n_seeds=100)
    sft = _one(df, "sft-only")
    assert sft["p_star"] == pytest.approx(0.5)
    assert sft[["saving_call", "saving_query", "saving_flops"]].isna().all()
    assert _one(df, "relay")["saving_query"] == pytest.approx(1 - 0.05 / 0.5)
    assert M.paper_saving(0.6, 0.0, 0.4, 0.8) is None and M.paper_saving(
        0.6, 0.05, 0.4, 0.8
    ) == pytest.approx(0.9)


def test_wall_ratios_of_a_run_written_under_several_commits_are_flagged(results, capsys):
    """A run resumed or redone after a code change: its rows' wall times and its teacher's may be of
    different loops, so the summary flags them (a column, a mark in the table) and leaves other runs alone."""
    path = results / "runs" / "toy-run" / rio.MANIFEST
    manifest = json.loads(path.read_text())
    first = manifest["sessions"][0]
    manifest["sessions"] = [
        {**first, "git": {"commit": "a" * 40, "dirty": False}},
        {**first, "git": {"commit": "b" * 40, "dirty": False}},
    ]
    path.write_text(json.dumps(manifest))
    with rio.open_run(results, "solo-run", {"pair": "solo"}) as w:  # one session: one commit
        w.add(
            [
                _row(m, None, i, 1, 10, 0, pair="solo", run_id="solo-run")
                for m in ("student", "teacher")
                for i in range(3)
            ]
        )
    df = store.Store(results).summary()
    assert df.loc[df["pair"] == "toy", "wall_mixed"].all()
    assert not df.loc[df["pair"] == "solo", "wall_mixed"].any()
    assert store.main(["summary", "--pair", "toy", "--results", str(results)]) == 0
    table = capsys.readouterr().out
    assert "100.00%*" in table and "written under several commits" in table
    assert store.main(["summary", "--pair", "solo", "--results", str(results)]) == 0
    assert "*" not in capsys.readouterr().out


# ---------------------------------------------------------------- intervals and paired comparisons


def test_summary_carries_95_percent_intervals(results, capsys):
    from relay_demo import stats

    df = store.Store(results).summary("toy", "arith", n_seeds=200)
    relay = _one(df, "relay")
    assert (relay["acc_lo"], relay["acc_hi"]) == pytest.approx(stats.wilson(6, 10))
    # 4 problems tell the student from the teacher: some resamples have no gap, where APGR is undefined
    assert pd.isna(relay["apgr_lo"]) and pd.isna(relay["apgr_hi"])
    assert relay["call_ratio_lo"] == relay["call_ratio_hi"] == pytest.approx(0.05)  # 5 of 100, every problem
    rq = _one(df, "random-query", 0.5)
    assert rq["acc_lo"] < 0.6 < rq["acc_hi"] and (rq["acc_lo"], rq["acc_hi"]) != pytest.approx(
        stats.wilson(6, 10)
    )  # the simulated band, not Wilson's on expectations
    again = store.Store(results).summary("toy", "arith", n_seeds=200)
    pd.testing.assert_frame_equal(df, again)  # seeded: a table regenerates identically
    assert store.main(["summary", "--json", "--pair", "toy", "--results", str(results)]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["method"] == "relay")
    assert {"acc_lo", "acc_hi", "apgr_lo", "apgr_hi", "call_ratio_lo", "call_ratio_hi"} <= set(row)
    assert store.main(["summary", "--pair", "toy", "--results", str(results)]) == 0
    assert "accuracy 95%" in capsys.readouterr().out


def test_apgr_interval_resamples_method_student_and_teacher_together(tmp_path):
    rows = []
    for i in range(40):  # the toy pattern four times: student 16/40, teacher 32/40, relay 24/40
        j = i % N
        rows.append(_row("student", None, i, S_OK[j], 100, 0))
        rows.append(_row("teacher", None, i, T_OK[j], 0, 100))
        rows.append(_row("relay", None, i, S_OK[j] or j < 6, 95, 5 * (j % 3)))  # calls on some problems
    with rio.open_run(tmp_path, "toy-run", {"pair": "toy"}) as w:
        w.add(rows)
    df = store.Store(tmp_path).summary("toy", "arith", n_seeds=10)
    relay, student, teacher = _one(df, "relay"), _one(df, "student"), _one(df, "teacher")
    assert (student["apgr_lo"], student["apgr_hi"], teacher["apgr_lo"]) == (0, 0, 1)  # by definition
    assert relay["apgr"] == pytest.approx(0.5) and 0.2 < relay["apgr_lo"] < 0.5 < relay["apgr_hi"] < 0.8
    assert relay["call_ratio_lo"] < relay["call_ratio"] < relay["call_ratio_hi"]


def test_compare_two_settings_on_the_same_problems(results, capsys):
    c = store.Store(results).compare("toy", "arith", "relay", "confidence@0.3")
    assert (c.n, c.diff.mcnemar.a_only, c.diff.mcnemar.b_only) == (10, 1, 0)  # relay alone right on p5
    assert c.diff.accuracy == pytest.approx(0.1) and c.diff.mcnemar.p == 1.0
    assert c.diff.apgr == pytest.approx(0.1 / 0.4)
    assert store.main(["compare", "--pair", "toy", "--benchmark", "arith", "relay", "confidence@0.3",
                       "--json", "--results", str(results)]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert (out["a_only"], out["b_only"], out["mcnemar_p"]) == (1, 0, 1.0)
    assert out["accuracy_diff_lo"] <= 0.1 <= out["accuracy_diff_hi"] and "ahead of" in out["verdict"]
    assert store.main(["compare", "--pair", "toy", "--benchmark", "arith", "relay", "relay",
                       "--results", str(results)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "level" in text and "[+0.0, +0.0]" in text and "no problem is answered differently" in text


@pytest.mark.parametrize(
    "a, b, message",
    [
        ("relay@3", "student", "no setting 'relay@3'"),
        ("random-query@0.5", "relay", "expectations"),
    ],
)
def test_compare_refuses_bad_settings_with_a_message(results, capsys, a, b, message):
    with pytest.raises(ValueError, match=message):
        store.Store(results).compare("toy", "arith", a, b)
    with pytest.raises(SystemExit) as exit_:
        store.main(["compare", "--pair", "toy", "--benchmark", "arith", a, b, "--results", str(results)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_compare_refuses_runs_on_different_problems(results, capsys):
    with rio.open_run(results, "later-run", {"pair": "toy"}) as w:  # another sample: p5..p14
        w.add([_row("router", 0.9, i, 1, 90, 10) | {"run_id": "later-run"} for i in range(5, 15)])
    with pytest.raises(ValueError, match="not on the same problems: 10 and 10 problems, 5 in common"):
        store.Store(results).compare("toy", "arith", "relay", "router@0.9")
    with pytest.raises(SystemExit) as exit_:
        store.main(["compare", "--pair", "toy", "--benchmark", "arith", "router@0.9", "relay",
                    "--results", str(results)])  # fmt: skip
    assert exit_.value.code == 2 and "later-run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no results for pair 'nope'"):
        store.Store(results).compare("nope", "arith", "relay", "student")
    with pytest.raises(ValueError, match="no benchmark 'gsm8k'"):
        store.Store(results).compare("toy", "gsm8k", "relay", "student")


def _dtype_run(results, run_id, dtype, student_ok, pair="duo"):
    engine = {"dtype": dtype} if dtype else {}
    config = {"pair": pair, "engine": engine, "methods": [{"name": "student"}, {"name": "teacher"}]}
    with rio.open_run(results, run_id, config) as w:
        w.add(
            [_row("student", None, i, student_ok[i], 100, 0, pair=pair, run_id=run_id) for i in range(N)]
            + [_row("teacher", None, i, T_OK[i], 0, 100, 5e9, pair=pair, run_id=run_id) for i in range(N)]
        )


def test_a_pair_run_in_two_dtypes_is_two_pairs_never_mixed_or_paired(tmp_path, capsys):
    # the same pair, problems and methods, computed in two dtypes: the float32 student solves 8, bfloat16's 4
    _dtype_run(tmp_path, "bf", "bfloat16", S_OK)
    _dtype_run(tmp_path, "f32", "float32", T_OK)
    st = store.Store(tmp_path)
    assert st.pairs() == ["duo · bfloat16", "duo · float32"]  # the newer run hides none of the older one's
    df = st.summary("duo")  # the pair's name selects both
    assert sorted(df["pair"].unique()) == st.pairs()
    acc = df[df["method"] == "student"].set_index("pair")["accuracy"]
    assert (acc["duo · bfloat16"], acc["duo · float32"]) == (0.4, 0.8)
    assert st.points("duo", exact=True).empty  # exactly "duo": no row has that name
    assert set(st.summary("duo · float32", exact=True)["pair"]) == {"duo · float32"}
    with pytest.raises(ValueError, match="several dtypes, compared only within one: duo · bfloat16, duo · f"):
        st.compare("duo", "arith", "student", "teacher")
    c = st.compare("duo · bfloat16", "arith", "student", "teacher")
    assert (c.n, c.diff.mcnemar.a_only, c.diff.mcnemar.b_only) == (N, 0, 4)
    assert store.main(["summary", "--pair", "duo", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "duo · bfloat16" in out and "duo · float32" in out
    assert st.query("SELECT dtype FROM runs ORDER BY run_id")["dtype"].tolist() == ["bfloat16", "float32"]


def test_the_explorer_shows_one_dtype_pair_and_its_own_runs(tmp_path):
    from relay_demo.ui import explorer_data

    _dtype_run(tmp_path, "bf", "bfloat16", S_OK)
    _dtype_run(tmp_path, "f32", "float32", T_OK)
    _dtype_run(tmp_path, "plain", None, S_OK, pair="duo")  # a run of unknown dtype keeps the bare name
    st = store.Store(tmp_path)
    assert st.pairs() == ["duo", "duo · bfloat16", "duo · float32"]
    assert st.run_ids("duo · float32") == ["f32"] and st.run_ids("duo") == ["plain"]
    f = explorer_data.filters(tmp_path, "duo · float32")
    assert (f["pair"], f["benchmarks"], f["methods"]) == ("duo · float32", ["arith"], ["student", "teacher"])
    view = explorer_data.explorer_view(tmp_path, "duo · float32", "arith", [])
    assert view.table["method"].tolist() == ["student", "teacher"]  # one row each: float32's, not bf16's too
    assert view.table["accuracy"].iloc[0] == "80.00%"
    assert "<td>f32</td>" in view.provenance and "<td>bf</td>" not in view.provenance
    bare = explorer_data.explorer_view(tmp_path, "duo", "arith", [])  # only the rows named "duo"
    assert bare.table["method"].tolist() == ["student", "teacher"]
    assert bare.table["accuracy"].iloc[0] == "40.00%" and "<td>plain</td>" in bare.provenance
    assert "<td>f32</td>" not in bare.provenance


def test_a_pair_in_one_dtype_or_of_unknown_dtype_keeps_its_name(tmp_path):
    _dtype_run(tmp_path, "bf", "bfloat16", S_OK)
    _dtype_run(tmp_path, "old", None, T_OK)  # `auto`, recorded before dtypes were: unknown, not a second one
    st = store.Store(tmp_path)
    assert st.pairs() == ["duo"]
    assert st.compare("duo", "arith", "student", "teacher").n == N


def test_report_script_prints_the_readme_tables_from_the_store(results, capsys):
    import runpy

    report = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "report.py"))
    argv = ["--pair", "toy", "--benchmark", "arith", "--results", str(results), "--settings", "student",
            "relay", "confidence@0.6", "relay@2", "--compare", "relay:confidence@0.3", "relay:student",
            "relay@2:student"]  # fmt: skip
    assert report["main"](argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| student | 10 | 40.0% [") and lines[2].endswith(
        "| 0.00% [0.00, 0.00] | 0.0% |"
    )
    # 5 of 100 tokens by the teacher; (0.6 - 0.4) / (0.8 - 0.4) of the gap
    assert lines[3].startswith("| relay | 10 | 60.0% [") and "| 5.00% [5.00, 5.00] | 50.0%" in lines[3]
    assert lines[4].startswith("| confidence@0.6 | 10 | 70.0% [")
    assert lines[5] == "| relay@2 | – | not run yet | | |"
    rows = {line.split(" | ")[0]: line for line in lines[8:]}
    assert rows["| relay vs confidence@0.3"].endswith(
        "| 10 | +10.0 [+0.0, +30.0] | 1 / 0 | 1 | no (within noise) |"
    )
    assert "| 2 / 0 |" in rows["| relay vs student"]
    assert "not comparable yet: no setting 'relay@2'" in rows["| relay@2 vs student"]
    assert report["main"]([*argv[:6], "--settings", "relay", "--calls", "relay", "student", "relay@2"]) == 0
    calls = capsys.readouterr().out.splitlines()[4:]
    assert calls[0].startswith("| setting | problems calling | teacher only: calling / of them · solved |")
    # the relay calls on all 10: teacher-only p4..p7 (solves p4, p5), both fail p8, p9, both solve p0..p3
    assert calls[2] == "| relay | 10 of 10 | 4 / 4 · 2 | 2 / 2 · 0 | 4 / 4 · 4 | 0 / 0 · 0 |"
    assert calls[3] == "| student | 0 of 10 | 0 / 4 · 0 | 0 / 2 · 0 | 0 / 4 · 4 | 0 / 0 · 0 |"
    assert calls[4] == "| relay@2 | not run yet | | | | |"
    with pytest.raises(SystemExit):
        report["main"]([*argv[:6], "--settings", "relay", "--compare", "relay-student"])
    assert "expected A:B" in capsys.readouterr().err


def test_report_script_remakes_the_readme_blocks_and_checks_them(results, tmp_path, capsys):
    import runpy

    report = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "report.py"))
    block = "<!-- report --pair toy --benchmark arith --settings student relay --compare relay:student -->"
    readme = tmp_path / "README.md"
    readme.write_text(f"# Results\n\nSome words.\n\n{block}\n| stale | table |\n<!-- /report -->\n\nAfter.\n")
    argv = ["--results", str(results), "--readme", str(readme)]
    assert report["main"]([*argv, "--check"]) == 1  # stale, and --check leaves the file alone
    assert "| stale | table |" in readme.read_text() and "stale: --pair toy" in capsys.readouterr().out
    assert report["main"](argv) == 0
    text = readme.read_text()
    assert text.startswith("# Results\n\nSome words.\n\n") and text.endswith("<!-- /report -->\n\nAfter.\n")
    body = text.split(block + "\n")[1].split("<!-- /report -->")[0]
    assert body.startswith("\n| setting | n | accuracy [95%] |") and body.endswith("|\n\n")
    assert "| relay | 10 | 60.0% [" in body and "| relay vs student | 10 | +20.0 [" in body
    assert "| stale | table |" not in text
    assert report["main"]([*argv, "--check"]) == 0  # remade: now current
    readme.write_text(f"{block}\nno end mark\n")  # an unclosed block is an error, not a file eaten to its end
    with pytest.raises(SystemExit):
        report["main"](argv)
    assert "needs its own <!-- /report -->" in capsys.readouterr().err
    assert readme.read_text() == f"{block}\nno end mark\n"
    for bad, why in (([*argv[:2], "--check"], "--check goes with --readme"),
                     ([*argv, "--pair", "toy"], "takes each table's arguments from its blocks"),
                     ([*argv[:2], "--readme", str(tmp_path / "none.md")], "cannot read")):  # fmt: skip
        with pytest.raises(SystemExit):
            report["main"](bad)
        assert why in capsys.readouterr().err


def test_the_readme_tables_are_what_the_committed_results_say():
    """Every <!-- report ... --> table of the README is remade from results/ by scripts/report.py: a row
    committed without rerunning `scripts/report.py --readme README.md` fails here."""
    import runpy

    root = Path(__file__).resolve().parents[1]
    report = runpy.run_path(str(root / "scripts" / "report.py"))
    assert report["main"](["--readme", str(root / "README.md"), "--check"]) == 0


def test_report_script_marks_a_setting_run_on_part_of_the_problems(results):
    import runpy

    report = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "report.py"))
    summary = store.Store(results).summary("toy", "arith", exact=True)
    summary.loc[summary["method"] == "relay", "n"] = 6  # a setting whose run was stopped part-way
    lines = report["settings_table"](summary, ["student", "relay"])
    assert lines[2].startswith("| student | 10 | ") and lines[3].startswith("| relay | 6 of 10 | 60.0% [")
