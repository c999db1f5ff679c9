"""`alexnet relu-vs-tanh`: the figure 1 experiment of section 3.1.

"A four-layer convolutional neural network with ReLUs reaches a 25% training error rate on
CIFAR-10 six times faster than an equivalent network with tanh neurons"; each net's learning
rate was chosen to make its training as fast as possible, and no regularisation was used.

The paper does not give the four-layer net. We use the shape of cuda-convnet's classic
CIFAR-10 net (layers-18pct): three 5x5 convolutions with 32, 32 and 64 kernels (padding 2),
each followed by its nonlinearity and a 3x3 stride-2 pooling (max after conv1, average after
conv2 and conv3, cuda-convnet's ceil rounding), then one fully connected output layer: four
layers with weights. The LRN layers of layers-18pct are left out (this is a comparison of
units, and LRN's constants were tuned for ReLUs). The net reads stores of any image size.

Inputs: the store's mean image is subtracted, then the result is divided by the training
set's pixel standard deviation (sqrt of the mean of the per-channel variances, from the
store's RGB covariance). Centred 0..255 inputs would saturate tanh units from the first
step; scaling the inputs is fair to both nets (`--input-scale none` keeps 0..255).

Training: plain SGD with momentum 0.9, batch 128, no weight decay, no dropout, no
augmentation. Weights ~ N(0, gain^2 / fan_in) with each unit's standard gain (sqrt(2) for
ReLU, 5/3 for tanh; 1 for the output layer), biases 0, drawn from the same seed for both nets:
each net gets the init that suits its units, as each gets its own best lr (`--init paper`
gives both the paper's N(0, 0.01) of section 5 instead). The training error is the paper's:
each minibatch's errors counted before its update, read per step as a running error over a
window of steps (alexnet.experiments.crossing). The search over learning rates, the seeds and
the ratio with its interval are alexnet.experiments.speedup. A greyscale store (three equal
channels, e.g. Fashion-MNIST) is fed as one channel: the same function, a third of conv1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet import paper
from alexnet.atomic import FolderLock, check_output, ensure_folder, read_json_object, write_atomic
from alexnet.errors import UserError
from alexnet.experiments import crossing, speedup
from alexnet.progress import Progress

ACTIVATIONS = ("relu", "tanh")
INITS = ("gain", "paper")  # each unit's gain / fan_in, or the paper's N(0, 0.01) (section 5)
# The four-layer net: (kernels, kernel size, padding, pooling after it), then fc -> classes.
CONV_LAYERS = ((32, 5, 2, "max"), (32, 5, 2, "avg"), (64, 5, 2, "avg"))
POOL_SIZE, POOL_STRIDE = 3, 2  # cuda-convnet's layers-18pct pooling
BATCH_SIZE = 128
# Spaced about 3x apart; on Fashion-MNIST the chosen rates (ReLU 0.03, tanh 0.1 in our runs)
# lie inside it, and 0.3 is too fast for both (docs/experiments.md).
DEFAULT_LRS = (0.01, 0.03, 0.1, 0.3)
DEFAULT_STEPS = 500  # per run: sized so that the default run fits 15 minutes on a 2-core CPU
DEFAULT_SEEDS = 3  # measurement seeds per unit (the search has its own)
# the family of training errors the ratio is read at
THRESHOLDS = (paper.RELU_TANH_THRESHOLD, 0.15, 0.10, 0.05)
LARGEST_LR = float(np.finfo(np.float32).max)  # a larger one overflows SGD's float32 update
MAX_IN_MEMORY = 8 << 30  # bytes of uint8 training images held in memory
# The threshold the rates are chosen for on Fashion-MNIST, a much easier set than CIFAR-10
# (both nets pass 25% within a fifth of an epoch): 15%, in the slow part of the curves as 25%
# is on CIFAR-10, and reached by both within the default budget (docs/experiments.md).
FASHION_MNIST_THRESHOLD = 0.15
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")
FASHION_MNIST_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                       "shirt", "sneaker", "bag", "ankle boot")


class FourLayerNet(nn.Module):
    """The figure 1 net: conv1-conv3 (5x5; 32, 32, 64 kernels) with pooling, then fc4."""

    def __init__(self, num_classes: int, image_size: int, activation: str = "relu",
                 in_channels: int = 3, init: str = "gain") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"activation {activation!r}: choose relu or tanh")
        if init not in INITS:
            raise UserError(f"--init {init!r}: choose {' or '.join(INITS)}")
        self.activation = activation
        act = nn.ReLU if activation == "relu" else nn.Tanh
        layers: list[nn.Module] = []
        channels = in_channels
        for kernels, size, padding, pool in CONV_LAYERS:
            pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
            layers += [nn.Conv2d(channels, kernels, size, padding=padding), act(),
                       pool_cls(POOL_SIZE, POOL_STRIDE, ceil_mode=True)]
            channels = kernels
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, in_channels, image_size, image_size)).numel()
        self.fc4 = nn.Linear(flat, num_classes)
        gain = nn.init.calculate_gain(activation)
        for layer in [m for m in self.conv if isinstance(m, nn.Conv2d)] + [self.fc4]:
            if init == "paper":
                nn.init.normal_(layer.weight, 0.0, paper.INIT_STD)
                nn.init.zeros_(layer.bias)
            else:
                init_layer(layer, 1.0 if layer is self.fc4 else gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) scaled pixels -> (N, num_classes) logits."""
        return self.fc4(self.conv(x).flatten(1))


