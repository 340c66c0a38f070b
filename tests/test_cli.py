"""`python -m relay_demo generate`: the JSON shape for every policy, streaming output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from relay_demo.cli import main
from relay_demo.policies import POLICIES, RouterMLP

TINY = ["generate", "--pair", "tiny-random"]
STATS = {
    "student_tokens",
    "teacher_tokens",
    "command_tokens",
    "calls",
    "call_ratio",
    "finish_reason",
    "wall_s",
    "flops",
    "flops_student",
    "flops_teacher_decode",
    "flops_teacher_prefill",
}
CALL_KEYS = {
    "index", "trigger", "detail", "asked", "at", "start",
    "granted", "written", "ended", "teacher_s", "prefill",
}  # fmt: skip


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    """A router over the tiny-random student's hidden size (64) that always asks for the teacher."""
    path = tmp_path_factory.mktemp("router")
    w = {
        "w1": np.zeros((64, 4), np.float32),
        "b1": np.ones(4, np.float32),
        "w2": np.ones((4, 1), np.float32),
        "b2": np.zeros(1, np.float32),
    }
    RouterMLP(w, {"hidden_size": 64}).save(path)
    return str(path)


POLICY_ARGS = {
    "learned": [],
    "confidence": ["--tau", "0.9", "--n", "2"],
    "random-token": ["--p", "0.3"],
    "interval": ["--every", "3", "--n", "2"],
    "router": ["--threshold", "0.5"],
    "student-only": [],
    "teacher-only": [],
}


def _run(capsys, args) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("policy", list(POLICIES))
def test_json_output_has_the_documented_shape(policy, capsys, router_dir):
    extra = POLICY_ARGS[policy] + (["--router", router_dir] if policy == "router" else [])
    code, out, _ = _run(
        capsys,
        [
            "generate",
            "--pair",
            "tiny-random",
            "--policy",
            policy,
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "12",
            "--seed",
            "1",
            "--json",
            *extra,
        ],
    )
    assert code == 0
    obj = json.loads(out.strip().splitlines()[-1])
    assert set(obj) == {"text", "spans", "stats", "calls"}
    assert set(obj["stats"]) == STATS
    assert all(set(s) == {"source", "text", "tokens", "call"} for s in obj["spans"])
    assert len(obj["calls"]) == obj["stats"]["calls"]
    assert all(set(c) == CALL_KEYS for c in obj["calls"])
    called = {s["call"] for s in obj["spans"] if s["source"] == "teacher"}
    assert called <= set(range(len(obj["calls"]))) or (policy == "teacher-only" and called == {None})
    assert "".join(s["text"] for s in obj["spans"]) == obj["text"]
    st = obj["stats"]
    assert (
        sum(s["tokens"] for s in obj["spans"])
        == st["student_tokens"] + st["teacher_tokens"] + st["command_tokens"]
    )
    assert 0 < sum(s["tokens"] for s in obj["spans"]) <= 12
    if policy in ("interval", "router", "teacher-only"):
        assert st["teacher_tokens"] > 0  # these always hand over
    if policy == "student-only":
        assert st["teacher_tokens"] == 0


def test_vllm_backend_gives_the_same_shape(capsys):
    pytest.importorskip("vllm")
    code, out, _ = _run(
        capsys,
        TINY + "--policy interval --every 4 --prompt Hello --max-new-tokens 10 --backend vllm --json".split(),
    )
    assert code == 0
    assert set(json.loads(out.strip().splitlines()[-1])["stats"]) == STATS


def test_streaming_prints_the_text_and_a_summary(capsys):
    code, out, err = _run(
        capsys,
        TINY + "--policy interval --every 3 --prompt Hi --max-new-tokens 9 --temperature 0".split(),
    )
    assert code == 0 and out.strip()
    assert "calls" in err and "call ratio" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pair", "nope", "--prompt", "x"], "invalid choice"),
        (["--pair", "tiny-random", "--prompt", "  "], "prompt is empty"),
        (["--pair", "tiny-random", "--prompt", "x", "--policy", "router"], "needs --router"),
        (["--pair", "tiny-random", "--prompt", "x", "--policy", "confidence", "--p", "0.1"], "takes no --p"),
        (["--pair", "tiny-random", "--prompt", "x", "--policy", "confidence", "--tau", "7"], "tau"),
        (
            ["--pair", "tiny-random", "--prompt", "x", "--policy", "confidence", "--call-bias", "1"],
            "--call-bias",
        ),
        (["--pair", "tiny-random", "--prompt", "x", "--call-bias", "1"], "one token"),  # byte-level <call>
        (["--pair", "tiny-random", "--prompt", "x", "--max-new-tokens", "0"], "max_tokens"),
        (["--pair", "tiny-random", "--prompt", "x", "--max-n", "-3"], "max_n"),
        (["--pair", "tiny-random", "--prompt", "x", "--temperature", "-1"], "temperature"),
        (["--pair", "tiny-random", "--prompt", "x", "--temperature", "3"], "temperature must be in [0, 2]"),
        (
            ["--pair", "tiny-random", "--prompt", "x", "--policy", "router", "--router", "/nonexistent"],
            "no router",
        ),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, message, capsys):
    try:
        code = main(["generate", *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_module_entry_point_runs():
    """The real `python -m relay_demo` process: exit code 2 and one line for a bad argument."""
    p = subprocess.run(
        [sys.executable, "-m", "relay_demo", "generate", "--pair", "tiny-random"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error:") and len(p.stderr.strip().splitlines()) == 1
