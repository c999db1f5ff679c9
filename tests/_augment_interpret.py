"""Runs the one-pass Triton augmentation through Triton's interpreter on CPU tensors;
tests/test_augment_triton.py starts it in a child process, because TRITON_INTERPRET=1 must be
set before triton is imported and must not reach the rest of the suite.

Usage: TRITON_INTERPRET=1 python tests/_augment_interpret.py OUT
writes OUT (JSON): for each case whether the kernel's batch equals the torch path's bit for
bit (values, shape and strides), and the result of `triton_augment_verified`.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from alexnet.data import augment
from alexnet.model import conv1_pad
from alexnet.paper import CROP_SIZE, IMAGE_SIZE, TEST_CROPS


def stats_of(images: np.ndarray) -> dict[str, np.ndarray]:
    pixels = images.reshape(-1, 3).astype(np.float64)
    val, vec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    return {"mean_image": images.mean(0), "channel_mean": pixels.mean(0),
            "eigval": val[::-1].copy(), "eigvec": vec[:, ::-1].copy()}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)


def cases() -> dict[str, bool]:
    """Every layout, mean, memory format and switch on small images, with and without
    conv1's padding; the paper's 256 -> 224 (and 227 with the padding) for training and for
    the 10 test patches."""
    rng = np.random.default_rng(0)
    out: dict[str, bool] = {}
    small = rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    stats = augment.device_stats(stats_of(small), "cpu")
    nhwc = torch.from_numpy(small)
    for layout, x in (("nhwc", nhwc), ("nchw", nhwc.permute(0, 3, 1, 2).contiguous())):
        for mean in ("image", "channel", "none"):
            for cl in (False, True):
                for flip, pca in ((True, True), (False, False)):
                    got, want = (augment.train_batch(
                        x, torch.Generator().manual_seed(4), stats, crop_size=14, mean=mean,
                        channels_last=cl, flip=flip, pca=pca, backend=b)
                        for b in ("triton", "torch"))
                    out[f"train.{layout}.{mean}.cl{int(cl)}.flip{int(flip)}"] = same(got, want)
            for crops in (1, TEST_CROPS):
                got, want = (augment.eval_batch(x, stats, crops=crops, crop_size=14, mean=mean,
                                                backend=b) for b in ("triton", "torch"))
                out[f"eval.{layout}.{mean}.crops{crops}"] = same(got, want)
        for cl in (False, True):  # conv1's padding written with the patches
            got, want = (augment.train_batch(x, torch.Generator().manual_seed(6), stats,
                                             crop_size=13, channels_last=cl, pad=3, backend=b)
                         for b in ("triton", "torch"))
            out[f"train.{layout}.pad3.cl{int(cl)}"] = same(got, want)
        got, want = (augment.eval_batch(x, stats, crops=TEST_CROPS, crop_size=13, pad=3,
                                        backend=b) for b in ("triton", "torch"))
        out[f"eval.{layout}.pad3.crops10"] = same(got, want)
        for cl in (False, True):  # into memory given (`out`), its margins and patches written
            memory = augment.batch_memory(5, 13, 3, cl).fill_(float("nan"))
            got = augment.train_batch(x, torch.Generator().manual_seed(6), stats, crop_size=13,
                                      channels_last=cl, pad=3, backend="triton", out=memory)
            want = augment.train_batch(x, torch.Generator().manual_seed(6), stats,
                                       crop_size=13, channels_last=cl, pad=3, backend="torch")
            out[f"train.{layout}.out.cl{int(cl)}"] = same(got, want) and (
                got.data_ptr() == memory.data_ptr())
    paper = rng.integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    stats = augment.device_stats(stats_of(paper), "cpu")
    x = torch.from_numpy(paper)
    for pad in (0, conv1_pad(CROP_SIZE)):
        got, want = (augment.train_batch(x, torch.Generator().manual_seed(5), stats,
                                         crop_size=CROP_SIZE, channels_last=True, pad=pad,
                                         backend=b)
                     for b in ("triton", "torch"))
        out[f"train.paper.pad{pad}"] = same(got, want)
    got, want = (augment.eval_batch(x[:1], stats, crops=TEST_CROPS, crop_size=CROP_SIZE,
                                    pad=conv1_pad(CROP_SIZE), backend=b)
                 for b in ("triton", "torch"))
    out["eval.paper.crops10.pad3"] = same(got, want)
    return out


if __name__ == "__main__":
    result = {"cases": cases(),
              "verified": augment.triton_augment_verified(torch.device("cpu"))}
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
