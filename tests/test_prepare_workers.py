"""`alexnet prepare` with several worker processes: the same store, byte for byte, and the same
statistics (equal to NumPy over every pixel) whatever the number of workers."""

from __future__ import annotations

from pathlib import Path

import _images as images_
import numpy as np
import pytest

from alexnet.data import open_split
from alexnet.data.prepare import prepare


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _source(root: Path) -> Path:
    """Two splits of varied real files, with a run of unreadable ones that fills whole chunks."""
    for split in ("train", "val"):
        for k, name in enumerate(["a", "b", "c"]):
            files = images_.zoo(k, seed=k + (10 if split == "val" else 0))
            if split == "train" and k == 1:
                files.update({f"{i}_empty.JPEG": b"" for i in range(7)})
            images_.write_files(root / split / name, files)
    return root


@pytest.mark.parametrize("format", ["raw", "jpeg"])
def test_store_and_statistics_do_not_depend_on_workers(tmp_path, format):
    src = _source(tmp_path / "src")
    trees = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        prepare(src, out, size=20, chunk=3, workers=workers, format=format)
        trees[workers] = _tree_bytes(out)
    assert trees[1] == trees[2] == trees[3]
    train = open_split(tmp_path / "w1", "train")
    assert train.meta["skipped"] == 7 and len(train) == 3 * len(images_.zoo(0))
    # The statistics equal NumPy over every stored pixel (for jpeg: the decoded pixels are
    # not the ones summed, so the check uses the raw store's pixels).
    if format == "raw":
        pixels = train.read(np.arange(len(train)))
        flat = pixels.reshape(-1, 3).astype(np.float64)
        stats = train.stats
        np.testing.assert_allclose(stats["mean_image"], pixels.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats["channel_mean"], flat.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats["rgb_cov"], np.cov(flat, rowvar=False, bias=True),
                                   rtol=1e-10)
        val = open_split(tmp_path / "w3", "val")
        np.testing.assert_array_equal(val.stats["rgb_cov"], stats["rgb_cov"])
        np.testing.assert_array_equal(val.stats["mean_image"], stats["mean_image"])


def test_a_complete_store_is_reused_whatever_the_chunk_size(tmp_path, capsys):
    """The chunk is how a split is written, not what it holds: a store made with other
    chunks (as by an older alexnet) is complete for a rerun, never refused or redone."""
    src = _source(tmp_path / "src")
    prepare(src, tmp_path / "out", size=12, chunk=5, workers=1)
    before = _tree_bytes(tmp_path / "out")
    summary = prepare(src, tmp_path / "out", size=12, workers=1)
    assert "already complete" in capsys.readouterr().err
    assert summary["splits"]["train"]["count"] == 3 * len(images_.zoo(0))
    assert _tree_bytes(tmp_path / "out") == before


def test_without_room_in_shared_memory_pixels_go_through_the_pipe(tmp_path, monkeypatch):
    """A container's small /dev/shm: no slots, the same store."""
    from alexnet.data import workers

    src = _source(tmp_path / "src")
    prepare(src, tmp_path / "w1", size=20, chunk=3, workers=1)
    monkeypatch.setattr(workers, "shared_memory_room", lambda: 0)
    prepare(src, tmp_path / "w2", size=20, chunk=3, workers=2)
    assert _tree_bytes(tmp_path / "w1") == _tree_bytes(tmp_path / "w2")


