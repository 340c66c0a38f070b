"""Answer extraction and grading (math-verify under a per-answer time limit), shared by the app and the jobs.

How a response is graded (:func:`grade`):

1. **Extract** the final answer (:func:`extract_answer`): the content of the *last* ``\\boxed{...}`` (or
   ``\\fbox{...}``) with balanced braces; else the number after the last ``#### `` (thousands separators
   removed, GSM8K style); else what follows the last "answer is" / "answer:". No answer means wrong.
2. **Compare** with the reference: first a cheap normalised string comparison, then math-verify
   (``parse`` both sides as LaTeX, ``verify(gold, pred)``), which handles ``\\frac{1}{2}`` vs ``0.5``,
   units in ``\\text{}``, sets and tuples. For a reference with several answers (OlympiadBench
   ``is_multiple_answer``), the prediction may also be every boxed answer of the response joined by commas.
3. The whole of step 2 runs under ``time_limit`` seconds: sympy can hang on adversarial input. A timeout,
   malformed LaTeX or any exception from the parser is graded **wrong**, never raised.

The time limit uses ``SIGALRM`` (``setitimer``) in the main thread, where evaluation jobs run. Signals only
work there, so from any other thread (a Gradio handler) the comparison runs in a one-process worker pool that
is killed and replaced on a timeout.

    >>> from relay_demo.answers import grade
    >>> grade("so the answer is \\\\boxed{\\\\frac{1}{2}}.", "0.5").correct
    True
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import functools
import logging
import multiprocessing
import re
import signal
import threading
from dataclasses import dataclass

DEFAULT_TIME_LIMIT = 5.0  # seconds per answer; math-verify's own default

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_HASH_RE = re.compile(r"####\s*\\?\$?\s*([-+]?\d[\d,]*(?:\.\d+)?)")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SCI_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)[eE]([-+]?\d+)$")
_INLINE_MATH_RE = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")
_SPACING_RE = re.compile(r"\\(?:left|right|displaystyle)(?![a-zA-Z])|\\[!,;:]")


@dataclass(frozen=True)
class Grade:
    """The verdict on one response. ``reason``: match | mismatch | no-answer | timeout | error."""

    correct: bool
    extracted: str | None
    reason: str


class GradingTimeout(BaseException):
    """Raised by our alarm. A BaseException, so the parsers' ``except Exception`` cannot swallow it."""


# ---------------------------------------------------------------- extraction


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the ``{...}`` that opens at ``text[start]`` and its end index; None when unbalanced."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped brace \{ or \} does not count
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def extract_boxed(text: str | None) -> list[str]:
    """Every ``\\boxed{...}`` / ``\\fbox{...}`` content in order; unbalanced ones are skipped.

    ``\\boxed 5`` (no braces, as some models write) yields the token after the space.
    """
    if not text:
        return []
    out: list[str] = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            got = _braced(text, i)
            if got is not None:
                out.append(got[0].strip())
        elif i > m.end():
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                out.append(token.group(0))
    return [b for b in out if b]


def _clean_tail(answer: str) -> str:
    """Trim an "answer is ..." tail: take its first inline math if any, drop the closing period."""
    answer = answer.strip()
    math = _INLINE_MATH_RE.search(answer)
    if math:
        answer = math.group(1) or math.group(2)
    return answer.strip().rstrip(".").strip().strip("*").strip()


def extract_answer(text: str | None) -> str | None:
    """The final answer of a response: last boxed, else ``#### N``, else "answer is X"; None when none."""
    boxed = extract_boxed(text)
    if boxed:
        return boxed[-1]
    if not text:
        return None
    hashes = _HASH_RE.findall(text)
    if hashes:
        return hashes[-1].replace(",", "")
    tails = _ANSWER_IS_RE.findall(text)
    if tails:
        answer = _clean_tail(tails[-1].splitlines()[0])
        return answer or None
    return None


# ---------------------------------------------------------------- comparison


