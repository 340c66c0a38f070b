"""The evaluation job on bad settings: one line, exit 2, nothing written, and the fixed rerun goes through."""

from __future__ import annotations

import pytest

from offline import evaluate

RECIPE = "offline/recipes/tiny-arith/eval.yaml"


@pytest.mark.parametrize(
    "override",
    ["batch_size=0", "run_id=..", "run_id=../../escape", "run_id=.hidden", "sampling.temperature=.inf",
     "limits={max_calls: -1}", "limits={bogus: 1}", "sampling.top_p=0"],
)  # fmt: skip
def test_bad_settings_end_in_one_line_and_write_nothing(tmp_path, capsys, override):
    code = evaluate.main(
        ["--config", RECIPE, "--limit", "1", "--methods", "student", f"results_dir={tmp_path}", override]
    )
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and len(err.splitlines()) == 1 and err.startswith("python -m offline.evaluate: error:")
    ), err
    assert not (tmp_path / "runs").exists()


def test_the_fixed_rerun_after_a_settings_error_is_accepted(tmp_path, capsys):
    args = ["--config", RECIPE, "--limit", "1", "--methods", "student", f"results_dir={tmp_path}"]
    assert evaluate.main([*args, "sampling.temperature=.inf"]) == 2
    assert evaluate.main(args) == 0
    assert (tmp_path / "runs" / "tiny-arith-eval" / "manifest.json").is_file()
