"""Reported numbers that a mutation audit of alexnet.figures and alexnet.experiments found
unchecked; each test recomputes them independently (NumPy or by hand, or the paper's values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alexnet.experiments import relu_tanh as rt
from alexnet.experiments import stats


def test_a_ratio_of_times_refuses_a_zero_time():
    """Times to a threshold are positive; a zero would make log(0) = -inf and a meaningless
    ratio and interval, so `ratio` refuses it rather than report one."""
    with pytest.raises(ValueError, match="positive"):
        stats.ratio([0.0, 2.0], [1.0, 1.5])
    with pytest.raises(ValueError, match="positive"):
        stats.ratio([1.0, 2.0], [1.0, 0.0])


def test_the_output_layer_has_gain_one_and_the_conv_layers_their_units_gain():
    """The docstring's init: N(0, gain^2 / fan_in) with sqrt(2) for ReLU and 5/3 for tanh in
    conv1-conv3, but gain 1 for the output layer fc4 (fan-in 64 * 4 * 4 = 1024 at 32x32)."""
    for activation, gain in (("relu", math.sqrt(2)), ("tanh", 5 / 3)):
        torch.manual_seed(0)
        net = rt.FourLayerNet(10, 32, activation)
        fc4 = net.fc4.weight.detach().numpy()
        assert fc4.shape == (10, 1024)
        assert fc4.std() == pytest.approx(1 / math.sqrt(1024), rel=0.05)
        conv1 = net.conv[0].weight.detach().numpy()  # fan-in 3 * 5 * 5
        assert conv1.std() == pytest.approx(gain / math.sqrt(75), rel=0.1)


def test_the_four_layer_net_pools_max_then_average_then_average():
    """layers-18pct's shape (module docstring): 3x3 stride-2 max pooling after conv1, average
    pooling after conv2 and conv3, each with cuda-convnet's ceil rounding."""
    net = rt.FourLayerNet(10, 32, "relu")
    pools = [m for m in net.conv if isinstance(m, torch.nn.MaxPool2d | torch.nn.AvgPool2d)]
    assert [type(m) for m in pools] == [torch.nn.MaxPool2d, torch.nn.AvgPool2d,
                                        torch.nn.AvgPool2d]
    assert all(m.kernel_size in (3, (3, 3)) and m.stride in (2, (2, 2)) and m.ceil_mode
               for m in pools)


@pytest.fixture
def still(monkeypatch):
    """Training without updates on one thread: these tests read what the loop feeds and
    reports, not what it learns, and torch's first optimizer step costs seconds."""
    class NoSGD:
        def __init__(self, *args, **kwargs):
            pass

        def zero_grad(self, set_to_none=True):
            pass

        def step(self):
            pass

    monkeypatch.setattr(torch.optim, "SGD", NoSGD)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_epoch_is_a_fresh_permutation_of_the_training_images(monkeypatch, still):
    """"the data are reshuffled (seeded) every epoch": each epoch sees every image once, and
    the epochs' orders differ. Image i is the constant i, so the net's inputs name the images
    it was fed (mean 0, divisor 1)."""
    fed: list[list[int]] = []

    class Spy(rt.FourLayerNet):
        def forward(self, x):
            fed.append(x[:, 0, 0, 0].round().long().tolist())
            return super().forward(x)

    monkeypatch.setattr(rt, "FourLayerNet", Spy)
    n, batch, epochs = 12, 4, 4
    images = np.repeat(np.arange(n, dtype=np.uint8), 8 * 8 * 3).reshape(n, 8, 8, 3)
    rt.train_run(images, np.arange(n) % 2, activation="relu", lr=0.0, steps=epochs * n // batch,
                 mean=torch.zeros(3, 8, 8), divisor=1.0, num_classes=2, seed=3,
                 batch_size=batch, window=2)
    orders = [sum(fed[e * 3:(e + 1) * 3], []) for e in range(epochs)]
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert len({tuple(o) for o in orders}) == epochs


