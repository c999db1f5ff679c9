"""Decoding chunks of images in parallel processes, handed back in chunk order.

`Decoders` runs the calling process and `workers - 1` spawned ones; each decodes whole chunks
(alexnet/data/preprocess.py for each image) and sums their statistics (alexnet/data/stats.py);
the spawned ones write pixels and per-pixel sums into shared-memory slots, so no pixel goes
through a pipe. `in_order` yields the results in chunk order, whoever decoded them, so what is
written does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from alexnet.data.preprocess import Skip, init_worker, load_image, pil_settings
from alexnet.data.stats import pixel_sums
from alexnet.data.store import encode_jpeg

LOCAL_AHEAD = 4  # chunks the calling process may decode ahead of the one due next
# The decoding processes fill the cores already: their BLAS (NumPy's, for the statistics)
# must not start threads of its own, which cost a tenth of a second of CPU at import.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for a while (the processes started meanwhile inherit them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shared_memory_room() -> int:
    """Free bytes where POSIX shared memory lives (/dev/shm on Linux; a container may give it
    only 64 MB); very large when it cannot be told."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return 1 << 62
    return stat.f_bavail * stat.f_frsize


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


class Decoders:
    """The processes that decode chunks: this one, and `workers - 1` spawned ones.

    The spawned processes start when the context is entered and serve every split; they
    decode into shared-memory slots, so pixels never travel through a pipe (pickling 6 MB
    chunks through the pool's result thread cost the writing process more than its own
    decoding). The slots take at most half the free shared memory; where that is too little
    for one slot per process (a container's small /dev/shm), the pixels go through the pipe.
    `in_order` hands results out in chunk order.
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
        self._settings.enter_context(pil_settings(self.max_pixels))
        if self.processes:
            from multiprocessing.shared_memory import SharedMemory

            size = slot_bytes(self.chunk, self.size)
            # spares for chunks taken back at the end; half the room left to others
            count = min(self.in_flight + self.processes, shared_memory_room() // (2 * size))
            if count >= self.processes:
                self._slots = [SharedMemory(create=True, size=size) for _ in range(count)]
                self._free = list(range(count))
            with _environment(ONE_THREAD):
                self.pool = multiprocessing.get_context("spawn").Pool(
                    self.processes, initializer=init_worker, initargs=(self.max_pixels,))
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
        """A free slot, or None; -1 (through the pipe) when there are no slots."""
        if not self._slots:
            return -1
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
        held: dict[int, int] = {}  # start -> its shared-memory slot in the pool (-1: pipe)

        def submit() -> None:
            while self.pool is not None and queue and len(held) < self.in_flight:
                slot = self._take()
                if slot is None:
                    return
                start = queue.popleft()
                held[start] = slot
                name = self._slots[slot].name if slot >= 0 else None
                slots[start] = self.pool.apply_async(work_chunk, (task(start) + (name,),))

        def here(start: int) -> None:
            if start in held:  # taken back from the pool, whose copy may still be written
                slot = held.pop(start)
                if slot >= 0:
                    self._abandoned.append((slot, slots[start]))
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
            if not isinstance(result, dict):
                result = result.get()
            yield due, result if slot is None or slot < 0 else self._collect(result, slot)
            if slot is not None and slot >= 0:
                self._free.append(slot)


_UNCLOSED: list[Any] = []  # slots an exception kept open; closed when the interpreter ends
