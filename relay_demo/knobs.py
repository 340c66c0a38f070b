"""Every policy knob declared once: name, type, range, default, help, and which policies take it.

The CLI's flags (``add_cli_flags``), the app's sidebar sliders (``relay_demo/ui/settings.py``), the server's
request fields (``knob_specs``) and the checks before a policy is built (``policy_kwargs``) all read this
table, so a new knob is one entry here and one keyword of its policy.

    policy_kwargs("confidence", {"tau": 0.4, "n": 4})   # -> {"tau": 0.4, "n": 4}, checked
    policy_kwargs("learned", {"tau": 0.4})              # ValueError: policy 'learned' takes no --tau
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    name: str
    kind: type  # int, float or str
    default: object
    lo: float | None
    hi: float | None
    help: str
    ui: tuple[float, float, float] | None = None  # the sidebar slider's (min, max, step); None: no slider
    flag: str | None = None  # the CLI flag when it is not --name

    @property
    def cli_flag(self) -> str:
        return "--" + (self.flag or self.name).replace("_", "-")

    def check(self, value):
        """``value`` as this knob's type, or a ValueError naming the knob and its range."""
        if self.kind is str:
            if not isinstance(value, str) or not value:
                raise ValueError(f"{self.name} must be a non-empty string, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if self.kind is int:
            if value != int(value):
                raise ValueError(f"{self.name} must be a whole number, got {value!r}")
            value = int(value)
        value = self.kind(value)
        if not (self.lo <= value <= self.hi):  # also refuses nan
            raise ValueError(f"{self.name} must be in [{self.lo:g}, {self.hi:g}], got {value!r}")
        return value


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("n", int, 4, 1, 100_000, "tokens per handoff", (1, 64, 1)),
        Knob("tau", float, 0.5, 0.0, 1.0, "τ: hand over when top-token prob < τ", (0.0, 1.0, 0.01)),
        Knob("p", float, 0.05, 0.0, 1.0, "p: hand-over probability per token", (0.0, 1.0, 0.01)),
        Knob("every", int, 16, 1, 100_000, "every k student tokens", (1, 128, 1)),
        Knob("threshold", float, 0.5, 0.0, 1.0, "router threshold", (0.0, 1.0, 0.01)),
        Knob(
            "call_bias", float, 0.0, -100.0, 100.0,
            "call bias: added to the student's <call> logit (0 = as trained)", (-4.0, 8.0, 0.5),
        ),
        Knob("path", str, None, None, None, "folder of a trained router", flag="router"),
    )
}  # fmt: skip

# Sampling's temperature, declared once like the policy knobs: the app's slider and its check read it, and the
# CLI and the server should (OpenAI's range, 0 to 2; the server's request field already is 0 to 2).
TEMPERATURE = Knob("temperature", float, 0.7, 0.0, 2.0, "temperature (0 = greedy)", (0.0, 2.0, 0.05))

# which policy takes which knob (the keywords of its constructor)
POLICY_KNOBS: dict[str, tuple[str, ...]] = {
    "learned": ("call_bias",),
    "confidence": ("tau", "n"),
    "random-token": ("p", "n"),
    "interval": ("every", "n"),
    "router": ("threshold", "n", "path"),
    "student-only": (),
    "teacher-only": (),
}


def policy_kwargs(policy: str, values: Mapping) -> dict:
    """The checked keyword arguments of ``policy`` from ``values`` (knob name -> value; None = not given)."""
    if policy not in POLICY_KNOBS:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICY_KNOBS)}")
    given = {k: v for k, v in values.items() if v is not None and k in KNOBS}
    extra = sorted(set(given) - set(POLICY_KNOBS[policy]))
    if extra:
        raise ValueError(f"policy {policy!r} takes no {', '.join(KNOBS[e].cli_flag for e in extra)}")
    return {k: KNOBS[k].check(v) for k, v in given.items()}


def knob_specs() -> list[dict]:
    """The knobs as request fields for an API: name, type, range, default, help, the policies that take
    them."""
    return [
        {
            "name": k.name,
            "type": k.kind.__name__,
            "min": k.lo,
            "max": k.hi,
            "default": k.default,
            "help": k.help,
            "policies": [p for p, names in POLICY_KNOBS.items() if k.name in names],
        }
        for k in KNOBS.values()
    ]


def add_cli_flags(parser) -> None:
    """One ``--flag`` per knob (argparse), default None: a knob not given keeps its policy's default."""
    for k in KNOBS.values():
        parser.add_argument(k.cli_flag, dest=k.name, type=k.kind, default=None, help=k.help)
