#!/bin/bash
# Round 1 of the facts-base search: 15 settings at once, one thread each, SECONDS of training each.
# Run from the repository root: bash results/facts-base/sweep1.sh OUTDIR SECONDS
out=${1:-/tmp/facts-sweep-out}; seconds=${2:-200}; mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
M='"layout": "AA", "eviction": "none"'
declare -A runs=(
  [c01-AA-d64]="{\"model\": {$M, \"d_model\": 64}}"
  [c02-AA-d128]="{\"model\": {$M, \"d_model\": 128, \"head_dim\": 32, \"mlp_hidden\": 384}}"
  [c03-AAA-d64]="{\"model\": {\"layout\": \"AAA\", \"eviction\": \"none\", \"d_model\": 64}}"
  [c04-AAAA-d64]="{\"model\": {\"layout\": \"AAAA\", \"eviction\": \"none\", \"d_model\": 64}}"
  [c05-AA-lr2x]="{\"model\": {$M, \"d_model\": 64}, \"lr\": 0.004, \"adamw_lr\": 0.006}"
  [c06-AA-lr4x]="{\"model\": {$M, \"d_model\": 64}, \"lr\": 0.008, \"adamw_lr\": 0.012}"
  [c07-AA-q6]="{\"model\": {$M, \"d_model\": 64}, \"task_options\": {\"questions\": 6}}"
  [c08-AA-a2]="{\"model\": {$M, \"d_model\": 64}, \"task_options\": {\"attributes\": 2}}"
  [c09-AA-b64]="{\"model\": {$M, \"d_model\": 64}, \"batch_size\": 64}"
  [c10-AA-b16]="{\"model\": {$M, \"d_model\": 64}, \"batch_size\": 16}"
  [c11-AA-adamw]="{\"model\": {$M, \"d_model\": 64}, \"optimizer\": \"adamw\"}"
  [c12-AAA-d128-lr2x]="{\"model\": {\"layout\": \"AAA\", \"eviction\": \"none\", \"d_model\": 128, \"head_dim\": 32, \"mlp_hidden\": 384}, \"lr\": 0.004, \"adamw_lr\": 0.006}"
  [c13-AA-8heads]="{\"model\": {$M, \"d_model\": 64, \"n_heads\": 8, \"head_dim\": 8}}"
  [c14-AA-v4]="{\"model\": {$M, \"d_model\": 64}, \"task_options\": {\"values\": 4}}"
  [c15-AAA-lr2x-q6]="{\"model\": {\"layout\": \"AAA\", \"eviction\": \"none\", \"d_model\": 64}, \"lr\": 0.004, \"adamw_lr\": 0.006, \"task_options\": {\"questions\": 6}}"
)
for name in "${!runs[@]}"; do
  ${PY:-python3} results/facts-base/sweep.py "$name" "${runs[$name]}" --seconds "$seconds" > "$out/$name.jsonl" 2> "$out/$name.err" &
done
wait
