"""`alexnet evaluate`: top-1/top-5 error as the paper computes it, centre or 10 crops, ensembles.

Section 6 of the paper: the top-5 error is "the fraction of test images for which the correct
label is not among the five labels considered most probable by the model". With 10 crops
(section 4.1) the SOFTMAX outputs of the four corner patches, the centre patch and their
reflections are averaged (not the logits); an ensemble of CNNs averages the (crop-averaged)
softmax outputs of each net. Each net is fed with the normalisation statistics it was trained
with (its checkpoint's), falling back to the store's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.atomic import (
    LOCK,
    FolderLock,
    check_output,
    ensure_folder,
    read_json_object,
    write_json,
)
from alexnet.errors import UserError
from alexnet.paper import (
    CENTRE_CROP_REPRODUCTIONS,
    CROP_SIZE,
    ILSVRC_TEST_IMAGES,
    ILSVRC_VAL_IMAGES,
    RESULTS,
    TEST_CROPS,
    TOP5,
)
from alexnet.progress import Progress

EVAL_BATCH_SIZE = 128  # images per step (x10 crops with --crops 10); not a paper number
CONFUSED_PAIRS = 20  # how many most-confused (true, predicted) pairs the report keeps
RANK_ELEMENTS = 1 << 20  # probabilities ranked at a time (rows x classes): bounded temporaries


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA where available, else the CPU (alexnet.distributed.pick_device)."""
    from alexnet.distributed import pick_device

    return pick_device(name)[0]


def topk_errors(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                ks: Sequence[int] = (1, TOP5)) -> dict[str, float]:
    """{'top1_error', 'top5_error', ...}: fraction of images whose label is not in the top k.

    A tie counts against the net: the true label is in the top k only when fewer than k other
    classes have a probability at least as high as its own, so a net with constant output
    scores 1 - 0 = 100% error rather than 0% (the ordering of tied classes is otherwise
    arbitrary). No images: NaN, as `error_rates` (no figure, rather than a 0% error).
    """
    return error_rates(topk_wrong(probs, labels, ks), len(labels))


def topk_wrong(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
               ks: Sequence[int] = (1, TOP5)) -> dict[str, int]:
    """{'top1_wrong', 'top5_wrong', ...}: how many images' label is not in the top k
    (`topk_errors`'s counts; counts of disjoint shares of a split add up exactly)."""
    probs = torch.as_tensor(probs)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"probs (N, C) and labels (N,) expected, got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    rank = true_rank(probs, labels)
    return {f"top{k}_wrong": int((rank >= k).sum()) for k in ks}


