"""Bookkeeping that a mutation audit found unchecked: the training loop's partial sums, step
and epoch rows and validation limit; the step-by-step crossing tracker; the seeds' summaries
and the verdict of a ratio; ablate's deltas as tabled; figure 4's top-5 bars, query draw and
neighbour images; figure 3's colour summary; the curves' panels. Each is checked against an
independent computation (NumPy, by hand)."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from alexnet.experiments import crossing, speedup, stats

# ------------------------------------------------------------------- the crossing tracker


def pooled_running_error(wrong: list[int], seen: list[int], window: int) -> list[float]:
    """The documented running error by hand: errors over images of the last `window` steps."""
    return [sum(wrong[t - window:t]) / sum(seen[t - window:t]) if t >= window else math.nan
            for t in range(1, len(wrong) + 1)]


def test_the_tracker_pools_unequal_batches_and_crosses_at_equality():
    """An epoch's last batch is smaller (train_run: ceil(n / batch) steps): the running error
    is the window's errors over its images, not the mean of its batches' rates; a window
    exactly at the threshold has reached it ("at or below"), as `crossing()` reads the log."""
    wrong, seen, window = [6, 5, 1, 3, 1, 3, 0, 1], [8, 8, 2, 8, 8, 2, 8, 8], 2
    thresholds = (0.5, 0.25, 0.125)
    by_hand = pooled_running_error(wrong, seen, window)
    assert by_hand[3] == 0.4 and by_hand[4] == 0.25 and by_hand[7] == 0.0625
    tracker = crossing.Tracker(window, thresholds)
    for t, (w, s) in enumerate(zip(wrong, seen, strict=True)):
        tracker.add(w, s)
        if t + 1 >= window:
            assert tracker.error == pytest.approx(by_hand[t], abs=1e-15)
    first = {th: next(t + 1 for t, e in enumerate(by_hand) if e <= th) - (window + 1) / 2
             for th in thresholds}
    assert first == {0.5: 2.5, 0.25: 3.5, 0.125: 6.5}  # 0.25: the window of steps 4-5 (=)
    assert tracker.crossed == first
    assert {th: crossing.crossing(wrong, seen, window, th) for th in thresholds} == first


def test_the_verdict_of_a_ratio_is_against_one():
    """`verdict(interval, 1)` says whether a ratio's interval excludes 1, not 0."""
    faster = stats.Interval(2.0, 1.5, 3.0)
    unclear = stats.Interval(1.2, 0.8, 1.6)
    assert stats.verdict(faster, 1.0).startswith("distinguishable from 1 ")
    assert stats.verdict(unclear, 1.0).startswith("not distinguishable from 1 ")
    assert stats.verdict(stats.Interval(-0.5, -1.0, 0.2)).startswith("not distinguishable")


# ------------------------------------------------------------------------------ speed-up


def test_each_units_mean_and_spread_are_over_the_seeds_that_reached_it():
    """The ratio puts `unreached` in for a seed that missed; the unit's mean +- sd (what
    `describe` prints beside "reached/seeds") are of the seeds that did reach it."""
    def run(updates: float | None) -> dict:
        return {"crossings": {"0.2": updates}, "batch_size": 10, "images": 100}

    relu = [run(10.0), run(14.0), run(12.0)]
    tanh = [run(40.0), run(None), run(60.0)]
    row = speedup.compare(relu, tanh, 0.2, unreached=9.0)
    assert row["tanh"]["mean"] == pytest.approx(np.mean([4.0, 6.0]))
    assert row["tanh"]["sd"] == pytest.approx(np.std([4.0, 6.0], ddof=1))
    assert row["relu"]["mean"] == pytest.approx(1.2)
    assert "tanh 5.000 +- 1.414 (2/3)" in speedup.describe(row)


def test_measurement_runs_go_on_until_every_threshold_is_crossed():
    """`measure` stops a seed once it has crossed EVERY threshold of the family, not the
    first: each run's crossings are those of its whole error curve."""
    wrong = [9, 8, 6, 5, 4, 3, 2, 1, 1, 0, 0, 0]

    def train(lr, seed, thresholds, stop):
        tracker = crossing.Tracker(2, thresholds)
        for w in wrong:
            tracker.add(w, 10)
            if stop(tracker):
                break
        return {"crossings": {f"{t:g}": tracker.crossed.get(t) for t in thresholds},
                "steps": tracker.steps}

    runs = speedup.measure(train, 0.1, [1, 2], (0.5, 0.2, 0.05))
    want = {f"{t:g}": crossing.crossing(wrong, [10] * len(wrong), 2, t) for t in (0.5, 0.2, 0.05)}
    assert want == {"0.5": 3.5, "0.2": 6.5, "0.05": 8.5}
    for r in runs:
        assert r["crossings"] == want and r["steps"] == 10  # stopped at the last crossing


