"""The app's cost figures (relay_demo/cost.py): the FLOPs split against the teacher alone, the measured wall
time beside it, each with its definition on hover and escaped; the Explorer's cost axis; the About tab's
model sizes.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_ui_cost.py -q

Generation tests use the ``tiny-random`` pair (student 0.10M parameters, teacher 0.36M, built on the fly).
"""

from __future__ import annotations

import html
import re

import pytest

from relay_demo.cost import DEFINITIONS
from relay_demo.ui import handlers as h
from relay_demo.ui import render

from .test_ui_handlers import FAST, XSS, fast_snapshots

NO_CALL = h.Settings(pair="tiny-random", policy="student-only", max_tokens=24, temperature=0.0, seed=1)


def _cell(counters_html: str, name: str) -> tuple[str, str]:
    """(value, hover text) of one counter, unescaped."""
    m = re.search(rf'data-counter="{re.escape(name)}" title="([^"]*)"><b>([^<]*)</b>', counters_html)
    assert m, f"no counter {name!r} in {counters_html}"
    return html.unescape(m.group(2)), html.unescape(m.group(1))


def test_an_answer_without_calls_costs_the_size_ratio():
    """The issue's "FLOPs vs teacher-only: 99%": an answer without a call now shows student/teacher params."""
    pair = h.get_pair("tiny-random")
    ratio = pair.student.n_params / pair.teacher.n_params
    for policy in ("student-only", "learned"):
        s = h.Settings(**{**NO_CALL.__dict__, "policy": policy})
        outs = list(h.chat_submit("What is 2+3?", [], s))
        chat, counters, note, turns, _ = outs[-1]
        assert note == "" and "relay-teacher" not in chat
        assert _cell(counters, "FLOPs vs teacher alone")[0] == render.fmt_share(ratio) == "27%"
        assert _cell(counters, "student FLOPs")[0] == "27%"
        assert (
            _cell(counters, "teacher decode FLOPs")[0]
            == _cell(counters, "teacher prefill FLOPs")[0]
            == "0.0%"
        )
        value, hover = _cell(counters, "wall vs teacher alone")  # tiny teacher: timed after the answer
        assert value.endswith("%") and "for the teacher alone" in hover
    assert _cell(counters, "student FLOPs")[1] == DEFINITIONS["flops_student"]


def test_the_split_sums_and_the_counters_are_exact_at_the_end():
    pair = h.get_pair("tiny-random")
    last = fast_snapshots()[-1]
    c, r = last.counters, last.result
    assert r.calls > 0 and r.flops_teacher_prefill > 0
    split = c["flops_student"] + c["flops_teacher_decode"] + c["flops_teacher_prefill"]
    assert split == pytest.approx(c["flops"]) and c["flops"] == r.flops
    assert c["teacher_alone_flops"] == 2 * pair.teacher.n_params * (
        len(r.prompt_ids) + r.student_tokens + r.teacher_tokens - 1
    )
    got = render.counters_html(c)
    assert _cell(got, "teacher decode FLOPs")[0] == render.fmt_share(
        r.flops_teacher_decode / c["teacher_alone_flops"]
    )
    assert _cell(got, "wall vs teacher alone") == ("–", DEFINITIONS["wall_vs_teacher"] + "; not measured")


def test_counters_escape_every_text_and_hover():
    c = {"final": True, "finish": XSS, "wall_s": 0.5, "teacher_alone_note": XSS, "flops": 1.0}
    got = render.counters_html(c)
    assert "<script>" not in got and "<img" not in got and "&lt;script&gt;" in got
    assert got.count("title=") == got.count('class="relay-counter"')  # every figure has its definition
    timed = render.counters_html({**c, "teacher_alone_wall_s": 0.25, "teacher_alone_tokens": 7})
    assert _cell(timed, "wall vs teacher alone")[0] == "200%"
    hover = _cell(timed, "wall vs teacher alone")[1]
    assert "0.5 s (0 tokens) against 0.25 s for the teacher alone (7 tokens)" in hover


def test_a_large_teacher_is_timed_only_on_request(monkeypatch):
    monkeypatch.setattr(h, "AUTO_TIME_PARAMS", 1000)  # tiny-random's teacher counts as large
    counters = list(h.chat_submit("What is 2+3?", [], NO_CALL))[-1][1]
    value, hover = _cell(counters, "wall vs teacher alone")
    assert value == "–" and "Compare tab" in hover


def test_compare_shows_the_split_and_the_wall_time_against_its_teacher_column():
    last = list(h.compare_run("What is 7 * 6?", FAST))[-1]
    student, relay, teacher = last[1], last[4], last[7]
    assert _cell(teacher, "FLOPs vs teacher alone")[0] == _cell(teacher, "wall vs teacher alone")[0] == "100%"
    assert _cell(teacher, "student FLOPs")[0] == "0.0%"
    for col in (student, relay):
        value, hover = _cell(col, "wall vs teacher alone")
        assert value.endswith("%") and "for the teacher alone" in hover
    assert _cell(relay, "teacher prefill FLOPs")[0] != "0.0%"  # interval handoffs: the teacher caught up