def true_rank(probs: torch.Tensor, labels: torch.Tensor,
              chunk: int | None = None) -> torch.Tensor:
    """(N,) how many other classes are at least as probable as the true one (0: top-1).

    An image whose probabilities hold a NaN or inf (a diverged net) ranks beyond every k (the
    largest int64; a NaN compares false with everything): an error at every k, never correct,
    also at k above the number of classes (top-5 of 3 classes). Computed `chunk` rows at a time
    (default: RANK_ELEMENTS // C), so its temporaries do not grow with N (1.28M x 1000 once).
    """
    step = max(1, RANK_ELEMENTS // max(1, probs.shape[1]) if chunk is None else chunk)
    rank = torch.empty(probs.shape[0], dtype=torch.int64, device=probs.device)
    worst = torch.iinfo(torch.int64).max
    for start in range(0, probs.shape[0], step):
        rows, y = probs[start:start + step], labels[start:start + step]
        true = rows.gather(1, y[:, None])
        part = torch.count_nonzero(rows >= true, dim=1) - 1  # .sum(1) made an int64 copy
        part[~torch.isfinite(rows).all(1)] = worst
        rank[start:start + step] = part
    return rank


@torch.inference_mode()
def predict_probs(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  progress: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs (N, C) float32, labels (N,) int64) on the CPU, softmax averaged over crops.

    `progress` names a progress display (bar or plain lines with ETA; alexnet.progress).

    The loader yields image-major batches: x (B * crops, 3, H, W) and y (B,), the crops of
    image b being x[b * crops:(b + 1) * crops] (EvalLoader's order). The model's mode is
    restored afterwards, so training can call this between epochs. Where the loader says how
    many images it yields (an EvalLoader: `loader_images`), the batches are written into one
    (N, C) tensor, held once rather than as batches and their concatenation.

    The loader's iterator is closed here, however the loop ends: its teardown (the read-ahead
    threads joined) then runs while a Ctrl-C or SIGTERM is being handled, where a second one
    is a plain exception, and not in the generator's finaliser, where Python could only print
    it ("Exception ignored in ...") and go on.
    """
    was_training = model.training
    model.eval()
    images = loader_images(loader)
    filled = _Filled(images)
    total = len(loader) if hasattr(loader, "__len__") else 0
    bar = Progress(total, progress or "", unit="batch", enabled=progress is not None)
    try:
        with closed_after(loader) as batches:
            for x, y in batches:
                bar.update()
                batch = y.shape[0]
                if batch == 0:
                    continue
                if x.shape[0] % batch:
                    raise ValueError(f"{x.shape[0]} crops for {batch} images: not image-major")
                logits = model(x).float()
                probs = torch.softmax(logits, dim=1)
                probs = probs.view(batch, x.shape[0] // batch, -1).mean(dim=1)
                filled.add(probs.cpu(), y.cpu().to(torch.int64))
    finally:
        bar.close()
        model.train(was_training)
    return filled.result()


def loader_images(loader: Any) -> int | None:
    """How many images `loader` yields, where it says beforehand (its `images`, as an
    EvalLoader's), so that predict_probs can fill one tensor; None where unknown."""
    images = getattr(loader, "images", None)
    return images if isinstance(images, int) and images >= 0 else None


class _Filled:
    """predict_probs' (probs, labels), batch after batch: written into one tensor allocated at
    the first batch when the number of images is known (no second copy at the end), else
    appended and concatenated; a loader that yields more than it said goes on in a list.
    Both give ordinary tensors, not inference tensors, which ensemble_probs sums in place."""

    def __init__(self, images: int | None) -> None:
        self.images, self.done = images, 0
        self.probs: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.more: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep one batch's (B, C) probabilities and (B,) labels."""
        end = self.done + probs.shape[0]
        if self.images is None or self.more or end > self.images:
            self.more.append((probs, labels))
            return
        if self.probs is None or self.labels is None:
            with torch.inference_mode(False):
                self.probs = torch.empty(self.images, probs.shape[1], dtype=probs.dtype)
                self.labels = torch.empty(self.images, dtype=torch.int64)
        self.probs[self.done:end] = probs
        self.labels[self.done:end] = labels
        self.done = end

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs (N, C), labels (N,)): what was kept, in order."""
        parts = [(self.probs[:self.done], self.labels[:self.done])] \
            if self.probs is not None and self.labels is not None else []
        if not self.more:
            return parts[0] if parts else (torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64))
        parts += self.more
        with torch.inference_mode(False):
            return torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts])


@contextlib.contextmanager
def closed_after(iterable: Iterable[Any]) -> Iterator[Iterator[Any]]:
    """The iterator of `iterable`, closed as the block ends when it can be (a generator, an
    EvalLoader's): by the code that stopped iterating, not by the garbage collector."""
    iterator = iter(iterable)
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def eval_loader(store: Any, *, crops: int, batch_size: int, device: torch.device | str,
                 stats: dict | None, mean: str = "image", crop: int = CROP_SIZE,
                 indices: Sequence[int] | None = None, pad: int = 0) -> Any:
    """The EvalLoader of `store` for `crops` 1 or 10 (a UserError for any other number);
    `pad`: zeros after each patch's last row and column (model.loader_pad)."""
    from alexnet.data.loader import EvalLoader

    if crops not in (1, TEST_CROPS):
        raise UserError(f"--crops {crops}: use 1 (centre patch) or {TEST_CROPS} "
                        "(corners, centre and their reflections)")
    return EvalLoader(store, batch_size, crops=crops, crop=crop, mean=mean, stats=stats,
                      device=device, indices=indices, pad=pad)


class Stopped(Exception):
    """`evaluate_model`'s `stop` said to stop before the last batch (training's validation
    under Ctrl-C or SIGTERM: it is redone on resume)."""


def evaluate_model(model: nn.Module, store: Any, *, crops: int = TEST_CROPS,
                   batch_size: int = EVAL_BATCH_SIZE, device: torch.device | str = "cpu",
                   stats: dict | None = None, mean: str = "image", crop: int = CROP_SIZE,
                   indices: Sequence[int] | None = None, progress: str | None = None,
                   stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """{'top1_error', 'top5_error', 'top1_wrong', 'top5_wrong', 'images', 'crops'} of `model`
    (already on `device`) on `store`.

    `stats` are the normalisation statistics the model was trained with (the store's when None),
    `mean` and `crop` how it was trained (config data.mean, data.crop); `indices` restricts the
    evaluation to those images. Errors are fractions in [0, 1], `*_wrong` their counts (what
    shares evaluated apart sum). `stop`, asked before each batch, ends the evaluation early by
    raising Stopped.
    """
    from alexnet.model import loader_pad

    loader = eval_loader(store, crops=crops, batch_size=batch_size, device=device, stats=stats,
                          mean=mean, crop=crop, indices=indices,
                          pad=loader_pad(getattr(model, "arch", ""), crop))
    probs, labels = predict_probs(model, loader if stop is None else _UntilStop(loader, stop),
                                  progress)
    wrong = topk_wrong(probs, labels) if len(labels) else {"top1_wrong": 0, "top5_wrong": 0}
    return {**error_rates(wrong, len(labels)), **wrong, "images": int(len(labels)),
            "crops": int(crops)}


def error_rates(wrong: dict[str, int], images: int) -> dict[str, float]:
    """{'top1_error', ...} of the counts `wrong` ({'top1_wrong', ...}) over `images` images;
    NaN for none (no figure, rather than a 0% error)."""
    return {key.replace("_wrong", "_error"): count / images if images else float("nan")
            for key, count in wrong.items()}


class _UntilStop:
    """The batches of `loader` (its length and image count too, for the progress and
    predict_probs) until `stop()` is true before one: then Stopped, the loader's iterator
    closed first (its read-ahead ended)."""

    def __init__(self, loader: Any, stop: Callable[[], bool]) -> None:
        self.loader, self.stop = loader, stop
        self.images = getattr(loader, "images", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        with closed_after(self.loader) as batches:
            for batch in batches:
                if self.stop():
                    raise Stopped
                yield batch


def class_names(classes: Sequence[Any] | None) -> list[str] | None:
    """Identifiers of a class list (wnid where given, else name), to compare class lists."""
    if classes is None:
        return None
    out = []
    for c in classes:
        if isinstance(c, dict):
            out.append(str(c.get("wnid") or c.get("name")))
        else:
            out.append(str(c))
    return out


def class_difference(ours: Sequence[str], theirs: Sequence[str], whose: str) -> str:
    """How two differing class lists (`class_names`) differ: the counts, or else the first
    class whose name differs ("its class 0 is 'a', the store's is 'b'")."""
    if len(ours) != len(theirs):
        return f"its {len(ours)} classes differ from {whose}'s {len(theirs)}"
    i = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
    a, b = ours[i], theirs[i]
    if unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b):  # print alike
        return (f"its class {i} is {ascii(a)}, {whose}'s is {ascii(b)}: the same name in "
                "another Unicode normalisation (NFC/NFD); prepare the store from folders "
                "named as the run's were")
    return f"its class {i} is {a!r}, {whose}'s is {b!r} (same count, other names)"


def input_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """{'mean', 'crop', 'pad'}: how the checkpoint's net saw its inputs (config data.mean,
    data.crop) and the zeros its loader adds to each patch (model.loader_pad of its arch).

    The paper's choices (mean image subtracted, section 2; 224 crops, section 4.1) when the
    checkpoint's config does not say.
    """
    from alexnet.checkpoint import trained_mean
    from alexnet.model import loader_pad

    data = (ckpt.get("config") or {}).get("data") or {}
    crop = int(data["crop"]) if isinstance(data.get("crop"), int) else CROP_SIZE
    return {"mean": trained_mean(ckpt), "crop": crop,
            "pad": loader_pad(str(ckpt.get("arch")), crop)}


def check_classes(paths: Sequence[Any], class_lists: Sequence[Any],
                  store_classes: Sequence[Any] | None) -> None:
    """A UserError unless the checkpoints' class lists agree with each other and the store's."""
    store_ids = class_names(store_classes)
    reference: tuple[Any, list[str]] | None = None
    for path, classes in zip(paths, class_lists, strict=True):
        ids = class_names(classes)
        if ids is None:
            continue
        if reference is not None and ids != reference[1]:
            raise UserError(f"{path}: {class_difference(ids, reference[1], str(reference[0]))}"
                            "; an ensemble needs nets trained on the same class list")
        reference = reference or (path, ids)
        if store_ids is not None and ids != store_ids:
            raise UserError(f"{path}: {class_difference(ids, store_ids, 'the store')}; "
                            "evaluate on a store of the same classes")


def net_stats(ckpt: dict[str, Any], store: Any) -> dict[str, Any] | None:
    """The statistics a checkpoint's net is fed with: its own, else (a file without them) the
    store's."""
    return ckpt.get("stats") or getattr(store, "stats", None)


def mixed_sizes(paths: Sequence[Any], ckpts: Sequence[dict[str, Any]]) -> str:
    """The clause saying that the nets were trained on images of different sizes, when the
    mean images of those that subtract one differ in side (no one store fits them all); else
    an empty string."""
    from alexnet.predict import image_size

    sizes = {str(path): image_size(ckpt) for path, ckpt in zip(paths, ckpts, strict=True)
             if input_settings(ckpt)["mean"] == "image"
             and (ckpt.get("stats") or {}).get("mean_image") is not None}
    if len(set(sizes.values())) < 2:
        return ""
    listed = ", ".join(f"{path}: {size}" for path, size in sizes.items())
    return (f"; but these nets were trained on images of different sizes ({listed}) and "
            "cannot be evaluated on one store: evaluate each on a store of its size")


def check_inputs(paths: Sequence[Any], ckpts: Sequence[dict[str, Any]], store: Any) -> None:
    """A UserError naming the first checkpoint whose inputs `store` cannot give (its crop, its
    statistics: the loader's own checks, which its loader would make only once the nets
    before it had run, naming none), before any net runs."""
    from alexnet.data.loader import check_crop, check_stats

    size = store.image_size
    for path, ckpt in zip(paths, ckpts, strict=True):
        settings = input_settings(ckpt)
        try:
            check_crop(settings["crop"], size)
            check_stats(net_stats(ckpt, store), settings["mean"], False, size)
        except UserError as err:
            raise UserError(f"{path}: {err}{mixed_sizes(paths, ckpts)}") from None


def ensemble_probs(checkpoints: Sequence[str | os.PathLike], store: Any, *, crops: int = 1,
                   batch_size: int = EVAL_BATCH_SIZE, device: torch.device | str = "cpu",
                   loaded: Sequence[dict[str, Any]] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, labels): softmax outputs averaged over crops, then over the checkpoints' nets.

    Each file is read once (memory-mapped; `loaded` when the caller has read them) and one
    net is built at a time. Checkpoints whose class lists differ from each other or from the
    store, or whose crop or statistics the store does not fit, are refused with a UserError
    before any net runs.
    """
    from alexnet.checkpoint import model_from_state

    if not checkpoints:
        raise UserError("give at least one checkpoint")
    ckpts = list(loaded) if loaded is not None else load_all(checkpoints)
    check_classes(checkpoints, [c.get("classes") for c in ckpts],  # before any net runs
                  getattr(store, "classes", None))
    check_inputs(checkpoints, ckpts, store)
    total: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    for path, ckpt in zip(checkpoints, ckpts, strict=True):
        model = model_from_state(ckpt, path, device)
        loader = eval_loader(store, crops=crops, batch_size=batch_size, device=device,
                              stats=net_stats(ckpt, store), **input_settings(ckpt))
        probs, y = predict_probs(model, loader, progress=f"evaluate {path}")
        del model
        total = probs if total is None else total.add_(probs)  # in place: no third N x C
        del probs
        labels = y
    assert total is not None and labels is not None
    return total.div_(len(checkpoints)), labels


def per_class_report(probs: torch.Tensor, labels: torch.Tensor,
                     classes: Sequence[Any] | None, pairs: int = CONFUSED_PAIRS
                     ) -> dict[str, Any]:
    """Top-1/top-5 error of each class, and the most frequent (true, predicted) confusions."""
    num_classes = probs.shape[1]
    names = [c.get("name", str(i)) if isinstance(c, dict) else str(c)
             for i, c in enumerate(classes)] if classes else [str(i) for i in range(num_classes)]
    wnids = [c.get("wnid", "") if isinstance(c, dict) else "" for c in classes] if classes \
        else [""] * num_classes
    rank = true_rank(probs, labels)
    predicted = probs.argmax(1)

    def per_class(flags: torch.Tensor) -> list[int]:
        """How many images of each class `flags` marks (one pass, not a mask per class)."""
        return torch.bincount(labels[flags], minlength=num_classes).tolist()

    images, top1, top5 = (per_class(torch.ones_like(labels, dtype=torch.bool)),
                          per_class(rank >= 1), per_class(rank >= TOP5))
    rows = [{"label": c, "wnid": wnids[c], "name": names[c], "images": n,
             "top1_error": top1[c] / n if n else None, "top5_error": top5[c] / n if n else None}
            for c, n in enumerate(images)]
    wrong = predicted != labels
    counts = torch.bincount(labels[wrong] * num_classes + predicted[wrong],
                            minlength=num_classes * num_classes)
    cells = counts.nonzero().flatten()  # the pairs that occur, by count, then by index
    cells = cells[torch.argsort(-counts[cells], stable=True)][:pairs].tolist()
    confused = []
    for i in cells:
        t, p = divmod(i, num_classes)
        confused.append({"true": t, "true_name": names[t], "predicted": p,
                         "predicted_name": names[p], "images": int(counts[i]),
                         "fraction_of_class": int(counts[i]) / max(1, images[t])})
    return {"classes": rows, "most_confused": confused}


PAPER_SETS = {"ilsvrc2010": "ilsvrc2010", "ilsvrc2012": "ilsvrc2012",
              "kaggleclsloc": "ilsvrc2012"}


def paper_set(source: str | None) -> str | None:
    """The paper's name of the data a store was prepared from ('ilsvrc2012', ...), or None.

    The Kaggle CLS-LOC copy holds the ILSVRC-2012 images (alexnet.data.sources).
    """
    key = "".join(ch for ch in (source or "").lower() if ch.isalnum())
    return PAPER_SETS.get(key)


def paper_rows(source: str | None, split: str, checkpoints: int, crops: int
               ) -> tuple[str | None, dict[str, tuple[float, float]], tuple[str, ...]]:
    """(set key, that set's rows of the paper's table, the names of the rows that compare:
    the paper's, or for a centre-crop net on ILSVRC-2012 val the CENTRE_CROP_REPRODUCTIONS),
    or no set.

    The 2012 table does not say its crops and is most likely 10-crop (docs/evaluation.md), so
    its rows compare with 10-crop runs only.
    """
    key = f"{paper_set(source)}-{split}"
    rows = RESULTS.get(key)
    if rows is None:
        return None, {}, ()
    if key == "ilsvrc2010-test":
        best = "1 CNN, 10-crop" if crops == TEST_CROPS else "1 CNN, centre crop"
        return key, rows, (best,) if checkpoints == 1 else ()
    if crops == 1:
        return key, rows, tuple(CENTRE_CROP_REPRODUCTIONS) if checkpoints == 1 else ()
    best = {1: "1 CNN", 5: "5 CNNs", 7: "7 CNNs"}.get(checkpoints)
    return key, rows, (best,) if best is not None and crops == TEST_CROPS else ()


def load_all(checkpoints: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Each checkpoint read once, its tensors memory-mapped until its net is built."""
    from alexnet.checkpoint import load

    return [load(p, mmap=True) for p in checkpoints]


def recorded_store(ckpt: dict[str, Any], checkpoint: str | os.PathLike,
                   option: str = "--data") -> Path:
    """The store the loaded checkpoint `ckpt` (read from `checkpoint`) was trained on (config
    data.store), or a UserError saying to give `option` when it is not recorded or gone."""
    store = ((ckpt.get("config") or {}).get("data") or {}).get("store")
    if not store:
        raise UserError(f"{checkpoint} records no store; give {option} STORE")
    if not Path(store).is_dir():
        raise UserError(f"{checkpoint} was trained on {store}, which is not there now; "
                        f"give {option} STORE")
    return Path(store)


def store_source(store: Any) -> str | None:
    """The data source recorded in the store's header ('ilsvrc2012', 'cifar10', ...), if any."""
    source = (getattr(store, "meta", None) or {}).get("source")
    if isinstance(source, dict):
        source = source.get("kind") or source.get("name")
    return source if isinstance(source, str) else None


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_table(result: dict[str, Any], source: str | None, split: str,
                 num_classes: int | None = None) -> str:
    """The figures beside the paper's for the same set, or a line saying there are none.

    Top-5 error is left out with 5 classes or fewer (it is 0 by construction there).
    """
    n_ckpt = len(result["checkpoints"])
    crops = "centre crop" if result["crops"] == 1 else f"{result['crops']} crops"
    ours = f"this run ({n_ckpt} CNN{'s' if n_ckpt > 1 else ''}, {crops})"
    if num_classes is not None and num_classes <= 5:
        return "\n".join([f"{'':<44}{'top-1 error':>12}",
                          f"{ours:<44}{100 * result['top1_error']:>11.2f}%",
                          f"({num_classes} classes: top-5 error is 0 by construction, not shown)",
                          f"{result['images']} images, {plural(result['crops'], 'crop')} each"])
    key, rows, marked = paper_rows(source, split, n_ckpt, result["crops"])
    names = {name: f"paper {key}: {name}" for name in rows} if key is not None else {}
    others = CENTRE_CROP_REPRODUCTIONS if key == "ilsvrc2012-val" else {}
    names.update({name: f"centre-crop reproduction: {name}" for name in others})
    width = max([44, *(len(label) + 2 for label in names.values())])  # the figures line up
    lines = [f"{'':<{width}}{'top-1 error':>12}{'top-5 error':>12}",
             f"{ours:<{width}}{100 * result['top1_error']:>11.2f}%"
             f"{100 * result['top5_error']:>11.2f}%"]
    if key is None:
        lines.append(f"(no paper figure for {source or 'this data'} {split}: the paper reports "
                     "ILSVRC-2010 test and ILSVRC-2012 val)")
    else:
        for name, (top1, top5) in {**rows, **others}.items():
            mark = " <-" if name in marked else ""
            lines.append(f"{names[name]:<{width}}{top1:>11.1f}%{top5:>11.1f}%{mark}")
        if key == "ilsvrc2012-val":
            top1s = [top1 for top1, _ in CENTRE_CROP_REPRODUCTIONS.values()]
            lines.append("(the 2012 table does not say how many crops; most likely 10: single-crop "
                         f"reproductions land at {min(top1s)}-{max(top1s)}% top-1)")
            lines.append("(its rows are marked for --crops 10 runs; a centre-crop net is marked "
                         "against the reproductions)")
        whole = {"val": ILSVRC_VAL_IMAGES, "test": ILSVRC_TEST_IMAGES}.get(split)
        if whole is not None and result["images"] < whole:
            lines.append(f"(on {result['images']:,} of the set's {whole:,} images: the paper's "
                         "figures are on all of them)")
    lines.append(f"{result['images']} images, {plural(result['crops'], 'crop')} each")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet evaluate`."""
    parser.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT",
                        help="one checkpoint or run folder (its best.pt when there is one, "
                        "else checkpoint.pt), or several: their softmax outputs are averaged")
    parser.add_argument("--data", type=Path, default=None,
                        help="a prepared store folder (default: the store the first "
                        "checkpoint was trained on)")
    parser.add_argument("--split", default="auto", choices=("auto", "train", "val", "test"),
                        help="which split (auto: val if the store has one, else test; the "
                        "paper's 2010 figures are on test)")
    parser.add_argument("--crops", type=int, default=TEST_CROPS, choices=(1, TEST_CROPS),
                        help=f"{TEST_CROPS}: corners, centre and their reflections, softmax "
                        "averaged, the paper's test procedure (default); 1: the centre patch, "
                        f"{TEST_CROPS}x fewer forward passes")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help=f"images per step (default {EVAL_BATCH_SIZE})")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--json", action="store_true",
                        help="print only a JSON object of the figures on stdout")
    parser.add_argument("--out", type=Path, default=None,
                        help="per-class errors and most confused pairs (JSON); default beside "
                        "the first checkpoint")


def default_report_path(checkpoints: Sequence[Path], split: str, crops: int,
                        store: str | None = None) -> Path:
    """Where the per-class report goes when --out is not given: beside the first checkpoint.

    `store`, the name of a store other than the one the checkpoint was trained on, goes into
    the name, so that a report on another store does not replace the one on the run's own;
    for an ensemble, `-ensembleN.HASH` (`ensemble_tag`) names the other nets, so that another
    ensemble's report does not replace it either.
    """
    checkpoint = Path(checkpoints[0])
    base, stem = (checkpoint, "checkpoint") if checkpoint.is_dir() else \
        (checkpoint.parent, checkpoint.stem)
    tag = f"-ensemble{len(checkpoints)}.{ensemble_tag(checkpoints[1:])}" \
        if len(checkpoints) > 1 else ""
    where = f"{store}." if store else ""
    return base / f"{stem}{tag}.{where}{split}.{crops}crop.per-class.json"


def ensemble_tag(others: Sequence[Path]) -> str:
    """8 hex digits of the SHA-256 of the resolved paths of an ensemble's other checkpoints,
    sorted: the same for the same nets however they are spelt or ordered, else different."""
    names = sorted(os.fsencode(Path(p).resolve()) for p in others)
    return hashlib.sha256(b"\0".join(names)).hexdigest()[:8]


def other_store(ckpt: dict[str, Any], data: Path | None) -> str | None:
    """The folder name of store `data` when it was given and is not the one the checkpoint
    records (None for its own store, when none was given or the checkpoint records none)."""
    own = ((ckpt.get("config") or {}).get("data") or {}).get("store")
    if data is None or not own or Path(own).resolve() == Path(data).resolve():
        return None
    return Path(data).resolve().name


def is_report(path: Path) -> bool:
    """Whether `path` holds an earlier per-class report of `run` (what --out may replace)."""
    data = read_json_object(path) or {}
    return {"split", "checkpoints", "classes", "most_confused"} <= data.keys()


def report_lock(out: Path, given: bool) -> FolderLock:
    """The lock of report `out` (`FolderLock.beside`), held from before the evaluation until
    the report is written: a second `alexnet evaluate` writing the same report is refused at
    once, so the report named on the screen is the one this command computed (`given`:
    whether --out named it, else it is the default beside the first checkpoint)."""
    name, advice = (f"--out {out}", "choose another --out") if given else \
        (str(out), "give --out elsewhere")
    return FolderLock.beside(out, f"{name}: another `alexnet evaluate` is writing this "
                             f"report; wait for it to end, or {advice}")


def check_not_training(folder: Path, given: bool) -> None:
    """Refuse at once a report written into a run folder that `alexnet train` holds (its
    RUN/.lock): its best.pt and checkpoint.pt are replaced every epoch, so a report beside
    them would soon describe a net the folder no longer holds. A checkpoint of a training run
    may still be evaluated with --out elsewhere: train replaces it by renaming (atomic), so
    it is read whole, either the earlier epoch's or the new one."""
    from alexnet.training.run_folder import RunFiles

    if not RunFiles(folder).config.is_file() or not (folder / LOCK).is_file():
        return
    where = "--out" if given else "the report's folder (beside the checkpoint)"
    with contextlib.suppress(OSError):  # no lock can be taken: no run holds it either
        FolderLock(folder, f"{folder}: {where} is a run folder that an `alexnet train` is "
                   "training into (its best.pt and checkpoint.pt change every epoch); "
                   "evaluate when it ends, or give --out outside the run folder to evaluate "
                   "its checkpoint as it is now").acquire().release()


def check_distinct(paths: Sequence[Path], given: Sequence[Path]) -> None:
    """Refuse a checkpoint file given twice (`paths`: the files `given` stand for, a run
    folder its `trained_checkpoint`): averaged with itself it is one net, not an ensemble."""
    seen: dict[Path, Path] = {}
    for path, name in zip(paths, given, strict=True):
        resolved = path.resolve()
        if resolved in seen:
            same = "given twice" if seen[resolved] == name else \
                f"the same checkpoint as {seen[resolved]}"
            raise UserError(f"{name}: {same} ({resolved}); an ensemble averages different "
                            "nets: give each checkpoint once")
        seen[resolved] = name


def run(args: argparse.Namespace) -> int:
    """Evaluate the checkpoints on one split; print the table (or JSON) and write the report."""
    from alexnet.data.store import open_split

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give a positive number of images")
    device = resolve_device(args.device)
    from alexnet.checkpoint import trained_checkpoint

    chosen = [trained_checkpoint(p) for p in args.checkpoints]
    check_distinct([path for path, _ in chosen], args.checkpoints)
    for given, (path, why) in zip(args.checkpoints, chosen, strict=True):
        if given.is_dir():
            print(f"{given}: evaluating {path.name} ({why})", file=sys.stderr)
    args.checkpoints = [path for path, _ in chosen]
    loaded = load_all(args.checkpoints)
    store_tag = other_store(loaded[0], args.data)
    if args.data is None:
        args.data = recorded_store(loaded[0], args.checkpoints[0])
    if args.split == "auto":
        from alexnet.data.splits import auto_split

        args.split = auto_split(args.data) or "val"  # open_split names what is missing
    store = open_split(args.data, args.split)
    if len(store) == 0:
        raise UserError(f"{args.data}: split {args.split!r} holds no images")
    out = args.out or default_report_path(args.checkpoints, args.split, args.crops, store_tag)
    check_output(out, "evaluation report", is_report)  # a folder too
    ensure_folder(out.parent, "folder for --out")  # before the work, not after it
    check_not_training(out.parent, given=args.out is not None)
    with report_lock(out, given=args.out is not None):
        probs, labels = ensemble_probs(args.checkpoints, store, crops=args.crops,
                                       batch_size=args.batch_size, device=device, loaded=loaded)
        result: dict[str, Any] = topk_errors(probs, labels)
        result.update(images=int(len(labels)), crops=args.crops,
                      checkpoints=[str(p) for p in args.checkpoints])
        report = {"split": args.split, "data": str(args.data), **result,
                  **per_class_report(probs, labels, getattr(store, "classes", None))}
        write_json(out, report)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        print(f"per-class errors: {out}", file=sys.stderr)
    else:
        print(format_table(result, store_source(store), args.split,
                           len(getattr(store, "classes", None) or []) or None))
        print(f"per-class errors and most confused pairs: {out}")
    return 0
