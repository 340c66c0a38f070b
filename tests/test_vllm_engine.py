"""Tests of the vLLM engine on a tiny random Qwen2 built from config (real Qwen2.5 tokenizer).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_vllm_engine.py -q
One float32 engine is loaded per session (~20-40 s on 2 shared cores); each test then takes ~1 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
pytest.importorskip("vllm")

from relay_demo.backends.base import Delta, Job, Sampling
from relay_demo.backends.vllm_engine import VLLMEngine

TOKENIZER = Path("/work/shared/fixtures/qwen2.5-tokenizer")
EOS = [151645, 151643]


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> Path:
    """2 layers, hidden 64, 2 heads of 32 (vLLM CPU needs head size 32k). Weights drawn wide
    (initializer_range 0.5) so the model has peaked, varied next-token distributions."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen2")
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.5,
        bos_token_id=EOS[1],
        eos_token_id=EOS,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=EOS, bos_token_id=EOS[1])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def engine(tiny_path):
    eng = VLLMEngine.load(str(tiny_path), dtype="float32", max_model_len=1024, seed=0)
    yield eng
    eng.close()


def prompt(start: int, n: int) -> list[int]:
    """Distinct ids per test so one test's prefix cache never serves another."""
    return list(range(start, start + n))


def drain(engine, jobs: list[Job]) -> list[list[Delta]]:
    return list(engine.run(jobs))


def tokens_of(steps: list[list[Delta]], job: int) -> list[int]:
    return [t for step in steps for d in step if d.job == job for t in d.token_ids]


def finishes(steps: list[list[Delta]], job: int) -> list[str]:
    return [d.finish for step in steps for d in step if d.job == job and d.finish]


def reference_greedy(engine, ids: list[int], n: int) -> list[int]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = engine.llm.generate(
        [TokensPrompt(prompt_token_ids=ids)],
        SamplingParams(max_tokens=n, temperature=0, ignore_eos=True),
        use_tqdm=False,
    )
    return list(out[0].outputs[0].token_ids)


def test_import_is_light():
    code = "import sys, relay_demo.backends.vllm_engine as m; assert not {'vllm', 'torch'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_load_facts(engine, tiny_path):
    assert engine.backend == "vllm" and not engine.supports_hidden
    assert engine.eos_ids == set(EOS)
    assert engine.tokenizer.eos_token_id == 151645
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert engine.n_params == sum(p.numel() for p in model.parameters())


def test_greedy_matches_generate_and_session_grows(engine):
    ids = prompt(1000, 40)
    ref = reference_greedy(engine, ids, 12)
    s = engine.session(ids)
    steps = drain(engine, [Job(s, max_tokens=12, sampling=Sampling(temperature=0))])
    assert tokens_of(steps, 0) == ref
    assert s.ids == ids + ref
    assert finishes(steps, 0) == ["length"]
    assert steps[-1][-1].finish == "length"  # the finish comes with (or after) the last token


def test_eos_stops_and_is_kept(engine, monkeypatch):
    ids = prompt(3000, 20)
    ref = reference_greedy(engine, ids, 10)
    stop_at = next(k for k, t in enumerate(ref) if t not in ref[:k] and k >= 3)  # first new token from 3 on
    monkeypatch.setattr(engine, "eos_ids", {ref[stop_at]})  # any id the model writes can play eos
    s = engine.session(ids)
    steps = drain(engine, [Job(s, max_tokens=10, sampling=Sampling(temperature=0))])
    assert tokens_of(steps, 0) == ref[: stop_at + 1]
    assert finishes(steps, 0) == ["eos"]


def test_cancel_stops_only_that_job(engine):
    sessions = [engine.session(prompt(5000 + 100 * i, 10 + 7 * i)) for i in range(3)]
    jobs = [Job(s, max_tokens=8, sampling=Sampling(temperature=0), row=i) for i, s in enumerate(sessions)]
    steps = []
    for step in engine.run(jobs):
        steps.append(step)
        if len(tokens_of(steps, 1)) >= 2:
            jobs[1].cancel()
    assert len(tokens_of(steps, 1)) == 2
    assert finishes(steps, 1) == ["cancelled"]
    for j in (0, 2):
        assert len(tokens_of(steps, j)) == 8 and finishes(steps, j) == ["length"]
        assert sessions[j].ids[-8:] == tokens_of(steps, j)
    assert len(sessions[1].ids) == 17 + 2


