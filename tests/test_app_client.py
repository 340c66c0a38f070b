"""The app launched in-process and driven over HTTP with ``gradio_client``: streaming, bad input, the
Explorer, hosted mode, and 8 sessions at once with no cross-talk.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_app_client.py -q
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client  # noqa: E402

from relay_demo.ui import QUEUE, build_demo, launch_options  # noqa: E402
from relay_demo.ui import handlers as h  # noqa: E402
from tests.test_ui_handlers import XSS, make_results  # noqa: E402

SETTINGS = h.Settings(pair="tiny-random", policy="interval", every=4, n=2, max_tokens=20, seed=3)


def _args(s: h.Settings = SETTINGS) -> list:
    d = asdict(s)
    return [d[f] for f in h.SETTINGS_FIELDS]


def _launch(results, hosted: bool):
    demo = build_demo(results, hosted=hosted)
    demo.queue(**QUEUE).launch(prevent_thread_lock=True, quiet=True, **launch_options())
    return demo


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    make_results(results)
    h.get_pair("tiny-random")  # load once before timing-sensitive requests
    demo = _launch(results, hosted=False)
    yield demo.local_url
    demo.close()


def _client(url: str) -> Client:
    return Client(url, verbose=False, download_files=False)


def test_chat_streams_through_the_app(app):
    job = _client(app).submit(f"What is 2+3? {XSS}", *_args(), api_name="/chat")
    updates = list(job)
    chat, counters, note, box = job.result()
    assert len(updates) >= 2, "expected several streamed updates"
    assert 'class="relay-span relay-teacher"' in chat and "&lt;script&gt;" in chat and "<script>" not in chat
    assert note == "" and "finished" in counters
    boxes = [u[3] for u in updates]
    assert boxes[0] == "" and all(b == {"__type__": "update"} for b in boxes[1:])  # cleared once, then left
    assert box == boxes[-1]


def test_bad_input_gets_a_message_and_keeps_the_text(app):
    c = _client(app)
    for prompt, message in (("", "empty"), ("z" * 200_000, "200,000 characters"), ("a\x1bb", "U+001B")):
        chat, _, note, box = c.predict(prompt, *_args(), api_name="/chat")
        assert "relay-error" in note and message in note
        assert box == prompt
        assert "relay-user" not in chat  # nothing was added to the conversation


def _session(url: str, k: int) -> tuple[int, str, str]:
    c = _client(url)
    first = f"session-{k}-first"
    c.predict(first, *_args(), api_name="/chat")
    chat, *_ = c.predict(f"session-{k}-second", *_args(), api_name="/chat")
    return k, first, chat


def test_eight_sessions_at_once_have_no_cross_talk(app):
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda k: _session(app, k), range(8)))
    assert len(done) == 8
    for k, _, chat in done:
        users = re.findall(r"session-(\d+)-(first|second)", chat)
        assert users == [(str(k), "first"), (str(k), "second")], f"session {k} saw {users}"
        assert chat.count('class="relay-msg relay-bot"') == 2


def test_compare_through_the_app(app):
    out = _client(app).predict("What is 12 * 3?", *_args(), api_name="/compare")
    assert len(out) == 10 and "relay-teacher" in out[3] and out[9] == ""


def test_explorer_through_the_app(app):
    c = _client(app)
    pair, bench, methods = (u["value"] for u in c.predict(api_name="/explorer_filters"))  # gr.update dicts
    assert pair == "tiny-random" and bench == "arith" and "relay" in methods
    acc, flops, table, na_legend, sample, note, provenance = c.predict(
        pair, bench, methods, True, True, "apgr", "decode", api_name="/explorer_view"
    )
    assert "<table" in provenance
    assert acc and flops and "relay" in str(table) and "method without a knob: param" in na_legend
    assert len(sample["choices"]) == 50
    trace = c.predict(pair, bench, sample["value"], api_name="/sample_trace")
    assert "relay-span" in trace and "<script" not in trace


def test_hosted_mode_ignores_paths_from_the_client(tmp_path):
    demo = _launch(tmp_path, hosted=True)
    try:
        s = h.Settings(pair="tiny-random", policy="router", router_path=str(tmp_path))
        _, _, note, _ = _client(demo.local_url).predict("hello", *_args(s), api_name="/chat")
        assert "no trained router for pair tiny-random" in note
    finally:
        demo.close()
