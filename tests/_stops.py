"""Test helpers for stops and second writers: a lock held by another process, a folder's
bytes, Ctrl-C at a chosen training step, and stand-in benchmarks for `alexnet bench`."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HOLD = """
import fcntl, sys
f = open(sys.argv[1], "ab")
fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(lock: Path) -> Iterator[None]:
    """`lock` flock-ed by another process until the block ends (it says when it holds it),
    as a second command writing the same folder or file holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        yield
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


def ctrl_c_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """A real SIGINT to this process as training's `n`-th step starts (that step still runs).
    Raised in the calling (main) thread, so its handler has run when the step begins:
    os.kill(getpid) may land on a loader's read-ahead thread and reach the handler later."""
    import alexnet.training.loop as loop

    real_step, calls = loop.train_step, {"n": 0}

    def step(*args):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return real_step(*args)

    monkeypatch.setattr(loop, "train_step", step)


def stand_in_bench(monkeypatch, name: str, bench, what: str = "a stand-in") -> None:
    """`alexnet bench NAME` runs `bench(args)` (a module alexnet.bench.NAME of its own) for
    the rest of the test."""
    import types

    import alexnet.bench

    module = types.ModuleType(f"alexnet.bench.{name}")
    module.bench = bench
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(alexnet.bench.WHATS, name, what)