# ------------------------------------------------------------------- figure 4 left: top 5


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """The matplotlib figures saved while the test runs (their artists, before closing)."""
    import matplotlib.figure

    saved: list = []
    savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return saved


def test_top5_ties_are_listed_in_class_order():
    probs = np.array([[0.1, 0.2, 0.2, 0.2, 0.05, 0.25], [0.3, 0.0, 0.3, 0.1, 0.3, 0.0]])
    from alexnet.figures.top5 import top_classes

    assert top_classes(probs, 4).tolist() == [[5, 1, 2, 3], [0, 2, 4, 3]]


def test_top5_bars_are_the_five_probabilities_top_down_red_for_the_true_label(
        tmp_path, saved_figures):
    """Section 6.1: one bar per top-5 class, most probable on top, its length the
    probability; the correct label's bar is red (when it is in the top 5), the others blue."""
    from matplotlib.colors import to_rgba

    from alexnet.figures.top5 import plot_top5

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3, 8)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ranked = np.argsort(-probs, axis=1)
    labels = [int(ranked[0, 2]), int(ranked[1, 0]), int(ranked[2, 7])]  # 3rd, 1st, not shown
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    plot_top5(images, probs, labels, [f"c{i}" for i in range(8)], tmp_path / "t.png")
    (fig,) = saved_figures
    panels = [ax for ax in fig.axes if not ax.images]
    assert len(panels) == 3
    red, blue = to_rgba("tab:red", 0.5), to_rgba("tab:blue", 0.5)
    for bars, p, label in zip(panels, probs, labels, strict=True):
        assert bars.get_ylim()[0] > bars.get_ylim()[1]  # y grows downwards: bar 0 on top
        drawn = sorted(bars.patches, key=lambda r: r.get_y())
        assert len(drawn) == 5
        np.testing.assert_allclose([r.get_width() for r in drawn], np.sort(p)[::-1][:5])
        want = [red if k == label else blue for k in np.argsort(-p)[:5]]
        np.testing.assert_allclose([r.get_facecolor() for r in drawn], want)


# ------------------------------------------------------------------ figure 4 right: fc7


def test_query_images_are_distinct():
    from alexnet.figures.neighbours import choose_queries

    for n, count, seed in ((10, 10, 0), (30, 16, 1), (7, 12, 2), (1000, 40, 3)):
        drawn = choose_queries(n, count, seed)
        assert len(set(drawn)) == len(drawn) == min(n, count)
        assert drawn == sorted(drawn) and all(0 <= i < n for i in drawn)
    assert choose_queries(10, 10, 5) == list(range(10))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A store whose train and test images differ, and a small net's checkpoint."""
    from alexnet.checkpoint import make_state, save
    from alexnet.data.store import open_split, write_store
    from alexnet.paper import IMAGE_SIZE

    classes = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]
    root = tmp_path_factory.mktemp("mutstore")
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(12, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 2, 2])
    write_store(root / "train", images[:9], labels[:9], classes)
    train = open_split(root, "train")
    write_store(root / "test", images[9:], labels[9:], classes, stats=train.stats)
    ckpt = tmp_path_factory.mktemp("mutrun") / "net.pt"
    save(ckpt, make_state(pytorch_initialised(1, num_classes=3, width=0.0625), classes=classes,
                          stats=train.stats, epoch=1, step=0))
    return root, ckpt


def pytorch_initialised(seed: int, **kwargs) -> nn.Module:
    """AlexNet(**kwargs) with PyTorch's default init in place of the paper's (seeded): its fc7
    vectors lie apart, where the paper's small weights give a tiny net near-equal ones."""
    from alexnet.model import AlexNet

    torch.manual_seed(seed)
    model = AlexNet(**kwargs)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


