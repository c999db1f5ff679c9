"""Figure 4 right: test images and the training images nearest to them in fc7 space.

Section 6.1: "If two images produce feature activation vectors with a small Euclidean
separation, we can say that the higher levels of the neural network consider them to be
similar." The vectors are the last hidden layer (fc7, 4096-d, `model.features`). A training
set of 1.2M images has 1.2M x 4096 floats (20 GB) of them, so the search streams over the
training split in chunks and keeps a running top-k per query: memory is O(queries x (k +
chunk)), whatever the size of the training set. The --features-cache file is written and read
with plain file I/O, a chunk at a time, not through a memory map: the pages of a 20 GB map
count in the process's resident memory as they are touched (20 GB at the end of a pass, which
a job scheduler may hold against it), and a map whose filesystem cannot honour the reserved
space kills the process with SIGBUS where a write raises an error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.atomic import (
    FolderLock,
    check_output,
    ensure_folder,
    read_json_object,
    remove_stale,
    replacing,
    write_atomic,
)
from alexnet.errors import UserError
from alexnet.figures.text import drawable, noting_missing_glyphs
from alexnet.paper import FIG4_NEIGHBOURS

NEIGHBOURS = FIG4_NEIGHBOURS  # figure 4 right: six training images per test image
FEATURE_BATCH = 256  # training images per fc7 chunk
NO_FALLOCATE = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS}  # filesystem cannot: write zeros


def nearest_neighbours(queries: torch.Tensor | np.ndarray,
                       chunks: Iterable[torch.Tensor | np.ndarray],
                       k: int = NEIGHBOURS) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances (Q, k) float64, indices (Q, k) int64) of each query's k nearest rows.

    `chunks` yields consecutive blocks of the searched rows (row indices run on across
    chunks). Euclidean distance, computed in float64 as ||a||^2 - 2 a.b + ||b||^2; the result
    is sorted by distance, and equal distances are broken by the smaller row index, so the
    answer does not depend on how the rows are chunked. Fewer than k rows in all give fewer
    columns.
    """
    q = torch.as_tensor(queries).to(torch.float64)
    if q.ndim != 2:
        raise ValueError(f"queries must be (Q, D), got {tuple(q.shape)}")
    q_sq = (q * q).sum(1, keepdim=True)
    best_d = torch.empty(q.shape[0], 0, dtype=torch.float64)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.int64)
    offset = 0
    for chunk in chunks:
        b = torch.as_tensor(chunk).to(device="cpu", dtype=torch.float64)
        if b.ndim != 2 or b.shape[1] != q.shape[1]:
            raise ValueError(f"chunk of shape {tuple(b.shape)} for queries of dimension "
                             f"{q.shape[1]}")
        n = b.shape[0]
        if n == 0:
            continue
        d = (q_sq - 2.0 * q @ b.T + (b * b).sum(1)[None, :]).clamp_min_(0.0)
        idx = torch.arange(offset, offset + n, dtype=torch.int64).expand(q.shape[0], n)
        # The kept rows all precede this chunk and are sorted by (distance, index); the chunk's
        # indices ascend: a STABLE sort by distance therefore orders ties by index.
        all_d = torch.cat([best_d, d], dim=1)
        all_i = torch.cat([best_i, idx], dim=1)
        order = torch.sort(all_d, dim=1, stable=True).indices[:, :k]
        best_d, best_i = all_d.gather(1, order), all_i.gather(1, order)
        offset += n
    return best_d.sqrt(), best_i


@torch.inference_mode()
def fc7_features(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
                 ) -> Iterator[torch.Tensor]:
    """Yield the fc7 vectors (B, 4096) of each centre-crop batch of `loader`, on the CPU."""
    was_training = model.training
    model.eval()
    try:
        for x, _ in loader:
            yield model.features(x).float().cpu()
    finally:
        model.train(was_training)


def _key_path(path: Path) -> Path:
    """The JSON file beside a feature cache that says what the features were computed from."""
    return path.with_name(path.name + ".json")


@contextlib.contextmanager
def holding_cache(path: Path) -> Iterator[None]:
    """Hold the --features-cache `path`'s lock (`FolderLock.beside`) while it is read, or
    written and searched; while another `alexnet figures` holds it, say so and wait.

    Two commands writing one cache at once could leave one's key beside the other's features
    (each removes the key, renames its .npy, then writes its key). Waiting, not refusing:
    commands sharing a cache mostly want the same features (another split, seed or --out), and
    the one that waited reads them instead of computing them again. A folder where no lock
    file can be made (read-only) is read without it: no command can write a cache there.
    """
    lock = FolderLock.beside(path, f"--features-cache {path}: another `alexnet figures` is "
                             "writing it; wait for it to end")
    with contextlib.suppress(OSError):
        lock.acquire(wait=lambda: print(f"figure 4 right: waiting for another `alexnet "
                                        f"figures` writing --features-cache {path}",
                                        file=sys.stderr, flush=True))
    try:
        yield
    finally:
        lock.release()


