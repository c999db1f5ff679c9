"""Uncertainty over seeds: mean and spread, and Welch t intervals for a difference or a ratio.

An experiment repeated with n seeds gives n values per arm; the seeds are independent draws,
so the mean's uncertainty is a t interval. Two arms (ReLU and tanh; a variant and the paper
net) are compared by Welch's unequal-variance t interval:
- a difference of means (ablation deltas), on the values themselves;
- a ratio of times (steps to a threshold), on their logarithms: the ratio of geometric means
  exp(mean log a - mean log b) with the interval exp(difference +- t * se). Times are
  positive and their spread grows with their size, so the log scale is the natural one.
An interval needs at least two values in each arm. When neither arm varies (identical runs,
or a deterministic CPU repeating itself) the interval is the single point of the estimate.
A delta is "distinguishable from zero" when its interval excludes 0 (a ratio: excludes 1),
the usual two-sided test at 1 - confidence; a single point other than 0 is no evidence either
way (seeds that all give one error: errors coarsened by few validation images), and its
verdict says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate and its two-sided interval at `confidence` (low/high NaN: not enough data)."""

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def known(self) -> bool:
        """True when the interval could be computed (two or more values in each arm)."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def excludes(self, value: float) -> bool:
        """True when `value` lies outside [low, high] (False when the interval is unknown)."""
        return self.known and not self.low <= value <= self.high

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "confidence": self.confidence}


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with n - 1); the deviation is NaN for one value."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean(a) - mean(b) with Welch's t interval (Welch-Satterthwaite degrees of freedom)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    estimate = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    if x.size < 2 or y.size < 2:
        return Interval(estimate, math.nan, math.nan, confidence)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1)) if se else 1.0
    return _t_interval(estimate, se, df, confidence)


def _t_interval(estimate: float, se: float, df: float, confidence: float) -> Interval:
    """estimate +- t(df) * se; the single point when there is no spread (se 0)."""
    from scipy.stats import t as student_t

    if se == 0.0:
        return Interval(estimate, estimate, estimate, confidence)
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
    return Interval(estimate, estimate - half, estimate + half, confidence)


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean(a - b) over matched seeds (a[i] and b[i] share seed i) with its t interval.

    Tighter than Welch's when each seed's runs share what the seed decides (initial weights,
    batch order), as two stores of the same images do.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired: {x.size} values against {y.size}; one per seed in each")
    d = x - y
    estimate = float(d.mean()) if d.size else math.nan
    if d.size < 2:
        return Interval(estimate, math.nan, math.nan, confidence)
    return _t_interval(estimate, float(d.std(ddof=1)) / math.sqrt(d.size), d.size - 1,
                       confidence)


def ratio(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Ratio of geometric means a / b with the Welch t interval of the log difference."""
    if any(v <= 0 for v in list(a) + list(b)):
        raise ValueError("ratio: times must be positive")
    d = welch(np.log(a), np.log(b), confidence)
    return Interval(math.exp(d.estimate), math.exp(d.low), math.exp(d.high), confidence)


def verdict(interval: Interval, null: float = 0.0) -> str:
    """One sentence: whether the interval excludes `null` (0 for a delta, 1 for a ratio)."""
    pct = f"{100 * interval.confidence:g}%"
    if not interval.known:
        return "no interval (needs at least two seeds in each arm)"
    if interval.low == interval.high != null:
        return ("no spread over the seeds (every seed gave each arm the same value: coarse "
                "errors of few validation images?), so nothing to judge the difference by; "
                "use more validation images or seeds")
    if interval.excludes(null):
        return f"distinguishable from {null:g} (its {pct} interval excludes {null:g})"
    return f"not distinguishable from {null:g} (its {pct} interval contains {null:g})"
