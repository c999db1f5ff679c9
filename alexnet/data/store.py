"""The store format: a prepared split of images, read by index with no decoding (section 2).

This module owns the format, reading and writing alike: the header, the part files of a split
being written, its completion, and the lock that keeps a second writer out. Nothing else reads
or deletes a store's files. The statistics recorded in a store are computed by
alexnet/data/stats.py; `alexnet prepare` (alexnet/data/prepare.py) writes through `SplitWriter`.

A store is a folder `ROOT/` with one folder per split (`train`, `val`, `test`). A split folder
holds:

- `header.json`: `magic` ("alexnet-store"), `version`, `split`, `image_size` S, `count` N,
  `format` ("raw" or "jpeg"), `jpeg_quality`, `classes` (list of {"wnid", "name", ...} indexed
  by label), `stats` (the training split's statistics, see stats.py), `stats_split` (the split
  they were computed on), `own_stats` (this split's own), `source` (what it was prepared from),
  `skipped` (how many source files were unused; listed in `skipped.tsv`) and `complete`
  (true only once every file is written; a half-written split says false).
- `skipped.tsv`: the header row `SKIPPED_COLUMNS`, then one line `path<TAB>reason` per unused
  source file, each field escaped by `tsv_field` (read back by `read_skipped`).
- `labels.npy`: int64 (N,).
- `mean_image.npy` (float64 (S, S, 3)) and `own_mean_image.npy`: the per-pixel means.
- format "raw": `images.u8`, N*S*S*3 bytes, uint8 (N, S, S, 3) in C order, read through
  positional reads (`os.preadv`), so random access is a copy out of the page cache and costs
  no decoding.
- format "jpeg": `images.jpeg` (every image's JPEG bytes, concatenated) and `offsets.npy`
  (int64 (N+1,): image i is bytes offsets[i]:offsets[i+1]).
- `.lock`: an empty file that a writer holds an exclusive `flock` on (also in ROOT while
  `alexnet prepare` runs); a second writer is refused at once.

Writing goes through `SplitWriter`, which appends chunks and records progress atomically so
that an interrupted writer resumes where it stopped, byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.atomic import LOCK, TMP_PREFIX, FolderLock, remove_stale, write_atomic
from alexnet.data.stats import (
    add_sums,
    empty_sums,
    pixel_sums,
    stats_from_json,
    stats_from_sums,
    stats_to_json,
)
from alexnet.errors import UserError, one_line

MAGIC = "alexnet-store"
VERSION = 1
FORMATS = ("raw", "jpeg")
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 90
HEADER = "header.json"
LABELS = "labels.npy"
MEAN_IMAGE = "mean_image.npy"
OWN_MEAN_IMAGE = "own_mean_image.npy"
RAW = "images.u8"
JPEG = "images.jpeg"
OFFSETS = "offsets.npy"
SKIPPED = "skipped.tsv"
SKIPPED_COLUMNS = "path (escaped)\treason (escaped)"  # first line of skipped.tsv
OLD_SKIPPED_COLUMNS = "path\treason"  # earlier versions: fields written unescaped
PROGRESS = "progress.npz"  # present only while a split is being written
CHECKPOINT_SECONDS = 2.0  # record progress (fsync + progress.npz) at most this often
FLUSH_SECONDS = 0.25  # push written pixels to disk in the background this often
LABELS_PART = "labels.part"
LENGTHS_PART = "lengths.part"
RERUN = "rerun `alexnet prepare SOURCE ROOT` to (re)build it"
STORE_FILES = (HEADER, LABELS, MEAN_IMAGE, OWN_MEAN_IMAGE, RAW, JPEG, OFFSETS, SKIPPED,
               PROGRESS, LABELS_PART, LENGTHS_PART)  # every file a split may hold, but LOCK


# ----------------------------------------------------------------------------- reading


def _read_header(path: Path) -> dict[str, Any]:
    """The header of split folder `path`, refused with what to do if it is not a good store."""
    header_path = path / HEADER
    if not path.is_dir():
        raise UserError(f"{path}: no such store split folder; {RERUN}")
    if not header_path.exists():
        if (path / PROGRESS).exists():
            raise UserError(f"{path}: half-written store (prepare was interrupted); rerun the "
                            "same `alexnet prepare` command to finish it")
        raise UserError(f"{path}: not an alexnet store split (no {HEADER}); {RERUN}")
    try:
        meta = json.loads(header_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{header_path}: unreadable store header ({err}); {RERUN}") from None
    if not isinstance(meta, dict) or meta.get("magic") != MAGIC:
        raise UserError(f"{header_path}: not an alexnet store header (foreign file); {RERUN}")
    if meta.get("version") != VERSION:
        raise UserError(f"{path}: store format version {meta.get('version')}, this alexnet "
                        f"reads version {VERSION}; {RERUN}")
    if not meta.get("complete"):
        raise UserError(f"{path}: half-written store (prepare was interrupted or is running); "
                        "rerun the same `alexnet prepare` command to finish it")
    if meta.get("format") not in FORMATS:
        raise UserError(f"{header_path}: unknown store format {meta.get('format')!r}; {RERUN}")
    problem = _header_problem(meta)
    if problem:
        raise UserError(f"{header_path}: damaged store header ({problem}); {RERUN}")
    return meta


STATS_SHAPES = {"channel_mean": (3,), "rgb_cov": (3, 3), "eigval": (3,), "eigvec": (3, 3)}


def _count_field(value: Any, least: int) -> bool:
    """Whether a header value is an integer (not a bool) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _header_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a complete header that readers use, or None: checked
    here, where the header is read, so that no reader meets a KeyError or TypeError."""
    if not isinstance(meta.get("split"), str):
        return "`split` is not a name"
    if not _count_field(meta.get("image_size"), 1):
        return f"`image_size` {meta.get('image_size')!r} is not a positive integer"
    if not _count_field(meta.get("count"), 0):
        return f"`count` {meta.get('count')!r} is not a non-negative integer"
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(
            isinstance(c, dict) and isinstance(c.get("wnid"), str) for c in classes):
        return "`classes` is not a list of {\"wnid\", \"name\"} entries"
    for key in ("stats", "own_stats"):  # own_stats is None for a split of no image
        problem = None if key == "own_stats" and meta.get(key) is None else _stats_problem(
            meta.get(key))
        if problem:
            return f"`{key}` {problem}"
    return None


def _stats_problem(saved: Any) -> str | None:
    """What keeps the header form of some statistics from `stats_from_json`, or None. A
    statistic may be absent (a store written with the mean alone: the loaders refuse the
    settings that need the others), not malformed nor NaN or infinite (which would make every
    batch NaN)."""
    if not isinstance(saved, dict):
        return "is not a set of statistics"
    for key, value in saved.items():
        try:
            array = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            return f"has a `{key}` that is not numbers"
        if key in STATS_SHAPES and array.shape != STATS_SHAPES[key]:
            return f"has a `{key}` of shape {array.shape}, not {STATS_SHAPES[key]}"
        if not np.isfinite(array).all():
            return f"has a non-finite `{key}`"
    return None


_OPENING = threading.Lock()  # Store._file: a store's pixel file is opened once per process


class _PixelFile:
    """A split's pixel file open for reading, closed when the last store holding it goes."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        os.close(self.fd)


