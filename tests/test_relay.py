"""The relay loop on real tiny transformers models: KV reuse, commands over BPE tokens, limits, streaming."""

from __future__ import annotations

import pytest
import torch

from relay_demo.backends.base import Delta, Job, Sampling
from relay_demo.backends.hf_cache import width_groups
from relay_demo.backends.hf_engine import HFEngine
from relay_demo.pairs import Pair
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, RelayBatch, RelayResult, relay, relay_batch, relay_stream
from relay_demo.tiny_random import byte_tokenizer

from .models import (
    BPE_SPANS,
    BPE_TEXT,
    bpe_chain_models,
    chain,
    chain_model,
    links,
    qwen_tokenizer,
    random_qwen2,
)

GREEDY = Sampling(temperature=0)


class NaiveEngine(HFEngine):
    """The reference: no cache, no batching; every step re-reads the whole sequence."""

    @torch.inference_mode()
    def run(self, jobs):
        for i, job in enumerate(jobs):
            s, start = job.session, len(job.session.ids)
            while True:
                logits = self.model(input_ids=torch.tensor([s.ids]), logits_to_keep=1).logits[0, -1].float()
                s.computed += len(s.ids)
                tok = int(torch.argmax(logits))
                s.ids.append(tok)
                top = [float(torch.softmax(logits, -1).max())] if job.want_top_prob else None
                fin = (
                    "eos"
                    if tok in self.eos_ids
                    else "length"
                    if len(s.ids) - start >= job.max_tokens
                    else None
                )
                yield [Delta(i, [tok], top, None, fin)]
                if fin:
                    break
                if job.cancelled:
                    yield [Delta(i, [], None, None, "cancelled")]
                    break


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


@pytest.fixture(scope="module")
def byte_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def random_models(byte_tok):
    """Random models over a byte vocabulary: real transformers models, small enough to re-read often."""
    return random_qwen2(byte_tok, hidden=64, seed=1), random_qwen2(byte_tok, hidden=128, seed=2)


def _pair(student, teacher, tok, engine=HFEngine, **limits):
    return Pair("test", engine(student, tok, "student"), engine(teacher, tok, "teacher"), Limits(**limits))


# lengths far apart: the teacher's first catch-up is fed in two groups (hf_cache.width_groups)
PROMPTS = ["What is 2 + 2?", "Write one short sentence about the sea, please.", "x", "ab", "T " + "la " * 60]


@pytest.mark.parametrize(
    "policy",
    [
        make_policy("interval", every=5, n=3),
        make_policy("interval", every=1, n=1),
        make_policy("confidence", tau=0.9, n=2),
        make_policy("random-token", p=0.15, n=2, seed=3),  # rows leave runs at different steps
        make_policy("teacher-only"),
        make_policy("student-only"),
    ],
    ids=lambda p: p.describe(),
)
def test_kv_reuse_matches_naive_reference(random_models, byte_tok, policy):
    """Cached, batched relay == a reference that re-reads everything at every step (forced handoffs)."""
    s, t = random_models
    limits = {"max_tokens": 40, "max_calls": 5, "max_n": 8}
    fast = relay_batch(_pair(s, t, byte_tok, **limits), PROMPTS, policy, sampling=GREEDY)
    # one row at a time, as a batch so that a random policy draws the same per row (seeded by row)
    ref = relay_batch(_pair(s, t, byte_tok, NaiveEngine, **limits), PROMPTS, policy, sampling=GREEDY)
    for a, b in zip(fast, ref, strict=True):
        assert a.token_ids == b.token_ids
        assert a.source_mask == b.source_mask
        assert [(x.source, x.token_ids) for x in a.spans] == [(x.source, x.token_ids) for x in b.spans]
        assert (a.calls, a.finish_reason) == (b.calls, b.finish_reason)
    if policy.name == "interval":
        assert all(r.calls == 5 for r in fast)  # the handoffs really happened
    # caching: each model ran every position about once, the reference far more
    assert sum(r.student_computed + r.teacher_computed for r in fast) < sum(
        r.student_computed + r.teacher_computed for r in ref
    ) or policy.name in ("teacher-only", "student-only")


