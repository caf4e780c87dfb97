#!/usr/bin/env bash
# Runs every benchmark one after another and keeps each one's output (table + final JSON line).
#   bash benchmarks/run_all.sh [THREADS] [OUT_DIR]      (defaults: 2, results/benchmarks)
# Run it on a quiet machine: anything else on the cores shows up in the timings.
set -euo pipefail
threads=${1:-2}
out=${2:-results/benchmarks}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
run() {
    local name=$1; shift
    echo "== $name: $*" >&2
    "$python" "$@" --threads "$threads" 2>&1 | tee "$out/$name.txt"
}
run bench_op benchmarks/bench_op.py
run bench_sleep benchmarks/bench_sleep.py
run bench_train benchmarks/bench_train.py --repeats 5
run bench_stream benchmarks/bench_stream.py --models sleep-N4 hybrid-N1 sliding-window
run bench_stream_full_attention benchmarks/bench_stream.py --models full-attention --lengths 1024 4096 16384 --measure 64
run bench_dreams benchmarks/bench_dreams.py
