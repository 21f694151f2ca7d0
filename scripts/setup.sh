#!/usr/bin/env bash
# Set up .venv with edgelora and everything it needs. Safe to re-run.
#
# CPU machines: torch==2.13.0 (a CPU build). With an NVIDIA GPU, install a CUDA torch
# into .venv first (e.g. `.venv/bin/pip install torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cu130`) or set EDGELORA_TORCH to the pip spec to use,
# and add EXTRAS=cuda for bitsandbytes + accelerate.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "${EDGELORA_TORCH:-torch==2.13.0}"
fi
# llama-cpp-python compiles llama.cpp (about 5 minutes on 2 cores) the first time;
# pip's wheel cache makes every later set-up reuse the built wheel.
echo "setup: installing edgelora[$EXTRAS] (first run compiles llama-cpp-python)..." >&2
.venv/bin/pip install -q -e ".[$EXTRAS]"
.venv/bin/python -c "import edgelora, llama_cpp, torch, transformers, peft; print('setup: ok, torch', torch.__version__, 'llama-cpp-python', llama_cpp.__version__)"
