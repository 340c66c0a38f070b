"""An OpenAI-compatible server over the relay loop: ``python -m relay_demo serve --pair NAME``.

    GET  /v1/models              the pair (and its student and teacher)
    POST /v1/chat/completions    stream or not; every text chunk says who wrote it: "relay": {"source"}
    GET  /relay/status           rows decoding, requests waiting, totals (for tests and operators)

A non-streamed reply's ``message.content`` is the answer with the call commands removed; ``relay.spans`` keep
them. Streamed, a command is a chunk of its own with no ``delta.content`` and the command in ``relay.text``,
so the contents joined are the same answer. A system (or developer) message goes to the pair's chat template;
a template with no place for it (it would drop the text) gets a 400 that says so.

Batching. One scheduler thread owns the engines (under ``pair.lock``) and drives one ``RelayBatch`` at a time
(``relay_demo.relay``): requests waiting when a batch starts are its first rows, and a request that arrives
while it decodes is added to it (``RelayBatch.add``) and joins its model's next run instead of waiting for the
batch to end. A student run can last a whole answer (student-only, or a student that never calls), so a
newcomer ends it early: its writers are paused as the loop's own preemption pauses them (job cancelled, tokens
kept, one cache block re-read), which changes no greedy output; with sampling a row's draws then depend on its
neighbours' arrivals (as with any batching server, a seed is best effort under concurrency). Teacher runs are
never cut.

Requests of one batch share what a ``RelayBatch`` keeps per batch (the policy with its knobs, ``max_calls``,
``max_n``, greedy or not); each row keeps its own sampling (temperature, top_p, seed, drawn as a lone
request's), token budget and deadline. A request whose settings differ waits until the running batch drains
(first come, first served: nothing more joins a batch while an older request of another kind waits).

A row whose job is over for good (an end token, its budget) is reported by the loop at once, not when its
run's slowest row ends, and gets its last chunk then; its sessions are released when that run ends (the hf
engine writes every row's cache back then).

Cancellation. A client that disconnects (or a row past its wall-time limit) is cancelled
(``RelayBatch.cancel``) when the scheduler next looks over its rows (once an engine step's burst of events):
a row in the running run gets no tokens after that step (in a hf batch its slot rides along as a masked pad
until a quarter of the batch has ended or the run does) and is finished and its sessions released when the run
ends; its own KV cache is dropped at once, and a row of the run's shared batch tensors is freed when the next
run rebuilds them. A row waiting for the other model is finished and released at once; a request still in the
queue is just removed.

Bounds: at most ``--max-batch`` rows decode together and ``--max-queue`` more wait; past that, 429.

Models behind URLs: ``--teacher-url`` / ``--student-url`` (``relay_demo.backends.remote``); with both, the
server holds no model and runs as a stateless replica in front of vLLM deployments (README, "Remote models").
A teacher that fails during an answer ends it with ``relay.finish_reason`` "teacher_unavailable" in the last
chunk.

Modules: ``requests`` (a request body -> prompt ids, policy, limits, sampling; OpenAI-shaped errors),
``scheduler`` (the thread that batches rows and streams their spans), ``app`` (HTTP routes, the command line).
"""

from .app import add_parser, create_app, serve
from .requests import Settings

__all__ = ["Settings", "add_parser", "create_app", "serve"]