def test_a_diverged_run_reports_a_final_error_of_one(monkeypatch, still):
    """A run whose loss becomes NaN stops, "diverged", with final error 1 (the docstring), so
    the lr search ranks it below every run that did not diverge. The loss is made NaN at the
    fourth step, after a full window of finite steps (running error below 1)."""
    calls = []
    real = torch.nn.functional.cross_entropy

    def loss(logits, y):
        calls.append(1)
        out = real(logits, y)
        return out * float("nan") if len(calls) == 4 else out

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", loss)
    images = np.zeros((8, 8, 8, 3), dtype=np.uint8)
    run = rt.train_run(images, np.zeros(8, dtype=np.int64), activation="relu", lr=0.0,
                       steps=10, mean=torch.zeros(3, 8, 8), divisor=1.0, num_classes=2,
                       batch_size=4, window=2)
    assert run["diverged"] and run["ended"] == "diverged" and run["steps"] == 3
    assert run["final_error"] == 1.0


def fake_train_run(calls: list):
    """A stand-in for `rt.train_run`: every run falls by one error per step from 10 of 10
    (tanh and the higher rate twice as slowly), logged through a real `crossing.Tracker`."""
    from alexnet.experiments import crossing

    def train_run(images, labels, *, activation, lr, steps, seed, thresholds, stop, window,
                  batch_size, on_step, **_):
        calls.append((activation, lr, seed))
        slow = (2 if activation == "tanh" else 1) * (2 if lr > 0.05 else 1)
        tracker = crossing.Tracker(window, thresholds)
        for t in range(steps):
            tracker.add(max(10 - t // slow, 0), 10)
            on_step()
            if stop(tracker):
                break
        return {"activation": activation, "lr": lr, "seed": seed, "steps": tracker.steps,
                "images": len(images), "batch_size": batch_size, "window": window,
                "crossings": {f"{t:g}": tracker.crossed.get(t) for t in tracker.thresholds},
                "final_error": tracker.error, "diverged": False, "ended": "budget",
                "wrong": tracker.wrong, "seen": tracker.seen}

    return train_run


def test_the_experiments_record_reads_thresholds_top_down_and_chance_as_one_minus_1_over_k(
        monkeypatch):
    """relu_vs_tanh.json: the family of thresholds (the --thresholds and the selection one)
    from the highest error down, one row each in that order; chance error 1 - 1/classes
    (0.9 for ten classes); the budget in epochs is steps x batch / images."""
    calls: list = []
    monkeypatch.setattr(rt, "train_run", fake_train_run(calls))
    images = np.zeros((40, 4, 4, 3), dtype=np.uint8)
    st = {"mean_image": np.zeros((4, 4, 3)).tolist(), "rgb_cov": np.eye(3).tolist()}
    result = rt.run_experiment(images, np.zeros(40, dtype=np.int64), stats=st, num_classes=10,
                               lrs=[0.01, 0.1], steps=30, thresholds=[0.1, 0.5],
                               select_threshold=0.3, seeds=2, seed=0, window=2, batch_size=8,
                               log=lambda _: None, progress=False)
    assert result["thresholds"] == [0.5, 0.3, 0.1]
    assert [row["threshold"] for row in result["rows"]] == [0.5, 0.3, 0.1]
    assert result["chance_error"] == pytest.approx(0.9)
    assert result["budget_epochs"] == pytest.approx(30 * 8 / 40)
    assert result["best_lr"] == {"relu": 0.01, "tanh": 0.01}
    # ReLU's step t (1-based) gets 11 - t wrong of 10, so the window ending at t has
    # (23 - 2t) / 20: at or below 50% first at t = 7, centred 1.5 steps earlier
    assert result["rows"][0]["relu"]["epochs"] == [pytest.approx((7 - 1.5) * 8 / 40)] * 2


def test_fashion_mnist_rates_are_chosen_at_15_percent():
    """docs/experiments.md: on Fashion-MNIST (an easier set) the rates are chosen at 15%, on
    CIFAR-10 at the paper's 25%; any other store gets 25%."""
    fashion = [{"wnid": n, "name": n} for n in rt.FASHION_MNIST_NAMES]
    assert rt.default_threshold(fashion)[0] == 0.15
    cifar = [{"wnid": n, "name": n} for n in rt.CIFAR10_NAMES]
    assert rt.default_threshold(cifar)[0] == 0.25
    assert rt.default_threshold([{"wnid": "a", "name": "a"}])[0] == 0.25


def test_the_default_family_of_thresholds_and_the_fewest_steps_allowed():
    """docs/experiments.md: the ratio is read at 25%, 15%, 10% and 5% by default; a run needs
    at least one full window of steps, so --steps equal to --window is allowed."""
    import argparse

    parser = argparse.ArgumentParser()
    rt.add_arguments(parser)
    args = parser.parse_args(["--data", "x"])
    assert args.thresholds == [0.25, 0.15, 0.10, 0.05]
    rt.check_options(20, 20, 1, [0.1])  # no error
    with pytest.raises(Exception, match="--steps 19"):
        rt.check_options(19, 20, 1, [0.1])


def test_each_variant_is_tabled_beside_the_papers_own_figure_for_it():
    """The paper's ImageNet deltas (top-1, top-5 points): two columns 1.7 and 1.2 (section
    3.2), LRN 1.4 and 1.2 (3.3), overlapping pooling 0.4 and 0.3 (3.4), PCA colour "over 1%"
    top-1 only (4.1), which the note and sentence say; tanh and dropout have no ImageNet
    figure."""
    from alexnet.experiments import ablate as ab

    def runs(name: str) -> list[dict]:
        return [{"variant": f"{name} seed {k}", "top1_error": 0.4 + 0.01 * k,
                 "top5_error": 0.2 + 0.01 * k, "steps": 5} for k in range(2)]

    variants = ab.choose_variants(None)
    rows = ab.tabulate({name: runs(name) for name in ["paper"] + [v.name for v in variants]},
                       variants)
    paper_says = {"no-lrn": (1.4, 1.2), "no-overlap": (0.4, 0.3), "one-column": (1.7, 1.2),
                  "no-pca": (1.0, None), "tanh": (None, None), "no-dropout": (None, None)}
    assert {r["variant"]: (r["paper_delta_top1"], r["paper_delta_top5"]) for r in rows[1:]} \
        == paper_says
    # PCA's figure is top-1 only, "over 1%": its note and sentence say so
    notes = {r["variant"]: r["paper_note"] for r in rows[1:]}
    assert "over 1%" in notes["no-pca"]
    assert notes["no-lrn"] == notes["no-overlap"] == notes["one-column"] == ""
    assert "Paper: +1.0 top-1, n/a top-5 (top-1 only, 'over 1%')." in ab.sentence(rows[-1])


# ------------------------------------------------------------------------------- figures


def test_figure4_left_wraps_onto_as_many_rows_as_the_images_need():
    """Four images per row: five images take two rows, so the PNG is 4 cells wide and two
    cells (2.0 x 3.2 inches at 100 dpi) high; three take one row of three."""
    from alexnet.figures.top5 import figure_size

    assert figure_size(5) == (4 * 200, 2 * 320)
    assert figure_size(8) == (4 * 200, 2 * 320)
    assert figure_size(9) == (4 * 200, 3 * 320)
    assert figure_size(3) == (3 * 200, 320)


def test_the_kernel_figure_is_800_wide_with_each_panel_in_proportion_plus_50_for_its_title(
        tmp_path):
    """fig3_kernels.png: 800 pixels wide; each panel's height is its grid's scaled to 800
    wide, plus 50 pixels for its title. One panel of 16 11x11 kernels: a 738 x 48 grid
    (16 * (44 + 2) + 2 by 46 + 2), so 800 x (52 + 50). The per-kernel colour fractions it
    records are the figure's numbers, to four decimals."""
    from PIL import Image

    from alexnet.figures.kernels import write_kernel_figures

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 11))
    info = write_kernel_figures(model, tmp_path)
    assert info["panels"][0]["size"] == [738, 48]
    assert info["figure_size"] == [800, round(48 / 738 * 800) + 50] == [800, 102]
    with Image.open(info["figure"]) as png:
        assert png.size == (800, 102)
    # figures.json lists each kernel's colour fraction to 1e-4: 1 - (energy on the grey axis
    # R = G = B) / (energy), of the kernel less its mean, computed here pixel by pixel
    k = model[0].weight.detach().double().numpy()
    pixels = (k - k.mean(axis=(1, 2, 3), keepdims=True)).transpose(0, 2, 3, 1).reshape(16, -1, 3)
    on_grey = ((pixels @ (np.ones(3) / np.sqrt(3))) ** 2).sum(1)
    want = 1 - on_grey / (pixels ** 2).sum((1, 2))
    np.testing.assert_allclose(info["panels"][0]["colour_fraction"], want, atol=1e-4)


