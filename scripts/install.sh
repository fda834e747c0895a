#!/usr/bin/env bash
# Installs goldtron and its pinned dependencies into ./.venv (a fresh machine needs only Python 3.10+).
# torch first, alone and exactly pinned: an unpinned or ranged torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import torch, goldtron; print(f'goldtron {goldtron.__version__} installed with torch {torch.__version__}')"
