"""TrainLoader and EvalLoader: store -> augmented float batches, read ahead, sharded, resumable.

uint8 batches are read from the store by a pool of read-ahead threads ahead of the training
step: a raw store with one positional read per image (no decoding); a jpeg store's bytes are
decoded by a CPU decoder that releases the interpreter lock (alexnet/data/decode.py), and on
a CUDA device a share of each batch (`gpu_decode`) on the GPU (decode.decode_gpu:
nvImageCodec's hardware engines or nvJPEG). On a CUDA device the uint8 batch is pinned, copied with
non_blocking=True, and augmented there (alexnet/data/augment.py), as in
timm's PrefetchLoader and airbench. The read-ahead depth defaults to what fits the machine
(`default_prefetch`); the GPU's share and the GPU decoder to the split that read fastest
when timed with both decoders at work (`gpu_choice`), never one that read slower than the
CPU decoders alone.

The shuffle of an epoch depends on (seed, epoch) only and every random draw of batch k
on (seed, epoch, k, rank) only, so `epoch(e, start=k)` gives exactly the batches an
uninterrupted epoch gives from k on, at every read-ahead depth (with the same decoders and
GPU share, which on CUDA is measured at start unless given): a run resumed mid-epoch
continues bit for bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from alexnet.config import MEAN_CHOICES
from alexnet.data import augment, decode
from alexnet.data.store import check_indices, damaged_image
from alexnet.errors import UserError, one_line
from alexnet.paper import CROP_SIZE, PCA_ALPHA_STD, TEST_CROPS

T = TypeVar("T")
_SHUFFLE, _DRAWS = 0, 1  # domain tags: the shuffle's and the draws' seeds never coincide
SHARE_STEP = 0.05  # the measured GPU share is rounded to this: runs on one machine agree
RATE_IMAGES = 16  # images each CPU decoding thread decodes per round when rates are measured
RATE_ROUNDS = 3  # timed rounds of each side (after one untimed): the fastest counts
SPLIT_ROUNDS = 2  # timed rounds of each split read at once (after one untimed): the fastest


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

    store.read (positional reads, PIL decoding) and torch ops release the GIL, so reading
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


def host_cores() -> int:
    """Cores this process may use: its CPU affinity, shared among the ranks of this host
    (torchrun's LOCAL_WORLD_SIZE), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    ranks = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(1, cores // max(1, int(ranks) if ranks.isdigit() else 1))


def default_prefetch(device: torch.device | str, cores: int | None = None) -> int:
    """Read-ahead depth (batches in flight, one thread each) that fits the machine.

    On the CPU the batch is augmented in the read-ahead threads too and the model needs the
    cores: 2 (or 1 on one core). On a GPU, `alexnet bench pipeline` on the H200 host (16
    cores, reader streams) delivered raw batches at 71.0k img/s at depth 4, 80.5k at 8 and
    87.6k at 16, and a jpeg store's read-ahead threads are its decoders: one per core, 4 to 16.
    """
    cores = host_cores() if cores is None else max(1, int(cores))
    if torch.device(device).type != "cuda":
        return min(2, cores)
    return max(4, min(16, cores))


def default_decode_threads(device: torch.device | str, cores: int | None = None) -> int:
    """Threads that decode one jpeg batch's images together. Feeding a GPU: 1, each
    read-ahead thread decoding its own batch (the decoders release the interpreter lock), since
    on the H200 host that ran at 19.5k img/s at depth 8 against 14.6k for 16 threads shared by
    the batches in flight; 2 beside a model training on the CPU."""
    cores = host_cores() if cores is None else max(1, int(cores))
    return 1 if torch.device(device).type == "cuda" else min(2, cores)


def default_gpu_decode(store: Any, device: torch.device | str, decoder: str = "auto",
                       prefetch: int = 1, threads: int = 1, batch: int = 256) -> float:
    """The share of each jpeg batch decoded on the GPU by default: the split of `gpu_choice`
    (the fastest measured with both decoders reading at once), 0 for raw stores and where
    no GPU decoder runs."""
    return gpu_choice(store, device, decoder, prefetch, threads, batch).share


def share_of(gpu_rate: float, cpu_rate: float) -> float:
    """The GPU's share of a batch at which both decoders finish together, to SHARE_STEP."""
    share = gpu_rate / (gpu_rate + cpu_rate)
    return _to_step(share)


def _to_step(share: float) -> float:
    return round(round(share / SHARE_STEP) * SHARE_STEP, 2)


def _fastest(run: Callable[[], Any], rounds: int) -> float:
    """Seconds of the fastest of `rounds` timed calls of `run`, after an untimed one (decoder
    set-up, allocators, caches)."""
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return max(min(times[1:]), 1e-9)


def decode_rates(store: Any, device: torch.device, decoder: str, threads: int,
                 gpu_batch: int, gpu_decoder: str | None = None) -> tuple[float, float]:
    """(GPU, CPU) decode rates in images/s of the store's first images, each measured alone:
    GPU decoder `gpu_decoder` (None: decode.GPU_DECODER) on batches of `gpu_batch` as the
    loader's GPU thread calls it, and `threads` CPU threads decoding RATE_IMAGES images each
    at once, as the read-ahead threads do; each the fastest of RATE_ROUNDS timed rounds after
    an untimed one. An image that does not decode is named by its store and index, as in
    `read_batch`."""
    blobs = store.encoded(np.arange(min(len(store), max(gpu_batch, RATE_IMAGES))))
    size = store.image_size
    gpu_part = [blobs[i % len(blobs)] for i in range(gpu_batch)]
    cpu_part = [blobs[i % len(blobs)] for i in range(RATE_IMAGES)]
    outs = [np.empty((RATE_IMAGES, size, size, 3), np.uint8) for _ in range(threads)]
    try:
        gpu_time = _fastest(lambda: decode_on_gpu(gpu_part, size, device, gpu_decoder),
                            RATE_ROUNDS)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="alexnet-rate") as pool:
            cpu_time = _fastest(lambda: list(pool.map(
                lambda out: decode.decode_cpu(cpu_part, size, decoder, out), outs)),
                RATE_ROUNDS)
    except decode.UndecodableImage as err:  # row r of either part is the store's image r % n
        raise damaged_image(store, err.row % len(blobs), err.reason) from None
    return gpu_batch / gpu_time, threads * RATE_IMAGES / cpu_time