class Store:
    """One split of a prepared store: `len`, `read(indices)`, `store[i]`, labels, classes, stats.

    `read` returns uint8 (B, S, S, 3) in the order asked. The default raw format is a
    copy of each image's bytes (no decoding); the jpeg format decodes with PIL. Stores pickle
    cheaply (the pixel file is reopened in the receiving process), so loader workers can take
    one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.meta: dict[str, Any] = _read_header(self.path)
        self.split: str = self.meta["split"]
        self.image_size: int = int(self.meta["image_size"])
        self.format: str = self.meta["format"]
        self.classes: list[dict[str, Any]] = self.meta["classes"]
        self._count = int(self.meta["count"])
        self.labels: np.ndarray = self._load_npy(LABELS, (self._count,), np.int64)
        self._check_labels()
        self.stats: dict[str, Any] = self._load_stats()
        self._pixel_file: _PixelFile | None = None
        self._offsets: np.ndarray | None = None
        self._check_data_size()

    def _load_npy(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A .npy file of this split with the shape the header promises, else a UserError."""
        return _load_array(self.path / name, shape, dtype)

    def _check_labels(self) -> None:
        """Refuse labels outside 0..classes-1 (cheap: min and max) before a loss or a
        confusion matrix indexes with them."""
        n = len(self.classes)
        if self._count and (self.labels.min() < 0 or self.labels.max() >= n):
            raise UserError(f"{self.path / LABELS}: labels {self.labels.min()} to "
                            f"{self.labels.max()}, the header lists {n} classes (0 to {n - 1}); "
                            f"{RERUN}")

    def _load_stats(self) -> dict[str, Any]:
        """The training split's statistics (design.md): numpy arrays, mean image float32."""
        size = self.image_size
        return stats_from_json(self.meta["stats"],
                               self._load_npy(MEAN_IMAGE, (size, size, 3), np.float32))

    def _check_data_size(self) -> None:
        """Refuse a truncated pixel file, or a jpeg split's offsets out of order, before any
        read can fail deep inside a loader."""
        size = self.image_size
        if self.format == "raw":
            pixels, expected = self.path / RAW, self._count * size * size * 3
            source = "header"
        else:
            offsets = self._load_npy(OFFSETS, (self._count + 1,), np.int64)
            _check_offsets(self.path / OFFSETS, offsets)
            pixels, expected, source = self.path / JPEG, int(offsets[-1]), OFFSETS
            self._offsets = offsets
        actual = _file_size(pixels)
        if actual < 0:
            raise UserError(f"{pixels}: missing; {RERUN}")
        if actual != expected:
            raise UserError(f"{self.path}: pixel file holds {actual} bytes, {source} says "
                            f"{expected}; {RERUN}")

    def _file(self) -> int:
        """The pixel file's descriptor, opened on first use in each process. Images are read
        with positional reads, not a memory map: a map's pages count in the process's
        resident memory once touched (252 GB after an ImageNet epoch at 256 pixels, which a
        job scheduler may hold against it), where a read leaves them in the page cache only."""
        if self._pixel_file is None:
            with _OPENING:  # two read-ahead threads at once: one file, never closed under one
                if self._pixel_file is None:
                    self._pixel_file = _PixelFile(
                        self.path / (RAW if self.format == "raw" else JPEG))
        return self._pixel_file.fd

    def _bytes(self, i: int, start: int, size: int, into: np.ndarray | None = None
               ) -> np.ndarray:
        """`size` bytes of the pixel file from `start` (image `i`'s), into the contiguous
        uint8 array `into` when given, else a new one; a file cut short since the store was
        opened is the one-line damaged-image error. One read returns at most about 2 GiB on
        Linux, so reads repeat until done."""
        out = np.empty(size, np.uint8) if into is None else into
        buffer, done = memoryview(out).cast("B"), 0
        while done < size:
            got = os.preadv(self._file(), [buffer[done:]], start + done)
            if got == 0:
                raise damaged_image(self, i, "is cut short (the pixel file shrank after the "
                                    "store was opened)")
            done += got
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pixel_file"] = None
        return state

    def __len__(self) -> int:
        return self._count

    def read(self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None
             ) -> np.ndarray:
        """Images `indices` (1-D integers in -N..N-1, see `check_indices`) as uint8
        (B, S, S, 3), in the order given; into `out` (e.g. a loader's pinned buffer, saving a
        copy) when given."""
        index = check_indices(indices, self._count, wrap=True)
        size = self.image_size
        if out is None:
            out = np.empty((len(index), size, size, 3), np.uint8)
        elif out.shape != (len(index), size, size, 3) or out.dtype != np.uint8:
            raise ValueError(f"out: need uint8 {(len(index), size, size, 3)}, got {out.dtype} "
                             f"{out.shape}")
        if self.format == "raw":
            item = size * size * 3
            rows = out if out.flags.c_contiguous else np.empty(out.shape, np.uint8)
            for row, i in enumerate(index):
                self._bytes(int(i), int(i) * item, item, rows[row])
            if rows is not out:
                out[...] = rows
            return out
        for row, i in enumerate(index):
            try:
                out[row] = decode_jpeg(self._jpeg(int(i)), size)
            except (OSError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated
                raise damaged_image(self, int(i), f"does not decode ({one_line(err, 100)})"
                                    ) from None
        return out

    def encoded(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """The JPEG bytes of images `indices` (jpeg format), as uint8 arrays of their own, so
        that a loader can decode them its own way (alexnet/data/decode.py)."""
        if self.format != "jpeg":
            raise ValueError(f"{self.path}: a {self.format} store holds no JPEG bytes")
        index = check_indices(indices, self._count, wrap=True)
        return [self._jpeg(int(i)) for i in index]

    def _jpeg(self, i: int) -> np.ndarray:
        """Image `i`'s JPEG bytes, as a uint8 array."""
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._bytes(i, start, end - start)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.read([i])[0], int(self.labels[i])

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}: {self._count} images {self.image_size}x"
                f"{self.image_size}, {len(self.classes)} classes, {self.format})")


