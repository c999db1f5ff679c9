"""`alexnet predict`: the five most probable classes of any image files.

The files go through the paper's preprocessing exactly as `alexnet prepare` does it (section
2: shorter side rescaled to 256, central 256x256 patch, or the size of the store the checkpoint
was trained on, read from its mean image; alexnet.data.preprocess.load_image, which
also turns greyscale, CMYK, palette and alpha images into RGB), are written to a temporary
store and read back by the evaluation loader, so prediction and `alexnet evaluate` share every
step: the net's mean image subtracted, the 10 patches of section 4.1 (or the centre one), and
their softmax outputs averaged.

A folder of many files is classified `CHUNK` files at a time: the decoded images (196 KB
each at 256 pixels) and the temporary store hold one chunk, not every file (10,000 files
were 2 GB, twice over while stacked); what is kept of each file until the end is its `--top`
classes and their probabilities.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.data.preprocess import MAX_PIXELS
from alexnet.errors import UserError
from alexnet.paper import IMAGE_SIZE, TEST_CROPS, TOP5

TOP = TOP5  # section 6: the five labels the net considers most probable
BATCH = 32  # images per forward step (x10 crops)
CHUNK = 256  # files decoded and classified at a time (50 MB of 256-pixel images)


def expand_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder stands for the image files in it and below (sorted by path,
    hidden files skipped), so `predict CKPT photos/` classifies a whole folder."""
    from alexnet.data.sources import is_image_name

    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            visible = sorted(p for p in path.rglob("*") if not p.is_dir() and not any(
                part.startswith(".") for part in p.relative_to(path).parts))
            found = [p for p in visible if p.is_file() and is_image_name(p.name)]
            if not found:
                raise UserError(f"{path}: a folder with no image files (.jpg, .png, ...) in it")
            _say_left_out([p for p in visible if not is_image_name(p.name)], path,
                          "without an image extension", "name a file to classify it anyway")
            _say_left_out([p for p in visible if is_image_name(p.name) and not p.is_file()],
                          path, "that are not regular files (a broken link, a pipe, a device)",
                          "give the image files themselves")
            out.extend(found)
        else:
            out.append(path)
    return out


def _say_left_out(files: list[Path], folder: Path, why: str, advice: str) -> None:
    """One notice for the files of `folder` that are not classified (`why`: for what), so that
    none is left out unsaid (named on the command line, any image file is read)."""
    if files:
        names = ", ".join(str(p.relative_to(folder)) for p in files[:3])
        more = f" and {len(files) - 3} more" if len(files) > 3 else ""
        print(f"alexnet predict: notice: {folder}: {len(files)} file(s) {why} left out "
              f"({names}{more}); {advice}", file=sys.stderr)


