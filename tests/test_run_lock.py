"""One writer per folder: a second `alexnet train` into a run folder (fresh or --resume) is
refused at once while the first holds the folder's lock, and changes nothing; the lock goes
when a run ends however it ends; a second ablate into the same folder is refused; the store's
lock still refuses a second prepare. Locks are held with a plain `flock` on FOLDER/.lock
(from another process, or another open file here), the contract the commands keep."""

from __future__ import annotations

import fcntl
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest
from _stops import held_elsewhere, tree  # a lock held by another process
from test_train import make_store  # 64-pixel images: a fast store

from alexnet import checkpoint
from alexnet.checkpoint import trained_checkpoint
from alexnet.cli import main
from alexnet.config import resolve
from alexnet.data.store import WriteLock
from alexnet.errors import UserError
from alexnet.train import train
from alexnet.training import procedure

TINY = ["model.width=0.125", "optim.batch_size=8", "run.progress=false", "run.device=cpu",
        "data.crop=64", "optim.epochs=1"]
BUSY = "another process is training into this run folder"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), size=64, n_train=16, n_val=8)


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    train(resolve("paper", TINY, {"data.store": str(store), "run.out": str(out)}))
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of a finished run of one epoch, for a test to try to write into."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def flock(folder: Path) -> IO[bytes] | None:
    """FOLDER/.lock locked through a new open file (flock conflicts even within a process), or
    None when another holder has it."""
    f = open(folder / ".lock", "ab")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def is_locked(folder: Path) -> bool:
    f = flock(folder)
    if f is not None:
        f.close()
    return f is None


def no_work(*args, **kwargs):
    raise AssertionError("a refused start read the run folder or did heavy work")


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith("alexnet train: error:"), captured
    return err


