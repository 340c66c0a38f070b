"""The ``<call>N</call>`` command grammar: find, parse, clamp, strip.

Pure functions over text. Both are *total*: they never raise and run in linear time on any string,
because they run inside generation where an exception would lose the user's answer.

Grammar and the cases the official RelayLLM code leaves undefined:

* A **command** is ``<call>`` BODY ``</call>`` where BODY contains no other ``<call>``/``</call>`` tag
  (the innermost pair). The official code stops generation at ``</call>`` and keeps the stop string;
  so do we.
* **N** comes from BODY when it matches ``\\s*(\\d+)\\s*`` with ASCII digits and ASCII whitespace only
  (``int('٣')`` would accept other scripts, ``'\\xa07'`` other spaces; we do not).
  It is clamped to ``1..max_n``: ``N = 0`` becomes 1, ``N`` beyond the cap
  (``10**9``, or a thousand digits) becomes ``max_n``.
* A command **without a valid N** (``<call></call>``, ``<call>x</call>``, ``<call>-3</call>``,
  ``<call>1.5</call>``) is still a command: it hands over ``default_n(max_n)`` tokens, i.e.
  ``min(DEFAULT_N, max_n)``. The student asked for help; refusing it would only loop.
* A ``</call>`` with no ``<call>`` before it (since the last complete command) is **not** a command:
  ``find_command`` returns None and generation goes on. ``strip_commands`` removes the dangling tag.
* An **unclosed** ``<call>`` is not a command yet; ``strip_commands`` removes the tag and keeps the text
  after it (the teacher must never see a tag).
* **Nested or repeated** commands: ``find_command`` only looks at the innermost pair that ends the text.
  ``strip_commands`` removes pairs like brackets, innermost first, so ``<call>1<call>2</call>3</call>``
  strips to the empty string, and a tag that only appears once another command is removed
  (``<ca<call>1</call>ll>``) is removed as well. Stripping twice changes nothing.
* **Text after** ``</call>``: ``find_command`` only answers for text that *ends* in ``</call>``. A BPE
  token can carry characters past the tag (``>.``); the relay loop cuts the text at the tag, calls
  ``find_command`` on the prefix and keeps the leftover characters as ordinary text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPEN = "<call>"
CLOSE = "</call>"
DEFAULT_N = 32  # tokens handed over by a command whose N is missing or malformed


@dataclass(frozen=True)
class Command:
    """A command that ends a text: ``text[start:end]`` is ``<call>…</call>``."""

    start: int
    end: int
    n: int  # clamped to 1..max_n
    valid: bool  # False when BODY was not a plain non-negative integer
    body: str

    @property
    def asked(self) -> int:
        """N as the student wrote it, before the clamp to ``max_n`` (a call's record keeps both, so a capped
        call shows as one); an invalid body asks for the default N it gets. At least 1, at most 10**9."""
        if not self.valid:
            return self.n
        digits = self.body.strip(" \t\r\n\f\v").lstrip("0")
        return max(1, int(digits) if len(digits) <= 9 else 10**9)


def default_n(max_n: int) -> int:
    return max(1, min(DEFAULT_N, max_n))


def _parse_n(body: str, max_n: int) -> tuple[int, bool]:
    digits = body.strip(" \t\r\n\f\v")
    if not digits or not (digits.isascii() and digits.isdigit()):
        return default_n(max_n), False
    significant = digits.lstrip("0")
    # Compare lengths before int(): int() of a huge digit string is slow and may raise ValueError.
    if len(significant) > len(str(max(1, max_n))):
        return max(1, max_n), True
    return max(1, min(int(significant or "0"), max(1, max_n))), True


def find_command(text: str, max_n: int) -> Command | None:
    """The command that ends ``text``, or None when ``text`` does not end in one.

    ``.n`` is already clamped to ``1..max_n``; see the module docstring for every edge case.
    """
    if not isinstance(text, str) or not text.endswith(CLOSE):
        return None
    head_end = len(text) - len(CLOSE)
    start = text.rfind(OPEN, 0, head_end)
    if start < 0:
        return None
    body = text[start + len(OPEN) : head_end]
    if CLOSE in body:  # the final </call> is dangling: an earlier one already closed this <call>
        return None
    n, valid = _parse_n(body, max_n)
    return Command(start=start, end=len(text), n=n, valid=valid, body=body)


def strip_commands(text: str) -> str:
    """What the teacher sees: every complete command and every dangling tag removed.

    One left-to-right pass over a character stack. A tag is recognised when its last character is
    pushed, so a tag that forms only after a removal is caught too; each character is pushed and
    popped at most once, hence linear time. No tag is left, so stripping twice changes nothing.
    """
    if not isinstance(text, str):
        return ""
    if "<" not in text:  # fast path: no tag can occur
        return text
    out: list[str] = []
    opens: list[int] = []  # len(out) where each unmatched <call> began
    for ch in text:
        out.append(ch)
        if ch != ">":
            continue
        if len(out) >= len(CLOSE) and out[-len(CLOSE)] == "<" and "".join(out[-len(CLOSE) :]) == CLOSE:
            del out[-len(CLOSE) :]
            if opens:
                del out[opens.pop() :]
        elif len(out) >= len(OPEN) and "".join(out[-len(OPEN) :]) == OPEN:
            del out[-len(OPEN) :]
            opens.append(len(out))
    return "".join(out)


def contains_tag(text: str) -> bool:
    return OPEN in text or CLOSE in text


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


def visible(text: str) -> str:
    """Text with C0/C1 control characters (except newline and tab) replaced by their Unicode pictures: a
    model's ESC or backspace must not drive a terminal, nor hide text in a page."""
    return _CONTROL.sub(_picture, text)


def _picture(m: re.Match) -> str:
    code = ord(m.group())
    if code < 0x20:
        return chr(0x2400 + code)  # U+2400..U+241F: control pictures
    return "\u2421" if code == 0x7F else "\ufffd"


def single_token_id(tokenizer, text: str) -> int | None:
    """The id of ``text`` when the tokenizer encodes it as exactly one token, else None (``<call>`` is one
    token of a student trained with the command tokens: what a logit bias on it needs)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def block_calls_bias(tokenizer) -> dict[int, float] | None:
    """The logit bias that keeps a student from calling: -100 on ``<call>`` where it is one token (a student
    trained with it); None where it is not (an untrained student writes a command only as plain text, which is
    what it would write alone). The one definition of "the student alone", for the relay's calls-blocked
    student-only policy and the call inspector's counterfactual."""
    call_id = single_token_id(tokenizer, OPEN)
    return None if call_id is None else {call_id: -100.0}