def test_engine_rows_with_holes_cut_back_and_joined_match_reference(random_models, byte_tok):
    """hf engine: a row that ends early keeps masked holes in its shared batch row. Rows cut back into their
    cached positions, given another model's token, or fresh, run on with it, then one alone on its own
    cache: greedy tokens equal those of an engine that re-reads everything."""
    s, _ = random_models
    prompts = [list(byte_tok.encode(f"prompt {i} " + "z" * (3 * i + 40 * (i == 7)))) for i in range(8)]

    def drive(engine):
        def run(sessions, n):
            jobs = [Job(x, k, GREEDY) for x, k in zip(sessions, n, strict=True)]
            for _ in engine.run(jobs):
                pass

        rows = [engine.session(list(p)) for p in prompts]
        run(rows, [30] * 7 + [1])  # row 7, the longest, stops at once: 29 masked holes follow in its row
        rows[0].truncate(len(rows[0].ids) - 3)  # back into positions already cached
        rows[1].extend([int(byte_tok.encode("q")[0])])  # as a teacher's token would be
        rows.append(engine.session(prompts[0][:6]))  # fresh: nothing cached
        # row 7's holes are compacted away (hf_cache.COMPACT_AT); the fresh row's 6 prompt tokens widen the
        # block of new tokens, which leaves holes inside the other rows (their one or two new tokens are
        # right-aligned in it)
        run(rows, [5] * 9)
        run(rows[1:2], [4])  # alone: its own cache, built from its batch row, holes left out
        return [x.ids for x in rows]

    assert drive(HFEngine(s, byte_tok, "s")) == drive(NaiveEngine(s, byte_tok, "s"))


def test_rows_fed_in_groups_by_width():
    assert width_groups([3, 2, 90, 4]) == [[1, 0, 3], [2]]
    assert width_groups([10, 12, 11]) == [[0, 1, 2]]  # little to spare: one forward
    assert width_groups([1, 40]) == [[0, 1]]  # spares fewer than 64 positions


def test_teacher_reads_only_unseen_tokens(random_models, byte_tok):
    s, t = random_models
    r = relay(
        _pair(s, t, byte_tok, max_tokens=60),
        PROMPTS[1],
        make_policy("interval", every=6, n=4),
        sampling=GREEDY,
    )
    assert r.calls == 5
    assert r.teacher_prefill == r.teacher_new  # exactly the unseen tokens, never a re-read of the context
    assert r.teacher_new[1:] == [6 + 1] * 4  # six student tokens plus the teacher's own last token


def test_rows_join_and_leave_a_running_batch(random_models, byte_tok):
    """A row added while others decode writes what it writes alone; a cancelled row ends at once, as
    "cancelled", and its neighbours do not notice."""
    s, t = random_models
    pair = _pair(s, t, byte_tok, max_tokens=40, max_calls=5, max_n=8)
    policy = make_policy("interval", every=5, n=3)
    alone = [relay(pair, p, policy, sampling=GREEDY) for p in PROMPTS]
    batch = RelayBatch(pair, policy, sampling=GREEDY)
    first, doomed, late, results = batch.add(PROMPTS[0]), batch.add(PROMPTS[1]), None, {}
    for row, item in batch.events():
        if isinstance(item, RelayResult):
            results[row] = item
        elif late is None and row is first and item.source == "teacher":  # mid-run, both rows in it
            late = batch.add(PROMPTS[2])
            batch.cancel(doomed)
    assert results[doomed].finish_reason == "cancelled"
    assert len(results[doomed].token_ids) < len(alone[1].token_ids)
    for row, ref in ((first, alone[0]), (late, alone[2])):
        assert (results[row].token_ids, results[row].source_mask) == (ref.token_ids, ref.source_mask)
        assert results[row].finish_reason == ref.finish_reason


# -- commands over real BPE tokens -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_pair(tok):
    return bpe_chain_models(tok)


