#!/usr/bin/env bash
# Creates .venv and installs lmsleep with its test and plotting extras. Safe to run again (fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, pinned: pip takes the CPU build from local disk instead of a multi-GB CUDA download.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,plot]"
