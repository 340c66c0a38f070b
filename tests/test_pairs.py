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
