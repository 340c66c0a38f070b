"""Pure functions DataFrame -> plotly Figure for the cost-accuracy explorer.

Input: rows shaped like ``relay_demo.store.Store.summary()`` (one pair and one benchmark at a time):
``method, param, accuracy, call_ratio, flops`` (accuracy and call ratio as fractions). Its 95% intervals,
where present (``acc_lo/acc_hi``, ``call_ratio_lo/hi``, ``apgr_lo/hi``), are drawn as error bars on every
point and stated with n in the hover; the random-query rows' ``acc_lo/acc_hi`` is their simulated band.
Every point carries its setting (``relay@0``) as ``customdata``: a click on it opens that setting's samples.
``reported``: rows like ``relay_demo.reported.points()``, drawn
as hollow markers labelled "reported in the paper".

    fig = accuracy_vs_call_ratio(store.summary("tiny-arith", "arith"), log_x=True)
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from relay_demo.charts.training import learning_curve as learning_curve  # the RL stage's dev curve
from relay_demo.reported import LABEL as REPORTED_LABEL
from relay_demo.results.paired import keys
from relay_demo.results.summary import METHOD_ORDER

COLORS = {
    "relay": "#d62728",
    "relay-teacher-free": "#ff9896",
    "relay-sft": "#ff7f0e",  # the relay student before the RL stage (warm-up SFT only)
    "relay-sft-teacher-free": "#ffbb78",
    "sft-only": "#bcbd22",
    "relay-call-bias": "#e377c2",
    "random-query": "#7f7f7f",
    "random-token": "#1f77b4",
    "confidence": "#2ca02c",
    "router": "#9467bd",
    "student": "#8c564b",
    "teacher": "#17becf",
}
REQUIRED = ("method", "param", "accuracy", "call_ratio")
LOG_FLOOR = 1e-4  # call ratio 0 cannot be drawn on a log axis: student-only points sit here


def _check(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> None:
    missing = [c for c in (*REQUIRED, *extra) if c not in df.columns]
    if missing:
        raise ValueError(f"chart data lacks columns {missing}")


def _methods(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["method"]))
    return [m for m in METHOD_ORDER if m in present] + [m for m in present if m not in METHOD_ORDER]


def _label(row) -> str:
    return row["method"] if pd.isna(row["param"]) else f"{row['method']} {row['param']:g}"


# where a summary column's 95% interval lives (relay_demo/results/summary.py, INTERVALS)
STEMS = {"accuracy": "acc", "call_ratio": "call_ratio", "apgr": "apgr"}


def _ci(row, col: str, digits: int = 1) -> str:
    """``28.0% [22.2, 34.6]``: a figure in percent with its 95% interval where the row has one."""
    text = f"{100 * row[col]:.{digits}f}%"
    lo, hi = row.get(f"{STEMS[col]}_lo"), row.get(f"{STEMS[col]}_hi")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return text
    return f"{text} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def _bars(rows: pd.DataFrame, col: str, floor: float | None = None) -> dict | None:
    """Plotly error bars (in percent) from ``col``'s interval columns; no bar where a row has none."""
    lo_col, hi_col = f"{STEMS[col]}_lo", f"{STEMS[col]}_hi"
    if lo_col not in rows or rows[lo_col].isna().all():
        return None
    lo = rows[lo_col].clip(lower=floor) if floor else rows[lo_col]
    value = rows[col].clip(lower=floor) if floor else rows[col]

    def gap(a, b) -> list:
        return [None if pd.isna(x) or pd.isna(y) else 100 * (x - y) for x, y in zip(a, b, strict=True)]

    return {"type": "data", "symmetric": False, "array": gap(rows[hi_col], value),
            "arrayminus": gap(value, lo), "thickness": 1.2, "width": 3}  # fmt: skip


def _n(row) -> str:
    n = row.get("n")
    return "" if n is None or pd.isna(n) else f"n = {int(n)} problems"


