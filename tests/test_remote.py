"""The remote backend against a real vLLM OpenAI server (``python -m vllm.entrypoints.openai.api_server``)
that this module starts on the tiny random teacher, on a free port, and kills at the end.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_remote.py -q

What is checked: greedy relays with the teacher (or the student) behind the URL equal the in-process
transformers relay (also the committed tiny-arith relay student on a second server, which stops at its
one-token ``</call>`` and takes ``call_bias`` as a logit bias); the teacher's prefill per handoff comes from
the server's cached-token counts and is the new tokens plus at most one partial cache block; a cancelled job
is aborted on the server; the CLI and the relay server take ``--teacher-url``; bad URLs and a mismatched
tokenizer fail at load with one clear error; and the server killed in the middle of a teacher span ends that
call as ``teacher_unavailable``, keeps every token written, and lets the student finish alone (the relay
server's last chunk says so). The kill is the last test of the module (it ends the shared server); nothing
here waits on timing except bounded polls. About 45-50 s on two shared cores: it runs with the fast tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from relay_demo.backends.base import Job, ModelUnavailable, Sampling
from relay_demo.backends.hf_engine import HFEngine
from relay_demo.backends.remote import RemoteEngine
from relay_demo.pairs import Pair, build_tiny_random, examples, load_pair
from relay_demo.policies import make_policy
from relay_demo.relay import Limits, relay_batch

from .conftest import REPO

pytest.importorskip("vllm")

GREEDY = Sampling(temperature=0)
PROMPTS = ["What is 2 + 2?", "Write one short sentence about the sea, please.", "x", "Count: 1, 2, 3,"]
BLOCK = 32  # the server's --block-size: a handoff re-reads at most BLOCK - 1 cached tokens
QWEN_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "qwen2.5-tokenizer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, path: str, deadline_s: float = 300.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)  # readiness poll, bounded by the deadline
    raise RuntimeError(f"server not ready after {deadline_s}s:\n{log.read_text()[-4000:]}")


class Process:
    """A server in its own process group, so that killing it also kills vLLM's engine-core child."""

    def __init__(self, cmd: list[str], log: Path, env: dict):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tiny = build_tiny_random(tmp_path_factory.mktemp("pair"))
    return str(tiny / "student"), str(tiny / "teacher")


@contextlib.contextmanager
def _vllm(model: str, tmp: Path, max_model_len: int):
    """``python -m vllm.entrypoints.openai.api_server`` on ``model`` (CPU, float32, eager: ~20 s to start)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--seed", "0"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    cmd += ["--max-model-len", str(max_model_len), "--block-size", str(BLOCK), "--enforce-eager"]
    cmd += ["--enable-prefix-caching", "--enable-prompt-tokens-details"]
    cmd += ["--kv-cache-memory-bytes", str(256 << 20)]  # tiny models: 1 GiB was refused beside a busy job
    server = Process(cmd, tmp / "vllm.log", env)
    try:
        _wait(url, server.proc, server.log, "/health")
        yield url, server
    finally:
        server.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def vllm_server(folders, tmp_path_factory):
    with _vllm(folders[1], tmp_path_factory.mktemp("vllm"), 1024) as served:
        yield served


@pytest.fixture(scope="module")
def url(vllm_server):
    return vllm_server[0]


@pytest.fixture(scope="module")
def hf(folders):
    return tuple(HFEngine.load(p, dtype="float32") for p in folders)


@pytest.fixture(scope="module")
def remote(url, folders):
    eng = RemoteEngine.load(url, folders[1], read_timeout_s=30)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def relay_server(url, vllm_server, tmp_path_factory):
    """``python -m relay_demo serve --teacher-url``: the tiny-random pair with its teacher on the vLLM server
    (the same weights: build_tiny_random is deterministic, and the server's folder is a copy of them)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "relay_demo", "serve", "--pair", "tiny-random", "--port", str(port)]
    cmd += ["--teacher-url", url, "--remote-timeout-s", "30"]
    server = Process(cmd, tmp_path_factory.mktemp("relay") / "relay.log", env)
    try:
        _wait(base, server.proc, server.log, "/v1/models")
        yield base
    finally:
        server.kill(signal.SIGTERM)


def _pair(student, teacher, **limits) -> Pair:
    return Pair(
        "remote", student, teacher, Limits(**{"max_tokens": 48, "max_n": 8, "max_calls": 6, **limits})
    )


@contextlib.contextmanager
def _no_eos(*engines):
    """No end token: an answer runs its whole budget (the remote engine then sends ignore_eos)."""
    kept = [e.eos_ids for e in engines]
    for e in engines:
        e.eos_ids = set()
    try:
        yield
    finally:
        for e, ids in zip(engines, kept, strict=True):
            e.eos_ids = ids


def _same(a, b) -> None:
    assert a.token_ids == b.token_ids
    assert a.source_mask == b.source_mask
    assert (a.finish_reason, a.calls, a.teacher_tokens) == (b.finish_reason, b.calls, b.teacher_tokens)


# -- load errors (the first needs no server) ------------------------------------------------------


def test_unreachable_url_is_a_clear_error_at_load(folders):
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ModelUnavailable, match=re.escape(f"the model server at {dead} cannot be reached")):
        RemoteEngine.load(dead, folders[1], connect_timeout_s=2)
    with pytest.raises(ValueError, match="http://host:port"):
        RemoteEngine.load("127.0.0.1:8000", folders[1])


