"""Shared test fixtures: the real Fashion-MNIST files where the Debian package is installed;
and how pytest-xdist (`-n auto`) shares the suite among its workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Seconds each of the longest modules took on one of two xdist workers (2-core CPU, CI's
# machine; measured 2026-12-01): under xdist these start first, so that none of them starts
# last and runs alone.
LONGEST = {"test_train.py": 189, "test_lrn_triton.py": 90, "test_distributed.py": 83,
           "test_speed_options.py": 64, "test_own.py": 53, "test_bench.py": 41,
           "test_figures.py": 33, "test_gpu_machine_triton.py": 28, "test_augment_triton.py": 24,
           "test_pool_triton.py": 23, "test_mutants_procedure.py": 21,
           "test_guards_distributed.py": 19}


def _threads() -> int:
    """Torch's threads in this process: at most 2, and under xdist no more than the cores
    shared among its workers (more threads than cores only contend)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(2, torch.get_num_threads(), (cores or 1) // workers))


torch.set_num_threads(_threads())

# A shell starts a background job (`pytest &`) with SIGINT ignored, which the tests of Ctrl-C
# would inherit (and pass on to the commands they start): give them Python's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`-n N` sends each module whole to one worker (its module-scoped fixtures, some of them
    minutes of training or interpreted kernels, are made once, not once per worker), in the
    order the workers collected them (pytest_collection_modifyitems); an explicit --dist other
    than load is kept."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False  # keep the workers' order
    return ByModule(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker, the longest modules first (LONGEST), each module's tests in their
    own order, the other modules as collected."""
    if not hasattr(config, "workerinput"):  # set by xdist in its workers
        return
    items.sort(key=lambda item: -LONGEST.get(item.path.name, 0))


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
