"""Figure 1's comparison with its uncertainty: each net's best learning rate, several seeds,
and the tanh/ReLU ratio of the steps each needs to reach a family of training errors.

The plan (docs/experiments.md):
1. Learning-rate search, per unit, on the search seed: one run per rate of the grid, ranked
   by the updates its running error needs to reach the selection threshold (fewest wins;
   no run reaching it: lowest final running error; ties: the smaller rate). A run stops as
   soon as it has crossed (its rank is known) or has run as long as the best so far needed
   without crossing (it cannot win): the search costs little more than its winners. A best
   rate at either end of the grid is flagged: the grid may not hold the optimum.
2. Measurement: each unit at its chosen rate with `seeds` fresh seeds (not the search seed,
   so that the choice does not flatter the measurement), each run up to the step budget or
   until it has crossed every threshold of the family.
3. At each threshold, each unit's mean and spread of epochs to it, and the ratio tanh/ReLU
   of geometric means with its Welch t interval on log epochs (alexnet.experiments.stats).
   Where some tanh seeds never reach a threshold within the budget, their time is at least
   the earliest crossing a run of the budget's steps could still have had (half a window
   before its end, crossing.earliest_unreached): the ratio computed with that time in their
   place is a lower bound (and where ReLU seeds fail, an upper bound); where seeds of both
   units fail, no ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from alexnet.errors import UserError
from alexnet.experiments import crossing, stats

ACTIVATIONS = ("relu", "tanh")


def select_best(runs: Sequence[dict], threshold: float) -> dict:
    """The run that reaches `threshold` in the fewest updates; else the lowest final error.

    Runs that reach it always beat runs that do not; ties go to the smaller rate.
    """
    if not runs:
        raise UserError("--lrs: give at least one learning rate")
    key = f"{threshold:g}"
    reached = [r for r in runs if r["crossings"].get(key) is not None]
    if reached:
        return min(reached, key=lambda r: (r["crossings"][key], r["lr"]))
    return min(runs, key=lambda r: (_nan_last(r["final_error"]), r["lr"]))


def _nan_last(value: float | None) -> float:
    return math.inf if value is None or math.isnan(value) else value


def search(train: Callable[..., dict], lrs: Sequence[float], threshold: float, window: int,
           seed: int) -> tuple[dict, list[dict], str]:
    """(best run, every run, where the best lies: "inside", "lowest", "highest", "single").

    `train(lr=, seed=, thresholds=, stop=)` trains one run; runs go in increasing rate.
    """
    runs: list[dict] = []
    best_steps: list[int] = []  # steps the best crossing so far took (its window's end)

    def stop(tracker: crossing.Tracker) -> bool:
        if threshold in tracker.crossed:
            return True
        return bool(best_steps) and tracker.steps >= best_steps[0]

    for lr in sorted(lrs):
        run = train(lr=lr, seed=seed, thresholds=(threshold,), stop=stop)
        runs.append(run)
        reach = run["crossings"][f"{threshold:g}"]
        if reach is not None:
            end = math.ceil(reach + (window + 1) / 2)
            best_steps[:] = [min(best_steps[0], end) if best_steps else end]
    best = select_best(runs, threshold)
    grid = sorted(lrs)
    edge = "single" if len(grid) == 1 else "lowest" if best["lr"] == grid[0] else \
        "highest" if best["lr"] == grid[-1] else "inside"
    return best, runs, edge


def measure(train: Callable[..., dict], lr: float, seeds: Sequence[int],
            thresholds: Sequence[float]) -> list[dict]:
    """One run per seed at `lr`, each stopping once it has crossed every threshold."""
    def stop(tracker: crossing.Tracker) -> bool:
        return len(tracker.crossed) == len(thresholds)

    return [train(lr=lr, seed=s, thresholds=tuple(thresholds), stop=stop) for s in seeds]


def epochs_to(run: dict, threshold: float) -> float | None:
    """Epochs (updates x batch / images) until the run's running error reached `threshold`."""
    updates = run["crossings"].get(f"{threshold:g}")
    return None if updates is None else updates * run["batch_size"] / run["images"]


def compare(relu: Sequence[dict], tanh: Sequence[dict], threshold: float,
            unreached: float, confidence: float = stats.CONFIDENCE) -> dict:
    """Both units' epochs to `threshold` over seeds and the ratio tanh/ReLU with its interval.

    `unreached` (epochs) stands in for seeds that did not reach the threshold, which turns
    the ratio into a bound ("kind": "ratio", "lower bound", "upper bound" or "none"): the
    least time such a seed can have needed (crossing.earliest_unreached), so that the bound
    holds.
    """
    row: dict = {"threshold": threshold}
    times = {}
    for name, runs in (("relu", relu), ("tanh", tanh)):
        reached = [e for e in (epochs_to(r, threshold) for r in runs) if e is not None]
        mean, sd = stats.mean_spread(reached)
        row[name] = {"epochs": [epochs_to(r, threshold) for r in runs], "reached": len(reached),
                     "seeds": len(runs), "mean": mean, "sd": sd}
        times[name] = [unreached if e is None else e for e in row[name]["epochs"]]
    full = {n: row[n]["reached"] == row[n]["seeds"] for n in ACTIVATIONS}
    if full["relu"] and full["tanh"]:
        kind = "ratio"
    elif full["relu"] and row["tanh"]["reached"] < row["tanh"]["seeds"]:
        kind = "lower bound"
    elif full["tanh"] and row["relu"]["reached"] < row["relu"]["seeds"]:
        kind = "upper bound"
    else:
        kind = "none"
    row["kind"] = kind
    row["ratio"] = None if kind == "none" or not times["relu"] else \
        stats.ratio(times["tanh"], times["relu"], confidence).as_dict()
    return row


def describe(row: dict) -> str:
    """One line: each unit's epochs (mean +- sd, reached/seeds) and the ratio with interval."""
    def unit(name: str) -> str:
        u = row[name]
        if not u["reached"]:
            return f"{name} not reached (0/{u['seeds']})"
        sd = "" if math.isnan(u["sd"]) else f" +- {u['sd']:.3f}"
        return f"{name} {u['mean']:.3f}{sd} ({u['reached']}/{u['seeds']})"

    text = f"{row['threshold']:>5.0%}: {unit('relu')}, {unit('tanh')} epochs;  "
    r = row["ratio"]
    if row["kind"] == "none" or r is None:
        return text + "ratio: none (ReLU and tanh both miss it on some seed)"
    pct = f"{100 * r['confidence']:g}%"
    interval = f"{pct} interval {r['low']:.2f}-{r['high']:.2f}" if not math.isnan(r["low"]) \
        else "no interval (one seed)"
    sign = {"ratio": "", "lower bound": "> ", "upper bound": "< "}[row["kind"]]
    tail = "" if row["kind"] == "ratio" else \
        f" ({row['kind']}: unreached seeds at the earliest crossing they could have had)"
    return text + f"tanh/ReLU {sign}{r['estimate']:.2f} ({interval}){tail}"