def init_layer(layer: nn.Conv2d | nn.Linear, gain: float) -> None:
    """Weights ~ N(0, gain^2 / fan_in), biases 0: each unit's own standard gain."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in))
    nn.init.zeros_(layer.bias)


def input_transform(stats: dict, scale: str) -> tuple[torch.Tensor, float]:
    """(mean image as (3, S, S) float32, divisor) from the store's training statistics."""
    mean = torch.from_numpy(np.asarray(stats["mean_image"], dtype=np.float32))
    mean = mean.permute(2, 0, 1).contiguous()
    if scale == "none":
        return mean, 1.0
    cov = np.asarray(stats["rgb_cov"], dtype=np.float64)
    std = float(math.sqrt(max(np.trace(cov) / 3.0, 1e-12)))
    return mean, std


def is_grey(images: np.ndarray) -> bool:
    """True when every image has three equal channels (a greyscale source such as MNIST)."""
    return bool(images.shape[3] == 3 and (images[..., 0] == images[..., 1]).all()
                and (images[..., 0] == images[..., 2]).all())


def train_run(images: np.ndarray, labels: np.ndarray, *, activation: str, lr: float,
              steps: int, mean: torch.Tensor, divisor: float, num_classes: int,
              seed: int = 0, window: int = crossing.DEFAULT_WINDOW,
              thresholds: Sequence[float] = (),
              stop: Callable[[crossing.Tracker], bool] | None = None, batch_size: int = BATCH_SIZE,
              momentum: float = paper.MOMENTUM, init: str = "gain", device: str = "cpu",
              on_step: Callable[[], None] | None = None) -> dict:
    """Train one four-layer net without regularisation for up to `steps` updates.

    `images` uint8 (N, S, S, C), `labels` int (N,); the data are reshuffled (seeded) every
    epoch and the steps run on across epochs. Every step's errors (counted before its update)
    are logged ("wrong", "seen") and the running error's crossings of `thresholds` kept
    (alexnet.experiments.crossing). `stop(tracker)` may end the run early (e.g. once it has
    crossed all it needs); `on_step()` is called after every step (progress). A run whose
    loss becomes NaN or infinite stops there, "diverged", with final error 1.
    """
    n, size = len(images), images.shape[1]
    torch.manual_seed(seed)
    model = FourLayerNet(num_classes, size, activation, images.shape[3], init).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    mean = mean.to(device)
    per_epoch = math.ceil(n / batch_size)
    tracker = crossing.Tracker(window, thresholds)
    diverged, reason = False, "budget"
    model.train()
    order = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        if k == 0:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(
                seed * 1000 + epoch))
        idx = order[k * batch_size:(k + 1) * batch_size]
        x = (x_all[idx].to(device).permute(0, 3, 1, 2).float() - mean) / divisor
        y = y_all[idx].to(device)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            diverged, reason = True, "diverged"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tracker.add(int((logits.argmax(1) != y).sum()), len(idx))
        if on_step is not None:
            on_step()
        if stop is not None and stop(tracker):
            reason = "stopped"
            break
    return {"activation": activation, "lr": lr, "seed": seed, "steps": tracker.steps,
            "images": n, "batch_size": batch_size, "window": window,
            "crossings": {f"{t:g}": tracker.crossed.get(t) for t in tracker.thresholds},
            "final_error": 1.0 if diverged else tracker.error, "diverged": diverged,
            "ended": reason, "wrong": tracker.wrong, "seen": tracker.seen}