def test_cli_bad_url_one_line_exit_2(capsys):
    from relay_demo.cli import main

    dead = f"http://127.0.0.1:{_free_port()}"
    assert main(["generate", "--pair", "tiny-random", "--teacher-url", dead, "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: the model server at {dead} cannot be reached")


def test_mismatched_tokenizer_is_refused(url):
    if not QWEN_TOKENIZER.is_dir():
        pytest.skip(f"tokenizer fixture not found: {QWEN_TOKENIZER}")
    with pytest.raises(ValueError, match="does not match the model served"):
        RemoteEngine.load(url, str(QWEN_TOKENIZER))
    with pytest.raises(ValueError, match="does not serve 'nope'"):
        RemoteEngine.load(url, str(QWEN_TOKENIZER), model="nope")


class FailingAfter:
    """A real engine that raises ModelUnavailable once it has written ``n`` tokens (fault injection for the
    relay loop; the backend's own failures are tested against the real server below)."""

    def __init__(self, engine, n: int):
        self.engine, self.n = engine, n

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run(self, jobs):
        for deltas in self.engine.run(jobs):
            yield deltas
            self.n -= sum(len(d.token_ids) for d in deltas)
            if self.n <= 0:
                raise ModelUnavailable("the model server at test went away")


def test_teacher_only_row_goes_on_with_the_student(hf):
    """A teacher-only answer whose teacher fails keeps the teacher's tokens and the student continues them."""
    student, teacher = hf
    pair = _pair(student, FailingAfter(teacher, 5), max_tokens=30)
    (r,) = relay_batch(pair, ["hello"], make_policy("teacher-only"), sampling=GREEDY)
    assert (r.finish_reason, r.end_reason, r.calls) == ("teacher_unavailable", "max_tokens", 0)
    assert r.source_mask == [0] * 5 + [1] * 25 and r.teacher_error.endswith("went away")
    session = student.session(r.prompt_ids + r.token_ids[:5])  # one byte tokenizer: the same prompt ids
    alone = [t for deltas in student.run([Job(session, 25, GREEDY)]) for d in deltas for t in d.token_ids]
    assert r.token_ids[5:] == alone


# -- the relay with a remote teacher or student -----------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        make_policy("interval", every=7, n=3),
        make_policy("teacher-only"),
        make_policy("random-token", p=0.15, n=2),
    ],
    ids=lambda p: p.name,
)
def test_remote_teacher_relay_equals_local(hf, remote, policy):
    local = relay_batch(_pair(*hf), PROMPTS, policy, sampling=GREEDY)
    served = relay_batch(_pair(hf[0], remote), PROMPTS, policy, sampling=GREEDY)
    for a, b in zip(local, served, strict=True):
        _same(a, b)
    assert sum(r.calls for r in served) > 0 or policy.teacher_only
    assert all(r.teacher_tokens > 0 for r in served)


def test_remote_student_with_top_probs_equals_local(hf, remote):
    """The served model as the student: top probabilities from logprobs drive the confidence trigger, and each
    trigger cancels the student's stream mid-answer."""
    policy = make_policy("confidence", tau=0.2, n=2)
    local = relay_batch(_pair(hf[1], hf[1]), PROMPTS, policy, sampling=GREEDY)
    served = relay_batch(_pair(remote, hf[1]), PROMPTS, policy, sampling=GREEDY)
    for a, b in zip(local, served, strict=True):
        _same(a, b)
    assert sum(r.calls for r in served) >= len(PROMPTS)


