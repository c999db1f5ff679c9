"""atomic.write_atomic's text: UTF-8, with a path's bytes that are not UTF-8 kept as they are."""

from __future__ import annotations

import os

import pytest

from alexnet.atomic import link_atomic, write_atomic
from alexnet.errors import Terminated, UserError


def test_text_holding_a_name_that_is_not_utf8_is_written_as_its_bytes(tmp_path):
    """Text naming a path whose bytes are not UTF-8 raised UnicodeEncodeError instead of being
    written (no report holds such a name as text today; the rule lives here for any)."""
    store = os.fsdecode(b"/data/st\xffre")
    path = write_atomic(tmp_path / "ablation.md", f"store: {store}, caf\u00e9\n")
    assert path.read_bytes() == b"store: /data/st\xffre, caf\xc3\xa9\n"
    assert sorted(os.listdir(tmp_path)) == ["ablation.md"]


def test_a_name_near_the_filesystems_limit_is_written_and_its_stale_temporary_found(tmp_path):
    """A legal 250-byte output name was refused: its temporary `.tmp-NAME.PID` was longer
    than 255 bytes (ENAMETOOLONG, naming a file the user never asked for)."""
    import subprocess
    import sys

    from alexnet.atomic import TMP_PREFIX, remove_stale, temp_name

    name = "\u00e9" * 120 + "x.weights.pt"  # 252 bytes in UTF-8
    assert len(os.fsencode(name)) == 252
    path = write_atomic(tmp_path / name, b"weights")
    assert path.read_bytes() == b"weights" and os.listdir(tmp_path) == [name]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{TMP_PREFIX}{temp_name(name)}.{dead.pid}"
    stale.write_bytes(b"left by a killed writer")
    assert len(os.fsencode(stale.name)) <= 255
    assert remove_stale(tmp_path, [path]) == [stale]


class _CutFile:
    """A binary file whose n-th write raises `stop`, as Ctrl-C (or SIGTERM's handler) does
    when it lands while torch.save's zip writer is writing."""

    def __init__(self, file, after: int, stop: type[BaseException]) -> None:
        self.file, self.after, self.stop, self.writes = file, after, stop, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.after:
            raise self.stop
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated])
@pytest.mark.parametrize("after", [2, 5])
def test_an_interrupted_torch_save_is_the_interrupt_and_leaves_no_temporary(tmp_path, stop,
                                                                           after):
    """torch.save's zip writer, unwinding the interrupt, raised RuntimeError("[enforce fail at
    inline_container.cc] unexpected pos"), which `replacing` let through: the CLI printed
    that traceback with exit status 1 instead of "interrupted" and 130."""
    import torch

    path = tmp_path / "net.pt"
    path.write_bytes(b"the earlier checkpoint")
    state = {"weight": torch.zeros(10_000), "bias": torch.ones(10)}
    with pytest.raises(stop):
        write_atomic(path, lambda f: torch.save(state, _CutFile(f, after, stop)))
    assert path.read_bytes() == b"the earlier checkpoint"
    assert os.listdir(tmp_path) == ["net.pt"]


def test_a_failing_torch_save_is_still_a_one_line_error(tmp_path):
    """The RuntimeError of a full disk (its context an OSError) stays a UserError."""
    import errno

    import torch

    class FullDisk(_CutFile):
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match="No space left on device"):
        write_atomic(tmp_path / "net.pt",
                     lambda f: torch.save({"w": torch.zeros(10)}, FullDisk(f, 0, OSError)))
    assert os.listdir(tmp_path) == []


def test_a_lock_beside_a_file_refuses_or_waits_and_leaves_no_file(tmp_path):
    """export's lock beside its --out was a copy of FolderLock's logic (flock, removed at the
    end, locked again if gone); `FolderLock.beside` is that lock, and it can wait (the fc7
    cache's second user waits rather than being refused)."""
    import threading

    from _stops import held_elsewhere

    from alexnet.atomic import FolderLock

    out = tmp_path / "m.weights.pt"
    lock_file = tmp_path / ".m.weights.pt.lock"
    with held_elsewhere(lock_file), pytest.raises(UserError, match="^busy$"):
        FolderLock.beside(out, "busy").acquire()
    first = FolderLock.beside(out, "busy").acquire()
    assert os.listdir(tmp_path) == [lock_file.name]
    said, second = threading.Event(), FolderLock.beside(out, "busy")
    waiter = threading.Thread(target=second.acquire, kwargs={"wait": said.set})
    waiter.start()
    said.wait(timeout=60)  # told it waits: it has the file that `first` holds open
    first.release()  # removed while held: the waiter finds it gone and locks a new one
    waiter.join(timeout=60)
    assert second.held and os.path.samefile(second._file.fileno(), lock_file)
    second.release()
    assert os.listdir(tmp_path) == []
    with FolderLock(tmp_path, "busy"):  # a folder's own lock stays in place
        pass
    assert os.listdir(tmp_path) == [".lock"]


def test_a_folder_named_after_a_split_in_a_store_is_the_stores(tmp_path):
    """`train --out STORE/val` (or evaluate's report, figures' folder there) was allowed in a
    store with train and test only: `--split auto` then took STORE/val for the split and every
    evaluate on the store failed (`no header.json; rerun prepare`), and prepare refuses a
    split where another folder is. Other folders in a store root are nobody's concern."""
    import numpy as np

    from alexnet.atomic import ensure_folder, outside_stores, store_folder
    from alexnet.data.store import write_store

    store = tmp_path / "store"
    images = np.zeros((2, 8, 8, 3), np.uint8)
    write_store(store / "train", images, [0, 1], ["a", "b"])
    for inside in ("val", "val/run", "test/figs/deeper"):
        assert store_folder(store / inside) == store, inside
        with pytest.raises(UserError, match=f"lies in the store {store},"):
            outside_stores(store / inside, "run folder (--out)")
    assert not (store / "val").exists()
    assert store_folder(store / "runs" / "val") is None  # not in the root: no split's place
    assert ensure_folder(store / "runs" / "r1") == store / "runs" / "r1"
    assert store_folder(tmp_path / "val") is None  # a folder named val outside any store


def test_a_second_name_replaces_its_target_and_outlives_the_firsts_replacement(tmp_path,
                                                                                monkeypatch):
    """link_atomic: `b` becomes the file `a` names (replacing b's own); replacing `a` by a
    rename afterwards leaves b's bytes; a filesystem without hard links says False, b as it
    was and no temporary left."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_atomic(a, b"first")
    write_atomic(b, b"older")
    assert link_atomic(a, b) and b.samefile(a) and b.read_bytes() == b"first"
    write_atomic(a, b"second")
    assert (a.read_bytes(), b.read_bytes()) == (b"second", b"first")

    def no_links(src, dst, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert not link_atomic(a, b)
    assert b.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
