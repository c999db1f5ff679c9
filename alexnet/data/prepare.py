"""`alexnet prepare SOURCE OUT`: the paper's preprocessing, once, into a store (section 2).

Each image is decoded, given its EXIF orientation, converted to RGB, rescaled so that its
SHORTER side is S (paper: 256) and cropped to the central S x S patch. The rescale matches
torchvision's `Resize(S)` + `CenterCrop(S)` on PIL images: new long side int(S * long / short),
PIL's antialiased BILINEAR filter without `reducing_gap` (exact), crop offset
round((side - S) / 2); only the source region under the crop is resampled (PIL's `box`), which
gives the same pixels (up to float rounding, at most 1 level) at a fraction of the cost.

The work is split into chunks of images in a fixed order; workers decode chunks in parallel,
the parent appends them in order through `SplitWriter`, which records each finished chunk
atomically. Killing and rerunning continues at the first unfinished chunk, and the store ends
byte-identical to an uninterrupted run. Unreadable files are skipped (no hole is left) and
listed with their reason in SPLIT/skipped.tsv, as are files of a class folder that are not
images (other names, broken links).

This module owns the preprocessing and its scheduling; the store's files (header, parts,
completion, lock) belong to alexnet/data/store.py and are reached only through its API, the
statistics to alexnet/data/stats.py, the source layouts to alexnet/data/sources.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import re
import sys
import tarfile
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from alexnet import paper
from alexnet.data import sources as src
from alexnet.data.stats import pixel_sums
from alexnet.data.store import (
    FORMATS,
    JPEG_QUALITY,
    SKIPPED,
    SPLITS,
    SplitWriter,
    WriteLock,
    completed_split,
    encode_jpeg,
    own_stats,
    share_train_stats,
    write_error,
)
from alexnet.errors import UserError

CHUNK = 32  # images per chunk: the unit of parallel work and of resumption
LOCAL_AHEAD = 4  # chunks the calling process may decode ahead of the one due next
MAX_PIXELS = 2**27  # decompression-bomb limit, ~134 megapixels (11585 x 11585)


class Skip(Exception):
    """An image that cannot be used; the message is the reason written to the skip report."""


# ----------------------------------------------------------------------------- one image


def _init_worker(max_pixels: int) -> None:
    """Per-process PIL settings: our bomb limit, and no warnings (we give the reason)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@contextlib.contextmanager
