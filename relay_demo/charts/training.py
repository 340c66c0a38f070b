"""The RL stage's learning curve (``offline/rl_relay.py``) as one plotly figure, x = round (updates done).

``curve``: rows of ``rl-dev.jsonl``, one per dev point: ``round, n, accuracy, teacher_free_accuracy,
call_ratio, calls_per_problem, problems_calling, calling_teacher_only, turned_right, turned_wrong``
(fractions as fractions; ``calling_teacher_fails`` optional). ``rounds``: rows of ``rl.jsonl``; its
``stage == "rollouts"`` rows (``round, rollouts, accuracy, called, reward``) make a panel of their own.

    fig = learning_curve(pd.read_json("rl-dev.jsonl", lines=True), pd.read_json("rl.jsonl", lines=True),
                         student=0.25, teacher=0.55)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy import stats

CURVE = (
    "round",
    "n",
    "accuracy",
    "teacher_free_accuracy",
    "call_ratio",
    "calls_per_problem",
    "problems_calling",
    "calling_teacher_only",
    "turned_right",
    "turned_wrong",
)
ROLLOUTS = ("round", "rollouts", "accuracy", "called", "reward")
# the Explorer's colours (relay_demo/charts/__init__.py) for the same methods
RELAY, FREE, STUDENT, TEACHER = "#d62728", "#ff7f7f", "#8c564b", "#17becf"
RIGHT, WRONG, CALLING = "#2ca02c", "#9467bd", "#7f7f7f"
PANELS = (
    "dev accuracy (%)",
    "how much the relay calls (dev)",
    "where the calls go (dev problems)",
    "training rollouts (each round's own problems: levels differ by problem, not only by round)",
)


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval for k right of n (as relay_demo/stats.py's, on the stats branch)."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _check(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def _last_per_round(df: pd.DataFrame) -> pd.DataFrame:
    """One row a round (a resumed job may have logged one twice: the later wins), in round order."""
    return df.drop_duplicates("round", keep="last").sort_values("round").reset_index(drop=True)


def _accuracy(fig: go.Figure, curve: pd.DataFrame, col: str, name: str, color: str, dash: str, shift: float):
    """One accuracy series with its Wilson error bars, drawn ``shift`` rounds aside so that two series'
    bars do not hide each other (the hover names the true round)."""
    k = (curve[col] * curve["n"]).round().astype(int)
    lo, hi = (np.array(v) for v in zip(*map(wilson, k, curve["n"]), strict=True))
    acc = 100 * curve[col].to_numpy(float)
    text = [
        f"round {r} · n = {n} problems<br>{name}: {a:.1f}% ({kk}/{n})<br>95% Wilson interval "
        f"[{100 * lo_:.1f}, {100 * hi_:.1f}]"
        for r, n, a, kk, lo_, hi_ in zip(curve["round"], curve["n"], acc, k, lo, hi, strict=True)
    ]
    fig.add_trace(
        go.Scatter(
            x=curve["round"] + shift,
            y=acc,
            name=name,
            mode="lines+markers",
            legend="legend",
            line={"color": color, "dash": dash, "width": 2.5},
            marker={"color": color, "size": 8},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": 100 * hi - acc,
                "arrayminus": acc - 100 * lo,
                "thickness": 1.2,
                "width": 4,
            },
            text=text,
            hovertemplate="%{text}<extra></extra>",
        ),
        row=1,
        col=1,
    )


def _references(fig: go.Figure, rounds: pd.Series, student: float | None, teacher: float | None) -> None:
    """Flat lines across the whole x range (half a round beyond the ends, so one dev point still gets a
    line), named in the legend rather than on the plot, where the error bars would cross their labels."""
    xs = [rounds.min() - 0.5, rounds.max() + 0.5]
    for acc, who, color, dash in (
        (teacher, "teacher", TEACHER, "dash"),
        (student, "student", STUDENT, "dot"),
    ):
        if acc is not None:
            name = f"{who} alone (dev) {100 * acc:.1f}%"
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[100 * acc] * 2,
                    name=name,
                    mode="lines",
                    legend="legend",
                    line={"color": color, "dash": dash, "width": 1.5},
                    hovertemplate=f"{name}<extra></extra>",
                ),
                row=1,
                col=1,
            )


def _calls(fig: go.Figure, curve: pd.DataFrame) -> None:
    hover = [
        f"round {r}<br>call ratio {100 * c:.2f}% of response tokens by the teacher<br>"
        f"{p:.2f} calls per problem · {int(k)} of {int(n)} problems call"
        for r, c, p, k, n in zip(
            curve["round"],
            curve["call_ratio"],
            curve["calls_per_problem"],
            curve["problems_calling"],
            curve["n"],
            strict=True,
        )
    ]
    series = (
        (100 * curve["call_ratio"], "call ratio (%, left)", RELAY, "solid", False),
        (curve["calls_per_problem"], "calls per problem (right)", CALLING, "dot", True),
    )
    _lines(fig, curve["round"], series, hover, row=2, legend="legend2", size=6)


def _lines(fig: go.Figure, x: pd.Series, series, hover: list[str], *, row: int, legend: str, size: int):
    """One line a (y, name, colour, dash, on the right axis) of ``series``, all with the same hover text."""
    for y, name, color, dash, second in series:
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=name,
                mode="lines+markers",
                legend=legend,
                line={"color": color, "dash": dash},
                marker={"color": color, "size": size},
                text=hover,
                hovertemplate="%{text}<extra></extra>",
            ),
            row=row,
            col=1,
            secondary_y=second,
        )


def _where(fig: go.Figure, curve: pd.DataFrame, step: float) -> None:
    """Problems counted: bars for the calls' effect against the teacher-free twin, lines for where they go."""
    calling = curve["problems_calling"].astype(int)
    only = curve["calling_teacher_only"].astype(int)
    share = [f"{100 * o / c:.0f}%" if c else "" for o, c in zip(only, calling, strict=True)]
    fails = curve["calling_teacher_fails"] if "calling_teacher_fails" in curve else [math.nan] * len(curve)
    rows = zip(curve["round"], curve["n"], calling, only, share, fails, strict=True)
    hover = [
        f"round {r} · n = {n}: {c} problems call<br>{o} of them ({s or '–'}) the teacher alone solves and "
        f"the teacher-free twin fails" + ("" if pd.isna(f) else f"<br>{int(f)} of them the teacher fails too")
        for r, n, c, o, s, f in rows
    ]
    for col, name, color in (
        ("turned_right", "calls turn wrong → right", RIGHT),
        ("turned_wrong", "calls turn right → wrong", WRONG),
    ):
        fig.add_trace(
            go.Bar(
                x=curve["round"],
                y=curve[col],
                name=name,
                marker_color=color,
                width=0.3 * step,  # a bar's own width: plotly's default fills the whole axis for one round
                legend="legend3",
                hovertemplate=f"round %{{x}}<br>{name}: %{{y}} problems (against the teacher-free twin)"
                "<extra></extra>",
            ),
            row=3,
            col=1,
        )
    for y, name, color, dash, label in (
        (calling, "problems calling", CALLING, "solid", None),
        (only, "… of them only the teacher solves (share)", TEACHER, "dash", share),
    ):
        fig.add_trace(
            go.Scatter(
                x=curve["round"],
                y=y,
                name=name,
                legend="legend3",
                line={"color": color, "dash": dash},
                mode="lines+markers+text" if label else "lines+markers",
                text=label,
                textposition="top center",
                textfont={"color": color, "size": 10},
                customdata=hover,
                hovertemplate="%{customdata}<extra></extra>",
            ),
            row=3,
            col=1,
        )