def test_figure4_right_draws_the_training_images_it_found(tiny_run, tmp_path, monkeypatch):
    """Each row shows the query's own test image, then the TRAINING images whose indices
    (and distances) figures.json records, labelled with their training labels."""
    import alexnet.figures.neighbours as nb
    from alexnet.cli import main
    from alexnet.data.store import open_split

    root, ckpt = tiny_run
    calls = []
    real = nb.plot_neighbours

    def spy(query_images, neighbour_images, path, **kwargs):
        calls.append((query_images, neighbour_images, kwargs))
        return real(query_images, neighbour_images, path, **kwargs)

    monkeypatch.setattr(nb, "plot_neighbours", spy)
    out = tmp_path / "figs"
    assert main(["figures", str(ckpt), "--data", str(root), "--out", str(out), "--images", "1",
                 "--queries", "2", "--device", "cpu"]) == 0
    summary = json.loads((out / "figures.json").read_text())["neighbours"]
    train, test = open_split(root, "train"), open_split(root, "test")
    (queries, neighbours, kwargs), = calls
    assert len(queries) == len(summary["queries"]) == 2
    for shown, i in zip(queries, summary["queries"], strict=True):
        np.testing.assert_array_equal(shown, test.read(np.asarray([i]))[0])
    for row, found, dists, titles in zip(neighbours, summary["neighbours"],
                                         summary["distances"], kwargs["neighbour_titles"],
                                         strict=True):
        assert len(row) == len(found) == 6
        for shown, j in zip(row, found, strict=True):
            np.testing.assert_array_equal(shown, train.read(np.asarray([j]))[0])
        assert titles == [f"class {train.labels[j]} d={d:.3g}" for j, d in
                          zip(found, dists, strict=True)]


# ----------------------------------------------------------------------- figure 3: kernels


def test_each_columns_colour_fraction_mean_is_the_mean_over_its_kernels(tmp_path):
    """figures.json's colour_fraction_mean is the mean of the kernels' fractions (the
    median is recorded apart): here 3 opponent kernels of 12 give 0.25, median 0."""
    from alexnet.figures.kernels import write_kernel_figures
    from alexnet.model import AlexNet

    model = AlexNet(num_classes=3, width=0.25)
    half = model.conv1.weight.shape[0] // 2
    rng = np.random.default_rng(9)
    kernels = np.repeat(rng.normal(size=(2 * half, 1, 11, 11)), 3, axis=1)  # grey
    opponent = rng.normal(size=(3, 3, 11, 11))
    kernels[:3] = opponent - opponent.mean(axis=1, keepdims=True)  # column 1: 3 colour ones
    mixed = rng.normal(size=(half, 3, 11, 11))
    kernels[half:] = mixed  # column 2: random colour
    with torch.no_grad():
        model.conv1.weight.copy_(torch.from_numpy(kernels))
    info = write_kernel_figures(model, tmp_path)

    def fraction(k: np.ndarray) -> float:  # energy off the grey axis, by hand
        pixels = (k - k.mean()).reshape(3, -1).T
        grey = pixels @ (np.ones(3) / math.sqrt(3))
        return 1 - (grey ** 2).sum() / (pixels ** 2).sum()

    one, two = info["panels"]
    assert one["colour_fraction_mean"] == pytest.approx(3 / half, abs=1e-6)
    assert one["colour_fraction_median"] == pytest.approx(0.0, abs=1e-6)
    want = [fraction(k) for k in kernels[half:].astype(np.float32).astype(np.float64)]
    assert two["colour_fraction_mean"] == pytest.approx(np.mean(want), rel=1e-6)
    assert two["colour_fraction_median"] == pytest.approx(np.median(want), rel=1e-6)


# ------------------------------------------------------------------------------- curves


