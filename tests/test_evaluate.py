"""The evaluation job (offline/evaluate.py): recipes, cells, resume, random-query rows, and one real tiny run.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_evaluate.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from offline import evaluate as E
from offline.config import ConfigError
from relay_demo.relay import RelayResult, Span
from relay_demo.results import parts as rio
from relay_demo.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(f"results_dir: {tmp_path / 'results'}\n" + body)
    return path


TOY = """
pair: toy
run_id: toy
benchmarks: [arith]
n: 6
batch_size: 4
methods:
  - {name: student}
  - {name: teacher}
  - {name: confidence, sweep: {tau: [0.5, 0.9]}}
  - {name: random-query, ps: [0.0, 0.25, 1.0]}
"""


class Scripted:
    """Answers arith problems by a fixed rule: the teacher is right, the student only on even ids."""

    def __init__(self):
        self.calls: list[tuple[str, float | None, int, list[str]]] = []

    def __call__(self, cell, problems, k):
        self.calls.append((cell.method.name, cell.param, k, [p.id for p in problems]))
        out = []
        for p in problems:
            teacher = cell.method.name == "teacher"
            right = teacher or int(p.id.rsplit("-", 1)[1]) % 2 == 0
            text = f"#### {p.answer if right else -1}"
            s_tok, t_tok = (0, 10) if teacher else (10, 0)
            spans = [Span("teacher" if teacher else "student", [2] * 10, text)]
            flops = 5e6 if teacher else 1e6
            out.append(
                RelayResult(
                    [1],
                    [2] * 10,
                    [0 if teacher else 1] * 10,
                    text,
                    spans,
                    "eos",
                    s_tok,
                    t_tok,
                    0,
                    0,
                    t_tok / 10,
                    flops,
                    0.01,
                    0.0,
                    0.0,
                    0,
                    0,
                    flops_student=0.0 if teacher else flops,
                    flops_teacher_decode=0.8 * flops if teacher else 0.0,
                    flops_teacher_prefill=0.2 * flops if teacher else 0.0,
                )
            )
        return out


def test_run_resume_and_random_query(tmp_path):
    cfg = E.parse_args(["--config", str(_recipe(tmp_path, TOY))])
    gen = Scripted()
    run_dir = E.run(cfg, gen, progress=False)
    df = rio.read_samples(run_dir)
    assert len(df) == 6 * 4 + 6 * 3  # 4 generated settings + 3 computed random-query points
    # batches are fixed slices of the problem list, numbered for their seeds
    student_calls = [(k, len(ids)) for m, _, k, ids in gen.calls if m == "student"]
    assert student_calls == [(0, 4), (1, 2)]
    rq = df[(df["method"] == "random-query") & (df["param"] == 0.25)]
    assert rq["correct"].mean() == pytest.approx(0.75 * 0.5 + 0.25 * 1.0)
    share = rq["teacher_tokens"].sum() / (rq["student_tokens"] + rq["teacher_tokens"]).sum()
    assert share == pytest.approx(0.25)
    assert set(rq["finish_reason"]) == {"computed"}
    # the FLOPs split travels into the rows, and into the random-query expectations
    split = df["flops_student"] + df["flops_teacher_decode"] + df["flops_teacher_prefill"]
    assert (split - df["flops"]).abs().max() < 1e-3
    assert rq["flops_teacher_decode"].mean() == pytest.approx(0.25 * 0.8 * 5e6)
    # the same command again: nothing generated, nothing duplicated
    gen2 = Scripted()
    E.run(cfg, gen2, progress=False)
    assert gen2.calls == [] and len(rio.read_samples(run_dir)) == len(df)
    # more problems: only the new ones are generated, batch 1 runs just its missing problems
    cfg.n = 8
    gen3 = Scripted()
    E.run(cfg, gen3, progress=False)
    assert {(k, len(ids)) for m, _, k, ids in gen3.calls if m == "student"} == {(1, 2)}
    summary = Store(tmp_path / "results").summary("toy", "arith", n_seeds=100)
    assert set(summary["method"]) == {"student", "teacher", "confidence", "random-query"}


def test_limit_and_problems_select_a_subset(tmp_path):
    cfg = E.parse_args(["--config", str(_recipe(tmp_path, TOY)), "--limit", "3", "batch_size=2"])
    assert cfg.limit == 3 and cfg.batch_size == 2
    assert [p.id for p in E.select_problems(cfg, "arith")] == [f"arith-test-0-{i}" for i in range(3)]
    recipe = str(_recipe(tmp_path, TOY))
    cfg = E.parse_args(["--config", recipe, "--problems", "arith-test-0-4,arith-test-0-1"])
    assert [p.id for p in E.select_problems(cfg, "arith")] == ["arith-test-0-1", "arith-test-0-4"]


def test_bad_recipes_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="list both"):
        E.parse_args(["--config", str(_recipe(tmp_path, TOY.replace("  - {name: teacher}\n", "")))])
    with pytest.raises(ConfigError, match="unknown benchmarks"):
        E.parse_args(["--config", str(_recipe(tmp_path, TOY.replace("[arith]", "[arithm]")))])
    with pytest.raises(ConfigError, match="unknown keys"):
        E.parse_args(["--config", str(_recipe(tmp_path, TOY)), "batchsize=3"])
    with pytest.raises(ConfigError, match="one knob"):
        two_knobs = TOY.replace("{tau: [0.5, 0.9]}", "{tau: [0.5], n: [1]}")
        E.parse_args(["--config", str(_recipe(tmp_path, two_knobs))])


def test_a_method_cannot_change_its_settings_within_a_run(tmp_path):
    cfg = E.parse_args(["--config", str(_recipe(tmp_path, TOY)), "--limit", "2"])
    E.run(cfg, Scripted(), progress=False)
    other_n = TOY.replace("{name: confidence,", "{name: confidence, params: {n: 4},")
    changed = E.parse_args(["--config", str(_recipe(tmp_path, other_n))])
    with pytest.raises(ValueError, match="confidence"):
        E.run(changed, Scripted(), progress=False)
    other_sampling = E.parse_args(["--config", str(_recipe(tmp_path, TOY)), "sampling.temperature=0.7"])
    with pytest.raises(ValueError, match="other settings"):
        E.run(other_sampling, Scripted(), progress=False)


def test_bad_policy_settings_fail_before_any_model_loads(tmp_path):
    cfg = E.parse_args(["--config", str(_recipe(tmp_path, TOY.replace("[0.5, 0.9]", "[0.5, 1.5]")))])
    with pytest.raises(ValueError, match="tau"):
        E.engine_generate(cfg, lambda: pytest.fail("a model was loaded"))


def test_checked_in_recipes_parse():
    recipes = sorted((ROOT / "offline" / "recipes").glob("*/eval*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        cfg = E.parse_args(["--config", str(path)])
        assert cfg.methods and cfg.benchmarks, path


def test_recipes_of_one_run_agree():
    """Recipes sharing a run_id (eval-f32-verdict.yaml: the first rows of eval-f32.yaml's run) must be able to
    resume each other's run: one identity, and each method named in both with the same policy, params, limits
    and pair."""
    by_run: dict[str, list] = {}
    for path in sorted((ROOT / "offline" / "recipes").glob("*/eval*.yaml")):
        cfg = E.parse_args(["--config", str(path)])
        by_run.setdefault(cfg.run_id, []).append(cfg)
    shared = {run: cfgs for run, cfgs in by_run.items() if len(cfgs) > 1}
    assert "qwen2.5-coder-0.5b-1.5b-eval-f32" in shared
    for run, (first, *others) in shared.items():
        methods = {m["name"]: E._method_identity(m) for m in E.cfglib.to_dict(first)["methods"]}
        for cfg in others:
            assert cfg.identity() == first.identity(), run
            for m in E.cfglib.to_dict(cfg)["methods"]:
                assert methods.get(m["name"], E._method_identity(m)) == E._method_identity(m), (run, m)


def test_real_relay_on_the_tiny_random_pair(tmp_path):
    """The job end to end on the engine: tiny random models built on the fly (a few seconds)."""
    recipe = _recipe(
        tmp_path,
        """
pair: tiny-random
run_id: tiny
benchmarks: [arith]
batch_size: 2
limits: {max_tokens: 12}
methods:
  - {name: student}
  - {name: teacher}
  - {name: relay-teacher-free}
  - {name: random-token, sweep: {p: [0.5]}}
  - {name: random-query, ps: [0.5]}
""",
    )
    assert E.main(["--config", str(recipe), "--limit", "3"]) == 0
    df = rio.read_samples(tmp_path / "results" / "runs" / "tiny")
    assert len(df) == 3 * 5
    teacher = df[df["method"] == "teacher"]
    assert (teacher["student_tokens"] == 0).all() and (teacher["teacher_tokens"] > 0).all()
    rt = df[df["method"] == "random-token"]
    assert (rt["teacher_tokens"] > 0).any() and (rt["student_tokens"] > 0).any()
    free = df[df["method"] == "relay-teacher-free"]
    assert (free["teacher_tokens"] == 0).all() and (free["calls"] == 0).all()
    manifest = rio.read_manifest(tmp_path / "results" / "runs" / "tiny")
    assert manifest["config"]["resolved_limits"]["max_tokens"] == 12 and manifest["finished_at"]


@pytest.mark.slow
def test_the_real_job_killed_three_times_resumes_to_the_same_rows(tmp_path):
    """SIGKILL the evaluation job itself (tiny random pair, greedy) at random moments once it writes."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    body = """
pair: tiny-random
run_id: killed
benchmarks: [arith]
n: 24
batch_size: 3
limits: {max_tokens: 24}
methods:
  - {name: student}
  - {name: teacher}
  - {name: random-token, sweep: {p: [0.2]}}
  - {name: random-query, ps: [0.5]}
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def job(results: Path) -> subprocess.Popen:
        recipe = tmp_path / f"{results.name}.yaml"
        recipe.write_text(f"results_dir: {results}\n{body}")
        return subprocess.Popen(
            [sys.executable, "-m", "offline.evaluate", "--config", str(recipe)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    assert job(tmp_path / "ref").wait(timeout=600) == 0
    rng = random.Random(7)
    samples = tmp_path / "kill" / "runs" / "killed" / rio.SAMPLES
    for _ in range(3):
        proc = job(tmp_path / "kill")
        seen = len(list(samples.glob("part-*"))) if samples.is_dir() else 0
        while proc.poll() is None and (len(list(samples.glob("part-*"))) if samples.is_dir() else 0) <= seen:
            time.sleep(0.05)  # wait until this session wrote something, then kill at a random moment
        time.sleep(rng.uniform(0, 1.0))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the job ended before the kill"
    assert job(tmp_path / "kill").wait(timeout=600) == 0

    def rows(results: Path) -> pd.DataFrame:
        df = rio.read_samples(results / "runs" / "killed").drop(columns=["wall_s"])
        return df.sort_values(["method", "param", "problem_id"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(tmp_path / "kill"), rows(tmp_path / "ref"))


def test_methods_flag_runs_a_subset_and_refuses_unknown_names():
    from offline.evaluate import parse_args

    recipe = "offline/recipes/tiny-arith/eval.yaml"
    cfg = parse_args(["--config", recipe, "--methods", "student,teacher,random-query"])
    assert [m.name for m in cfg.methods] == ["student", "teacher", "random-query"]
    assert cfg.methods[0].pair == "tiny-arith-base"
    with pytest.raises(SystemExit):
        parse_args(["--config", recipe, "--methods", "student,nonsense"])


def test_redo_regenerates_a_method_and_the_random_query_rows_that_depend_on_it(tmp_path):
    recipe = str(_recipe(tmp_path, TOY))
    run_dir = E.run(E.parse_args(["--config", recipe]), Scripted(), progress=False)
    before = rio.read_samples(run_dir)

    class StudentAlwaysRight(Scripted):
        def __call__(self, cell, problems, k):
            out = super().__call__(cell, problems, k)
            for r, p in zip(out, problems, strict=True):
                r.text = f"#### {p.answer}"
            return out

    gen = StudentAlwaysRight()
    E.run(E.parse_args(["--config", recipe, "--redo", "student"]), gen, progress=False)
    assert {m for m, *_ in gen.calls} == {"student"}  # nothing else is generated again
    after = rio.read_samples(run_dir)
    assert len(after) == len(before)

    def acc(method, param=None):
        sel = after[
            (after["method"] == method)
            & (after["param"].isna() if param is None else after["param"] == param)
        ]
        return sel["correct"].mean()

    assert acc("student") == 1.0 and acc("confidence", 0.5) == 0.5
    assert acc("random-query", 0.25) == pytest.approx(1.0)  # recomputed from the new student rows
    with pytest.raises(SystemExit):
        E.parse_args(["--config", recipe, "--redo", "nonsense"])


def test_a_method_may_keep_a_smaller_nested_sample(tmp_path):
    body = TOY.replace("{name: confidence, sweep", "{name: confidence, sizes: {arith: 3}, sweep")
    cfg = E.parse_args(["--config", str(_recipe(tmp_path, body))])
    gen = Scripted()
    df = rio.read_samples(E.run(cfg, gen, progress=False))
    run_ids = {p.id for p in E.select_problems(cfg, "arith")}
    mine = df[df["method"] == "confidence"]
    assert len(mine) == 2 * 3 and set(mine["problem_id"]) < run_ids  # both taus, 3 of the run's 6
    assert len(df[df["method"] == "student"]) == 6
    off = TOY.replace("{name: confidence, sweep", "{name: confidence, sizes: {arith: 0}, sweep")
    (tmp_path / "off").mkdir()
    cfg = E.parse_args(["--config", str(_recipe(tmp_path / "off", off))])
    assert "confidence" not in set(rio.read_samples(E.run(cfg, Scripted(), progress=False))["method"])
    for bad in ("{arith: 9}", "{gsm8k: 3}", "{arith: -1}"):
        with pytest.raises(ConfigError, match="sizes"):
            recipe = TOY.replace("{name: confidence, sweep", f"{{name: confidence, sizes: {bad}, sweep")
            E.parse_args(["--config", str(_recipe(tmp_path, recipe))])


def test_a_method_whose_pair_was_retrained_is_refused(tmp_path, monkeypatch):
    digests = {"toy": "adapter:aaaa"}
    monkeypatch.setattr(E, "trained_weights", lambda pair: digests.get(pair))
    cfg = E.parse_args(["--config", str(_recipe(tmp_path, TOY)), "--limit", "2"])
    E.run(cfg, Scripted(), progress=False)
    methods = rio.read_manifest(tmp_path / "results" / "runs" / "toy")["sessions"][-1]["config"]["methods"]
    assert {m["name"]: m.get("weights") for m in methods}["student"] == "adapter:aaaa"
    E.run(cfg, Scripted(), progress=False)  # the same weights: resumes
    digests["toy"] = "adapter:bbbb"
    with pytest.raises(ValueError, match="trained weights adapter:aaaa"):
        E.run(cfg, Scripted(), progress=False)


def test_trained_weights_name_the_projects_own_files():
    assert E.trained_weights("tiny-arith").startswith("student:")  # trained here, under results/
    assert E.trained_weights("tiny-arith") == E.trained_weights("tiny-arith")
    assert E.trained_weights("tiny-arith") != E.trained_weights("tiny-arith-base")
    assert E.trained_weights("qwen2.5-coder-0.5b-1.5b-relay").startswith("adapter:")
    assert E.trained_weights("qwen2.5-coder-0.5b-1.5b") is None  # published models
    assert E.trained_weights("tiny-random") is None and E.trained_weights("no-such-pair") is None


def test_rows_of_another_dtype_are_refused(tmp_path, monkeypatch):
    """Greedy decodes differ between dtypes: a machine that resolves `auto` differently, or a recipe
    switched to another dtype, must not add its rows to a run made in the first one."""
    from relay_demo import pairs

    real = pairs.registry()
    monkeypatch.setattr(pairs, "registry", lambda: {**real, "toy": {"dtype": "auto"}})
    monkeypatch.setattr(pairs, "cpu_has_bf16", lambda: True)
    cfg = E.parse_args(["--config", str(_recipe(tmp_path, TOY)), "--limit", "2"])
    E.run(cfg, Scripted(), progress=False)
    methods = rio.read_manifest(tmp_path / "results" / "runs" / "toy")["sessions"][-1]["config"]["methods"]
    assert {m["name"]: m.get("dtype") for m in methods}["student"] == "bfloat16"
    E.run(cfg, Scripted(), progress=False)  # the same machine: resumes
    monkeypatch.setattr(pairs, "cpu_has_bf16", lambda: False)  # a CPU without bf16 units: auto -> float32
    with pytest.raises(ValueError, match="made in bfloat16, these would be in float32"):
        E.run(cfg, Scripted(), progress=False)
    pinned = E.parse_args(["--config", str(_recipe(tmp_path, TOY)), "engine.dtype=bfloat16"])
    E.run(pinned, Scripted(), progress=False)  # pinned to the run's dtype: goes on
    assert len(rio.read_samples(tmp_path / "results" / "runs" / "toy").query("method == 'student'")) == 6


def test_older_sessions_count_with_the_dtype_their_engine_named(tmp_path):
    from relay_demo.results.manifest import run_dtypes, session_dtypes

    named = session_dtypes({"engine": {"dtype": "bfloat16"}, "methods": [{"name": "student"}]})
    assert named == {"bfloat16"}
    assert session_dtypes({"engine": {"dtype": "auto"}, "methods": [{"name": "student"}]}) == set()
    mine = {"engine": {"dtype": "bfloat16"}, "methods": [{"name": "teacher", "dtype": "float32"}]}
    assert session_dtypes(mine) == {"float32"}
    assert session_dtypes({"methods": [{"name": "random-query"}]}) == set()
    older = {"engine": {"dtype": "auto"}, "methods": [{"name": "student"}]}
    assert run_dtypes({"sessions": [{"config": mine}, {"config": older}]}) == {"float32"}
    assert run_dtypes({}) == set()
