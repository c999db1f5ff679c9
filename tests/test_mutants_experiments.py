"""From a mutation audit of the experiments (ablation deltas, crossing trackers, the speed-up
search): each rule checked on hand-made numbers and stand-ins for training."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from test_experiment_stats import first_crossing_by_hand
from test_experiments import _run
from test_mutants_training import pooled_running_error

from alexnet.config import resolve
from alexnet.experiments import ablate as ab
from alexnet.experiments import crossing, speedup, stats

# ------------------------------------------------------------------------------ ablate


def test_a_delta_is_the_variant_minus_the_paper_net_with_welchs_interval():
    """The delta is variant minus paper net in points (positive: the paper's choice helped),
    with the Welch (unpaired) t interval; the row keeps the per-seed errors in seed order."""
    def runs(top1: list[float]) -> list[dict]:
        return [{"top1_error": e, "top5_error": e / 2, "steps": 10} for e in top1]

    row = ab.delta_row("no-lrn", "model.lrn=false", runs([0.30, 0.34]), runs([0.28, 0.29]),
                       (1.2, 1.4))
    d = row["delta_top1"]
    assert d["estimate"] == pytest.approx(3.5)
    ci = sps.ttest_ind([30, 34], [28, 29], equal_var=False).confidence_interval(0.95)
    assert (d["low"], d["high"]) == pytest.approx((ci.low, ci.high))
    paired = sps.ttest_rel([30, 34], [28, 29]).confidence_interval(0.95)
    assert (d["low"], d["high"]) != pytest.approx((paired.low, paired.high))
    assert row["top1_errors"] == [0.30, 0.34]


def test_a_step_cap_is_a_reduced_budget_even_at_90_epochs():
    """Any run.max_steps is below the paper's budget: a step cap on the paper's 90 epochs is
    a reduced budget, as is the budget_config of a few steps."""
    capped = resolve("paper", ["run.max_steps=10"])
    assert capped.optim.epochs == 90 and capped.model.width == 1.0
    assert ab.honest_note(capped, 3).startswith("note: a reduced budget")
    few = ab.budget_config(resolve("paper"), 10, None, 1000)
    assert ab.honest_note(few, 3).startswith("note: a reduced budget")


def test_ablate_trains_seed_by_seed_so_a_stopped_ablate_holds_whole_seeds(monkeypatch):
    """Every net with the first seed, then every net with the second (docs/experiments.md)."""
    trained = []

    def record(name, config, log=print):
        trained.append(name)
        return {"variant": name}

    monkeypatch.setattr(ab, "train_variant", record)
    base = resolve("paper", ["run.out=/nonexistent/ablate"])
    runs = {"paper": ab.seed_configs(base, 2),
            "no-lrn": ab.seed_configs(resolve("paper", ["model.lrn=false"]), 2)}
    results = ab.train_all(runs, log=lambda *_: None)
    assert trained == ["paper seed 0", "no-lrn seed 0", "paper seed 1", "no-lrn seed 1"]
    assert results["paper"] == [{"variant": "paper seed 0"}, {"variant": "paper seed 1"}]


# ------------------------------------------------------------------------------- stats


def test_one_seed_in_an_arm_gives_no_interval():
    """Welch's interval needs two values in each arm; with one the verdict says so."""
    assert stats.verdict(stats.welch([1.0], [2.0, 3.0])).startswith("no interval")


# ---------------------------------------------------------------------------- crossing


def test_a_window_exactly_at_the_threshold_has_crossed_it():
    """The crossing is the first full window at OR below the threshold: 2 of 8 is 25%."""
    tracker = crossing.Tracker(2, (0.25,))
    tracker.add(1, 4)
    tracker.add(1, 4)
    assert tracker.error == pooled_running_error([1, 1], [4, 4], 2)[1] == 0.25
    assert tracker.crossed == {0.25: crossing.centre(2, 2)} == {0.25: 0.5}


def test_no_crossing_is_read_before_the_window_is_full():
    """A window of 3 steps is read from the third step on: two error-free steps cross
    nothing yet; the third crosses, placed at the window's centre."""
    tracker = crossing.Tracker(3, (0.5,))
    tracker.add(0, 10)
    tracker.add(0, 10)
    assert tracker.crossed == {} and math.isnan(tracker.error)
    tracker.add(0, 10)
    assert tracker.crossed == {0.5: 1.0}


# ----------------------------------------------------------------------------- speed-up


def test_a_measurement_run_is_stopped_only_once_every_threshold_is_crossed():
    """`measure`'s stop is False until the last threshold of the family is crossed: the
    curve crosses 25% at step 5 and 15% at step 9, so it stops at step 9, not 5."""
    wrong = [90, 60, 40, 30, 25, 24, 20, 18, 15, 10, 5, 5]  # of 100, window 1
    assert first_crossing_by_hand(wrong, [100] * 12, 1, 0.25) == 4.0  # step 5's window
    assert first_crossing_by_hand(wrong, [100] * 12, 1, 0.15) == 8.0  # step 9's
    stops = []

    def train(lr, seed, thresholds, stop):
        tracker = crossing.Tracker(1, thresholds)
        for w in wrong:
            tracker.add(w, 100)
            stops.append(stop(tracker))
        return {"seed": seed}

    assert speedup.measure(train, 0.1, [7], (0.25, 0.15)) == [{"seed": 7}]
    assert stops[:8] == [False] * 8 and stops[8] is True


def test_a_units_mean_and_sd_are_over_the_seeds_that_reached_the_threshold():
    """A seed that never reached it is listed as None and left out of the mean and sd (the
    stand-in `unreached` time goes into the ratio only)."""
    def run(updates: float | None) -> dict:
        return {"crossings": {"0.1": updates}, "batch_size": 10, "images": 100}

    relu = [run(10.0), run(12.0), run(11.0)]
    tanh = [run(40.0), run(45.0), run(None)]
    row = speedup.compare(relu, tanh, 0.1, unreached=6.0)
    assert row["tanh"]["epochs"] == [4.0, 4.5, None] and row["tanh"]["reached"] == 2
    assert row["tanh"]["mean"] == pytest.approx(4.25)
    assert row["tanh"]["sd"] == pytest.approx(np.std([4.0, 4.5], ddof=1))


def test_a_tie_in_final_error_goes_to_the_smaller_rate():
    """No run reached the threshold and both end at 30% error: the smaller rate is chosen."""
    runs = [_run(0.1, [0.5, 0.3]), _run(0.01, [0.6, 0.3])]
    assert all(r["crossings"]["0.25"] is None for r in runs)
    assert speedup.select_best(runs, 0.25)["lr"] == 0.01
