"""Progress with an ETA for every long step: a tqdm bar on a terminal, plain lines elsewhere.

One helper for the whole package (training, validation, evaluate, figures, experiments). On a
terminal it is a tqdm bar with rate and ETA. When the stream is not a terminal (a log file, a
pipe, CI), a redrawn bar would leave one carriage-return line per update in the file, so it
writes a plain line every `interval` seconds instead ("desc: 120/500 batch (24%), 3.1
batch/s, ETA 2m03s"; 30 s, or $ALEXNET_PROGRESS_SECONDS), and a last line when it closes if
it wrote any. `enabled=False` (other
ranks, --no-progress) makes every call a no-op.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

PLAIN_INTERVAL = 30.0  # seconds between plain lines when the output is not a terminal
INTERVAL_ENV = "ALEXNET_PROGRESS_SECONDS"  # overrides PLAIN_INTERVAL (0: a line per update)


def plain_interval() -> float:
    """Seconds between plain lines: $ALEXNET_PROGRESS_SECONDS, else PLAIN_INTERVAL."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, PLAIN_INTERVAL)))
    except ValueError:
        return PLAIN_INTERVAL


def format_duration(seconds: float) -> str:
    """`75` -> "1m15s", `3725` -> "1h02m05s", `4.2` -> "4s"; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def eta_seconds(done: float, total: float, elapsed: float) -> float:
    """Seconds left at the mean rate so far: elapsed * (total - done) / done (inf if none)."""
    if done <= 0 or total <= 0:
        return math.inf
    return elapsed * max(total - done, 0.0) / done


def is_terminal(stream: TextIO) -> bool:
    """True when `stream` is an interactive terminal (where redrawing a bar is right)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """Counts `total` units of work; shows them as a bar (terminal) or plain lines (not).

    `update(n)` adds n units, `set(n)` sets the count, `note(**values)` sets the values shown
    after the count (loss, img/s, a whole-run ETA). Use as a context manager or call close().
    """

    def __init__(self, total: int, desc: str, *, unit: str = "it", initial: int = 0,
                 enabled: bool = True, stream: TextIO | None = None,
                 interval: float | None = None, terminal: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = self.start = int(initial)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = plain_interval() if interval is None else interval
        self.clock = clock
        self.values: dict[str, Any] = {}
        self.lines = 0  # plain lines written
        self._shown: Any = None  # what the last plain line showed: (count, values)
        self.t0 = self.last = clock()
        self.bar = None
        if enabled and (is_terminal(self.stream) if terminal is None else terminal):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit,
                            file=self.stream, dynamic_ncols=True, leave=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.set(self.n + n)

    def set(self, n: int) -> None:
        """The count is now `n` (of `total`)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            self.n = n
            return
        self.n = n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._line()

    def note(self, **values: Any) -> None:
        """Values shown after the count, e.g. note(loss="2.301", run_eta="1h02m")."""
        if not self.enabled:
            return
        self.values.update(values)
        if self.bar is not None:
            self.bar.set_postfix(self.values, refresh=False)

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def eta(self) -> float:
        """Seconds left for this counter at its mean rate since it started."""
        return eta_seconds(self.n - self.start, self.total - self.start, self.elapsed())

    def line(self) -> str:
        """The plain line: "desc: n/total unit (p%), r unit/s, ETA t[, key=value ...]"."""
        elapsed = self.elapsed()
        done = self.n - self.start
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total > 0 else ""
        rate = f", {done / elapsed:.3g} {self.unit}/s" if elapsed > 0 and done > 0 else ""
        eta = f", ETA {format_duration(self.eta())}" if self.n < self.total else \
            f", done in {format_duration(elapsed)}"
        extra = "".join(f", {k} {v}" for k, v in self.values.items())
        return f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}{rate}{eta}{extra}"

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.lines += 1
        self._shown = (self.n, dict(self.values))

    def close(self) -> None:
        """Remove the bar, or write the last plain line if any line was written before and
        the last one does not already show the end (the same count and values)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines and self._shown != (self.n, self.values):
            self._line()
        self.enabled = False


def progress(total: int, desc: str, **kwargs: Any) -> Progress:
    """A Progress (see the class): progress(len(loader), "evaluate", unit="batch")."""
    return Progress(total, desc, **kwargs)


def track(items: Any, desc: str, total: int | None = None, **kwargs: Any) -> Any:
    """Iterate `items`, counting each one: `for x in track(loader, "validate"): ...`."""
    total = len(items) if total is None else total
    with Progress(total, desc, **kwargs) as bar:
        for item in items:
            yield item
            bar.update()
