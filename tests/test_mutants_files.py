"""File safety that a mutation audit found unchecked: write_atomic's temporary (beside the
file, flushed and fsynced before the rename, the folder fsynced after), a SIGKILL mid-write,
temporaries' names at the 255-byte limit, JSON reads and writes, ensure_folder and
check_output's refusals, remove_stale's rules, FolderLock's exclusivity and release, the run
folder's step and epoch logs, and one_stop's handlers. Expectations come from the file
system (bytes read back, os.stat, flock from another open file, a killed child), never from
the code's own output."""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import alexnet
from alexnet.atomic import (
    TMP_PREFIX,
    FolderLock,
    check_output,
    ensure_folder,
    read_json_object,
    remove_stale,
    temp_name,
    write_atomic,
    write_json,
)
from alexnet.errors import Terminated, UserError
from alexnet.stops import one_stop, unwinding_a_stop
from alexnet.training import run_folder
from alexnet.training.run_folder import LOG_FIELDS, RunFiles

ROOT = str(Path(alexnet.__file__).resolve().parent.parent)  # the alexnet the tests import


def child_env() -> dict[str, str]:
    """The environment of a child process that imports the same alexnet as this test."""
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def locked_elsewhere(path: Path) -> bool:
    """Whether `path` is flock-ed by another open file (flock conflicts between open files
    even within one process)."""
    with open(path, "ab") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


# --------------------------------------------------------------------------- write_atomic

KILLED_WRITER = """
import sys, time
from alexnet.atomic import write_atomic

def half(f):
    f.write(b"N" * 300_000)
    f.flush()
    print("half", flush=True)
    time.sleep(120)

write_atomic(sys.argv[1], half)
"""


def test_a_sigkill_mid_write_leaves_the_old_file_and_a_temporary_beside_it(tmp_path):
    """A writer killed halfway: under the final name the old bytes, all of them, both while
    it writes and after; its half-written temporary lies beside the file (a rename within
    one folder, never across filesystems), names its pid, and remove_stale removes it."""
    path = tmp_path / "report.json"
    old = b'{"the earlier": "report"}\n' * 1000
    path.write_bytes(old)
    (tmp_path / "notes.txt").write_bytes(b"the user's")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stdout.readline() == "half\n"
        assert path.read_bytes() == old  # not written in place
        temporary = tmp_path / f"{TMP_PREFIX}report.json.{proc.pid}"
        assert temporary.stat().st_size == 300_000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == sorted([temporary.name, "notes.txt", path.name])
    assert remove_stale(tmp_path) == [temporary]
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "report.json"]
    assert path.read_bytes() == old


def test_the_temporary_is_whole_and_fsynced_before_the_rename_and_the_folder_after(
        tmp_path, monkeypatch):
    """The rename happens once the temporary beside the file holds every byte (flushed,
    closed) and has been fsynced; the folder is fsynced after it (the rename made durable)."""
    path = tmp_path / "out.bin"
    chunks = [bytes([i % 251]) * 10 for i in range(1000)]  # small writes: a buffer fills
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        st = os.stat(src)
        events.append(("replace", st.st_ino, st.st_size, Path(src).parent, Path(dst)))
        return real_replace(src, dst)

    def content(f):
        for chunk in chunks:
            f.write(chunk)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(path, content)
    monkeypatch.undo()
    assert path.read_bytes() == b"".join(chunks)
    renames = [e for e in events if e[0] == "replace"]
    assert len(renames) == 1
    _, ino, size, parent, dst = renames[0]
    at = events.index(renames[0])
    assert (size, parent, dst) == (10_000, tmp_path, path)
    assert ("fsync", ino) in events[:at], events  # the temporary's data before the rename
    assert ("fsync", os.stat(tmp_path).st_ino) in events[at:], events  # the folder after
    assert os.stat(path).st_ino == ino and os.listdir(tmp_path) == ["out.bin"]


