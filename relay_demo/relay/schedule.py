"""The scheduler: which engine runs next, on which rows, and when a student run ends early.

Runs alternate: the student on every row waiting for it, then the teacher on every row waiting for it, and so
on (a model with no row waiting is skipped). The two engines share one machine (CPU cores or one GPU), so
running them at the same time would only split it between them; alternating gives each run the widest batch
the waiting rows allow, and with KV caches (hf) or prefix caching (vLLM) a run costs each model only the
tokens it has not seen. Rows move at their own pace inside a run: a row that hands over, ends or is
cancelled is done with the run at once (``loop.RelayBatch._turn_over``) and only waits for the other model's
next run.

A student run can last a whole answer, so it ends early (its writers' jobs cancelled, their tokens kept; they
rejoin the next student run, which re-reads at most one cache block) in two cases:

* ``preempt`` (default in greedy decoding only): the rows waiting for the teacher are at least a third as many
  as those still writing (``PREEMPT_WAITING``), so rows that handed over come back while the batch is wide,
  instead of finishing in a tail of their own after the others. With sampling a row's random stream would
  depend on when its neighbours hand over, so it is off there. The share was chosen on the real pair's
  learned relay (vLLM, bf16, batch 64, 1,024-token cap) over 64 held-out GSM8K *train* problems (the dev set),
  timing only, 2026-12-03: one waiting row per writer (the rule before) 123.7 s, per 2 writers 115.9, per 3
  111.7, per 4 122.0, per 6 125.3, against 90.3 s for the student alone. Earlier pauses mean more teacher
  runs, each as long as its longest span; later ones leave the callers a tail of narrow student steps.
* rows were added during the run (a server's new requests), once every writer has kept a token this run (a
  writer that kept none would count as stalled).

In greedy decoding neither changes any output. Teacher runs are never cut: a handoff writes its N tokens.

Why runs and not continuous batching (each engine stepping whatever rows are ready, a row moving to the other
model's running batch the moment it hands over), measured on 2026-12-02 on this project's 2 shared CPU cores
(tiny-random pair, vLLM, 32 rows of 128 tokens, best of 3, greedy): a prototype with both engines' runs open
at once, stepped alternately, rows joining a running vLLM batch between steps (``add_request``) and no
preemption wrote the same tokens at 0.96 and 1.01 of this schedule's tokens per second with handoffs every 19
tokens, and at 0.95 and 0.99 with random handoffs (p = 1/19), in two runs. What it saves (re-submitting paused
writers) is spent again on teacher steps over one or two rows between every two student steps; on one machine
the two models cannot run at once anyway. No gain, then, to pay for a second path in the loop, and the
transformers engine cannot add a row to a running batch at all. ``RelayBatch.add`` and ``cancel`` work at any
moment either way; a schedule that keeps both runs open would change ``next_phase`` and the loop's ``events``.
"""

from __future__ import annotations

from .state import Phase, Row

PREEMPT_WAITING = 3  # preemption pauses the student run once waiting rows * this >= writers (see above)


def next_phase(rows: list[Row], last: Phase) -> Phase | None:
    """The model to run next: the other one than ``last`` if a row waits for it, else the same, else None."""
    other = Phase.TEACHER if last is Phase.STUDENT else Phase.STUDENT
    for phase in (other, last):
        if any(r.phase is phase for r in rows):
            return phase
    return None


def pause(run: list[Row], preempt: bool, newcomers: bool) -> int:
    """Pause the student run's writers if it is time (``preempt``: preemption may still end this run;
    ``newcomers``: rows were added during it); how many were paused."""
    if not (preempt or newcomers):
        return 0
    writers = [r for r in run if r.phase is Phase.STUDENT and r.job is not None and not r.job.cancelled]
    waiting = sum(1 for r in run if r.phase is Phase.TEACHER)
    joiners = newcomers and all(len(r.job.session.ids) > r.start_len for r in writers)
    if not (preempt and waiting * PREEMPT_WAITING >= len(writers)) and not joiners:
        return 0
    for r in writers:
        r.job.cancel()  # its tokens so far stay in its session; later ones are dropped
        r.paused = True
    return len(writers)
