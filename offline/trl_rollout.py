"""Adapter between TRL's experimental ``rollout_func`` hook (pinned: trl==1.16) and our relay engine.

TRL 1.16 contract (``GRPOTrainer._generate``, read from the installed source): ``rollout_func(prompts,
trainer)`` gets this process's prompts *as the sampler repeated them* (each prompt ``num_generations`` times
in a row) and must return a dict with ``prompt_ids``, ``completion_ids`` and ``logprobs`` (one entry per
prompt; ``None`` is accepted when no importance-sampling correction is used), plus optional ``env_mask``
(1 = trainable token, 0 = external: multiplied into the loss mask) and any other key, which TRL copies
into each row's reward-function kwargs. If TRL changes this hook, only this module changes.

The student engine wraps the very model being trained (``HFEngine`` shares its weights), so every rollout
uses the current policy; the teacher is a frozen engine. ``env_mask`` is the relay's source mask, so
teacher-written tokens never enter the loss.
"""

from __future__ import annotations

from collections.abc import Callable

from relay_demo.backends.base import ModelEngine, Sampling
from relay_demo.backends.hf_engine import HFEngine
from relay_demo.pairs import Pair
from relay_demo.policies import Policy
from relay_demo.protocol import strip_commands
from relay_demo.relay import Limits, RelayResult, relay_batch

TRL_VERSION = "1.16.0"  # the hook's contract was checked against this version


def rollout_fields(results: list[RelayResult]) -> dict[str, list]:
    """The dict TRL expects, built from relay results (one per prompt row)."""
    return {
        "prompt_ids": [r.prompt_ids for r in results],
        "completion_ids": [r.token_ids for r in results],
        "logprobs": None,
        "env_mask": [r.source_mask for r in results],
        # extra columns for the reward functions: the text without commands (TRL's own decoding drops the
        # special command tokens but keeps N's digits, which would corrupt the numbers around a command)
        "relay_text": [strip_commands(r.text) for r in results],
        "calls": [r.calls for r in results],
        "call_ratio": [r.call_ratio for r in results],
        "teacher_tokens": [r.teacher_tokens for r in results],
    }


def make_rollout_func(
    teacher: ModelEngine, policy: Policy, limits: Limits, temperature: float = 0.7, seed: int = 0
) -> Callable[[list, object], dict]:
    """A ``rollout_func`` that relay-decodes each prompt with the trainer's current model as the student."""
    import trl

    if trl.__version__ != TRL_VERSION:
        raise RuntimeError(f"offline.trl_rollout was written for trl=={TRL_VERSION}, found {trl.__version__}")
    calls = {"n": 0}

    def rollout_func(prompts: list, trainer) -> dict:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        student = HFEngine(model, trainer.processing_class, name="student")  # sets eval(); shares weights
        pair = Pair(name="grpo", student=student, teacher=teacher, limits=limits)
        calls["n"] += 1
        sampling = Sampling(temperature=temperature, seed=seed * 100003 + calls["n"])  # new draws every step
        try:
            results = relay_batch(pair, prompts, policy, limits=limits, sampling=sampling)
        finally:
            model.train(was_training)
        return rollout_fields(results)

    return rollout_func