def test_a_target_on_another_filesystem_is_written_through_a_temporary_beside_it(tmp_path):
    """/dev/shm (tmpfs) is another filesystem than the tests' tmp folder: a temporary made
    anywhere but beside the target would fail to rename there (EXDEV)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    folder = shm / f"alexnet-test-{os.getpid()}"
    folder.mkdir()
    try:
        seen = []
        path = write_atomic(folder / "w.bin", lambda f: (seen.append(f.name), f.write(b"w")))
        assert path.read_bytes() == b"w" and os.listdir(folder) == ["w.bin"]
        assert Path(seen[0]) == folder / f"{TMP_PREFIX}w.bin.{os.getpid()}"
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def test_a_failed_write_names_the_file_keeps_the_old_one_and_leaves_no_temporary(tmp_path):
    """A full disk halfway: one line naming the file the user knows (not the temporary),
    the earlier bytes kept, the half-written temporary gone; with user_errors=False the
    OSError itself, the same cleanup done."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the earlier one")

    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError) as err:
        write_atomic(path, full)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and TMP_PREFIX not in message
    assert os.strerror(errno.ENOSPC) in message and "\n" not in message
    assert path.read_bytes() == b"the earlier one" and os.listdir(tmp_path) == [path.name]
    with pytest.raises(OSError) as raw:
        write_atomic(path, full, user_errors=False)
    assert not isinstance(raw.value, UserError) and raw.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"the earlier one" and os.listdir(tmp_path) == [path.name]