@dataclass(frozen=True)
class Reading:
    """How a loader reads batches: read-ahead depth, for jpeg stores the CPU decoder, the
    threads that decode each batch and the GPU's share of it (0..1), whether the read-ahead
    threads augment the batches too (else the consumer does), and the GPU decoder of the
    GPU's share (decode.GPU_DECODERS; None: none runs here, or decode.GPU_DECODER)."""

    prefetch: int
    decoder: str
    threads: int
    gpu_decode: float
    augment_in_readers: bool
    gpu_decoder: str | None = None


def default_augment_in_readers(device: torch.device | str, fmt: str = "raw") -> bool:
    """Where batches of a store in format `fmt` are augmented by default: in the read-ahead
    threads on the CPU (they have the cores; the consumer trains) and for raw stores on a GPU,
    by the consumer on its own stream for jpeg stores on a GPU (their read-ahead threads
    decode). By measurement: one H200 training from a store (`alexnet bench pipeline`,
    2026-11-29) ran raw at 0.98x the model alone augmented in the threads, 0.89x by the
    consumer; jpeg at 0.41x in the threads, 0.43x by the consumer."""
    return torch.device(device).type != "cuda" or fmt == "raw"


def reading(store: Any, device: torch.device, prefetch: int | None = None,
            decoder: str = "auto", decode_threads: int | None = None,
            gpu_decode: float | None = None, augment_in_readers: bool | None = None,
            batch: int = 256) -> Reading:
    """The loader's Reading for batches of `batch` images: None (or a negative number) is the
    default that fits here."""
    device = torch.device(device)
    if augment_in_readers is None:
        augment_in_readers = default_augment_in_readers(device, store.format)
    if prefetch is None or prefetch < 0:
        prefetch = default_prefetch(device)
    if decode_threads is None or decode_threads < 1:
        decode_threads = default_decode_threads(device)
    decoder = decode.resolve_cpu_decoder(decoder)
    auto = gpu_decode is None or gpu_decode < 0
    if not auto and gpu_decode > 1:
        raise UserError(f"gpu_decode {gpu_decode}: the GPU's share of each jpeg batch lies in "
                        "0..1 (negative: auto)")
    reason = decode.gpu_unavailable(device)
    if not auto and gpu_decode > 0 and store.format == "jpeg" and reason:
        raise UserError(f"gpu_decode {gpu_decode}: {reason}; use gpu_decode 0 (CPU decode)")
    choice = GpuChoice()
    if auto or gpu_decode > 0:  # a share of auto, or a given one: the fastest GPU decoder
        choice = gpu_choice(store, device, decoder, prefetch, decode_threads, batch)
    share = choice.share if auto else float(gpu_decode)
    return Reading(int(prefetch), decoder, int(decode_threads),
                   share if store.format == "jpeg" else 0.0, bool(augment_in_readers),
                   choice.decoder)