def cached_chunks(chunks: Iterable[torch.Tensor], path: Path, rows: int,
                  key: dict[str, Any] | None = None) -> Iterator[torch.Tensor]:
    """Pass the chunks through while writing them to a float32 .npy file of `rows` rows.

    The file is written under a temporary name, its whole size reserved on disk first, each
    chunk appended as it comes (the process holds one chunk, not the file), and renamed when
    complete; `key` (what the features come from: checkpoint, store) is written beside it
    after the rename, so `read_cache` reuses only a complete cache of the same net and data.
    The earlier key is removed only just before that rename: a kill at any moment leaves the
    earlier cache with its key, or a cache without a key (recomputed), never a key beside
    features it does not describe.
    """
    remove_stale(path.parent, [path, _key_path(path)])  # of killed rewrites, no other
    offset = 0
    try:
        with replacing(path) as tmp, contextlib.ExitStack() as stack:
            file: Any = None
            for chunk in chunks:
                if file is None:
                    shape = (rows, chunk.shape[1])
                    file = stack.enter_context(_reserved_file(tmp, shape, path))
                _write_rows(file, chunk, (rows - offset, shape[1]), path)
                offset += len(chunk)
                yield chunk
            if file is None or offset != rows:
                raise _Incomplete  # keep no cache of part of the data
            file.flush()
            os.fsync(file.fileno())  # the features are on disk before the earlier key goes
            _key_path(path).unlink(missing_ok=True)  # the earlier key dies with its .npy
    except _Incomplete:
        return
    write_atomic(_key_path(path), json.dumps(key or {}, sort_keys=True) + "\n")


def _reserved_file(tmp: Path, shape: tuple[int, int], path: Path) -> Any:
    """`tmp` made a float32 .npy file of `shape` with all its bytes allocated on disk, open
    for writing at its first row: a full disk fails here as a one-line UserError, before any
    feature is computed for it."""
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                "fortran_order": False, "shape": shape})
            start = f.tell()
        _reserve(tmp, start, start + shape[0] * shape[1] * 4)
        file = open(tmp, "r+b")  # closed by the caller's ExitStack
        file.seek(start)
    except OSError as err:
        raise _cannot_write(path, shape[0] * shape[1] * 4, err) from None
    return file


def _write_rows(file: Any, chunk: torch.Tensor, room: tuple[int, int], path: Path) -> None:
    """Append `chunk`'s rows to the cache file as float32; `room`: (rows left in the file,
    its columns), which the chunk must fit."""
    rows = np.ascontiguousarray(chunk.numpy(), dtype=np.float32)
    if rows.ndim != 2 or len(rows) > room[0] or rows.shape[1] != room[1]:
        raise ValueError(f"feature chunk of shape {rows.shape} for {path}, which has "
                         f"{room[0]} rows of {room[1]} left")
    try:
        file.write(rows.data)
    except OSError as err:
        raise _cannot_write(path, os.fstat(file.fileno()).st_size, err) from None


def _cannot_write(path: Path, size: int, err: OSError) -> UserError:
    """The one-line error for a cache that cannot be written (`size` bytes at stake)."""
    reason = err.strerror or type(err).__name__
    return UserError(f"--features-cache {path}: cannot write the {size / 1e6:.0f} MB cache "
                     f"({reason}); free disk space, or choose another --features-cache "
                     "(an earlier cache there is kept)")


def _reserve(file: Path, start: int, end: int) -> None:
    """Allocate bytes [start, end) of `file` on disk: posix_fallocate where the platform and
    the filesystem have it, else by writing the zeros that the region holds anyway."""
    with open(file, "r+b") as f:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(f.fileno(), start, end - start)
                return
            except OSError as err:
                if err.errno not in NO_FALLOCATE:
                    raise
        zeros = memoryview(bytes(min(end - start, 1 << 24)))
        f.seek(start)
        while f.tell() < end:
            f.write(zeros[:end - f.tell()])


def is_feature_cache(path: Path) -> bool:
    """Whether `path` is an earlier feature cache: a 2-D float32 .npy (what `cached_chunks`
    writes), the only file --features-cache may replace."""
    try:
        mm = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return isinstance(mm, np.ndarray) and mm.ndim == 2 and mm.dtype == np.float32


def is_cache_key(path: Path) -> bool:
    """Whether `path` is an earlier cache's key file (the JSON `cached_chunks` writes)."""
    data = read_json_object(path)
    return data is not None and (not data or {"checkpoint", "store"} <= data.keys())


