"""Explorer tab: cost-accuracy charts, the summary table and a per-sample drill-down over results/."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..cost import DEFINITIONS
from . import drilldown as d
from . import explorer_data as x
from . import render, summary_cells

# A click on a chart point names its setting (the traces' customdata): plotly's click event, bound to each
# chart as Gradio draws it (a redraw may replace the plot's element, so binding is checked every half second).
PICK_JS = """
const pick = (ev) => {
  const p = ev && ev.points && ev.points[0];
  if (p && typeof p.customdata === 'string') trigger('pick', {key: p.customdata});
};
setInterval(() => {
  for (const gd of document.querySelectorAll('#plot-accuracy .js-plotly-plot, #plot-flops .js-plotly-plot')) {
    const bound = gd._ev && gd._ev.listeners ? gd._ev.listeners('plotly_click').includes(pick) : false;
    if (gd.on && !bound) gd.on('plotly_click', pick);
  }
}, 500);
"""


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
        na_legend = gr.HTML("", js_on_load=None, elem_id="summary-na")
        gr.HTML(summary_cells.COST_HELP, js_on_load=None, elem_id="cost-help")
        with gr.Accordion("Provenance: the runs behind these charts", open=False):
            provenance = gr.HTML("", js_on_load=None, elem_id="provenance")
        gr.Markdown(
            "**The selected setting** — click a chart point or a summary row, or pick one here: its "
            "samples below, and its paired comparison with a baseline on the same problems."
        )
        with gr.Row():
            setting = gr.Dropdown([d.ALL], value=d.ALL, label="setting", elem_id="drill-setting")
            baseline = gr.Dropdown([], label="compare with…", elem_id="compare-with")
        compare_out = gr.HTML(
            render.note_html("Click a chart point or a summary row to compare that setting.", "info"),
            js_on_load=None,
            elem_id="compare-table",
        )
        with gr.Row():
            outcome = gr.Radio(list(d.OUTCOMES), value="any", label="answer", elem_id="drill-outcome")
            called = gr.Radio(list(d.CALLED), value="any", label="teacher", elem_id="drill-called")
            text = gr.Textbox(label="problem id or text contains (Enter)", elem_id="drill-search", scale=2)
        with gr.Row():
            prev_page = gr.Button("◀ previous", size="sm", elem_id="drill-prev")
            page = gr.Number(1, precision=0, minimum=1, label="page", elem_id="drill-page")
            next_page = gr.Button("next ▶", size="sm", elem_id="drill-next")
            page_note = gr.HTML("", js_on_load=None, elem_id="drill-note")
        sample = gr.Dropdown([], label="drill down: an evaluated sample", elem_id="sample")
        bridge = gr.HTML("", js_on_load=PICK_JS, elem_id="plot-click-bridge")
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
            v.na_legend,
            gr.update(choices=v.samples, value=first),
            render.note_html(v.note, "info"),
            v.provenance,
        )

    def drill(pair_name, bench_name, key):
        return x.sample_trace(results_dir, pair_name, bench_name, key)

    def listing(pair_name, bench_name, chosen, right, teacher, words, page_no, method_names, step=0):
        f = d.Filters(
            chosen or d.ALL, right, teacher, words or "", int(page_no or 1) + step, tuple(method_names)
        )
        choices, first, at, note = x.open_samples(results_dir, pair_name, bench_name, f)
        return gr.update(choices=choices, value=first), at, note

    def settings_for(pair_name, bench_name):
        keys = x.drill_settings(results_dir, pair_name, bench_name)
        default = "student" if "student" in keys else (keys[0] if keys else None)
        return gr.update(choices=[d.ALL, *keys], value=d.ALL), gr.update(choices=keys, value=default), 1

    def choose(key, pair_name, bench_name):
        if key not in x.drill_settings(results_dir, pair_name, bench_name):
            return gr.update(), gr.update()  # a random-query point (no answers) or another pair's
        return gr.update(value=key), 1

    def on_pick(pair_name, bench_name, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        return choose(d.pick_key(data.get("key"), pair_name, bench_name), pair_name, bench_name)

    def on_row(pair_name, bench_name, evt: gr.SelectData):
        return choose(d.row_key(evt.row_value), pair_name, bench_name)

    def compared(pair_name, bench_name, chosen, base):
        return x.comparison(results_dir, pair_name, bench_name, chosen, base)

    view_in = [pair, bench, methods, log_x, paper, y_axis, cost_axis]
    view_out = [acc_plot, flops_plot, table, na_legend, sample, note, provenance]
    list_in = [pair, bench, setting, outcome, called, text, page, methods]
    list_out = [sample, page, page_note]
    cmp_in, private = [pair, bench, setting, baseline], {"api_visibility": "private"}

    def then_all(event):  # a new view resets the selection: settings, samples, comparison
        event.then(settings_for, [pair, bench], [setting, baseline, page], **private).then(
            listing, list_in, list_out, **private
        ).then(compared, cmp_in, compare_out, **private)

    then_all(
        refresh.click(load_filters, None, [pair, bench, methods], api_name="explorer_filters").then(
            view, view_in, view_out, api_name="explorer_view"
        )
    )
    then_all(
        tab.select(load_filters, None, [pair, bench, methods], **private).then(
            view, view_in, view_out, **private
        )
    )
    then_all(
        pair.input(load_filters, pair, [pair, bench, methods], **private).then(
            view, view_in, view_out, **private
        )
    )
    for comp in (bench, methods):
        then_all(comp.input(view, view_in, view_out, **private))
    for comp in (log_x, paper, y_axis, cost_axis):
        comp.input(view, view_in, view_out, **private)
    # a click on a point or a row selects its setting; the selection lists its samples and compares it
    bridge.pick(on_pick, [pair, bench], [setting, page], **private)
    table.select(on_row, [pair, bench], [setting, page], **private)
    setting.change(listing, list_in, list_out, api_name="explorer_samples").then(
        compared, cmp_in, compare_out, **private
    )
    for event in (outcome.input, called.input, text.submit):
        event(lambda: 1, None, page, **private).then(listing, list_in, list_out, **private)
    page.submit(listing, list_in, list_out, **private)
    prev_page.click(lambda *a: listing(*a, step=-1), list_in, list_out, **private)
    next_page.click(lambda *a: listing(*a, step=1), list_in, list_out, **private)
    baseline.input(compared, cmp_in, compare_out, api_name="explorer_compare")
    sample.change(drill, [pair, bench, sample], trace, api_name="sample_trace")
