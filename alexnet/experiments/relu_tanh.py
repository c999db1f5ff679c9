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
gives both the paper's N(0, 0.01) of section 5 instead). The training error is measured over
the epoch, as the paper's curve is: the errors of each minibatch, counted before its update.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet import paper
from alexnet.errors import UserError

ACTIVATIONS = ("relu", "tanh")
INITS = ("gain", "paper")  # each unit's gain / fan_in, or the paper's N(0, 0.01) (section 5)
# The four-layer net: (kernels, kernel size, padding, pooling after it), then fc -> classes.
CONV_LAYERS = ((32, 5, 2, "max"), (32, 5, 2, "avg"), (64, 5, 2, "avg"))
POOL_SIZE, POOL_STRIDE = 3, 2  # cuda-convnet's layers-18pct pooling
BATCH_SIZE = 128
DEFAULT_LRS = (0.003, 0.01, 0.03, 0.1)
DEFAULT_EPOCHS = 12
MAX_IN_MEMORY = 8 << 30  # bytes of uint8 training images held in memory
# Threshold for Fashion-MNIST, a much easier set than CIFAR-10 (both nets pass 25% within an
# epoch or two): 15% is reached by both within a few-minute CPU run, in the slow part of the
# curves as 25% is on CIFAR-10 (docs/experiments.md).
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


def epochs_to_threshold(points: Sequence[tuple[float, float]], threshold: float,
                        start_error: float) -> float | None:
    """Epochs until the training-error curve first reaches `threshold`, or None if never.

    `points` are (epochs done, error measured over the window ending there); the curve
    starts at (0, start_error), chance for an untrained net. Between the last point above
    the threshold and the first at or below it the curve is interpolated linearly.
    """
    prev_x, prev_e = 0.0, float(start_error)
    if prev_e <= threshold:
        return 0.0
    for x, e in points:
        if e <= threshold:
            return prev_x + (x - prev_x) * (prev_e - threshold) / (prev_e - e)
        prev_x, prev_e = float(x), float(e)
    return None


def epoch_points(run: dict) -> list[tuple[float, float]]:
    """(epoch, error over that epoch) of a run: the curve the threshold is read from."""
    return [(i + 1.0, e) for i, e in enumerate(run["epoch_error"])]


def select_best(runs: Sequence[dict], threshold: float) -> dict:
    """The run that trains fastest: fewest epochs to `threshold`, else lowest final error.

    Each run is a dict with "lr", "epochs_to_threshold" (float or None) and "final_error".
    Runs that reach the threshold always beat runs that do not; ties go to the smaller lr.
    """
    if not runs:
        raise UserError("--lrs: give at least one learning rate")
    reached = [r for r in runs if r["epochs_to_threshold"] is not None]
    if reached:
        return min(reached, key=lambda r: (r["epochs_to_threshold"], r["lr"]))
    return min(runs, key=lambda r: (_nan_last(r["final_error"]), r["lr"]))


def _nan_last(value: float) -> float:
    return math.inf if value is None or math.isnan(value) else value


def input_transform(stats: dict, scale: str) -> tuple[torch.Tensor, float]:
    """(mean image as (3, S, S) float32, divisor) from the store's training statistics."""
    mean = torch.from_numpy(np.asarray(stats["mean_image"], dtype=np.float32))
    mean = mean.permute(2, 0, 1).contiguous()
    if scale == "none":
        return mean, 1.0
    cov = np.asarray(stats["rgb_cov"], dtype=np.float64)
    std = float(math.sqrt(max(np.trace(cov) / 3.0, 1e-12)))
    return mean, std


def train_curve(images: np.ndarray, labels: np.ndarray, *, activation: str, lr: float,
                epochs: int, mean: torch.Tensor, divisor: float, num_classes: int,
                seed: int = 0, batch_size: int = BATCH_SIZE, points_per_epoch: int = 4,
                momentum: float = paper.MOMENTUM, init: str = "gain",
                device: str = "cpu") -> dict:
    """Train one four-layer net without regularisation; its training error over each window.

    `images` uint8 (N, S, S, 3), `labels` int (N,). Returns "epoch_error" (error over each
    epoch), "points" ((epochs done, error over the last 1/points_per_epoch of an epoch)) and
    "diverged" (the loss became NaN or infinite; the remaining windows count as error 1).
    """
    n, size = len(images), images.shape[1]
    torch.manual_seed(seed)
    model = FourLayerNet(num_classes, size, activation, images.shape[3], init).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    mean = mean.to(device)
    steps = math.ceil(n / batch_size)
    bounds = [round(steps * (k + 1) / points_per_epoch) for k in range(points_per_epoch)]
    epoch_error: list[float] = []
    points: list[list[float]] = []
    diverged = False
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        wrong_epoch = wrong_win = seen_win = 0
        k = 0
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = x_all[idx].to(device).permute(0, 3, 1, 2).float()
            x = (x - mean) / divisor
            y = y_all[idx].to(device)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            wrong = int((logits.argmax(1) != y).sum())
            wrong_epoch += wrong
            wrong_win += wrong
            seen_win += len(idx)
            if step + 1 == bounds[k]:
                points.append([epoch + (k + 1) / points_per_epoch, wrong_win / seen_win])
                wrong_win = seen_win = 0
                k += 1
        if diverged:
            break
        epoch_error.append(wrong_epoch / n)
    if diverged:
        done = len(epoch_error)
        epoch_error += [1.0] * (epochs - done)
        points = [p for p in points if p[0] <= done]
        points += [[done + (k + 1) / points_per_epoch, 1.0]
                   for k in range((epochs - done) * points_per_epoch)]
    return {"activation": activation, "lr": lr, "epoch_error": epoch_error, "points": points,
            "final_error": epoch_error[-1] if epoch_error else float("nan"),
            "diverged": diverged}


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