def _rollouts(fig: go.Figure, roll: pd.DataFrame, row: int) -> None:
    signal = roll["groups_with_signal"] if "groups_with_signal" in roll else [math.nan] * len(roll)
    hover = [
        f"round {r} · {int(k)} rollouts (sampled)<br>correct {100 * a:.1f}% · calling {100 * c:.1f}%<br>"
        f"mean reward {w:.3f}" + ("" if pd.isna(s) else f" · {int(s)} groups with signal")
        for r, k, a, c, w, s in zip(
            roll["round"],
            roll["rollouts"],
            roll["accuracy"],
            roll["called"],
            roll["reward"],
            signal,
            strict=True,
        )
    ]
    series = (
        (100 * roll["accuracy"], "correct (%, left)", RELAY, "solid", False),
        (100 * roll["called"], "rollouts calling (%, left)", CALLING, "dot", False),
        (roll["reward"], "mean reward (right)", RIGHT, "dash", True),
    )
    _lines(fig, roll["round"], series, hover, row=row, legend="legend4", size=5)


def _switches(fig: go.Figure, roll: pd.DataFrame) -> None:
    """A dotted vertical line at each round where the advantages' std scaling was switched on or off."""
    if "scale_rewards" not in roll.columns:
        return
    # rows logged before the field existed ran with the default, std scaling on
    scaled = roll["scale_rewards"].map(lambda v: True if pd.isna(v) else bool(v)).tolist()
    for rnd, before, now in zip(roll["round"].iloc[1:], scaled, scaled[1:], strict=False):
        if before != now:
            label = "advantages: std scaling " + ("on" if now else "off (centred only)")
            x = float(rnd) - 0.5
            fig.add_vline(x=x, line_dash="dot", line_color="#555", row="all", col=1)
            fig.add_annotation(
                x=x, y=1, yref="y domain", text=label, showarrow=False, xanchor="left", font={"size": 10}
            )