# -------------------------------------------------------------------------------- ablate


def test_a_step_budget_spans_epochs_of_the_capped_length():
    """With run.steps_per_epoch capping an epoch at 2 batches, 10 budget steps span
    ceil(10 / 2) = 5 epochs, not the ceil(10 / 7) = 2 that 1,000 images in batches of 128
    would give without the cap."""
    from alexnet.config import resolve
    from alexnet.experiments import ablate as ab

    capped = resolve("paper", ["run.steps_per_epoch=2"])
    assert capped.optim.batch_size == 128
    assert ab.budget_config(capped, 10, None, train_images=1000).optim.epochs == 5
    assert ab.budget_config(resolve("paper"), 10, None, train_images=1000).optim.epochs == 2


def test_the_note_calls_the_papers_90_epochs_its_full_budget():
    """Section 5 trains "roughly 90 cycles": 90 epochs at full width and crop 224 with no step
    cap is the paper's budget, one epoch less is a reduced one."""
    from alexnet.config import resolve
    from alexnet.experiments import ablate as ab

    assert ab.honest_note(resolve("paper", ["optim.epochs=90"]), 3).startswith(
        "note: the paper's full budget")
    assert ab.honest_note(resolve("paper", ["optim.epochs=89"]), 3).startswith(
        "note: a reduced budget")


