"""Compare tab: one prompt, three columns (student alone, relay, teacher alone), streamed with counters."""

from __future__ import annotations

import gradio as gr

from . import handlers as h
from . import inspector, pair_examples, render
from .settings import Controls
from .stream import StopButton

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
                    js = inspector.CLICK_JS if side == "relay" else None
                    trace = gr.HTML(render.trace_html([], empty="—"), js_on_load=js, elem_id=f"cmp-{side}")
                    if side == "relay":
                        relay_trace = trace
                    counters = gr.HTML("", js_on_load=None)
                    answer = gr.HTML("", js_on_load=None, elem_id=f"cmp-{side}-answer")
                    outputs += [trace, counters, answer]
        record = gr.State(None)  # the relay column's finished answer, for the call inspector
        stopper = gr.State(StopButton)  # per user: Stop ends the running column as "stopped"
        with gr.Accordion("Call inspector (relay column)", open=True):
            inspected = inspector.build(relay_trace, lambda rec, _turn: rec, record, "compare", h.get_pair)

    def compare(prompt_text, button, *values):
        settings = h.Settings.from_ui(hosted, *values)
        off_task = pair_examples.hint(settings.pair, prompt_text)
        got: list = [None]
        keep = lambda rec: got.__setitem__(0, rec)  # noqa: E731
        for out in h.compare_run(prompt_text, settings, on_relay_result=keep, stopped=button.start()):
            # the last output is the note: an off-task hint shows there from the first moment, after any other
            out = (*out[:-1], (out[-1] or "") + render.note_html(off_task, "info")) if off_task else out
            yield (*out, got[0])

    # "minimal": the streamed text is the progress; Gradio's full overlay would hide it
    common = {"concurrency_id": "relay", "show_progress": "minimal"}
    outs = [*outputs, note, record]
    inputs = [prompt, stopper, *ctl.inputs]
    # the click is counted first, so Stop pressed while the request waits in Gradio's queue stops it
    clicked = StopButton.counted(stopper)
    run.click(**clicked).then(compare, inputs, outs, api_name="compare", **common)
    prompt.submit(**clicked).then(compare, inputs, outs, api_visibility="private", **common)
    # a new run replaces the inspected answer: the panel must not go on showing (and continuing) the old call
    for trigger in (run.click, prompt.submit):
        trigger(inspector.cleared, None, list(inspected), queue=False, api_visibility="private")
    # not cancels=: the running column ends as "stopped", with its counters (stream.StopButton)
    stop.click(StopButton.press, stopper, None, queue=False, api_visibility="private")