def _arrays_task(count: int, chunk: int, size: int, width: int = 40):
    """`Decoders.in_order`'s task over `count` in-memory images (six different ones, `width`
    pixels wide), `chunk` to a chunk."""
    from alexnet.data.preprocess import MAX_PIXELS

    arrays = [images_.photo(width, width * 3 // 4, k % 3, k) for k in range(6)] * (count // 6 + 1)
    arrays = arrays[:count]

    def task(start: int) -> tuple:
        part = arrays[start:start + chunk]
        return ([("array", a) for a in part], [str(start + i) for i in range(len(part))],
                size, MAX_PIXELS, "raw", 90)

    return task, list(range(0, count, chunk))


def test_decoding_processes_leave_ctrl_c_to_prepare(capfd):
    """A terminal's Ctrl-C reaches the whole process group: each decoding process printed
    `Process SpawnPoolWorker-N:` and a KeyboardInterrupt traceback, and died, while starting
    (importing) as while serving; prepare itself handles it and shuts the pool down."""
    import multiprocessing
    import os
    import signal
    import time

    from alexnet.data.preprocess import MAX_PIXELS
    from alexnet.data.workers import Decoders

    task, starts = _arrays_task(24, 3, 16)
    before = {p.pid for p in multiprocessing.active_children()}
    with Decoders(3, MAX_PIXELS, len(starts), 3, 16) as decoders:
        chunks = decoders.in_order(starts, task)
        kept = [next(chunks)[1]["keep"]]  # the pool's processes start with the first chunks
        workers = [p for p in multiprocessing.active_children() if p.pid not in before]
        assert len(workers) == 2
        for worker in workers:  # still starting: spawn takes a few tenths of a second
            os.kill(worker.pid, signal.SIGINT)
        kept += [result["keep"] for _, result in chunks]
        time.sleep(1.0)
        for worker in workers:  # serving
            os.kill(worker.pid, signal.SIGINT)
        kept += [result["keep"] for _, result in decoders.in_order(starts, task)]
        time.sleep(0.2)
        assert all(worker.is_alive() for worker in workers)
    assert kept == [[0, 1, 2]] * 2 * len(starts)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "SpawnPoolWorker" not in err, err


ORPHANED = """
import sys
sys.path.insert(0, sys.argv[1])
import _images as images_
from test_prepare_workers import _arrays_task
from alexnet.data.preprocess import MAX_PIXELS
from alexnet.data.workers import Decoders

if __name__ == "__main__":
    task, starts = _arrays_task(3000, 16, 64, width=800)  # the processes are busy
    with Decoders(3, MAX_PIXELS, len(starts), 16, 64) as decoders:
        for n, _ in enumerate(decoders.in_order(starts, task)):
            if n == 20:
                print("decoding", flush=True)
"""


def test_decoding_processes_end_quietly_when_prepare_is_killed(tmp_path):
    """kill -9 of prepare alone: each decoding process finished its chunk and printed a
    BrokenPipeError traceback writing the result to its dead parent."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "orphaned.py"
    script.write_text(ORPHANED)
    proc = subprocess.Popen([sys.executable, str(script), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "decoding\n"
    proc.send_signal(signal.SIGKILL)
    err = proc.stderr.read()  # to the end: until every decoding process has ended
    proc.wait()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_slots_of_killed_runs_are_removed_and_no_others(tmp_path):
    """The anonymous slots (`psm_*`) of a prepare killed with its workers (kill -9 of the
    group) stayed in /dev/shm until reboot, 8 MB each: a pool's start now removes the slots
    named after a process that no longer runs, whose lock nobody holds."""
    import fcntl
    import os
    import subprocess
    import sys

    from alexnet.data.workers import remove_stale_slots

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {"dead": f"alexnet-{dead.pid}-0", "earlier with our pid": f"alexnet-{os.getpid()}-9",
             "running": f"alexnet-{os.getppid()}-0", "held": f"alexnet-{dead.pid}-1",
             "not ours": "psm_0a1b2c3d", "not a slot": f"alexnet-{dead.pid}-x"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"pixels")
    with open(tmp_path / names["held"], "rb") as held:  # a process of another PID namespace
        fcntl.flock(held, fcntl.LOCK_SH)
        removed = remove_stale_slots(str(tmp_path))
    assert sorted(removed) == sorted([names["dead"], names["earlier with our pid"]])
    assert sorted(os.listdir(tmp_path)) == sorted(set(names.values()) - set(removed))


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm to list")
def test_a_pool_names_its_slots_and_removes_those_a_killed_run_left(tmp_path):
    import os
    import subprocess
    import sys

    from alexnet.data.preprocess import MAX_PIXELS
    from alexnet.data.workers import Decoders

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path("/dev/shm") / f"alexnet-{dead.pid}-0"
    stale.write_bytes(bytes(1000))
    try:
        with Decoders(3, MAX_PIXELS, 8, 3, 16) as decoders:
            assert not stale.exists()
            names = [slot.name for slot in decoders._slots]
            assert names and all(name.startswith(f"alexnet-{os.getpid()}-") for name in names)
            assert all((Path("/dev/shm") / name).exists() for name in names)
        assert not any((Path("/dev/shm") / name).exists() for name in names)
    finally:
        stale.unlink(missing_ok=True)


def test_a_decoding_process_killed_midway_is_one_line_not_a_hang():
    """The OOM killer (or a kill) ending a decoding process: multiprocessing.Pool never
    finished the chunk it held, and prepare waited forever; now a one-line error, and the
    pool still shuts down."""
    import multiprocessing
    import os
    import signal

    from alexnet.data.preprocess import MAX_PIXELS
    from alexnet.data.workers import Decoders
    from alexnet.errors import UserError

    task, starts = _arrays_task(600, 16, 64, width=800)
    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(UserError, match="a decoding process ended abruptly"):
        with Decoders(3, MAX_PIXELS, len(starts), 16, 64) as decoders:
            for n, _ in enumerate(decoders.in_order(starts, task)):
                if n == 2:
                    victim = [p for p in multiprocessing.active_children()
                              if p.pid not in before][0]
                    os.kill(victim.pid, signal.SIGKILL)
    assert [p for p in multiprocessing.active_children() if p.pid not in before] == []


IDLE_KILLED = """
import multiprocessing, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from test_prepare_workers import _arrays_task
from alexnet.data.preprocess import MAX_PIXELS
from alexnet.data.workers import Decoders

if __name__ == "__main__":
    task, starts = _arrays_task(24, 3, 16)
    with Decoders(3, MAX_PIXELS, len(starts), 3, 16) as decoders:
        list(decoders.in_order(starts, task))
        time.sleep(0.5)  # idle: one process waits for work holding the queue's lock
        for process in multiprocessing.active_children():
            os.kill(process.pid, signal.SIGTERM)  # as `timeout` signals the process group
        time.sleep(0.1)
    print("shut down", flush=True)
"""


def test_a_pool_whose_processes_were_killed_while_idle_still_shuts_down(tmp_path):
    """`timeout` sends SIGTERM to the whole process group: multiprocessing.Pool's terminate
    then waited forever for the queue lock that a killed idle process held, so prepare, now
    cleaning up on SIGTERM, would hang instead of ending."""
    import subprocess
    import sys

    script = tmp_path / "idle_killed.py"
    script.write_text(IDLE_KILLED)
    proc = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "shut down\n"), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_stop_ends_busy_decoding_processes_at_once():
    """Leaving `Decoders` early (Ctrl-C, an error) ends its processes with SIGTERM, chunks
    still queued or not: they were found through ProcessPoolExecutor's private `_processes`,
    and where it is missing (another Python) the pool decoded every queued chunk first."""
    import multiprocessing
    import signal

    from alexnet.data.preprocess import MAX_PIXELS
    from alexnet.data.workers import Decoders

    task, starts = _arrays_task(600, 16, 64, width=800)  # the processes are busy
    before = {p.pid for p in multiprocessing.active_children()}
    with Decoders(3, MAX_PIXELS, len(starts), 16, 64) as decoders:
        for n, _ in enumerate(decoders.in_order(starts, task)):
            if n == 2:
                workers = [p for p in multiprocessing.active_children() if p.pid not in before]
                break
    assert len(workers) == 2
    assert [worker.exitcode for worker in workers] == [-signal.SIGTERM] * 2


@pytest.mark.parametrize("first", ["SIGINT", "SIGTERM"])
def test_a_second_ctrl_c_during_the_teardown_is_ignored(tmp_path, monkeypatch, first):
    """After a Ctrl-C (or SIGTERM), prepare stops its decoding processes and closes the
    split it writes; a Ctrl-C meanwhile (an impatient user) cut the stop short, left the
    pool's processes running, and ended prepare as interrupted rather than terminated. Now
    the teardown finishes, the first signal ends prepare, the handlers are put back, and the
    rerun ends byte-identical."""
    import multiprocessing
    import os
    import signal

    from _stops import tree

    from alexnet.cli import _signals
    from alexnet.data.store import SplitWriter
    from alexnet.data.workers import Decoders
    from alexnet.errors import Terminated

    src = _source(tmp_path / "src")
    prepare(src, tmp_path / "whole", size=20, chunk=3, workers=1)
    real_add, real_stop, added = SplitWriter.add_chunk, Decoders._stop, [0]

    def add_chunk(self, *args, **kwargs):
        real_add(self, *args, **kwargs)
        added[0] += 1
        if added[0] == 3:
            os.kill(os.getpid(), getattr(signal, first))

    def stop(self):
        if added[0] >= 3:
            os.kill(os.getpid(), signal.SIGINT)  # the second, as the processes are stopped
        real_stop(self)

    monkeypatch.setattr(SplitWriter, "add_chunk", add_chunk)
    monkeypatch.setattr(Decoders, "_stop", stop)
    before = {p.pid for p in multiprocessing.active_children()}
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopped = {"SIGINT": KeyboardInterrupt, "SIGTERM": Terminated}[first]
    with pytest.raises(stopped), _signals(program=False):  # SIGTERM raises, as in the command
        prepare(src, tmp_path / "out", size=20, chunk=3, workers=2)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert [p for p in multiprocessing.active_children() if p.pid not in before] == []
    monkeypatch.undo()
    prepare(src, tmp_path / "out", size=20, chunk=3, workers=2)
    assert tree(tmp_path / "out") == tree(tmp_path / "whole")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_finaliser_leaves_the_next_one_working(tmp_path, monkeypatch):
    """A Ctrl-C that lands in a finaliser (`__del__`) is printed there and dropped: prepare
    runs on, and the next Ctrl-C must stop it, not be ignored as one during a teardown."""
    import os
    import signal

    from alexnet.data.store import SplitWriter

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10))  # the handler runs here, and its KeyboardInterrupt is dropped

    real_add, added = SplitWriter.add_chunk, [0]

    def add_chunk(self, *args, **kwargs):
        real_add(self, *args, **kwargs)
        added[0] += 1
        if added[0] == 2:
            Finaliser()  # gone at once: its __del__ runs here
        if added[0] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SplitWriter, "add_chunk", add_chunk)
    with pytest.raises(KeyboardInterrupt):
        prepare(_source(tmp_path / "src"), tmp_path / "out", size=20, chunk=3, workers=2)
    assert added[0] == 4


VIEWED_AFTER_EXIT = """
import sys
sys.path.insert(0, sys.argv[1])
from test_prepare_workers import _arrays_task
from alexnet.data.workers import Decoders
from alexnet.data.preprocess import MAX_PIXELS

task, starts = _arrays_task(60, 3, 16)  # 20 chunks: the pool decodes some
with Decoders(2, MAX_PIXELS, len(starts), 3, 16) as decoders:
    kept = [result["images"] for _, result in decoders.in_order(starts, task)]
print(sum(int(images.sum()) for images in kept))
"""


def test_a_chunk_still_viewed_after_the_decoders_end_stays_readable():
    """A chunk's pixels view its shared-memory slot; the slots were unmapped at the end even
    while an array (an exception's frame: pytest printing it) still viewed one, and reading
    it then killed the process with SIGSEGV."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", VIEWED_AFTER_EXIT, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) > 0 and "Error" not in proc.stderr