# ---------------------------------------------------------------- Explorer


def test_explorer_cost_axis_uses_decode_flops_and_shows_what_old_runs_have(tmp_path):
    """A run with the split stands at its decode share (prefill in the hover); one written before the split
    stands at its total FLOPs share, hollow, and says so."""
    from relay_demo.results import parts as rio
    from relay_demo.ui import explorer_data as x
    from relay_demo.ui.summary_cells import COST_HELP

    from .test_store import _split_rows

    # the old run first, as it would be: where both hold a teacher row the store keeps the newer run's, and
    # created the other way round, a second ticking between the two left the old run without its teacher
    old = {"relay-old": (1e9, 2e9, 3e9, 0.3), "teacher": (0.0, 4e9, 1e9, 0.4)}
    rows = [{k: v for k, v in r.items() if k not in rio.ADDED} for r in _split_rows("old-run", old)]
    with rio.open_run(tmp_path, "old-run", {"pair": "split"}) as w:
        w.add(rows)
    with rio.open_run(tmp_path, "split-run", {"pair": "split"}) as w:
        w.add(_split_rows())
    v = x.explorer_view(tmp_path, "split", "arith", None, cost_axis="decode")
    traces = {t.name: t for t in v.flops_fig.data}
    relay = traces["relay"]
    assert list(relay.x) == [pytest.approx(24.0)]
    assert "teacher prefill 12.0% = 36.0% of the teacher alone's FLOPs" in relay.text[0]
    assert "wall time 50.0%" in relay.text[0]
    hollow = traces["relay-old (all FLOPs, no split recorded)"]
    assert list(hollow.x) == [pytest.approx(120.0)] and hollow.marker.symbol == "circle-open"
    table = v.table.set_index("method")
    assert (
        table.loc["relay", "decode vs teacher"] == "24.00%"
        and table.loc["relay-old", "decode vs teacher"] == "n/a"
    )
    assert table.loc["relay-old", "FLOPs vs teacher"] == "120.00%"
    assert (
        "no FLOPs split into decode and prefill: decode vs teacher, prefill vs teacher (relay-old)"
        in v.na_legend
    )
    assert "decode vs teacher" in COST_HELP and 'title="' in COST_HELP
    flops = x.explorer_view(tmp_path, "split", "arith", None)
    assert flops.flops_fig.layout.xaxis.title.text == "FLOPs per problem"
    with pytest.raises(ValueError, match="cost_axis"):
        x.explorer_view(tmp_path, "split", "arith", None, cost_axis="nope")


# ---------------------------------------------------------------- About


def test_about_states_both_models_sizes(monkeypatch):
    from relay_demo import pairs
    from relay_demo.backends.base import count_params
    from relay_demo.ui import about

    pair = h.get_pair("tiny-random")
    ps, pt = pair.student.n_params, pair.teacher.n_params
    text = about.sizes_markdown("tiny-random")
    assert f"student 0.10M parameters ({ps:,}), teacher 0.36M ({pt:,})" in text and "27%" in text
    # a pair not loaded is counted from its configs alone: the same counts as the loaded engines'
    student, teacher = pairs.pair_paths("tiny-random")
    assert (count_params(student), count_params(teacher)) == (ps, pt)
    if pairs.available("tiny-arith")[0] and "tiny-arith" not in pairs.loaded_pairs():
        counted = pairs.param_counts("tiny-arith")
        loaded = pairs.load_pair("tiny-arith")
        assert counted == (loaded.student.n_params, loaded.teacher.n_params)
    monkeypatch.setattr(pairs, "param_counts", lambda name: (_ for _ in ()).throw(OSError("no such model")))
    monkeypatch.setattr(about, "param_counts", pairs.param_counts)
    assert "not known here (OSError: no such model)" in about.sizes_markdown("relayllm-qwen3-1.7b-8b")


def test_live_counters_are_estimates_and_know_the_teacher_alone_writes_no_student_text():
    pair = h.get_pair("tiny-random")
    s = h.Settings(pair="tiny-random", policy="teacher-only", max_tokens=24, temperature=0.0)
    messages, limits = [{"role": "user", "content": "hi"}], h.build_limits(pair.limits, s)
    gen = h.generate(pair, messages, h.build_policy(s), limits, h.build_sampling(s))
    counters = [dict(snap.counters) for snap in gen]  # one Snapshot object, updated: copy each state
    live, final = counters[-2], counters[-1]
    assert not live.get("final") and live["calls"] == 0 and live["flops_student"] == 0
    assert _cell(render.counters_html(live), "FLOPs vs teacher alone")[0].startswith("~")
    # the estimate of the teacher's answer so far is exact: the prompt once, a position per token but the last
    assert 0 < live["flops"] == live["teacher_alone_flops"] and final["flops"] == final["teacher_alone_flops"]
    assert _cell(render.counters_html(final), "FLOPs vs teacher alone")[0] == "100%"
    assert render.counters_html({}).count("~") == 0  # nothing known yet: dashes, not estimates