def normalize(ans: str, *, multiple: bool = False) -> str:
    """A light, sympy-free normal form: math delimiters, spacing macros and thousands separators removed."""
    s = ans.strip()
    s = re.sub(r"(?<!\\)\$", "", s)  # unescaped $ are math delimiters; \$ is a dollar sign
    s = s.replace("\\$", "")
    s = _SPACING_RE.sub("", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if not multiple and _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    sci = _SCI_RE.match(s)
    if sci:  # 4.5e33 is read by the LaTeX parser as 4.5*e*33
        s = f"{sci.group(1)}\\times10^{{{int(sci.group(2))}}}"
    if re.fullmatch(r"[-+]?\d+\.0+", s):
        s = s.split(".")[0]
    return s


class _DropTimeoutDisabled(logging.Filter):
    """math-verify warns once that its timeout is off: ours replaces it (see :func:`grade`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabled())


@functools.lru_cache(maxsize=4096)
def _parse(latex: str) -> tuple:
    from math_verify import parse

    # Our own alarm bounds the time; math-verify's would replace it (one SIGALRM per process).
    return tuple(parse(f"${latex}$", parsing_timeout=None))


def _verify(gold: str, pred: str) -> bool:
    from math_verify import verify

    g, p = _parse(gold), _parse(pred)
    return bool(g) and bool(p) and verify(list(g), list(p), timeout_seconds=None)


def _candidates(pred: str, all_boxed: tuple[str, ...], multiple: bool) -> list[str]:
    cands = [pred]
    if multiple and len(all_boxed) > 1:
        cands.append(", ".join(dict.fromkeys(all_boxed)))  # \boxed{69}, \boxed{84}
    return cands


def answers_match(pred: str, gold: str, *, multiple: bool = False, all_boxed: tuple[str, ...] = ()) -> bool:
    """Whether ``pred`` equals ``gold`` (no time limit: call :func:`grade` on untrusted input)."""
    gold_n = normalize(gold, multiple=multiple)
    if not gold_n:
        raise ValueError("empty reference answer")
    for cand in _candidates(pred, all_boxed, multiple):
        cand_n = normalize(cand, multiple=multiple)
        if not cand_n:
            continue
        if cand_n == gold_n or _verify(gold_n, cand_n):
            return True
    return False


@functools.cache
def _warm_up() -> None:
    """Import math-verify and its LaTeX parser once, outside any time limit.

    The first parse loads sympy and the ANTLR grammar (seconds on a busy CPU): charged to the first answer's
    time limit, it would grade that answer wrong.
    """
    _verify("\\frac{1}{2}", "0.5")


def _raise_timeout(signum, frame):
    raise GradingTimeout


def _match_with_alarm(pred: str, gold: str, multiple: bool, all_boxed: tuple[str, ...], limit: float) -> str:
    old_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return "match" if answers_match(pred, gold, multiple=multiple, all_boxed=all_boxed) else "mismatch"
    except GradingTimeout:
        return "timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)


def _match_in_worker(pred: str, gold: str, multiple: bool, all_boxed: tuple[str, ...]) -> str:
    return "match" if answers_match(pred, gold, multiple=multiple, all_boxed=all_boxed) else "mismatch"


class _Worker:
    """One worker process for grading from threads; replaced when an answer overruns its limit."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pool: cf.ProcessPoolExecutor | None = None
        atexit.register(self.close)  # shut down before the interpreter tears the executor's modules down

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def run(self, args: tuple, limit: float) -> str:
        with self._lock:  # one answer at a time: a timeout kills the whole pool
            if self._pool is None:
                ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded server
                self._pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
                self._pool.submit(_warm_up).result(timeout=600)  # start-up is not the answer's time
            future = self._pool.submit(_match_in_worker, *args)
            try:
                return future.result(timeout=limit)
            except cf.TimeoutError:
                for proc in list(getattr(self._pool, "_processes", {}).values()):
                    proc.kill()  # a hung sympy call cannot be cancelled otherwise
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                return "timeout"


_WORKER = _Worker()


def grade(
    response: str | None, reference: str, *, multiple: bool = False, time_limit: float = DEFAULT_TIME_LIMIT
) -> Grade:
    """Grade ``response`` against ``reference``; never raises on a bad response.

    ``multiple``: the reference lists several answers (order does not matter).
    """
    if time_limit <= 0:
        raise ValueError(f"time_limit must be > 0, got {time_limit}")
    if not normalize(str(reference), multiple=multiple):
        raise ValueError(f"empty reference answer {reference!r}")
    pred = extract_answer(response)
    if pred is None:
        return Grade(False, None, "no-answer")
    all_boxed = tuple(extract_boxed(response))
    try:
        if threading.current_thread() is threading.main_thread():
            _warm_up()
            reason = _match_with_alarm(pred, reference, multiple, all_boxed, time_limit)
        else:
            reason = _WORKER.run((pred, reference, multiple, all_boxed), time_limit)
    except Exception as e:  # noqa: BLE001 - malformed LaTeX the parser did not catch: graded wrong
        logging.getLogger(__name__).debug("grading error on %r: %s", pred, e)
        reason = "error"
    return Grade(reason == "match", pred, reason)
