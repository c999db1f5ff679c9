"""The uncertainty behind figure 1 and the ablations: step-level threshold crossings against
an independent reading of a logged curve, Welch intervals against scipy's t-test, and the
coverage of the ratio interval on synthetic curves with a known speed-up."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from alexnet.experiments import crossing, speedup, stats
from alexnet.experiments import relu_tanh as rt


def first_crossing_by_hand(wrong: list[int], seen: list[int], window: int,
                           threshold: float) -> float | None:
    """The documented rule read off the log with plain Python: the first full window at or
    below the threshold, placed at its centre (updates done)."""
    for end in range(window, len(wrong) + 1):
        if sum(wrong[end - window:end]) / sum(seen[end - window:end]) <= threshold:
            return end - (window + 1) / 2
    return None


def test_running_error_is_the_windowed_error_rate():
    wrong, seen = [5, 3, 1, 0, 2], [10, 10, 10, 5, 10]
    err = crossing.running_error(wrong, seen, 2)
    assert math.isnan(err[0])
    assert err[1:] == pytest.approx([8 / 20, 4 / 20, 1 / 15, 2 / 15])
    assert crossing.crossing(wrong, seen, 2, 0.2) == 3 - 1.5  # window of steps 2-3, centre
    assert crossing.crossing(wrong, seen, 2, 0.01) is None


def test_step_level_crossing_of_a_real_run_equals_the_one_read_from_its_log():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 48)
    images = rng.integers(0, 60, (48, 12, 12, 3), dtype=np.uint8)
    images[..., 0] += (labels * 90).astype(np.uint8)[:, None, None]  # learnable: the red level
    thresholds = (0.6, 0.4, 0.2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = rt.train_run(images, labels, activation="relu", lr=0.05, steps=60,
                           mean=torch.full((3, 12, 12), 60.0), divisor=60.0, num_classes=3,
                           seed=2, window=4, thresholds=thresholds, batch_size=8)
    finally:
        torch.set_num_threads(before)
    assert run["steps"] == 60 and len(run["wrong"]) == 60 and sum(run["seen"]) == 60 * 8
    crossed = 0
    for t in thresholds:
        by_hand = first_crossing_by_hand(run["wrong"], run["seen"], 4, t)
        assert run["crossings"][f"{t:g}"] == by_hand
        assert crossing.crossing(run["wrong"], run["seen"], 4, t) == by_hand
        crossed += by_hand is not None
    assert crossed >= 2  # the net learns: the test reads real crossings, not only None


def test_welch_interval_equals_scipys_t_test():
    a, b = [3.1, 2.4, 3.9, 2.8], [1.2, 1.9, 1.4]
    ours = stats.welch(a, b)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high))
    assert ours.estimate == pytest.approx(np.mean(a) - np.mean(b))
    assert ours.excludes(0.0) and "distinguishable from 0" in stats.verdict(ours)
    r = stats.ratio([6.0, 7.0, 5.0], [1.0, 1.1, 0.9])
    logs = sps.ttest_ind(np.log([6.0, 7.0, 5.0]), np.log([1.0, 1.1, 0.9]),
                         equal_var=False).confidence_interval(0.95)
    assert (r.low, r.high) == pytest.approx((math.exp(logs.low), math.exp(logs.high)))
    assert not stats.welch([1.0], [2.0, 3.0]).known  # one seed: no interval


def test_paired_interval_equals_scipys_paired_t_test():
    a, b = [25.7, 21.4, 22.4], [25.8, 22.5, 23.2]  # bench/jpeg_accuracy.py: q75 and raw
    ours = stats.paired(a, b)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high))
    assert ours.estimate == pytest.approx(np.mean(np.subtract(a, b)))
    # matched seeds share their spread: tighter than Welch's interval on the same values
    assert ours.high - ours.low < stats.welch(a, b).high - stats.welch(a, b).low
    assert not stats.paired([1.0], [2.0]).known
    with pytest.raises(ValueError, match="one per seed"):
        stats.paired([1.0, 2.0], [1.0])


def test_identical_arms_are_not_distinguishable_from_zero():
    same = [0.412, 0.398, 0.405]
    d = stats.welch(same, same)
    assert d.estimate == 0.0 and not d.excludes(0.0)
    assert stats.verdict(d).startswith("not distinguishable")
    constant = stats.welch([0.5, 0.5], [0.5, 0.5])  # no spread at all: the point 0
    assert (constant.low, constant.high) == (0.0, 0.0) and not constant.excludes(0.0)


def test_a_difference_without_spread_is_judged_neither_way():
    """Two nets whose seeds each gave one error (75% and 62.5%: 8 validation images) made the
    point interval [12.5, 12.5], read "distinguishable from 0": the strongest verdict from no
    measured spread at all. It now says there is no spread to judge by; a ratio likewise."""
    d = stats.welch([75.0, 75.0], [62.5, 62.5])
    assert (d.estimate, d.low, d.high) == (12.5, 12.5, 12.5)
    assert stats.verdict(d).startswith("no spread over the seeds"), stats.verdict(d)
    assert "use more validation images or seeds" in stats.verdict(d)
    r = stats.ratio([4.0, 4.0], [2.0, 2.0])
    assert stats.verdict(r, 1.0).startswith("no spread over the seeds")
    assert stats.verdict(stats.welch([75.0, 74.0], [62.0, 61.0])).startswith("distinguishable")


def synthetic_run(rng: np.random.Generator, tau: float, steps: int, batch: int = 128,
                  chance: float = 0.9, floor: float = 0.02) -> dict:
    """A run whose true error falls exponentially, chance -> floor with time constant tau;
    each step's errors are a binomial draw from the true error before its update."""
    p = floor + (chance - floor) * np.exp(-np.arange(steps) / tau)
    wrong = rng.binomial(batch, p)
    return {"wrong": wrong.tolist(), "seen": [batch] * steps, "batch_size": batch,
            "images": batch * 100, "steps": steps}