def test_cancel_before_first_step(engine):
    s = engine.session(prompt(5500, 10))
    job = Job(s, max_tokens=5)
    job.cancel()
    steps = drain(engine, [job])
    assert steps == [[Delta(job=0, token_ids=[], finish="cancelled")]]
    assert s.ids == prompt(5500, 10) and s.computed == 0


def test_batch_matches_single_and_seeds_repeat(engine):
    lengths = [3, 17, 33, 64, 5, 90, 41, 8]
    prompts = [prompt(7000 + 200 * i, n) for i, n in enumerate(lengths)]
    refs = [reference_greedy(engine, p, 6) for p in prompts]
    sessions = [engine.session(p) for p in prompts]
    steps = drain(engine, [Job(s, 6, Sampling(temperature=0), row=i) for i, s in enumerate(sessions)])
    assert [tokens_of(steps, i) for i in range(8)] == refs

    def sampled(seed: int) -> list[list[int]]:
        same = prompt(9000, 12)
        jobs = [Job(engine.session(same), 8, Sampling(temperature=1.0, seed=seed), row=i) for i in range(4)]
        out = drain(engine, jobs)
        return [tokens_of(out, i) for i in range(4)]

    first, again, other = sampled(7), sampled(7), sampled(8)
    assert first == again
    assert len({tuple(t) for t in first}) > 1  # rows get different seeds (seed + row)
    assert first != other


def test_computed_and_prefix_cache(engine, monkeypatch):
    monkeypatch.setattr(engine, "resume_sessions", False)  # a fresh request per run: the prefix cache alone
    ids = prompt(11000, 100)
    s = engine.session(ids)
    drain(engine, [Job(s, max_tokens=4, sampling=Sampling(temperature=0))])
    assert s.last_prefill == 100
    assert s.computed == 100 + 3  # whole prompt + generated tokens but the last (not fed yet)
    before = s.computed
    s.extend(prompt(12000, 5))  # e.g. teacher tokens, 109 ids now
    drain(engine, [Job(s, max_tokens=1, sampling=Sampling(temperature=0))])
    # 103 positions were computed -> 3 full blocks of 32 cached; the re-read is 109 - 96 = 13,
    # i.e. the 5 new ids + the unfed last token + 7 old ones, never the whole prompt.
    assert s.computed - before == 109 - 96 == s.last_prefill
    assert s.computed - before <= 5 + 1 + 31


def test_truncate_then_rerun_reuses_cache(engine):
    s = engine.session(prompt(13000, 70))
    drain(engine, [Job(s, max_tokens=3, sampling=Sampling(temperature=0))])
    s.truncate(71)  # a policy refused the last two tokens
    before = s.computed
    steps = drain(engine, [Job(s, max_tokens=2, sampling=Sampling(temperature=0))])
    assert s.computed - before == (71 - 64) + 1
    assert len(s.ids) == 73 and len(tokens_of(steps, 0)) == 2


def test_top_probs_are_raw_model_probs(engine, tiny_path):
    import torch
    from transformers import AutoModelForCausalLM

    ids = prompt(15000, 30)
    greedy = engine.session(ids)
    hot = engine.session(ids)
    jobs = [
        Job(greedy, 10, Sampling(temperature=0), want_top_prob=True),
        Job(hot, 10, Sampling(temperature=2.0, top_p=0.9, seed=3), want_top_prob=True, row=1),
    ]
    steps = drain(engine, jobs)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()
    for j, s in enumerate((greedy, hot)):
        got = [p for step in steps for d in step if d.job == j for p in d.top_probs]
        assert len(got) == 10 and all(0 < p <= 1 for p in got)
        with torch.no_grad():
            logits = model(torch.tensor([s.ids])).logits[0, len(ids) - 1 : -1]
        want = torch.softmax(logits.float(), -1).max(-1).values.tolist()
        assert got == pytest.approx(want, abs=2e-3)  # raw distribution, not temperature 2.0


