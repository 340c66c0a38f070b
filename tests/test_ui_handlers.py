"""The app's handlers as plain functions: prompt checks, settings, rendering, streaming, explorer data.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_ui_handlers.py -q

Generation tests use the ``tiny-random`` pair (built on the fly, no download).
"""

from __future__ import annotations

import json
import re
import threading

import pytest

from relay_demo.relay import Limits
from relay_demo.results import parts as rio
from relay_demo.ui import explorer_data as x
from relay_demo.ui import handlers as h
from relay_demo.ui import pair_info as pi
from relay_demo.ui import render

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
FAST = h.Settings(pair="tiny-random", policy="interval", every=4, n=2, max_tokens=24, temperature=0.7, seed=1)


# ---------------------------------------------------------------- a tiny results folder


def _row(method, param, i, correct, st, tt, spans=None):
    spans = spans if spans is not None else [{"source": "student", "text": f"answer {i}", "tokens": int(st)}]
    return {
        "run_id": "ui-run",
        "pair": "tiny-random",
        "method": method,
        "param": param,
        "benchmark": "arith",
        "problem_id": f"arith-test-0-{i}",
        "correct": float(correct),
        "student_tokens": float(st),
        "teacher_tokens": float(tt),
        "command_tokens": 0.0 if method != "relay" else 4.0,
        "calls": 1.0 if tt else 0.0,
        "flops": 1e6 * (st + 4 * tt),
        "wall_s": 0.01,
        "response": "".join(s["text"] for s in spans),
        "spans": json.dumps(spans),
        "extracted": str(i),
        "finish_reason": "eos",
    }


def make_results(folder) -> None:
    """Student 4/10, teacher 8/10, relay 6/10 with traces (one holds markup), a confidence sweep."""
    s_ok, t_ok = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    rows = []
    for i in range(10):
        rows.append(_row("student", None, i, s_ok[i], 30, 0))
        rows.append(_row("teacher", None, i, t_ok[i], 0, 30))
        trace = [
            {"source": "student", "text": f"Step {i}: {XSS} ", "tokens": 12},
            {"source": "command", "text": "<call>4</call>", "tokens": 4},
            {"source": "teacher", "text": "6 * 23 = 138.", "tokens": 4},
            {"source": "student", "text": f"\n#### {i}", "tokens": 5},
        ]
        rows.append(_row("relay", None, i, s_ok[i] or i < 6, 17, 4, trace))
        for tau, k in ((0.3, 5), (0.6, 7)):
            rows.append(_row("confidence", tau, i, t_ok[i] if i < k else 0, 25, 3 * k))
    with rio.open_run(folder, "ui-run", {"pair": "tiny-random"}) as w:
        w.add(rows)


