#!/usr/bin/env bash
# `alexnet ablate` on one GPU: the paper net and its six ablations on the FULL Fashion-MNIST
# (60,000 training images, the 10,000 test images as validation) at 256x256, each net with
# several seeds at one equal step budget, so that a GPU session prints the table with error
# bars (docs/experiments.md). Called by bench/gpu_check.sh; sized for about two minutes of
# training after the store is prepared (the store is reused by a second call).
#
# Usage: bench/ablate_gpu.sh FASHION_MNIST_DIR [OUTDIR]
# Settings: ABLATE_STEPS (default 150 steps of 128 per run), ABLATE_SEEDS (default 2),
# ABLATE_STORE (default /tmp/alexnet-fm256: 14 GB, kept out of OUTDIR), PYTHON.
# bf16 autocast and channels_last (run.amp, run.channels_last) are on: speed options that the
# config allows and that leave the mathematics the paper's; torch.compile is off (it would
# compile each of the runs anew). Biases start at 0.1 as in the demo preset (with the paper's
# 1 a ten-class net's loss stays flat for hundreds of steps; docs/training.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SOURCE=${1:?usage: bench/ablate_gpu.sh FASHION_MNIST_DIR [OUTDIR]}
OUTDIR=${2:-/tmp/alexnet-ablate}
STORE=${ABLATE_STORE:-/tmp/alexnet-fm256}
STEPS=${ABLATE_STEPS:-150}
SEEDS=${ABLATE_SEEDS:-2}
RUNS=/tmp/alexnet-ablate-runs  # checkpoints (~0.7 GB a run) stay out of OUTDIR
mkdir -p "$OUTDIR"

t0=$SECONDS
$PY -m alexnet prepare "$SOURCE" "$STORE" --size 256 --splits train,test 2>&1 | tr '\r' '\n' | tail -n 2
echo "=== ablate_gpu: store $STORE ready in $((SECONDS - t0))s"
t1=$SECONDS
rm -rf "$RUNS"
$PY -m alexnet ablate --data "$STORE" --budget-steps "$STEPS" --seeds "$SEEDS" --out "$RUNS" \
  --set run.device=cuda --set run.amp=bf16 --set run.channels_last=true \
  --set model.init_bias=0.1 --set run.save_best=false --set run.progress=false
echo "=== ablate_gpu: $((7 * SEEDS)) runs of $STEPS steps in $((SECONDS - t1))s"
cp "$RUNS"/ablation.md "$RUNS"/ablation.json "$RUNS"/ablation.csv "$OUTDIR"/
