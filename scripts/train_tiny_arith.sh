#!/usr/bin/env bash
# Rebuild the embedded tiny-arith pair from nothing on CPU (issue 3): the base student, the larger teacher, the
# teacher filter, warm-up SFT,
# GRPO with relay rollouts, the GRPO-only baseline, the CITER-style router baseline, and the final test evaluation
# (offline/evaluate.py with eval.yaml: every method on 1000 test problems, into results/runs/tiny-arith-eval).
#
#   scripts/train_tiny_arith.sh            # everything (about 2 CPU-hours on one core)
#   scripts/train_tiny_arith.sh grpo-relay eval   # only some stages, in this order
#
# Stages: base teacher filter warmup grpo-relay grpo-only router eval. One thread each (the machine is shared);
# THREADS=2 when it is idle. Wall-clock time of each stage goes to results/training/tiny-arith/stages.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=offline/recipes/tiny-arith
M=results/training/tiny-arith
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
EVAL_METHODS=student,teacher,relay,relay-teacher-free,grpo-only,relay-call-bias,random-token,confidence,router
mkdir -p "$M"

stage() {  # stage NAME CMD...: run, time, record
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "== $name: $*"
  "$@"
  local t1; t1=$(date +%s)
  printf '{"stage": "%s", "wall_s": %d, "threads": %s, "finished": "%s"}\n' "$name" $((t1 - t0)) "$THREADS" \
    "$(date -u +%FT%TZ)" >> "$M/stages.jsonl"
}

run_stage() {
  case $1 in
    base) stage base "$PY" -m offline.train_base --config $R/base.yaml threads=$THREADS ;;
    teacher) stage teacher "$PY" -m offline.train_base --config $R/teacher.yaml threads=$THREADS ;;
    filter) stage filter "$PY" -m offline.filter --config $R/filter.yaml threads=$THREADS ;;
    warmup) stage warmup "$PY" -m offline.warmup --config $R/warmup.yaml threads=$THREADS ;;
    grpo-relay) stage grpo-relay "$PY" -m offline.grpo --config $R/grpo-relay.yaml threads=$THREADS ;;
    grpo-only) stage grpo-only "$PY" -m offline.grpo --config $R/grpo-only.yaml threads=$THREADS ;;
    router) stage router "$PY" -m offline.routers --config $R/router.yaml threads=$THREADS ;;
    # the models were just rebuilt: the run's rows of every method are generated again (--redo)
    eval) stage eval "$PY" -m offline.evaluate --config $R/eval.yaml --redo "$EVAL_METHODS" ;;
    *) echo "unknown stage $1 (base teacher filter warmup grpo-relay grpo-only router eval)" >&2; exit 2 ;;
  esac
}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(base teacher filter warmup grpo-relay grpo-only router eval)
for s in "${STAGES[@]}"; do run_stage "$s"; done
