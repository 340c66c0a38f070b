"""Commands in the student's current segment: pure functions over its text, token ends and ids.

The loop streams a token only once it cannot become part of a ``<call>N</call>`` command; a completed command
is cut out of what the teacher reads (``teacher_view``)."""

from __future__ import annotations

from ..protocol import CLOSE, OPEN, Command, find_command, strip_commands


def open_command(text: str) -> int | None:
    """Where the last ``<call>`` of ``text`` starts if no ``</call>`` closes it yet, else None."""
    lo = text.rfind(OPEN)
    return lo if lo >= 0 and text.find(CLOSE, lo) < 0 else None


def completed_command(text: str, piece: str, max_n: int) -> Command | None:
    """The command that the token which added ``piece`` to the end of ``text`` completed, if any."""
    # a command can only end in the characters this token added (plus the 6 before them)
    window = text[max(0, len(text) - len(piece) - len(CLOSE) + 1) :]
    at = window.find(CLOSE)
    if at < 0:
        return None
    return find_command(text[: len(text) - len(window) + at + len(CLOSE)], max_n)


def held_from(text: str) -> int:
    """Char index from which the segment might still become a command: those tokens are held back."""
    lo = open_command(text)
    if lo is not None:
        return lo
    for k in range(min(len(OPEN) - 1, len(text)), 0, -1):  # a suffix that could grow into "<call>"
        if OPEN.startswith(text[-k:]):
            return len(text) - k
    return len(text)


def first_token(ends: list[int], emitted: int, char: int) -> int:
    """The first token not yet streamed whose text reaches past ``char``: where a command starts."""
    return max(next(i for i, e in enumerate(ends) if e > char), emitted)


def teacher_view(seg, cmd: tuple[int, Command] | None, tok) -> list[int]:
    """The segment (``state.Segment``) as the teacher sees it: commands removed, the student's ids reused when
    they line up (``cmd``: the first token and the Command that ended the segment), else the clean text
    re-tokenized."""
    ids, text, ends = seg.ids, seg.text, seg.ends
    clean = strip_commands(text)
    if cmd is not None:
        first, c = cmd
        aligned = (ends[first - 1] if first else 0) == c.start and ends[-1] == c.end
        if aligned and clean == text[: c.start] and c.end == len(text):
            return ids[:first]
    elif clean == text:
        return list(ids)
    return tok.encode(clean, add_special_tokens=False) if clean else []
