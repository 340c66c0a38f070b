"""The generation settings sidebar shared by the Playground and Compare tabs.

The controls' values reach handlers positionally, in the order of ``handlers.SETTINGS_FIELDS``;
``Controls.inputs`` keeps that order, so adding a field means adding it in both places (a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..knobs import KNOBS, POLICY_KNOBS, TEMPERATURE
from . import handlers as h
from . import pair_info as pi

# which policy shows which parameter control, from the one declaration of the knobs (relay_demo/knobs.py); a
# router's folder is a text box, typed in local mode only
POLICY_PARAMS = {
    p: {"router_path" if k == "path" else k for k in names} for p, names in POLICY_KNOBS.items() if names
}
SLIDERS = tuple(k for k, knob in KNOBS.items() if knob.ui)
PARAM_FIELDS = (*SLIDERS, "router_path")
PAIR_DEFAULTS = ("policy", "max_n", "max_tokens", "call_bias", "temperature")  # set when a pair is chosen


@dataclass
class Controls:
    components: dict[str, gr.components.Component]
    status: gr.Markdown
    router_note: gr.Markdown

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.components[f] for f in h.SETTINGS_FIELDS]


def visible_params(policy: str, hosted: bool) -> dict[str, bool]:
    shown = POLICY_PARAMS.get(policy, set())
    return {f: f in shown and not (f == "router_path" and hosted) for f in PARAM_FIELDS}


def router_message(pair: str, policy: str, hosted: bool) -> str:
    if policy != "router":
        return ""
    folder = h.router_folder(pair)
    if folder is not None:
        return f"Router: `results/models/{pair}/router`."
    if hosted:
        return (
            f"⚠ No trained router for **{pair}** (`results/models/{pair}/router`): the router policy is off."
        )
    return f"No router in `results/models/{pair}/router`: give a router folder below."


def build(hosted: bool) -> Controls:
    pair = pi.default_pair()
    d = h.Settings(pair=pair, **pi.pair_defaults(pair))
    limits = pi.get_limits(pair)
    with gr.Sidebar(label="Settings", open=True, width=330):
        gr.Markdown("### Settings")
        status = gr.Markdown(pi.pair_status(pair), elem_id="pair-status")
        c = {
            "pair": gr.Dropdown(
                pi.pair_choices(), value=pair, label="Pair (student → teacher)", elem_id="pair"
            ),
            "policy": gr.Dropdown(
                h.POLICY_CHOICES, value=d.policy, label="Policy: who decides to hand over", elem_id="policy"
            ),
            **{
                name: gr.Slider(
                    KNOBS[name].ui[0],
                    KNOBS[name].ui[1],
                    value=getattr(d, name),
                    step=KNOBS[name].ui[2],
                    label=KNOBS[name].help,
                    visible=name in POLICY_PARAMS.get(d.policy, ()),
                    elem_id=f"param-{name}",
                )
                for name in SLIDERS
            },
        }
        router_note = gr.Markdown("")
        c["router_path"] = gr.Textbox(
            label="router folder (local mode only)", visible=False, placeholder="results/models/<pair>/router"
        )
        c["max_n"] = gr.Slider(
            1,
            limits.max_n,
            value=d.max_n,
            step=1,
            label="max N: teacher tokens per call, at most",
            elem_id="max-n",
        )
        lo, hi, step = TEMPERATURE.ui
        c["temperature"] = gr.Slider(
            lo, hi, value=d.temperature, step=step, label=TEMPERATURE.help, elem_id="temperature"
        )
        c["max_tokens"] = gr.Slider(
            1,
            limits.max_tokens,
            value=d.max_tokens,
            step=1,
            label="max response tokens",
            elem_id="max-tokens",
        )
        c["seed"] = gr.Number(value=d.seed, precision=0, minimum=0, label="seed")
    controls = Controls(c, status, router_note)
    _wire(controls, hosted)
    return controls


def _wire(ctl: Controls, hosted: bool) -> None:
    c = ctl.components
    params = [c[f] for f in PARAM_FIELDS]

    def on_policy(policy: str, pair: str):
        vis = visible_params(policy, hosted)
        return [gr.update(visible=vis[f]) for f in PARAM_FIELDS] + [router_message(pair, policy, hosted)]

    def on_pair(pair: str):
        # the pair's own defaults: a policy that can hand over on it, its trained span length, its answers'
        # length, the call bias and temperature its numbers were measured at (a changed policy fires
        # on_policy, which shows that policy's knobs)
        lim, d = pi.get_limits(pair), pi.pair_defaults(pair)
        return (
            pi.pair_status(pair),
            gr.update(value=d["policy"]),
            gr.update(maximum=lim.max_n, value=d["max_n"]),
            gr.update(maximum=lim.max_tokens, value=d["max_tokens"]),
            gr.update(value=d["call_bias"]),
            gr.update(value=d["temperature"]),
            router_message(pair, d["policy"], hosted),
        )

    c["policy"].change(
        on_policy, [c["policy"], c["pair"]], [*params, ctl.router_note], queue=False, api_visibility="private"
    )
    c["pair"].change(
        on_pair,
        [c["pair"]],
        [ctl.status, *(c[k] for k in PAIR_DEFAULTS), ctl.router_note],
        queue=False,
        api_visibility="private",
    )
