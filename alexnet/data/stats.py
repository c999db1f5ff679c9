"""The training set's statistics: exact pixel sums, the mean image and the RGB PCA (section 4.1).

All on the 0..255 scale, over every pixel of every image of a split. Each batch of images
gives exact integer sums (int64: per pixel, per channel, and the 3x3 sums of x x^T); sums of
batches are added in a fixed order (store order), and integer addition is exact, so the
result does not depend on chunking, on the number of workers that computed the batches, or on
an interruption and rerun. From the sums: `mean_image` (S, S, 3), `channel_mean` (3,),
`rgb_cov` (3, 3) (the population covariance: divided by the pixel count, computed from Python
integers), its `eigval` (3,) in DESCENDING order and `eigvec` (3, 3) whose COLUMNS are the
matching unit eigenvectors (np.linalg.eigh, each sign chosen so that the column sums to a
positive number; rounding noise below 0 in eigval, as for greyscale data whose covariance has
rank 1, is set to 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from alexnet.errors import UserError

SUM_KEYS = ("image_sum", "channel_sum", "outer_sum", "count")
_BLOCK = 1 << 16  # pixels per float64 block (1.5 MB, within L2); any block below 2^53 / 255^2
# (1.4e11) pixels keeps every partial sum of integer products an exact float64 integer
_IMAGES_U16 = 257  # 257 x 255 < 2^16: per-pixel sums of up to 257 images are exact in uint16
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # x x^T is symmetric: 6 sums


def pixel_sums(images: np.ndarray) -> dict[str, np.ndarray]:
    """Exact integer sums of a uint8 batch (B, S, S, 3): per pixel, per channel, and x x^T.

    The per-pixel sum accumulates in uint16 (exact for up to 257 images) and each sum of
    x x^T is a float64 sum of products of two channel rows (einsum: NumPy's own loop, no BLAS
    threads to take the core of another decoding process); both are exact, and together half
    the time of int64 sums and a (3 x N) matrix product (prepare spends this on every image).
    """
    images = np.asarray(images)
    image_sum = np.zeros(images.shape[1:], np.int64)
    for start in range(0, len(images), _IMAGES_U16):
        image_sum += images[start:start + _IMAGES_U16].sum(axis=0, dtype=np.uint16)
    channel_sum = image_sum.reshape(-1, 3).sum(axis=0)
    outer = np.zeros((3, 3), dtype=np.int64)
    flat = images.reshape(-1, 3)
    rows = np.empty((3, min(_BLOCK, len(flat))), np.float64)  # one block, channel-major
    for start in range(0, len(flat), _BLOCK):
        block = flat[start:start + _BLOCK]
        x = rows[:, :len(block)]
        np.copyto(x, block.T)
        for i, j in _PAIRS:
            outer[i, j] += int(np.einsum("i,i->", x[i], x[j]))
    outer = np.triu(outer) + np.triu(outer, 1).T
    return {"image_sum": image_sum, "channel_sum": channel_sum, "outer_sum": outer,
            "count": np.int64(len(images))}


def empty_sums(size: int) -> dict[str, np.ndarray]:
    """Zero sums for S x S images, to add batches into."""
    return {"image_sum": np.zeros((size, size, 3), np.int64),
            "channel_sum": np.zeros(3, np.int64), "outer_sum": np.zeros((3, 3), np.int64),
            "count": np.int64(0)}


def add_sums(total: dict[str, np.ndarray], part: dict[str, np.ndarray]) -> None:
    """total += part, in place (exact integer arithmetic)."""
    for key in ("image_sum", "channel_sum", "outer_sum"):
        total[key] += part[key]
    total["count"] = np.int64(total["count"] + part["count"])


def merge_sums(size: int, parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The sums of `parts`, added in the order given."""
    total = empty_sums(size)
    for part in parts:
        add_sums(total, part)
    return total


def stats_from_sums(sums: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean image, channel mean, RGB covariance and its eigen-decomposition from exact sums."""
    n_images = int(sums["count"])
    if n_images == 0:
        raise UserError("cannot compute statistics of an empty split: no readable images")
    size = sums["image_sum"].shape[0]
    n = n_images * size * size  # pixels
    s = [int(v) for v in sums["channel_sum"]]
    # Covariance from Python integers: n^2 cov = n sum(x x^T) - sum(x) sum(x)^T, exactly.
    cov = np.array([[(n * int(sums["outer_sum"][i, j]) - s[i] * s[j]) / (n * n)
                     for j in range(3)] for i in range(3)], dtype=np.float64)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]  # -1e-12 -> 0
    eigvec = eigvec * np.where(eigvec.sum(axis=0) < 0, -1.0, 1.0)
    return {
        "mean_image": sums["image_sum"].astype(np.float64) / n_images,
        "channel_mean": np.array(s, dtype=np.float64) / n,
        "rgb_cov": cov,
        "eigval": eigval,
        "eigvec": eigvec,
        "pixels": n,
    }


def compute_stats(images: np.ndarray, batch: int = 64) -> dict[str, Any]:
    """The statistics of a uint8 (N, S, S, 3) array, as the store writer computes them."""
    return stats_from_sums(merge_sums(images.shape[1], (
        pixel_sums(images[start:start + batch]) for start in range(0, len(images), batch))))


def stats_to_json(stats: dict[str, Any]) -> dict[str, Any]:
    """The header's form of the statistics (the mean image lives in its own .npy file)."""
    return {key: np.asarray(value).tolist() for key, value in stats.items()
            if key != "mean_image"}


def stats_from_json(saved: dict[str, Any], mean_image: np.ndarray) -> dict[str, Any]:
    """Statistics as NumPy arrays from the header's form and the mean image."""
    stats: dict[str, Any] = {key: np.asarray(value, np.float64) for key, value in saved.items()}
    stats["pixels"] = int(saved.get("pixels", 0))
    stats["mean_image"] = mean_image
    return stats