@dataclass(frozen=True)
class DecodeThreads:
    """The threads that decode a jpeg store's batches during one pass: `cpu` decodes each
    batch's CPU part in `Reading.threads` chunks (None: the reading thread decodes it), `gpu`
    is the one thread that decodes the GPU's parts (None: no GPU share)."""

    cpu: ThreadPoolExecutor | None = None
    gpu: ThreadPoolExecutor | None = None


@contextlib.contextmanager
def decode_pool(store: Any, how: Reading) -> Iterator[DecodeThreads]:
    """The decoding threads for one pass over `store`, stopped when it ends.

    The GPU decode gets a thread of its own: it runs one batch at a time in a process
    (decode._GPU_LOCK; torchvision's own lock is held until its stream synchronises), so a
    read-ahead thread that called it would sit idle until the other threads' GPU parts were
    done, its core unused; handing the GPU part to this thread, the reader decodes its CPU
    part meanwhile.
    """
    if store.format != "jpeg":
        yield DecodeThreads()
        return
    with contextlib.ExitStack() as stack:
        def pool(workers: int, name: str) -> ThreadPoolExecutor:
            executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
            stack.callback(executor.shutdown, wait=True, cancel_futures=True)
            return executor

        yield DecodeThreads(cpu=pool(how.threads, "alexnet-decode") if how.threads > 1 else None,
                       gpu=pool(1, "alexnet-nvjpeg") if how.gpu_decode > 0 else None)


def decode_on_gpu(blobs: Sequence[Any], size: int, device: torch.device,
                  decoder: str | None = None) -> torch.Tensor:
    """The GPU's part of a jpeg batch, decoded on the GPU by GPU decoder `decoder` (None:
    decode.GPU_DECODER) on this thread's own stream and finished when this returns (so any
    stream may use it: see `hand_over`)."""
    with reader_stream(device):
        return decode.decode_gpu(blobs, size, device, decoder)


def read_batch(store: Any, index: np.ndarray, device: torch.device, how: Reading,
               decoders: DecodeThreads | None = None) -> torch.Tensor:
    """Store images `index` as uint8 (B, S, S, 3) on `device`.

    A raw store's pixels are sliced from the memory map. A jpeg store's first
    round(gpu_decode * B) images go to the GPU decoder on `decoders.gpu` (on this thread without
    it), while the other ones are decoded on the CPU straight into (pinned) memory, in
    `how.threads` chunks on `decoders.cpu` (on this thread without it).
    """
    if store.format != "jpeg":
        if device.type != "cuda":
            return _to_device(store.read(index), device)
        size = store.image_size
        pinned = torch.empty((len(index), size, size, 3), dtype=torch.uint8, pin_memory=True)
        store.read(index, out=pinned.numpy())  # one copy: memory map -> pinned memory
        return pinned.to(device, non_blocking=True)
    decoders = decoders or DecodeThreads()
    blobs, size = store.encoded(index), store.image_size
    on_gpu = round(how.gpu_decode * len(blobs))
    gpu_part = (decoders.gpu.submit(decode_on_gpu, blobs[:on_gpu], size, device,
                                    how.gpu_decoder) if on_gpu and decoders.gpu else None)
    shape = (len(blobs) - on_gpu, size, size, 3)
    cpu = torch.empty(shape, dtype=torch.uint8, pin_memory=device.type == "cuda")
    out, rest = cpu.numpy(), blobs[on_gpu:]
    cuts = np.linspace(0, len(rest), min(how.threads, len(rest)) + 1).astype(int)
    try:
        if decoders.cpu:
            for future in [decoders.cpu.submit(_decode_part, rest[a:b], size, how.decoder,
                                               out[a:b], on_gpu + a)
                           for a, b in zip(cuts[:-1], cuts[1:], strict=True)]:
                future.result()
        else:
            _decode_part(rest, size, how.decoder, out, on_gpu)
        cpu = cpu.to(device, non_blocking=True)
        if not on_gpu:
            return cpu
        gpu = (gpu_part.result() if gpu_part else
               decode_on_gpu(blobs[:on_gpu], size, device, how.gpu_decoder))
    except decode.UndecodableImage as err:
        raise damaged_image(store, int(index[err.row]), err.reason) from None
    hand_over(gpu)  # made on the nvJPEG thread's stream, read on this one's
    return torch.cat([gpu, cpu])


def _decode_part(blobs: Sequence[Any], size: int, decoder: str, out: np.ndarray, first: int
                 ) -> None:
    """decode.decode_cpu of rows first.. of a batch: an image that does not decode is named
    by its row in the whole batch (read_batch turns it into its index in the store)."""
    try:
        decode.decode_cpu(blobs, size, decoder, out)
    except decode.UndecodableImage as err:
        raise decode.UndecodableImage(first + err.row, err.reason) from None


