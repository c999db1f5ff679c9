"""Decoding chunks of images in parallel processes, handed back in chunk order.

`Decoders` runs the calling process and `workers - 1` spawned ones; each decodes whole chunks
(alexnet/data/preprocess.py for each image) and sums their statistics (alexnet/data/stats.py);
the spawned ones write pixels and per-pixel sums into shared-memory slots, so no pixel goes
through a pipe. `in_order` yields the results in chunk order, whoever decoded them, so what is
written does not depend on the number of workers.

The spawned processes leave Ctrl-C to this one (a terminal sends it to the whole process
group; this process shuts the pool down), and end when this one is gone (kill -9). The pool is
a ProcessPoolExecutor: a process killed at any point (SIGTERM to the process group, as from
`timeout`, or the OOM killer) breaks it, and its shutdown still ends, where
multiprocessing.Pool's `terminate` waits forever for a lock the dead process held. Its
processes are known from their creation (`Launcher`), so a stop ends them at once. The slots
are named `alexnet-PID-N` after the process that made them, so that those of a process killed
with kill -9 are found and removed by the next pool's start (`remove_stale_slots`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from alexnet.atomic import alive
from alexnet.data.preprocess import Skip, init_worker, load_image, pil_settings
from alexnet.data.stats import pixel_sums
from alexnet.data.store import encode_jpeg
from alexnet.errors import UserError

LOCAL_AHEAD = 4  # chunks the calling process may decode ahead of the one due next
# The decoding processes fill the cores already: their BLAS (NumPy's, for the statistics)
# must not start threads of its own, which cost a tenth of a second of CPU at import.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SLOT_PREFIX = "alexnet-"  # shared-memory slots are alexnet-PID-N (PID: the process that made them)
SHM_FOLDER = "/dev/shm"  # where Linux keeps POSIX shared memory (other systems list none)
BROKEN = ("a decoding process ended abruptly (killed, or out of memory: try fewer --workers); "
          "rerun the same command to continue")
ORPHAN_CHECK_S = 1.0  # how often a spawned process checks that its parent still runs
_SLOT_NUMBERS = itertools.count()
_MINE: dict[str, int | None] = {}  # the slots this process made and holds: their lock
_SLOTS_LOCK = threading.Lock()  # a slot being made is not taken for a stale one


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
    uint8 (chunk, S, S, 3) (the layout does not depend on `chunk`). Made by `np.frombuffer`,
    which holds the slot's buffer while an array lives (`np.ndarray(buffer=)` does not), so
    that closing a slot still viewed (by an exception's frames) raises BufferError instead of
    unmapping memory that a later read would crash on (`Decoders.__exit__`)."""
    sums = size * size * 3 * 8
    pixels = chunk * size * size * 3
    return (np.frombuffer(buffer, np.uint8, pixels, sums).reshape(chunk, size, size, 3),
            np.frombuffer(buffer, np.int64, size * size * 3).reshape(size, size, 3))


def slot_bytes(chunk: int, size: int) -> int:
    """Bytes of one slot (see `slot_views`)."""
    return size * size * 3 * 8 + chunk * size * size * 3


