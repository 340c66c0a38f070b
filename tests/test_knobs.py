"""Policy knobs declared once (relay_demo/knobs.py): the CLI, sidebar, server and builder read them."""

from __future__ import annotations

import pytest

from relay_demo import knobs
from relay_demo.policies import POLICIES, make_policy


def test_every_registered_policy_declares_its_knobs_and_takes_them():
    assert set(knobs.POLICY_KNOBS) == set(POLICIES)
    for name, names in knobs.POLICY_KNOBS.items():
        values = {k: knobs.KNOBS[k].default for k in names if k != "path"}
        if name != "router":  # a router needs a trained folder
            assert make_policy(name, **knobs.policy_kwargs(name, values)).name == name


@pytest.mark.parametrize(
    "policy, values, message",
    [
        ("confidence", {"tau": 1.5}, r"tau must be in \[0, 1\]"),
        ("confidence", {"n": 0}, r"n must be in \[1, 100000\]"),
        ("interval", {"every": 2.5}, "every must be a whole number"),
        ("random-token", {"p": float("nan")}, r"p must be in \[0, 1\]"),
        ("learned", {"tau": 0.4}, "policy 'learned' takes no --tau"),
        ("nope", {}, "unknown policy"),
    ],
)
def test_out_of_range_or_undeclared_values_are_refused_naming_the_knob(policy, values, message):
    with pytest.raises(ValueError, match=message):
        knobs.policy_kwargs(policy, values)


def test_a_new_knob_appears_in_the_cli_the_sidebar_and_the_api(monkeypatch):
    new = knobs.Knob("width", int, 3, 1, 9, "a new knob", (1, 9, 1))
    monkeypatch.setitem(knobs.KNOBS, "width", new)
    monkeypatch.setitem(knobs.POLICY_KNOBS, "interval", ("every", "n", "width"))
    from relay_demo.cli import build_parser

    args = build_parser().parse_args(["generate", "--pair", "tiny-random", "--prompt", "x", "--width", "5"])
    assert args.width == 5
    assert any(s["name"] == "width" and s["policies"] == ["interval"] for s in knobs.knob_specs())
    assert knobs.policy_kwargs("interval", {"width": 5}) == {"width": 5}
    assert [k for k, v in knobs.KNOBS.items() if v.ui][
        -1
    ] == "width"  # what the sidebar builds its sliders from
