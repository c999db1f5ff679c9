"""Figure 4 left: test images with the five labels the net considers most probable.

Section 6.1: "The correct label is written under each image, and the probability assigned to
the correct label is also shown with a red bar (if it happens to be in the top 5)." Here each
image has its true label written under it, then a horizontal bar per top-5 class, its length
the (crop-averaged softmax) probability; the true label's bar is red, the others blue. A line
above the images says how the probabilities were computed (`protocol`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.atomic import write_atomic
from alexnet.figures.text import drawable, fit, noting_missing_glyphs
from alexnet.paper import TOP5

TOP = TOP5  # section 6
IMAGES_PER_ROW = 4
CELL_INCHES = (2.0, 3.2)  # (width, height) of one image with its bars
HEADER_INCHES = 0.25  # the protocol line above the images
LABEL_CHARS = 22  # the longest class label that fits under an image


def figure_size(images: int, dpi: int = 100, per_row: int = IMAGES_PER_ROW) -> tuple[int, int]:
    """(width, height) in pixels of the figure for `images` images."""
    cols = min(per_row, images)
    rows = math.ceil(images / cols)
    return int(round(cols * CELL_INCHES[0] * dpi)), int(round(rows * CELL_INCHES[1] * dpi))


def top_classes(probs: np.ndarray, k: int = TOP) -> np.ndarray:
    """(N, min(k, C)) the `k` most probable classes of each row of `probs` (N, C), most
    probable first, equal probabilities in class order: the bars of each image, top down."""
    return np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]


def plot_top5(images: Sequence[np.ndarray], probs: np.ndarray, labels: Sequence[int],
              names: Sequence[str], path: Path, *, protocol: str = "", dpi: int = 100,
              per_row: int = IMAGES_PER_ROW) -> tuple[int, int]:
    """Write the figure for uint8 (H, W, 3) `images`, their probs (N, C) and true `labels`.

    `names`: the label of each class, as `class_labels(classes, LABEL_CHARS)` makes them;
    any other text is drawn safely (`fit`), cut to LABEL_CHARS with an ellipsis.
    `protocol`: how the probabilities were computed, drawn above the images.
    Returns the PNG's (width, height), `figure_size(len(images), dpi)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    shown = [fit(name, LABEL_CHARS) for name in names]
    with noting_missing_glyphs():
        fig = plt.figure(figsize=(cols * CELL_INCHES[0], rows * CELL_INCHES[1]), dpi=dpi)
        try:
            top = 1 - HEADER_INCHES / (rows * CELL_INCHES[1])
            grid = fig.add_gridspec(rows * 2, cols, height_ratios=[2.0, 1.0] * rows,
                                    hspace=0.25, wspace=0.08, left=0.02, right=0.98, top=top,
                                    bottom=0.01)
            if protocol:
                fig.text(0.5, 1 - 0.5 * HEADER_INCHES / (rows * CELL_INCHES[1]),
                         drawable(protocol), fontsize=8, ha="center", va="center",
                         parse_math=False)
            for i in range(n):
                r, c = divmod(i, cols)
                _cell(fig.add_subplot(grid[2 * r, c]), fig.add_subplot(grid[2 * r + 1, c]),
                      images[i], probs[i], labels[i], shown)
            write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
        finally:
            plt.close(fig)
    return figure_size(n, dpi, per_row)


def _cell(ax: Any, bars: Any, image: np.ndarray, probs: np.ndarray, label: int,
          names: Sequence[str]) -> None:
    """One image with its true class written under it (`ax`), and a bar per top-5 class
    below that (`bars`): red for the true class, blue for the others."""
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(names[label], fontsize=8, fontweight="bold", labelpad=2, parse_math=False)
    order = top_classes(probs[None])[0]
    top = len(order)
    colours = ["tab:red" if k == label else "tab:blue" for k in order]
    bars.barh(range(top), probs[order], color=colours, alpha=0.5)
    for j, k in enumerate(order):
        bars.text(0.02, j, f"{names[k]} {probs[k]:.2g}", fontsize=6, va="center", ha="left",
                  parse_math=False)  # two figures: 0.0031, not 0.00, among 1000 classes
    bars.set_xlim(0, 1)
    bars.set_ylim(top - 0.5, -0.5)
    bars.set_xticks([])
    bars.set_yticks([])
