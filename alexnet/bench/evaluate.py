"""`alexnet bench evaluate`: evaluation speed of the paper net, centre crop beside 10 crops.

The whole evaluation path is timed (store read, crops and mean subtraction by EvalLoader,
forward pass, softmax averaged over crops: alexnet.evaluate.predict_probs) on a synthetic
256x256 store, after one warm-up pass. Ten crops cost about ten forward passes per image; the
ratio of images/s (centre / 10-crop) says how close to that the pipeline comes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet.paper import CROP_SIZE, IMAGE_SIZE, NUM_CLASSES, TEST_CROPS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_eval(model: torch.nn.Module, store: Any, crops: int, batch: int,
               device: torch.device, repeats: int) -> float:
    """Seconds per pass over `store` (best of `repeats`, after one warm-up pass)."""
    from alexnet.evaluate import eval_loader, predict_probs
    from alexnet.model import loader_pad

    loader = eval_loader(store, crops=crops, batch_size=batch, device=device, stats=store.stats,
                         pad=loader_pad(getattr(model, "arch", ""), CROP_SIZE))
    predict_probs(model, loader)  # warm-up: kernels chosen, caches filled
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        predict_probs(model, loader)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench(args: argparse.Namespace) -> dict:
    """Images/s and crops/s of the paper net for 1 and 10 crops on args.device."""
    from alexnet.bench import SMOKE_WIDTH, keep_figures
    from alexnet.data.store import write_store
    from alexnet.evaluate import resolve_device
    from alexnet.model import AlexNet

    device = resolve_device(getattr(args, "device", "auto"))
    quick = bool(getattr(args, "quick", False))
    smoke = bool(getattr(args, "smoke", False))
    if device.type == "cuda":
        images, batch, repeats = (256, 128, 1) if quick else (1024, 128, 3)
    else:
        images, batch, repeats = (4, 4, 1) if quick else (16, 8, 1)
    if smoke:
        images, batch, repeats = 2, 2, 1
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    classes = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(NUM_CLASSES)]
    labels = rng.integers(0, NUM_CLASSES, size=images)
    torch.manual_seed(0)
    model = AlexNet(width=SMOKE_WIDTH if smoke else 1.0).to(device).eval()
    figures = getattr(args, "figures", None)  # alexnet.bench.run's: filled as measured
    result: dict[str, Any] = {} if figures is None else figures
    result.update(device=str(device), images=images, batch_size=batch)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp) / "val", pixels, labels, classes)
        for crops in (1, TEST_CROPS):
            seconds = _time_eval(model, store, crops, batch, device, repeats)
            result[f"crops{crops}_images_per_s"] = images / seconds
            result[f"crops{crops}_crops_per_s"] = images * crops / seconds
            keep_figures()  # in --json now: a run killed later keeps it
    result["images_per_s_ratio_centre_over_10crop"] = (
        result["crops1_images_per_s"] / result[f"crops{TEST_CROPS}_images_per_s"])
    result["crops_per_s_ratio_10crop_over_centre"] = (
        result[f"crops{TEST_CROPS}_crops_per_s"] / result["crops1_crops_per_s"])
    print(f"device {device}, {images} images of {IMAGE_SIZE}x{IMAGE_SIZE}, batch {batch} images")
    for crops in (1, TEST_CROPS):
        print(f"  {crops:>2} crop(s): {result[f'crops{crops}_images_per_s']:10.1f} images/s  "
              f"{result[f'crops{crops}_crops_per_s']:10.1f} crops/s")
    print(f"  centre crop is {result['images_per_s_ratio_centre_over_10crop']:.2f}x faster per "
          f"image; 10 crops run {result['crops_per_s_ratio_10crop_over_centre']:.2f}x the crops/s")
    return result