def test_the_setup_counts_the_validation_images_actually_used(tmp_path):
    """run.val_limit validates on the first N images only: the setup line reports that N
    (here 3 of a 5-image val split), not the split's size."""
    from alexnet.config import resolve
    from alexnet.data.store import write_store
    from alexnet.experiments import ablate as ab

    classes = [{"wnid": "a", "name": "a"}, {"wnid": "b", "name": "b"}]
    images = np.zeros((5, 232, 232, 3), dtype=np.uint8)
    train = write_store(tmp_path / "train", images[:4], [0, 1, 0, 1], classes)
    write_store(tmp_path / "val", images, [0, 1, 0, 1, 0], classes, stats=train.stats)
    flags = {"data.store": str(tmp_path)}
    assert ab.check_data(resolve("paper", ["run.val_limit=3"], flags)).val_images == 3
    assert ab.check_data(resolve("paper", [], flags)).val_images == 5


# ------------------------------------------------------------------------ figure 4 again


def test_a_training_image_identical_to_the_query_is_at_about_zero_never_nan():
    """||a||^2 - 2 a.b + ||b||^2 cancels to a tiny number, often negative, for b = a in float64
    when the vectors are large (fc7 activations can be); the distance must be about 0 (the
    rounding of that formula), the image its own nearest neighbour, never NaN."""
    from alexnet.figures.neighbours import nearest_neighbours

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(50, 64)) * 100 + 1000
    dist, idx = nearest_neighbours(rows, [rows[:20], rows[20:]], k=2)
    assert not np.isnan(dist.numpy()).any()
    assert (dist.numpy()[:, 0] < 1e-3).all()  # against neighbours about 1,000 apart
    assert idx[:, 0].tolist() == list(range(50))
    brute = np.sqrt(((rows[:, None] - rows[None]) ** 2).sum(-1))
    np.fill_diagonal(brute, np.inf)
    np.testing.assert_allclose(dist.numpy()[:, 1], brute.min(1), rtol=1e-6)


def test_figure4_left_states_the_crop_the_net_reads():
    """The protocol line above figure 4 left names the patch the probabilities came from:
    a net trained on 192x192 crops is read at its own 192x192 centre, not the paper's 224."""
    from alexnet.figures import _top5_protocol

    assert "centre 192x192 patch" in _top5_protocol(1, 192)
    assert "10 192x192 patches" in _top5_protocol(10, 192)
    assert "centre 224x224 patch" in _top5_protocol(1, 224)
