"""Stopping a command once: the first Ctrl-C or SIGTERM stops it, further ones wait for its
cleanup (`one_stop`), for every command (alexnet.cli) and for `prepare` called from Python;
and holding a stop that comes while finalisers run until they are done (`stops_held`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from alexnet.errors import Terminated

STOPS = (KeyboardInterrupt, Terminated)  # what Ctrl-C and SIGTERM raise


@contextlib.contextmanager
def one_stop() -> Iterator[None]:
    """Ctrl-C and SIGTERM act as usual (their handlers raise) unless a stop's exception is
    unwinding (an except or finally clause, a context manager's exit, on its way out): then
    they are ignored, so that an impatient second Ctrl-C does not cut the cleanup short:
    prepare's decoding processes stopped and its store closed, evaluate's read-ahead threads
    joined (cut short, they ended the process in C++'s `terminate`, SIGABRT). A stop that was
    swallowed (raised in a finaliser, which only prints it) leaves none unwinding, so the next
    one stops as the first. The handlers are put back at the end, except where the block (or
    a handler) set one of its own (the CLI's and bench's SIGTERM handlers ignore further
    SIGTERMs for good)."""
    stops = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in stops}
    handled = [sig for sig in stops if callable(previous[sig])]  # not set outside Python

    def stop(signum: int, frame: Any) -> None:
        if not unwinding_a_stop():
            previous[signum](signum, frame)  # raises KeyboardInterrupt or Terminated

    for sig in handled:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig in handled:  # where the block set a handler of its own (SIGTERM ignored
            if signal.getsignal(sig) is stop:  # after one, by bench or the CLI's), it stays
                signal.signal(sig, previous[sig])


def unwinding_a_stop() -> bool:
    """Whether a KeyboardInterrupt or Terminated is being handled where this runs (in an
    except or finally clause or an `__exit__`), maybe under another exception raised meanwhile."""
    err = sys.exc_info()[1]
    while err is not None:
        if isinstance(err, STOPS):
            return True
        err = err.__context__
    return False


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM that come in the block are acted on when it ends, by the handlers
    set before it: a block that runs finalisers (gc.collect) would otherwise raise the stop
    inside one of them, where Python only prints it ("Exception ignored in ...", a traceback)
    and goes on as if it had not come. A signal ignored before the block stays ignored."""
    stops = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in stops}
    held = [sig for sig in stops if previous[sig] not in (signal.SIG_IGN, None)]
    came: list[int] = []
    for sig in held:
        signal.signal(sig, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, previous[sig])
        if came:
            handler = previous[came[0]]
            if callable(handler):
                handler(came[0], None)  # raises KeyboardInterrupt or Terminated
            else:  # the default action (SIGTERM's: the process ends)
                signal.raise_signal(came[0])