def test_curves_draw_the_logged_numbers(tmp_path, saved_figures):
    """The three panels hold the log's numbers: step and epoch losses; training and
    validation errors in percent, an epoch without a figure (NaN, None) left out; the lr as
    the step rows give it (finer than the epochs)."""
    from alexnet.figures.curves import plot_curves

    rows = [{"epoch": 1, "train_loss": 2.1, "train_error": 0.8, "val_top1_error": 0.7,
             "val_top5_error": 0.3, "lr": 0.01},
            {"epoch": 2, "train_loss": 1.6, "train_error": 0.6, "val_top1_error": math.nan,
             "val_top5_error": None, "lr": 0.01},
            {"epoch": 3, "train_loss": 1.2, "train_error": 0.4, "val_top1_error": 0.45,
             "val_top5_error": 0.15, "lr": 0.001}]
    steps = [{"step": 4 * i, "epoch": 0.4 * i, "loss": 2.4 - 0.1 * i,
              "lr": 0.01 if i < 6 else 0.001, "images_per_s": 100.0} for i in range(1, 8)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    plot_curves(tmp_path / "log.jsonl", tmp_path / "curves.png")
    (fig,) = saved_figures
    loss_ax, err_ax, lr_ax = fig.axes[:3]

    def lines(ax) -> dict[str, np.ndarray]:
        return {line.get_label(): np.asarray(line.get_xydata(), dtype=float)
                for line in ax.get_lines()}

    loss = lines(loss_ax)
    np.testing.assert_allclose(loss["training loss (every 4 steps)"],
                               [[s["epoch"], s["loss"]] for s in steps])
    np.testing.assert_allclose(loss["training loss (epoch mean)"],
                               [[1, 2.1], [2, 1.6], [3, 1.2]])
    err = lines(err_ax)
    assert set(err) == {"training error", "validation top-1 error", "validation top-5 error"}
    np.testing.assert_allclose(err["training error"], [[1, 80], [2, 60], [3, 40]])
    np.testing.assert_allclose(err["validation top-1 error"], [[1, 70], [3, 45]])
    np.testing.assert_allclose(err["validation top-5 error"], [[1, 30], [3, 15]])
    np.testing.assert_allclose(lines(lr_ax)["learning rate"],
                               [[s["epoch"], s["lr"]] for s in steps])


# ----------------------------------------------------------------------- training loop

BATCHES = (2, 2, 6, 6, 3)  # 19 images; batches of unequal size, the last one smaller
LR, LOG_EVERY = 0.5, 2


class FakeLoader:
    """The same fixed batches every epoch, from batch `start` (the loader's interface)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int, start: int = 0):
        return iter(self.batches[start:])


def softmax_regression_by_hand(w: np.ndarray, b: np.ndarray, batches, epochs: int):
    """Per step: (mean cross-entropy, wrong top-1) before its SGD update, in float64 NumPy."""
    out = []
    for _ in range(epochs):
        for x, y in batches:
            xs, ys = x.numpy().reshape(len(y), -1).astype(np.float64), y.numpy()
            z = xs @ w.T + b
            z -= z.max(1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            out.append((float(-np.log(p[np.arange(len(ys)), ys]).mean()),
                        int((p.argmax(1) != ys).sum())))
            g = p.copy()
            g[np.arange(len(ys)), ys] -= 1
            g /= len(ys)
            w, b = w - LR * g.T @ xs, b - LR * g.sum(0)
    return out


def image_mean_loss(by_hand: list[tuple[float, int]]) -> float:
    """An epoch's cross-entropy averaged over its images (its steps first in `by_hand`)."""
    return sum(b * step[0] for b, step in zip(BATCHES, by_hand, strict=False)) / sum(BATCHES)


@pytest.fixture
def loop_run(monkeypatch):
    """train_epoch on a softmax regression, with a clock that moves 1 s per step: (run, which
    trains the epoch `s.epoch` from `s.step` and returns (why it stopped, the runtime); the
    state s; the step rows logged; the by-hand (loss, wrong) of two epochs' steps)."""
    import alexnet.training.loop as loop
    from alexnet.config import from_dict
    from alexnet.distributed import DistInfo
    from alexnet.training.runtime import setup_runtime
    from alexnet.training.state import RunState

    rng = np.random.default_rng(5)
    batches = []
    for n in BATCHES:
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 3, 2, 2)) + 0.8 * y[:, None, None, None]
        batches.append((torch.tensor(x, dtype=torch.float32), torch.tensor(y)))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    w0 = net[1].weight.detach().double().numpy().copy()
    b0 = net[1].bias.detach().double().numpy().copy()
    by_hand = softmax_regression_by_hand(w0, b0, batches, 2)
    clock = {"t": 100.0}
    real_step = loop.train_step

    def step(*args):
        result = real_step(*args)
        clock["t"] += 1.0
        return result

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(
        perf_counter=lambda: clock["t"], monotonic=lambda: clock["t"]))
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    s = RunState(model=net, net=net, optimizer=optimizer, schedule=None)
    rows: list[dict] = []

    def run(max_steps: int = 0) -> str | None:
        config = from_dict({"run": {"device": "cpu", "progress": False, "log_every": LOG_EVERY,
                                    "max_steps": max_steps}, "optim": {"epochs": 2}})
        rt = setup_runtime(config, DistInfo())
        return loop.train_epoch(s, FakeLoader(batches), config, rt, loop.StopRequest(), 0.0,
                                rows.append), rt

    return run, s, rows, by_hand