def _load_array(path: Path, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The plain .npy array at `path`, of `shape` and of `dtype`'s kind (integer or floating
    point, then finite), as `dtype`; anything else (missing, truncated, an .npz archive,
    pickled objects, text, NaN) is a one-line UserError saying to rebuild the split."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {RERUN}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: unreadable ({one_line(err, 100)}); {RERUN}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise UserError(f"{path}: an .npz archive, not a .npy array; {RERUN}")
    integer = np.issubdtype(dtype, np.integer)
    if array.dtype.kind not in ("iu" if integer else "f"):
        raise UserError(f"{path}: {array.dtype} values, expected "
                        f"{'integer' if integer else 'floating-point'} ones; {RERUN}")
    if array.shape != shape:
        raise UserError(f"{path}: shape {array.shape}, header says {shape}; {RERUN}")
    if not integer and not np.isfinite(array).all():  # a NaN mean image makes batches NaN
        bad = array[~np.isfinite(array)].flat[0]
        raise UserError(f"{path}: a non-finite value ({bad}); {RERUN}")
    return array.astype(dtype, copy=False)


def _file_size(path: Path) -> int:
    """Size in bytes, -1 when missing."""
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _check_offsets(path: Path, offsets: np.ndarray) -> None:
    """Refuse offsets.npy (at `path`) unless it starts at 0 and strictly rises: the writer
    records the length of each image's JPEG, never empty, so anything else is damage that
    would otherwise be blamed on an image (or on the header) when it is read."""
    if offsets[0] != 0:
        raise UserError(f"{path}: the first offset is {offsets[0]}, not 0; {RERUN}")
    steps = np.diff(offsets)
    if steps.size and steps.min() <= 0:
        i = int(np.argmax(steps <= 0))
        raise UserError(f"{path}: offsets do not rise at image {i} ({offsets[i]} then "
                        f"{offsets[i + 1]}); {RERUN}")


class IndexRangeError(UserError, IndexError):
    """Store indices out of range: a UserError (one line, the loader's words) that is still
    the IndexError that indexing out of range raises in Python."""


def check_indices(indices: Any, n: int, *, wrap: bool = False) -> np.ndarray:
    """`indices` as 1-D int64 store indices in 0..n-1, or a UserError: floats would be
    truncated and a boolean mask read as the indices 0 and 1. With `wrap` (Store.read, as
    Python indexing), -n..-1 are taken from the end; without it (EvalLoader), refused."""
    order = np.asarray(indices)
    if order.ndim != 1:
        raise UserError(f"indices: expected a 1-D sequence of store indices, got shape "
                        f"{order.shape}")
    if order.size and order.dtype.kind not in "iu":
        hint = " (a boolean mask: pass np.flatnonzero(mask))" if order.dtype == bool else ""
        raise UserError(f"indices must be integers, got {order.dtype}{hint}")
    if not order.size:
        return order.astype(np.int64)
    low = -n if wrap else 0
    if order.min() < low or order.max() >= n:  # before int64, which would wrap a uint64
        raise IndexRangeError(f"indices must lie in {low}..{n - 1}")
    order = order.astype(np.int64)
    return np.where(order < 0, order + n, order) if wrap else order


