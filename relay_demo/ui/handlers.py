"""The app's logic as plain functions (no Gradio layout here): settings -> policy and limits, prompt checks,
a streamed generation with live counters, and the Playground / Compare handlers the tabs wire up.

Test them directly: ``for out in chat_submit("2+3?", [], Settings(pair="tiny-random")): ...``

Models are shared read-only by every user (``pairs.load_pair`` caches them; ``stream.generate`` runs one
generation at a time per pair). Per-user data (the conversation) lives in ``gr.State`` and is passed in and
out of the handlers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..backends.base import Sampling
from ..knobs import KNOBS, POLICY_KNOBS, TEMPERATURE, policy_kwargs
from ..pairs import example_answer
from ..policies import Policy, make_policy
from ..protocol import strip_commands
from ..relay import Limits
from . import inspector, render
from .pair_info import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_POLICY,
    FALLBACK_PAIR,
    get_pair,
    hosted,
    pair_loaded,
    router_folder,
)
from .stream import AUTO_TIME_PARAMS, generate, prompt_tokens, teacher_alone_keys, time_teacher_alone

POLICY_CHOICES = [
    ("learned: the student's own <call>N</call> (paper)", "learned"),
    ("confidence: top-token probability < τ", "confidence"),
    ("random-token: hand over with probability p", "random-token"),
    ("interval: forced handoff every k tokens", "interval"),
    ("router: CITER-style token router", "router"),
    ("student-only", "student-only"),
    ("teacher-only", "teacher-only"),
]
MAX_PROMPT_CHARS = 20_000  # refused before tokenizing: a pasted book must not cost the CPU anything
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Everything the controls set. Defaults are what the app starts with."""

    pair: str = FALLBACK_PAIR
    policy: str = DEFAULT_POLICY
    # the policy knobs start at their declared defaults (relay_demo/knobs.py)
    tau: float = KNOBS["tau"].default
    p: float = KNOBS["p"].default
    n: int = KNOBS["n"].default
    every: int = KNOBS["every"].default
    threshold: float = KNOBS["threshold"].default
    call_bias: float = KNOBS["call_bias"].default
    max_n: int = 16
    temperature: float = TEMPERATURE.default
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int = 0
    router_path: str = ""  # local mode only: a router folder typed by the user

    @classmethod
    def from_ui(cls, hosted_mode: bool, *values) -> Settings:
        """From the controls' values in :data:`SETTINGS_FIELDS` order (Gradio passes them positionally).

        In hosted mode a path typed into the UI is dropped whatever the client sent.
        """
        s = cls(**dict(zip(SETTINGS_FIELDS, values, strict=True)))
        return replace(s, router_path="") if hosted_mode or hosted() else s


SETTINGS_FIELDS = tuple(Settings.__dataclass_fields__)


def _int(name: str, v, lo: int, hi: int) -> int:
    try:
        x = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {v!r}") from None
    if x != v and not (isinstance(v, float) and v.is_integer()):
        raise ValueError(f"{name} must be a whole number, got {v!r}")
    if not lo <= x <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {x}")
    return x


def build_policy(s: Settings) -> Policy:
    """The policy the controls describe. In hosted mode the router comes only from the pair's folder."""
    # the knobs the policy declares (relay_demo/knobs.py), each checked against its range
    values = {k: getattr(s, k) for k in POLICY_KNOBS.get(s.policy, ()) if k != "path"}
    if s.policy == "student-only":  # the app's one "student alone": calls blocked, as the inspector's
        return make_policy("student-only", block_calls=True)
    if s.policy == "random-token":  # the sidebar's seed also seeds the policy's own draws
        return make_policy(
            "random-token", **policy_kwargs(s.policy, values), seed=_int("seed", s.seed, 0, 2**31 - 1)
        )
    if s.policy == "router":
        folder = router_folder(s.pair)
        if s.router_path and not hosted():  # a path from the UI: local mode only
            folder = Path(s.router_path).expanduser()
        if folder is None:
            raise ValueError(
                f"no trained router for pair {s.pair} (expected results/models/{s.pair}/router); "
                "choose another policy"
            )
        values["path"] = str(folder)
    if s.policy in POLICY_KNOBS:
        return make_policy(s.policy, **policy_kwargs(s.policy, values))
    return make_policy(s.policy)  # teacher-only (unknown names: ValueError)


