#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with the package, its test tools,
# and (where apt exists) the Fashion-MNIST files the demo trains on. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# Install torch before the package so that a CPU-only machine gets the CPU wheel, not the
# multi-GB CUDA build that an unpinned 'torch' would pull. GPU users: install your own torch
# into .venv first (or set ALEXNET_TORCH to the requirement you want).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -q "${ALEXNET_TORCH:-torch}"
  else
    # PyTorch's CPU index first: PyPI's Linux torch is the CUDA build, GBs of libraries. No
    # retries: where that index is out of reach, pip's configured sources or the plain
    # install after it serve without waiting.
    $PIP install -q --retries 0 --index-url https://download.pytorch.org/whl/cpu \
      "${ALEXNET_TORCH:-torch==2.13.0}" || $PIP install -q "${ALEXNET_TORCH:-torch==2.13.0}"
  fi
fi
$PIP install -q -e ".[dev,export]"  # export: ONNX and its check, so the tests run them

# The demo's data: Debian's dataset-fashion-mnist (IDX files under /usr/share/datasets).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
    || echo "setup.sh: could not install dataset-fashion-mnist; the demo then needs --data DIR" >&2
fi
echo "setup.sh: ready (.venv/bin/alexnet)"