def test_ratio_interval_covers_the_true_speed_up_on_synthetic_curves():
    rng = np.random.default_rng(0)
    speed_up, threshold, window, seeds, trials = 4.0, 0.25, 10, 3, 120
    covered, estimates = 0, []
    for _ in range(trials):
        runs = {}
        for unit, scale in (("relu", 1.0), ("tanh", speed_up)):
            # seed-to-seed spread: each seed's time constant is log-normal around its unit's
            taus = 40.0 * scale * np.exp(0.25 * rng.standard_normal(seeds))
            runs[unit] = []
            for tau in taus:
                run = synthetic_run(rng, tau, steps=int(40 * speed_up * 5))
                run["crossings"] = {f"{threshold:g}": crossing.crossing(
                    run["wrong"], run["seen"], window, threshold)}
                runs[unit].append(run)
        row = speedup.compare(runs["relu"], runs["tanh"], threshold, unreached=1e9)
        assert row["kind"] == "ratio"
        r = row["ratio"]
        covered += r["low"] <= speed_up <= r["high"]
        estimates.append(r["estimate"])
    # a 95% interval: about 114 of 120; 104 is more than three binomial sds below
    assert covered >= 104
    assert np.exp(np.mean(np.log(estimates))) == pytest.approx(speed_up, rel=0.05)


def test_a_unit_missing_the_threshold_on_some_seed_gives_a_bound():
    def run(updates: float | None) -> dict:
        return {"crossings": {"0.1": updates}, "batch_size": 10, "images": 100, "steps": 50}

    relu = [run(10.0), run(12.0), run(11.0)]
    tanh = [run(40.0), run(None), run(45.0)]  # one seed never got there in 5 epochs
    row = speedup.compare(relu, tanh, 0.1, unreached=5.0)
    assert row["kind"] == "lower bound" and row["tanh"]["reached"] == 2
    assert row["ratio"]["estimate"] == pytest.approx(
        math.exp(np.mean(np.log([4.0, 5.0, 4.5])) - np.mean(np.log([1.0, 1.2, 1.1]))))
    assert "> " in speedup.describe(row)
    assert speedup.compare(tanh, tanh, 0.1, unreached=5.0)["kind"] == "none"


