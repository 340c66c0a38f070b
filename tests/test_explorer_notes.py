"""What the Explorer says beside its figures (issue 31, item 9): its note names the data it left out and
nothing else; the summary table shows "n/a" where a figure is undefined, with a legend that says why.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_explorer_notes.py -q
"""

from __future__ import annotations

import threading
import warnings

from relay_demo.ui import explorer_data as x

from .test_ui_handlers import make_results


def test_the_note_names_a_skipped_file_and_no_other_threads_warnings(tmp_path, monkeypatch):
    # the app showed "'future.no_silent_downcasting' is deprecated" on tiny-arith: Gradio's queue thread warns
    # about pandas while a user's thread opens the store, and the store's warnings were caught process-wide
    make_results(tmp_path)
    (tmp_path / "runs" / "ui-run" / "manifest.json").write_text("[1, 2]")  # a real data warning: kept
    opening, warned = threading.Event(), threading.Event()

    class Store(x.Store):
        def _discover(self):
            opening.set()
            assert warned.wait(30)
            super()._discover()

    def library():
        assert opening.wait(30)
        warnings.warn("'future.no_silent_downcasting' is deprecated", DeprecationWarning, stacklevel=1)
        warned.set()

    monkeypatch.setattr(x, "Store", Store)
    other = threading.Thread(target=library)
    other.start()
    view = x.explorer_view(tmp_path, "tiny-random", "arith", None)
    other.join(30)
    assert "deprecated" not in view.note
    assert "skipping" in view.note and "ui-run" in view.note and "JSON object" in view.note


def test_undefined_summary_cells_say_n_a_and_the_legend_says_why(tmp_path):
    # the table's blank cells were unexplained: no knob, no FLOPs split, no saving for a baseline or a method
    # that never calls, a curve that never reaches a share of the gap
    from relay_demo.results import parts as rio
    from relay_demo.ui.drilldown import row_key

    from .test_ui_handlers import _row

    make_results(tmp_path)
    with rio.open_run(tmp_path, "sft-run", {"pair": "tiny-random"}) as w:  # another student: 5/10, no call
        w.add([{**_row("sft-only", None, i, i < 5, 30, 0), "run_id": "sft-run"} for i in range(10)])
    v = x.explorer_view(tmp_path, "tiny-random", "arith", None)
    table = v.table.set_index("method")
    assert not (v.table == "").any().any()  # no blank cell left
    assert table.loc["student", "param"] == "n/a" and table.loc["sft-only", "saving: calls"] == "n/a"
    legend = v.na_legend
    assert "A method without a knob: param (student, teacher, relay, sft-only)" in legend
    assert (
        "no FLOPs split into decode and prefill: decode vs teacher, prefill vs teacher (student, " in legend
    )
    assert (
        "what a saving is measured against: saving: calls, saving: queries (paper), saving: FLOPs " in legend
    )
    assert "It never calls (another student" in legend and "saving: FLOPs (sft-only)" in legend
    assert "never reach that share of the gap" in legend
    assert row_key(["student", "n/a"]) == "student"  # a click on that row still opens the student's samples


def test_a_wall_ratio_of_a_run_written_under_several_commits_is_marked(tmp_path):
    # issue 31 (left then): the CLI marked such rows, the Explorer's table did not
    import json

    from relay_demo.results import parts as rio

    make_results(tmp_path)
    plain = x.explorer_view(tmp_path, "tiny-random", "arith", None)
    assert not plain.table["wall vs teacher"].str.endswith("*").any() and "several git commits" not in (
        plain.na_legend
    )
    path = tmp_path / "runs" / "ui-run" / rio.MANIFEST
    manifest = json.loads(path.read_text())
    first = manifest["sessions"][0]
    manifest["sessions"] = [{**first, "git": {"commit": c * 40, "dirty": False}} for c in "ab"]
    path.write_text(json.dumps(manifest))
    v = x.explorer_view(tmp_path, "tiny-random", "arith", None)
    walls = v.table.set_index("method")["wall vs teacher"]
    assert walls.loc["relay"].endswith("*") and walls.loc["student"].endswith("*")
    assert "<b>*</b> wall vs teacher: its run was written under several git commits" in v.na_legend
