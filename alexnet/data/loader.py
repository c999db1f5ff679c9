"""TrainLoader and EvalLoader: store -> augmented float batches, read ahead, sharded, resumable.

uint8 batches are read from the store (a memory map: no decoding) by a small thread pool
ahead of the training step; on a CUDA device the uint8 batch is pinned, copied with
non_blocking=True, and augmented there (alexnet/data/augment.py), as in timm's PrefetchLoader
and airbench. The shuffle of an epoch depends on (seed, epoch) only and every random draw of
batch k on (seed, epoch, k, rank) only, so `epoch(e, start=k)` gives exactly the batches an
uninterrupted epoch gives from k on: a run resumed mid-epoch continues bit for bit.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from alexnet.data import augment
from alexnet.errors import UserError
from alexnet.paper import CROP_SIZE, PCA_ALPHA_STD, TEST_CROPS

T = TypeVar("T")
_SHUFFLE, _DRAWS = 0, 1  # domain tags: the shuffle's and the draws' seeds never coincide


def derive_seed(*words: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: well mixed, platform independent)."""
    if any(w < 0 for w in words):
        raise UserError(f"seed {words}: seeds and epochs must be >= 0")
    state = np.random.SeedSequence(list(words)).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of epoch `epoch`: a permutation of range(n) from (seed, epoch) alone."""
    return np.random.default_rng(derive_seed(_SHUFFLE, seed, epoch)).permutation(n)


def batch_generator(seed: int, epoch: int, batch: int, rank: int) -> torch.Generator:
    """The CPU generator of every random draw of one batch: from (seed, epoch, batch, rank)."""
    return torch.Generator().manual_seed(derive_seed(_DRAWS, seed, epoch, batch, rank))


def read_ahead(jobs: Sequence[Callable[[], T]], depth: int) -> Iterator[T]:
    """Results of `jobs` in order, with up to `depth` of them running ahead in threads.

    store.read (np.memmap slicing, PIL decoding) and torch ops release the GIL, so reading
    overlaps the consumer's work. depth 0 runs each job when its result is asked for.
    """
    if depth <= 0:
        for job in jobs:
            yield job()
        return
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="alexnet-read")
    pending: deque[Future[T]] = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


_MALLOC_TUNED = False


def keep_freed_memory() -> None:
    """Let glibc keep freed big blocks for reuse instead of unmapping them (once per process).

    glibc returns every freed block over 32 MB to the OS, so each new 77 MB float batch
    (128 x 3 x 224 x 224) would be page-faulted afresh: on the CPU that costs ten times the
    arithmetic of the augmentation. Raising M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to 1 GiB
    makes freed batches reusable, as jemalloc or tcmalloc (PyTorch's CPU tuning advice) would;
    M_ARENA_MAX 1 makes the read-ahead threads allocate from that same heap (a thread's own
    arena holds at most 64 MB, so a batch made there would be mmap'ed again). A no-op where
    libc is not glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _check_stats(stats: Any, mean: str, pca: bool, image_size: int) -> dict[str, Any]:
    """The statistics the options need, or a UserError saying what is missing."""
    if mean not in augment.MEANS:
        raise UserError(f"mean {mean!r}: choose from {', '.join(augment.MEANS)}")
    need = {"image": ["mean_image"], "channel": ["channel_mean"], "none": []}[mean]
    need += ["eigval", "eigvec"] if pca else []
    if need and not stats:
        raise UserError("the store has no training statistics (needed for mean subtraction "
                        "and PCA colour); prepare it with `alexnet prepare` or pass stats")
    missing = [k for k in need if stats.get(k) is None]
    if missing:
        raise UserError(f"statistics lack {', '.join(missing)}; prepare the store again")
    if mean == "image" and np.shape(stats["mean_image"]) != (image_size, image_size, 3):
        raise UserError(f"mean image of shape {np.shape(stats['mean_image'])} for a store of "
                        f"{image_size}x{image_size} images; use statistics of a store of the "
                        "same image size")
    return stats or {}


def _check_crop(crop: int, image_size: int) -> None:
    if not 0 < crop <= image_size:
        raise UserError(f"crop {crop}: must lie in 1..{image_size} (the store's image size)")


def _resolve(device: torch.device | str) -> torch.device:
    """The device with its index: "cuda" is the caller's current GPU, which the read-ahead
    threads (each with its own current device, 0) must not reinterpret."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch (uint8 images or int64 labels) to `device`: pinned, copied without blocking."""
    tensor = torch.from_numpy(images)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class TrainLoader:
    """Training batches of the paper (section 4.1): random crops, mirrors, PCA colour, mean.

    Each rank takes a disjoint part of every epoch (like DistributedSampler: the epoch's
    permutation, truncated to a multiple of world_size, then rank::world_size), and drops its
    last partial batch. `pca_scale` is "std" (sqrt of each eigenvalue, cuda-convnet2's and
    fb.resnet.torch's reading, the default) or "eigval" (the paper's formula taken literally:
    shifts of hundreds of levels); a number (config data.pca_scale) keeps "std" and multiplies
    the paper's alpha std (0.1) by it. `stats` default to the store's (the training split's).
    """

    def __init__(self, store: Any, batch_size: int, *, crop: int = CROP_SIZE, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 flip: bool = True, pca: bool = True, pca_scale: str | float = "std",
                 mean: str = "image", stats: dict[str, Any] | None = None, prefetch: int = 2,
                 channels_last: bool = False) -> None:
        if batch_size < 1:
            raise UserError(f"batch size {batch_size}: must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} of world size {world_size}: need 0 <= rank < world")
        if seed < 0:
            raise UserError(f"seed {seed}: must be >= 0")
        self.alpha_std = PCA_ALPHA_STD
        if isinstance(pca_scale, (int, float)) and not isinstance(pca_scale, bool):
            if pca_scale < 0:
                raise UserError(f"pca_scale {pca_scale}: must be >= 0")
            self.alpha_std, pca_scale = PCA_ALPHA_STD * float(pca_scale), "std"
        if pca_scale not in augment.PCA_SCALES:
            raise UserError(f"pca_scale {pca_scale!r}: choose from "
                            f"{', '.join(augment.PCA_SCALES)} (or a number)")
        _check_crop(crop, store.image_size)
        self.store, self.batch_size, self.crop = store, int(batch_size), int(crop)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = _resolve(device)
        self.flip, self.pca, self.pca_scale, self.mean = flip, pca, pca_scale, mean
        self.prefetch, self.channels_last = max(0, int(prefetch)), channels_last
        stats = store.stats if stats is None else stats
        self.stats = _check_stats(stats, mean, pca, store.image_size)
        self._device_stats = augment.device_stats(self.stats, self.device)
        self.labels = np.asarray(store.labels, np.int64)
        if self.device.type == "cpu":
            keep_freed_memory()

    def __len__(self) -> int:
        """Batches per epoch for this rank (drop_last)."""
        return (len(self.store) // self.world_size) // self.batch_size

    def indices(self, epoch: int) -> np.ndarray:
        """Store indices this rank reads in epoch `epoch`, batch after batch (len * batch)."""
        per_rank = len(self.store) // self.world_size
        order = epoch_permutation(len(self.store), self.seed, epoch)
        mine = order[:per_rank * self.world_size][self.rank::self.world_size]
        return mine[:len(self) * self.batch_size]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches (x float32 (B, 3, crop, crop), y int64 (B,)) on the device, from `start`."""
        if not 0 <= start <= len(self):
            raise UserError(f"start batch {start}: this epoch has {len(self)} batches")
        order = self.indices(epoch).reshape(len(self), self.batch_size)
        on_cpu = self.device.type == "cpu"
        jobs = [self._job(epoch, k, order[k], augment_too=on_cpu)
                for k in range(start, len(self))]
        for item in read_ahead(jobs, self.prefetch):
            if on_cpu:
                yield item
            else:
                k, images, y = item
                yield self._augment(epoch, k, images), y

    def _job(self, epoch: int, k: int, index: np.ndarray, *, augment_too: bool
             ) -> Callable[[], Any]:
        """Read batch k (sorted indices: sequential reads); on the CPU, augment it as well."""
        def run() -> Any:
            index_sorted = np.sort(index)
            images = _to_device(self.store.read(index_sorted), self.device)
            y = _to_device(self.labels[index_sorted], self.device)
            if augment_too:
                return self._augment(epoch, k, images), y
            return k, images, y
        return run

    def _augment(self, epoch: int, k: int, images: torch.Tensor) -> torch.Tensor:
        return augment.train_batch(
            images, batch_generator(self.seed, epoch, k, self.rank), self._device_stats,
            crop_size=self.crop, flip=self.flip, pca=self.pca, pca_scale=self.pca_scale,
            alpha_std=self.alpha_std, mean=self.mean, channels_last=self.channels_last)


class EvalLoader:
    """Test batches: the centre patch (crops=1) or the paper's 10 patches (section 4.1).

    Iterates (x float32 (B * crops, 3, crop, crop), y int64 (B,)) in store order (or the
    order of `indices`), image-major: x.view(B, crops, 3, crop, crop); patches in
    augment.TEN_CROP_ORDER. The mean is subtracted as in training; the last batch may be
    smaller.
    """

    def __init__(self, store: Any, batch_size: int, *, crops: int = 1, crop: int = CROP_SIZE,
                 mean: str = "image", stats: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu", indices: Sequence[int] | None = None,
                 prefetch: int = 2) -> None:
        if batch_size < 1:
            raise UserError(f"batch size {batch_size}: must be at least 1")
        if crops not in (1, TEST_CROPS):
            raise UserError(f"crops {crops}: use 1 (centre) or {TEST_CROPS} (corners, centre "
                            "and their mirrors)")
        _check_crop(crop, store.image_size)
        self.store, self.batch_size, self.crops, self.crop = store, int(batch_size), crops, crop
        self.mean, self.device = mean, _resolve(device)
        self.prefetch = max(0, int(prefetch))
        stats = store.stats if stats is None else stats
        self.stats = _check_stats(stats, mean, False, store.image_size)
        self._device_stats = augment.device_stats(self.stats, self.device)
        n = len(store)
        self.order = np.arange(n) if indices is None else np.asarray(indices, np.int64)
        if self.order.size and (self.order.min() < 0 or self.order.max() >= n):
            raise UserError(f"indices must lie in 0..{n - 1}")
        self.labels = np.asarray(store.labels, np.int64)
        if self.device.type == "cpu":
            keep_freed_memory()

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        on_cpu = self.device.type == "cpu"
        jobs = [self._job(self.order[i:i + self.batch_size], augment_too=on_cpu)
                for i in range(0, len(self.order), self.batch_size)]
        for images, y in read_ahead(jobs, self.prefetch):
            yield (images if on_cpu else self._patches(images)), y

    def _job(self, index: np.ndarray, *, augment_too: bool) -> Callable[[], Any]:
        def run() -> Any:
            images = _to_device(self.store.read(index), self.device)
            y = _to_device(self.labels[index], self.device)
            return (self._patches(images) if augment_too else images), y
        return run

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        return augment.eval_batch(images, self._device_stats, crops=self.crops,
                                  crop_size=self.crop, mean=self.mean)