def test_an_unreached_seed_stands_at_the_earliest_crossing_its_run_could_still_have(
        monkeypatch):
    """A seed that never reached a threshold was put at the whole budget (`steps` updates),
    but a crossing is placed at its window's centre: a run of `steps` steps that has not
    crossed could still cross at centre(steps + 1) = steps - (window - 1) / 2 updates. Its
    time is known to be at least that, not the budget: the "> x" bound (and the "< x") said
    more than was measured."""
    steps, window, batch, n = 100, 20, 10, 1000
    reach = {"relu": {"0.25": 30.0}, "tanh": {"0.1": 60.0}}  # each unit misses one threshold

    def fake_run(images, labels, *, activation, lr, steps, seed=0, window, thresholds=(),
                 batch_size, **kwargs):
        at = {f"{t:g}": reach[activation].get(f"{t:g}") for t in thresholds}
        crossed = {t: None if u is None else u + seed for t, u in at.items()}
        return {"activation": activation, "lr": lr, "seed": seed, "steps": steps,
                "images": len(images), "batch_size": batch_size, "window": window,
                "crossings": crossed, "final_error": 0.5, "diverged": False, "ended": "budget",
                "wrong": [], "seen": []}

    monkeypatch.setattr(rt, "train_run", fake_run)
    stats_ = {"mean_image": np.zeros((4, 4, 3)), "rgb_cov": np.eye(3)}
    result = rt.run_experiment(np.zeros((n, 4, 4, 1), np.uint8), np.zeros(n, np.int64),
                               stats=stats_, num_classes=2, lrs=[0.1], steps=steps,
                               thresholds=[0.1], select_threshold=0.25, seeds=3,
                               window=window, batch_size=batch, log=lambda *a: None,
                               progress=False)
    rows = {row["threshold"]: row for row in result["rows"]}
    earliest = (steps - (window - 1) / 2) * batch / n  # 90.5 updates, in epochs
    assert earliest == crossing.centre(steps + 1, window) * batch / n
    relu = [(30.0 + s) * batch / n for s in result["seeds"]]
    tanh = [(60.0 + s) * batch / n for s in result["seeds"]]
    assert rows[0.25]["kind"] == "lower bound"
    assert rows[0.25]["ratio"]["estimate"] == pytest.approx(
        math.exp(math.log(earliest) - np.mean(np.log(relu))))
    assert rows[0.1]["kind"] == "upper bound"
    assert rows[0.1]["ratio"]["estimate"] == pytest.approx(
        math.exp(np.mean(np.log(tanh)) - math.log(earliest)))
    assert result["budget_epochs"] == steps * batch / n  # the budget itself is still reported


def t_quantile_closed_form(p: float, df: int) -> float:
    """Student's t quantile where it has a closed form: df 1 (Cauchy) and df 2."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    a = 2 * p - 1  # df 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    return a * math.sqrt(2 / (1 - a * a))


def t_cdf(x: float, df: float, n: int = 4000) -> float:
    """Student's t CDF at x >= 0 by Simpson's rule on the density (any real df)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    h = x / n
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))


def test_intervals_equal_the_textbook_formulas_without_scipy():
    """Welch's interval, the paired one and the ratio's from their formulas by hand: the
    t quantile from its closed forms (df 1, 2) or by integrating the density (Welch's
    non-integer df), the standard errors and Welch-Satterthwaite df written out."""
    a, b = [3.1, 2.4, 3.9, 2.8], [1.2, 1.9, 1.4]

    def var(x):
        m = sum(x) / len(x)
        return sum((v - m) ** 2 for v in x) / (len(x) - 1)

    va, vb = var(a) / len(a), var(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    w = stats.welch(a, b)
    assert w.estimate == pytest.approx(sum(a) / 4 - sum(b) / 3, rel=1e-12)
    assert w.high - w.estimate == pytest.approx(w.estimate - w.low, rel=1e-12)
    assert t_cdf((w.high - w.estimate) / se, df) == pytest.approx(0.975, abs=1e-9)

    for x, y in (([25.7, 21.4], [25.8, 22.5]), ([25.7, 21.4, 22.4], [25.8, 22.5, 23.2])):
        d = [u - v for u, v in zip(x, y, strict=True)]
        se_d = math.sqrt(var(d) / len(d))
        t = t_quantile_closed_form(0.975, len(d) - 1)
        p = stats.paired(x, y)
        assert (p.low, p.high) == pytest.approx((sum(d) / len(d) - t * se_d,
                                                 sum(d) / len(d) + t * se_d), rel=1e-12)
    assert t_quantile_closed_form(0.975, 1) == pytest.approx(12.7062047, rel=1e-8)
    assert t_quantile_closed_form(0.975, 2) == pytest.approx(4.3026527, rel=1e-7)

    # the ratio: Welch on the logs, back through exp. Logs equally spread in both arms, two
    # values each: df = 2 (n - 1) = 2 exactly, where the quantile has its closed form.
    slow, fast = [6.0, 8.0], [1.0, 4 / 3]
    la, lb = [math.log(v) for v in slow], [math.log(v) for v in fast]
    est = (sum(la) - sum(lb)) / 2
    half = t_quantile_closed_form(0.975, 2) * math.sqrt(var(la) / 2 + var(lb) / 2)
    r = stats.ratio(slow, fast)
    assert (r.estimate, r.low, r.high) == pytest.approx(
        (math.exp(est), math.exp(est - half), math.exp(est + half)), rel=1e-9)
    mean, sd = stats.mean_spread([2.0, 4.0, 9.0])
    assert (mean, sd) == pytest.approx((5.0, math.sqrt(13.0)), rel=1e-12)
