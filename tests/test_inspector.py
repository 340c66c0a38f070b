"""The call inspector's handlers: the panel of a clicked call, the student's own tokens, the ending without
the call (graded when the prompt is an example with a known answer), bad clicks, escaping."""

from __future__ import annotations

import pytest

from relay_demo.backends.base import Sampling
from relay_demo.pairs import example_answer, load_pair
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, relay
from relay_demo.ui import inspector


@pytest.fixture(scope="module")
def answered():
    pair = load_pair("tiny-random", "hf")
    r = relay(
        pair,
        "hello",
        make_policy("interval", every=5, n=3),
        limits=Limits(max_tokens=30),
        sampling=Sampling(0),
    )
    return pair, r, inspector.record("tiny-random", pair, r, "hello", max_tokens=30)


def test_a_click_shows_the_record_at_once_then_the_students_own_tokens(answered):
    pair, r, rec = answered
    first, filled = list(inspector.inspect(lambda name: pair, rec, 1))
    assert "Call 2 of 4" in first and "computing the student" in first
    assert "asked 3 · written 3" in filled and "5 student tokens since the last handoff" in filled
    assert f"prefilled {r.call_log[1].prefill} tokens" in filled and 'id="inspector-student"' in filled
    assert "computing" not in filled


def test_continuing_without_a_call_runs_the_student_to_the_answers_limit(answered):
    pair, r, rec = answered
    *_, html = list(inspector.continue_without(lambda name: pair, rec, 0))
    assert 'id="continue-with"' in html and 'id="continue-without"' in html
    assert "without call 1" in html and "Final answer" in html


@pytest.mark.parametrize("k", [None, -1, 4, 99])
def test_a_click_outside_the_calls_explains_what_to_click(answered, k):
    _, _, rec = answered
    assert list(inspector.inspect(lambda name: None, rec, k)) == [inspector.call_html(None, None)]
    assert "Click a teacher or command span" in inspector.call_html(rec, k)
    assert "Click a teacher or command span" in inspector.continue_html(None, 0, "x")


def test_model_text_is_escaped_and_known_answers_graded():
    rec = {
        "pair": "tiny-arith",
        "calls": [
            {"index": 0, "trigger": "command", "detail": "the student wrote <call>4</call>", "asked": 4,
             "at": 2, "start": 3, "granted": 4, "written": 2, "ended": "eos", "teacher_s": 0.5, "prefill": 9},
        ],
        "spans": [
            {"source": "student", "text": "<b>x", "tokens": 2, "call": None},
            {"source": "command", "text": "<call>4</call>", "tokens": 1, "call": 0},
            {"source": "teacher", "text": " #### 534", "tokens": 2, "call": 0},
        ],
        "gold": example_answer("tiny-arith", "Dan has 83 eggs. He buys 5 boxes of 67 eggs. He finds 71 eggs. "
                               "He finds 45 eggs. How many eggs does he have now?"),
    }  # fmt: skip
    assert rec["gold"] == "534"
    panel = inspector.call_html(rec, 0, alone="<script>alert(1)</script>")
    assert "<script>" not in panel and "&lt;script&gt;" in panel
    assert "&lt;call&gt;4&lt;/call&gt;" in panel and "the teacher wrote its end token" in panel
    html = inspector.continue_html(rec, 0, " #### 12")
    assert "<b>x" not in html
    right, wrong = html.index("relay-right"), html.index("relay-wrong")
    assert right < wrong  # with the call: 534, right; without it: 12, wrong


def test_a_capped_command_shows_the_n_written_and_the_n_granted():
    # issue 31, finding 6: <call>32</call> under max N 16 was shown as "asked 16", with no cap
    from relay_demo.protocol import find_command

    cmd = find_command("so <call>32</call>", 16)
    assert (cmd.n, cmd.asked) == (16, 32)
    assert (
        find_command("<call>x</call>", 16).asked == find_command("<call>x</call>", 16).n
    )  # invalid: default
    assert find_command("<call>" + "9" * 40 + "</call>", 16).asked == 10**9
    c = {"index": 0, "trigger": "command", "detail": "the student wrote <call>32</call>", "asked": cmd.asked}
    c |= {"at": 1, "start": 2, "granted": 16, "written": 16, "ended": "n", "teacher_s": 0.1, "prefill": 3}
    rec = {"pair": "tiny-arith", "calls": [c], "spans": []}
    assert "N written 32 · granted 16 (capped) · written 16" in inspector.call_html(rec, 0, alone="")