def load_images(paths: Sequence[str | Path], size: int = IMAGE_SIZE,
                max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 (N, size, size, 3): each file preprocessed as `alexnet prepare` does it, with its
    decompression-bomb limit `max_pixels` (PIL's own limit and warning would come first).

    A missing file or one that is not a usable image raises a UserError naming it.
    """
    from alexnet.data.preprocess import Skip, load_image, pil_settings

    images = np.empty((len(paths), size, size, 3), np.uint8)
    with pil_settings(max_pixels):
        for row, path in enumerate(map(Path, paths)):
            if not path.is_file():
                raise UserError(f"{path}: no such image file")
            try:
                images[row] = load_image(("path", str(path)), size, max_pixels)
            except Skip as reason:
                raise UserError(f"{path}: not a usable image ({reason}); leave it out or give "
                                "another file") from None
    return images


def image_size(ckpt: dict[str, Any]) -> int:
    """The side of the store images the checkpoint's net was trained on (its mean image's),
    so files are rescaled as that store's were; the paper's 256 when the file does not say."""
    mean_image = (ckpt.get("stats") or {}).get("mean_image")
    return int(mean_image.shape[0]) if getattr(mean_image, "ndim", 0) == 3 else IMAGE_SIZE


def predict_images(model: nn.Module, images: np.ndarray, ckpt: dict[str, Any], *,
                   crops: int = TEST_CROPS, device: torch.device | str = "cpu",
                   batch_size: int = BATCH) -> torch.Tensor:
    """(N, C) softmax outputs averaged over the crops of each preprocessed uint8 image
    (`images` at the checkpoint's `image_size`); non-finite outputs are a UserError."""
    from alexnet.data.store import write_store
    from alexnet.evaluate import eval_loader, input_settings, predict_probs

    stats = ckpt.get("stats")
    if stats is None:
        raise UserError("the checkpoint holds no normalisation statistics (its training "
                        "mean image); use a checkpoint written by 'alexnet train'")
    num_classes = len(ckpt.get("classes") or []) or 1
    with tempfile.TemporaryDirectory(prefix="alexnet-predict-") as tmp:
        store = write_store(Path(tmp) / "test", images, np.zeros(len(images), np.int64),
                            [{"wnid": "", "name": ""}] * num_classes, stats=stats)
        loader = eval_loader(store, crops=crops, batch_size=batch_size, device=device,
                             stats=stats, **input_settings(ckpt))
        probs, _ = predict_probs(model, loader)
    if not bool(torch.isfinite(probs).all()):
        raise UserError("the net's outputs are not finite (its weights overflow on these "
                        "images: a diverged run); use best.pt or an earlier checkpoint")
    return probs


def predict_files(model: nn.Module, paths: Sequence[str | Path], ckpt: dict[str, Any], *,
                  crops: int = TEST_CROPS, device: torch.device | str = "cpu", top: int = TOP,
                  max_pixels: int = MAX_PIXELS, chunk: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, k), labels (N, k)): each file's k = `top` most probable classes
    (`top_k`), the files decoded (`load_images`) and classified (`predict_images`) `chunk`
    (None: `CHUNK`) at a time, so that memory holds one chunk of images whatever the number
    of files.

    Every file is checked to exist before any is decoded; a file that does not decode stops
    the command at its chunk, before anything is printed."""
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"{path}: no such image file")
    size, chunk = image_size(ckpt), chunk or CHUNK
    values, labels = [], []
    for start in range(0, len(paths), chunk):
        images = load_images(paths[start:start + chunk], size, max_pixels)
        v, i = top_k(predict_images(model, images, ckpt, crops=crops, device=device), top)
        values.append(v)
        labels.append(i)
    if not values:
        return torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.int64)
    return torch.cat(values), torch.cat(labels)


def top_k(probs: torch.Tensor, top: int = TOP) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, labels) of each row's `top` most probable classes, most probable first
    (equal probabilities in class order)."""
    k = min(top, probs.shape[1])
    values, labels = torch.sort(probs, dim=1, descending=True, stable=True)
    return values[:, :k], labels[:, :k]


def described(values: Sequence[float], labels: Sequence[int], classes: Sequence[Any] | None
              ) -> list[dict[str, Any]]:
    """One image's classes (`top_k`'s row) as label, wnid, name, probability."""
    row = []
    for p, label in zip(values, labels, strict=True):
        c = classes[label] if classes and label < len(classes) else {}
        row.append({"label": label, "wnid": c.get("wnid", ""),
                    "name": c.get("name", f"class {label}"), "probability": p})
    return row


def top_classes(probs: torch.Tensor, classes: Sequence[Any] | None, top: int = TOP
                ) -> list[list[dict[str, Any]]]:
    """For each image, its `top` most probable classes: label, wnid, name, probability."""
    values, labels = top_k(probs, top)
    return [described(v, i, classes)
            for v, i in zip(values.tolist(), labels.tolist(), strict=True)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet predict`."""
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="a checkpoint, or a run folder (its best.pt when there is one)")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                        help="image files (JPEG, PNG, ...; greyscale and CMYK too) or folders "
                        "of them")
    parser.add_argument("--crops", type=int, default=TEST_CROPS, choices=(1, TEST_CROPS),
                        help=f"{TEST_CROPS}: corners, centre and their reflections, the paper's "
                        "test-time average (default, as evaluate); 1: the centre patch")
    parser.add_argument("--top", type=int, default=TOP, help=f"classes shown (default {TOP})")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list [{image, top: [{label, wnid, name, "
                        "probability}]}] and nothing else")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="refuse images with more pixels, as decompression bombs (as "
                        "prepare; default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Classify each image file and print its most probable classes."""
    from alexnet.checkpoint import load, model_from_state
    from alexnet.evaluate import resolve_device

    if args.top < 1:
        raise UserError(f"--top {args.top}: give at least 1")
    if args.max_pixels < 1:
        raise UserError(f"--max-pixels {args.max_pixels}: must be a positive number of pixels "
                        f"(default {MAX_PIXELS})")
    from alexnet.checkpoint import trained_checkpoint

    args.images = expand_folders(args.images)
    device = resolve_device(args.device)
    path, why = trained_checkpoint(args.checkpoint)
    if args.checkpoint.is_dir():
        print(f"{args.checkpoint}: using {path.name} ({why})", file=sys.stderr)
    ckpt = load(path)
    model = model_from_state(ckpt, path, device)
    values, labels = predict_files(model, args.images, ckpt, crops=args.crops, device=device,
                                   top=args.top, max_pixels=args.max_pixels)
    classes = ckpt.get("classes")
    rows = zip(args.images, values.numpy(), labels.numpy(), strict=True)  # a row at a time
    if args.json:  # as json.dump of the whole list writes it, one image at a time
        sys.stdout.write("[")
        for n, (image, v, i) in enumerate(rows):
            sys.stdout.write((", " if n else "") + json.dumps(
                {"image": str(image), "top": described(v.tolist(), i.tolist(), classes)}))
        sys.stdout.write("]\n")
        return 0
    for image, v, i in rows:
        print(f"{image}:")
        for entry in described(v.tolist(), i.tolist(), classes):
            wnid = f" ({entry['wnid']})" if entry["wnid"] not in ("", entry["name"]) else ""
            print(f"  {entry['probability']:7.2%}  {entry['name']}{wnid}")
    return 0