def _hover(row, x: str) -> str:
    """What a point's hover says: the setting, n, and each figure with its 95% interval."""
    y = f"APGR {_ci(row, 'apgr')}" if x == "apgr" else f"accuracy {_ci(row, 'accuracy')}"
    if x in ("call_ratio", "apgr"):
        where = f"call ratio {_ci(row, 'call_ratio', 2)}"
    else:
        where = f"FLOPs per problem {row[x]:.3g}"
    return f"{_label(row)} · {_n(row)}<br>{y}<br>{where}<br>(95% intervals)"


def _baseline(df: pd.DataFrame, method: str):
    rows = df[(df["method"] == method) & df["param"].isna()]
    return rows.iloc[0] if len(rows) else None


def _reference_lines(fig: go.Figure, df: pd.DataFrame) -> None:
    for method, dash in (("student", "dot"), ("teacher", "dash")):
        row = _baseline(df, method)
        if row is not None:
            fig.add_hline(
                y=100 * row["accuracy"],
                line_dash=dash,
                line_color=COLORS[method],
                opacity=0.7,
                annotation_text=f"{method} {_ci(row, 'accuracy')}",
                annotation_position="bottom right",
            )


def _band(fig: go.Figure, rows: pd.DataFrame, x: str, log_x: bool) -> None:
    if not {"acc_lo", "acc_hi"} <= set(rows.columns) or rows["acc_lo"].isna().all():
        return
    rows = rows.dropna(subset=["acc_lo", "acc_hi"])
    xs = rows[x].clip(lower=LOG_FLOOR) if log_x else rows[x]
    xs = 100 * xs if x == "call_ratio" else xs
    upper, lower = list(100 * rows["acc_hi"]), list(100 * rows["acc_lo"])
    fig.add_trace(
        go.Scatter(
            x=list(xs) + list(xs)[::-1],
            y=upper + lower[::-1],
            fill="toself",
            fillcolor="rgba(127,127,127,0.15)",
            line={"width": 0},
            hoverinfo="skip",
            name="random-query 95% band",
            showlegend=True,
        )
    )


def _series(fig: go.Figure, df: pd.DataFrame, x: str, log_x: bool) -> None:
    """One trace per method: sweeps as lines through their points sorted by x, single settings as markers."""
    for method in _methods(df):
        if method in ("student", "teacher") and x == "call_ratio":
            continue  # drawn as reference lines
        rows = df[df["method"] == method].sort_values(x)
        band = method == "random-query"  # its interval is the simulated band, drawn as such
        if band:
            _band(fig, rows, x, log_x)
        xs = rows[x].clip(lower=LOG_FLOOR) if log_x else rows[x]
        fig.add_trace(
            go.Scatter(
                x=100 * xs if x == "call_ratio" else xs,
                y=100 * rows["accuracy"],
                mode="lines+markers" if len(rows) > 1 else "markers",
                name=method,
                marker={"size": 9 if method.startswith("relay") else 7, "color": COLORS.get(method)},
                line={"color": COLORS.get(method)},
                error_y=None if band else _bars(rows, "accuracy"),
                error_x=_bars(rows, "call_ratio", LOG_FLOOR if log_x else None)
                if x == "call_ratio"
                else None,
                text=[_hover(r, x) for _, r in rows.iterrows()],
                customdata=list(keys(rows)),
                hovertemplate="%{text}<extra></extra>",
            )
        )


