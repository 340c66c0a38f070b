"""Renaming a method of a run (``relay_demo.results.rename``): rows, manifest and refusals."""

from __future__ import annotations

import pytest

from relay_demo.results import parts as rio
from relay_demo.results.manifest import read_manifest
from relay_demo.results.rename import main, rename_methods

from .test_store import _row


def _run(tmp_path):
    config = {"pair": "toy", "methods": [{"name": "relay", "pair": "toy-relay"}, {"name": "student"}]}
    with rio.open_run(tmp_path, "r", config) as w:
        w.add([_row("relay", 0.0, i, i % 2, 90, 10, run_id="r") for i in range(3)])
        w.add([_row("relay", 1.0, i, 1, 80, 20, run_id="r") for i in range(3)])
        w.add([_row("student", None, i, 0, 100, 0, run_id="r") for i in range(3)])
    return tmp_path / "runs" / "r"


def test_rename_moves_rows_and_the_manifest_record(tmp_path):
    run = _run(tmp_path)
    before = rio.read_samples(run)
    n = rename_methods(run, {"relay": "relay-sft"}, why="retrained", pairs={"relay-sft": "toy-relay-sft"})
    after = rio.read_samples(run)
    assert n == 6 and len(after) == len(before)
    assert sorted(set(after["method"])) == ["relay-sft", "student"]
    mine = after[after["method"] == "relay-sft"].sort_values(["param", "problem_id"])
    was = before[before["method"] == "relay"].sort_values(["param", "problem_id"])
    assert (
        mine["correct"].tolist() == was["correct"].tolist()
        and mine["param"].tolist() == was["param"].tolist()
    )
    manifest = read_manifest(run)
    methods = manifest["sessions"][0]["config"]["methods"]
    assert methods[0] == {"name": "relay-sft", "pair": "toy-relay-sft"} and methods[1] == {"name": "student"}
    assert manifest["renames"][0]["methods"] == {"relay": "relay-sft"} and manifest["renames"][0]["why"]
    with rio.open_run(tmp_path, "r", manifest["config"]) as w:  # the run resumes, nothing redone
        assert w.is_done("relay-sft", 1.0, "arith", "p2") and not w.is_done("relay", 1.0, "arith", "p2")


def test_rename_refusals_lose_nothing(tmp_path, capsys):
    run = _run(tmp_path)
    before = rio.read_samples(run)
    with pytest.raises(ValueError, match="no rows of"):
        rename_methods(run, {"relai": "x"}, why="typo")
    with pytest.raises(ValueError, match="already name rows"):
        rename_methods(run, {"relay": "student"}, why="clash")
    with pytest.raises(ValueError, match="why"):
        rename_methods(run, {"relay": "x"}, why=" ")
    with pytest.raises(FileNotFoundError):
        rename_methods(tmp_path / "runs" / "none", {"relay": "x"}, why="no run")
    with rio.open_run(tmp_path, "r", read_manifest(run)["config"]):  # a job is writing the run
        with pytest.raises(RuntimeError, match="another process"):
            rename_methods(run, {"relay": "x"}, why="busy")
    assert main([str(run), "relay=", "--why", "w"]) == 2
    assert "expected OLD=NEW" in capsys.readouterr().err
    pd_after = rio.read_samples(run)
    assert sorted(pd_after["method"]) == sorted(before["method"]) and "renames" not in read_manifest(run)
