"""A stop (Ctrl-C, SIGTERM) that comes while finalisers run is raised once they are done, where
the command can report it, not inside a finaliser (where Python prints a traceback and drops
it): `stops.stops_held`, used by distributed.cleanup around its garbage collection."""

from __future__ import annotations

import gc
import os
import signal
import sys

import pytest
import torch.distributed as dist

from alexnet import distributed
from alexnet.errors import Terminated
from alexnet.stops import stops_held


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


class SelfTerminating:
    """An object in a reference cycle (freed only by a collection) whose finaliser sends this
    process SIGTERM, as torchrun does to a rank when another rank has died."""

    finalised = 0

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        SelfTerminating.finalised += 1
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def sigterm_raises(monkeypatch):
    """SIGTERM raises Terminated (as under the CLI) and unraisable exceptions are recorded;
    both are put back afterwards, and automatic collections wait (only gc.collect frees)."""
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    previous = signal.signal(signal.SIGTERM, _terminate)
    gc.disable()
    try:
        yield unraisable
    finally:
        gc.enable()
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_while_the_group_is_let_go_is_raised_after_the_finalisers(sigterm_raises):
    """Before, the Terminated was raised inside the finaliser: printed as "Exception ignored",
    then dropped, and cleanup returned as if no stop had come."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    SelfTerminating.finalised = 0
    SelfTerminating()
    with pytest.raises(Terminated):
        distributed.cleanup()
    assert SelfTerminating.finalised == 1
    assert not sigterm_raises, sigterm_raises
    assert not dist.is_initialized()  # the group is left all the same
    assert signal.getsignal(signal.SIGTERM) is _terminate


def test_a_block_without_a_stop_ends_as_it_would(sigterm_raises):
    with stops_held():
        value = sum(range(10))
    assert value == 45 and signal.getsignal(signal.SIGTERM) is _terminate


def test_a_ctrl_c_in_the_block_is_raised_at_its_end_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with stops_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            reached.append(True)  # the block runs to its end
    assert reached == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with stops_held():
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
