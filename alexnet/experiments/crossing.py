"""When a training-error curve first reaches a threshold, measured per optimizer step.

Every step logs how many images of its minibatch the net got wrong, counted before the step's
update (the paper's training error: the net as it trains, no separate pass). One minibatch
is too noisy to read a crossing from, so the curve is the running error over the last
`window` steps: at step t (1-based) the errors of steps t - window + 1 .. t over the images
they saw. That window measured the net after t - window .. t - 1 updates, so it is placed
at its centre, t - (window + 1) / 2 updates; the crossing of a threshold is that centre for
the first full window whose error is at or below the threshold. Both nets of a comparison
get the same window, so the lag it would otherwise add cancels instead of shrinking ratios.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

# 20 minibatches of 128 = 2,560 images: the error of a 25% window is known to about +-0.9
# points (binomial), small against the curves' fall, while a window still moves with them.
DEFAULT_WINDOW = 20


def running_error(wrong: Sequence[int], seen: Sequence[int], window: int) -> np.ndarray:
    """Error over the `window` steps ending at each step; NaN until the first window is full."""
    if window < 1:
        raise ValueError("window: at least one step")
    w = np.concatenate([[0], np.cumsum(np.asarray(wrong, dtype=np.int64))])
    s = np.concatenate([[0], np.cumsum(np.asarray(seen, dtype=np.int64))])
    out = np.full(len(wrong), np.nan)
    if len(wrong) >= window:
        out[window - 1:] = (w[window:] - w[:-window]) / (s[window:] - s[:-window])
    return out


def centre(step: int, window: int) -> float:
    """Updates done at the centre of the window ending at 1-based `step`."""
    return step - (window + 1) / 2


def earliest_unreached(steps: int, window: int) -> float:
    """The fewest updates a crossing can read for a run of `steps` steps that has not crossed:
    its next window, ending at step steps + 1, would be placed at its centre, (window - 1) / 2
    updates before the run's last step. A seed that missed a threshold took at least this."""
    return centre(steps + 1, window)


def crossing(wrong: Sequence[int], seen: Sequence[int], window: int,
             threshold: float) -> float | None:
    """Updates done when the running error first reaches `threshold` (None if it never does)."""
    err = running_error(wrong, seen, window)
    hits = np.flatnonzero(err <= threshold)
    return centre(int(hits[0]) + 1, window) if hits.size else None


class Tracker:
    """The same running error and crossings, updated step by step during training.

    Lets a run stop as soon as it has crossed what it needs; the crossings equal
    `crossing()` on the logged counts (tested).
    """

    def __init__(self, window: int, thresholds: Sequence[float]) -> None:
        self.window = window
        self.thresholds = tuple(thresholds)
        self.wrong: list[int] = []
        self.seen: list[int] = []
        self._recent: deque[tuple[int, int]] = deque(maxlen=window)
        self.crossed: dict[float, float] = {}
        self.error = float("nan")  # the running error after the last step

    def add(self, wrong: int, seen: int) -> None:
        """Log one step's errors and images; record any threshold crossed at this step."""
        self.wrong.append(int(wrong))
        self.seen.append(int(seen))
        self._recent.append((int(wrong), int(seen)))
        if len(self._recent) < self.window:
            return
        self.error = sum(w for w, _ in self._recent) / sum(s for _, s in self._recent)
        for t in self.thresholds:
            if t not in self.crossed and self.error <= t:
                self.crossed[t] = centre(len(self.wrong), self.window)

    @property
    def steps(self) -> int:
        return len(self.wrong)
