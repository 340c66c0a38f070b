"""Incremental detokenisation: the text each new token adds to a sequence."""

from __future__ import annotations


class Detok:
    """The text each pushed token adds, robust to multi-byte characters split across tokens."""

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "_tokenizer", None)  # the Rust tokenizer: 4x cheaper than the wrapper
        self.decode = backend.decode if backend is not None else tokenizer.decode
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, tid: int) -> str:
        self.ids.append(tid)
        before = self.decode(self.ids[self.prefix : self.read], skip_special_tokens=False)
        after = self.decode(self.ids[self.prefix :], skip_special_tokens=False)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""