def _reported(fig: go.Figure, reported: pd.DataFrame | None, log_x: bool) -> None:
    if reported is None or len(reported) == 0:
        return
    _check(reported)
    xs = reported["call_ratio"].clip(lower=LOG_FLOOR) if log_x else reported["call_ratio"]
    fig.add_trace(
        go.Scatter(
            x=100 * xs,
            y=100 * reported["accuracy"],
            mode="markers+text",
            name=REPORTED_LABEL,
            text=[f"{m} ({REPORTED_LABEL})" for m in reported["method"]],
            # labels on the side away from the nearest edge, drawn past the axes rather than clipped
            textposition=["middle right" if x < 50 else "middle left" for x in 100 * xs],
            cliponaxis=False,
            marker={"symbol": "diamond-open", "size": 11, "color": "black"},
            hovertemplate="%{text}<br>call ratio=%{x:.3g}%<br>accuracy=%{y:.2f}%<extra></extra>",
        )
    )


def accuracy_vs_call_ratio(
    df: pd.DataFrame, *, log_x: bool = False, reported: pd.DataFrame | None = None, title: str | None = None
) -> go.Figure:
    """Accuracy (%) against call ratio (% of response tokens the teacher wrote), one series per method."""
    _check(df)
    fig = go.Figure()
    _reference_lines(fig, df)
    _series(fig, df, "call_ratio", log_x)
    _reported(fig, reported, log_x)
    return _layout(fig, title or "Accuracy vs call ratio", "call ratio (% teacher tokens)", log_x)


SYMBOLS = ("circle", "square", "triangle-up", "x", "star", "cross", "triangle-down", "pentagon")


