"""The Triton kernels compile with the GPU machine's triton too, not only with the one here.

GPU runs are rare and short (bench/gpu_check.sh), and that machine has an older triton (3.6,
beside torch 2.11) than this one's test environment; a kernel written against a newer
front end can fail there: the first rows LRN kernel (a layout since removed) did (a name
holding a compile-time number is a run-time value in 3.6). So the sm_90 compilation tests
run once more here with that triton installed beside the project's (`pip install
--target`, the wheel only) and put first on the child's path; skipped where pip cannot
fetch it.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_MACHINE_TRITON = "3.6.0"  # the GPU machine's triton (beside torch 2.11, CUDA 13)
TARGET = ROOT / ".triton" / GPU_MACHINE_TRITON  # ignored; reused by later runs


def _install() -> Path:
    """TARGET holding triton==GPU_MACHINE_TRITON, installed once (into a folder of its own,
    renamed when complete, so an interrupted install is never taken for one); skip if pip
    cannot."""
    if TARGET.exists():
        return TARGET
    partial = TARGET.with_name(f"{TARGET.name}.partial-{os.getpid()}")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(partial), f"triton=={GPU_MACHINE_TRITON}"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        pytest.skip(f"pip could not install triton=={GPU_MACHINE_TRITON}: "
                    f"{done.stderr.strip().splitlines()[-1:]}")
    os.replace(partial, TARGET)
    return TARGET


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="on the GPU machine the CUDA tests compile with its own triton")
@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="triton wheels exist for Linux x86-64")
def test_the_kernels_compile_for_hopper_with_the_gpu_machines_triton(tmp_path):
    target = _install()
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(target), str(ROOT),
                                          os.environ.get("PYTHONPATH", "")])}
    check = ("import triton, sys; "
             f"sys.exit(triton.__version__ != {GPU_MACHINE_TRITON!r})")
    assert subprocess.run([sys.executable, "-c", check], env=env).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "hopper",
         str(ROOT / "tests" / "test_lrn_triton.py"), str(ROOT / "tests" / "test_pool_triton.py"),
         str(ROOT / "tests" / "test_augment_triton.py")],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    # the LRN kernels (tile, band, gather; halo in bf16 and fp32), the pool kernels (bf16,
    # fp32) and the augmentation kernel, none skipped
    assert re.match(r"6 passed, \d+ deselected in", summary), summary
