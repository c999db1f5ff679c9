"""Atomic file writes: the one way this package replaces a file that must never be half-written.

`write_atomic` writes a hidden temporary file `.tmp-NAME.PID` in the target's folder, flushes
and fsyncs it, renames it over the target (`os.replace`, atomic on POSIX) and fsyncs the folder,
so a kill or a full disk at any moment leaves either the previous file or the new one, never a
file under the final name that is half-written. A failed write removes its temporary file and
raises a one-line UserError naming the file and the cause (no space, read-only, permission, a
file where a folder should be); temporaries of killed processes are removed by `remove_stale`.
`link_atomic` gives a written file a second name the same way (a hard link renamed over it).
(The store writer, alexnet/data/store.py, keeps its own part files.)

`check_output` is the rule of every output path a user names (export, evaluate --out, the
fc7 cache): it may replace an earlier output of the same kind, never anything else (a
training checkpoint, a run's own files, an unrelated file), and never lies in a store
(`store_folder`), whose files are the data every run reads.

`FolderLock` keeps one writer per folder (a store, a run folder, an ablation): an exclusive
`flock` on FOLDER/.lock, refused at once with the caller's one-line message while held (or
waited for, when the caller asks). `FolderLock.beside` keeps one writer per output file in a
folder of the user's (an export, an evaluation report, the fc7 cache): `.NAME.lock` beside
it, removed when released.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from alexnet.errors import UserError

TMP_PREFIX = ".tmp-"  # temporary files are hidden and never carry the final name
NAME_MAX = 255  # bytes in a file name on Linux's and macOS's filesystems
LOCK = ".lock"  # FolderLock's file: empty, and left in place

Content = bytes | str | Callable[[IO[bytes]], None]


def temp_path(path: Path) -> Path:
    """This process's temporary file for `path`: `.tmp-NAME.PID` beside it."""
    return path.with_name(f"{TMP_PREFIX}{temp_name(path.name)}.{os.getpid()}")


def temp_name(name: str) -> str:
    """NAME in a temporary file's name: itself, or, for a name too long to take the prefix
    and a pid within the filesystems' 255 bytes, its start and a digest of the whole (a
    legal output name was refused for its temporary's length)."""
    room = NAME_MAX - len(TMP_PREFIX) - len(".4294967295")  # the longest pid
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:16]
    return os.fsdecode(raw[:room - len(digest) - 1]) + "~" + digest  # a cut character: bytes


def os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err`: itself, or the one a library wrapped (torch.save's writer
    raises RuntimeError from inline_container.cc with the OSError as its context)."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def interruption(err: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM behind `err` (a KeyboardInterrupt, Terminated, or any other
    BaseException that is not an Exception), itself or one a library wrapped: torch.save's
    zip writer, unwinding an interrupted write, raises RuntimeError ("unexpected pos") with
    the KeyboardInterrupt as its context."""
    seen = 0
    while err is not None and seen < 5:
        if not isinstance(err, Exception):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def fs_error(path: Path, err: OSError, doing: str = "cannot write") -> UserError:
    """A one-line UserError for a filesystem failure at `path`, saying what to do."""
    reason = err.strerror or str(err) or type(err).__name__
    return UserError(f"{path}: {doing} ({reason}); free disk space, or choose a writable folder "
                     "(an earlier file of the same name is kept)")


def ensure_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` (and parents) and check that files can be created in it.

    A store or a folder in one's split folder (`outside_stores`), an existing file in its
    place, a read-only mount, a missing permission or /sys give a one-line UserError before
    any work is done.
    """
    folder = outside_stores(folder, what)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a folder; choose another {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "probe")
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"{folder}: cannot create files there ({reason}); choose another "
                        f"{what}") from None
    return folder


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, user_errors: bool = True) -> Iterator[Path]:
    """A temporary path to write instead of `path`; when the block ends normally it is fsynced
    and renamed over `path`, otherwise removed. Filesystem failures become a UserError, or
    are raised as they are with `user_errors=False` (for a caller that words its own advice,
    as prepare does: "rerun the same command")."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name")
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        stop = interruption(err)
        if stop is not None:  # Ctrl-C or SIGTERM, not a failure: the CLI says "interrupted"
            raise stop from None
        cause = os_error(err)
        if cause is None or not user_errors:
            raise
        raise fs_error(path, cause) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _sync_folder(path.parent)