def test_the_epoch_row_averages_over_images_and_counts_top1_errors(loop_run):
    """Training loss and error of an epoch are means over its IMAGES (a smaller last batch
    weighs less), the errors counted before each update; images/s is images over seconds;
    the row's lr is the one the epoch trained with."""
    from alexnet.training.loop import epoch_row

    run, s, rows, by_hand = loop_run
    reason, rt = run()
    assert reason is None and (s.step, s.global_step) == (5, 5)
    n = sum(BATCHES)
    loss = image_mean_loss(by_hand)
    wrong = sum(w for _, w in by_hand[:5])
    assert loss != pytest.approx(np.mean([step[0] for step in by_hand[:5]]), rel=1e-3)
    row = epoch_row(s, rt, {"val_top1_error": 0.5, "val_top5_error": 0.25}, False, False,
                    lr=0.123)
    assert row["train_loss"] == pytest.approx(loss, rel=1e-5)
    assert row["train_error"] == pytest.approx(wrong / n, abs=1e-12)
    assert 0 < wrong < n
    assert row["epoch_seconds"] == pytest.approx(5.0)
    assert row["images_per_s"] == pytest.approx(n / 5.0)
    assert (row["epoch"], row["steps"], row["lr"]) == (1, 5, 0.123)
    assert (row["val_top1_error"], row["val_top5_error"]) == (0.5, 0.25)


def test_an_epoch_continued_after_a_stop_sums_both_parts(loop_run):
    """Stopped at step 2 (max_steps) and continued, the epoch's row is the whole epoch's."""
    from alexnet.training.loop import epoch_row

    run, s, rows, by_hand = loop_run
    assert run(max_steps=2)[0] == "max_steps" and s.step == 2
    reason, rt = run()
    assert reason is None and s.step == 5
    n = sum(BATCHES)
    row = epoch_row(s, rt, {}, False, False)
    assert row["train_loss"] == pytest.approx(image_mean_loss(by_hand), rel=1e-5)
    assert row["train_error"] == pytest.approx(sum(w for _, w in by_hand[:5]) / n)
    assert row["images_per_s"] == pytest.approx(n / 5.0) and row["steps"] == 5


def test_step_rows_every_log_every_optimizer_steps_across_epochs(loop_run):
    """A step row at every LOG_EVERY-th optimizer step of the run (not of the epoch): that
    step's loss, its place in epochs, the lr, and the images since the last row over the
    seconds since it."""
    run, s, rows, by_hand = loop_run
    run()
    s.epoch, s.step, s.acc = 1, 0, {}
    _, rt = run()
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    assert [r["epoch"] for r in rows] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])
    assert [r["loss"] for r in rows] == pytest.approx([by_hand[k - 1][0] for k in
                                                       (2, 4, 6, 8, 10)], rel=1e-5)
    assert all(r["lr"] == LR for r in rows)
    # steps 1-2 and 3-4 of epoch 1, 7-8 and 9-10 of epoch 2 (the window of a row that
    # follows an epoch's end starts with the epoch: step 6's is not checked)
    sizes = list(BATCHES) * 2
    want = [(sizes[k - 2] + sizes[k - 1]) / 2.0 for k in (2, 4, 8, 10)]
    assert want == [2.0, 6.0, 4.0, 4.5]
    assert [rows[i]["images_per_s"] for i in (0, 1, 3, 4)] == pytest.approx(want)
    from alexnet.training.loop import epoch_row

    row = epoch_row(s, rt, {}, False, False)  # the second epoch's own sums
    assert (row["epoch"], row["steps"]) == (2, 10)
    assert row["train_loss"] == pytest.approx(image_mean_loss(by_hand[5:]), rel=1e-5)
    assert row["train_error"] == pytest.approx(sum(w for _, w in by_hand[5:]) / sum(BATCHES))


def test_validation_errors_are_top1_and_top5_over_the_images():
    from alexnet.training.loop import val_errors

    assert val_errors({"top1_wrong": 3, "top5_wrong": 1, "images": 8}) == \
        {"val_top1_error": 3 / 8, "val_top5_error": 1 / 8}


