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
    run = {
        "policy": make_policy("interval", every=5, n=3),
        "limits": Limits(max_tokens=30),
        "sampling": Sampling(0),
    }
    r = relay(pair, "hello", **run)
    return pair, r, inspector.record("tiny-random", pair, r, [{"role": "user", "content": "hello"}], **run)


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
    assert "without call 1" in html and "Final answer" in html and "greedy" in html and "Sampled" not in html


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
        "token_ids": [1, 2, 3, 4, 5], "policy": make_policy("learned"), "sampling": Sampling(0.5, seed=3),
        "gold": example_answer("tiny-arith", "Dan has 83 eggs. He buys 5 boxes of 67 eggs. He finds 71 eggs. "
                               "He finds 45 eggs. How many eggs does he have now?"),
    }  # fmt: skip
    assert rec["gold"] == "534"
    panel = inspector.call_html(rec, 0, alone="<script>alert(1)</script>")
    assert "<script>" not in panel and "&lt;script&gt;" in panel
    assert "&lt;call&gt;4&lt;/call&gt;" in panel and "the teacher wrote its end token" in panel
    html = inspector.continue_html(rec, 0, {"spans": [{"source": "student", "text": " #### 12", "tokens": 2}],
                                            "token_ids": [6, 7]})  # fmt: skip
    assert "<b>x" not in html and "temperature 0.5, seed 3" in html and "changed nothing" not in html
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


# -- "Continue without this call" compares like with like (issue 31, finding 8) -------------------------


@pytest.fixture(scope="module")
def two_calls():
    """A scripted pair: the student writes ' Let me think', calls (N=2), writes ' The answer', calls again
    (N=3) and would end ': 9' alone. The teacher's first span is ' The answer', what the student writes there
    itself; its second is ' 7', the right answer. So call 1 changes nothing and call 2 decides the answer."""
    from relay_demo.backends.hf_engine import HFEngine
    from relay_demo.pairs import Pair

    from .models import chain, chain_model, links, qwen_tokenizer

    tok = qwen_tokenizer()
    first = [":<", "call", ">", "2", "</", "cal", "l", ">."]  # the teacher reads ':.' where it was
    second = ["<c", "all", ">\n", "3", " </", "ca", "ll", ">:"]  # no token of the first: a chain model
    student = chain(tok, ["\n", " Let", " me", " think", *first, " The", " answer", *second, " ", "9"])
    teacher = links(chain(tok, [":.", " The", " answer"])) | links(chain(tok, [":", " ", "7"]))
    teacher[chain(tok, ["7"])[0]] = tok.eos_token_id
    s = chain_model(tok, links([*student, tok.eos_token_id]), seed=11)
    t = chain_model(tok, teacher, seed=12)
    limits = Limits(max_tokens=64, max_n=16)
    return Pair("scripted", HFEngine(s, tok, "student"), HFEngine(t, tok, "teacher"), limits)


def _answered(pair, monkeypatch):
    """The Playground's answer at the sidebar's default sampling (0.7, seed 0) and its inspection record."""
    from relay_demo.ui import handlers as h

    monkeypatch.setattr(h, "get_pair", lambda name: pair)
    monkeypatch.setattr(h, "pair_loaded", lambda name: True)
    s = h.Settings(pair="tiny-random", policy="learned", max_n=16, max_tokens=64, temperature=0.7, seed=0)
    *_, (_, _, note, turns, _) = list(h.chat_submit("What is 3 + 4?", [], s))
    assert note == "" and [x["source"] for x in turns[0]["spans"]] == [
        "student", "command", "teacher", "command", "teacher",
    ]  # fmt: skip
    rec = turns[0]["inspect"]
    rec["gold"] = "7"
    return rec


def test_a_call_that_changed_nothing_gets_no_verdict_pinned_on_it(two_calls, monkeypatch):
    # before: the ending without call 1 was the student alone, greedy, every later call blocked too, so it
    # ended ': 9' (wrong) and call 1 looked like the one that made the answer right
    rec = _answered(two_calls, monkeypatch)
    *_, html = list(inspector.continue_without(lambda name: two_calls, rec, 0))
    without = html[html.index('id="continue-without"') :]
    assert "relay-right" in without and "relay-wrong" not in html  # call 2 still gave the right answer
    assert "call 1 changed nothing" in html and "Both endings are the same." in html
    assert "same policy (learned), sampling (temperature 0.7, seed 0)" in html
    assert "only call 1 is blocked" in html and "later calls included" in html


def test_without_the_deciding_call_the_ending_turns_wrong(two_calls, monkeypatch):
    rec = _answered(two_calls, monkeypatch)
    first, *_, html = list(inspector.continue_without(lambda name: two_calls, rec, 1))
    assert "same policy and sampling" in first
    with_call, without = html.split('id="continue-without"')
    assert "relay-right" in with_call and "relay-wrong" in without and "changed nothing" not in html
    assert "9" in without and "relay-teacher" not in without  # no call left after it: the student alone


@pytest.mark.parametrize(
    ("name", "policy", "later"),
    # tiny-arith's trained student does the sum itself once its call is refused; interval calls again
    [("tiny-arith", make_policy("learned"), 0), ("tiny-random", make_policy("interval", every=5, n=3), 1)],
)
def test_a_branch_blocks_the_call_at_its_first_position_only(name, policy, later):
    # a trained student's one-token <call> (logit bias) and a policy trigger: no call where the branch starts,
    # the policy's later calls as usual
    from relay_demo.backends.base import chat_ids
    from relay_demo.pairs import examples
    from relay_demo.relay.branch import teacher_view, without_call

    pair, prompt = load_pair(name, "hf"), examples(name)[0]
    limits, sampling = Limits(max_tokens=64), Sampling(0)
    r = relay(pair, prompt, policy, limits=limits, sampling=sampling)
    c, tok = r.call_log[0], pair.student.tokenizer
    assert r.spans[1].source == ("command" if policy.honours_commands else "teacher")
    spans = [{"source": s.source, "text": s.text, "tokens": len(s.token_ids)} for s in r.spans]
    t_prompt = chat_ids(pair.teacher.tokenizer, prompt, pair.chat_kwargs)
    ids = (r.prompt_ids + r.token_ids[: c.at], t_prompt + teacher_view(spans, r.token_ids, c.at, tok))
    b = without_call(pair, policy, ids, limits, sampling, max_tokens=64 - c.at)
    assert b.spans[0].source == "student" and not b.spans[0].text.startswith("<call>")
    assert b.calls >= later and all(x.at > 0 for x in b.call_log)
