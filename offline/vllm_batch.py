"""Batched greedy generation and teacher-forced disagreement on the two vLLM engines of a pair (label job).

The relay engine interface (``relay_demo.backends``) streams sessions step by step; a labelling job wants
whole batches and prompt log-probs instead, so it drives the same in-process ``vllm.LLM`` objects directly.
"""

from __future__ import annotations

from offline.tasks.base import Problem
from relay_demo.backends.base import chat_ids


class PairModels:
    """The pair's two vLLM engines, used through ``vllm.LLM`` directly: batched greedy generation and
    teacher-forced prompt log-probs (the relay engine interface has neither in one call)."""

    def __init__(self, pair: str, engine: dict):
        from relay_demo.pairs import load_pair

        self.pair = load_pair(pair, backend="vllm", **engine)
        self.tok = self.pair.student.tokenizer
        self.tokens = {"student_prompt": 0, "student_gen": 0, "teacher_prompt": 0, "teacher_gen": 0}

    def prompt_ids(self, problem: Problem) -> list[int]:
        return chat_ids(self.tok, problem.prompt, self.pair.chat_kwargs)

    def generate(self, role: str, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        """Greedy continuations (an end token included when written); prompts with no budget get []."""
        from vllm import SamplingParams, TokensPrompt

        engine = getattr(self.pair, role)
        out: list[list[int]] = [[] for _ in prompts]
        todo = [i for i, m in enumerate(max_tokens) if m > 0]
        if not todo:
            return out
        params = [
            SamplingParams(
                temperature=0.0,
                max_tokens=max_tokens[i],
                stop_token_ids=sorted(engine.eos_ids),
                detokenize=False,
            )
            for i in todo
        ]
        res = engine.llm.generate(
            [TokensPrompt(prompt_token_ids=list(prompts[i])) for i in todo], params, use_tqdm=False
        )
        for i, r in zip(todo, res, strict=True):
            out[i] = list(r.outputs[0].token_ids)
            self.tokens[f"{role}_prompt"] += len(prompts[i])
            self.tokens[f"{role}_gen"] += len(out[i])
        return out

    def margins(self, prompts: list[list[int]], starts: list[int]) -> list[list[tuple[float, int]]]:
        """Teacher-forced: per response position, (teacher's top log-prob − the log-prob of the token there,
        the top id)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, detokenize=False)
        res = self.pair.teacher.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False
        )
        out = []
        for p, start, r in zip(prompts, starts, res, strict=True):
            self.tokens["teacher_prompt"] += len(p)
            row = []
            for pos in range(start, len(p)):
                lps = r.prompt_logprobs[pos]
                actual = lps[p[pos]].logprob
                top_id, top = max(lps.items(), key=lambda kv: kv[1].logprob)
                row.append((float(top.logprob - actual), int(top_id)))
            out.append(row)
        return out

    def text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
