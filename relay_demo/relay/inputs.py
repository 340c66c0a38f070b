"""What the relay loop accepts, checked before any model runs: prompts, and a policy that fits the pair."""

from __future__ import annotations

from ..backends.base import chat_ids
from ..policies import Policy
from ..protocol import OPEN, block_calls_bias, single_token_id
from .result import Limits


def validate_prompt(prompt) -> None:
    """Empty or malformed prompts get a clear error before any model runs."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        messages = prompt
    else:
        raise ValueError("a prompt is a string or a list of {'role', 'content'} messages")
    if not messages or not all(isinstance(m.get("content"), str) for m in messages):
        raise ValueError("every message needs text content")
    if not messages[-1]["content"].strip():
        raise ValueError("the prompt is empty")
    for m in messages:
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (e.g. invalid bytes read with surrogateescape)
            raise ValueError(
                f"the prompt is not valid text: an unpaired surrogate {m['content'][e.start]!r} at character "
                f"{e.start} (invalid UTF-8 bytes in the input?)"
            ) from None


def prompt_ids(pair, prompt, limits: Limits, row: int) -> tuple[list[int], list[int]]:
    """The prompt as the student and as the teacher read it, within ``limits.max_prompt_tokens``."""
    validate_prompt(prompt)
    s_ids = chat_ids(pair.student.tokenizer, prompt, pair.chat_kwargs)
    t_ids = chat_ids(pair.teacher.tokenizer, prompt, pair.chat_kwargs)
    longest = max(len(s_ids), len(t_ids))
    if longest > limits.max_prompt_tokens:
        raise ValueError(
            f"prompt {row} is {longest} tokens; this pair accepts at most {limits.max_prompt_tokens}"
        )
    return s_ids, t_ids


def check_policy(pair, policy: Policy) -> dict[int, float] | None:
    """Refuse a policy this pair cannot run; return the logit bias it puts on the student's ``<call>``."""
    if policy.needs_hidden and not pair.student.supports_hidden:
        raise NotImplementedError(
            f"policy {policy.name!r} needs the student's hidden states, which the {pair.student.backend} "
            "backend does not expose; use the transformers backend (hf)"
        )
    want = getattr(getattr(policy, "router", None), "hidden_size", None)
    have = getattr(getattr(getattr(pair.student, "model", None), "config", None), "hidden_size", None)
    if want is not None and isinstance(have, int) and want != have:
        raise ValueError(f"the router was trained on hidden states of size {want}; this student's are {have}")
    if getattr(policy, "block_calls", False):
        return block_calls_bias(pair.student.tokenizer)
    if not getattr(policy, "call_bias", 0.0):
        return None
    call_id = single_token_id(pair.student.tokenizer, OPEN)
    if call_id is None:
        raise ValueError(
            f"call_bias needs {OPEN} to be one token of the student's vocabulary; in this student's "
            "tokenizer it is several (the student was not trained with it as a token of its own)"
        )
    return {call_id: policy.call_bias}