def _pil_settings(max_pixels: int) -> Iterator[None]:
    """`_init_worker`'s settings in this process for a while (decoding without a pool)."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        _init_worker(max_pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _to_rgb(image: Any) -> Any:
    """Any PIL mode as RGB: CMYK through its ICC profile when it has one, 16-bit scaled."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode == "CMYK" and image.info.get("icc_profile"):
        try:
            from PIL import ImageCms

            profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
            return ImageCms.profileToProfile(image, profile, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB")
        except Exception:  # a broken profile: fall back to PIL's plain conversion
            pass
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16") or array.max() > 255:
            array = array / 257.0  # 16-bit data: 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def resize_crop(image: Any, size: int) -> np.ndarray:
    """Shorter side to `size` (antialiased bilinear), then the central size x size crop."""
    from PIL import Image

    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    out = image.resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


def load_image(payload: tuple[str, Any], size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One source image (("path", str) | ("bytes", bytes) | ("array", ndarray)) as uint8
    (size, size, 3), or `Skip` with the reason."""
    from PIL import Image, ImageOps

    kind, value = payload
    if kind == "error":
        raise Skip(value)
    if kind == "array":
        image = Image.fromarray(np.asarray(value, np.uint8))
        return resize_crop(_to_rgb(image), size)
    try:
        data = Path(value).read_bytes() if kind == "path" else value
    except OSError as err:
        raise Skip(f"unreadable file: {err.strerror or err}") from None
    if not data:
        raise Skip("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
        if w * h > max_pixels:
            raise Skip(f"{w}x{h} pixels: over the decompression-bomb limit of {max_pixels} "
                       "(--max-pixels)")
        if w < 1 or h < 1:
            raise Skip(f"empty image ({w}x{h})")
        image.load()
    except Skip:
        raise
    except Image.DecompressionBombError as err:
        raise Skip(f"over the decompression-bomb limit (--max-pixels): {err}") from None
    except Image.UnidentifiedImageError:
        raise Skip("not an image format PIL can identify") from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
        message = re.sub(r" ?<[^>]* at 0x[0-9a-fA-F]+>", "", str(err).split("\n")[0])
        raise Skip(f"cannot decode: {type(err).__name__}: {message}") from None
    try:
        if image.getexif().get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF: keep the stored orientation
        pass
    try:
        return resize_crop(_to_rgb(image), size)
    except Exception as err:
        raise Skip(f"cannot convert: {type(err).__name__}: {err}") from None


def slot_views(buffer: Any, chunk: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A shared-memory slot's arrays: the per-pixel sum int64 (S, S, 3), then the pixels
    uint8 (chunk, S, S, 3) (the layout does not depend on `chunk`)."""
    sums = size * size * 3 * 8
    return (np.ndarray((chunk, size, size, 3), np.uint8, buffer=buffer, offset=sums),
            np.ndarray((size, size, 3), np.int64, buffer=buffer))


def slot_bytes(chunk: int, size: int) -> int:
    """Bytes of one slot (see `slot_views`)."""
    return size * size * 3 * 8 + chunk * size * size * 3


_ATTACHED: dict[str, Any] = {}  # the slots a worker process has opened, by name


def work_chunk(task: tuple[Any, ...]) -> dict[str, Any]:
    """Decode one chunk: kept positions, pixels, exact sums, skip list (and JPEG bytes).

    With a slot name (a spawned worker), the pixels and their per-pixel sum are written into
    that shared-memory slot and left out of the result, which is then small to send back.
    """
    payloads, names, size, max_pixels, format, quality, slot = task
    if slot is None:
        images, image_sum = np.empty((len(payloads), size, size, 3), np.uint8), None
    else:
        if slot not in _ATTACHED:
            from multiprocessing.shared_memory import SharedMemory

            _ATTACHED[slot] = SharedMemory(slot)
        images, image_sum = slot_views(_ATTACHED[slot].buf, len(payloads), size)
    keep, skipped = [], []
    for position, (payload, name) in enumerate(zip(payloads, names, strict=True)):
        try:
            images[len(keep)] = load_image(payload, size, max_pixels)
            keep.append(position)
        except Skip as reason:
            skipped.append((name, str(reason)))
    pixels = images[:len(keep)]
    sums = pixel_sums(pixels)
    result = {"images": pixels, "keep": keep, "skipped": skipped, "sums": sums,
              "jpegs": [encode_jpeg(i, quality) for i in pixels] if format == "jpeg" else None}
    if image_sum is not None:
        image_sum[...] = sums.pop("image_sum")
        result["images"] = None
    return result


# ----------------------------------------------------------------------------- one split


def _ref_name(ref: Any, split: src.Split) -> str:
    if isinstance(ref, src.TarRef):
        return f"{ref.archive}:{ref.inner + '/' if ref.inner else ''}{ref.member}"
    if isinstance(ref, int | np.integer):
        return f"{split.describe}[{int(ref)}]"
    return str(ref)


def _payloads(refs: list[Any], split: src.Split, reader: src.TarReader) -> list[tuple[str, Any]]:
    """What a worker needs for each ref: paths are read by workers, tars by the parent."""
    out: list[tuple[str, Any]] = []
    for ref in refs:
        if isinstance(ref, src.TarRef):
            try:
                out.append(("bytes", reader.read(ref)))
            except (OSError, EOFError, KeyError, ValueError, tarfile.TarError) as err:
                out.append(("error", f"unreadable archive member: {type(err).__name__}: "
                                     f"{err}"))
        elif isinstance(ref, int | np.integer):
            out.append(("array", split.arrays[int(ref)]))
        else:
            out.append(("path", ref))
    return out


class Decoders:
    """The processes that decode chunks: this one, and `workers - 1` spawned ones.

    The spawned processes start when the context is entered and serve every split; they
    decode into shared-memory slots, so pixels never travel through a pipe (pickling 6 MB
    chunks through the pool's result thread cost the writing process more than its own
    decoding). `in_order` hands results out in chunk order.
    """

    def __init__(self, workers: int, max_pixels: int, chunks: int, chunk: int, size: int
                 ) -> None:
        self.processes = max(0, min(workers, chunks) - 1)
        self.in_flight = 2 * self.processes  # chunks handed to the pool at once
        self.max_pixels, self.chunk, self.size = max_pixels, chunk, size
        self.pool: Any = None
        self._slots: list[Any] = []
        self._free: list[int] = []
        self._abandoned: list[tuple[int, Any]] = []  # (slot, AsyncResult) still being written
        self._settings = contextlib.ExitStack()

    def __enter__(self) -> Decoders:
        self._settings.enter_context(_pil_settings(self.max_pixels))
        if self.processes:
            from multiprocessing.shared_memory import SharedMemory

            count = self.in_flight + self.processes  # spares for chunks taken back at the end
            self._slots = [SharedMemory(create=True, size=slot_bytes(self.chunk, self.size))
                           for _ in range(count)]
            self._free = list(range(count))
            self.pool = multiprocessing.get_context("spawn").Pool(
                self.processes, initializer=_init_worker, initargs=(self.max_pixels,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        for slot in self._slots:
            try:
                slot.close()
            except BufferError:  # an exception still holds a view: close at exit instead
                _UNCLOSED.append(slot)
            slot.unlink()
        self._settings.close()

    def _take(self) -> int | None:
        """A free slot, or None."""
        for pair in [p for p in self._abandoned if p[1].ready()]:
            self._abandoned.remove(pair)
            self._free.append(pair[0])
        return self._free.pop() if self._free else None

    def _collect(self, result: dict[str, Any], slot: int) -> dict[str, Any]:
        """A pool result with its pixels and per-pixel sum read from its slot (no copy)."""
        images, image_sum = slot_views(self._slots[slot].buf, self.chunk, self.size)
        result["images"] = images[:len(result["keep"])]
        result["sums"]["image_sum"] = image_sum
        return result

    def in_order(self, starts: list[int], task: Callable[[int], tuple[Any, ...]],
                 ahead: int = LOCAL_AHEAD) -> Iterator[tuple[int, dict[str, Any]]]:
        """(start, `work_chunk` result) for every chunk of `starts`, in that order; a result
        is valid until the next one is asked for.

        Chunks are handed out in order: up to `in_flight` to the pool, and this process
        decodes one itself whenever the result due next is not ready (up to `ahead` of its
        own waiting), so it works while the pool's processes start (spawn costs a few tenths
        of a second). At the end, with nothing left to hand out, it decodes the last chunk
        still queued in the pool rather than wait (the pool's copy is dropped). Which process
        decoded a chunk changes nothing in its result, so the store does not depend on the
        number of workers.
        """
        queue = deque(starts)
        slots: dict[int, Any] = {}  # start -> AsyncResult (pool) or result dict (here)
        held: dict[int, int] = {}  # start -> the shared-memory slot of a pool chunk

        def submit() -> None:
            while self.pool is not None and queue and len(held) < self.in_flight:
                slot = self._take()
                if slot is None:
                    return
                start = queue.popleft()
                held[start] = slot
                slots[start] = self.pool.apply_async(
                    work_chunk, (task(start) + (self._slots[slot].name,),))

        def here(start: int) -> None:
            if start in held:  # taken back from the pool, whose copy may still be written
                self._abandoned.append((held.pop(start), slots[start]))
            slots[start] = work_chunk(task(start) + (None,))

        for due in starts:
            while True:
                if due not in slots:  # nobody has it yet: decode it here
                    queue.popleft()
                    submit()
                    here(due)
                    break
                submit()
                pending = slots[due]
                if isinstance(pending, dict) or pending.ready():
                    break
                later = [s for s, v in slots.items()
                         if s > due and not isinstance(v, dict) and not v.ready()]
                if queue and sum(isinstance(v, dict) for v in slots.values()) < ahead:
                    start = queue.popleft()
                    here(start)
                elif not queue and later:
                    here(max(later))
                else:
                    pending.wait()
                    break
            result = slots.pop(due)
            slot = held.pop(due, None)
            yield due, result if slot is None else self._collect(result.get(), slot)
            if slot is not None:
                self._free.append(slot)


_UNCLOSED: list[Any] = []  # slots an exception kept open; closed when the interpreter ends


def _kept(source: src.Source, split: src.Split, limit: int | None) -> np.ndarray:
    """Positions of the split's images that `--limit` keeps."""
    return src.limit_per_class(split.labels, limit, len(source.classes))


def prepare_split(source: src.Source, split: src.Split, path: Path, *, size: int, format: str,
                  decoders: Decoders, limit: int | None, max_pixels: int, chunk: int,
                  train_stats: dict[str, Any] | None, stop_after: int | None = None
                  ) -> dict[str, Any]:
    """Write one split (resuming a half-written one); return its count and skips."""
    keep = _kept(source, split, limit)
    refs = [split.refs[i] for i in keep]
    labels = split.labels[keep]
    fingerprint = {"kind": source.kind, "source": str(source.root.resolve()),
                   "split": split.name, "size": size, "format": format, "limit": limit,
                   "images": len(refs), "chunk": chunk, "max_pixels": max_pixels,
                   "classes": [c["wnid"] for c in source.classes]}
    if split.cut is not None:
        fingerprint["cut"] = split.cut
    meta = completed_split(path, fingerprint)
    if meta is not None:
        print(f"{path}: already complete ({meta['count']} images)", file=sys.stderr)
        return {"count": meta["count"], "skipped": meta["skipped"], "path": str(path)}
    writer = SplitWriter(path, split=split.name, image_size=size, classes=source.classes,
                         format=format, fingerprint=fingerprint,
                         source={"kind": source.kind, "path": str(source.root),
                                 "from": split.describe, "limit": limit,
                                 "listed": len(refs)})
    todo = list(range(0, len(refs), chunk))[writer.chunks_done:]
    reader = src.TarReader()

    def task(start: int) -> tuple[Any, ...]:
        part = refs[start:start + chunk]
        return (_payloads(part, split, reader), [_ref_name(r, split) for r in part], size,
                max_pixels, format, JPEG_QUALITY)

    bar = _progress(split.name, len(refs), min(len(refs), writer.chunks_done * chunk))
    try:
        for written, (start, result) in enumerate(decoders.in_order(todo, task), 1):
            rows = np.asarray(result["keep"], np.int64)
            writer.add_chunk(result["images"], labels[start:start + chunk][rows],
                             result["sums"], result["skipped"], result["jpegs"])
            bar.update(min(chunk, len(refs) - start))
            bar.set_postfix(skipped=len(writer.skipped), refresh=False)
            if stop_after is not None and written >= stop_after:
                writer.checkpoint()
                raise KeyboardInterrupt(f"stopped after {written} chunks (test hook)")
        bar.close()
        if split.name == "train":
            meta = writer.finish(unused=split.unused)
        else:
            meta = writer.finish(train_stats, "train" if train_stats is not None else None,
                                 unused=split.unused)
    finally:
        bar.close()
        reader.close()
        writer.close()  # after an exception: what was recorded stays, a rerun resumes
    if meta["skipped"]:
        print(f"{path}: {meta['skipped']} files skipped (unreadable, or not images), listed "
              f"in {path / SKIPPED}", file=sys.stderr)
    return {"count": meta["count"], "skipped": meta["skipped"], "path": str(path)}


def _progress(split: str, total: int, done: int) -> Any:
    """The progress bar of one split, on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="img", desc=f"prepare {split}", file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


# ----------------------------------------------------------------------------- entry points


def prepare(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
            size: int = paper.IMAGE_SIZE, format: str = "raw", workers: int | None = None,
            limit: int | None = None, splits: list[str] | str | None = None,
            names: str | None = None, max_pixels: int = MAX_PIXELS, chunk: int = CHUNK,
            val_fraction: float | None = None, val_seed: int = 0,
            _stop_after: int | None = None) -> dict[str, Any]:
    """Prepare every split of `source` found (or those named) into the store `out`.

    Returns {"kind", "out", "splits": {split: {"count", "skipped", "path"}}}. The training
    split is written first; its statistics are recorded in every other split.
    `val_fraction` holds out that fraction of each class of a source without a val split as
    the val split (sources.hold_out, seeded by `val_seed`), before `limit` applies.
    `_stop_after` (tests only) interrupts after that many chunks, as a Ctrl-C would.
    Workers are started with multiprocessing's "spawn" (safe after torch has started threads),
    so a script that calls this must guard its top level with `if __name__ == "__main__":`.
    """
    workers, splits = _check_options(format=format, size=size, limit=limit, chunk=chunk,
                                     max_pixels=max_pixels, workers=workers, splits=splits,
                                     val_fraction=val_fraction)
    out = Path(out)
    try:
        found = _detect(source, names, val_fraction, val_seed)
        wanted = [s for s in SPLITS if s in found.splits and (splits is None or s in splits)]
        if not wanted:
            raise UserError(f"{source}: no split {', '.join(splits or SPLITS)} in this "
                            f"{found.kind} source (found: {', '.join(found.splits) or 'none'})")
        summary: dict[str, Any] = {"kind": found.kind, "out": str(out), "splits": {}}
        chunks = sum(-(-len(_kept(found, found.splits[name], limit)) // chunk)
                     for name in wanted)
        with WriteLock(out), Decoders(workers, max_pixels, chunks, chunk, size) as decoders:
            for name in wanted:
                summary["splits"][name] = prepare_split(
                    found, found.splits[name], out / name, size=size, format=format,
                    decoders=decoders, limit=limit, max_pixels=max_pixels, chunk=chunk,
                    train_stats=own_stats(out / "train"), stop_after=_stop_after)
            share_train_stats(out)
    except OSError as err:
        raise _os_error(out, err) from None
    return summary


def _check_options(*, format: str, size: int, limit: int | None, chunk: int, max_pixels: int,
                   workers: int | None, splits: list[str] | str | None,
                   val_fraction: float | None) -> tuple[int, list[str] | None]:
    """(workers, splits) resolved, or a UserError naming the bad option."""
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if size < 1:
        raise UserError(f"--size {size}: must be a positive number of pixels")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    if chunk < 1 or max_pixels < 1:
        raise UserError("chunk and --max-pixels must be positive")
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must lie between 0 and 1 (e.g. 0.1)")
    if isinstance(splits, str):
        splits = [s for s in splits.split(",") if s]
    for name in splits or []:
        if name not in SPLITS:
            raise UserError(f"--splits {name!r}: choose among {', '.join(SPLITS)}")
    return workers, splits


def _detect(source: Any, names: str | None, val_fraction: float | None, val_seed: int
            ) -> src.Source:
    """The source's layout, its notes and doubts printed, a val part held out if asked."""
    found = src.detect(source, names)
    for note in found.notes:
        print(f"alexnet prepare: {note}", file=sys.stderr)
    doubt = src.doubts(found)
    if doubt:
        print(f"alexnet prepare: warning: {source} may not be a data set: {doubt}; a data set "
              "holds one folder per class with its images (docs/data.md)", file=sys.stderr)
    if val_fraction is not None:
        _hold_out(found, source, val_fraction, val_seed)
    return found


def _hold_out(found: src.Source, source: Any, fraction: float, seed: int) -> None:
    """Replace the source's train split by its train and val parts (`--val-fraction`)."""
    if "val" in found.splits:
        raise UserError(f"--val-fraction: {source} has a val split already; drop the option "
                        "to use it")
    if "train" not in found.splits:
        raise UserError(f"--val-fraction: {source} has no train split to hold a part out of")
    found.splits["train"], found.splits["val"] = src.hold_out(
        found.splits["train"], fraction, seed, len(found.classes))


def _os_error(out: Path, err: OSError) -> UserError:
    """A filesystem error as one line: reading a source file, or writing the store."""
    name = err.filename
    if name is not None:
        inside = os.path.commonpath([os.path.abspath(name), os.path.abspath(out)])
        if inside != os.path.abspath(out):
            return UserError(f"{name}: cannot read ({err.strerror or err}); check the file "
                             "and its permissions")
    return write_error(out, err)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet prepare`."""
    parser.add_argument("source", metavar="SOURCE", help="folder holding the data (ImageNet "
                        "archives and devkit, Kaggle CLS-LOC, ImageFolder, CIFAR-10, IDX)")
    parser.add_argument("out", metavar="OUT", help="store folder to write (one folder per split)")
    parser.add_argument("--size", type=int, default=paper.IMAGE_SIZE,
                        help="side S of the stored images (default: %(default)s, the paper's)")
    parser.add_argument("--format", choices=FORMATS, default="raw",
                        help=f"raw uint8 (fast, no decoding) or jpeg (quality {JPEG_QUALITY}, "
                        "smaller, decoded on every read) (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes, this one included (default: one per core)")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N images per split, an equal share per class (default: "
                        "no limit)")
    parser.add_argument("--splits", default=None,
                        help="comma-separated splits to prepare (default: all found)")
    parser.add_argument("--names", default=None,
                        help="IDX class names: fashion-mnist, mnist or A,B,... (default: "
                        "fashion-mnist when the folder path says fashion, else mnist)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="skip images with more pixels, as decompression bombs (default: "
                        "%(default)s)")
    parser.add_argument("--val-fraction", type=float, default=None, metavar="F",
                        help="for a source without a val split: hold out this fraction of "
                        "each class of train as val, drawn with --val-seed (default: none)")
    parser.add_argument("--val-seed", type=int, default=0,
                        help="seed of the --val-fraction draw (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """`alexnet prepare`: print one line per split at the end."""
    summary = prepare(args.source, args.out, size=args.size, format=args.format,
                      workers=args.workers, limit=args.limit, splits=args.splits,
                      names=args.names, max_pixels=args.max_pixels,
                      val_fraction=args.val_fraction, val_seed=args.val_seed)
    for name, result in summary["splits"].items():
        print(f"{name}: {result['count']} images, {result['skipped']} skipped -> "
              f"{result['path']}")
    return 0