def stop_string_in(engine, ref: list[int]) -> tuple[str, int]:
    """A string that starts in token k-1 of ``ref`` and ends inside token k (k 0-based: the completing
    token), and k."""
    texts = [engine.tokenizer.decode(ref[:k]) for k in range(len(ref) + 1)]
    for k in range(2, len(ref)):
        prev, cur = texts[k], texts[k + 1]
        if cur.startswith(prev) and len(prev) - len(texts[k - 1]) >= 2 and len(cur) - len(prev) >= 3:
            stop = cur[len(prev) - 2 : len(prev) + 1]
            if stop not in texts[k] and "\ufffd" not in cur:
                return stop, k
    pytest.fail("no token pair with clean text in the greedy output")


def test_stop_strings_keep_exact_tokens(engine):
    ids = prompt(17000, 15)
    ref = reference_greedy(engine, ids, 20)
    stop, k = stop_string_in(engine, ref)
    s = engine.session(ids)
    steps = drain(engine, [Job(s, 20, Sampling(temperature=0), stop_strings=(stop,))])
    assert tokens_of(steps, 0) == ref[: k + 1]
    assert finishes(steps, 0) == ["cancelled"]
    assert s.ids == ids + ref[: k + 1]


def test_want_hidden_refused(engine):
    with pytest.raises(NotImplementedError, match="hidden"):
        drain(engine, [Job(engine.session([1, 2, 3]), 2, want_hidden=True)])


def test_bad_input(engine):
    with pytest.raises(ValueError, match="empty"):
        drain(engine, [Job(engine.session([]), 2)])
    s = engine.session([1, 2])
    with pytest.raises(ValueError, match="twice"):
        drain(engine, [Job(s, 2), Job(s, 2)])
    with pytest.raises(ValueError, match="max_model_len"):
        drain(engine, [Job(s, 2), Job(engine.session([5] * 1024), 2)])
    assert not engine.llm.llm_engine.has_unfinished_requests()
    assert drain(engine, [Job(s, 0)]) == [[Delta(job=0, token_ids=[], finish="length")]]


def test_second_engine_bf16_and_close(engine, tiny_path):
    """Student + teacher in one process; closing one leaves the other working."""
    ids = prompt(25000, 100)
    before = reference_greedy(engine, ids, 4)
    other = VLLMEngine.load(str(tiny_path), dtype="bfloat16", max_model_len=128, name="teacher")
    assert other.name == "teacher" and other.max_model_len == 128
    s = other.session(ids)
    steps = drain(other, [Job(s, 50, Sampling(temperature=0))])
    assert len(tokens_of(steps, 0)) == 28 and finishes(steps, 0) == ["length"]  # stopped at max_model_len
    other.close()
    assert reference_greedy(engine, ids, 4) == before
    with pytest.raises(RuntimeError, match="closed"):
        drain(other, [Job(engine.session([1, 2, 3]), 2)])


def test_many_runs_and_early_close_leave_nothing(engine):
    core = engine.llm.llm_engine
    for r in range(20):
        drain(
            engine,
            [Job(engine.session(prompt(20000 + 10 * r, 5)), 3, Sampling(0.7, seed=r)) for _ in range(2)],
        )
    gen = engine.run([Job(engine.session(prompt(21000, 5)), 50, Sampling(temperature=0))])
    next(gen)
    with pytest.raises(RuntimeError, match="re-entrant"):
        drain(engine, [Job(engine.session([1, 2, 3]), 2)])
    gen.close()  # the caller walks away mid-run: the request is aborted
    assert not core.has_unfinished_requests()
    assert not core.output_processor.request_states


# -- sessions kept alive between runs (resumable requests, relay_demo/backends/vllm_sessions.py) -------------


def greedy(n: int, **kw) -> Job:
    return Job(None, n, Sampling(temperature=0), **kw)


def run_greedy(engine, s, n: int, **kw) -> list[int]:
    job = greedy(n, **kw)
    job.session = s
    return tokens_of(drain(engine, [job]), 0)


def scheduler(engine):
    return engine.llm.llm_engine.engine_core.engine_core.scheduler


