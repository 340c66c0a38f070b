"""About tab: the method in a few lines, the baselines, and what was measured where."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..pairs import available, param_counts
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

**Counters** (hover one for its definition): *call ratio* is the share of response tokens written by the
teacher; *FLOPs* are 2·params per token position each model ran, estimated while streaming and exact at the
end, and are split against the teacher alone writing an answer of the same length: the *student's* (an answer
without a call shows the size ratio below), the *teacher's decode* (one position per token it wrote) and the
*teacher's prefill* (the prompt and the student's text it caught up on at its handoffs: parallel, cheap in
time next to decode). *Wall vs teacher alone* is measured: the teacher alone answers the same prompt with
the same settings (after every answer on a pair as small as the tiny ones; on larger ones, in Compare).

**Explorer metrics**: APGR = (relay − student) / (teacher − student) accuracy; CPT(x%) = the call ratio at
which a method reaches x% of that gap; *saving* compares with a random query-level router tuned to the same
accuracy.

**Serve it**: `python -m relay_demo serve --pair <pair> --port 8000` runs the same relay behind an
OpenAI-compatible API (`/v1/chat/completions`, streamed or not; each chunk says who wrote it); the
README's "Server" section has curl and `openai` client examples.

**Speed of this app** is measured by `benchmarks/app_latency.py` (first-token latency and streaming tokens/s
through the app's queue and HTTP stream); the evaluation runs below list the machine each ran on.
"""


def sizes_markdown(pair: str) -> str:
    """Both models' parameter counts for the selected pair, and the share of the teacher alone's FLOPs an
    answer without a call costs (their ratio)."""
    ok, why = available(pair)
    if not ok:
        return f"**{pair}**: model sizes not known here: {why}."
    try:
        ps, pt = param_counts(pair)
    except Exception as e:  # noqa: BLE001 - a model that is not here (a hub id offline): say so, go on
        why = (str(e).splitlines() or [""])[0][:200]
        return f"**{pair}**: model sizes not known here ({type(e).__name__}: {why})."
    return (
        f"**{pair}**: student {ps / 1e6:.2f}M parameters ({ps:,}), teacher {pt / 1e6:.2f}M ({pt:,}); an "
        f"answer without a call costs {100 * ps / pt:.0f}% of the teacher alone's FLOPs."
    )


def build(results_dir: Path, pair: gr.components.Component) -> None:
    with gr.Tab("About") as tab:
        gr.Markdown(METHOD)
        gr.Markdown("### The selected pair's models")
        sizes = gr.Markdown("", elem_id="about-sizes")
        gr.Markdown("### What was measured, on what hardware")
        runs = gr.Markdown("")
    private = {"queue": False, "api_visibility": "private"}
    tab.select(lambda: x.runs_markdown(results_dir), None, runs, **private)
    tab.select(sizes_markdown, pair, sizes, **private)
    pair.change(sizes_markdown, pair, sizes, **private)
