"""The ``<call>N</call>`` grammar (relay_demo/protocol.py): properties on any text, each documented edge case.

    .venv/bin/python -m pytest -q tests/test_protocol.py

``find_command`` is checked against an independent oracle (a regex written from the module docstring),
``strip_commands`` against the properties the teacher relies on: no tag survives, only deletions, idempotent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay_demo.protocol import CLOSE, DEFAULT_N, OPEN, contains_tag, default_n, find_command, strip_commands

# --- oracle, written from the docstring ------------------------------------------------------------------
# A command ends the text: <call> BODY </call>, BODY containing no <call> or </call> (the innermost pair).
ORACLE_COMMAND = re.compile(r"<call>((?:(?!</?call>).)*)</call>\Z", re.DOTALL)
# N: ASCII whitespace, ASCII digits, ASCII whitespace.
ORACLE_N = re.compile(r"\s*([0-9]+)\s*", re.ASCII)


def oracle(text: str, max_n: int) -> tuple[int, int, str, int, bool] | None:
    """(start, end, body, n, valid) of the command ending ``text``, or None."""
    match = ORACLE_COMMAND.search(text)
    if match is None:
        return None
    body = match[1]
    number = ORACLE_N.fullmatch(body)
    if number is None:
        return match.start(), len(text), body, min(DEFAULT_N, max_n), False
    return match.start(), len(text), body, min(max(int(number[1]), 1), max_n), True


def as_tuple(text: str, max_n: int) -> tuple[int, int, str, int, bool] | None:
    cmd = find_command(text, max_n)
    return None if cmd is None else (cmd.start, cmd.end, cmd.body, cmd.n, cmd.valid)


def is_subsequence(small: str, big: str) -> bool:
    chars = iter(big)
    return all(ch in chars for ch in small)


# --- strategies ------------------------------------------------------------------------------------------
# Fragments that make tags, near-tags, tags split across pieces, numbers and look-alike digits.
FRAGMENTS = [
    OPEN, CLOSE, "<", ">", "/", "c", "a", "l", "call", "<ca", "ll>", "</", "</ca", "<call", "call>",
    "0", "1", "7", "9", "42", "00", "-", ".", " ", "\t", "\n", "x", "é", "٣", "²", "３", "\u00a0",
]  # fmt: skip
rich_text = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
any_text = st.text(max_size=200)
texts = st.one_of(any_text, rich_text)
max_ns = st.one_of(st.integers(min_value=1, max_value=10**6), st.sampled_from([1, 2, 31, 32, 33, 10**9]))


# --- properties ------------------------------------------------------------------------------------------
@settings(max_examples=400)
@given(text=texts, max_n=max_ns)
def test_find_command_matches_the_documented_rule(text: str, max_n: int) -> None:
    assert as_tuple(text, max_n) == oracle(text, max_n)


@given(text=texts, max_n=max_ns)
def test_n_is_always_within_1_and_max_n(text: str, max_n: int) -> None:
    for candidate in (text, text + CLOSE, OPEN + text + CLOSE):
        cmd = find_command(candidate, max_n)
        if cmd is not None:
            assert 1 <= cmd.n <= max_n
            assert candidate[cmd.start : cmd.end] == OPEN + cmd.body + CLOSE


@given(text=texts, max_n=st.integers(min_value=-5, max_value=0))
def test_a_non_positive_cap_never_raises_and_hands_over_one_token(text: str, max_n: int) -> None:
    cmd = find_command(OPEN + text + CLOSE, max_n)
    assert cmd is None or cmd.n == 1


@settings(max_examples=400)
@given(text=texts)
def test_strip_leaves_no_tag(text: str) -> None:
    stripped = strip_commands(text)
    assert OPEN not in stripped and CLOSE not in stripped
    assert not contains_tag(stripped)


@given(text=texts)
def test_strip_only_deletes(text: str) -> None:
    assert is_subsequence(strip_commands(text), text)


@settings(max_examples=400)
@given(text=texts)
def test_strip_is_idempotent(text: str) -> None:
    once = strip_commands(text)
    assert strip_commands(once) == once


@given(text=texts)
def test_strip_keeps_text_without_tags_unchanged(text: str) -> None:
    # A tag can only form after a removal, and a removal needs a tag.
    if not contains_tag(text):
        assert strip_commands(text) == text


ASCII_WS = "[ \t\r\n\f\v]*"  # the whitespace N may carry; str's \s would also take \x1c-\x1f and NBSP


@given(before=texts, body=st.from_regex(f"{ASCII_WS}[0-9]{{1,12}}{ASCII_WS}", fullmatch=True), max_n=max_ns)
def test_a_command_appended_to_any_text_is_found(before: str, body: str, max_n: int) -> None:
    text = before + OPEN + body + CLOSE
    cmd = find_command(text, max_n)
    assert cmd is not None and cmd.valid
    assert cmd.start == len(before) and cmd.body == body
    assert cmd.n == min(max(int(body), 1), max_n)
    assert CLOSE not in strip_commands(text)


def test_non_strings_are_tolerated() -> None:
    assert find_command(None, 8) is None  # type: ignore[arg-type]
    assert find_command(b"<call>1</call>", 8) is None  # type: ignore[arg-type]
    assert strip_commands(None) == ""  # type: ignore[arg-type]


# --- documented edge cases -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body", ["", "x", "-3", "1.5", " ", "+4", "1 2", "0x10", "\u00a07", "7\u3000", "\x1f7", "1_000"]
)
@pytest.mark.parametrize("max_n", [1, 8, 32, 100])
def test_no_valid_n_is_still_a_command_with_the_default(body: str, max_n: int) -> None:
    cmd = find_command(f"Let me see. <call>{body}</call>", max_n)
    assert cmd is not None and not cmd.valid
    assert cmd.n == default_n(max_n) == min(DEFAULT_N, max_n)
    assert cmd.body == body


@pytest.mark.parametrize("digits", ["0", "00", "0000000"])
def test_n_zero_becomes_one(digits: str) -> None:
    cmd = find_command(f"<call>{digits}</call>", 64)
    assert cmd is not None and cmd.valid and cmd.n == 1


@pytest.mark.parametrize(
    ("digits", "max_n", "n"),
    [
        (str(10**9), 64, 64),
        ("9" * 5000, 64, 64),
        ("1" + "0" * 4999, 10**6, 10**6),
        ("65", 64, 64),
        ("64", 64, 64),
        ("63", 64, 63),
        ("0" * 5000 + "7", 64, 7),  # leading zeros do not count towards the cap
        ("0" * 5000, 64, 1),
    ],
)
def test_n_beyond_the_cap_is_clamped(digits: str, max_n: int, n: int) -> None:
    cmd = find_command(f"<call>{digits}</call>", max_n)
    assert cmd is not None and cmd.valid and cmd.n == n


@pytest.mark.parametrize("body", [" 7 ", "\n7\t", "\r\n 7\f\v", "7 "])
def test_ascii_whitespace_around_n_is_allowed(body: str) -> None:
    cmd = find_command(f"<call>{body}</call>", 64)
    assert cmd is not None and cmd.valid and cmd.n == 7


@pytest.mark.parametrize("digit", ["٣", "３", "²", "७", "𝟕"])
def test_unicode_digits_are_rejected(digit: str) -> None:
    assert digit.isdigit() or digit.isnumeric()  # Python's own str methods would take these
    cmd = find_command(f"<call>{digit}</call>", 64)
    assert cmd is not None and not cmd.valid and cmd.n == default_n(64)


def test_unclosed_call_is_not_a_command_and_its_tag_is_stripped() -> None:
    assert find_command("so <call>5", 64) is None
    assert find_command("so <call>5</call", 64) is None
    assert strip_commands("so <call>5 more") == "so 5 more"


def test_nested_commands() -> None:
    cmd = find_command("<call>1<call>2</call>", 64)
    assert cmd is not None and (cmd.start, cmd.n, cmd.body) == (7, 2, "2")
    # The final </call> was already matched by the inner pair's close: dangling, not a command.
    assert find_command("<call>1<call>2</call>3</call>", 64) is None
    assert strip_commands("<call>1<call>2</call>3</call>") == ""
    assert strip_commands("a<call>1<call>2</call>3</call>b") == "ab"
    assert strip_commands("<call>" * 3 + "x" + "</call>" * 3) == ""


def test_repeated_commands() -> None:
    text = "A<call>1</call>B<call>2</call>"
    cmd = find_command(text, 64)
    assert cmd is not None and (cmd.start, cmd.n) == (text.rindex(OPEN), 2)
    assert strip_commands(text) == "AB"
    assert strip_commands("<call>1</call>" * 5 + "done") == "done"


@pytest.mark.parametrize("text", ["</call>", "abc</call>", "<call>1</call></call>", "<call>1</call>x</call>"])
def test_dangling_close_is_not_a_command(text: str) -> None:
    assert find_command(text, 64) is None


def test_dangling_close_is_stripped() -> None:
    assert strip_commands("abc</call>def") == "abcdef"
    assert strip_commands("<call>1</call>x</call>y") == "xy"


def test_text_after_close_is_not_a_command_but_its_prefix_is() -> None:
    text = "so <call>5</call>>."
    assert find_command(text, 64) is None
    cut = text.index(CLOSE) + len(CLOSE)
    cmd = find_command(text[:cut], 64)
    assert cmd is not None and cmd.n == 5 and text[cut:] == ">."
    assert strip_commands(text) == "so >."


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ("<ca<call>1</call>ll>", ""),  # "<ca" + "ll>" forms a <call> once the command is removed
        ("<ca<call>1</call>ll>5</call>!", "!"),
        ("</ca<call>1</call>ll>x", "x"),  # a dangling </call> formed by the removal
        ("<<call>1</call>call>2</call>", ""),
        ("<c<call>1</call>all>", ""),
    ],
)
def test_tags_formed_after_removal_are_removed(text: str, stripped: str) -> None:
    assert strip_commands(text) == stripped
    assert strip_commands(strip_commands(text)) == stripped


def test_default_n_respects_small_caps() -> None:
    assert default_n(1) == 1
    assert default_n(DEFAULT_N - 1) == DEFAULT_N - 1
    assert default_n(10**6) == DEFAULT_N
    assert default_n(0) == 1


# --- linear time: adversarial inputs of ~200k characters ---------------------------------------------------
ADVERSARIAL = {
    "opens": OPEN * 40_000,
    "opens_then_close": OPEN * 40_000 + CLOSE,
    "closes": CLOSE * 30_000,
    "open_then_closes": OPEN + CLOSE * 30_000,
    "deep_nesting": OPEN * 20_000 + "x" + CLOSE * 20_000,
    "near_open": "<ca" * 70_000,
    "near_close": "</cal" * 40_000 + CLOSE,
    "formed_tags": "<ca<call>1</call>ll>" * 10_000 + CLOSE,
    "angles": "<" * 100_000 + ">" * 100_000,
    "million_digits": OPEN + "7" * 1_000_000 + CLOSE,
    "million_zeros": OPEN + "0" * 1_000_000 + "5" + CLOSE,
    "million_spaces": OPEN + " " * 1_000_000 + "3" + " " * 1_000_000 + CLOSE,
}
BOUND_S = 2.0  # generous: not a timing test, it catches quadratic behaviour (minutes on these inputs)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_run_in_linear_time(name: str) -> None:
    text = ADVERSARIAL[name]
    assert timed(lambda: find_command(text, 64)) < BOUND_S
    stripped: list[str] = []
    assert timed(lambda: stripped.append(strip_commands(text))) < BOUND_S
    assert not contains_tag(stripped[0])


def test_adversarial_results() -> None:
    cmd = find_command(ADVERSARIAL["opens_then_close"], 64)
    assert cmd is not None and (cmd.body, cmd.valid, cmd.n) == ("", False, default_n(64))
    assert cmd.start == len(ADVERSARIAL["opens_then_close"]) - len(OPEN + CLOSE)
    for name in ("closes", "open_then_closes", "deep_nesting", "near_close"):
        assert find_command(ADVERSARIAL[name], 64) is None, name
    assert strip_commands(ADVERSARIAL["deep_nesting"]) == ""
    assert strip_commands(ADVERSARIAL["near_open"]) == ADVERSARIAL["near_open"]
    expected = {"million_digits": 64, "million_zeros": 5, "million_spaces": 3}
    for name, n in expected.items():
        cmd = find_command(ADVERSARIAL[name], 64)
        assert cmd is not None and cmd.valid and cmd.n == n, name