def build_limits(base: Limits, s: Settings) -> Limits:
    """The pair's limits, with max N and max tokens from the controls, never above the pair's own."""
    max_tokens = _int("max tokens", s.max_tokens, 1, base.max_tokens)
    max_n = _int("max N", s.max_n, 1, base.max_n)
    return replace(base, max_tokens=max_tokens, max_n=max_n)


def build_sampling(s: Settings) -> Sampling:
    return Sampling(temperature=TEMPERATURE.check(s.temperature), seed=_int("seed", s.seed, 0, 2**31 - 1))


def clean_prompt(text) -> str:
    """The prompt as the models will see it, or ValueError with a message the user can act on."""
    if not isinstance(text, str):
        raise ValueError("the prompt must be text")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise ValueError("The prompt is empty: type a question or pick an example.")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"The prompt is {len(text):,} characters; the app accepts at most {MAX_PROMPT_CHARS:,}. "
            "Shorten it (your text is still in the box)."
        )
    bad = _CONTROL.search(text)
    if bad:
        raise ValueError(
            f"The prompt contains a control character (U+{ord(bad.group()):04X} at position "
            f"{bad.start() + 1}); remove it and try again (your text is still in the box)."
        )
    return text


# ---------------------------------------------------------------- Playground


def history_messages(turns: list[dict], prompt: str) -> list[dict]:
    """The conversation as chat messages: earlier answers with their commands removed, then the new prompt."""
    messages = []
    for t in turns:
        messages.append({"role": "user", "content": t["user"]})
        messages.append({"role": "assistant", "content": strip_commands(t.get("text", ""))})
    messages.append({"role": "user", "content": prompt})
    return messages


def model_names(pair) -> dict[str, str]:
    def name(e) -> str:
        return f"{e.name} ({e.n_params / 1e6:.2f}M params)"

    return {"student": name(pair.student), "teacher": name(pair.teacher)}


def prepare(prompt, turns: list[dict], s: Settings):
    """Check everything before a generation: (pair, messages, policy, limits, sampling) or ValueError."""
    text = clean_prompt(prompt)
    policy = build_policy(s)
    sampling = build_sampling(s)
    pair = get_pair(s.pair)
    limits = build_limits(pair.limits, s)
    messages = history_messages(turns, text)
    if policy.needs_hidden and not pair.student.supports_hidden:
        raise ValueError(f"the {policy.name} policy needs the transformers backend")
    n = prompt_tokens(pair, messages)
    if n > limits.max_prompt_tokens:
        more = " Clear the conversation to start afresh." if turns else ""
        raise ValueError(
            f"The prompt is {n:,} tokens; pair {s.pair} accepts at most {limits.max_prompt_tokens:,}."
            f"{more} (Your text is still in the box.)"
        )
    return pair, messages, policy, limits, sampling


def chat_submit(
    prompt, turns: list[dict] | None, s: Settings, stopped=None
) -> Iterator[tuple[str, str, str, list[dict], str]]:
    """Playground: stream one answer. Yields (chat html, counters html, note html, turns, prompt box value).

    On bad input the conversation is unchanged, the prompt stays in the box and the note says why.
    ``stopped``: polled; once true the answer ends as "stopped" (``stream.StopButton``), its text kept.
    """
    turns = list(turns or [])
    try:
        clean_prompt(prompt)
        if not pair_loaded(s.pair):  # the first request of a pair loads it: say so rather than hang silently
            yield (
                render.chat_html(turns),
                render.counters_html({}),
                render.note_html(f"Loading pair {s.pair} (first use; later requests start at once)…", "info"),
                turns,
                prompt,
            )
        pair, messages, policy, limits, sampling = prepare(prompt, turns, s)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        yield render.chat_html(turns), render.counters_html({}), render.note_html(str(e)), turns, prompt
        return
    names = model_names(pair)
    turn = {
        "user": messages[-1]["content"],
        "spans": [],
        "text": "",
        "policy": policy.describe(),
        "names": names,
    }
    shown = [*turns, turn]  # the state holds the partial answer too, so Stop keeps what was written
    snap = None
    for snap in generate(pair, messages, policy, limits, sampling, stopped):
        if snap.stopped and snap.result is None:  # stopped while waiting for the pair: nothing was written
            note = render.note_html("Stopped before the model was free: nothing was written.", "info")
            yield render.chat_html(turns), render.counters_html({}), note, turns, prompt
            return
        turn.update(spans=[dict(x) for x in snap.spans], text=snap.text)
        if snap.result is not None:  # what the call inspector reads when a span of this answer is clicked
            turn["inspect"] = inspector.record(
                s.pair, pair, snap.result, messages, policy=policy, limits=limits, sampling=sampling
            )
            snap.counters["teacher_alone_note"] = (  # stopped: the user wants the model back, not another run
                "not measured: the answer was stopped"
                if snap.stopped
                else "being measured (the teacher alone, on the same prompt)"
            )
        if snap.error:  # nothing was lost: the conversation as before, the prompt back in the box
            yield (
                render.chat_html(turns),
                render.counters_html(snap.counters),
                render.note_html(snap.error),
                turns,
                prompt,
            )
            return
        note = (
            render.note_html("Waiting for the model: another request is running.", "info")
            if snap.waiting
            else ""
        )
        yield render.chat_html(shown), render.counters_html(snap.counters), note, shown, ""
    if snap is not None and snap.result is not None and not snap.stopped:
        snap.counters.update(wall_reference(pair, messages, policy, limits, sampling, snap.result))
        yield render.chat_html(shown), render.counters_html(snap.counters), "", shown, ""


