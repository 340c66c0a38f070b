"""An OpenAI-compatible server over the relay loop: ``python -m relay_demo serve --pair NAME``.

    GET  /v1/models              the pair (and its student and teacher)
    POST /v1/chat/completions    stream or not; every text chunk says who wrote it: "relay": {"source"}
    GET  /relay/status           rows decoding, requests waiting, totals (for tests and operators)

Batching. The relay loop of this version runs a fixed batch in rounds (student round, teacher round, ...).
It has no public way to add or drop a row, but its ``drive`` computes each round's rows afresh from the list
of sequences it was given. One scheduler thread owns the engines (under ``pair.lock``) and runs one batch at a
time: requests waiting when a batch starts join it, and a request that arrives while it decodes is appended
to that list, so it joins at the next round instead of waiting for the batch to end. A student round can
last a whole answer (student-only, or a student that never calls), so a newcomer ends it early: its writers
are paused as the loop's own preemption pauses them (job cancelled, tokens kept, one cache block re-read),
which changes no greedy output; with sampling a row's draws then depend on its neighbours' arrivals (as
with any batching server, a seed is best effort under concurrency). Teacher rounds are never cut.

Requests of one batch share what the loop keeps per batch (the policy with its knobs, ``max_calls``,
``max_n``, greedy or not); each row keeps its own sampling (temperature, top_p, seed), token budget and
deadline. A request whose
settings differ waits until the running batch drains (first come, first served: nothing more joins a batch
while an older request of another kind waits). ``_ServeRelay`` is the only code that leans on the loop's
internals; the continuous-batching rewrite of relay.py replaces it with the loop's own add/cancel.

A row whose job is over for good (an end token, its budget) gets its last chunk at once, not when the
round's slowest row ends; its sessions are released when that round ends (the engine writes every row's
cache back then).

Cancellation. A client that disconnects (or a row past its wall-time limit) has its current engine job
cancelled at the next token the scheduler sees: the engine gives it no more tokens after that step (in a hf
batch its slot rides along as a masked pad until the round ends). When the round ends the row is finished
and its sessions released: its own KV cache is dropped at once; a row of the round's shared batch tensors is
freed when the next round rebuilds them. A cancelled row that is not in the running round (waiting for the
other model) is finished and released before the next round; a request still in the queue is just removed.

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