def default_threshold(classes: Sequence[dict]) -> tuple[float, str]:
    """The threshold for a store: the paper's 25% on CIFAR-10, 15% on Fashion-MNIST.

    Any other data set gets the paper's 25%, with its source named so the report says so.
    """
    names = tuple(str(c.get("name", c.get("wnid", ""))).strip().lower() for c in classes)
    if names == FASHION_MNIST_NAMES or names == tuple(n.replace("/", "_") for n in
                                                       FASHION_MNIST_NAMES):
        return FASHION_MNIST_THRESHOLD, "Fashion-MNIST (documented, docs/experiments.md)"
    if names == CIFAR10_NAMES:
        return paper.RELU_TANH_THRESHOLD, "CIFAR-10 (paper, section 3.1)"
    return paper.RELU_TANH_THRESHOLD, "the paper's CIFAR-10 threshold (unknown data set)"


def load_training_set(data: Path, limit: int | None, seed: int) -> tuple:
    """(images uint8 (N, S, S, 3), labels, store) of the store's training split.

    With `limit`, a seeded random subset of that many images (read in index order).
    """
    from alexnet.data.store import open_split

    store = open_split(data, "train")
    n = len(store)
    if n == 0:
        raise UserError(f"{store.path}: the train split holds no images; prepare it again")
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit}: give a positive number of images")
        if limit < n:
            rng = np.random.default_rng(seed)
            indices = np.sort(rng.choice(n, size=limit, replace=False))
        else:
            indices = np.arange(n)
    else:
        indices = np.arange(n)
    size = store.image_size
    if len(indices) * size * size * 3 > MAX_IN_MEMORY:
        raise UserError(f"{data}: {len(indices)} images of {size}x{size} do not fit this "
                        f"experiment's in-memory set ({MAX_IN_MEMORY >> 30} GiB); use --limit "
                        "or a store prepared with a small --size")
    images = np.asarray(store.read(indices))
    labels = np.asarray(store.labels)[indices]
    return images, labels, store


def check_options(steps: int, window: int, seeds: int, lrs: Sequence[float]) -> None:
    """Refuse options no run can use, in one line (before any data is read)."""
    if steps < window:
        raise UserError(f"--steps {steps}: give at least the window ({window} steps)")
    if window < 2:
        raise UserError(f"--window {window}: give at least 2 steps")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: give at least 1 (3 or more for an interval)")
    if not lrs or any(not 0 < lr <= LARGEST_LR for lr in lrs):  # SGD keeps lr in float32
        raise UserError(f"--lrs {' '.join(map(str, lrs))}: give positive finite learning rates")