def apgr_vs_call_ratio(
    df: pd.DataFrame, *, log_x: bool = False, reported: pd.DataFrame | None = None, title: str | None = None
) -> go.Figure:
    """Share of the student->teacher gap recovered (APGR, %) against call ratio, for every pair and benchmark
    in ``df`` at once (colour: method; marker: pair and benchmark). Student = 0 and teacher = 100 by
    definition, so different pairs compare fairly here; ``reported`` (rows like ``reported.apgr_points()``) is
    drawn labelled."""
    _check(df, ("pair", "benchmark", "apgr"))
    fig = go.Figure()
    for y, name, dash in ((0, "student alone", "dot"), (100, "teacher alone", "dash")):
        fig.add_hline(
            y=y, line_dash=dash, opacity=0.6, annotation_text=name, annotation_position="bottom right"
        )
    rows = df[~df["method"].isin(("student", "teacher")) & df["apgr"].notna()]
    groups = list(dict.fromkeys(zip(rows["pair"], rows["benchmark"], strict=True)))
    for g, (pair, bench) in enumerate(groups):
        part = rows[(rows["pair"] == pair) & (rows["benchmark"] == bench)]
        for method in _methods(part):
            m = part[part["method"] == method].sort_values("call_ratio")
            xs = m["call_ratio"].clip(lower=LOG_FLOOR) if log_x else m["call_ratio"]
            fig.add_trace(
                go.Scatter(
                    x=100 * xs,
                    y=100 * m["apgr"],
                    mode="lines+markers" if len(m) > 1 else "markers",
                    name=f"{method} · {pair} · {bench}",
                    marker={"symbol": SYMBOLS[g % len(SYMBOLS)], "size": 8, "color": COLORS.get(method)},
                    line={"color": COLORS.get(method), "width": 1.5},
                    error_y=_bars(m, "apgr"),
                    error_x=_bars(m, "call_ratio", LOG_FLOOR if log_x else None),
                    text=[f"{_hover(r, 'apgr')} · {pair} · {bench}" for _, r in m.iterrows()],
                    customdata=[f"{k}|{pair}|{bench}" for k in keys(m)],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    if reported is not None and len(reported):
        xs = reported["call_ratio"].clip(lower=LOG_FLOOR) if log_x else reported["call_ratio"]
        fig.add_trace(
            go.Scatter(
                x=100 * xs,
                y=100 * reported["apgr"],
                mode="markers+text",
                name=REPORTED_LABEL,
                text=[
                    f"{r['method']}, {r['pair']}, {r['benchmark']} ({REPORTED_LABEL})"
                    for _, r in reported.iterrows()
                ],
                textposition="middle right",
                cliponaxis=False,
                marker={"symbol": "diamond-open", "size": 12, "color": "black"},
                hovertemplate="%{text}<br>call ratio=%{x:.3g}%<br>APGR=%{y:.1f}%<extra></extra>",
            )
        )
    fig = _layout(
        fig, title or "Share of the gap recovered vs call ratio", "call ratio (% teacher tokens)", log_x
    )
    fig.update_layout(yaxis_title="gap recovered, APGR (%)", legend_title="method · pair · benchmark")
    return fig


def flops_vs_accuracy(df: pd.DataFrame, *, log_x: bool = True, title: str | None = None) -> go.Figure:
    """Accuracy (%) against mean FLOPs per problem (teacher prefill included), one series per method."""
    _check(df, ("flops",))
    fig = go.Figure()
    _series(fig, df, "flops", log_x=False)
    return _layout(fig, title or "Accuracy vs FLOPs per problem", "FLOPs per problem", log_x)


def _pct(v) -> str:
    return "–" if pd.isna(v) else f"{100 * v:.1f}%"


def decode_vs_accuracy(df: pd.DataFrame, *, log_x: bool = False, title: str | None = None) -> go.Figure:
    """Accuracy (%) against decode FLOPs (student + teacher-written tokens) as % of the teacher alone's on the
    same problems, the teacher's prefill and the measured wall time in the hover (``relay_demo/cost.py``). A
    setting whose run recorded no split stands at its total FLOPs share, hollow, and says so."""
    _check(df, ("decode_vs_teacher", "prefill_vs_teacher", "flops_vs_teacher", "wall_vs_teacher"))
    fig = go.Figure()
    fig.add_vline(x=100, line_dash="dash", opacity=0.6, annotation_text="teacher alone")
    for method in _methods(df):
        rows = df[df["method"] == method]
        split, total = rows[rows["decode_vs_teacher"].notna()], rows[rows["decode_vs_teacher"].isna()]
        for part, x, hollow in ((split, "decode_vs_teacher", False), (total, "flops_vs_teacher", True)):
            part = part[part[x].notna()].sort_values(x)
            if part.empty:
                continue
            text = [
                f"{_label(r)}<br>decode {_pct(r['decode_vs_teacher'])} + teacher prefill "
                f"{_pct(r['prefill_vs_teacher'])} = {_pct(r['flops_vs_teacher'])} of the teacher alone's "
                "FLOPs"
                f"<br>wall time {_pct(r['wall_vs_teacher'])} of the teacher alone's"
                + ("<br>(no FLOPs split recorded: x is all FLOPs)" if hollow else "")
                + f"<br>accuracy {_ci(r, 'accuracy')} (95% interval), {_n(r)}"
                for _, r in part.iterrows()
            ]
            fig.add_trace(
                go.Scatter(
                    x=100 * part[x],
                    y=100 * part["accuracy"],
                    mode="lines+markers" if len(part) > 1 else "markers",
                    name=f"{method} (all FLOPs, no split recorded)" if hollow else method,
                    marker={
                        "size": 9 if method.startswith("relay") else 7,
                        "color": COLORS.get(method),
                        "symbol": "circle-open" if hollow else "circle",
                    },
                    line={"color": COLORS.get(method), "dash": "dot" if hollow else "solid"},
                    error_y=_bars(part, "accuracy"),
                    text=text,
                    customdata=list(keys(part)),
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    return _layout(
        fig,
        title or "Accuracy vs decode FLOPs against the teacher alone",
        "decode FLOPs, % of the teacher alone's on the same problems (prefill in the hover)",
        log_x,
    )


def _layout(fig: go.Figure, title: str, xaxis_title: str, log_x: bool) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=xaxis_title,
        yaxis_title="accuracy (%)",
        legend_title="method",
        template="plotly_white",
    )
    if log_x:
        fig.update_xaxes(type="log")
    return fig
