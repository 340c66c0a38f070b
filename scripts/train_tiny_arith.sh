#!/usr/bin/env bash
# Rebuild the embedded tiny-arith pair from nothing on CPU (issue 3): base models, teacher filter, warm-up SFT,
# GRPO with relay rollouts, the GRPO-only baseline, and the final test evaluation.
#
#   scripts/train_tiny_arith.sh            # everything (about 2 CPU-hours on one core)
#   scripts/train_tiny_arith.sh grpo-relay eval   # only some stages, in this order
#
# Stages: base filter warmup grpo-relay grpo-only eval. One thread each (the machine is shared);
# THREADS=2 when it is idle. Wall-clock time of each stage goes to results/training/tiny-arith/stages.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=offline/recipes/tiny-arith
M=results/training/tiny-arith
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
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
    filter) stage filter "$PY" -m offline.filter --config $R/filter.yaml threads=$THREADS ;;
    warmup) stage warmup "$PY" -m offline.warmup --config $R/warmup.yaml threads=$THREADS ;;
    grpo-relay) stage grpo-relay "$PY" -m offline.grpo --config $R/grpo-relay.yaml threads=$THREADS ;;
    grpo-only) stage grpo-only "$PY" -m offline.grpo --config $R/grpo-only.yaml threads=$THREADS ;;
    eval) stage eval "$PY" -m offline.tiny_arith_eval --config $R/final-eval.yaml threads=$THREADS ;;
    *) echo "unknown stage $1 (base filter warmup grpo-relay grpo-only eval)" >&2; exit 2 ;;
  esac
}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(base filter warmup grpo-relay grpo-only eval)
for s in "${STAGES[@]}"; do run_stage "$s"; done
