"""Explorer tab: cost-accuracy charts, the summary table and a per-sample drill-down over results/."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..cost import DEFINITIONS
from . import explorer_data as x
from . import render


def build(results_dir: Path) -> None:
    with gr.Tab("Explorer") as tab:
        gr.Markdown(
            f"Evaluation results from `{results_dir.name}/` (DuckDB over the runs' parquet files). "
            "Accuracy charts show one pair and benchmark; the *gap recovered (APGR)* axis puts every pair "
            "and benchmark on one scale (student alone = 0, teacher alone = 100%), the only axis where the "
            "paper's point (hollow diamond, *reported in the paper*, its pair named) stands beside ours."
        )
        with gr.Row():
            pair = gr.Dropdown([], label="pair", scale=2)
            bench = gr.Dropdown([], label="benchmark", scale=2)
            methods = gr.CheckboxGroup([], label="methods", scale=4)
        with gr.Row():
            y_axis = gr.Radio(
                [("accuracy", "accuracy"), ("gap recovered (APGR)", "apgr")],
                value="accuracy",
                label="y-axis",
                elem_id="y-axis",
            )
            cost_axis = gr.Radio(
                [("FLOPs per problem", "flops"), ("decode FLOPs vs teacher alone", "decode")],
                value="flops",
                label="cost chart's x-axis",
                info="decode: "
                + DEFINITIONS["decode_vs_teacher"]
                + "; the teacher's prefill is in the hover",
                elem_id="cost-axis",
            )
            log_x = gr.Checkbox(False, label="log-x call ratio")
            paper = gr.Checkbox(True, label="the paper's reported point (APGR axis, or its own pair)")
            refresh = gr.Button("Reload results", size="sm")
        note = gr.HTML("", js_on_load=None)
        # full width, one under the other: the paper's labelled points need the room
        acc_plot = gr.Plot(label="accuracy or gap recovered vs call ratio", elem_id="plot-accuracy")
        flops_plot = gr.Plot(label="accuracy vs cost", elem_id="plot-flops")
        table = gr.Dataframe(
            label="summary · saving = 1 − cost / cost of the random router matched in accuracy",
            interactive=False,
            wrap=True,
            elem_id="summary-table",
        )
        gr.HTML(x.COST_HELP, js_on_load=None, elem_id="cost-help")
        with gr.Accordion("Provenance: the runs behind these charts", open=False):
            provenance = gr.HTML("", js_on_load=None, elem_id="provenance")
        sample = gr.Dropdown([], label="drill down: an evaluated sample", elem_id="sample")
        trace = gr.HTML(
            render.note_html("Pick a sample to see who wrote which tokens.", "info"),
            js_on_load=None,
            elem_id="sample-trace",
        )

    def load_filters(pair_name=None):
        f = x.filters(results_dir, pair_name)
        return (
            gr.update(choices=f["pairs"], value=f["pair"]),
            gr.update(choices=f["benchmarks"], value=f["benchmark"]),
            gr.update(choices=f["methods"], value=f["methods"]),
        )

    def view(pair_name, bench_name, method_names, log, overlay, axis, cost):
        v = x.explorer_view(
            results_dir,
            pair_name,
            bench_name,
            method_names,
            log_x=log,
            show_reported=overlay,
            y_axis=axis,
            cost_axis=cost,
        )
        relay = [key for label, key in v.samples if label.startswith("relay ")]  # open a relay trace first
        first = (relay or [key for _, key in v.samples] or [None])[0]
        return (
            v.accuracy_fig,
            v.flops_fig,
            v.table,
            gr.update(choices=v.samples, value=first),
            render.note_html(v.note, "info"),
            v.provenance,
        )

    def drill(pair_name, bench_name, key):
        return x.sample_trace(results_dir, pair_name, bench_name, key)

    view_in = [pair, bench, methods, log_x, paper, y_axis, cost_axis]
    view_out = [acc_plot, flops_plot, table, sample, note, provenance]
    private = {"api_visibility": "private"}
    refresh.click(load_filters, None, [pair, bench, methods], api_name="explorer_filters").then(
        view, view_in, view_out, api_name="explorer_view"
    )
    tab.select(load_filters, None, [pair, bench, methods], **private).then(view, view_in, view_out, **private)
    pair.input(load_filters, pair, [pair, bench, methods], **private).then(view, view_in, view_out, **private)
    for comp in (bench, methods, log_x, paper, y_axis, cost_axis):
        comp.input(view, view_in, view_out, **private)
    sample.change(drill, [pair, bench, sample], trace, api_name="sample_trace")
