"""Progress with an ETA for the experiments: a tqdm bar on a terminal, plain lines elsewhere.

A redrawn bar written to a log file or a pipe leaves one carriage-return line per update, so
when the stream is not a terminal a plain line ("desc: 120/500 step (24%), ETA 2m03s") is
written every `interval` seconds instead. Kept minimal and local to the experiments.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

PLAIN_INTERVAL = 30.0  # seconds between plain lines when the output is not a terminal


def format_duration(seconds: float) -> str:
    """75 -> "1m15s", 3725 -> "1h02m05s"; "?" when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else \
        f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts `total` units; `update(n)` adds n, `note(**values)` sets values shown after it."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", enabled: bool = True,
                 stream: TextIO | None = None, interval: float = PLAIN_INTERVAL) -> None:
        self.total, self.desc, self.unit, self.enabled = int(total), desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.n, self.values = interval, 0, {}
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream,
                            dynamic_ncols=True, leave=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last >= self.interval:
            self.last = time.perf_counter()
            print(self.line(), file=self.stream, flush=True)

    def note(self, **values: Any) -> None:
        if not self.enabled:
            return
        self.values.update(values)
        if self.bar is not None:
            self.bar.set_postfix(self.values, refresh=False)

    def line(self) -> str:
        """"desc: n/total unit (p%), ETA t, key value ..." at the mean rate so far."""
        elapsed = time.perf_counter() - self.t0
        eta = elapsed * (self.total - self.n) / self.n if self.n else math.inf
        extra = "".join(f", {k} {v}" for k, v in self.values.items())
        return (f"{self.desc}: {self.n}/{self.total} {self.unit} "
                f"({100 * self.n / max(self.total, 1):.0f}%), ETA {format_duration(eta)}{extra}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.enabled = False