@pytest.fixture
def results(tmp_path):
    make_results(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- prompt checks and settings


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("a" * 200_000, "200,000 characters"),
        ("bell\x07", "U+0007"),
        ("nul\x00here", "U+0000"),
        ("esc\x1b[31m", "U+001B"),
        ("c1\x85", "U+0085"),
        (None, "must be text"),
    ],
)
def test_bad_prompts_are_refused_with_a_message(prompt, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        h.clean_prompt(prompt)


def test_good_prompts_pass_and_newlines_are_normalised():
    assert h.clean_prompt("a\r\nb\tc\rd") == "a\nb\tc\nd"
    assert h.clean_prompt("ünïcödé ✓ 漢字") == "ünïcödé ✓ 漢字"


@pytest.mark.parametrize("prompt", ["", "a" * 200_000, "x\x07y"])
def test_chat_submit_refuses_bad_input_without_losing_anything(prompt):
    history = [{"user": "earlier", "spans": [{"source": "student", "text": "hi", "tokens": 1}], "text": "hi"}]
    outs = list(h.chat_submit(prompt, history, FAST))
    assert len(outs) == 1
    chat, _, note, turns, box = outs[0]
    assert "relay-error" in note and turns == history and box == prompt  # the text stays in the box
    assert "earlier" in chat


def test_prompt_over_the_pairs_token_limit_names_the_limit():
    limit = pi.get_limits("tiny-random").max_prompt_tokens
    outs = list(h.chat_submit("word " * (limit // 4), [], FAST))  # under the char cap, over the token cap
    assert f"at most {limit:,}" in outs[-1][2]


def test_policies_from_settings():
    assert h.build_policy(h.Settings(policy="confidence", tau=0.3, n=2)).params() == {"tau": 0.3, "n": 2}
    assert h.build_policy(h.Settings(policy="random-token", p=1.0, n=1)).params() == {"p": 1.0, "n": 1}
    assert h.build_policy(h.Settings(policy="interval", every=3, n=5)).params() == {"every": 3, "n": 5}
    assert h.build_policy(h.Settings(policy="learned", call_bias=1.5)).params() == {"call_bias": 1.5}
    for name in ("learned", "student-only", "teacher-only"):
        assert h.build_policy(h.Settings(policy=name)).name == name
    with pytest.raises(ValueError, match="unknown policy"):
        h.build_policy(h.Settings(policy="oracle"))
    with pytest.raises(ValueError, match="tau"):
        h.build_policy(h.Settings(policy="confidence", tau=1.5))
    with pytest.raises(ValueError, match="no trained router"):
        h.build_policy(h.Settings(pair="tiny-random", policy="router"))


def test_hosted_mode_drops_paths_from_the_ui(monkeypatch, tmp_path):
    values = [getattr(h.Settings(policy="router", router_path=str(tmp_path)), f) for f in h.SETTINGS_FIELDS]
    assert h.Settings.from_ui(False, *values).router_path == str(tmp_path)
    assert h.Settings.from_ui(True, *values).router_path == ""
    monkeypatch.setenv("RELAY_HOSTED", "1")
    assert h.Settings.from_ui(False, *values).router_path == ""
    with pytest.raises(ValueError, match="no trained router"):  # even if a path slips through
        h.build_policy(h.Settings(pair="tiny-random", policy="router", router_path=str(tmp_path)))


def test_limits_never_exceed_the_pairs():
    base = Limits(max_n=16, max_tokens=256)
    assert h.build_limits(base, h.Settings(max_n=8, max_tokens=100)) == Limits(max_n=8, max_tokens=100)
    with pytest.raises(ValueError, match="max tokens"):
        h.build_limits(base, h.Settings(max_tokens=10_000))
    with pytest.raises(ValueError, match="whole number"):
        h.build_limits(base, h.Settings(max_n=2.5))


def test_pairs_default_and_unknown(monkeypatch):
    assert pi.default_pair() == ("tiny-arith" if pi.available("tiny-arith")[0] else "tiny-random")
    assert "Live pair: tiny-random" in pi.pair_status("tiny-random")
    assert [v for _, v in pi.pair_choices()][:2] == ["tiny-random", "tiny-arith"]
    with pytest.raises(ValueError, match="unknown pair"):
        h.get_pair("../etc/passwd")


# ---------------------------------------------------------------- rendering


def test_render_escapes_text_and_attributes():
    html = render.spans_html(
        [
            {"source": "teacher", "text": XSS, "tokens": 3},
            {"source": "command", "text": "<call>2</call>", "tokens": 2},
        ],
        names={"teacher": 'T"><script>', "student": "S"},
    )
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&lt;call&gt;2&lt;/call&gt;" in html
    assert 'title="T&quot;&gt;&lt;script&gt; · 3 tokens"' in html
    assert 'class="relay-span relay-command"' in html
    chat = render.chat_html([{"user": XSS, "spans": [], "policy": "<b>"}])
    assert "<script" not in chat and "<img" not in chat and "&lt;b&gt;" in chat


def test_render_shows_control_characters_as_pictures():
    assert render.esc("a\x00b\x1b\x7f\x85\n\t") == "a\u2400b\u241b\u2421\ufffd\n\t"


# ---------------------------------------------------------------- generation


def test_chat_streams_teacher_spans_and_keeps_history():
    outs = list(h.chat_submit(f"What is 2+3? {XSS}", [], FAST))
    assert len(outs) >= 2  # streamed
    chat, counters, note, turns, box = outs[-1]
    assert note == "" and box == ""
    (turn,) = turns
    assert {s["source"] for s in turn["spans"]} >= {"student", "teacher"}  # interval forces a handoff
    assert 'class="relay-span relay-teacher"' in chat and "tiny-random/teacher" in chat
    assert "<script>" not in chat and "&lt;script&gt;" in chat
    assert "finished" in counters and "calls" in counters
    tokens = sum(s["tokens"] for s in turn["spans"])
    assert 0 < tokens <= FAST.max_tokens
    outs2 = list(h.chat_submit("and then?", turns, FAST))
    assert [t["user"] for t in outs2[-1][3]] == [turn["user"], "and then?"]


def fast_snapshots(prompt: str = "hello") -> list:
    """The snapshots of one streamed generation with the FAST settings (interval handoffs) on tiny-random."""
    pair = h.get_pair("tiny-random")
    messages = [{"role": "user", "content": prompt}]
    limits, sampling = h.build_limits(pair.limits, FAST), h.build_sampling(FAST)
    return list(h.generate(pair, messages, h.build_policy(FAST), limits, sampling))


def test_counters_are_exact_at_the_end():
    last = fast_snapshots()[-1]
    r = last.result
    assert r is not None and last.counters["final"]
    assert (
        last.counters["teacher_tokens"]
        == r.teacher_tokens
        == sum(s["tokens"] for s in last.spans if s["source"] == "teacher")
    )
    assert last.counters["flops"] == r.flops
    assert 0 < last.counters["flops"] < 2 * last.counters["teacher_alone_flops"]
    assert last.text == r.text


def test_closing_a_stream_releases_the_pair():
    """Stop (Gradio closes the generator) must end the worker and free the shared pair's lock."""
    pair = h.get_pair("tiny-random")
    s = h.Settings(pair="tiny-random", policy="teacher-only", max_tokens=256, temperature=1.0)
    gen = h.generate(
        pair,
        [{"role": "user", "content": "go"}],
        h.build_policy(s),
        h.build_limits(pair.limits, s),
        h.build_sampling(s),
    )
    next(gen)
    gen.close()
    assert pair.lock.acquire(timeout=10), "the worker kept the pair locked after the stream was closed"
    pair.lock.release()


def test_a_busy_pair_says_waiting():
    pair = h.get_pair("tiny-random")
    released = threading.Event()
    pair.lock.acquire()
    try:
        gen = h.generate(
            pair,
            [{"role": "user", "content": "x"}],
            h.build_policy(FAST),
            h.build_limits(pair.limits, FAST),
            h.build_sampling(FAST),
        )
        assert next(gen).waiting
    finally:
        pair.lock.release()
        released.set()
    rest = list(gen)
    assert rest[-1].result is not None and not rest[-1].waiting


def test_learned_commands_render_in_their_own_colour():
    """A scripted student writes ' Let me think:<call>3</call>.' (8 BPE tokens): the UI shows the command in
    amber, the teacher's continuation in teal, and counts them as the relay does."""
    from relay_demo.backends.hf_engine import HFEngine
    from relay_demo.pairs import Pair
    from tests.models import chain, chain_model, links, qwen_tokenizer

    tok = qwen_tokenizer()
    student = chain(tok, ["\n", " Let", " me", " think", ":<", "call", ">", "3", "</", "cal", "l", ">."])
    after = chain(tok, [" is", " Done"]) + [tok.eos_token_id]
    teacher = chain(tok, [":.", " The", " answer", " is", " The"])
    pair = Pair(
        "scripted",
        HFEngine(chain_model(tok, links(student) | links(after), seed=3), tok, "scripted/student"),
        HFEngine(chain_model(tok, links(teacher), seed=4), tok, "scripted/teacher"),
        Limits(max_tokens=64, max_n=16),
    )
    s = h.Settings(policy="learned", temperature=0.0, max_tokens=64, max_n=16)
    last = list(
        h.generate(
            pair, [{"role": "user", "content": "hi"}], h.build_policy(s), pair.limits, h.build_sampling(s)
        )
    )[-1]
    assert [(x["source"], x["text"]) for x in last.spans] == [
        ("student", " Let me think"),
        ("command", ":<call>3</call>."),
        ("teacher", " The answer is"),
        ("student", " Done"),
    ]
    assert (last.counters["calls"], last.counters["command_tokens"], last.counters["teacher_tokens"]) == (
        1,
        8,
        3,
    )
    html = render.chat_html([{"user": "hi", "spans": last.spans, "policy": "learned"}], h.model_names(pair))
    assert '<span class="relay-span relay-command" data-source="command" data-tokens="8"' in html
    assert ":&lt;call&gt;3&lt;/call&gt;." in html and "scripted/teacher" in html


def test_compare_runs_three_columns():
    outs = list(h.compare_run("What is 7 * 6?", FAST))
    last = outs[-1]
    assert len(last) == 10 and last[9] == ""
    student, relay, teacher = last[0], last[3], last[6]
    assert "relay-teacher" not in student and "relay-student" not in teacher
    assert "relay-teacher" in relay
    assert all("Final answer" in last[i] for i in (2, 5, 8))
    assert "relay-error" in list(h.compare_run("", FAST))[-1][9]


# ---------------------------------------------------------------- explorer


def test_explorer_view_over_a_results_folder(results):
    f = x.filters(results)
    assert f["pairs"] == ["tiny-random"] and f["benchmark"] == "arith"
    assert set(f["methods"]) == {"student", "teacher", "relay", "confidence"}
    v = x.explorer_view(results, "tiny-random", "arith", f["methods"], log_x=True)
    names = [t.name for t in v.accuracy_fig.data]
    # another pair's accuracy is not comparable: the paper's points never stand on this pair's accuracy chart
    assert "relay" in names and "confidence" in names and "reported in the paper" not in names
    assert v.accuracy_fig.layout.xaxis.type == "log"
    apgr = x.explorer_view(results, "tiny-random", "arith", f["methods"], y_axis="apgr")
    names = [t.name for t in apgr.accuracy_fig.data]
    assert "relay · tiny-random · arith" in names and "reported in the paper" in names
    paper = next(t for t in apgr.accuracy_fig.data if t.name == "reported in the paper")
    assert (
        abs(paper.y[0] - 60.4) < 0.1
        and "relayllm-qwen3-1.7b-8b" in paper.text[0]
        and "reported" in paper.text[0]
    )
    assert apgr.accuracy_fig.layout.yaxis.title.text.startswith("gap recovered")
    assert "qwen" not in apgr.provenance.lower() and "<table" in apgr.provenance
    assert len(v.flops_fig.data) >= 3
    relay = v.table[v.table["method"] == "relay"].iloc[0]
    assert relay["accuracy"] == "60.00%" and relay["APGR"] == "50.00%"
    assert len(v.samples) == 50 and sum(label.startswith("relay ·") for label, _ in v.samples) == 10
    no_paper = x.explorer_view(results, "tiny-random", "arith", ["relay"], show_reported=False, y_axis="apgr")
    assert "reported in the paper" not in [t.name for t in no_paper.accuracy_fig.data]


def test_sample_trace_is_coloured_and_escaped(results):
    v = x.explorer_view(results, "tiny-random", "arith", ["relay"])
    assert all(label.startswith("relay") for label, _ in v.samples)
    html = x.sample_trace(results, "tiny-random", "arith", v.samples[0][1])
    assert "relay-span relay-teacher" in html and "relay-span relay-command" in html
    assert "<script" not in html and "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    # the same problem as every other method setting answered it, side by side
    assert (
        'id="sample-sides"' in html and html.count('class="relay-side"') == 4
    )  # student, teacher, 2 x conf.
    assert "relay-error" in x.sample_trace(results, "tiny-random", "arith", "not json")


def test_provenance_comes_from_the_manifest(tmp_path):
    from relay_demo.results import parts as rio
    from relay_demo.ui import provenance

    config = {
        "pair": "p",
        "run_id": "r",
        "description": "d",
        "argv": ["/x/offline/evaluate.py", "--config", "a.yaml"],
    }
    with rio.open_run(tmp_path, "r", config) as w:
        w.flush()
    store, _ = x.open_store(tmp_path)
    facts = dict(provenance.run_facts(store.manifests[0]))
    assert facts["recipe"] == "a.yaml" and facts["reproduce"].endswith("-m offline.evaluate --config a.yaml")
    assert "CPU-minutes" in facts["cost"] and facts["sessions"] == "1"
    assert "No run manifest" in provenance.provenance_html(store.manifests, "other")
    # a session narrowed to a few methods (or redoing some) still names the whole recipe to reproduce the run
    argv = ["offline/evaluate.py", "--methods", "a,b", "--config", "a.yaml", "--redo=c"]
    narrowed = {**config, "argv": argv}
    assert provenance.reproduce_command(narrowed).endswith("-m offline.evaluate --config a.yaml")


def test_explorer_with_no_results(tmp_path):
    f = x.filters(tmp_path)
    assert f["pairs"] == [] and f["benchmark"] is None
    v = x.explorer_view(tmp_path, None, None, [])
    assert v.accuracy_fig is None and "No results yet" in v.note
    assert "No evaluation runs" in x.runs_markdown(tmp_path)


def test_runs_table_tells_a_finished_run_from_an_interrupted_one(tmp_path):
    from relay_demo.results import parts as rio

    rio.open_run(tmp_path, "done-run", {"pair": "tiny-random"}).close()
    # a run killed, or stopped by an error
    rio.open_run(tmp_path, "cut-run", {"pair": "tiny-random"}).close(finished=False)
    rows = {line.split(" | ")[0].strip("| "): line for line in x.runs_markdown(tmp_path).splitlines()[2:]}
    assert set(rows) == {"done-run", "cut-run"}
    assert "not finished" not in rows["done-run"] and "running" not in rows["done-run"]
    assert "not finished (last written 20" in rows["cut-run"]


def test_policy_controls_show_only_their_parameters():
    from relay_demo.ui import settings

    assert settings.visible_params("confidence", False) == {
        "tau": True,
        "p": False,
        "n": True,
        "every": False,
        "threshold": False,
        "call_bias": False,
        "router_path": False,
    }
    assert settings.visible_params("router", False)["router_path"]
    assert not settings.visible_params("router", True)["router_path"]  # hosted: no paths from the UI
    learned = settings.visible_params("learned", False)
    assert learned["call_bias"] and sum(learned.values()) == 1
    assert not any(settings.visible_params("student-only", False).values())
    assert "router policy is off" in settings.router_message("tiny-random", "router", True)
    assert settings.router_message("tiny-random", "learned", True) == ""


# ---------------------------------------------------------------- the selected setting: samples, comparison


def test_drill_down_reaches_every_setting_of_the_real_pair():
    """Issue 31, finding 4: the list was the first rows by method, param, problem (on the real pair's GSM8K,
    all confidence 0.3), so relay samples at bias 0 and 1 could not be reached."""
    from relay_demo.store import DEFAULT_RESULTS
    from relay_demo.ui import drilldown as d

    # the bfloat16 run's rows: with a float32 run of the same pair, the store names each "<pair> · <dtype>"
    pair, bench = "qwen2.5-coder-0.5b-1.5b · bfloat16", "gsm8k"
    keys = x.drill_settings(DEFAULT_RESULTS, pair, bench)
    assert {"relay-sft@0", "relay-sft@1", "sft-only", "student"} <= set(keys)
    # the bare name (the router's run, of unknown dtype) lists only what it opens
    bare = x.drill_settings(DEFAULT_RESULTS, "qwen2.5-coder-0.5b-1.5b", bench)
    assert bare and all(k.startswith("router@") for k in bare)
    for key in bare:
        assert x.open_samples(DEFAULT_RESULTS, "qwen2.5-coder-0.5b-1.5b", bench, d.Filters(setting=key))[0]
    assert "random-query@0.5" not in keys
    for key in ("relay-sft@0", "relay-sft@1"):
        choices, first, page, note = x.open_samples(DEFAULT_RESULTS, pair, bench, d.Filters(setting=key))
        label = key.replace("@", " ") + " · "
        assert len(choices) == d.PAGE and all(lab.startswith(label) for lab, _ in choices)
        n, pages = map(int, re.search(r"of (\d+) · page 1 of (\d+)", note).groups())
        assert first == choices[0][1] and n >= 200 and pages == -(-n // d.PAGE)
    wrong = d.Filters(setting="relay-sft@1", outcome="wrong", called="called", page=99)
    choices, _, page, note = x.open_samples(DEFAULT_RESULTS, pair, bench, wrong)
    assert choices and all(" ✗ · " in lab and " 0 calls " not in lab for lab, _ in choices)
    assert page >= 1 and f"page {page} of {page}" in note  # clamped to the last page


def test_sample_filters_and_pages(results, monkeypatch):
    from relay_demo.ui import drilldown as d

    def labels(**kw):
        return [lab for lab, _ in x.open_samples(results, "tiny-random", "arith", d.Filters(**kw))[0]]

    assert len(labels()) == 50
    wrong = labels(setting="relay", outcome="wrong")
    assert len(wrong) == 4 and all(lab.startswith("relay · ") and " ✗ · " in lab for lab in wrong)
    assert len(labels(setting="confidence@0.6", outcome="right")) == 7
    assert {lab.split(" · ")[0] for lab in labels(called="not called")} == {"student"}
    assert [lab.split(" · ")[1] for lab in labels(setting="relay", text="test-0-7")] == ["arith-test-0-7"]
    assert len(labels(setting="relay", text="onerror")) == 10  # the response's text is searched too
    monkeypatch.setattr(d, "PAGE", 20)
    pages = [labels(page=p) for p in (1, 2, 3)]
    assert [len(p) for p in pages] == [20, 20, 10] and len({*pages[0], *pages[1], *pages[2]}) == 50
    assert labels(page=9) == pages[2]  # past the end: the last page
    _, _, _, note = x.open_samples(results, "tiny-random", "arith", d.Filters(setting="relay@7"))
    assert "relay-error" in note and "no setting" in note
    assert "No sample matches" in x.open_samples(results, "tiny-random", "arith", d.Filters(text="zzz"))[3]


def test_a_click_on_a_point_or_a_row_names_its_setting():
    from relay_demo.ui import drilldown as d

    assert d.pick_key("relay@0", "p", "b") == "relay@0"
    assert d.pick_key("relay@0|p|b", "p", "b") == "relay@0"
    assert d.pick_key("relay@0|other|b", "p", "b") is None  # the every-pair APGR chart: another pair
    assert d.pick_key(None, "p", "b") is None
    assert d.row_key(["confidence", "0.3", "10", "70.00%"]) == "confidence@0.3"
    assert d.row_key(["relay", "", "10"]) == "relay" and d.row_key([]) is None


def test_compare_panel_pairs_the_selected_setting_with_a_baseline(results):
    from relay_demo.ui import drilldown as d

    html = x.comparison(results, "tiny-random", "arith", "relay", "student")
    assert "<table" in html and "exact McNemar p" in html and 'id="compare-power"' in html
    assert "+20.0 points" in html and "right where student is wrong: 2; the reverse: 0" in html
    assert "Click a chart point" in x.comparison(results, "tiny-random", "arith", d.ALL, "student")
    bad = x.comparison(results, "tiny-random", "arith", "relay", "<b>nope</b>")
    assert "relay-error" in bad and "<b>" not in bad and "&lt;b&gt;nope" in bad


def test_explorer_shows_error_bars_and_intervals(results):
    v = x.explorer_view(results, "tiny-random", "arith", None)
    relay = next(t for t in v.accuracy_fig.data if t.name == "relay")
    assert (
        relay.error_y.array[0] > 0 and relay.error_y.arrayminus[0] > 0 and "n = 10 problems" in relay.text[0]
    )
    row = v.table[v.table["method"] == "relay"].iloc[0]
    assert row["accuracy 95%"] == "[31.3, 83.2]"  # Wilson's for 6 of 10
    assert row["APGR 95%"] == "n/a" or row["APGR 95%"].startswith("[")


def test_a_pair_that_fails_to_load_says_why_and_the_next_request_loads_it(tmp_path, monkeypatch):
    # a registered pair whose models are here but whose student's weights are broken (issue 31, finding 1)
    import shutil

    from relay_demo.pairs import build_tiny_random, unload_pairs

    tiny = build_tiny_random()
    student, teacher = tmp_path / "qwen2.5-coder-0.5b-instruct", tmp_path / "qwen2.5-coder-1.5b-instruct"
    shutil.copytree(tiny / "student", student)
    shutil.copytree(tiny / "teacher", teacher)
    weights = student / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file")
    monkeypatch.setenv("RELAY_QWEN_DIR", str(tmp_path))
    s = h.Settings(pair="qwen2.5-coder-0.5b-1.5b", policy="student-only", max_tokens=4)
    try:
        *_, (chat, _, note, turns, box) = list(h.chat_submit("hello", [], s))
        assert "failed to load" in note and "next request tries again" in note
        assert turns == [] and box == "hello"  # nothing lost: the prompt stays in the box
        weights.write_bytes(good)  # the cause fixed: the next request loads the pair
        *_, (chat, counters, note, turns, box) = list(h.chat_submit("hello", [], s))
        assert note == "" and len(turns) == 1 and "finished" in counters
    finally:
        unload_pairs(["qwen2.5-coder-0.5b-1.5b"])


def test_stop_ends_the_answer_as_stopped_with_its_counters():
    # issue 31, finding 3: Stop is a normal end (pressed as the generation starts, before its first token:
    # the worker ends the row at its first span, so the answer is partial whatever the machine's speed)
    from relay_demo.ui.stream import StopButton

    button, polls = StopButton(), []
    pressed = button.start()

    def stopped():  # the first poll is before the worker starts; the press lands just after it
        polls.append(1)
        if len(polls) == 2:
            button.press()
        return pressed()

    s = h.Settings(pair="tiny-random", policy="interval", every=2, n=2, max_tokens=256, temperature=0.0)
    *_, (chat, counters, note, turns, box) = list(h.chat_submit("hello", [], s, stopped))
    assert note == "" and box == "" and len(turns) == 1  # the partial answer is kept
    assert 1 <= sum(x["tokens"] for x in turns[0]["spans"]) < 256
    assert "<b>stopped</b><span>finished</span>" in counters and "(est.)" not in counters
    assert turns[0]["inspect"]["token_ids"] and "not measured: the answer was stopped" in counters
    # the next answer is not stopped by the earlier press
    *_, (_, counters, _, turns, _) = list(h.chat_submit("hello", turns, s, button.start()))
    assert "<b>stopped</b>" not in counters and len(turns) == 2


def test_stop_while_waiting_for_the_pair_writes_nothing_and_says_so():
    from relay_demo.ui.stream import StopButton

    pair, button = h.get_pair("tiny-random"), StopButton()
    pair.lock.acquire()  # another user's generation holds the pair
    try:
        gen = h.chat_submit("hello", [], FAST, button.start())
        while "Waiting for the model" not in next(gen)[2]:
            pass
        button.press()
        *_, (chat, counters, note, turns, box) = list(gen)
    finally:
        pair.lock.release()
    assert "Stopped before the model was free" in note and turns == [] and box == "hello"


def test_stop_while_queued_in_gradio_stops_that_request_and_no_later_one():
    # the press comes before the handler runs (start): it counts for the Send clicked (clicked, queue=False,
    # runs first; the generation follows with .then); the generation ends before it starts, nothing written
    from relay_demo.ui.stream import StopButton

    button = StopButton()
    button.clicked()
    button.press()  # queued: no handler yet
    *_, (chat, counters, note, turns, box) = list(h.chat_submit("hello", [], FAST, button.start()))
    assert "Stopped before the model was free" in note and turns == [] and box == "hello"
    button.press()  # idle: a press with nothing running or queued stops nothing later
    button.clicked()
    running = button.start()
    assert not running()
    button.press()  # while it runs
    assert running()
    button.clicked()  # a request cleared while queued: never started, and no press
    button.clicked()
    later = button.start()
    assert not later()
    for _ in range(3):
        assert not button.start()()  # API calls (no click): each start is a run of its own
    button.clicked()  # then a Send, pressed while queued
    button.press()
    assert button.start()()


def test_compare_stop_ends_the_running_column_and_skips_the_rest():
    from relay_demo.ui.stream import StopButton

    button, polls = StopButton(), []
    pressed = button.start()

    def stopped():  # pressed as the student column starts, before its first token
        polls.append(1)
        if len(polls) == 2:
            button.press()
        return pressed()

    *_, last = list(h.compare_run("hello", FAST, stopped=stopped))
    assert "<b>stopped</b><span>finished</span>" in last[1]  # the student column, partial, exact counters
    assert "Not run: stopped." in last[3] and "Not run: stopped." in last[6]
    button.clicked()  # pressed while queued: no column runs
    button.press()
    *_, last = list(h.compare_run("hello", FAST, stopped=button.start()))
    assert "Stopped before the model was free" in last[0] and "Not run: stopped." in last[3]


def test_each_pair_sets_the_sidebar_defaults_it_was_made_for():
    # issue 31, findings 6 and 9: the trained Qwen student asks <call>32</call> and needs ~512 tokens; a
    # baseline pair whose student never writes a command starts on a policy that hands over
    from relay_demo.pairs import registry

    assert pi.pair_defaults("qwen2.5-coder-0.5b-1.5b-relay") == {
        "policy": "learned",
        "max_n": 32,
        "max_tokens": 512,
        "call_bias": 0.0,
        "temperature": 0.0,  # its numbers (dev, test) are greedy
    }
    for name in ("tiny-arith-base", "tiny-arith-grpo", "qwen2.5-coder-0.5b-1.5b", "tiny-random"):
        assert pi.pair_defaults(name)["policy"] not in ("learned", "student-only")
    for name in registry():
        d, lim = pi.pair_defaults(name), pi.get_limits(name)
        assert (
            d["policy"] in h.POLICY_KNOBS
            and 1 <= d["max_n"] <= lim.max_n
            and d["max_tokens"] <= lim.max_tokens
        )


def test_temperature_has_one_range_from_its_declaration():
    from relay_demo.knobs import TEMPERATURE

    assert h.build_sampling(h.Settings(temperature=TEMPERATURE.hi)).temperature == TEMPERATURE.hi
    with pytest.raises(ValueError, match=r"temperature must be in \[0, 2\]"):
        h.build_sampling(h.Settings(temperature=5))


def test_the_pair_list_marks_a_pair_that_cannot_run_on_this_backend(monkeypatch):
    monkeypatch.setenv("RELAY_BACKEND", "hf")
    labels = dict((name, label) for label, name in pi.pair_choices())
    assert labels["relayllm-qwen3-1.7b-8b"] == "relayllm-qwen3-1.7b-8b (needs vllm; this app runs hf)"
    assert labels["tiny-random"] == "tiny-random"
    assert "runs on vllm, not on this app's backend (hf)" in pi.pair_status("relayllm-qwen3-1.7b-8b")


def test_compare_student_alone_blocks_calls_and_grades_a_pairs_example():
    # issue 31, finding 7: the trained tiny-arith student alone printed raw <call>2</call> commands
    from relay_demo.pairs import examples

    s = h.Settings(pair="tiny-arith", policy="learned", max_tokens=64, temperature=0.0)
    *_, last = list(h.compare_run(examples("tiny-arith")[0], s))
    student_trace, student_answer = last[0], last[2]
    assert "&lt;call&gt;" not in student_trace and "relay-command" not in student_trace
    assert "expected 534" in student_answer and (
        "relay-right" in student_answer or "relay-wrong" in student_answer
    )
    assert "expected 534" in last[8]  # the teacher's column too
    policy = h.build_policy(h.Settings(policy="student-only"))
    assert policy.block_calls  # the Playground's student-only is the same "student alone"