@pytest.mark.parametrize("how", ["fresh", "resume"])
def test_a_second_train_into_a_held_run_folder_is_refused_before_any_work(
        how, run, store, monkeypatch, capsys):
    before = tree(run)
    monkeypatch.setattr(procedure, "resume_checkpoint", no_work)  # reads the folder
    monkeypatch.setattr(procedure, "open_data", no_work)
    monkeypatch.setattr(procedure, "build_state", no_work)
    monkeypatch.setattr(checkpoint, "load", no_work)  # --resume's checkpoint is not read
    args = (["--resume", str(run), "--epochs", "2"] if how == "resume" else
            ["--data", str(store), *sets(TINY), "--out", str(run)])
    with held_elsewhere(run / ".lock"):
        assert main(["train", *args, "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert f"{run}: {BUSY}" in err and "choose another --out" in err, err
    assert tree(run) == before  # byte-identical, the lock file included


def test_a_running_runs_checkpoint_may_start_a_run_of_its_own_elsewhere(run, tmp_path):
    """`--resume A --out B` reads A's checkpoint (replaced atomically) and writes B only: a
    run still training in A does not stop it."""
    before = tree(run)
    with held_elsewhere(run / ".lock"):
        assert main(["train", "--resume", str(run), "--out", str(tmp_path / "b"), "--epochs",
                     "2", "--no-progress"]) == 0
    assert tree(run) == before
    assert checkpoint.load(tmp_path / "b")["epoch"] == 2


def test_no_rank_of_several_looks_at_the_lock_before_joining(run, monkeypatch):
    """Under torchrun every rank reads the arguments; probes by several ranks could race each
    other, and a refusal before the ranks meet would be one rank's alone (the others waiting
    for it until torchrun ends them): with several ranks none probes, and rank 0's refusal in
    `train` is every rank's (test_distributed). A launch of one rank probes as one process."""
    with held_elsewhere(run / ".lock"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        for rank in ("1", "0"):
            monkeypatch.setenv("RANK", rank)
            procedure.check_run_folder_free(run)  # no look, no refusal
        monkeypatch.setenv("WORLD_SIZE", "1")
        with pytest.raises(UserError, match=BUSY):
            procedure.check_run_folder_free(run)


def test_a_real_concurrent_train_is_refused_and_a_killed_one_leaves_no_lock(
        store, tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "alexnet", "train", "--data", str(store),
                              *sets(TINY), "--epochs", "1000", "--out", str(run)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():  # waits for a state, never races one
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        assert BUSY in one_line_error(capsys)
        assert main(["train", "--data", str(store), *sets(TINY), "--out", str(run)]) == 2
        assert BUSY in one_line_error(capsys)
        assert first.poll() is None, "the refusals must not depend on the first having ended"
    finally:
        first.send_signal(signal.SIGKILL)  # the kernel drops a killed holder's lock
        first.communicate()
    epochs = checkpoint.load(run)["epoch"]
    assert main(["train", "--resume", str(run), "--epochs", str(epochs + 1)]) == 0
    assert checkpoint.load(run)["epoch"] == epochs + 1


def test_the_lock_is_held_during_a_run_and_released_however_it_ends(run, store, monkeypatch):
    original = procedure.train_epoch
    seen = []

    def watched(*args, **kwargs):
        seen.append(is_locked(run))
        return original(*args, **kwargs)

    def failing(*args, **kwargs):
        seen.append(is_locked(run))
        raise RuntimeError("a crash in the middle of an epoch")

    resume = {"data.store": str(store), "run.out": str(run), "run.resume": str(run)}
    monkeypatch.setattr(procedure, "train_epoch", failing)
    with pytest.raises(RuntimeError, match="a crash"):
        train(resolve("paper", TINY + ["optim.epochs=2"], resume))
    assert seen == [True] and not is_locked(run)
    monkeypatch.setattr(procedure, "train_epoch", watched)
    result = train(resolve("paper", TINY + ["optim.epochs=2"], resume))  # a next run works
    assert result["epochs"] == 2 and seen == [True, True] and not is_locked(run)
    # the empty lock file stays, and upsets nothing that reads a run folder
    assert (run / ".lock").read_bytes() == b""
    assert trained_checkpoint(run)[0] == run / "best.pt"
    assert checkpoint.load(run)["epoch"] == 2


def test_a_new_folder_is_locked_once_made_so_a_racing_start_cannot_write(
        store, tmp_path, monkeypatch, capsys):
    """Two starts into a folder that does not exist yet: the one that finds it made and
    locked by the other (here, while it loads its data) is refused and writes nothing."""
    run, other = tmp_path / "run", []
    original = procedure.open_data

    def racing(config):
        run.mkdir()
        other.append(flock(run))  # the other start made the folder and holds it
        return original(config)

    monkeypatch.setattr(procedure, "open_data", racing)
    assert main(["train", "--data", str(store), *sets(TINY), "--out", str(run)]) == 2
    assert f"{run}: {BUSY}" in one_line_error(capsys)
    assert tree(run) == {".lock": b""}  # no config.json, no checkpoint: nothing of its own
    other[0].close()


def test_a_start_that_finds_a_new_folder_holding_a_finished_run_is_refused(
        finished, store, tmp_path, monkeypatch, capsys):
    """The racing start may even have finished its whole run (and left the lock) while this
    one loaded its data: its run is never overwritten."""
    run = tmp_path / "run"
    original = procedure.open_data

    def racing(config):
        shutil.copytree(finished, run)
        return original(config)

    monkeypatch.setattr(procedure, "open_data", racing)
    assert main(["train", "--data", str(store), *sets(TINY), "--out", str(run)]) == 2
    assert "already holds a run" in one_line_error(capsys)
    assert tree(run) == tree(finished)


def test_a_refused_start_into_a_new_folder_leaves_no_folder(store, tmp_path, capsys):
    run = tmp_path / "new" / "run"
    assert main(["train", "--data", str(store), *sets(TINY), "--batch-size", "1000",
                 "--out", str(run)]) == 2
    assert "larger than the training split" in one_line_error(capsys)
    assert not (tmp_path / "new").exists()


def test_a_run_folder_where_no_lock_file_can_be_made_is_one_line(run, store, monkeypatch,
                                                                 capsys):
    (run / ".lock").unlink()
    (run / ".lock").mkdir()  # stands for a read-only folder: the lock file cannot be opened
    monkeypatch.setattr(procedure, "open_data", no_work)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = one_line_error(capsys)
    assert f"{run}: cannot create files there" in err and "Traceback" not in err, err


def test_a_second_ablate_into_a_busy_folder_is_refused_before_training(
        store, tmp_path, monkeypatch):
    import alexnet.train
    from alexnet.experiments import ablate as ab

    monkeypatch.setattr(alexnet.train, "train", no_work)
    out = tmp_path / "ablate"
    out.mkdir()
    base = resolve("paper", TINY, {"data.store": str(store)})
    with held_elsewhere(out / ".lock"), pytest.raises(UserError) as info:
        ab.ablate(base, out, ab.choose_variants(["no-lrn"]), budget_steps=1, seeds=1,
                  log=lambda *_: None)
    message = str(info.value)
    assert "another process is running an ablation into this folder" in message
    assert "\n" not in message and tree(out) == {".lock": b""}


def test_the_store_lock_still_refuses_a_second_writer(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    with held_elsewhere(root / ".lock"), pytest.raises(UserError) as info:
        WriteLock(root)
    assert str(info.value) == (f"{root}: another process is writing this store (an `alexnet "
                               "prepare` or `alexnet demo` still running?); wait for it to "
                               "end, or choose another OUT")
    with held_elsewhere(root / ".lock"), pytest.raises(UserError) as info:
        WriteLock(root, option="--store")  # the demo names its own option
    assert str(info.value).endswith("; wait for it to end, or choose another --store")
    split = root / "train"
    with WriteLock(split):  # made, and locked: a second writer in this process is refused too
        with pytest.raises(UserError, match="another process is writing this store"):
            WriteLock(split)
    WriteLock(split).release()  # released at the block's end: free again
    assert [p.name for p in split.iterdir()] == [".lock"]
