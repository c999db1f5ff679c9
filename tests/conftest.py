"""Shared test fixtures: the real Fashion-MNIST files where the Debian package is installed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# A shell starts a background job (`pytest &`) with SIGINT ignored, which the tests of Ctrl-C
# would inherit (and pass on to the commands they start): give them Python's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The IDX files of Fashion-MNIST, or a skip naming the package to install."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST absent: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Commands run in-process may set torch's thread count (relu-vs-tanh --threads): restore
    it, so that no test's numbers depend on which tests ran before it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