def wall_reference(pair, messages, policy: Policy, limits: Limits, sampling: Sampling, result) -> dict:
    """The teacher alone's measured wall time on this prompt, for the counters: run here only on a pair small
    enough for it to cost milliseconds (``stream.AUTO_TIME_PARAMS`` says why)."""
    if policy.teacher_only:
        return teacher_alone_keys(result)
    if pair.teacher.n_params > AUTO_TIME_PARAMS:
        return {
            "teacher_alone_note": "not timed on a pair this size (the teacher alone costs a whole answer): "
            "the Compare tab runs it on the same prompt"
        }
    return time_teacher_alone(pair, messages, limits, sampling)


def chat_clear() -> tuple[str, str, str, list[dict]]:
    return render.chat_html([]), render.counters_html({}), "", []


# ---------------------------------------------------------------- Compare

COMPARE_SIDES = ("student-only", "relay", "teacher-only")


def final_answer(text: str) -> str | None:
    from ..answers import extract_answer  # regex only; imported late so the app starts fast

    return extract_answer(strip_commands(text))


def compare_run(prompt, s: Settings, on_relay_result=None, stopped=None) -> Iterator[tuple]:
    """Compare: the same prompt by the student alone, the relay (the chosen policy), the teacher alone.

    Runs one after another (the pair runs one generation at a time) and streams each column.
    Yields 9 HTML strings (trace, counters, answer per column) and a note. ``on_relay_result(record)``
    receives the relay column's inspection record when it finishes. ``stopped``: polled; once true the
    running column ends as "stopped" and the columns after it do not run.
    """
    columns = [["", "", ""] for _ in COMPARE_SIDES]
    try:
        pair, messages, relay_policy, limits, sampling = prepare(prompt, [], s)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        yield (*[x for c in columns for x in c], render.note_html(str(e)))
        return
    names = model_names(pair)
    policies = [make_policy("student-only", block_calls=True), relay_policy, make_policy("teacher-only")]
    gold = example_answer(s.pair, messages[-1]["content"])
    finals: dict[int, dict] = {}  # the finished columns' counters
    for i, policy in enumerate(policies):
        if i and stopped is not None and stopped():  # the column before was stopped
            for j in range(i, len(policies)):
                columns[j][0] = render.note_html("Not run: stopped.", "info")
            yield (*[x for c in columns for x in c], "")
            return
        for snap in generate(pair, messages, policy, limits, sampling, stopped):
            columns[i][0] = render.trace_html(snap.spans, names, empty="waiting…")
            if snap.stopped and snap.result is None:
                columns[i][0] = render.note_html(
                    "Stopped before the model was free: nothing was written.", "info"
                )
            columns[i][1] = render.counters_html(snap.counters)
            if snap.result is not None:
                finals[i] = snap.counters
                snap.counters["teacher_alone_note"] = (
                    "not measured: stopped"
                    if snap.stopped
                    else "measured once the teacher-alone column has run"
                )
                columns[i][2] = inspector.verdict_html(final_answer(snap.text), gold)
                if i == 1 and on_relay_result is not None:
                    on_relay_result(
                        inspector.record(
                            s.pair,
                            pair,
                            snap.result,
                            messages,
                            policy=policy,
                            limits=limits,
                            sampling=sampling,
                        )
                    )
                if (
                    i == 2 and not snap.stopped
                ):  # the teacher column: the wall time the others are compared with
                    for j, counters in finals.items():
                        counters.update(teacher_alone_keys(snap.result))
                        columns[j][1] = render.counters_html(counters)
            yield (*[x for c in columns for x in c], render.note_html(snap.error))
