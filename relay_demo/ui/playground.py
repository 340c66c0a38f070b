"""Playground tab: a multi-turn chat streaming the relay, spans coloured by who wrote them, live counters."""

from __future__ import annotations

import gradio as gr

from . import handlers as h
from . import inspector, pair_examples, render
from .settings import Controls
from .stream import StopButton


def _turn_record(turns, i):
    return turns[i].get("inspect") if isinstance(turns, list) and 0 <= i < len(turns) else None


def build(ctl: Controls, hosted: bool) -> None:
    with gr.Tab("Playground"):
        gr.HTML(render.legend_html(), js_on_load=None)
        chat = gr.HTML(render.chat_html([]), elem_id="chat", js_on_load=inspector.CLICK_JS, autoscroll=True)
        note = gr.HTML("", elem_id="chat-note", js_on_load=None)
        counters = gr.HTML(render.counters_html({}), elem_id="chat-counters", js_on_load=None)
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(
                placeholder="Ask a question (Enter sends, Shift+Enter for a new line)",
                show_label=False,
                lines=2,
                max_lines=8,
                scale=6,
                elem_id="prompt",
            )
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
            clear = gr.Button("Clear", scale=1, elem_id="clear")
        pair_examples.build(prompt, ctl.components["pair"], "chat")
        turns = gr.State([])  # per user; inside the Tab: a bare component in gr.Tabs breaks the tab bar
        stopper = gr.State(StopButton)  # per user: Stop ends the running answer as "stopped"
        with gr.Accordion("Call inspector", open=True, elem_id="inspector-box"):
            inspector.build(chat, _turn_record, turns, "", h.get_pair)

    def submit(prompt_text, turns_value, button, *values):
        cleared = False
        settings = h.Settings.from_ui(hosted, *values)
        off_task = pair_examples.hint(settings.pair, prompt_text)
        for chat_html, counters_html, note_html, turns_out, box in h.chat_submit(
            prompt_text, turns_value, settings, button.start()
        ):
            if off_task:  # the toy answers any question with digits: say so at once, beside any other note
                note_html = (note_html or "") + render.note_html(off_task, "info")
            # clear the box once, then leave it alone: the user may type the next question while this streams
            yield chat_html, counters_html, note_html, turns_out, gr.skip() if cleared and box == "" else box
            cleared = cleared or box == ""

    outputs = [chat, counters, note, turns, prompt]
    inputs = [prompt, turns, stopper, *ctl.inputs]
    # "minimal": the streamed text is the progress; Gradio's full overlay would hide it
    common = {"concurrency_id": "relay", "show_progress": "minimal"}
    # the click is counted first, so Stop pressed while the request waits in Gradio's queue stops it
    clicked = StopButton.counted(stopper)
    ev_send = send.click(**clicked).then(submit, inputs, outputs, api_name="chat", **common)
    ev_enter = prompt.submit(**clicked).then(submit, inputs, outputs, api_visibility="private", **common)
    # not cancels=: a cancelled event ends in Gradio's error badges and loses the counters; the answer
    # ends itself as "stopped" instead (stream.StopButton)
    stop.click(StopButton.press, stopper, None, queue=False, api_visibility="private")
    clear.click(
        h.chat_clear,
        None,
        [chat, counters, note, turns],
        cancels=[ev_send, ev_enter],
        queue=False,
        api_name="clear",
    )
