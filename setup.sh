#!/usr/bin/env bash
# Set up rlkl in ./.venv (idempotent). Installs the CPU torch wheel first when torch is missing, so that the
# `torch>=2.4` requirement does not pull a multi-GB CUDA build. Usage: ./setup.sh [extra ...]  (e.g. ./setup.sh test)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  # 2.13.0 CPU is on this machine's disk; elsewhere fall back to PyTorch's CPU index.
  "$VPY" -m pip install -q "torch==2.13.0" 2>/dev/null \
    || "$VPY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
extras=""
if [ $# -gt 0 ]; then extras="[$(IFS=,; echo "$*")]"; fi
"$VPY" -m pip install -q -e ".${extras}"