def check_root(root: str | os.PathLike[str]) -> Path:
    """`root` as a Path when it is a folder other than a split folder, else a one-line
    UserError saying what to do (missing, a file, a split folder given for its store): the
    one check of a store given to a command (--data), through `open_split` or
    splits.auto_split, so that a store missing reads the same in every command."""
    root = Path(root)
    if root.is_dir() and (root / HEADER).is_file():  # e.g. --data STORE/train
        raise UserError(f"{root} is itself a split folder: give the store above it, "
                        f"{root.parent}")
    if root.is_dir():
        return root
    if not root.exists():
        raise UserError(f"{root}: no such store; make one with `alexnet prepare SOURCE {root}`")
    hint = (f"give the store that holds it, {root.parent.parent}" if root.name == HEADER
            else "give the folder made by `alexnet prepare SOURCE DIR`")
    raise UserError(f"{root}: a file, not a store folder; {hint}")


def open_split(root: str | os.PathLike[str], split: str) -> Store:
    """The split `split` of the store at `root` (root/split), with a hint when it is absent."""
    root = check_root(root)
    path = root / split
    if not path.is_dir():
        present = sorted(p.name for p in root.iterdir() if (p / HEADER).exists())
        hint = f"splits present: {', '.join(present)}" if present else RERUN
        raise UserError(f"{root}: store has no '{split}' split; {hint}")
    store = Store(path)
    check_agrees(root, split, store.classes, store.image_size, mine=path / HEADER,
                 advice="prepare every split again into a new store")
    return store


def check_agrees(root: str | os.PathLike[str], split: str, classes: Sequence[Any],
                 image_size: int, *, mine: str | os.PathLike[str], advice: str) -> None:
    """Refuse split `split` of the store `root`, of `classes` and `image_size` (described as
    `mine`), when another complete split of `root` has other classes or another image size:
    a label means a class of the shared list, and every split takes the training split's
    mean image. A one-line UserError naming both, ending with `advice`."""
    root = Path(root)
    wnids = [c["wnid"] for c in normalise_classes(classes)]
    for name in SPLITS:
        if name == split or not (root / name / HEADER).is_file():
            continue
        try:
            meta = _read_header(root / name)
        except UserError:  # half-written or damaged: prepare finishes or rebuilds it
            continue
        theirs = [c["wnid"] for c in meta["classes"]]
        if theirs != wnids:
            raise UserError(f"{mine}: classes differ from those of {root / name / HEADER} "
                            f"({_class_difference(wnids, theirs)}), so the labels would not "
                            f"agree; {advice}")
        if meta["image_size"] != image_size:
            raise UserError(f"{mine}: --size {image_size} differs from the "
                            f"{meta['image_size']}-pixel images of {root / name / HEADER} "
                            f"(every split takes the training split's mean image); {advice}")