def run_experiment(images: np.ndarray, labels: np.ndarray, *, stats: dict, num_classes: int,
                   lrs: Sequence[float], steps: int, thresholds: Sequence[float],
                   select_threshold: float, seeds: int = DEFAULT_SEEDS, seed: int = 0,
                   window: int = crossing.DEFAULT_WINDOW, input_scale: str = "std",
                   init: str = "gain", batch_size: int = BATCH_SIZE, device: str = "cpu",
                   log: Callable[[str], Any] = print, progress: bool = True) -> dict:
    """The lr search for both nets, the seeds at the chosen rates, the ratios; JSON-able."""
    check_options(steps, window, seeds, lrs)
    if not 1 <= batch_size <= len(images):
        raise UserError(f"--batch-size {batch_size}: give 1 to {len(images)} (the images used)")
    mean, divisor = input_transform(stats, input_scale)
    mean = mean[:images.shape[3]]
    family = sorted(set(thresholds) | {select_threshold}, reverse=True)
    total = 2 * steps * (len(lrs) + seeds)
    measure_seeds = [seed + 1 + k for k in range(seeds)]
    bar = Progress(total, "relu-vs-tanh", unit="step", enabled=progress)
    t0 = time.perf_counter()

    def train(activation: str, **kwargs) -> dict:
        bar.note(run=f"{activation} lr {kwargs['lr']:g} seed {kwargs.get('seed', seed)}")
        run = train_run(images, labels, activation=activation, steps=steps, mean=mean,
                        divisor=divisor, num_classes=num_classes, window=window,
                        batch_size=batch_size, init=init, device=device,
                        on_step=bar.update, **kwargs)
        bar.update(steps - run["steps"])  # the steps a stopped run did not need
        crossed = ", ".join(f"{k}: {'-' if v is None else f'{v:.0f}'}"
                            for k, v in run["crossings"].items())
        log(f"{activation:>4} lr={run['lr']:<7g} seed {run['seed']}: {run['steps']} steps, "
            f"running error {100 * run['final_error']:.1f}%, updates to ({crossed})"
            + (" (diverged)" if run["diverged"] else "")
            + f"  [{time.perf_counter() - t0:.0f} s]")
        return run

    result_search, best, edges, measured = {}, {}, {}, {}
    try:
        for a in ACTIVATIONS:
            best[a], result_search[a], edges[a] = speedup.search(
                lambda a=a, **kw: train(a, **kw), lrs, select_threshold, window, seed)
            measured[a] = speedup.measure(lambda a=a, **kw: train(a, **kw), best[a]["lr"],
                                          measure_seeds, family)
    finally:
        bar.close()
    budget = steps * batch_size / len(images)
    unreached = crossing.earliest_unreached(steps, window) * batch_size / len(images)
    return {
        "experiment": "relu-vs-tanh (paper section 3.1, figure 1)",
        "net": "conv5x5x32-maxpool, conv5x5x32-avgpool, conv5x5x64-avgpool, fc (four layers)",
        "images": int(len(images)), "image_size": int(images.shape[1]),
        "channels": int(images.shape[3]), "num_classes": num_classes, "steps": steps,
        "budget_epochs": budget, "batch_size": batch_size, "momentum": paper.MOMENTUM,
        "weight_decay": 0.0, "search_seed": seed, "seeds": measure_seeds,
        "input_scale": input_scale, "input_divisor": divisor, "init": init, "window": window,
        "thresholds": family, "select_threshold": select_threshold, "lrs": sorted(lrs),
        "chance_error": 1.0 - 1.0 / num_classes,
        "best_lr": {a: best[a]["lr"] for a in ACTIVATIONS}, "lr_edge": edges,
        "unreached_epochs": unreached,
        "rows": [speedup.compare(measured["relu"], measured["tanh"], t, unreached)
                 for t in family],
        "paper": {"threshold": paper.RELU_TANH_THRESHOLD, "ratio": paper.RELU_TANH_SPEEDUP,
                  "data": "CIFAR-10"},
        "seconds": time.perf_counter() - t0,
        "runs": measured, "search": result_search,
    }