def run_experiment(images: np.ndarray, labels: np.ndarray, *, stats: dict, num_classes: int,
                   lrs: Sequence[float], epochs: int, threshold: float, seed: int = 0,
                   points_per_epoch: int = 4, input_scale: str = "std", init: str = "gain",
                   batch_size: int = BATCH_SIZE, device: str = "cpu", log=print) -> dict:
    """The lr search for both nets and their comparison; returns the JSON-able result."""
    if epochs < 1:
        raise UserError(f"--epochs {epochs}: give at least one epoch")
    if not 1 <= batch_size <= len(images):
        raise UserError(f"--batch-size {batch_size}: give 1 to {len(images)} (the images used)")
    if not lrs or any(not (lr > 0) for lr in lrs):
        raise UserError(f"--lrs {' '.join(map(str, lrs))}: give positive learning rates")
    mean, divisor = input_transform(stats, input_scale)
    chance = 1.0 - 1.0 / num_classes
    search: dict[str, list[dict]] = {}
    best: dict[str, dict] = {}
    for activation in ACTIVATIONS:
        runs = []
        for lr in lrs:
            t0 = time.perf_counter()
            run = train_curve(images, labels, activation=activation, lr=lr, epochs=epochs,
                              mean=mean, divisor=divisor, num_classes=num_classes, seed=seed,
                              points_per_epoch=points_per_epoch, init=init,
                              batch_size=batch_size, device=device)
            run["epochs_to_threshold"] = epochs_to_threshold(epoch_points(run), threshold,
                                                             chance)
            reach = run["epochs_to_threshold"]
            log(f"{activation:>4} lr={lr:<8g} final training error {run['final_error']:.4f}  "
                f"epochs to {threshold:.0%}: "
                + (f"{reach:.2f}" if reach is not None else f"not within {epochs}")
                + (" (diverged)" if run["diverged"] else "")
                + f"  [{time.perf_counter() - t0:.0f} s]")
            runs.append(run)
        search[activation] = runs
        best[activation] = select_best(runs, threshold)
    relu_e = best["relu"]["epochs_to_threshold"]
    tanh_e = best["tanh"]["epochs_to_threshold"]
    ratio = tanh_e / relu_e if relu_e and tanh_e is not None else None
    lower = epochs / relu_e if relu_e and tanh_e is None else None
    return {
        "experiment": "relu-vs-tanh (paper section 3.1, figure 1)",
        "net": "conv5x5x32-maxpool, conv5x5x32-avgpool, conv5x5x64-avgpool, fc (four layers)",
        "images": int(len(images)), "image_size": int(images.shape[1]),
        "num_classes": num_classes, "epochs": epochs, "batch_size": batch_size,
        "momentum": paper.MOMENTUM, "weight_decay": 0.0, "seed": seed,
        "input_scale": input_scale, "input_divisor": divisor, "init": init,
        "points_per_epoch": points_per_epoch, "threshold": threshold,
        "chance_error": chance, "lrs": list(lrs),
        "best": {a: {k: best[a][k] for k in ("lr", "epoch_error", "points", "final_error",
                                             "epochs_to_threshold", "diverged")}
                 for a in ACTIVATIONS},
        "ratio": ratio, "ratio_lower_bound": lower,
        "paper": {"threshold": paper.RELU_TANH_THRESHOLD, "ratio": paper.RELU_TANH_SPEEDUP,
                  "data": "CIFAR-10"},
        "search": search,
    }