def _class_difference(mine: Sequence[str], theirs: Sequence[str]) -> str:
    """The first difference between two class lists, in a few words."""
    for label, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if a != b:
            return f"label {label} is {a!r} here, {b!r} there"
    return f"{len(mine)} classes here, {len(theirs)} there"


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """One uint8 (S, S, 3) image as JPEG bytes (PIL, 4:2:0 as libjpeg's default)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8), "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def decode_jpeg(data: np.ndarray | bytes, size: int) -> np.ndarray:
    """JPEG bytes of the jpeg format back to uint8 (S, S, 3); a ValueError (or PIL's OSError)
    for bytes that do not decode to that."""
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as image:
        array = np.asarray(image.convert("RGB"))
    if array.shape != (size, size, 3):
        raise ValueError(f"decodes to {array.shape}, expected {(size, size, 3)}")
    return array


def damaged_image(store: Store, index: int, reason: str) -> UserError:
    """The one-line error for image `index` of `store` whose bytes do not decode (`reason`
    says how): the split's sizes were right when it was opened, so prepare would keep it as
    complete; the split must be deleted to be rebuilt. A memory address in `reason` (PIL's
    "<_io.BytesIO object at 0x7f...>") is dropped, as prepare drops it."""
    reason = re.sub(r" ?<[^>]* at 0x[0-9a-fA-F]+>", "", reason)
    return UserError(f"{store.path}: image {index} of the store's {store.split!r} split "
                     f"{reason}; its bytes are damaged: delete {store.path} and rerun "
                     f"`alexnet prepare SOURCE {store.path.parent}` to rebuild it")


# ----------------------------------------------------------------------------- writing


def _write(path: Path, data: bytes) -> None:
    """Replace one of the store's files atomically; an OSError is raised as it is, so that
    prepare words the advice (free space, then rerun the same command)."""
    write_atomic(path, data, user_errors=False)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def a_name(option: str) -> str:
    """`option` with its article, as the refusals say it: "an OUT", "a --store"."""
    return f"{'an' if option[:1] in 'AEIOU' else 'a'} {option}"


def write_error(root: str | os.PathLike[str], err: OSError, option: str = "OUT") -> UserError:
    """A filesystem error met while writing the store `root`, as one line saying what to do.

    Whatever was recorded before the error stays: rerunning the same command continues.
    `option` is the name the user gave the store by (prepare's OUT, the demo's --store).
    """
    where = err.filename or root
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space, then rerun the same command: it continues where it stopped"
    elif err.errno in (errno.EEXIST, errno.ENOTDIR):
        advice = (f"{_not_folder(Path(where), Path(root))} must be a folder (or not exist yet); "
                  f"move it away or choose another {option}")
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = f"choose {a_name(option)} folder you can write to"
    else:
        advice = f"check the disk and the {option} folder, then rerun the same command"
    return UserError(f"{where}: cannot write the store ({reason}); {advice}")


def _not_folder(path: Path, root: Path) -> Path:
    """The nearest of `path` and the folders above it that exists and is no folder (what
    stops a folder being made there), else `root`."""
    for where in (path, *path.parents):
        if where.exists() and not where.is_dir():
            return where
    return root


class WriteLock(FolderLock):
    """The store writer's `FolderLock` on FOLDER/.lock (the folder is created), taken at once:
    a second writer of the same store is refused with one line naming `option`, the option
    that chose the store (prepare's OUT, the demo's --store)."""

    def __init__(self, folder: str | os.PathLike[str], option: str = "OUT") -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(folder, f"{folder}: another process is writing this store (an "
                         "`alexnet prepare` or `alexnet demo` still running?); wait for it to "
                         f"end, or choose another {option}")
        self.acquire()


def normalise_classes(classes: Sequence[Any]) -> list[dict[str, Any]]:
    """Class list as dicts {"wnid", "name", ...}; a plain string is both wnid and name."""
    out = []
    for c in classes:
        if isinstance(c, str):
            out.append({"wnid": c, "name": c})
        else:
            entry = dict(c)
            entry.setdefault("name", entry.get("wnid", ""))
            entry.setdefault("wnid", entry["name"])
            out.append(entry)
    return out


class Flusher(threading.Thread):
    """Pushes the bytes written to some files to disk in the background (an fsync every
    `interval` seconds), so that the writer's own fsyncs, which a progress record must wait
    for, find little left to do. It never decides what is durable: an error it meets is kept
    in `error` for the writer to raise (the kernel reports a write-back error only once), and
    the writer fsyncs under `lock`, so an error is either in `error` or seen by its own fsync."""

    def __init__(self, fds: list[int], interval: float) -> None:
        super().__init__(name="alexnet-store-flusher", daemon=True)
        self.fds, self.interval = fds, interval
        self.error: OSError | None = None
        self.lock = threading.Lock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            with self.lock:
                try:
                    for fd in self.fds:
                        os.fsync(fd)
                except OSError as err:
                    self.error = err
                    return

    def stop(self) -> None:
        """Stop and wait (before the files are closed, so no fd is reused under it)."""
        self._stop_event.set()
        if self.is_alive():
            self.join()


class SplitWriter:
    """Writes one split chunk by chunk, resumably, and marks it complete at the end.

    Each `add_chunk` appends the chunk's pixels (or JPEG bytes) and labels to part files; after
    the first chunk and then every `checkpoint_seconds`, `checkpoint` fsyncs them and atomically
    replaces `progress.npz` (chunks done, byte lengths, the exact statistic sums, the skip
    list), so fsync costs stay small for ImageNet's ~10,000 chunks. A new writer on the same
    folder with the same `fingerprint` truncates the part files to the recorded lengths and
    continues from `chunks_done`, so an interrupted run ends byte-identical to an
    uninterrupted one (it redoes at most the last `checkpoint_seconds` of work). The writer
    holds the folder's `WriteLock` from creation to `close` (or `finish`). With a finite
    `checkpoint_seconds`, a `Flusher` writes the part files back meanwhile, so the fsyncs of
    checkpoints and of `finish` stay short however fast chunks come.
    """

    def __init__(self, path: str | os.PathLike[str], *, split: str, image_size: int,
                 classes: Sequence[Any], format: str = "raw", fingerprint: Any = None,
                 source: Any = None, jpeg_quality: int = JPEG_QUALITY,
                 checkpoint_seconds: float = CHECKPOINT_SECONDS) -> None:
        if format not in FORMATS:
            raise UserError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
        self.path = Path(path)
        self.split, self.size, self.format = split, int(image_size), format
        self.classes = normalise_classes(classes)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.source, self.jpeg_quality = source, jpeg_quality
        self.data_name = RAW if format == "raw" else JPEG
        self.chunks_done = 0
        self.count = 0
        self.data_bytes = 0
        self.skipped: list[list[str]] = []
        self.sums = empty_sums(self.size)
        self.checkpoint_seconds = checkpoint_seconds
        self._last_checkpoint: float | None = None
        self._files: dict[str, Any] = {}
        self._flusher: Flusher | None = None
        self._lock = WriteLock(self.path)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Start afresh, or resume the recorded progress when the fingerprint matches."""
        remove_stale(self.path)  # temporary files of a killed writer
        progress = self.path / PROGRESS
        if progress.exists():
            with np.load(progress, allow_pickle=False) as saved:
                state = json.loads(str(saved["state"]))
                if state.get("fingerprint") != self.fingerprint:
                    raise UserError(
                        f"{self.path}: half-written store from different arguments or source "
                        f"files ({_difference(state.get('fingerprint'), self.fingerprint)}); "
                        f"delete {self.path} to start it afresh, or rerun with the arguments "
                        "and source files it was started with")
                self.sums = {key: saved[key].copy() for key in
                             ("image_sum", "channel_sum", "outer_sum", "count")}
            self.chunks_done, self.count = state["chunks_done"], state["count"]
            self.data_bytes, self.skipped = state["data_bytes"], state["skipped"]
        else:
            for name in STORE_FILES:  # what a split of either format left, if anything
                (self.path / name).unlink(missing_ok=True)
        self._write_header(complete=False, stats=None)
        for name, length in ((self.data_name, self.data_bytes), (LABELS_PART, 8 * self.count)):
            if length and _file_size(self.path / name) < length:
                raise UserError(f"{self.path / name}: shorter than its progress record says; "
                                "delete the split folder and prepare it again")
        lengths = {self.data_name: self.data_bytes, LABELS_PART: 8 * self.count}
        if self.format == "jpeg":
            lengths[LENGTHS_PART] = 8 * self.count
        for name, length in lengths.items():  # drop what was written after the last record
            f = open(self.path / name, "ab")  # kept open until close
            self._files[name] = f
            f.truncate(length)
        if self.checkpoint_seconds != float("inf"):
            self._flusher = Flusher([f.fileno() for f in self._files.values()], FLUSH_SECONDS)
            self._flusher.start()

    def _sync(self) -> None:
        if not self._files:
            raise RuntimeError(f"{self.path}: writer already closed")
        flusher = self._flusher
        with flusher.lock if flusher is not None else contextlib.nullcontext():
            for f in self._files.values():
                f.flush()
                os.fsync(f.fileno())
            if flusher is not None and flusher.error is not None:
                raise flusher.error

    def _close_files(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()

    def close(self) -> None:
        """Close the part files and release the lock (what was recorded stays; a new writer
        resumes from it). Safe after a failed write: errors of the final flush are dropped,
        since the next writer truncates to the recorded lengths anyway."""
        self._close_files()
        self._lock.release()

    def checkpoint(self) -> None:
        """Make every chunk added so far durable and record it (a rerun resumes after it)."""
        self._sync()
        self._save_progress()
        self._last_checkpoint = time.monotonic()

    def add_chunk(self, images: np.ndarray, labels: np.ndarray,
                  sums: dict[str, np.ndarray] | None = None,
                  skipped: Sequence[Sequence[str]] = (),
                  jpegs: Sequence[bytes] | None = None) -> None:
        """Append one chunk: uint8 (B, S, S, 3), int labels (B,), its sums and skip list.

        B may be 0 (every image of the chunk skipped): the chunk still counts as done.
        """
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.shape[1:] != (self.size, self.size, 3) or len(images) != len(labels):
            raise ValueError(f"chunk of shape {images.shape} with {len(labels)} labels for "
                             f"{self.size}x{self.size} images")
        if self.format == "raw":
            data: Any = memoryview(images.reshape(-1))  # flat uint8: bytes, even when empty
            lengths = b""
        else:
            blobs = list(jpegs) if jpegs is not None else [
                encode_jpeg(image, self.jpeg_quality) for image in images]
            data = b"".join(blobs)
            lengths = np.array([len(b) for b in blobs], np.int64).tobytes()
        self._files[self.data_name].write(data)
        self._files[LABELS_PART].write(np.asarray(labels, np.int64).tobytes())
        if lengths:
            self._files[LENGTHS_PART].write(lengths)
        add_sums(self.sums, sums if sums is not None else pixel_sums(images))
        self.chunks_done += 1
        self.count += len(images)
        self.data_bytes += len(data)
        self.skipped.extend([str(p), str(r)] for p, r in skipped)
        if (self._last_checkpoint is None
                or time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds):
            self.checkpoint()

    def _save_progress(self) -> None:
        state = {"fingerprint": self.fingerprint, "chunks_done": self.chunks_done,
                 "count": self.count, "data_bytes": self.data_bytes, "skipped": self.skipped}
        buffer = io.BytesIO()
        np.savez(buffer, state=np.array(json.dumps(state)), **self.sums)
        _write(self.path / PROGRESS, buffer.getvalue())

    def _write_header(self, *, complete: bool, stats: dict[str, Any] | None,
                      own: dict[str, Any] | None = None, stats_split: str | None = None,
                      skipped: int | None = None) -> None:
        meta = {
            "magic": MAGIC, "version": VERSION, "split": self.split, "image_size": self.size,
            "count": self.count, "format": self.format,
            "jpeg_quality": self.jpeg_quality if self.format == "jpeg" else None,
            "classes": self.classes, "num_classes": len(self.classes),
            "stats": stats_to_json(stats) if stats else None, "stats_split": stats_split,
            "own_stats": stats_to_json(own) if own else None,
            "source": self.source, "fingerprint": self.fingerprint,
            "skipped": len(self.skipped) if skipped is None else skipped,
            "complete": complete,
        }
        _write(self.path / HEADER, (json.dumps(meta, indent=1) + "\n").encode())

    def finish(self, stats: dict[str, Any] | None = None, stats_split: str | None = None,
               unused: Sequence[Sequence[str]] = ()) -> dict[str, Any]:
        """Write labels, offsets, statistics and the skip report, then mark complete.

        `stats` are the training split's statistics to record as this split's `stats`; when
        None, this split's own statistics are used (the training split itself, or data with
        no training split). `unused` lists (path, reason) of source files never decoded
        (unsupported names, broken links); skipped.tsv lists them after the skipped images.
        Returns the header. With no readable image and no `stats` given, skipped.tsv is
        written and a UserError raised (there are no statistics to record).
        """
        self._sync()
        self._close_files()
        try:
            return self._finish(stats, stats_split, unused)
        finally:
            self.close()

    def _finish(self, stats: dict[str, Any] | None, stats_split: str | None,
                unused: Sequence[Sequence[str]]) -> dict[str, Any]:
        rows = [*self.skipped, *([str(p), str(r)] for p, r in unused)]
        report = "".join(f"{tsv_field(p)}\t{tsv_field(r)}\n" for p, r in rows)
        _write(self.path / SKIPPED, f"{SKIPPED_COLUMNS}\n{report}".encode())
        own = stats_from_sums(self.sums) if self.count else None
        stats = own if stats is None else stats
        if stats is None:
            raise UserError(f"{self.path}: no readable images, so no statistics; check the "
                            f"source (the files are listed in {self.path / SKIPPED})")
        labels = np.fromfile(self.path / LABELS_PART, dtype=np.int64)
        _write(self.path / LABELS, _npy_bytes(labels))
        if self.format == "jpeg":
            lengths = np.fromfile(self.path / LENGTHS_PART, dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            _write(self.path / OFFSETS, _npy_bytes(offsets))
        _write(self.path / MEAN_IMAGE, _npy_bytes(np.asarray(stats["mean_image"])))
        if own is not None:
            _write(self.path / OWN_MEAN_IMAGE, _npy_bytes(own["mean_image"]))
        self._write_header(complete=True, stats=stats, own=own,
                           stats_split=stats_split or self.split, skipped=len(rows))
        _drop_progress(self.path)
        return json.loads((self.path / HEADER).read_text())


def _drop_progress(path: Path) -> None:
    """Delete the files that only a split being written has."""
    for name in (PROGRESS, LABELS_PART, LENGTHS_PART):
        (path / name).unlink(missing_ok=True)


def split_status(path: str | os.PathLike[str], fingerprint: Any, ignore: Sequence[str] = (),
                 optional: Sequence[str] = (), option: str = "OUT"
                 ) -> tuple[dict[str, Any] | None, str | None]:
    """(the header, None) when split folder `path` already holds this very split, complete and
    sound; else (None, why it is to be built afresh, or None).

    Nothing yet, or a half-written split for `SplitWriter` to resume: (None, None). A damaged
    split, which `SplitWriter` rebuilds from scratch: a complete one that does not open as
    `Store` would open it (files missing, of the wrong size or kind: no image is decoded), or
    a folder of ours (its lock file beside store files only) whose header is lost or
    unreadable. A UserError when `path` holds something else: a split prepared with other
    arguments (never overwritten), or a folder that is not a store. `ignore` names keys of a
    dict fingerprint that change how a split is written, not what it holds (compared only
    when resuming); `optional` keys added to fingerprints after some stores were written
    without them: a complete split's header that lacks one is not compared on it. `option`
    names the store folder in the refusals (prepare's OUT, the demo's --store).
    """
    path = Path(path)
    header = path / HEADER
    if header.exists():
        try:
            meta = json.loads(header.read_text())
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("magic") != MAGIC:
            if _ours(path):
                return None, f"{header} is unreadable"
            raise UserError(f"{header}: not an alexnet store header; choose another {option}")
        if not meta.get("complete"):
            return None, None
        saved = _without(meta.get("fingerprint"), ignore)
        mine = _without(fingerprint, ignore)
        if isinstance(saved, dict) and isinstance(mine, dict):
            mine = {k: v for k, v in mine.items() if k in saved or k not in optional}
        if saved != mine:
            raise UserError(f"{path}: already holds a store prepared with other arguments or "
                            f"source files ({_difference(saved, mine)}); delete it or choose "
                            f"another {option}")
        with WriteLock(path):  # a kill after completion may have left the progress files
            _drop_progress(path)
        damage = _damage(path, meta)
        return (None, damage) if damage else (meta, None)
    if path.is_dir() and not (path / PROGRESS).exists() \
            and any(p.name != LOCK for p in path.iterdir()):
        if _ours(path):
            return None, f"its {HEADER} is missing"
        raise UserError(f"{path}: folder exists and is not a store; choose another {option}")
    return None, None


def _ours(path: Path) -> bool:
    """Whether split folder `path` was written by a `SplitWriter`: its lock file is there and
    every other entry bears the name of a store file (or of one's temporary file)."""
    names = [p.name for p in path.iterdir()]
    return LOCK in names and all(
        name in STORE_FILES or name == LOCK or name.startswith(TMP_PREFIX) for name in names)


def _damage(path: Path, meta: dict[str, Any]) -> str | None:
    """Why the complete split at `path` (header `meta`) cannot be used as it is, or None:
    what opening it checks, and the files that only prepare reads (its own mean image, the
    skip report)."""
    try:
        Store(path)
        if meta.get("own_stats"):
            size = int(meta["image_size"])
            _load_array(path / OWN_MEAN_IMAGE, (size, size, 3), np.float64)
        if not (path / SKIPPED).is_file():
            raise UserError(f"{path / SKIPPED}: missing")
    except UserError as err:
        return str(err).removesuffix(f"; {RERUN}")
    return None


def _difference(saved: Any, fingerprint: Any) -> str:
    """Which keys of two dict fingerprints differ (or both, when they are no dicts)."""
    if isinstance(saved, dict) and isinstance(fingerprint, dict):
        keys = sorted(k for k in {*saved, *fingerprint} if saved.get(k) != fingerprint.get(k))
        return f"{', '.join(keys)} differ"
    return f"{saved} then, {fingerprint} now"


def _without(fingerprint: Any, keys: Sequence[str]) -> Any:
    """A fingerprint in its JSON form, without `keys` when it is a dict."""
    canonical = json.loads(json.dumps(fingerprint))
    if isinstance(canonical, dict):
        return {k: v for k, v in canonical.items() if k not in keys}
    return canonical


def own_stats(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The own statistics of the complete split at `path`; None when it is not one."""
    path = Path(path)
    try:
        meta = _read_header(path)
    except UserError:
        return None
    if not meta.get("own_stats"):
        return None
    size = int(meta["image_size"])
    return stats_from_json(meta["own_stats"],
                           _load_array(path / OWN_MEAN_IMAGE, (size, size, 3), np.float64))


def set_stats(path: str | os.PathLike[str], stats: dict[str, Any], stats_split: str) -> None:
    """Record another split's statistics (the training split's) in a complete split."""
    path = Path(path)
    with WriteLock(path):
        meta = _read_header(path)
        meta["stats"], meta["stats_split"] = stats_to_json(stats), stats_split
        _write(path / MEAN_IMAGE,
                      _npy_bytes(np.asarray(stats["mean_image"], np.float64)))
        _write(path / HEADER, (json.dumps(meta, indent=1) + "\n").encode())


def share_train_stats(root: str | os.PathLike[str]) -> None:
    """Record the training split's statistics in every other complete split of `root`."""
    root = Path(root)
    train = own_stats(root / "train")
    if train is None:
        return
    wanted = stats_to_json(train)
    for name in SPLITS:
        if name == "train":
            continue
        try:
            meta = _read_header(root / name)
        except UserError:  # absent or half-written: it gets them when it is finished
            continue
        if meta.get("stats") != wanted or meta.get("stats_split") != "train":
            set_stats(root / name, train, "train")


def write_store(path: str | os.PathLike[str], images: np.ndarray, labels: Sequence[int],
                classes: Sequence[Any], stats: dict[str, Any] | None = None, *,
                format: str = "raw", split: str | None = None, chunk: int = 256,
                source: Any = None) -> Store:
    """Write a complete split from arrays (tests, small data); statistics computed if absent.

    `path` is the split folder (e.g. ROOT/train); `split` defaults to its name. Anything
    already there is replaced.
    """
    path = Path(path)
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 \
            or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be uint8 (N, S, S, 3), got {images.dtype} "
                         f"{images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels shape {labels.shape} for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels must lie in 0..{len(classes) - 1}")
    if path.exists():
        shutil.rmtree(path)
    writer = SplitWriter(path, split=split or path.name, image_size=images.shape[1],
                         classes=classes, format=format, fingerprint=None,
                         source=source or "arrays (write_store)",
                         checkpoint_seconds=float("inf"))
    try:
        for start in range(0, len(images), chunk):
            writer.add_chunk(images[start:start + chunk], labels[start:start + chunk])
        if stats is not None:
            stats = {**stats, "mean_image": np.asarray(stats["mean_image"], np.float64)}
            stats.setdefault("pixels", len(images) * images.shape[1] ** 2)
        writer.finish(stats)
    finally:
        writer.close()
    return Store(path)


# ----------------------------------------------------------------------------- skip report


# Escaped in a field of skipped.tsv: the TSV separators, the backslash that escapes, other
# control characters, and every surrogate (a byte of a name that is not UTF-8, as Python's
# surrogateescape reads it, is \udc80-\udcff).
_ESCAPED = re.compile("[\\\\\x00-\x1f\x7f\ud800-\udfff]")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[\\tnr])")
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\x{code - 0xdc00:02x}" if 0xdc80 <= code <= 0xdcff else f"\\u{code:04x}"


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code in _UNESCAPES:
        return _UNESCAPES[code]
    value = int(code[1:], 16)
    return chr(0xdc00 + value if code[0] == "x" and value >= 0x80 else value)


def tsv_field(text: str) -> str:
    """`text` as one field of skipped.tsv: backslash, tab, newline and carriage return as
    \\\\ \\t \\n \\r, other control characters and the bytes of a name that are not UTF-8 as
    \\xHH (the byte), other lone surrogates as \\uHHHH; so that every row is one line of two
    fields, losslessly.

    Escaped rather than written back as the raw bytes (surrogateescape) so that the file is
    always valid UTF-8, which a strict decoder, pandas or an editor opens; the escapes are
    those of `printf '%b'`, which gives a field's original bytes back.
    """
    return _ESCAPED.sub(_escape, text)


def tsv_unfield(field: str) -> str:
    """The text that `tsv_field` escaped into `field` (a byte \\x80-\\xff comes back as the
    surrogate that Python names it with, so `os.fsencode` gives the file's name)."""
    return _ESCAPE.sub(_unescape, field)


def read_skipped(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The (path, reason) rows of the skipped.tsv of split folder `path`, unescaped; a file
    written before the fields were escaped (header row `path<TAB>reason`) is read too."""
    report = Path(path) / SKIPPED
    lines = report.read_text(encoding="utf-8", errors="surrogateescape").split("\n")[:-1]
    if lines and lines[0] == OLD_SKIPPED_COLUMNS:
        return _old_rows(lines[1:])
    if not lines or lines[0] != SKIPPED_COLUMNS:
        raise UserError(f"{report}: not a skip report (its first line is not the header "
                        f"row); {RERUN}")
    rows = [line.split("\t") for line in lines[1:]]
    bad = next((n for n, row in enumerate(rows, 2) if len(row) != 2), None)
    if bad is not None:
        raise UserError(f"{report}: line {bad} is not two tab-separated fields; {RERUN}")
    return [(tsv_unfield(name), tsv_unfield(reason)) for name, reason in rows]


def _old_rows(lines: list[str]) -> list[tuple[str, str]]:
    """The rows of an unescaped skip report, as well as they can be told apart: a line with
    no tab is the start of a name cut by a newline, and the reason follows the last tab."""
    rows: list[tuple[str, str]] = []
    pending: list[str] = []
    for line in lines:
        if "\t" not in line:
            pending.append(line)
            continue
        name, reason = line.rsplit("\t", 1)
        rows.append(("\n".join([*pending, name]), reason))
        pending = []
    return rows