def _layout(fig: go.Figure, panels: int, rounds: pd.Series, title: str) -> None:
    span = float(rounds.max() - rounds.min()) if len(rounds) else 0.0
    fig.update_xaxes(dtick=max(1, math.ceil(span / 10)), tick0=0, showgrid=True, zeroline=False)
    if len(rounds):  # the rounds with room for the offset error bars and the grouped bars, nothing else
        pad = max(0.6, 0.2 * span)
        fig.update_xaxes(range=[float(rounds.min()) - pad, float(rounds.max()) + pad])
    fig.update_xaxes(title_text="round (LoRA updates done)", row=panels, col=1)
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    fig.update_yaxes(title_text="call ratio (%)", rangemode="tozero", row=2, col=1, secondary_y=False)
    fig.update_yaxes(
        title_text="calls / problem",
        tickformat=".2~f",
        rangemode="tozero",
        showgrid=False,
        row=2,
        col=1,
        secondary_y=True,
    )
    fig.update_yaxes(title_text="problems", rangemode="tozero", row=3, col=1)
    if panels == 4:
        fig.update_yaxes(title_text="%", rangemode="tozero", row=4, col=1, secondary_y=False)
        fig.update_yaxes(
            title_text="mean reward", tickformat=".2~f", showgrid=False, row=4, col=1, secondary_y=True
        )
    legends = {}
    for i in range(panels):
        top = fig.get_subplot(i + 1, 1).yaxis.domain[1]
        legends["legend" if i == 0 else f"legend{i + 1}"] = {
            "x": 1.08,
            "y": top,
            "xanchor": "left",
            "yanchor": "top",
            "font": {"size": 11},
        }
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        template="plotly_white",
        barmode="group",
        height=300 + 200 * panels,
        margin={"r": 300, "t": 90},
        hovermode="closest",
        **legends,
    )


def learning_curve(
    curve: pd.DataFrame,
    rounds: pd.DataFrame | None = None,
    *,
    student: float | None = None,
    teacher: float | None = None,
    title: str | None = None,
    call_bias: float = 0.0,
) -> go.Figure:
    """Dev accuracy of the relay and its teacher-free twin (95% Wilson error bars), the call ratio and calls
    per problem, where the calls go (problems calling, those only the teacher solves, calls that turn an
    answer wrong -> right and right -> wrong), and, given ``rounds``, the training rollouts of each round.
    ``student`` / ``teacher``: their dev accuracy alone (fractions), drawn as reference lines. ``call_bias``:
    the points drawn (a curve may hold a bias sweep too; rows without the field were written at bias 0). Where
    the rounds' ``scale_rewards`` changes, a vertical line says so."""
    _check(curve, CURVE, "the learning curve")
    if "call_bias" in curve.columns:
        curve = curve[curve["call_bias"].fillna(0.0) == call_bias]
    if curve.empty:
        raise ValueError(f"the learning curve has no rows at call bias {call_bias:g}")
    curve = _last_per_round(curve)
    roll = None
    if rounds is not None and "stage" in rounds.columns:
        roll = rounds[rounds["stage"] == "rollouts"]
        if len(roll):
            _check(roll, ROLLOUTS, "the rounds' rollout rows")
        roll = _last_per_round(roll) if len(roll) else None
    panels = 3 if roll is None else 4
    fig = make_subplots(
        rows=panels,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        row_heights=[0.4, 0.2, 0.2] + ([0.2] if roll is not None else []),
        specs=[[{}], [{"secondary_y": True}], [{}]] + ([[{"secondary_y": True}]] if roll is not None else []),
        subplot_titles=PANELS[:panels],
    )
    step = float(curve["round"].diff().min()) if len(curve) > 1 else 1.0
    _accuracy(fig, curve, "accuracy", "relay (greedy)", RELAY, "solid", -0.06 * step)
    _accuracy(fig, curve, "teacher_free_accuracy", "teacher-free twin (calls off)", FREE, "dash", 0.06 * step)
    _references(fig, curve["round"], student, teacher)
    _calls(fig, curve)
    _where(fig, curve, step)
    if roll is not None:
        _rollouts(fig, roll, 4)
        _switches(fig, roll)
    ns = sorted({int(n) for n in curve["n"]})
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    default = f"Learning curve of the RL stage<br><sup>dev: {n} held-out problems, greedy decoding</sup>"
    all_rounds = pd.concat([curve["round"]] + ([roll["round"]] if roll is not None else []))
    _layout(fig, panels, all_rounds, title or default)
    return fig
