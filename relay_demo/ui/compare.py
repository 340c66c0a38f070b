"""Compare tab: one prompt, three columns (student alone, relay, teacher alone), streamed with counters."""

from __future__ import annotations

import gradio as gr

from . import handlers as h
from . import pair_examples, render
from .settings import Controls

TITLES = {
    "student-only": "Student alone",
    "relay": "Relay (policy from the sidebar)",
    "teacher-only": "Teacher alone",
}


def build(ctl: Controls, hosted: bool) -> None:
    with gr.Tab("Compare"):
        gr.Markdown(
            "One prompt, three ways: the student alone, the relay with the sidebar's policy, and the "
            "teacher alone. They run one after another on the same pair and settings."
        )
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(
                show_label=False,
                placeholder="A prompt to compare",
                lines=2,
                scale=6,
                elem_id="compare-prompt",
            )
            run = gr.Button("Compare", variant="primary", scale=1, elem_id="compare-run")
            stop = gr.Button("Stop", variant="stop", scale=1)
        pair_examples.build(prompt, ctl.components["pair"], "compare")
        note = gr.HTML("", js_on_load=None)
        gr.HTML(render.legend_html(), js_on_load=None)
        outputs = []
        with gr.Row():
            for side in h.COMPARE_SIDES:
                with gr.Column(min_width=260):
                    gr.Markdown(f"#### {TITLES[side]}")
                    trace = gr.HTML(render.trace_html([], empty="—"), js_on_load=None, elem_id=f"cmp-{side}")
                    counters = gr.HTML("", js_on_load=None)
                    answer = gr.HTML("", js_on_load=None, elem_id=f"cmp-{side}-answer")
                    outputs += [trace, counters, answer]

    def compare(prompt_text, *values):
        settings = h.Settings.from_ui(hosted, *values)
        off_task = pair_examples.hint(settings.pair, prompt_text)
        for out in h.compare_run(prompt_text, settings):
            # the last output is the note: an off-task hint shows there unless an error does
            yield (*out[:-1], render.note_html(off_task, "info")) if off_task and not out[-1] else out

    # "minimal": the streamed text is the progress; Gradio's full overlay would hide it
    common = {"concurrency_id": "relay", "show_progress": "minimal"}
    ev = run.click(compare, [prompt, *ctl.inputs], [*outputs, note], api_name="compare", **common)
    ev2 = prompt.submit(compare, [prompt, *ctl.inputs], [*outputs, note], api_visibility="private", **common)
    stop.click(None, None, None, cancels=[ev, ev2], queue=False)