def test_resumed_chunks_prefill_only_new_ids_and_match_fresh_requests(engine):
    s = engine.session(prompt(30000, 100))
    out = run_greedy(engine, s, 4)
    assert out == reference_greedy(engine, prompt(30000, 100), 4)
    assert s.last_prefill == 100 and s.parked is not None and s.parked.held == 103
    for k, new in enumerate([5, 1, 40, 7]):  # handoffs: ids appended between runs, as the relay does
        s.extend(prompt(31000 + 100 * k, new))
        before, ids = s.computed, list(s.ids)
        out = run_greedy(engine, s, 6)
        assert out == reference_greedy(engine, ids, 6)  # same as a fresh request on the whole context
        assert s.last_prefill == new + 1  # the new ids + the last sampled token, nothing old
        assert s.computed - before == new + 1 + 5
        assert s.parked.held == len(s.ids) - 1
    assert not engine.llm.llm_engine.has_unfinished_requests()  # parked requests hide from LLM.generate
    s.release()


def test_release_frees_the_parked_request(engine):
    s = engine.session(prompt(32000, 50))
    run_greedy(engine, s, 3)
    internal = s.parked.internal_id
    assert internal in scheduler(engine).requests
    s.release()
    assert s.parked is None and internal not in scheduler(engine).requests
    dropped = engine.session(prompt(32100, 50))
    run_greedy(engine, dropped, 3)
    internal = dropped.parked.internal_id
    del dropped  # never released: freed at the next run
    run_greedy(engine, engine.session([1, 2, 3]), 1)
    assert internal not in scheduler(engine).requests


def test_truncate_below_what_vllm_holds_falls_back(engine):
    ids = prompt(33000, 70)
    s = engine.session(ids)
    gen = run_greedy(engine, s, 3)  # vLLM holds 72 ids: all but the last sampled one
    s.truncate(72)  # the last token refused: what vLLM holds is still valid...
    assert s.parked is not None
    s.extend([5, 6])
    assert run_greedy(engine, s, 2) == reference_greedy(engine, ids + gen[:2] + [5, 6], 2)
    assert s.last_prefill == 2  # ...and the next chunk resumes it
    first = s.parked.internal_id
    s.truncate(60)  # below what vLLM holds: freed, the next run is a fresh request
    assert s.parked is None and first not in scheduler(engine).requests
    assert run_greedy(engine, s, 2) == reference_greedy(engine, s.ids[:60], 2)
    assert s.last_prefill == 60 - 32  # the prefix cache still has the first block
    assert s.parked.internal_id != first
    s.release()


def test_stop_strings_on_a_resumed_session(engine):
    """vLLM refuses stop strings on resumable requests in AsyncLLM only: in-process its output processor
    matches them, and the chunk is parked where it stopped."""
    s = engine.session(prompt(34000, 40))
    run_greedy(engine, s, 2)
    s.extend([9, 10, 11])
    context = list(s.ids)
    ref = reference_greedy(engine, context, 20)
    stop, k = stop_string_in(engine, ref)
    steps = drain(engine, [Job(s, 20, Sampling(temperature=0), stop_strings=(stop,))])
    assert tokens_of(steps, 0) == ref[: k + 1] and finishes(steps, 0) == ["cancelled"]
    assert s.last_prefill == 4 and s.parked.held == len(s.ids) - 1
    s.extend([12])
    context = list(s.ids)
    assert run_greedy(engine, s, 3) == reference_greedy(engine, context, 3) and s.last_prefill == 2
    s.release()


def test_cancel_parks_the_session(engine):
    s = engine.session(prompt(34500, 40))
    run_greedy(engine, s, 2)
    jobs = [Job(s, 10, Sampling(temperature=0)), Job(engine.session(prompt(34600, 30)), 10, row=1)]
    steps = []
    for step in engine.run(jobs):
        steps.append(step)
        if tokens_of(steps, 0):
            jobs[0].cancel()
    assert finishes(steps, 0) == ["cancelled"] and len(tokens_of(steps, 0)) == 1
    assert len(tokens_of(steps, 1)) == 10  # the other job ran on
    assert s.parked is not None and s.parked.held == len(s.ids) - 1  # kept, as if its chunk had ended
    s.extend([8, 9])
    context = list(s.ids)
    assert run_greedy(engine, s, 3) == reference_greedy(engine, context, 3)
    assert s.last_prefill == 3
    parked, job = s.parked, Job(s, 5, Sampling(temperature=0))
    job.cancel()  # before the run: nothing runs, the parked request stays
    assert drain(engine, [job]) == [[Delta(job=0, token_ids=[], finish="cancelled")]]
    assert s.parked is parked
    s.release()
    jobs[1].session.release()