@dataclass(frozen=True)
class GpuChoice:
    """The GPU share of each jpeg batch a loader reads with by default, and its GPU decoder,
    as measured by `gpu_choice`: `rates` holds the images/s of every split timed,
    {(GPU decoder, share): img/s}, (None, 0.0) being the CPU decoders alone, and `alone` each
    GPU decoder's images/s by itself. `share` is the fastest split's; `decoder` the GPU
    decoder of the fastest split with a GPU share (of the fastest alone where none had one),
    the one a given share uses too; None where no GPU decoder runs. `failed`: the GPU
    decoders that passed their check but failed while timed, with their one-line errors."""

    share: float = 0.0
    decoder: str | None = None
    rates: dict[tuple[str | None, float], float] = field(default_factory=dict)
    alone: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def gpu_choice(store: Any, device: torch.device | str, decoder: str = "auto",
               prefetch: int = 1, threads: int = 1, batch: int = 256) -> GpuChoice:
    """The default GPU share of a jpeg store's batches of `batch` images read `prefetch` at
    once, each CPU part by `threads` threads of CPU `decoder`, and the GPU decoder: measured
    on this machine (`measure_gpu_choice`) once per process for each store and setting.
    Share 0 and no decoder for raw or empty stores and where no GPU decoder runs."""
    device = torch.device(device)
    names = decode.usable_gpu_decoders(device) if store.format == "jpeg" else []
    if not names or not len(store):
        return GpuChoice()
    prefetch, threads, batch = max(0, int(prefetch)), max(1, int(threads)), max(1, int(batch))
    key = (str(getattr(store, "path", "")), str(device), decode.resolve_cpu_decoder(decoder),
           tuple(names), prefetch, threads, batch, store.image_size)
    if key not in _MEASURED_CHOICES:
        _MEASURED_CHOICES[key] = measure_gpu_choice(store, device, decoder, names, prefetch,
                                                    threads, batch)
    return _MEASURED_CHOICES[key]


_MEASURED_CHOICES: dict[tuple[Any, ...], GpuChoice] = {}


