"""Who decides to hand over to the teacher. A registry maps names to classes.

Every policy answers one question per student token, *before* the token is kept: "should the teacher
write this position instead?" (:meth:`Policy.trigger`), and says how many tokens the teacher then
writes (``n``). The ``learned`` policy never triggers: the student itself writes ``<call>N</call>``
and the relay loop honours it (the paper's method).

==================  =========================================  =========================================
name                hands over when                             backends
==================  =========================================  =========================================
``learned``         the student writes ``<call>N</call>``       hf, vllm
``confidence``      the student's top-token probability < tau   hf, vllm (log-probs)
``random-token``    with probability ``p`` at each token        hf, vllm
``interval``        every ``every`` student tokens (forced)     hf, vllm
``router``          a CITER-style MLP on the student's last     hf only: vLLM does not return per-token
                    hidden state scores above ``threshold``     hidden states
``student-only``    never (commands ignored, or blocked)        hf, vllm
``teacher-only``    the teacher writes the whole answer         hf, vllm
==================  =========================================  =========================================
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class Policy:
    name = "?"
    honours_commands = False  # the student's own <call>N</call> commands trigger handoffs
    needs_top_prob = False
    needs_hidden = False
    teacher_only = False
    uses_trigger = False  # trigger() is consulted at every student token
    n = 1  # tokens the teacher writes per handoff (the learned policy takes N from the command)

    def new_state(self, seed: int):
        """Per-sequence state (a random stream, a counter)."""
        return None

    def trigger(self, state, top_prob: float | None, hidden: np.ndarray | None) -> bool:
        return False

    def why(self, top_prob: float | None, hidden: np.ndarray | None) -> str:
        """Why :meth:`trigger` fired at this token, in words (for the app's call inspector)."""
        return f"the {self.name} policy"

    def params(self) -> dict:
        return {}

    def describe(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({p})" if p else self.name


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _probability(name: str, v, *, open_low=False) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {v!r}") from None
    if not (0.0 <= x <= 1.0) or (open_low and x == 0.0):
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    return x


class Learned(Policy):
    """The student decides: it writes ``<call>N</call>`` itself.

    ``call_bias`` (default 0: the paper's decoding) is added to the student's logit of the ``<call>`` token
    before sampling, so the student calls when p(<call>) > exp(-call_bias) x p(its top token): a knob that
    moves a trained student along its own cost-accuracy curve without retraining. It needs ``<call>`` to be
    one token of the student's vocabulary (true of students trained here; a relay error says otherwise)."""

    name = "learned"
    honours_commands = True

    def __init__(self, call_bias: float = 0.0):
        try:
            self.call_bias = float(call_bias)
        except (TypeError, ValueError):
            raise ValueError(f"call_bias must be a number, got {call_bias!r}") from None
        if not math.isfinite(self.call_bias) or abs(self.call_bias) > 100:
            raise ValueError(f"call_bias must be in [-100, 100], got {call_bias!r}")

    def params(self) -> dict:
        return {"call_bias": self.call_bias} if self.call_bias else {}


class StudentOnly(Policy):
    """No handoff. ``block_calls``: the student cannot write ``<call>`` either (protocol.block_calls_bias),
    so its answer is what it writes alone (the app's "student alone"); without it a command is written and
    ignored (the GRPO-only baseline trains so)."""

    name = "student-only"

    def __init__(self, block_calls: bool = False):
        self.block_calls = bool(block_calls)


class TeacherOnly(Policy):
    name = "teacher-only"
    teacher_only = True


class Confidence(Policy):
    """Hand ``n`` tokens to the teacher when the student's most likely token has probability < tau."""

    name = "confidence"
    uses_trigger = True
    needs_top_prob = True

    def __init__(self, tau: float = 0.5, n: int = 1):
        self.tau = _probability("tau", tau)
        self.n = _positive_int("n", n)

    def trigger(self, state, top_prob, hidden) -> bool:
        return top_prob is not None and top_prob < self.tau

    def why(self, top_prob, hidden) -> str:
        return f"confidence {top_prob:.2f} < τ {self.tau:g} (the student's top token probability)"

    def params(self) -> dict:
        return {"tau": self.tau, "n": self.n}


class RandomToken(Policy):
    """Hand ``n`` tokens to the teacher with probability ``p`` at each student token (seeded per sequence)."""

    name = "random-token"
    uses_trigger = True

    def __init__(self, p: float = 0.05, n: int = 1, seed: int = 0):
        self.p = _probability("p", p)
        self.n = _positive_int("n", n)
        self.seed = int(seed)

    def new_state(self, seed: int):
        return random.Random(self.seed * 1_000_003 + seed)

    def trigger(self, state, top_prob, hidden) -> bool:
        return state.random() < self.p

    def why(self, top_prob, hidden) -> str:
        return f"a random draw under p {self.p:g} at this token"

    def params(self) -> dict:
        return {"p": self.p, "n": self.n}


@dataclass
class _Counter:
    k: int = 0


class Interval(Policy):
    """Forced handoffs at fixed positions: after every ``every`` student tokens (tests and benchmarks)."""

    name = "interval"
    uses_trigger = True

    def __init__(self, every: int = 16, n: int = 4):
        self.every = _positive_int("every", every)
        self.n = _positive_int("n", n)

    def new_state(self, seed: int):
        return _Counter()

    def trigger(self, state, top_prob, hidden) -> bool:
        if state.k >= self.every:
            state.k = 0
            return True
        state.k += 1
        return False

    def why(self, top_prob, hidden) -> str:
        return f"{self.every} student tokens since the last handoff (interval)"

    def params(self) -> dict:
        return {"every": self.every, "n": self.n}


class RouterMLP:
    """A CITER-style token router: an MLP over the student's last hidden state -> P(the teacher should write).

    Stored as a folder: ``config.json`` ({"hidden_size", "width", "mean", "std"}) and ``model.safetensors``.
    The forward pass is numpy so the policy costs nothing to import.
    """

    def __init__(self, weights: dict[str, np.ndarray], config: dict, source: str = "router"):
        """``source`` names the files in errors. Shapes, finiteness and the config are checked here, once: a
        router with NaN weights would otherwise never trigger, silently."""
        missing = sorted({"w1", "b1", "w2", "b2"} - set(weights))
        if missing or not isinstance(config, dict):
            raise ValueError(f"{source}: not a router (missing weights {missing} or config not an object)")
        self.w1, self.b1 = (np.asarray(weights[k], dtype=np.float32) for k in ("w1", "b1"))
        self.w2, self.b2 = (np.asarray(weights[k], dtype=np.float32) for k in ("w2", "b2"))
        try:
            self.mean = np.asarray(config.get("mean", 0.0), dtype=np.float32)
            self.std = np.asarray(config.get("std", 1.0), dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: mean/std are not numbers: {e}") from None
        h = self.w1.shape[0] if self.w1.ndim == 2 else -1
        ok = (
            self.w1.ndim == 2 and self.b1.shape == (self.w1.shape[1],) and self.w2.size == self.w1.shape[1]
            and self.b2.size == 1 and self.mean.size in (1, h) and self.std.size in (1, h)
            and config.get("hidden_size", h) == h
        )  # fmt: skip
        if not ok:
            raise ValueError(
                f"{source}: inconsistent shapes (w1 {self.w1.shape}, b1 {self.b1.shape}, w2 {self.w2.shape}, "
                f"b2 {self.b2.shape}, mean {self.mean.shape}, std {self.std.shape}, "
                f"hidden_size {config.get('hidden_size')})"
            )
        arrays = (self.w1, self.b1, self.w2, self.b2, self.mean, self.std)
        if not all(np.isfinite(a).all() for a in arrays) or not (self.std > 0).all():
            raise ValueError(f"{source}: weights or mean/std are not finite (or std <= 0): a broken router")
        self.hidden_size = h
        self.config = config

    @classmethod
    def load(cls, path: str | Path) -> RouterMLP:
        from safetensors.numpy import load_file

        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"no router at {path} (expected config.json and model.safetensors)")
        try:
            weights = load_file(str(path / "model.safetensors"))
            config = json.loads((path / "config.json").read_text())
        except Exception as e:  # noqa: BLE001 - any unreadable file: one clear error naming it
            raise ValueError(f"router at {path} cannot be read: {type(e).__name__}: {e}") from None
        return cls(weights, config, source=f"router at {path}")

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {"w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}, str(path / "model.safetensors")
        )
        (path / "config.json").write_text(json.dumps(self.config, indent=1))

    def score(self, hidden: np.ndarray) -> float:
        x = np.asarray(hidden, dtype=np.float32).reshape(-1)
        if x.size != self.hidden_size:
            raise ValueError(f"the router reads hidden states of size {self.hidden_size}, got {x.size}")
        x = (x - self.mean) / self.std
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        z = float((h @ self.w2 + self.b2).reshape(-1)[0])
        return 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))


class Router(Policy):
    name = "router"
    uses_trigger = True
    needs_hidden = True

    def __init__(
        self, path: str | None = None, threshold: float = 0.5, n: int = 1, router: RouterMLP | None = None
    ):
        if router is None:
            if not path:
                raise ValueError("the router policy needs path=<folder of a trained router>")
            router = RouterMLP.load(path)
        self.router = router
        self.path = path
        self.threshold = _probability("threshold", threshold)
        self.n = _positive_int("n", n)

    def trigger(self, state, top_prob, hidden) -> bool:
        return hidden is not None and self.router.score(hidden) > self.threshold

    def why(self, top_prob, hidden) -> str:
        return f"router score {self.router.score(hidden):.2f} > threshold {self.threshold:g}"

    def params(self) -> dict:
        return {"threshold": self.threshold, "n": self.n}


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (Learned, Confidence, RandomToken, Interval, Router, StudentOnly, TeacherOnly)
}


def make_policy(name: str, **params) -> Policy:
    """Build a policy by registry name; unknown names and bad parameters raise ValueError."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    try:
        return POLICIES[name](**params)
    except TypeError as e:  # an unexpected keyword
        raise ValueError(f"bad parameters for policy {name!r}: {e}") from None