def write_atomic(path: str | os.PathLike, content: Content, *, user_errors: bool = True
                 ) -> Path:
    """Replace `path` with `content` (bytes, text, or a function writing to a binary file).

    Text is UTF-8; a name in it that is not (a path's bytes, which Python holds as surrogates)
    goes back as its own bytes, not a UnicodeEncodeError at the end of a long run."""
    with replacing(path, user_errors=user_errors) as tmp, open(tmp, "wb") as f:
        if callable(content):
            content(f)
        else:
            f.write(content.encode("utf-8", "surrogateescape") if isinstance(content, str)
                    else content)
    return Path(path)


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Make `path` a second name of the file `source` (a hard link), replacing `path`
    atomically: one file written once under two names that must hold the same bytes. False
    where the filesystem makes no hard links (the caller writes the file instead). Sound only
    because this package replaces files by renames (`replacing`), never writes into one: a
    rename over either name leaves the other's bytes as they were."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        return False
    finally:
        if tmp.exists():
            tmp.unlink()
    _sync_folder(path.parent)
    return True


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    """`data` as JSON (one trailing newline), atomically."""
    return write_atomic(path, json.dumps(data, indent=indent) + "\n")


def read_json_object(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in `path`, or None for anything else (absent, unreadable, not JSON, not
    an object): what `check_output`'s predicates look at to recognise a kind of output."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 24))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def store_folder(path: str | os.PathLike) -> Path | None:
    """The store root or split folder that folder `path` is, or the split folder it lies in,
    or None; a split folder is one whose header.json is a store's. A folder named after a
    split (train, val, test) in a store root is the store's too, prepared or not: the
    commands pick a split by its folder (`--split auto` takes val when ROOT/val exists), and
    prepare refuses to write a split where another folder is."""
    from alexnet.data.store import HEADER, MAGIC, SPLITS

    def is_split(folder: Path) -> bool:
        header = folder / HEADER
        return header.is_file() and (read_json_object(header) or {}).get("magic") == MAGIC

    def is_root(folder: Path) -> bool:
        return any(is_split(folder / split) for split in SPLITS)

    path = Path(os.path.abspath(path))
    if is_root(path):
        return path
    for folder in (path, *path.parents):
        if is_split(folder):
            return folder
        if folder.name in SPLITS and is_root(folder.parent):
            return folder.parent
    return None


def outside_stores(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """`folder` as a Path, or a one-line UserError when it is a store or lies in one's split
    folder (`store_folder`): every output folder (run folders, figures, experiments) is kept
    out of the stores, whose files are the data every run reads."""
    store = store_folder(folder)
    if store is not None:
        where = "is the store" if Path(os.path.abspath(folder)) == store else "lies in the store"
        raise UserError(f"{what} {folder}: {where} {store}, whose files are data; choose a "
                        "folder outside the store")
    return Path(folder)


def check_output(path: str | os.PathLike, kind: str, is_kind: Callable[[Path], bool],
                 option: str = "--out", name: str | None = None) -> Path:
    """Refuse, before any work, an output `path` that is a folder, lies in a store, or would
    replace a file that `is_kind` does not recognise as an earlier `kind` (a training
    checkpoint, a run's own file, an unrelated file would be lost). An output may replace its
    own earlier version: rerunning a command with the same `option` is normal. `name` words
    the path in the message (default: "OPTION PATH")."""
    path = Path(path)
    name = name or f"{option} {path}"
    if path.is_dir():
        raise UserError(f"{name}: is a folder; give a file name")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{name}: {path.parent} is a file, not a folder; choose another "
                        f"{option}")
    store = store_folder(path.parent)
    if store is not None:
        raise UserError(f"{name}: inside the store {store}, whose files are data; choose "
                        f"another {option} outside it")
    if (path.exists() or path.is_symlink()) and not is_kind(path):
        raise UserError(f"{name}: an existing file that is not an earlier {kind} (it would "
                        f"be lost); choose another {option} (or delete the file)")
    return path


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale(folder: str | os.PathLike, targets: Iterable[str | os.PathLike] | None = None
                 ) -> list[Path]:
    """Remove the temporary files in `folder` left by processes that no longer run: all of
    them in a folder of ours (a run, a store), or only those of `targets` (files in it) in a
    folder of the user's, where another program's `.tmp-*` files may lie."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    names = None if targets is None else {temp_name(Path(t).name) for t in targets}
    for tmp in folder.glob(f"{TMP_PREFIX}*"):
        name, _, pid = tmp.name[len(TMP_PREFIX):].rpartition(".")
        if names is not None and name not in names:
            continue
        if not pid.isdigit() or int(pid) == os.getpid() or alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def alive(pid: int) -> bool:
    """Whether a process `pid` exists (one we may not signal still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """One writer per folder: an exclusive `flock` on FOLDER/.lock (or FOLDER/`name`), taken
    by `acquire`; while another process holds it, `acquire` raises UserError(`refusal`) at
    once, or waits for it when asked to.

    The kernel drops the lock when its holder exits, however it ends (kill -9 included), so a
    lock is never stale. A folder's lock file stays (unlinking it would let two writers lock
    two different files); one made `removed` (`beside`: in a folder of the user's) is removed
    on release while still held, and a process that locked it meanwhile finds it gone and
    locks the file now there. The folder must exist; other filesystem failures are raised as
    they are (an OSError), for the caller to word.
    """

    def __init__(self, folder: str | os.PathLike[str], refusal: str, name: str = LOCK, *,
                 removed: bool = False) -> None:
        self.folder, self.refusal = Path(folder), refusal
        self.path, self.removed = self.folder / name, removed
        self._file: IO[bytes] | None = None

    @classmethod
    def beside(cls, path: str | os.PathLike[str], refusal: str) -> FolderLock:
        """The lock of one output file `path`: `.NAME.lock` beside it (NAME shortened as a
        temporary's is, `temp_name`), removed on release. For an output in a folder of the
        user's, where FOLDER/.lock may be another command's (a run folder's is training's)
        and writers of other files there need not wait."""
        path = Path(path)
        return cls(path.parent, refusal, f".{temp_name(path.name)}.lock", removed=True)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._file is not None

    def acquire(self, wait: Callable[[], None] | None = None) -> FolderLock:
        """Take the lock (a no-op when held). While another holds it: raise
        UserError(refusal), or, given `wait`, call it once (to say so) and wait."""
        import fcntl

        while self._file is None:
            file = open(self.path, "ab")
            try:
                if not _try_lock(file):
                    if wait is None:
                        raise UserError(self.refusal)
                    wait()
                    wait = _said
                    fcntl.flock(file.fileno(), fcntl.LOCK_EX)  # Ctrl-C still stops it
            except BaseException:
                file.close()
                raise
            if self.removed and not _same_file(file, self.path):
                file.close()  # removed by the holder that released it: lock the file now there
                continue
            self._file = file
        return self

    def release(self) -> None:
        """Give the lock up (idempotent); unlocked explicitly, so that a forked child that
        inherited the descriptor cannot keep it. A `removed` lock file is unlinked first, if
        empty (ours, not a file of the user's)."""
        import fcntl

        file, self._file = self._file, None
        if file is None:
            return
        with contextlib.suppress(OSError):
            if self.removed and os.fstat(file.fileno()).st_size == 0 \
                    and _same_file(file, self.path):
                self.path.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        file.close()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(file: IO[bytes]) -> bool:
    """Take an exclusive `flock` on `file` if free: False while another holds it."""
    import fcntl

    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _said() -> None:
    """`FolderLock.acquire`'s `wait` after the first time: the wait is said once."""


def _same_file(file: IO[bytes], path: Path) -> bool:
    """Whether the open `file` is the file now at `path`."""
    try:
        here, there = os.fstat(file.fileno()), path.stat()
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
