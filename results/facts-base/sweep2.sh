#!/bin/bash
# Round 2 of the facts-base search: 15 settings at once, one thread each, SECONDS of training each.
# Run from the repository root: bash results/facts-base/sweep1.sh OUTDIR SECONDS
out=${1:-/tmp/facts-sweep-out}; seconds=${2:-200}; mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
M='"layout": "AA", "eviction": "none"'
M3='"layout": "AAA", "eviction": "none"'
LR4='"lr": 0.008, "adamw_lr": 0.012'
declare -A runs=(
  [r01-AA-a2-q4]="{\"model\": {$M, \"d_model\": 64}, \"task_options\": {\"attributes\": 2}}"
  [r02-AAA-lr4x-q6]="{\"model\": {$M3, \"d_model\": 64}, $LR4, \"task_options\": {\"questions\": 6}}"
  [r03-AAAA-lr4x-q6]="{\"model\": {\"layout\": \"AAAA\", \"eviction\": \"none\", \"d_model\": 64}, $LR4, \"task_options\": {\"questions\": 6}}"
  [r04-AAA-d128-lr4x-q6]="{\"model\": {$M3, \"d_model\": 128, \"head_dim\": 32, \"mlp_hidden\": 384}, $LR4, \"task_options\": {\"questions\": 6}}"
  [r05-AAA-lr4x-q6-namefirst]="{\"model\": {$M3, \"d_model\": 64}, $LR4, \"task_options\": {\"questions\": 6, \"value_first\": 0}}"
  [r06-AA-q6-namefirst]="{\"model\": {$M, \"d_model\": 64}, \"task_options\": {\"questions\": 6, \"value_first\": 0}}"
  [r07-AAA-lr8x-q6]="{\"model\": {$M3, \"d_model\": 64}, \"lr\": 0.016, \"adamw_lr\": 0.024, \"task_options\": {\"questions\": 6}}"
  [r08-AAA-lr4x-q6-wu100]="{\"model\": {$M3, \"d_model\": 64}, $LR4, \"warmup\": 100, \"task_options\": {\"questions\": 6}}"
  [r09-AAA-lr4x-q6-b64]="{\"model\": {$M3, \"d_model\": 64}, $LR4, \"batch_size\": 64, \"task_options\": {\"questions\": 6}}"
  [r10-AAA-lr4x-q6-8heads]="{\"model\": {$M3, \"d_model\": 64, \"n_heads\": 8, \"head_dim\": 8}, $LR4, \"task_options\": {\"questions\": 6}}"
  [r11-AAAAAA-lr4x-q6]="{\"model\": {\"layout\": \"AAAAAA\", \"eviction\": \"none\", \"d_model\": 64}, $LR4, \"task_options\": {\"questions\": 6}}"
  [r12-AAA-lr4x-a2-q4]="{\"model\": {$M3, \"d_model\": 64}, $LR4, \"task_options\": {\"attributes\": 2}}"
  [r13-AAA-d96-lr4x-q6]="{\"model\": {$M3, \"d_model\": 96, \"head_dim\": 24, \"mlp_hidden\": 288}, $LR4, \"task_options\": {\"questions\": 6}}"
  [r14-AAAA-d128-lr2x-q6]="{\"model\": {\"layout\": \"AAAA\", \"eviction\": \"none\", \"d_model\": 128, \"head_dim\": 32, \"mlp_hidden\": 384}, \"lr\": 0.004, \"adamw_lr\": 0.006, \"task_options\": {\"questions\": 6}}"
  [r15-AAA-lr4x-q6-e2a1]="{\"model\": {$M3, \"d_model\": 64}, $LR4, \"task_options\": {\"attributes\": 1, \"questions\": 2}}"
)
for name in "${!runs[@]}"; do
  ${PY:-python3} results/facts-base/sweep.py "$name" "${runs[$name]}" --seconds "$seconds" > "$out/$name.jsonl" 2> "$out/$name.err" &
done
wait
