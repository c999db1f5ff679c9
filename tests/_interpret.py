"""Triton kernels run through Triton's interpreter on CPU tensors, in a child process:
TRITON_INTERPRET=1 must be set before triton is imported and must not reach the rest of the
suite. What the kernel tests share to start such a child and read what it wrote."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def interpreter_env(**extra: str) -> dict[str, str]:
    """This process's environment with TRITON_INTERPRET=1 and `extra` (ALEXNET_LRN=triton,
    ...), the checkout first on PYTHONPATH so that the child imports this alexnet."""
    return {**os.environ, "TRITON_INTERPRET": "1", **extra,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_interpreted(args: list[str], timeout: float = 600, cwd: Path | None = None,
                    **extra: str) -> subprocess.CompletedProcess:
    """`python ARGS` under interpreter_env(**extra), its output captured; the test fails
    with the child's output (the end of it) if it fails, and is skipped without triton."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    done = subprocess.run([sys.executable, *args], env=interpreter_env(**extra), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the .npz file a child wrote, by name."""
    with np.load(path) as z:
        return dict(z)


def case(results: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """The arrays of case `name` (those named `name.KEY`, by KEY); the case's traceback as
    the test's failure where the child caught one (`name.error`)."""
    assert f"{name}.error" not in results, str(results.get(f"{name}.error"))
    return {k.removeprefix(f"{name}."): v for k, v in results.items()
            if k.startswith(f"{name}.")}
