#!/usr/bin/env bash
# Trains candidate recipes side by side on one accelerator with the portable trainer (Keras on
# JAX, no TensorFlow needed), each in its own process, under one wall-time cap; val picks the winner
# afterwards (emotion train --import-run). Used for the shipped model on a lent H100.
#
#   deploy/training/train_candidates.sh ARRAYS OUT MAX_SECONDS NAME:RECIPE[:SEED] ...
#   deploy/training/train_candidates.sh fer-arrays.npz runs 420 s42:compact s7:compact:7 m42:shipped:42 m7:shipped
set -uo pipefail
arrays=$1 out=$2 max_seconds=$3
shift 3
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
pids=()
for spec in "$@"; do
  IFS=: read -r name recipe seed <<<"$spec"
  mkdir -p "$out/$name"
  python3 -m model.train_portable train --arrays "$arrays" --config "$recipe" ${seed:+--seed "$seed"} \
    --out "$out/$name" --max-seconds "$max_seconds" --steps-per-execution 8 >"$out/$name/log.txt" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