def test_session_capped_at_max_model_len(engine):
    ids = [7 + i % 50 for i in range(1000)]
    s = engine.session(ids)
    run_greedy(engine, s, 10)
    s.extend([3, 4, 5, 6, 7])  # 1015 ids of 1024
    context = list(s.ids)
    steps = drain(engine, [Job(s, 50, Sampling(temperature=0))])
    assert tokens_of(steps, 0) == reference_greedy(engine, context, 9) and finishes(steps, 0) == ["length"]
    assert len(s.ids) == 1024 and s.last_prefill == 6
    with pytest.raises(ValueError, match="max_model_len"):
        drain(engine, [Job(s, 1, Sampling(temperature=0))])
    s.release()
    assert run_greedy(engine, engine.session([1, 2, 3]), 2)  # the engine lives on


def test_parked_sessions_stay_within_half_the_slots(engine, monkeypatch):
    monkeypatch.setattr(engine._keeper, "max_seqs", 2)
    sessions = [engine.session(prompt(35000 + 100 * i, 20)) for i in range(3)]
    steps = drain(engine, [Job(s, 2, Sampling(temperature=0), row=i) for i, s in enumerate(sessions)])
    assert [s.parked is not None for s in sessions] == [True, True, False]  # the third ran as a plain request
    assert [tokens_of(steps, i) for i in range(3)] == [
        reference_greedy(engine, s.ids[:20], 2) for s in sessions
    ]
    newer = engine.session(prompt(36000, 20))
    run_greedy(engine, newer, 2)  # the least recently used parked session makes room
    assert [s.parked is not None for s in (*sessions, newer)] == [False, True, False, True]
    for s in (*sessions, newer):
        s.release()
    assert len(engine._keeper) == 0


def test_seeded_sampling_repeats_on_resumed_sessions(engine):
    def chunks(seed: int) -> list[int]:
        s, out = engine.session(prompt(37000, 30)), []
        for k in range(3):
            out += tokens_of(drain(engine, [Job(s, 5, Sampling(temperature=1.0, seed=seed))]), 0)
            assert s.parked is not None
            s.extend([4 + k])
        s.release()
        return out

    assert chunks(5) == chunks(5) != chunks(6)


def test_error_while_adding_leaves_no_parked_request_behind(engine):
    s = engine.session(prompt(38000, 20))
    run_greedy(engine, s, 2)
    internal = s.parked.internal_id
    bad = engine.session([10**9])  # vLLM refuses an id past its vocabulary when the request is added
    with pytest.raises(Exception, match="vocab"):
        drain(engine, [Job(bad, 2, Sampling(temperature=0)), Job(s, 2, Sampling(temperature=0), row=1)])
    assert s.parked is None and internal not in scheduler(engine).requests  # never resumed: freed
    context = list(s.ids)
    assert run_greedy(engine, s, 2) == reference_greedy(engine, context, 2)
    s.release()


def test_top_probs_on_a_resumed_chunk(engine):
    s = engine.session(prompt(39000, 30))
    run_greedy(engine, s, 3)
    s.extend([5, 6])
    fresh = engine.session(s.ids)
    probs = []
    for one in (s, fresh):
        steps = drain(engine, [Job(one, 6, Sampling(temperature=0), want_top_prob=True)])
        probs.append([p for step in steps for d in step for p in d.top_probs])
    assert s.last_prefill == 3 and s.parked.internal_id != fresh.parked.internal_id  # resumed, and a new one
    assert s.ids == fresh.ids and len(probs[0]) == 6
    assert probs[0] == pytest.approx(probs[1], abs=1e-5)
    s.release()
    fresh.release()