def start_worker(max_pixels: int, parent: int) -> None:
    """A spawned decoding process's set-up: PIL's settings (init_worker), Ctrl-C ignored (the
    parent handles it and shuts the pool down), and an end of its own when the parent is gone
    (kill -9): a process left alone would wait for work forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_follow, args=(parent,), daemon=True).start()
    init_worker(max_pixels)


def _follow(parent: int) -> None:
    """End this process, quietly, once `parent` no longer is its parent."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(0)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back (never lost) while the pool takes a chunk, then raised:
    its bookkeeping (which may spawn a process) is not cut halfway, which could leave a
    process it does not know of, waited for at exit forever. The processes spawned meanwhile
    inherit a blocked SIGINT, so a Ctrl-C during their imports, before `start_worker`, prints
    nothing (SIGTERM stays unblocked: the pool stops them with it)."""
    if not hasattr(signal, "pthread_sigmask") or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in previous.items():
        if callable(handler):  # not one set outside Python, nor an ignored signal
            signal.signal(sig, hold)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending one: held
        for sig, handler in previous.items():
            if callable(handler):
                signal.signal(sig, handler)
        for sig in dict.fromkeys(held):
            signal.raise_signal(sig)


def new_slot(size: int) -> Any:
    """A shared-memory slot of `size` bytes named `alexnet-PID-N`, under a shared `flock` held
    while it lives (Linux), which tells `remove_stale_slots` of other PID namespaces sharing
    /dev/shm (docker --ipc=host) that it is in use."""
    from multiprocessing.shared_memory import SharedMemory

    with _SLOTS_LOCK:
        while True:
            name = f"{SLOT_PREFIX}{os.getpid()}-{next(_SLOT_NUMBERS)}"
            try:
                slot = SharedMemory(name, create=True, size=size)
            except FileExistsError:  # a stale one that could not be removed: step over it
                continue
            _MINE[name] = _hold(os.path.join(SHM_FOLDER, name))
            return slot


def drop_slot(slot: Any) -> None:
    """Unlink a slot made by `new_slot` and give its lock up."""
    slot.unlink()
    fd = _MINE.pop(slot.name, None)
    if fd is not None:
        os.close(fd)


def _hold(path: str) -> int | None:
    """A descriptor of `path` under a shared flock, or None where there is none to take."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not a file there (not Linux)
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _in_use(path: str) -> bool:
    """Whether a process holds `path`'s flock (the kernel drops it when its holder dies)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def remove_stale_slots(folder: str = SHM_FOLDER) -> list[str]:
    """Unlink the slots left by processes that no longer run (kill -9 skips every cleanup, and
    the system keeps shared memory until reboot): `alexnet-PID-N` whose PID is gone, or is
    this process but the slot is not one it made (an earlier process had the same PID, as in
    a container), and whose lock nobody holds. Other names are never touched."""
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:  # no /dev/shm (macOS): nothing can be listed
        return removed
    with _SLOTS_LOCK:
        for name in names:
            match = re.fullmatch(re.escape(SLOT_PREFIX) + r"(\d+)-\d+", name)
            if match is None or name in _MINE:
                continue
            pid, path = int(match[1]), os.path.join(folder, name)
            if (pid != os.getpid() and alive(pid)) or _in_use(path):
                continue
            with contextlib.suppress(OSError):  # gone meanwhile, or another user's
                os.unlink(path)
                removed.append(name)
    return removed


class Launcher:
    """A multiprocessing context that keeps every process it makes, so that the pool's
    processes can be ended at once: ProcessPoolExecutor launches its workers through the
    context it is given (`Process`), and has no public way to end them."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.processes: list[Any] = []

    def Process(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (the context's name)
        """A process of the wrapped context, kept in `processes`."""
        process = self._context.Process(*args, **kwargs)
        self.processes.append(process)
        return process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


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

    The spawned processes start with the first chunks handed to the pool and serve every
    split; they decode into shared-memory slots, so pixels never travel through a pipe
    (pickling 6 MB chunks through the pool's result thread cost the writing process more than
    its own decoding). The slots take at most half the free shared memory; where that is too
    little for one slot per process (a container's small /dev/shm), the pixels go through the
    pipe.
    `in_order` hands results out in chunk order.
    """

    def __init__(self, workers: int, max_pixels: int, chunks: int, chunk: int, size: int
                 ) -> None:
        self.processes = max(0, min(workers, chunks) - 1)
        self.in_flight = 2 * self.processes  # chunks handed to the pool at once
        self.max_pixels, self.chunk, self.size = max_pixels, chunk, size
        self.pool: Any = None
        self._launcher = Launcher(multiprocessing.get_context("spawn"))
        self._slots: list[Any] = []
        self._free: list[int] = []
        self._abandoned: list[tuple[int, Any]] = []  # (slot, Future) still being written
        self._settings = contextlib.ExitStack()

    def __enter__(self) -> Decoders:
        try:
            self._settings.enter_context(pil_settings(self.max_pixels))
            if self.processes:
                self._start()
        except BaseException:  # Ctrl-C or SIGTERM while starting: give back what was made
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        """The slots (after removing those of killed runs) and the pool."""
        remove_stale_slots()
        size = slot_bytes(self.chunk, self.size)
        # spares for chunks taken back at the end; half the room left to others
        count = min(self.in_flight + self.processes, shared_memory_room() // (2 * size))
        if count >= self.processes:
            for _ in range(count):
                self._slots.append(new_slot(size))
            self._free = list(range(count))
        self.pool = concurrent.futures.ProcessPoolExecutor(
            self.processes, self._launcher, initializer=start_worker,
            initargs=(self.max_pixels, os.getpid()))

    def __exit__(self, *exc: object) -> None:
        try:
            self._stop()
        finally:  # even when a second Ctrl-C cuts the stop short
            for slot in self._slots:
                try:
                    slot.close()
                except BufferError:  # an exception still holds a view: close at exit instead
                    _UNCLOSED.append(slot)
                drop_slot(slot)
            self._slots = []
            self._settings.close()

    def _stop(self) -> None:
        """End the pool's processes at once (every result wanted was taken; on Ctrl-C the
        chunks still queued are not waited for), those still starting included (`Launcher`
        knows them from their creation), then the pool, which takes a killed process in its
        stride."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        for process in self._launcher.processes:
            with contextlib.suppress(ValueError):  # closed by the pool: ended already
                if process.is_alive():
                    process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, task: tuple[Any, ...]) -> Any:
        """`work_chunk(task)` handed to the pool (which spawns its processes in the first
        calls, with single-threaded BLAS), signals held back meanwhile (`_signals_held`)."""
        try:
            with _environment(ONE_THREAD), _signals_held():
                return self.pool.submit(work_chunk, task)
        except concurrent.futures.BrokenExecutor:
            raise UserError(BROKEN) from None

    def _take(self) -> int | None:
        """A free slot, or None; -1 (through the pipe) when there are no slots."""
        if not self._slots:
            return -1
        for pair in [p for p in self._abandoned if p[1].done()]:
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
        slots: dict[int, Any] = {}  # start -> Future (pool) or result dict (here)
        held: dict[int, int] = {}  # start -> its shared-memory slot in the pool (-1: pipe)

        def submit() -> None:
            while self.pool is not None and queue and len(held) < self.in_flight:
                slot = self._take()
                if slot is None:
                    return
                start = queue.popleft()
                held[start] = slot
                name = self._slots[slot].name if slot >= 0 else None
                slots[start] = self._submit(task(start) + (name,))

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
                if isinstance(pending, dict) or pending.done():
                    break
                later = [s for s, v in slots.items()
                         if s > due and not isinstance(v, dict) and not v.done()]
                if queue and sum(isinstance(v, dict) for v in slots.values()) < ahead:
                    start = queue.popleft()
                    here(start)
                elif not queue and later:
                    here(max(later))
                else:
                    concurrent.futures.wait([pending])
                    break
            result = slots.pop(due)
            slot = held.pop(due, None)
            if not isinstance(result, dict):
                result = _result(result)
            yield due, result if slot is None or slot < 0 else self._collect(result, slot)
            if slot is not None and slot >= 0:
                self._free.append(slot)


def _result(future: Any) -> dict[str, Any]:
    """A pool's result, or a one-line UserError when a decoding process died under it."""
    try:
        return future.result()
    except concurrent.futures.BrokenExecutor:
        raise UserError(BROKEN) from None


_UNCLOSED: list[Any] = []  # slots an exception kept open; closed when the interpreter ends