def test_command_split_over_bpe_tokens_is_found_stopped_and_stripped(bpe_pair, tok):
    s, t = bpe_pair
    r = relay(_pair(s, t, tok, max_tokens=64, max_n=16), "hi", make_policy("learned"), sampling=GREEDY)
    assert r.text == BPE_TEXT
    assert [(x.source, x.text) for x in r.spans] == BPE_SPANS
    assert (r.calls, r.command_tokens, r.teacher_tokens, r.student_tokens) == (1, 8, 3, 3 + 2)
    assert r.finish_reason == "eos"
    assert r.source_mask == [1] * 11 + [0] * 3 + [1] * 2
    assert r.call_ratio == pytest.approx(3 / 16)
    # the teacher could only have written ' The answer is' after seeing the stripped ':.' (a chain model)
    assert (
        r.teacher_new[0]
        == len(
            tok.apply_chat_template(
                [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False
            )
        )
        + 4
    )


def test_streamed_spans_rebuild_the_result(bpe_pair, tok):
    s, t = bpe_pair
    stream = relay_stream(_pair(s, t, tok, max_tokens=64), "hi", make_policy("learned"), sampling=GREEDY)
    deltas = list(stream)
    assert "".join(d.text for d in deltas) == stream.value.text
    assert [i for d in deltas for i in d.token_ids] == stream.value.token_ids
    # the command is never streamed as student text: it is held back until it completes
    assert not any(d.source == "student" and "<" in d.text for d in deltas)


# -- limits always end a generation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def looping_pair(tok):
    """A student that writes <call>9</call> forever, a teacher that never stops writing ' The'."""
    cmd = chain(tok, ["<", "call", ">", "9", "</", "cal", "l", ">."])
    student = links(chain(tok, ["\n"]) + cmd) | {cmd[-1]: cmd[0]} | {chain(tok, [" The"])[0]: cmd[0]}
    teacher = {
        chain(tok, ["."])[0]: chain(tok, [" The"])[0],
        chain(tok, [" The"])[0]: chain(tok, [" The"])[0],
    }
    return chain_model(tok, student, seed=5), chain_model(tok, teacher, seed=6)


def test_student_that_calls_forever_ends_at_limits(looping_pair, tok):
    s, t = looping_pair
    r = relay(
        _pair(s, t, tok, max_tokens=120, max_calls=5, max_n=4), "q", make_policy("learned"), sampling=GREEDY
    )
    assert r.finish_reason == "max_tokens"
    assert len(r.token_ids) == 120
    assert r.calls == 5
    assert r.teacher_tokens == 5 * 4  # N=9 clamped to max_n=4 each time


def test_teacher_that_never_stops_is_bounded_by_budget(looping_pair, tok):
    s, t = looping_pair
    r = relay(_pair(s, t, tok, max_tokens=30, max_n=1000), "q", make_policy("learned"), sampling=GREEDY)
    assert r.finish_reason == "max_tokens" and len(r.token_ids) == 30
    r = relay(_pair(s, t, tok, max_tokens=50), "q", make_policy("teacher-only"), sampling=GREEDY)
    assert (r.teacher_tokens, r.finish_reason, r.call_ratio) == (50, "max_tokens", 1.0)


def test_wall_clock_limit(random_models, byte_tok):
    s, t = random_models
    r = relay(
        _pair(s, t, byte_tok, max_tokens=100_000, max_wall_s=0.2),
        "q",
        make_policy("random-token", p=0.1),
        sampling=Sampling(0.7, seed=1),
    )
    assert r.finish_reason == "timeout"
    assert 0 < len(r.token_ids) < 100_000


def test_seeded_sampling_is_reproducible(random_models, byte_tok):
    s, t = random_models
    pair = _pair(s, t, byte_tok, max_tokens=30)
    pol = make_policy("random-token", p=0.2, n=2)
    a = relay_batch(pair, PROMPTS, pol, sampling=Sampling(0.9, seed=7))
    b = relay_batch(pair, PROMPTS, pol, sampling=Sampling(0.9, seed=7))
    c = relay_batch(pair, PROMPTS, pol, sampling=Sampling(0.9, seed=8))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


@pytest.mark.parametrize("bad", ["", "   ", [], [{"role": "user"}], 42])
def test_bad_prompts_are_refused_clearly(random_models, byte_tok, bad):
    s, t = random_models
    with pytest.raises(ValueError):
        relay(_pair(s, t, byte_tok), bad, make_policy("learned"))


def test_huge_prompt_is_refused_before_running(random_models, byte_tok):
    s, t = random_models
    with pytest.raises(ValueError, match="at most"):
        relay(_pair(s, t, byte_tok, max_prompt_tokens=1000), "word " * 5000, make_policy("learned"))


@pytest.mark.parametrize(
    "kw", [{"max_n": 0}, {"max_tokens": -1}, {"max_calls": -1}, {"max_tokens": 10**9}, {"max_wall_s": 0}]
)
def test_absurd_limits_are_refused(kw):
    with pytest.raises(ValueError):
        Limits(**kw)


def test_router_policy_needs_hidden_states(random_models, byte_tok, tmp_path):
    """The router reads the student's hidden state; a router that always fires hands every token over."""
    import numpy as np

    from relay_demo.policies import RouterMLP

    h = 64
    always = RouterMLP(
        {
            "w1": np.zeros((h, 4), np.float32),
            "b1": np.ones(4, np.float32),
            "w2": np.ones((4, 1), np.float32),
            "b2": np.zeros(1, np.float32),
        },
        {"hidden_size": h},
    )
    always.save(tmp_path / "router")
    s, t = random_models
    r = relay(
        _pair(s, t, byte_tok, max_tokens=12, max_calls=100),
        "q",
        make_policy("router", path=str(tmp_path / "router"), threshold=0.5, n=1),
        sampling=GREEDY,
    )
    assert r.teacher_tokens == 12 and r.calls == 12


# -- per-call records (the call inspector reads them) ------------------------------------------------


def test_a_command_call_is_recorded_with_its_spans(bpe_pair, tok):
    s, t = bpe_pair
    r = relay(_pair(s, t, tok, max_tokens=64, max_n=16), "hi", make_policy("learned"), sampling=GREEDY)
    [c] = r.call_log
    assert (c.index, c.trigger, c.detail) == (0, "command", "the student wrote <call>3</call>")
    assert (c.asked, c.granted, c.written, c.ended) == (3, 3, 3, "n")
    assert (c.at, c.start) == (3, 11)  # three student tokens, then eight of the command
    assert c.prefill == r.teacher_prefill[0] and c.teacher_s > 0
    assert [x.call for x in r.spans] == [None, 0, 0, None]


def test_trigger_calls_record_the_caps_and_why_they_ended(random_models, byte_tok):
    s, t = random_models
    pair = _pair(s, t, byte_tok, max_tokens=35, max_n=3)
    r = relay(pair, PROMPTS[0], make_policy("interval", every=6, n=5), sampling=GREEDY)
    assert r.calls == len(r.call_log) == 4  # at 6, 15, 24, 33: six student tokens, three of the teacher
    first, last = r.call_log[0], r.call_log[-1]
    assert first.detail == "6 student tokens since the last handoff (interval)"
    assert (first.asked, first.granted, first.written, first.ended) == (5, 3, 3, "n")  # capped by max N
    assert last.granted == last.written == 35 - last.start == 2 and last.ended == "max_tokens"
    teacher = [x for x in r.spans if x.source == "teacher"]
    assert [x.call for x in teacher] == list(range(4))
    assert [sum(len(x.token_ids) for x in teacher if x.call == c.index) for c in r.call_log] == [
        c.written for c in r.call_log
    ]
    assert all(r.source_mask[c.start : c.start + c.written] == [0] * c.written for c in r.call_log)


def test_student_alone_is_the_students_own_greedy_text(random_models, byte_tok):
    from relay_demo.calls import student_alone

    s, t = random_models
    pair = _pair(s, t, byte_tok, max_tokens=30)
    alone = relay(pair, PROMPTS[1], make_policy("student-only"), sampling=GREEDY)
    r = relay(pair, PROMPTS[1], make_policy("interval", every=4, n=3), sampling=GREEDY)
    c = r.call_log[0]
    assert c.at == 4 and r.token_ids[:4] == alone.token_ids[:4]
    ids, text, finish = student_alone(pair, r.prompt_ids, r.token_ids, c.at, c.granted)
    assert ids == alone.token_ids[4 : 4 + c.granted] and finish == "length"
    assert student_alone(pair, r.prompt_ids, r.token_ids, c.at, c.granted) == (ids, text, finish)  # cached
    with pytest.raises(ValueError, match="outside the answer"):
        student_alone(pair, r.prompt_ids, r.token_ids, len(r.token_ids) + 1, 3)


# -- the FLOPs split (relay_demo/cost.py) --------------------------------------------------------------


def test_flops_split_sums_and_is_exact_for_scripted_handoffs(random_models, byte_tok):
    """Five handoffs of 4 tokens after every 6 student tokens: the teacher's decode is its 20 tokens, its
    prefill every other position it ran (the prompt and 6 student tokens, then 6 + its own last token)."""
    s, t = random_models
    pair = _pair(s, t, byte_tok, max_tokens=60)
    r = relay(pair, PROMPTS[1], make_policy("interval", every=6, n=4), sampling=GREEDY)
    ps, pt = pair.student.n_params, pair.teacher.n_params
    assert (r.calls, r.teacher_tokens) == (5, 20)
    assert r.flops_student + r.flops_teacher_decode + r.flops_teacher_prefill == pytest.approx(r.flops)
    assert r.flops_student == 2 * ps * r.student_computed
    assert r.flops_teacher_decode == 2 * pt * 20
    caught_up = (len(r.prompt_ids) + 6) + 4 * (6 + 1)  # each handoff's new tokens (teacher_reads_only_unseen)
    assert r.flops_teacher_prefill == 2 * pt * (caught_up - 5)  # each catch-up's last position sampled
    assert r.teacher_computed == caught_up + 20 - 5


def test_an_answer_without_calls_costs_the_size_ratio_of_the_teacher_alone(random_models, byte_tok):
    from relay_demo.cost import teacher_alone_flops

    s, t = random_models
    pair = _pair(s, t, byte_tok, max_tokens=30)
    for policy in (make_policy("student-only"), make_policy("learned")):
        r = relay(pair, PROMPTS[0], policy, sampling=GREEDY)
        assert r.calls == 0 and r.flops_teacher_decode == r.flops_teacher_prefill == 0
        alone = teacher_alone_flops(pair.teacher.n_params, len(r.prompt_ids), len(r.token_ids))
        assert r.flops / alone == pytest.approx(pair.student.n_params / pair.teacher.n_params, rel=1e-12)
    r = relay(pair, PROMPTS[0], make_policy("teacher-only"), sampling=GREEDY)
    assert r.flops_student == 0 and r.flops_teacher_decode == 2 * pair.teacher.n_params * r.teacher_tokens
    assert r.flops == teacher_alone_flops(pair.teacher.n_params, len(r.prompt_ids), len(r.token_ids))