def check_cache(path: Path, rows: int | None = None, key: dict[str, Any] | None = None
                ) -> None:
    """Refuse, before any figure is drawn, a --features-cache that would fail or destroy: a
    folder, a path in a store, a file (or key file beside it) other than an earlier cache, or
    a folder where files cannot be written when the cache must be (re)written (`rows`, `key`:
    the training split the cache is for; None: there is none to cache)."""
    check_output(path, "feature cache", is_feature_cache, "--features-cache")
    check_output(_key_path(path), "feature cache key", is_cache_key, "--features-cache",
                 name=f"--features-cache {path}: its key file {_key_path(path)}")
    if rows is not None and read_cache(path, rows, key) is None:
        ensure_folder(path.parent, "folder for --features-cache")


class _Incomplete(Exception):
    """The features stopped short of `rows`: the temporary cache file is dropped."""


def read_cache(path: Path, rows: int, key: dict[str, Any] | None = None,
               chunk: int = FEATURE_BATCH * 16) -> Iterator[torch.Tensor] | None:
    """Chunks of `chunk` rows of a complete feature cache of `rows` rows made with `key`, read
    one at a time (the process holds a chunk, not the file), else None."""
    try:
        if json.loads(_key_path(path).read_text()) != json.loads(json.dumps(key or {})):
            return None
        shape, start = _cache_layout(path)
    except (OSError, ValueError):
        return None
    if shape[0] != rows:
        return None
    return _read_rows(path, start, shape, chunk)


def _cache_layout(path: Path) -> tuple[tuple[int, int], int]:
    """(shape, offset of the first row) of a 2-D C-order float32 .npy file whose bytes are all
    there, else a ValueError."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if header is None:
            raise ValueError(f"{path}: .npy format version {version}")
        shape, fortran_order, dtype = header(f)
        start = f.tell()
        size = os.fstat(f.fileno()).st_size
    if len(shape) != 2 or fortran_order or dtype != np.float32:
        raise ValueError(f"{path}: not a 2-D C-order float32 array")
    if size < start + shape[0] * shape[1] * 4:
        raise ValueError(f"{path}: truncated")
    return (int(shape[0]), int(shape[1])), start


def _read_rows(path: Path, start: int, shape: tuple[int, int], chunk: int
               ) -> Iterator[torch.Tensor]:
    """The rows of the cache file at `path` (first row at byte `start`), `chunk` at a time."""
    rows, cols = shape
    with open(path, "rb") as f:
        f.seek(start)
        for first in range(0, rows, chunk):
            block = np.empty((min(chunk, rows - first), cols), np.float32)
            if f.readinto(memoryview(block).cast("B")) != block.nbytes:
                raise UserError(f"--features-cache {path}: shorter than its header says "
                                "(changed while read?); delete it and rerun")
            yield torch.from_numpy(block)


def choose_queries(n: int, count: int, seed: int = 0) -> list[int]:
    """`count` distinct image indices out of `n`, reproducibly drawn from `seed`, ascending."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=min(count, n), replace=False).tolist())


def plot_neighbours(query_images: Sequence[np.ndarray], neighbour_images: Sequence[
                    Sequence[np.ndarray]], path: Path, *, query_titles: Sequence[str],
                    neighbour_titles: Sequence[Sequence[str]], split: str = "test",
                    dpi: int = 100) -> tuple[int, int]:
    """Write the figure: one row per query, its image (from split `split`, which the title
    names) then its neighbours, nearest first.

    The titles are drawn as given, through `drawable` (cut them to fit: `class_labels`).
    The PNG is exactly (1 + k) * 150 x rows * 170 pixels at the default dpi.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(query_images)
    cols = 1 + max((len(n) for n in neighbour_images), default=0)
    with noting_missing_glyphs():
        fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.7 * rows), dpi=dpi,
                                 squeeze=False)
        try:
            for r in range(rows):
                _row(axes[r], query_images[r], neighbour_images[r], query_titles[r],
                     neighbour_titles[r])
            fig.suptitle(f"{drawable(split)} image (left) and the training images nearest in "
                         "fc7 space", fontsize=8, parse_math=False)
            fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.5 / (1.7 * rows), bottom=0.01,
                                wspace=0.05, hspace=0.25)
            write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
        finally:
            plt.close(fig)
    return int(round(1.5 * cols * dpi)), int(round(1.7 * rows * dpi))


def _row(axes: Sequence[Any], query: np.ndarray, neighbours: Sequence[np.ndarray],
         query_title: str, titles: Sequence[str]) -> None:
    """One row: the query in a red frame, then its neighbours; empty cells hidden."""
    for c, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.imshow(query)
            ax.set_title(drawable(query_title), fontsize=7, color="tab:red", parse_math=False)
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:red")
                spine.set_linewidth(2)
        elif c - 1 < len(neighbours):
            ax.imshow(neighbours[c - 1])
            ax.set_title(drawable(titles[c - 1]), fontsize=6, parse_math=False)
        else:
            ax.axis("off")