def test_a_folder_where_the_file_goes_is_refused_untouched(tmp_path):
    """Replacing a folder is refused as such (a file name is wanted), before any temporary
    is made; the folder and what it holds stay."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "kept.txt").write_bytes(b"kept")
    with pytest.raises(UserError, match=r"is a folder") as err:
        write_atomic(folder, b"bytes")
    assert str(err.value).startswith(f"{folder}: ")
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert (folder / "kept.txt").read_bytes() == b"kept"


def test_an_output_in_folders_not_made_yet_is_written_there(tmp_path):
    """`export --out new/dir/w.pt` (check_output lets a missing folder pass): the folders are
    made and the file written, with nothing else left in them."""
    path = tmp_path / "new" / "dir" / "w.pt"
    assert write_atomic(path, b"weights") == path
    assert path.read_bytes() == b"weights" and os.listdir(path.parent) == ["w.pt"]


@pytest.mark.parametrize("extra", range(-3, 4))
def test_a_temporarys_name_fits_255_bytes_and_keeps_a_name_that_fits(tmp_path, extra):
    """`.tmp-NAME.PID` with the longest pid (10 digits) fits a file name's 255 bytes, NAME
    kept whole whenever it fits so and shortened (distinctly) only when it does not; the
    file can be made for real."""
    room = 255 - len(TMP_PREFIX) - len(".4294967295")
    n = room + extra
    for name in ("a" * n, "\u00e9" * (n // 2) + "b" * (n % 2)):
        raw = os.fsencode(name)
        temp = f"{TMP_PREFIX}{temp_name(name)}.4294967295"
        assert len(os.fsencode(temp)) <= 255, (len(raw), len(os.fsencode(temp)))
        if len(raw) <= room:
            assert temp_name(name) == name
        else:
            assert temp_name(name) != name and temp_name(name) != temp_name(name + "x")
        if len(raw) <= 255:
            (tmp_path / temp).write_bytes(b"")  # the filesystem takes it
            (tmp_path / temp).unlink()


# ----------------------------------------------------------------------------------- JSON


def test_write_json_round_trips_with_one_trailing_newline(tmp_path):
    data = {"a": [1, 2.5, None], "caf\u00e9": {"n": True}}
    path = write_json(tmp_path / "x.json", data)
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    assert json.loads(raw) == data and os.listdir(tmp_path) == ["x.json"]


@pytest.mark.parametrize("content", [b"[1, 2]", b'"text"', b"3", b"null", b"{truncated",
                                     b"", b"\xff\xfe{}", None, "folder"])
def test_read_json_object_is_none_for_anything_but_an_object(tmp_path, content):
    """Absent, a folder, not JSON, not UTF-8, or JSON that is not an object: None."""
    path = tmp_path / "x.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert read_json_object(path) is None


def test_read_json_object_gives_an_object(tmp_path):
    (tmp_path / "x.json").write_text('{"magic": "m", "n": [1]}')
    assert read_json_object(tmp_path / "x.json") == {"magic": "m", "n": [1]}


# ----------------------------------------------------------------------------- ensure_folder


@pytest.mark.parametrize("how", ["file", "link to a file"])
def test_ensure_folder_refuses_a_file_in_its_place_and_keeps_it(tmp_path, how):
    target = tmp_path / "file"
    target.write_bytes(b"the user's file")
    place = target
    if how != "file":
        place = tmp_path / "link"
        place.symlink_to(target)
    with pytest.raises(UserError, match="is a file, not a folder") as err:
        ensure_folder(place, "run folder (--out)")
    assert str(err.value).startswith(f"{place}: ") and "run folder (--out)" in str(err.value)
    assert target.read_bytes() == b"the user's file"


def test_ensure_folder_makes_parents_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "a" / "b" / "c"
    assert ensure_folder(folder) == folder
    assert folder.is_dir() and os.listdir(folder) == []
    assert ensure_folder(folder) == folder and os.listdir(folder) == []  # again: fine


# ----------------------------------------------------------------------------- check_output


def test_check_output_refuses_what_it_would_lose_and_passes_its_own_kind(tmp_path):
    """An unrelated file or a dangling link (replaced by the rename) is refused, untouched;
    a file the predicate recognises may be replaced; a folder is never a file name, even
    for a predicate that says yes to everything."""
    unrelated = tmp_path / "notes.txt"
    unrelated.write_bytes(b"the user's")
    with pytest.raises(UserError, match="not an earlier export") as err:
        check_output(unrelated, "export", lambda p: False)
    assert str(err.value).startswith(f"--out {unrelated}: ")
    assert unrelated.read_bytes() == b"the user's"
    link = tmp_path / "link.pt"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not an earlier export"):
        check_output(link, "export", lambda p: False)
    assert check_output(unrelated, "export", lambda p: p == unrelated) == unrelated
    assert check_output(tmp_path / "new.pt", "export", lambda p: False) == tmp_path / "new.pt"
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(UserError, match="is a folder") as err:
        check_output(tmp_path / "dir.pt", "export", lambda p: True, option="--save")
    assert str(err.value).startswith(f"--save {tmp_path / 'dir.pt'}: ")


def test_check_output_refuses_a_path_inside_a_store(tmp_path):
    import numpy as np

    from alexnet.data.store import write_store

    store = tmp_path / "store"
    write_store(store / "train", np.zeros((2, 8, 8, 3), np.uint8), [0, 1], ["a", "b"])
    before = sorted(p.name for p in (store / "train").iterdir())
    for path in (store / "train" / "w.pt", store / "w.pt"):
        with pytest.raises(UserError, match="inside the store"):
            check_output(path, "export", lambda p: True)
    assert sorted(p.name for p in (store / "train").iterdir()) == before


# ----------------------------------------------------------------------------- remove_stale


def test_remove_stale_removes_only_temporaries_of_ended_processes(tmp_path):
    """Of `.tmp-NAME.PID` files: a dead pid's goes; a running process's (the parent, this
    one), a suffix that is no pid, and files without the prefix stay; names with dots are
    split at the last one; a missing folder is nothing to do (and is not made)."""
    dead = dead_pid()
    gone = [tmp_path / f"{TMP_PREFIX}a.b.c.{dead}", tmp_path / f"{TMP_PREFIX}x.{dead}"]
    kept = [tmp_path / f"{TMP_PREFIX}a.{os.getppid()}", tmp_path / f"{TMP_PREFIX}a.{os.getpid()}",
            tmp_path / f"{TMP_PREFIX}a.old", tmp_path / f"a.b.{dead}", tmp_path / f"tmp-a.{dead}"]
    for p in gone + kept:
        p.write_bytes(b"x")
    assert sorted(remove_stale(tmp_path)) == sorted(gone)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert remove_stale(tmp_path / "missing") == [] and not (tmp_path / "missing").exists()


def test_remove_stale_with_targets_keeps_other_programs_temporaries(tmp_path):
    dead = dead_pid()
    ours = tmp_path / f"{TMP_PREFIX}m.weights.pt.{dead}"
    theirs = tmp_path / f"{TMP_PREFIX}notes.txt.{dead}"
    for p in (ours, theirs):
        p.write_bytes(b"x")
    assert remove_stale(tmp_path, [tmp_path / "m.weights.pt"]) == [ours]
    assert os.listdir(tmp_path) == [theirs.name]


def test_a_temporary_of_a_process_one_may_not_signal_is_kept():
    """pid 1 runs, as root: a user who may not signal it (EPERM) must still count it alive.
    Checked from a process of user nobody when the tests run as root (in a folder of /tmp
    that nobody may enter and write, which the tests' own tmp_path is not)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="alexnet-stale-"))
    try:
        live = folder / f"{TMP_PREFIX}cache.npy.1"
        live.write_bytes(b"a running writer's")
        dead = folder / f"{TMP_PREFIX}cache.npy.{dead_pid()}"
        dead.write_bytes(b"x")
        if os.geteuid() != 0:
            remove_stale(folder)
        else:
            os.chmod(folder, 0o777)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child, as user nobody
                code = 1
                try:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    remove_stale(folder)
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert os.listdir(folder) == [live.name]
    finally:
        shutil.rmtree(folder)


# ------------------------------------------------------------------------------- FolderLock


def test_a_folder_lock_is_exclusive_and_released_for_others(tmp_path):
    """A second FolderLock on the folder is refused with the caller's message while the first
    holds it (flock conflicts between open files in one process too); release frees it for
    another open file; the empty lock file stays."""
    first = FolderLock(tmp_path, "busy").acquire()
    assert first.held and locked_elsewhere(tmp_path / ".lock")
    with pytest.raises(UserError, match="^busy$"):
        FolderLock(tmp_path, "busy").acquire()
    first.release()
    assert os.listdir(tmp_path) == [".lock"] and (tmp_path / ".lock").read_bytes() == b""
    assert not first.held and not locked_elsewhere(tmp_path / ".lock")


def test_release_unlocks_even_where_a_forked_child_holds_the_descriptor(tmp_path):
    """A child forked while the lock is held (a loader's worker) shares its open file: the
    release must unlock it explicitly, not only close this process's descriptor."""
    lock = FolderLock(tmp_path, "busy").acquire()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child waits, holding the inherited descriptor
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    try:
        lock.release()
        assert not locked_elsewhere(tmp_path / ".lock")
    finally:
        os.close(write)
        os.waitpid(pid, 0)


def flock_waiters(ino: int) -> int:
    """How many flock requests wait on the file of inode `ino` (/proc/locks' `->` rows)."""
    with open("/proc/locks") as f:
        rows = [line.split() for line in f]
    return sum(1 for row in rows if "->" in row and "FLOCK" in row
               and any(field.count(":") == 2 and field.endswith(f":{ino}") for field in row))


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")
def test_a_waiter_that_finds_a_new_lock_file_held_says_it_waits_once(tmp_path):
    """The holder's file is replaced by a new one, itself held, before the waiter gets the
    old one: the waiter moves to the new file and waits again, without saying it twice, and
    ends holding the file now at the path."""
    out = tmp_path / "fc7.npy"
    first = FolderLock.beside(out, "busy").acquire()
    said, waiter = [], FolderLock.beside(out, "busy")
    told = threading.Event()

    def wait():
        said.append(True)
        told.set()

    thread = threading.Thread(target=waiter.acquire, kwargs={"wait": wait})
    thread.start()
    assert told.wait(timeout=60)  # the waiter has the first file open and waits on it
    new = tmp_path / "new.lock"
    holder = open(new, "ab")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    os.replace(new, first.path)  # a new file, held by another, now at the lock's path
    ino = os.stat(first.path).st_ino
    first.release()  # the old file (no longer at the path) is unlocked and closed
    try:
        deadline = time.monotonic() + 60
        while not flock_waiters(ino):  # until the waiter blocks on the new file
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        holder.close()
    thread.join(timeout=60)
    assert not thread.is_alive() and said == [True] and waiter.held
    assert os.path.samefile(waiter.path, tmp_path / ".fc7.npy.lock")
    assert os.fstat(waiter._file.fileno()).st_ino == os.stat(waiter.path).st_ino
    waiter.release()
    assert os.listdir(tmp_path) == []


HOLDER = """
import sys, time
from alexnet.atomic import FolderLock
lock = FolderLock(sys.argv[1], "busy").acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_sigkilled_holder_leaves_a_lock_that_is_free(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(UserError, match="^mine$"):
            FolderLock(tmp_path, "mine").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with FolderLock(tmp_path, "mine") as lock:
        assert lock.held and locked_elsewhere(tmp_path / ".lock")
    assert not locked_elsewhere(tmp_path / ".lock")


def test_a_lock_beside_a_users_file_of_that_name_keeps_its_bytes(tmp_path):
    """`.NAME.lock` that is a file of the user's (not empty) is neither truncated nor
    removed: only the empty file the lock made is ours to remove."""
    out = tmp_path / "w.pt"
    users = tmp_path / ".w.pt.lock"
    users.write_bytes(b"the user's notes")
    with FolderLock.beside(out, "busy"):
        assert users.read_bytes() == b"the user's notes"
    assert users.read_bytes() == b"the user's notes"


def test_a_lock_beside_a_long_name_works_and_goes(tmp_path):
    """A 252-byte output name (legal) has a lock file name that fits 255 bytes."""
    out = tmp_path / ("\u00e9" * 120 + "x.weights.pt")
    assert len(os.fsencode(out.name)) == 252
    with FolderLock.beside(out, "busy") as lock:
        assert lock.held and len(os.listdir(tmp_path)) == 1
        assert locked_elsewhere(lock.path)
    assert os.listdir(tmp_path) == []


def test_a_beside_lock_file_is_removed_while_still_held(tmp_path, monkeypatch):
    """Removed after the unlock, the file could be locked meanwhile by another process and
    then unlinked under it, letting a third lock a new file: two holders. At the moment of
    removal the flock must still be ours."""
    out = tmp_path / "report.json"
    lock = FolderLock.beside(out, "busy").acquire()
    seen = []
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self == lock.path:
            seen.append(locked_elsewhere(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    lock.release()
    monkeypatch.undo()
    assert seen == [True] and os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------- run folder


def test_keep_steps_until_keeps_whole_rows_up_to_the_step_through_a_new_file(tmp_path):
    """Rows after the step, a row torn by a kill, a line that is no object and a step that is
    no integer go; rows up to and including the step stay, in order; the file is replaced
    (a new inode: written beside and renamed), not rewritten in place."""
    files = RunFiles(tmp_path)
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    lines = [json.dumps(r) for r in rows[:2]] + ['{"step": "2", "loss": 0}', "[3]",
                                                 json.dumps(rows[2]), json.dumps(rows[3]),
                                                 json.dumps(rows[4]), '{"step": 6, "lo']
    files.steps.write_text("\n".join(lines))
    before = os.stat(files.steps).st_ino
    run_folder.keep_steps_until(files, 3)
    assert [json.loads(line) for line in files.steps.read_text().splitlines()] == rows[:3]
    assert files.steps.read_text().endswith("}\n")
    assert os.stat(files.steps).st_ino != before and os.listdir(tmp_path) == ["steps.jsonl"]


def test_keep_steps_until_without_a_step_log_makes_none(tmp_path):
    run_folder.keep_steps_until(RunFiles(tmp_path), 7)
    assert os.listdir(tmp_path) == []


def test_append_step_appends(tmp_path):
    files = RunFiles(tmp_path)
    rows = [{"step": 1, "epoch": 0, "loss": 2.0, "lr": 0.01, "images_per_s": 5.0},
            {"step": 2, "epoch": 0, "loss": 1.5, "lr": 0.01, "images_per_s": 6.0}]
    for row in rows:
        run_folder.append_step(files, row)
    assert [json.loads(line) for line in files.steps.read_text().splitlines()] == rows


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_step_row_on_a_full_disk_is_one_line_naming_the_step_log(tmp_path):
    """An OSError from the append's write or close carries no file name: the error said
    'No space left on device' and no path."""
    files = RunFiles(tmp_path)
    files.steps.symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(UserError) as info:
        run_folder.append_step(files, {"step": 1})
    message = str(info.value)
    assert message.startswith(f"{files.steps}: cannot write (No space left on device)")
    assert "\n" not in message


def test_write_logs_replaces_both_logs_and_drops_curves_of_an_empty_history(
        tmp_path, monkeypatch):
    """log.jsonl holds the rows, log.csv the same under LOG_FIELDS, each replaced through a
    new file; an empty history leaves no curves.png (the earlier one would be a later run's)."""
    import alexnet.figures.curves as curves

    drawn = []
    monkeypatch.setattr(curves, "plot_curves", lambda log, out: drawn.append((log, out)))
    files = RunFiles(tmp_path)
    for path in (files.log, files.csv, files.curves):
        path.write_bytes(b"an earlier run's")
    inodes = {path: os.stat(path).st_ino for path in (files.log, files.csv)}
    history = [{f: i + k for k, f in enumerate(LOG_FIELDS)} | {"extra": 1} for i in range(2)]
    run_folder.write_logs(files, history)
    assert [json.loads(line) for line in files.log.read_text().splitlines()] == history
    with open(files.csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert [list(r) for r in table] == [list(LOG_FIELDS)] * 2
    assert [{k: float(v) for k, v in r.items()} for r in table] == \
        [{f: float(h[f]) for f in LOG_FIELDS} for h in history]
    assert all(os.stat(p).st_ino != ino for p, ino in inodes.items())
    assert drawn == [(files.log, files.curves)]
    run_folder.write_logs(files, [])
    assert files.log.read_bytes() == b"" and not files.curves.exists()
    assert files.csv.read_text().splitlines() == [",".join(LOG_FIELDS)]


def test_check_own_files_refuses_a_folder_in_place_of_a_run_file(tmp_path):
    files = RunFiles(tmp_path)
    for path in files.own_files():
        path.write_bytes(b"x")  # files of the run's names: fine
    run_folder.check_own_files(files)
    files.best.unlink()
    files.best.mkdir()
    with pytest.raises(UserError, match="a folder where the run writes") as err:
        run_folder.check_own_files(files)
    assert str(err.value).startswith(f"{files.best}: ")


# ------------------------------------------------------------------------------------ stops


def test_a_stop_is_seen_unwinding_under_another_exception():
    """A KeyboardInterrupt or Terminated whose cleanup raised something else (even `from
    None`) is still unwinding; outside any except, or under other errors only, none is."""
    assert not unwinding_a_stop()
    for stop in (KeyboardInterrupt, Terminated):
        try:
            raise stop
        except stop:
            try:
                raise RuntimeError("in the cleanup") from None
            except RuntimeError:
                assert unwinding_a_stop()
    try:
        raise ValueError
    except ValueError:
        assert not unwinding_a_stop()


def test_one_stop_keeps_handlers_it_did_not_set():
    """A handler not set by Python (SIGTERM ignored) is left as it is, inside and after; a
    handler the block sets for itself stays after the block."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with one_stop():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: nothing happens
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN

        def own(signum, frame):
            raise KeyboardInterrupt

        with one_stop():
            signal.signal(signal.SIGINT, own)
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_one_stop_in_a_thread_is_a_no_op():
    """Only the main thread may set handlers: in another, one_stop does nothing (no
    ValueError), as prepare called from a worker thread needs."""
    errors = []

    def body():
        try:
            with one_stop():
                pass
        except BaseException as err:  # noqa: BLE001 - reported to the main thread
            errors.append(err)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=30)
    assert errors == [] and signal.getsignal(signal.SIGINT) is before


def test_helpers_import_the_same_package():
    """The children above import the alexnet under test (a mutation copy, or the tree)."""
    out = subprocess.run([sys.executable, "-c", "import alexnet; print(alexnet.__file__)"],
                         capture_output=True, text=True, env=child_env(), cwd="/")
    assert Path(out.stdout.strip()).resolve() == Path(alexnet.__file__).resolve()