def test_learned_student_on_a_server_stops_at_its_call_token(tmp_path):
    """The committed tiny-arith relay student served by vLLM (``--student-url``): its ``</call>`` is one
    token, sent as a stop token id, and ``call_bias`` goes as a logit bias; the relay equals the local one."""
    folder = REPO / "results/models/tiny-arith/student-relay"
    if not (folder / "config.json").is_file():
        pytest.skip("the committed tiny-arith models are absent")
    local = load_pair("tiny-arith")
    prompts = examples("tiny-arith")
    policy = make_policy("learned", call_bias=2.0)
    limits = Limits(max_n=16, max_calls=5, max_tokens=96)
    want = relay_batch(local, prompts, policy, limits=limits, sampling=GREEDY)
    with _vllm(str(folder), tmp_path, 512) as (url, _):
        served = load_pair("tiny-arith", student_url=url, fresh=True)
        assert served.student.backend == "remote" and served.teacher.backend == "hf"
        got = relay_batch(served, prompts, policy, limits=limits, sampling=GREEDY)
        served.student.close()
    for a, b in zip(want, got, strict=True):
        _same(a, b)
        assert a.text == b.text
    assert sum(r.calls for r in got) >= len(prompts)


def test_teacher_prefill_from_the_servers_cached_counts(hf, remote):
    """Each handoff costs the served teacher its new tokens plus at most BLOCK - 1 re-read ones (the server's
    own count); the in-process transformers teacher, with exact KV reuse, pays exactly the new tokens."""
    policy = make_policy("interval", every=48, n=8)
    limits = {"max_tokens": 600, "max_calls": 100}
    with _no_eos(*hf, remote):
        _check_prefill(hf, remote, policy, limits)


def _check_prefill(hf, remote, policy, limits):
    (served,) = relay_batch(
        _pair(hf[0], remote, **limits), ["Tell me a long story."], policy, sampling=GREEDY
    )
    (local,) = relay_batch(_pair(*hf, **limits), ["Tell me a long story."], policy, sampling=GREEDY)
    assert served.token_ids == local.token_ids and served.calls >= 8
    assert local.teacher_prefill == local.teacher_new
    pre, new = served.teacher_prefill[1:], served.teacher_new[1:]  # the first handoff also reads the prompt
    assert all(n <= p <= n + BLOCK - 1 for p, n in zip(pre, new, strict=True)), (pre, new)
    assert any(p > n for p, n in zip(pre, new, strict=True))  # a cached count, not a guess of exact reuse
    assert [c.prefill for c in served.call_log] == served.teacher_prefill


def test_cancel_aborts_the_request_on_the_server(url, remote):
    """A cancelled job's stream is closed and vLLM aborts it: it generates far fewer than its max_tokens."""

    def generated() -> float:
        text = httpx.get(url + "/metrics", timeout=10).text
        return sum(float(v) for v in re.findall(r"^vllm:generation_tokens_total\{[^}]*\} (\S+)", text, re.M))

    def running() -> float:
        text = httpx.get(url + "/metrics", timeout=10).text
        return sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)", text, re.M))

    before = generated()
    job = Job(remote.session(list(range(60, 100))), 900, GREEDY)
    steps = 0
    for deltas in remote.run([job]):
        steps += 1
        if steps == 1:
            job.cancel()
        else:
            assert [d.finish for d in deltas] == ["cancelled"]
    end = time.monotonic() + 60
    while running() > 0 and time.monotonic() < end:
        time.sleep(0.1)  # the abort reaches the engine at its next step; bounded poll
    assert running() == 0
    assert generated() - before < 900


def test_cli_generate_with_teacher_url(url, capsys):
    from relay_demo.cli import main

    args = ["generate", "--pair", "tiny-random", "--policy", "interval", "--every", "5", "--n", "3"]
    args += ["--temperature", "0", "--max-new-tokens", "24", "--prompt", "hi", "--json"]
    assert main([*args, "--teacher-url", url]) == 0
    served = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    local = json.loads(capsys.readouterr().out)
    assert served["text"] == local["text"] and served["spans"] == local["spans"]
    assert served["stats"]["teacher_tokens"] > 0


def _chat(base: str, max_tokens: int = 40) -> tuple[str, str, dict]:
    body = {
        "model": "tiny-random",
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": "What is 17 * 23?"}],
        **{"policy": "interval", "every": 8, "n": 4},
    }
    text, finish, final = "", None, None
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            (choice,) = json.loads(line[6:])["choices"]
            text += choice["delta"].get("content") or ""
            if choice["finish_reason"] is not None:
                finish, final = choice["finish_reason"], json.loads(line[6:])["relay"]
    return text, finish, final


def _reference(policy):
    """The library's answer (local tiny-random pair, transformers) to what ``_chat`` asks the relay server."""
    pair = load_pair("tiny-random")
    (ref,) = relay_batch(
        pair,
        [[{"role": "user", "content": "What is 17 * 23?"}]],
        policy,
        limits=replace(pair.limits, max_tokens=40),
        sampling=Sampling(temperature=0, seed=0),
    )
    return ref


