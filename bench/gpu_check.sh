#!/usr/bin/env bash
# Every GPU check of the project in one script, for a machine with one CUDA GPU and no
# network (about 8 minutes): the test suite on CUDA, `alexnet bench` (model, data, train,
# evaluate, then pipeline: training from raw and jpeg stores) and a short real training run
# of the paper net on Fashion-MNIST.
#
# Usage: bench/gpu_check.sh [OUTDIR]
# Fashion-MNIST's IDX files are read from $ALEXNET_FMNIST, else .gpu-data/fashion-mnist (an
# ignored folder: copy /usr/share/datasets/fashion-mnist there and carry it), else the
# Debian package's folder. Every figure is printed and also written under OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUTDIR=${1:-${OUT:-/tmp/alexnet-gpu-check}}
mkdir -p "$OUTDIR"
DATA=${ALEXNET_FMNIST:-}
for d in .gpu-data/fashion-mnist /usr/share/datasets/fashion-mnist; do
  [ -z "$DATA" ] && [ -f "$d/train-images-idx3-ubyte.gz" ] && DATA=$d
done
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, keep going on failure
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc in $((SECONDS - t0))s"
  [ "$rc" = 0 ] || status=1
}

# Wheels carried in .whl/ (the GPU machine has no network, maybe no pip), e.g. simplejpeg for
# alexnet/data/decode.py: installed into a private folder, else unpacked there; without them
# the loader falls back to the decoders present (OpenCV, torchvision, PIL).
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=/tmp/alexnet-site
  $PY -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl 2>/dev/null \
    || $PY -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" "$SITE" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$SITE" && echo "wheels from .whl/: $(ls .whl)"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

step tests 150 $PY -m pytest -q -x -p no:cacheprovider tests
step bench 200 $PY -m alexnet bench model data train evaluate --device cuda --json "$OUTDIR/bench.json"
step pipeline 120 $PY -m alexnet bench pipeline --device cuda --json "$OUTDIR/pipeline.json"
if [ -n "$DATA" ]; then
  step demo 170 $PY -m alexnet demo --data "$DATA" --out "$OUTDIR/demo"
  step ablate 420 env PYTHON="$PY" bench/ablate_gpu.sh "$DATA" "$OUTDIR/ablate"
else
  echo "=== demo: skipped, no Fashion-MNIST files (set ALEXNET_FMNIST)"; status=1
fi
echo "=== gpu_check: $([ $status = 0 ] && echo all passed || echo SOME FAILED); figures in $OUTDIR"
exit $status