def plot(result: dict, path: Path) -> None:
    """Figure 1: running training error against epochs for every seed, ReLU solid, tanh
    dashed, the mean of the seeds thick, the thresholds dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for activation, style in (("relu", "-"), ("tanh", "--")):
        curves = []
        for run in result["runs"][activation]:
            err = crossing.running_error(run["wrong"], run["seen"], run["window"])
            x = np.array([crossing.centre(t + 1, run["window"]) for t in range(len(err))])
            x = x * run["batch_size"] / run["images"]
            ax.plot(x, err, style, color="grey", linewidth=0.5, alpha=0.6)
            curves.append((x, err))
        n, w = min(len(e) for _, e in curves), result["window"] - 1  # NaN before a window
        mean = np.mean(np.stack([e[w:n] for _, e in curves]), axis=0)
        unit = "ReLU" if activation == "relu" else "tanh"
        label = f"{unit} (lr {result['best_lr'][activation]:g})"
        ax.plot(curves[0][0][w:n], mean, style, color="black", linewidth=1.6, label=label)
    for t in result["thresholds"]:
        ax.axhline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("Epochs")
    ax.set_ylabel(f"Training error (running, {result['window']} steps)")
    ax.set_ylim(0, max(0.75, result["chance_error"]))
    ax.set_xlim(0, result["budget_epochs"])
    ax.legend()
    ax.set_title(f"ReLU vs tanh (figure 1), {len(result['seeds'])} seeds each", fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def summary(result: dict) -> str:
    """The lines printed at the end: the chosen rates and, per threshold, the ratio."""
    lines = [f"learning rates (chosen at {result['select_threshold']:.0%}, "
             f"{result['threshold_source']}):"]
    for a in ACTIVATIONS:
        edge = result["lr_edge"][a]
        where = "inside the grid" if edge == "inside" else "a single rate, no search" \
            if edge == "single" else \
            f"at the {edge} rate of the grid: the best may lie outside it, widen --lrs"
        lines.append(f"  {a:<4}: {result['best_lr'][a]:g} ({where})")
    lines.append(f"epochs to each training error over seeds {result['seeds']} (budget "
                 f"{result['budget_epochs']:.2f} epochs = {result['steps']} steps of "
                 f"{result['batch_size']}), mean +- sd (seeds reaching it):")
    lines += ["  " + speedup.describe(row) for row in result["rows"]]
    lines.append(f"paper: tanh/ReLU = {paper.RELU_TANH_SPEEDUP:g} at "
                 f"{paper.RELU_TANH_THRESHOLD:.0%} on CIFAR-10 (one run, no interval)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet relu-vs-tanh`."""
    parser.add_argument("--data", type=Path, required=True, help="a prepared store (folder)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"updates per run at most (default {DEFAULT_STEPS})")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"measured seeds per unit (default {DEFAULT_SEEDS})")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS),
                        help="learning rates searched for each net (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="training error the learning rates are chosen for (default: "
                             f"{paper.RELU_TANH_THRESHOLD} on CIFAR-10 as in the paper, "
                             f"{FASHION_MNIST_THRESHOLD} on Fashion-MNIST, else "
                             f"{paper.RELU_TANH_THRESHOLD})")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS),
                        help="training errors the ratio is reported at (default: %(default)s)")
    parser.add_argument("--window", type=int, default=crossing.DEFAULT_WINDOW,
                        help="steps of the running training error (default "
                             f"{crossing.DEFAULT_WINDOW})")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on a seeded random subset of this many images (default: "
                             "every training image)")
    parser.add_argument("--out", type=Path, default=Path("relu_vs_tanh"),
                        help="output folder for figure1.png and relu_vs_tanh.json")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"minibatch size (default {BATCH_SIZE})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the learning-rate search and of the --limit subset; the "
                             "measured seeds are the next --seeds ones")
    parser.add_argument("--input-scale", choices=("std", "none"), default="std",
                        help="divide centred inputs by the pixel std (default) or keep 0..255")
    parser.add_argument("--init", choices=INITS, default="gain",
                        help="weights N(0, gain^2/fan_in) with each unit's gain (default) or "
                             "the paper's N(0, 0.01) for every layer")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default: auto, a GPU if there is one; "
                             "cpu repeats a run bit for bit)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 is often fastest for "
                             "this small net on a busy machine)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar or progress lines")


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise UserError(f"{name} {value}: give a training error between 0 and 1")