def measure_gpu_choice(store: Any, device: torch.device, decoder: str, names: Sequence[str],
                       prefetch: int, threads: int, batch: int) -> GpuChoice:
    """Time the store's first images read as the loader reads them (`split_rate`) with the
    CPU decoders alone and, for each GPU decoder of `names`, at two GPU shares: the one at
    which both parts of a batch would take the same time if the decoders did not slow each
    other (`share_of` the rates measured apart, `decode_rates`), and half of it. The fastest
    split is the default (`best_split`). A GPU decoder that fails while timed (it passed its
    check on one small JPEG) is left out and named in `failed`; a damaged image of the store
    is a UserError, as when reading.

    Rates measured apart cannot serve alone: a GPU decoder's host work (nvImageCodec's host
    Huffman decode on its CUDA-core path, parsing, the interpreter lock) shares the host with
    the CPU decoders. On the H200 host, nvImageCodec (11.7k img/s alone) beside 16 CPU
    threads (18.0k) at the share so computed, 0.40, gave 13.4k img/s: less than the CPU
    alone. Timed together, such a split loses to the CPU alone and is not taken.
    """
    def timed(name: str | None, share: float) -> float:
        how = Reading(prefetch, decoder, threads, share, False, name)
        return split_rate(store, device, how, batch)

    cpu_threads = min(host_cores(), max(1, prefetch) * threads)
    rates, alone, failed = {(None, 0.0): timed(None, 0.0)}, {}, {}
    for name in names:
        try:
            gpu_rate, cpu_rate = decode_rates(store, device, decoder, cpu_threads,
                                              max(1, batch // 2), name)
            apart = share_of(gpu_rate, cpu_rate)
            shares = [share for share in sorted({_to_step(apart / 2), apart}) if share > 0]
            measured = {(name, share): timed(name, share) for share in shares}
        except UserError:
            raise
        except Exception as err:  # this GPU decoder fails at scale: the others still serve
            failed[name] = f"{type(err).__name__}: {one_line(err)}"
            continue
        alone[name] = gpu_rate
        rates.update(measured)
    return best_split(rates, alone, failed)


def best_split(rates: dict[tuple[str | None, float], float], alone: dict[str, float],
               failed: dict[str, str] | None = None) -> GpuChoice:
    """The GpuChoice of the measured `rates` (and GPU decoders' rates `alone`, those that
    `failed`): the fastest split, the first of equals (the CPU alone comes first), so that a
    GPU share is taken only where it measured faster than the CPU decoders alone."""
    fastest = max(rates, key=rates.__getitem__)
    on_gpu = [split for split in rates if split[1] > 0 and split[0] is not None]
    decoder = (max(on_gpu, key=rates.__getitem__)[0] if on_gpu else
               max(alone, key=alone.__getitem__) if alone else None)
    return GpuChoice(fastest[1], decoder, dict(rates), dict(alone), dict(failed or {}))


def split_rate(store: Any, device: torch.device, how: Reading, batch: int) -> float:
    """Images/s of the store's first `batch` images read by `read_batch` as the loader reads
    them: `how.prefetch` batches (1 at least) at once, each by a thread of its own within
    `reader_stream`, with `how`'s CPU decoders, GPU share, GPU decoder and decoding threads
    (`decode_pool`); the fastest of SPLIT_ROUNDS timed rounds after an untimed one."""
    index = np.arange(batch) % len(store)
    readers = max(1, how.prefetch)
    with decode_pool(store, how) as decoders, ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="alexnet-split") as pool:
        def read() -> None:
            with reader_stream(device):
                read_batch(store, index, device, how, decoders)

        seconds = _fastest(lambda: [job.result() for job in
                                    [pool.submit(read) for _ in range(readers)]], SPLIT_ROUNDS)
    return readers * batch / seconds


_READER = threading.local()  # each read-ahead thread's own CUDA stream


@contextlib.contextmanager
def reader_stream(device: torch.device) -> Iterator[None]:
    """Run a read-ahead thread's device work (copies, nvJPEG, labels) on a CUDA stream of its
    own and wait for it before the batch is handed over, so that the copies overlap the
    training step on the default stream instead of queueing behind it (timm's PrefetchLoader
    does the same). The consumer marks each batch with `hand_over` before using it.

    The wait is on a blocking-sync event: a stream's own synchronize spins on a core for as
    long as the GPU work lasts (CUDA's default with fewer contexts than cores), and with 16
    readers those spins take cores from the JPEG decoders and the training loop."""
    if device.type != "cuda":
        yield
        return
    stream = getattr(_READER, "stream", None)
    if stream is None or stream.device != device:
        stream = _READER.stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        yield
    done = torch.cuda.Event(blocking=True)  # the thread sleeps until then: spares its core
    done.record(stream)
    done.synchronize()


def hand_over(*tensors: torch.Tensor) -> None:
    """Tell the caching allocator that the consumer's stream now uses tensors made on a
    reader's stream, so that their memory is not reused while its kernels still read it."""
    for t in tensors:
        if t.is_cuda:
            t.record_stream(torch.cuda.current_stream(t.device))


def _storage_refs(memory: torch.Tensor) -> tuple[int, int] | None:
    """(use count of `memory`'s storage, reference count of its Python object), or None
    where this torch has no use count. The use count counts the storage's Python object once
    whoever holds it (the object is kept with the storage and is the same for every caller),
    so the object's holders show in its reference count."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return None
    storage = memory.untyped_storage()
    return int(use_count(storage._cdata)), sys.getrefcount(storage)


@functools.cache
def _refs_alone() -> tuple[int, int] | None:
    """_storage_refs of a tensor nothing else refers to, where this torch's counts grow with
    a view and with a storage object held (checked here), else None."""
    alone = torch.empty(1)
    counts = _storage_refs(alone)
    view = alone.detach()
    with_view = _storage_refs(alone)
    del view
    storage = alone.untyped_storage()
    with_storage = _storage_refs(alone)
    del storage
    if counts is None or counts != _storage_refs(alone) or counts in (with_view, with_storage):
        return None
    return counts


def _users(memory: torch.Tensor) -> int | None:
    """Tensors and storage objects that refer to `memory`'s storage, `memory` included;
    None where this torch cannot tell (see `_refs_alone`)."""
    alone, refs = _refs_alone(), _storage_refs(memory)
    if alone is None or refs is None:
        return None
    return 1 + (refs[0] - alone[0]) + (refs[1] - alone[1])


class BatchMemory:
    """Memory that a CPU loader's read-ahead threads augment batches of `patches` patches
    into (augment.batch_memory's `out`), lent again once nothing else refers to it.

    A batch allocated afresh on a read-ahead thread is beyond what glibc keeps for that
    thread when it is over 64 MB (a float batch of 128 x 3 x 227 x 227 is 79 MB): it is
    mmap'ed and unmapped each time and page-faulted afresh, about 19k faults a batch. Here
    each block is allocated once and kept; the consumer gets a view of it, and the block is
    free again when no tensor or storage but the pool's own refers to it (its storage's use
    count), so a batch the consumer keeps (in a list, among autograd's saved tensors, as a
    NumPy array) is never written over. At most `keep` blocks are kept; beyond them, and for
    batches of another size (an evaluation's last), memory is allocated afresh.
    """

    def __init__(self, patches: int, crop: int, pad: int, channels_last: bool, keep: int
                 ) -> None:
        self.patches, self.crop, self.pad = int(patches), int(crop), int(pad)
        self.channels_last, self.keep = bool(channels_last), int(keep)
        self.blocks: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, patches: int) -> torch.Tensor:
        """Memory for a batch of `patches` patches that nothing else uses: a free block of
        the pool, a new one, or (beyond `keep`, another size) memory of its own."""
        with self._lock, torch.inference_mode(False):  # writable by any thread
            if patches != self.patches:
                return self._new(patches)
            for block in self.blocks:
                if _users(block) == 1:  # the pool's own reference alone
                    return block.detach()  # a view: counted while the consumer holds it
            block = self._new(patches)
            if len(self.blocks) >= self.keep or _users(block) is None:
                return block
            self.blocks.append(block)
            return block.detach()

    def _new(self, patches: int) -> torch.Tensor:
        return augment.batch_memory(patches, self.crop, self.pad, self.channels_last)


def batch_memory(device: torch.device, patches: int, crop: int, pad: int,
                 channels_last: bool, prefetch: int) -> BatchMemory | None:
    """The BatchMemory of a loader whose read-ahead threads augment batches of `patches`
    patches on `device` `prefetch` at once: on the CPU only (GPU allocators cache), keeping
    what can be in use at once (prefetch + 1 batches in flight, the one the consumer holds,
    the one it held before) and one more."""
    if device.type != "cpu":
        return None
    return BatchMemory(patches, crop, pad, channels_last, keep=max(1, prefetch) + 4)


_MALLOC_TUNED = False


def keep_freed_memory() -> None:
    """Let glibc keep freed big blocks for reuse instead of unmapping them (once per process).

    glibc returns every freed block over 32 MB to the OS, so each new 77 MB float batch
    (128 x 3 x 224 x 224) would be page-faulted afresh: on the CPU that costs ten times the
    arithmetic of the augmentation. Raising M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to 1 GiB
    makes freed batches reusable, as jemalloc or tcmalloc (PyTorch's CPU tuning advice) would;
    M_ARENA_MAX 1 asks read-ahead threads to allocate from that same heap (a thread's own
    arena holds at most 64 MB, so a batch made there would be mmap'ed again), but threads
    that got arenas before it keep them, so the loaders also reuse their batches' memory
    themselves (`BatchMemory`). A no-op where libc is not glibc.
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


def check_stats(stats: Any, mean: str, pca: bool, image_size: int) -> dict[str, Any]:
    """The statistics the options need, or a UserError saying what is missing (shared with
    evaluate's up-front check of its nets)."""
    if mean not in MEAN_CHOICES:
        raise UserError(f"mean {mean!r}: choose from {', '.join(MEAN_CHOICES)}")
    need = {"image": ["mean_image"], "channel": ["channel_mean"], "none": [],
            "torchvision": []}[mean]
    need += ["eigval", "eigvec"] if pca else []
    if need and not stats:
        raise UserError("the store has no training statistics (needed for mean subtraction "
                        "and PCA colour); prepare it with `alexnet prepare` or pass stats")
    missing = [k for k in need if stats.get(k) is None]
    if missing:
        raise UserError(f"statistics lack {', '.join(missing)}; prepare the store again")
    shape = np.shape(stats["mean_image"]) if mean == "image" else None
    if shape is not None and shape != (image_size, image_size, 3):
        size = shape[0] if len(shape) == 3 and shape[0] == shape[1] else None
        fix = (f"the model was trained on {size}-pixel images: use a store prepared with "
               f"--size {size} (`alexnet prepare SOURCE DIR --size {size}`)" if size else
               "use the statistics of a store of this image size")
        raise UserError(f"mean image of shape {shape} (the statistics of the store the model "
                        f"was trained on) for a store of {image_size}x{image_size} images; "
                        f"{fix}")
    return stats or {}


def _check_batch_size(batch_size: Any) -> int:
    """`batch_size` as an int, or a UserError: a float or a bool would otherwise be truncated
    (2.5 -> 2, True -> 1) without a word."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise UserError(f"batch size {batch_size!r}: must be an integer, at least 1")
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: must be at least 1")
    return int(batch_size)


def check_crop(crop: int, image_size: int) -> None:
    """A UserError unless `crop` fits in the store's images (evaluate checks its nets with it
    before any of them runs)."""
    if not 0 < crop <= image_size:
        raise UserError(f"crop {crop}: must lie in 1..{image_size} (the store's image size)")


def _check_pad(pad: int) -> int:
    if pad < 0:
        raise UserError(f"pad {pad}: must be >= 0 (zeros added right and bottom of each patch)")
    return int(pad)


def _resolve(device: torch.device | str) -> torch.device:
    """The device with its index: "cuda" is the caller's current GPU, which the read-ahead
    threads (each with its own current device, 0) must not reinterpret."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch (uint8 images or int64 labels) to `device`: pinned, copied without blocking."""
    return augment.to_device(torch.from_numpy(images), device)


class TrainLoader:
    """Training batches of the paper (section 4.1): random crops, mirrors, PCA colour, mean.

    Each rank takes a disjoint part of every epoch (like DistributedSampler: the epoch's
    permutation, truncated to a multiple of world_size, then rank::world_size), and drops its
    last partial batch. `pca_scale` is "std" (sqrt of each eigenvalue, cuda-convnet2's and
    fb.resnet.torch's reading, the default) or "eigval" (the paper's formula taken literally:
    shifts of hundreds of levels); a number (config data.pca_scale) keeps "std" and multiplies
    the paper's alpha std (0.1) by it. `stats` default to the store's (the training split's).
    `prefetch` None (or negative) is `default_prefetch`; a jpeg store is decoded by CPU
    `decoder` (decode.CPU_DECODERS or "auto") in `decode_threads` threads (None or < 1:
    `default_decode_threads`) and, on CUDA, the share `gpu_decode` of each batch on the GPU
    (None or negative: `default_gpu_decode`). `augment_in_readers` None is
    `default_augment_in_readers`: the batches come out the same either way, only the thread
    (and CUDA stream) that augments them differs. `loader.reading` holds the values resolved;
    `loader.memory` the memory CPU batches are made in (BatchMemory; None on a GPU).
    `pad` zeros are written right and bottom of every patch (model.loader_pad: conv1's
    padding, so the paper net need not copy the batch to add it).
    """

    def __init__(self, store: Any, batch_size: int, *, crop: int = CROP_SIZE, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 flip: bool = True, pca: bool = True, pca_scale: str | float = "std",
                 mean: str = "image", stats: dict[str, Any] | None = None,
                 prefetch: int | None = None, channels_last: bool = False,
                 decoder: str = "auto", decode_threads: int | None = None,
                 gpu_decode: float | None = None, augment_in_readers: bool | None = None,
                 pad: int = 0) -> None:
        batch_size = _check_batch_size(batch_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} of world size {world_size}: need 0 <= rank < world")
        if seed < 0:
            raise UserError(f"seed {seed}: must be >= 0")
        self.alpha_std = PCA_ALPHA_STD
        if isinstance(pca_scale, (int, float)) and not isinstance(pca_scale, bool):
            if not math.isfinite(pca_scale):  # nan < 0 is False: nan would make NaN batches
                raise UserError(f"pca_scale {pca_scale}: must be a finite number >= 0")
            if pca_scale < 0:
                raise UserError(f"pca_scale {pca_scale}: must be >= 0")
            self.alpha_std, pca_scale = PCA_ALPHA_STD * float(pca_scale), "std"
        if pca_scale not in augment.PCA_SCALES:
            raise UserError(f"pca_scale {pca_scale!r}: choose from "
                            f"{', '.join(augment.PCA_SCALES)} (or a number)")
        check_crop(crop, store.image_size)
        self.store, self.batch_size, self.crop = store, int(batch_size), int(crop)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = _resolve(device)
        self.flip, self.pca, self.pca_scale, self.mean = flip, pca, pca_scale, mean
        self.channels_last, self.pad = channels_last, _check_pad(pad)
        self.reading = reading(store, self.device, prefetch, decoder, decode_threads, gpu_decode,
                               augment_in_readers, self.batch_size)
        stats = store.stats if stats is None else stats
        self.stats = check_stats(stats, mean, pca, store.image_size)
        self._device_stats = augment.device_stats(self.stats, self.device)
        self.labels = np.asarray(store.labels, np.int64)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.memory = batch_memory(self.device, self.batch_size, self.crop, self.pad,
                                   channels_last, self.reading.prefetch)

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
        """Batches (x float32 (B, 3, crop + pad, crop + pad), y int64 (B,)) on the device,
        from batch `start`."""
        if not 0 <= start <= len(self):
            raise UserError(f"start batch {start}: this epoch has {len(self)} batches")
        order = self.indices(epoch).reshape(len(self), self.batch_size)
        in_readers = self.reading.augment_in_readers
        with decode_pool(self.store, self.reading) as decoders:
            jobs = [self._job(epoch, k, order[k], decoders, augment_too=in_readers)
                    for k in range(start, len(self))]
            with contextlib.closing(read_ahead(jobs, self.reading.prefetch)) as batches:
                for k, images, y in batches:
                    hand_over(images, y)
                    yield (images if in_readers else self._augment(epoch, k, images)), y

    def _job(self, epoch: int, k: int, index: np.ndarray, decoders: DecodeThreads, *,
             augment_too: bool) -> Callable[[], Any]:
        """Read batch k (sorted indices: sequential reads); on the CPU, augment it as well."""
        def run() -> Any:
            index_sorted = np.sort(index)
            with reader_stream(self.device):
                images = read_batch(self.store, index_sorted, self.device, self.reading,
                                    decoders)
                y = _to_device(self.labels[index_sorted], self.device)
                if augment_too:
                    images = self._augment(epoch, k, images, self.memory)
            return k, images, y
        return run

    def _augment(self, epoch: int, k: int, images: torch.Tensor,
                 memory: BatchMemory | None = None) -> torch.Tensor:
        return augment.train_batch(
            images, batch_generator(self.seed, epoch, k, self.rank), self._device_stats,
            crop_size=self.crop, flip=self.flip, pca=self.pca, pca_scale=self.pca_scale,
            alpha_std=self.alpha_std, mean=self.mean, channels_last=self.channels_last,
            pad=self.pad, out=memory.take(len(images)) if memory else None)


class EvalLoader:
    """Test batches: the centre patch (crops=1) or the paper's 10 patches (section 4.1).

    Iterates (x float32 (B * crops, 3, crop, crop), y int64 (B,)) in store order (or the
    order of `indices`), image-major: x.view(B, crops, 3, crop, crop); patches in
    augment.TEN_CROP_ORDER. The mean is subtracted as in training; the last batch may be
    smaller. `prefetch`, `decoder`, `decode_threads`, `gpu_decode`, `augment_in_readers`
    (here: who cuts the patches) and `pad` as for TrainLoader.
    """

    def __init__(self, store: Any, batch_size: int, *, crops: int = 1, crop: int = CROP_SIZE,
                 mean: str = "image", stats: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu", indices: Sequence[int] | None = None,
                 prefetch: int | None = None, decoder: str = "auto",
                 decode_threads: int | None = None, gpu_decode: float | None = None,
                 augment_in_readers: bool | None = None, pad: int = 0) -> None:
        batch_size = _check_batch_size(batch_size)
        if crops not in (1, TEST_CROPS):
            raise UserError(f"crops {crops}: use 1 (centre) or {TEST_CROPS} (corners, centre "
                            "and their mirrors)")
        check_crop(crop, store.image_size)
        self.store, self.batch_size, self.crops, self.crop = store, int(batch_size), crops, crop
        self.mean, self.device, self.pad = mean, _resolve(device), _check_pad(pad)
        self.reading = reading(store, self.device, prefetch, decoder, decode_threads, gpu_decode,
                               augment_in_readers, self.batch_size)
        stats = store.stats if stats is None else stats
        self.stats = check_stats(stats, mean, False, store.image_size)
        self._device_stats = augment.device_stats(self.stats, self.device)
        n = len(store)
        self.order = np.arange(n) if indices is None else check_indices(indices, n)
        self.labels = np.asarray(store.labels, np.int64)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.memory = batch_memory(self.device, self.batch_size * crops, crop, self.pad, False,
                                   self.reading.prefetch)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    @property
    def images(self) -> int:
        """How many images a pass yields (each with its crops), for a caller that keeps them."""
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        in_readers = self.reading.augment_in_readers
        with decode_pool(self.store, self.reading) as decoders:
            jobs = [self._job(self.order[i:i + self.batch_size], decoders, augment_too=in_readers)
                    for i in range(0, len(self.order), self.batch_size)]
            with contextlib.closing(read_ahead(jobs, self.reading.prefetch)) as batches:
                for images, y in batches:
                    hand_over(images, y)
                    yield (images if in_readers else self._patches(images)), y

    def _job(self, index: np.ndarray, decoders: DecodeThreads, *, augment_too: bool
             ) -> Callable[[], Any]:
        def run() -> Any:
            with reader_stream(self.device):
                images = read_batch(self.store, index, self.device, self.reading, decoders)
                y = _to_device(self.labels[index], self.device)
                if augment_too:
                    images = self._patches(images, self.memory)
            return images, y
        return run

    def _patches(self, images: torch.Tensor, memory: BatchMemory | None = None
                 ) -> torch.Tensor:
        return augment.eval_batch(images, self._device_stats, crops=self.crops,
                                  crop_size=self.crop, mean=self.mean, pad=self.pad,
                                  out=memory.take(len(images) * self.crops) if memory else None)
