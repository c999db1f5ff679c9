"""`alexnet prepare` when things go wrong: runs of unreadable files, two writers on one store,
OUT paths that cannot be written, a full disk. Each ends in one line and exit status 2 (or a
good store), nothing written is corrupted, and the rerun works."""

from __future__ import annotations

import errno
import gzip
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import _images as images_
import numpy as np
import pytest

from alexnet.cli import main as cli_main
from alexnet.data import open_split
from alexnet.data.store import PROGRESS
from alexnet.errors import Terminated

REPO = Path(__file__).resolve().parents[1]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single line `alexnet prepare` printed on stderr (progress bars aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines()
             if "alexnet prepare: error:" in line or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("alexnet prepare: error:"), lines
    return lines[0]


def _idx_source(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, array in (("train-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28))),
                        ("train-labels-idx1-ubyte.gz", rng.integers(0, 10, count))):
        header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
        with gzip.open(folder / name, "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())
    return folder


def test_a_run_of_unreadable_files(tmp_path, capsys):
    """130 zero-byte JPEGs before the good ones fill whole chunks with nothing to write."""
    src = tmp_path / "src"
    files = {f"a{i:03d}.JPEG": b"" for i in range(130)}
    files.update({f"z{i}.JPEG": images_.jpeg(images_.photo(30, 20, 0, i)) for i in range(3)})
    images_.write_files(src / "cat", files)
    images_.write_files(src / "dog", {f"{i}.png": images_.png(images_.photo(20, 30, 1, i))
                                      for i in range(2)})
    args = ["prepare", str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1"]
    assert cli_main(args) == 0
    store = open_split(tmp_path / "out", "train")
    assert len(store) == 5 and list(store.labels) == [0, 0, 0, 1, 1]
    assert [images_.class_of(store.read([i])[0]) for i in range(5)] == [0, 0, 0, 1, 1]
    report = (store.path / "skipped.tsv").read_text().splitlines()[1:]
    assert len(report) == 130 and all(line.endswith("\tempty file") for line in report)
    assert cli_main(args) == 0  # the rerun: already complete


def test_a_source_with_no_readable_image(tmp_path, capsys):
    src = tmp_path / "src"
    images_.write_files(src / "cat", {f"{i}.jpg": b"" for i in range(5)})
    args = ["prepare", str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1"]
    for _ in range(2):  # the rerun gives the same advice
        assert cli_main(args) == 2
        line = _one_line_error(capsys)
        assert "no readable images" in line and "skipped.tsv" in line
        report = (tmp_path / "out" / "train" / "skipped.tsv").read_text().splitlines()
        assert len(report) == 6


@pytest.mark.parametrize("train_name, val_name, says", [
    ("caf\u00e9", "cafe\u0301", "'cafe\\u0301' absent from {train}, which has 'caf\\xe9' that "
     "differs only in Unicode normalisation (NFD here, NFC there): rename one"),
    ("Cat", "cat", "'cat' absent from {train}, which has 'Cat' that differs from it only in "
     "letter case: rename one"),
])
def test_a_val_class_that_only_looks_like_a_train_class(tmp_path, capsys, train_name, val_name,
                                                         says):
    """A val class folder absent from train, though a name equal to it but for Unicode
    normalisation or letter case is there: the error shows both names with escapes, so
    that the difference is seen."""
    src = tmp_path / "src"
    for split, name in (("train", train_name), ("val", val_name)):
        for k, folder in enumerate((name, "dog")):
            images_.write_files(src / split / folder, {"0.png": images_.png(images_.photo(
                20, 20, k))})
    assert cli_main(["prepare", str(src), str(tmp_path / "out"), "--workers", "1"]) == 2
    assert says.format(train=src / "train") in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# `alexnet prepare` that, once its first chunk is recorded (PROGRESS written, the store's lock
# held), waits for the test's RELEASE file (at most 120 s) before it writes the others: it is
# still running however long the test takes to look, on a machine as loaded as it may be.
SLOW_PREPARE = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from alexnet.data import store\n"
    "add, release = store.SplitWriter.add_chunk, Path(sys.argv[3])\n"
    "def held(self, *a, **k):\n"
    "    if self.chunks_done == 1:\n"
    "        deadline = time.monotonic() + 120\n"
    "        while not release.exists() and time.monotonic() < deadline:\n"
    "            time.sleep(0.01)\n"
    "    return add(self, *a, **k)\n"
    "store.SplitWriter.add_chunk = held\n"
    "from alexnet.cli import main\n"
    "sys.exit(main(['prepare', sys.argv[1], sys.argv[2], '--size', '16', '--workers', '1']))\n")


def test_second_writer_fails_at_once(tmp_path, capsys):
    """A second prepare into the OUT of a running one is refused at once; the first finishes
    a store identical to a run alone.

    The first holds after its first chunk until the test releases it (SLOW_PREPARE): it had
    about 2 s of chunks left, which a loaded machine could spend before the test looked (a
    4 s stop of the test process failed it). A second that waited for the lock would wait
    out the first's 120 s hold: over the 60 s bound (a refusal takes a fraction of a second
    here), the first ended and no refusal."""
    src = _idx_source(tmp_path / "digits", 640)
    out, release = tmp_path / "out", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(src), str(out),
                              str(release)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "train" / PROGRESS).exists() and time.time() < deadline:
            assert first.poll() is None, "the first prepare ended before it wrote a chunk"
            time.sleep(0.01)
        assert (out / "train" / PROGRESS).exists(), "the first prepare wrote no chunk in 120 s"
        start = time.perf_counter()
        args = ["prepare", str(src), str(out), "--size", "16", "--workers", "1"]
        assert cli_main(args) == 2
        assert time.perf_counter() - start < 60
        assert "another process is writing" in _one_line_error(capsys)
        assert first.poll() is None, "the check must not depend on the first having ended"
    finally:
        release.write_text("")
        assert first.wait(timeout=300) == 0
    assert cli_main(["prepare", str(src), str(tmp_path / "alone"), "--size", "16",
                     "--workers", "1"]) == 0
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "alone")


def _small_source(root: Path) -> Path:
    for k, name in enumerate(["a", "b"]):
        images_.write_files(root / name, {f"{i}.png": images_.png(images_.photo(24, 18, k, i))
                                          for i in range(3)})
    return root


def test_out_that_cannot_be_written(tmp_path, capsys):
    src = _small_source(tmp_path / "src")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    cases = [(a_file, "must be a folder"), (a_file / "below", "must be a folder")]
    if Path("/sys/kernel").is_dir():  # sysfs: nobody, root included, makes folders there
        cases.append((Path("/sys/alexnet-store-test"), "choose an OUT folder you can write"))
    for out, advice in cases:
        assert cli_main(["prepare", str(src), str(out), "--size", "16", "--workers", "1"]) == 2
        line = _one_line_error(capsys)
        assert advice in line and str(out) in line
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("failing_call", [1, 3, 7])
def test_disk_full_then_rerun(tmp_path, capsys, monkeypatch, failing_call):
    """ENOSPC at the n-th fsync (part files, progress record, final files): one line, exit 2,
    and the rerun after space is freed gives the store of an uninterrupted run."""
    src = _small_source(tmp_path / "src")
    args = ["prepare", str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1"]
    real_fsync, calls = os.fsync, [0]

    def full_disk(fd: int) -> None:
        calls[0] += 1
        if calls[0] >= failing_call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    assert cli_main(args) == 2
    line = _one_line_error(capsys)
    assert "No space left on device" in line and "rerun the same command" in line
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert cli_main(args) == 0
    assert cli_main(args[:2] + [str(tmp_path / "once")] + args[3:]) == 0
    assert _tree_bytes(tmp_path / "out") == _tree_bytes(tmp_path / "once")
    assert not list((tmp_path / "out").rglob(".tmp-*"))


DAMAGES = {
    "truncated pixels": lambda split: os.truncate(split / "images.u8", 100),
    "labels removed": lambda split: (split / "labels.npy").unlink(),
    "labels an npz": lambda split: (split / "labels.npy").write_bytes(b"PK\x05\x06" + bytes(18)),
    "own mean image removed": lambda split: (split / "own_mean_image.npy").unlink(),
    "header removed": lambda split: (split / "header.json").unlink(),
    "header overwritten": lambda split: (split / "header.json").write_bytes(b"\x00" * 50),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_split_is_rebuilt_by_the_rerun(tmp_path, capsys, damage):
    """What opening a split refuses (its advice: rerun prepare) the rerun rebuilds, with a
    notice naming the split, into the store a fresh prepare makes; the sound split is kept."""
    src = _small_source(tmp_path / "src")
    args = ["prepare", str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1",
            "--val-fraction", "0.34"]
    assert cli_main(args) == 0
    fresh = _tree_bytes(tmp_path / "out")
    DAMAGES[damage](tmp_path / "out" / "train")
    capsys.readouterr()
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert f"rebuilding the damaged split {tmp_path / 'out' / 'train'} (" in err
    assert f"{tmp_path / 'out' / 'val'}: already complete" in err
    assert _tree_bytes(tmp_path / "out") == fresh
    open_split(tmp_path / "out", "train")


def test_a_folder_that_is_not_a_split_is_still_refused(tmp_path, capsys):
    """A split folder without header holding a file that no store holds is not ours: it is
    refused, and nothing in it is touched."""
    src = _small_source(tmp_path / "src")
    args = ["prepare", str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1"]
    assert cli_main(args) == 0
    train = tmp_path / "out" / "train"
    (train / "header.json").unlink()
    (train / "notes.txt").write_text("mine")
    before = _tree_bytes(tmp_path / "out")
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "folder exists and is not a store" in _one_line_error(capsys)
    assert _tree_bytes(tmp_path / "out") == before


@pytest.mark.parametrize("stop, status, said", [
    (KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated (SIGTERM)")])
def test_interrupted_says_the_store_keeps_its_chunks_and_the_rerun_continues(
        tmp_path, capsys, monkeypatch, stop, status, said):
    """Ctrl-C (or SIGTERM's Terminated) after the first chunk said only "interrupted": one
    line now says what is kept and what to do, and doing it gives the store of one run."""
    from alexnet.data import store

    src = _idx_source(tmp_path / "digits", 100)  # four chunks
    out = tmp_path / "out"
    args = ["prepare", str(src), str(out), "--size", "16", "--workers", "1"]
    add_chunk, calls = store.SplitWriter.add_chunk, [0]

    def cut(self, *chunk, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            self.checkpoint()
            raise stop
        return add_chunk(self, *chunk, **kwargs)

    monkeypatch.setattr(store.SplitWriter, "add_chunk", cut)
    try:
        code = cli_main(args)
    except BaseException as err:  # KeyboardInterrupt let through would stop the whole session
        pytest.fail(f"{type(err).__name__} went through main (a traceback)")
    lines = [line for line in capsys.readouterr().err.splitlines() if "alexnet" in line]
    assert code == status and lines == [
        f"alexnet prepare: {said}; {out} keeps what was written; run the same command again "
        "to continue from there"], lines
    monkeypatch.setattr(store.SplitWriter, "add_chunk", add_chunk)
    assert cli_main(args) == 0
    assert cli_main(args[:2] + [str(tmp_path / "once")] + args[3:]) == 0
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "once")
