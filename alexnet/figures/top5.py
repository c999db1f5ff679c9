"""Figure 4 left: test images with the five labels the net considers most probable.

Section 6.1: "The correct label is written under each image, and the probability assigned to
the correct label is also shown with a red bar (if it happens to be in the top 5)." Here each
image is drawn with a horizontal bar per top-5 class, its length the (crop-averaged softmax)
probability; the true label's bar is red, the others blue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alexnet.atomic import write_atomic
from alexnet.paper import TOP5

TOP = TOP5  # section 6
IMAGES_PER_ROW = 4
CELL_INCHES = (2.0, 3.2)  # (width, height) of one image with its bars


def figure_size(images: int, dpi: int = 100, per_row: int = IMAGES_PER_ROW) -> tuple[int, int]:
    """(width, height) in pixels of the figure for `images` images."""
    cols = min(per_row, images)
    rows = math.ceil(images / cols)
    return int(round(cols * CELL_INCHES[0] * dpi)), int(round(rows * CELL_INCHES[1] * dpi))


def plot_top5(images: Sequence[np.ndarray], probs: np.ndarray, labels: Sequence[int],
              names: Sequence[str], path: Path, *, dpi: int = 100,
              per_row: int = IMAGES_PER_ROW) -> tuple[int, int]:
    """Write the figure for uint8 (H, W, 3) `images`, their probs (N, C) and true `labels`.

    Returns the PNG's (width, height), `figure_size(len(images), dpi)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(cols * CELL_INCHES[0], rows * CELL_INCHES[1]), dpi=dpi)
    grid = fig.add_gridspec(rows * 2, cols, height_ratios=[2.0, 1.0] * rows, hspace=0.25,
                            wspace=0.08, left=0.02, right=0.98, top=0.96, bottom=0.01)
    top = min(TOP, probs.shape[1])
    for i in range(n):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(images[i])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(_short(names[labels[i]]), fontsize=8)
        order = np.argsort(-probs[i], kind="stable")[:top]
        bars = fig.add_subplot(grid[2 * r + 1, c])
        colours = ["tab:red" if k == labels[i] else "tab:blue" for k in order]
        bars.barh(range(top), probs[i][order], color=colours, alpha=0.5)
        for j, k in enumerate(order):
            bars.text(0.02, j, f"{_short(names[k])} {probs[i][k]:.2f}", fontsize=6,
                      va="center", ha="left")
        bars.set_xlim(0, 1)
        bars.set_ylim(top - 0.5, -0.5)
        bars.set_xticks([])
        bars.set_yticks([])
    try:
        write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return figure_size(n, dpi, per_row)


def _short(name: str, length: int = 22) -> str:
    """A class name cut to fit under an image (ImageNet names list synonyms after commas)."""
    name = name.split(",")[0]
    return name if len(name) <= length else name[:length - 1] + "~"