def test_relay_server_with_teacher_url(relay_server):
    ref = _reference(make_policy("interval", every=8, n=4))
    text, finish, final = _chat(relay_server)
    assert text == ref.text and final["teacher_tokens"] == ref.teacher_tokens > 0
    assert final["finish_reason"] == ref.finish_reason


EVAL = """
pair: tiny-random
run_id: {run_id}
results_dir: {results}
benchmarks: [arith]
batch_size: 2
limits: {{max_tokens: 12}}
methods:
  - {{name: teacher}}
  - {{name: random-token, sweep: {{p: [0.5]}}}}
"""


def test_eval_job_with_teacher_url(url, tmp_path):
    """``python -m offline.evaluate --teacher-url``: the same rows as with the local teacher."""
    from offline import evaluate
    from relay_demo.results import parts as rio

    rows = {}
    for run_id, extra in (("served", ["--teacher-url", url]), ("local", [])):
        recipe = tmp_path / f"{run_id}.yaml"
        recipe.write_text(EVAL.format(run_id=run_id, results=tmp_path / "results"))
        assert evaluate.main(["--config", str(recipe), "--limit", "3", *extra]) == 0
        df = rio.read_samples(tmp_path / "results" / "runs" / run_id).sort_values(["method", "problem_id"])
        rows[run_id] = df[["method", "problem_id", "response", "teacher_tokens", "calls"]].values.tolist()
    assert rows["served"] == rows["local"] and len(rows["local"]) == 6


def test_eval_job_refuses_a_method_pair_that_the_server_does_not_hold(tmp_path):
    """One URL serves one model: a method on a pair with another student cannot share --student-url."""
    from offline import evaluate

    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        f"pair: tiny-arith\nrun_id: x\nresults_dir: {tmp_path}\nbenchmarks: [arith]\n"
        "methods:\n  - {name: relay}\n  - {name: student, pair: tiny-arith-base}\n"
    )
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(SystemExit, match="tiny-arith-base.*its student is not tiny-arith's"):
        evaluate.main(["--config", str(recipe), "--student-url", dead])
    assert not (tmp_path / "runs").exists()


# -- the teacher server killed mid-answer: keep this the module's last test --------------------------


def test_server_killed_mid_answer(hf, remote, vllm_server, relay_server):
    """The kill happens inside the relay's own callback, at the first token of the second call's teacher span:
    that span is certainly unfinished (it was granted 200 tokens) when the server dies."""
    _, server = vllm_server
    seen: list = []
    policy = make_policy("interval", every=6, n=200)
    pair = _pair(hf[0], remote, max_tokens=500, max_n=200)

    def on_span(row, span):
        seen.append(span)
        if span.source == "teacher" and span.call == 1 and server.proc.poll() is None:
            server.kill()  # SIGKILL to the server and its engine core: no goodbye on the open stream

    with _no_eos(hf[0], remote):
        (r,) = relay_batch(pair, ["Tell me a long story."], policy, sampling=GREEDY, on_span=on_span)
    assert server.proc.poll() is not None
    assert r.finish_reason == "teacher_unavailable" and r.end_reason == "max_tokens"
    assert re.search("failed|ended the stream before the answer", r.teacher_error), r.teacher_error
    # everything streamed before the kill is in the answer, in order
    upto = next(i for i, s in enumerate(seen) if s.call == 1 and s.source == "teacher")
    before = [t for s in seen[: upto + 1] for t in s.token_ids]
    assert r.token_ids[: len(before)] == before
    assert [c.ended for c in r.call_log] == ["n", "teacher_unavailable"] and r.calls == 2
    c = r.call_log[1]
    assert 1 <= c.written < c.granted == 200
    # the student went on alone: no teacher token after the broken span, and the answer used its whole budget
    last_teacher = max(i for i, m in enumerate(r.source_mask) if m == 0)
    assert last_teacher == c.start + c.written - 1
    assert len(r.token_ids) == 500 and all(r.source_mask[last_teacher + 1 :])

    # the relay server in front of the dead teacher: the first handoff fails (connection refused), the student
    # rewrites the position it gave up and goes on alone, so the text is the student's own; the last chunk
    # says the teacher was unavailable, OpenAI's finish_reason how the text ended
    alone = _reference(make_policy("student-only"))
    text, finish, final = _chat(relay_server)
    assert text == alone.text and final["finish_reason"] == "teacher_unavailable"
    assert finish == {"eos": "stop"}.get(alone.finish_reason, "length")
    assert final["teacher_tokens"] == 0 and final["calls"] == 1