class FixedLogits(nn.Module):
    """A net that ranks the classes 0 > 1 > ... whatever the image."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.register_buffer("logits", -torch.arange(classes, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_validation_reads_only_the_first_val_limit_images(tmp_path):
    """run.val_limit N: the errors of the first N validation images (counted by hand)."""
    from alexnet.config import from_dict
    from alexnet.data.store import write_store
    from alexnet.distributed import DistInfo
    from alexnet.training.loop import validate_epoch
    from alexnet.training.runtime import setup_runtime
    from alexnet.training.state import RunState

    classes = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(6)]
    labels = np.array([0, 0, 0, 1, 2, 3, 4, 5, 1, 5])
    images = np.random.default_rng(0).integers(0, 256, (10, 40, 40, 3), dtype=np.uint8)
    store = write_store(tmp_path / "val", images, labels, classes)
    net = FixedLogits(6)
    s = RunState(model=net, net=net, optimizer=None, schedule=None)
    for limit, n in ((6, 6), (0, 10), (30, 10)):
        config = from_dict({"run": {"device": "cpu", "progress": False, "val_limit": limit,
                                    "eval_batch_size": 4}, "data": {"crop": 32}})
        rt = setup_runtime(config, DistInfo())
        got = validate_epoch(s, store, config, rt, store.stats)
        assert got == pytest.approx({"val_top1_error": float((labels[:n] != 0).mean()),
                                     "val_top5_error": float((labels[:n] >= 5).mean())})


# ------------------------------------------------------------------------ ablate's table


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(mean a - mean b, low, high): Welch's 95% interval, Welch-Satterthwaite df."""
    from scipy.stats import t as student_t

    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    d, half = np.mean(a) - np.mean(b), student_t.ppf(0.975, df) * math.sqrt(va + vb)
    return d, d - half, d + half


def test_ablation_rows_sign_deltas_in_points_and_print_them_as_computed():
    """Synthetic results (no training): no-lrn 4 points worse in top-1 and 2 in top-5 than the
    paper net. The deltas are the variant minus the paper net in points (positive: LRN helps,
    as the paper's +1.4/+1.2), with Welch intervals; the Markdown row, the CSV row and the
    sentence show those numbers, each in its place."""
    from alexnet.experiments import ablate as ab

    base = {"top1": [0.405, 0.41, 0.415], "top5": [0.185, 0.195, 0.19]}
    lrn = {"top1": [0.45, 0.44, 0.46], "top5": [0.215, 0.205, 0.21]}

    def runs(name: str, errors: dict) -> list[dict]:
        return [{"variant": f"{name} seed {k}", "top1_error": errors["top1"][k],
                 "top5_error": errors["top5"][k], "steps": 5} for k in range(3)]

    rows = ab.tabulate({"paper": runs("paper", base), "no-lrn": runs("no-lrn", lrn)},
                       ab.choose_variants(["no-lrn"]))
    row = rows[1]
    want = {k: welch_by_hand([100 * v for v in lrn[k]], [100 * v for v in base[k]])
            for k in ("top1", "top5")}
    assert want["top1"][0] == pytest.approx(4.0) and want["top5"][0] == pytest.approx(2.0)
    for k in ("top1", "top5"):
        d = row[f"delta_{k}"]
        assert (d["estimate"], d["low"], d["high"]) == pytest.approx(want[k], rel=1e-9)
        assert d["low"] > 0  # distinguishable: the variant is worse
    assert (row["paper_delta_top1"], row["paper_delta_top5"]) == (1.4, 1.2)

    def pct(values: list[float]) -> str:
        return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"

    def delta(k: str) -> str:
        return "{:+.2f} [{:+.2f}, {:+.2f}]".format(*want[k])

    lines = ab.markdown(rows).splitlines()
    assert f"| no-lrn | model.lrn=false | 3 | {pct(lrn['top1'])} | {pct(lrn['top5'])} | " \
        f"{delta('top1')} | {delta('top5')} | +1.40 | +1.20 | 5 |" in lines
    assert f"| paper | - | 3 | {pct(base['top1'])} | {pct(base['top5'])} | - | - | - | - " \
        "| 5 |" in lines
    flat = ab.csv_row(row)
    assert (flat["delta_top1"], flat["delta_top1_low"], flat["delta_top1_high"]) == \
        pytest.approx(want["top1"])
    assert (flat["delta_top5"], flat["delta_top5_low"], flat["delta_top5_high"]) == \
        pytest.approx(want["top5"])
    said = ab.sentence(row)
    assert "top-1 delta +4.00 points is distinguishable from 0" in said
    assert "top-5 delta +2.00 is distinguishable from 0" in said
    assert "Paper: +1.4 top-1, +1.2 top-5." in said
