"""Playground tab: a multi-turn chat streaming the relay, spans coloured by who wrote them, live counters."""

from __future__ import annotations

import gradio as gr

from . import handlers as h
from . import render
from .settings import Controls

# The first three problems of the synthetic task's test split (``offline.tasks.arith.load("test", n=3)``, the
# tiny pair's training distribution; a test checks they still are), then word problems of our own.
TASK_PROBLEMS = [
    "Eva has 74 cards. She finds 95 cards. She buys 8 boxes of 23 cards. How many cards does she have now?",
    "Eva has 53 cards. She wins 99 cards. She buys 3 boxes of 43 cards. How many cards does she have now?",
    "Hugo has 34 marbles. He receives 89 marbles. He loses 28 marbles. He buys 2 boxes of 75 marbles. "
    "How many marbles does he have now?",
]
WORD_PROBLEMS = [
    "A baker makes 14 trays of 12 rolls and sells 97 rolls. How many rolls are left?",
    "Mia reads 23 pages a day for 6 days, then 17 more pages. How many pages has she read?",
    "A train leaves with 250 passengers, 68 get off and 41 get on. How many passengers are on the train?",
]


def examples() -> list[str]:
    """Synthetic task problems (the tiny pair's training distribution) and word problems of our own."""
    return TASK_PROBLEMS + WORD_PROBLEMS


def build(ctl: Controls, hosted: bool) -> None:
    with gr.Tab("Playground"):
        gr.HTML(render.legend_html(), js_on_load=None)
        chat = gr.HTML(render.chat_html([]), elem_id="chat", js_on_load=None, autoscroll=True)
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
        gr.Examples(examples(), inputs=prompt, label="Examples: synthetic task problems and word problems")
        turns = gr.State([])  # per user; inside the Tab: a bare component in gr.Tabs breaks the tab bar

    def submit(prompt_text, turns_value, *values):
        cleared = False
        for chat_html, counters_html, note_html, turns_out, box in h.chat_submit(
            prompt_text, turns_value, h.Settings.from_ui(hosted, *values)
        ):
            # clear the box once, then leave it alone: the user may type the next question while this streams
            yield chat_html, counters_html, note_html, turns_out, gr.skip() if cleared and box == "" else box
            cleared = cleared or box == ""

    outputs = [chat, counters, note, turns, prompt]
    inputs = [prompt, turns, *ctl.inputs]
    # "minimal": the streamed text is the progress; Gradio's full overlay would hide it
    common = {"concurrency_id": "relay", "show_progress": "minimal"}
    ev_send = send.click(submit, inputs, outputs, api_name="chat", **common)
    ev_enter = prompt.submit(submit, inputs, outputs, api_visibility="private", **common)
    stop.click(None, None, None, cancels=[ev_send, ev_enter], queue=False)
    clear.click(
        h.chat_clear,
        None,
        [chat, counters, note, turns],
        cancels=[ev_send, ev_enter],
        queue=False,
        api_name="clear",
    )