def is_result(path: Path) -> bool:
    """Whether `path` holds an earlier relu_vs_tanh.json (what a rerun may replace)."""
    data = read_json_object(path) or {}
    return str(data.get("experiment", "")).startswith("relu-vs-tanh") and "rows" in data


def is_png(path: Path) -> bool:
    """Whether `path` is a PNG image (an earlier figure1.png may be replaced; any other file
    under that name is not ours)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def check_outputs(out: Path) -> None:
    """Refuse, before any training, an --out whose relu_vs_tanh.json or figure1.png is a file
    this command did not write (it would be replaced, and lost)."""
    check_output(out / "relu_vs_tanh.json", "relu-vs-tanh result", is_result,
                 name=f"--out {out}: its relu_vs_tanh.json")
    check_output(out / "figure1.png", "figure 1", is_png, name=f"--out {out}: its figure1.png")


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float as None: JSON has no NaN (json.dumps writes a
    bare NaN that strict readers refuse); a missing sd or interval reads as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """Search, measure, write the JSON and the figure, print the ratios with intervals."""
    if args.threshold is not None:
        _check_fraction("--threshold", args.threshold)
    for t in args.thresholds:
        _check_fraction("--thresholds", t)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give at least 1")
        torch.set_num_threads(args.threads)
    from alexnet.evaluate import resolve_device
    device = resolve_device(args.device)
    check_options(args.steps, args.window, args.seeds, args.lrs)
    images, labels, store = load_training_set(args.data, args.limit, args.seed)
    if is_grey(images):  # one channel holds all: conv1 does a third of the work
        images = np.ascontiguousarray(images[..., :1])
    if args.threshold is None:
        threshold, source = default_threshold(store.classes)
    else:
        threshold, source = args.threshold, "--threshold"
    ensure_folder(args.out, "folder for --out")
    with FolderLock(args.out, f"{args.out}: another `alexnet relu-vs-tanh` is writing this "
                    "folder; wait for it to end, or choose another --out"):
        return _run_locked(args, images, labels, store, threshold, source, str(device))


def _run_locked(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray, store: Any,
                threshold: float, source: str, device: str) -> int:
    """`run` once --out is this command's alone: train, then write the JSON and figure 1.

    Nothing is written before every run of both units is done; a command stopped midway
    says so. (Keeping the first unit's runs for a rerun would need a partial result keyed by
    every option, the data and the device, to save less than half the time: ReLU's runs
    cross sooner and stop early.)
    """
    check_outputs(args.out)
    print(f"relu-vs-tanh: {len(images)} images of {images.shape[1]}x{images.shape[1]}x"
          f"{images.shape[3]}, {len(store.classes)} classes, up to {args.steps} steps per run, "
          f"lrs {sorted(args.lrs)}, {args.seeds} seed{'' if args.seeds == 1 else 's'} per unit, "
          f"on {device}")
    try:
        result = run_experiment(images, labels, stats=store.stats,
                                num_classes=len(store.classes), lrs=args.lrs, steps=args.steps,
                                thresholds=args.thresholds, select_threshold=threshold,
                                seeds=args.seeds, seed=args.seed, window=args.window,
                                input_scale=args.input_scale, init=args.init,
                                batch_size=args.batch_size, device=device,
                                progress=args.progress)
    except BaseException as err:
        if not isinstance(err, UserError):  # a UserError comes before any training
            print(f"alexnet relu-vs-tanh: note: stopped before writing anything to {args.out} "
                  "(results are written once both units are trained; an earlier result there "
                  "is kept); rerunning the same command starts over", file=sys.stderr)
        raise
    result["threshold_source"] = source
    result["data"] = str(args.data)
    json_path, png_path = args.out / "relu_vs_tanh.json", args.out / "figure1.png"
    text = json.dumps(json_safe(result), indent=1) + "\n"
    write_atomic(json_path, text)
    plot(result, png_path)
    print(summary(result))
    print(f"wrote {png_path} and {json_path} in {result['seconds']:.0f} s")
    return 0
