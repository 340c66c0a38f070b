"""The registry's dtype choice: ``auto`` follows the hardware, explicit wins, a load can override it."""

from __future__ import annotations

import pytest
import torch

from relay_demo import pairs


def test_explicit_dtype_is_kept():
    assert pairs.resolve_dtype("float32") == "float32"
    assert pairs.resolve_dtype("bfloat16") == "bfloat16"


@pytest.mark.parametrize("has_bf16, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_follows_the_cpu(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pairs, "cpu_has_bf16", lambda: has_bf16)
    assert pairs.resolve_dtype("auto") == expected


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    real_path = pairs.Path

    def patched(p, *a):
        return real_path(fake) if str(p) == "/proc/cpuinfo" else real_path(p, *a)

    monkeypatch.setattr(pairs, "Path", patched)
    fake.write_text("flags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    assert pairs.cpu_has_bf16()
    fake.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16_x\n")  # a longer name is not the flag
    assert not pairs.cpu_has_bf16()
    fake.unlink()
    assert not pairs.cpu_has_bf16()  # unreadable: float32, the safe choice


def test_load_pair_takes_a_dtype_override():
    pair = pairs.load_pair("tiny-random", "hf", fresh=True, dtype="bfloat16")
    assert next(pair.student.model.parameters()).dtype == torch.bfloat16
    pair = pairs.load_pair("tiny-random", "hf", fresh=True)
    assert next(pair.student.model.parameters()).dtype == torch.float32
    # the per-process cache keeps loads with other keywords apart
    default = pairs.load_pair("tiny-random", "hf")
    bf16 = pairs.load_pair("tiny-random", "hf", dtype="bfloat16")
    assert bf16 is not default and pairs.load_pair("tiny-random", "hf") is default
    assert next(bf16.student.model.parameters()).dtype == torch.bfloat16


def test_every_pair_says_what_it_is_for_and_has_examples():
    for name in pairs.PAIRS:
        assert pairs.purpose(name) and pairs.examples(name), name


def test_the_toy_pairs_examples_are_its_task_from_the_train_generator_and_others_get_a_hint():
    from offline.tasks import arith

    test_prompts = {p.prompt for p in arith.load("test")}
    for name in ("tiny-arith", "tiny-arith-base"):
        for e in pairs.examples(name):
            assert pairs.off_task_hint(name, e) is None and e not in test_prompts
        assert all(pairs.off_task_hint(name, p.prompt) is None for p in arith.load("train", 200, seed=3))
        hint = pairs.off_task_hint(name, "What is the capital of France?")
        assert hint and "expect noise" in hint
    assert pairs.off_task_hint("qwen2.5-coder-0.5b-1.5b", "What is the capital of France?") is None


def test_a_closed_pair_is_never_handed_out_again():
    """Closing leaves the cache: the next load_pair loads anew (a closed vLLM or remote engine refuses to
    run), and only the closed pair goes; a load of the same pair with other keywords stays."""
    from relay_demo.policies import make_policy
    from relay_demo.relay import relay_batch

    other = pairs.load_pair("tiny-random", "hf", dtype="bfloat16")
    closed = pairs.load_pair("tiny-random", "hf", dtype="float32")
    closed.close()
    again = pairs.load_pair("tiny-random", "hf", dtype="float32")
    assert again is not closed
    assert pairs.load_pair("tiny-random", "hf", dtype="bfloat16") is other
    (result,) = relay_batch(again, ["hi"], make_policy("student-only"), limits=again.limits)
    assert result.student_tokens > 0
    pairs.unload_pairs(["tiny-random"])  # closes each pair it unloads (Pair.close takes the cache's lock too)
    assert "tiny-random" not in pairs.loaded_pairs()
