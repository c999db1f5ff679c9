"""Figure 3: the conv1 kernels (11x11x3) as images, each column's kernels in its own panel.

Section 6.1: "The network has learned a variety of frequency- and orientation-selective
kernels, as well as various colored blobs ... the kernels on GPU 1 are largely
color-agnostic, while the kernels on GPU 2 are largely color-specific." To check that split
as a number, each kernel's COLOUR FRACTION is recorded: the share of its (mean-removed)
energy that lies off the grey axis R = G = B. A kernel identical in the three channels
scores 0, a purely opponent kernel (channels summing to zero at every pixel) scores 1.

Layout of the grid (documented, and checked by the tests): KERNELS_PER_ROW kernels per row
(16: a column's 48 kernels in 3 rows), each kernel weight shown as a
SCALE x SCALE block, GAP pixels of white between kernels and around the border. A panel of
k kernels is therefore `grid_size(k)` = (cols * (h * SCALE + GAP) + GAP) wide and
(rows * (h * SCALE + GAP) + GAP) high, with rows = ceil(k / cols).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.atomic import write_atomic

KERNELS_PER_ROW = 16  # display choice: a column's 48 kernels in 3 rows
SCALE = 4  # pixels per kernel weight in the grid
GAP = 2  # white pixels between kernels


def conv1_columns(model: nn.Module) -> list[torch.Tensor]:
    """The conv1 kernels of each column, [(K, 3, h, w), ...]: two for the paper's net.

    The paper's net keeps both columns' kernels in one conv1 with the first half belonging
    to column 1 (alexnet.model); a one-column net or the torchvision layout gives one panel.
    """
    conv1 = getattr(model, "conv1", None)
    weight = getattr(conv1, "weight", None)
    if weight is None:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        weight = first.weight
    weight = weight.detach().float().cpu()
    columns = int(getattr(model, "kwargs", {}).get("columns", 1)) \
        if getattr(model, "arch", "alexnet") == "alexnet" else 1
    return list(weight.chunk(columns, dim=0)) if columns > 1 else [weight]


def normalise_kernels(kernels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each kernel stretched to [0, 1] over all its weights (one min and max per kernel).

    The display choice of cuda-convnet's and most reproductions' figure 3: contrast is per
    kernel, the three channels of one kernel share it (so colour is kept).
    """
    k = np.asarray(kernels, dtype=np.float64)
    lo = k.min(axis=(1, 2, 3), keepdims=True)
    hi = k.max(axis=(1, 2, 3), keepdims=True)
    return np.where(hi > lo, (k - lo) / np.where(hi > lo, hi - lo, 1.0), 0.5)


def colour_fraction(kernels: torch.Tensor | np.ndarray) -> np.ndarray:
    """(K,) share of each kernel's mean-removed energy off the grey axis (0 grey .. 1 colour)."""
    k = np.asarray(kernels, dtype=np.float64)
    k = k - k.mean(axis=(1, 2, 3), keepdims=True)
    grey = k.mean(axis=1, keepdims=True)  # the projection of each pixel on R = G = B
    total = (k ** 2).sum(axis=(1, 2, 3))
    off = ((k - grey) ** 2).sum(axis=(1, 2, 3))
    return np.where(total > 0, off / np.where(total > 0, total, 1.0), 0.0)


def grid_size(kernels: int, kernel_size: int, cols: int = KERNELS_PER_ROW,
              scale: int = SCALE, gap: int = GAP) -> tuple[int, int]:
    """(width, height) in pixels of the grid of `kernels` kernels (module docstring)."""
    cols = min(cols, kernels)
    rows = math.ceil(kernels / cols)
    cell = kernel_size * scale + gap
    return cols * cell + gap, rows * cell + gap


def kernel_grid(kernels: torch.Tensor | np.ndarray, cols: int = KERNELS_PER_ROW,
                scale: int = SCALE, gap: int = GAP) -> np.ndarray:
    """uint8 (H, W, 3) image of the contrast-normalised kernels, row-major, on white."""
    k = normalise_kernels(kernels)
    n, _, h, w = k.shape
    cols = min(cols, n)
    width, height = grid_size(n, h, cols, scale, gap)
    grid = np.full((height, width, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (h * scale + gap), gap + c * (w * scale + gap)
        img = np.round(k[i].transpose(1, 2, 0) * 255).astype(np.uint8)
        grid[y:y + h * scale, x:x + w * scale] = img.repeat(scale, 0).repeat(scale, 1)
    return grid


def write_kernel_figures(model: nn.Module, out: Path, dpi: int = 100) -> dict:
    """Write fig3_conv1_column{1,2}.png (exact grids) and fig3_kernels.png (labelled panels).

    Returns {'panels': [{'file', 'kernels', 'size', 'colour_fraction_mean', ...}], 'figure'}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    columns = conv1_columns(model)
    panels = []
    grids = []
    for i, kernels in enumerate(columns, start=1):
        grid = kernel_grid(kernels)
        path = out / (f"fig3_conv1_column{i}.png" if len(columns) > 1 else "fig3_conv1.png")
        write_atomic(path, lambda f, grid=grid: Image.fromarray(grid).save(f, format="PNG"))
        frac = colour_fraction(kernels)
        grids.append(grid)
        panels.append({"file": str(path), "kernels": int(kernels.shape[0]),
                       "kernel_shape": list(kernels.shape[1:]),
                       "size": [grid.shape[1], grid.shape[0]],
                       "colour_fraction_mean": float(frac.mean()),
                       "colour_fraction_median": float(np.median(frac)),
                       "colour_fraction": [round(float(f), 4) for f in frac]})
    # whole pixels: 800 wide, each panel in proportion plus 50 pixels for its title
    width_px = 8 * dpi
    height_px = sum(round(g.shape[0] / g.shape[1] * width_px) + dpi // 2 for g in grids)
    fig, axes = plt.subplots(len(grids), 1, figsize=(width_px / dpi, height_px / dpi),
                             dpi=dpi, squeeze=False,
                             gridspec_kw={"height_ratios": [g.shape[0] for g in grids]})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 * dpi / height_px,
                        hspace=0.4 * dpi * len(grids) / height_px)
    for i, (ax, grid, panel) in enumerate(zip(axes[:, 0], grids, panels, strict=True), start=1):
        ax.imshow(grid, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        name = f"column {i}" if len(grids) > 1 else "conv1"
        ax.set_title(f"{name}: {panel['kernels']} kernels, colour fraction mean "
                     f"{panel['colour_fraction_mean']:.2f}", fontsize=9)
    path = out / "fig3_kernels.png"
    try:
        write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return {"panels": panels, "figure": str(path), "figure_size": [width_px, height_px]}