def plot(result: dict, path: Path) -> None:
    """Figure 1: training error against epochs, ReLU solid, tanh dashed, the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    chance = result["chance_error"]
    for activation, style in (("relu", "-"), ("tanh", "--")):
        run = result["best"][activation]
        fine = [(0.0, chance)] + [tuple(p) for p in run["points"]]
        ax.plot(*zip(*fine, strict=True), style, color="grey", linewidth=0.6, alpha=0.6)
        whole = [(0.0, chance)] + epoch_points(run)
        ax.plot(*zip(*whole, strict=True), style, color="black", linewidth=1.6,
                label=f"{'ReLU' if activation == 'relu' else 'tanh'} (lr {run['lr']:g})")
    ax.axhline(result["threshold"], color="grey", linestyle=":", linewidth=1,
               label=f"{result['threshold']:.0%} threshold")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Training error rate")
    ax.set_ylim(0, max(0.75, result["chance_error"]))
    ax.set_xlim(0, result["epochs"])
    ax.legend()
    title = "ReLU vs tanh (figure 1)"
    if result["ratio"] is not None:
        title += f": epochs to {result['threshold']:.0%}, tanh/ReLU = {result['ratio']:.2f}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def summary(result: dict) -> str:
    """The lines printed at the end: epochs to the threshold and the ratio."""
    t = result["threshold"]
    lines = [f"threshold {t:.0%} training error ({result['threshold_source']})"]
    for a in ACTIVATIONS:
        b = result["best"][a]
        e = b["epochs_to_threshold"]
        lines.append(f"  {a:<4}: best lr {b['lr']:g}, epochs to {t:.0%}: "
                     + (f"{e:.2f}" if e is not None else f"not reached in {result['epochs']}"))
    if result["ratio"] is not None:
        lines.append(f"  ratio tanh/ReLU: {result['ratio']:.2f}x "
                     f"(paper: {paper.RELU_TANH_SPEEDUP:g}x at "
                     f"{paper.RELU_TANH_THRESHOLD:.0%} on CIFAR-10)")
    elif result["ratio_lower_bound"] is not None:
        lines.append(f"  ratio tanh/ReLU: > {result['ratio_lower_bound']:.2f}x "
                     "(tanh did not reach the threshold)")
    else:
        lines.append("  ratio: undefined (ReLU did not reach the threshold; raise --epochs "
                     "or --threshold)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet relu-vs-tanh`."""
    parser.add_argument("--data", type=Path, required=True, help="a prepared store (folder)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"epochs per run (default {DEFAULT_EPOCHS})")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS),
                        help="learning rates searched for each net (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="training error to reach (default: 0.25 on CIFAR-10 as in the "
                             f"paper, {FASHION_MNIST_THRESHOLD} on Fashion-MNIST, else 0.25)")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on a seeded random subset of this many images")
    parser.add_argument("--out", type=Path, default=Path("relu_vs_tanh"),
                        help="output folder for figure1.png and relu_vs_tanh.json")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"minibatch size (default {BATCH_SIZE})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points-per-epoch", type=int, default=4,
                        help="points of the curve per epoch (default 4)")
    parser.add_argument("--input-scale", choices=("std", "none"), default="std",
                        help="divide centred inputs by the pixel std (default) or keep 0..255")
    parser.add_argument("--init", choices=INITS, default="gain",
                        help="weights N(0, gain^2/fan_in) with each unit's gain (default) or "
                             "the paper's N(0, 0.01) for every layer")
    parser.add_argument("--device", default="cpu", help="cpu (default, deterministic) or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 is often fastest for "
                             "this small net on a busy machine)")


def run(args: argparse.Namespace) -> int:
    """Run the search for both nets, write the JSON and the figure, print the ratio."""
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UserError(f"--threshold {args.threshold}: give a training error between 0 and 1")
    if args.points_per_epoch < 1:
        raise UserError(f"--points-per-epoch {args.points_per_epoch}: give at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give at least 1")
        torch.set_num_threads(args.threads)
    images, labels, store = load_training_set(args.data, args.limit, args.seed)
    if args.threshold is None:
        threshold, source = default_threshold(store.classes)
    else:
        threshold, source = args.threshold, "--threshold"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {args.out}: cannot create the folder ({err.strerror})") from err
    print(f"relu-vs-tanh: {len(images)} images of {images.shape[1]}x{images.shape[1]}, "
          f"{len(store.classes)} classes, {args.epochs} epochs per run, lrs {args.lrs}")
    result = run_experiment(images, labels, stats=store.stats, num_classes=len(store.classes),
                            lrs=args.lrs, epochs=args.epochs, threshold=threshold,
                            seed=args.seed, points_per_epoch=args.points_per_epoch,
                            input_scale=args.input_scale, init=args.init,
                            batch_size=args.batch_size, device=args.device)
    result["threshold_source"] = source
    result["data"] = str(args.data)
    json_path, png_path = args.out / "relu_vs_tanh.json", args.out / "figure1.png"
    text = json.dumps(result, indent=1) + "\n"
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    plot(result, png_path)
    print(summary(result))
    print(f"wrote {png_path} and {json_path}")
    return 0
