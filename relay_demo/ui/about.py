"""About tab: the method in a few lines, the baselines, and what was measured where."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import explorer_data as x

METHOD = """
### RelayLLM in a few lines
A small **student** model writes the answer. When it is unsure, it writes a command `<call>N</call>`; the
large **teacher** then continues the *same* text (with every command removed) for at most **N** tokens, and
the student picks up where the teacher stopped. The student learns *when* to call, and for how long, with
GRPO; teacher tokens are masked out of its loss. Because the teacher keeps its KV cache between calls, a
handoff costs it only the tokens it has not yet seen. The paper reports that a Qwen3-1.7B student calling
Qwen3-8B for about 1% of the tokens closes most of the gap to the teacher.

**Colours**: student text is plain, <span class="relay-span relay-teacher">teacher text is teal</span>,
and <span class="relay-span relay-command">commands are amber</span>. Hover any span for the model and its
token count.

### Policies (who decides to hand over)
| policy | hands over when | what it shows |
|---|---|---|
| learned | the student writes `<call>N</call>` | the paper's method |
| confidence τ | the student's most likely token has probability < τ | a training-free token router |
| random-token p | with probability p at each token | the cost of calls placed at random |
| interval k | every k student tokens | forced handoffs (tests, benchmarks) |
| router | an MLP on the student's hidden state scores above a threshold | a CITER-style learned router |
| student-only / teacher-only | never / always | the two ends of the cost–accuracy range |

**Counters**: *call ratio* is the share of response tokens written by the teacher; *FLOPs* are 2·params
per token each model ran (prefills included), estimated while streaming and exact at the end; *FLOPs vs
teacher-only* compares with the teacher writing an answer of the same length.

**Explorer metrics**: APGR = (relay − student) / (teacher − student) accuracy; CPT(x%) = the call ratio at
which a method reaches x% of that gap; *saving* compares with a random query-level router tuned to the same
accuracy.

**Serve it**: `python -m relay_demo serve --pair <pair> --port 8000` runs the same relay behind an
OpenAI-compatible API (`/v1/chat/completions`, streamed or not; each chunk says who wrote it); the
README's "Server" section has curl and `openai` client examples.

**Speed of this app** is measured by `benchmarks/app_latency.py` (first-token latency and streaming tokens/s
through the app's queue and HTTP stream); the evaluation runs below list the machine each ran on.
"""


def build(results_dir: Path) -> None:
    with gr.Tab("About") as tab:
        gr.Markdown(METHOD)
        gr.Markdown("### What was measured, on what hardware")
        runs = gr.Markdown("")
    tab.select(lambda: x.runs_markdown(results_dir), None, runs, queue=False, api_visibility="private")
