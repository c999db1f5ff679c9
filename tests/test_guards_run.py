"""Guards of `alexnet train` that keep what is already written: a user's own files under the
run's file names, a run resumed from a checkpoint behind its folder's checkpoint.pt, a store
of other classes on --resume; and options no run can use (a seed out of range, an empty
--out), each refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_run_lock import sets  # --set per item
from test_train import coloured_images  # noisy images of 4 colour classes: a fast store

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import resolve, write_json
from alexnet.data.store import write_store
from alexnet.errors import UserError
from alexnet.train import train

TINY = ["model.width=0.125", "optim.batch_size=8", "run.progress=false", "run.device=cpu",
        "data.crop=64", "optim.epochs=1"]


def tiny_store(root: Path, names: list[str]) -> Path:
    """A 64-pixel store of 16 training and 8 validation images of classes `names`."""
    classes = [{"wnid": name, "name": name} for name in names]
    images, labels = coloured_images(16, 64, 0)
    split = write_store(root / "train", images, labels, classes)
    images, labels = coloured_images(8, 64, 1)
    write_store(root / "val", images, labels, classes, stats=split.stats)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("store"), ["cat", "dog", "fox", "owl"])


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory) -> Path:
    """A run of two epochs, with its first epoch's checkpoint kept as epoch1.pt."""
    out = tmp_path_factory.mktemp("runs") / "done"
    train(resolve("paper", TINY, {"data.store": str(store), "run.out": str(out)}))
    shutil.copy(out / "checkpoint.pt", out / "epoch1.pt")
    train(resolve("paper", TINY + ["optim.epochs=2"],
                  {"data.store": str(store), "run.out": str(out), "run.resume": str(out)}))
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, for a test to try to write into."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def refused(capsys, *args: str) -> str:
    """The one line of a command refused with status 2."""
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_user_files_under_run_names_are_refused(store, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "log.csv").write_text("mine\n")
    (folder / "config.json").write_text("{}\n")
    err = refused(capsys, "--data", str(store), "--out", str(folder), *sets(TINY),
                  "--max-steps", "1")
    assert "config.json" in err or "log.csv" in err
    assert (folder / "log.csv").read_text() == "mine\n"
    assert (folder / "config.json").read_text() == "{}\n"
    assert not (folder / "checkpoint.pt").exists()


def test_unrelated_files_and_a_run_stopped_before_its_checkpoint_still_train(store, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    config = resolve("paper", TINY, {"data.store": str(store), "run.out": str(folder)})
    write_json(config, folder / "config.json")  # a run killed before its first checkpoint
    (folder / "steps.jsonl").write_text("")
    assert main(["train", "--data", str(store), "--out", str(folder), *sets(TINY),
                 "--max-steps", "1"]) == 0
    assert (folder / "notes.txt").read_text() == "mine\n"
    assert (folder / "checkpoint.pt").is_file()


def test_resume_from_a_checkpoint_behind_the_folders_is_refused(run, tmp_path, capsys):
    before = (run / "checkpoint.pt").read_bytes(), (run / "log.csv").read_text()
    err = refused(capsys, "--resume", str(run / "epoch1.pt"), "--max-steps", "3")
    assert "newer" in err and "--out" in err
    assert ((run / "checkpoint.pt").read_bytes(), (run / "log.csv").read_text()) == before
    # into a new folder it continues, as the message advises
    new = tmp_path / "new"
    assert main(["train", "--resume", str(run / "epoch1.pt"), "--out", str(new),
                 "--epochs", "2"]) == 0
    assert checkpoint.load(new / "checkpoint.pt")["epoch"] == 2


def test_resume_on_a_store_of_other_classes_is_refused(run, tmp_path, capsys):
    other = tiny_store(tmp_path / "other", ["a", "b", "c", "d"])
    before = (run / "checkpoint.pt").read_bytes()
    err = refused(capsys, "--resume", str(run), "--data", str(other), "--epochs", "3")
    assert "'cat' vs 'a'" in err and "classes" in err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_complete_run_resumed_into_a_new_folder_is_refused(run, tmp_path, capsys):
    """Resumed into a new --out, a run with nothing left to train wrote a folder of logs
    without a checkpoint (and listed a checkpoint.pt it did not hold); into its own folder
    it still reports the run as done, naming only the files there."""
    new = tmp_path / "new"
    err = refused(capsys, "--resume", str(run), "--out", str(new))
    assert "complete (2 of 2 epochs" in err and "optim.epochs" in err
    assert not new.exists()
    err = refused(capsys, "--resume", str(run), "--out", str(new), "--epochs", "3",
                  "--max-steps", "4")  # its 4 steps done: a step limit it already reached
    assert "4 steps" in err
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("done (completed)")
    names = out[-1].removeprefix(f"run folder {run}: ").split(", ")
    assert names[0] == "checkpoint.pt" and all((run / name).is_file() for name in names)


@pytest.mark.parametrize("how", [["--seed", "99999999999999999999"],
                                 ["--set", "run.seed=99999999999999999999"]])
def test_a_seed_out_of_range_is_one_line(store, tmp_path, capsys, how):
    err = refused(capsys, "--data", str(store), "--out", str(tmp_path / "r"), *sets(TINY), *how)
    assert "run.seed" in err
    assert not (tmp_path / "r").exists()
    resolve("paper", ["run.seed=18446744073709551615"])  # torch's largest seed is fine
    with pytest.raises(UserError, match="run.seed"):
        resolve("paper", ["run.seed=18446744073709551616"])


def test_an_empty_out_is_refused(store, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, "--data", str(store), "--out", "", *sets(TINY))
    assert "--out" in err
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_store_moved_away_is_named_as_the_checkpoints(run, store, tmp_path, capsys):
    """The store the checkpoint recorded, moved: the line said 'no such store; make one with
    alexnet prepare', not that the path came from the checkpoint and --data takes the new one."""
    moved = Path(shutil.copytree(store, tmp_path / "moved"))
    ckpt = checkpoint.load(run / "checkpoint.pt")
    ckpt["config"]["data"]["store"] = str(tmp_path / "gone")
    checkpoint.save(run / "checkpoint.pt", ckpt)
    err = refused(capsys, "--resume", str(run), "--epochs", "3")
    assert f"{run / 'checkpoint.pt'} was trained on the store {tmp_path / 'gone'}, which is " \
           "not there now; give --data STORE" in err
    assert main(["train", "--resume", str(run), "--data", str(moved), "--epochs", "3"]) == 0


def test_resuming_on_a_store_prepared_again_from_other_images_says_so(run, tmp_path, capsys):
    """Same classes, other training images (its statistics differ): the run went on without
    a word, its resumed position in another sequence of batches."""
    other = tmp_path / "other"
    classes = [{"wnid": name, "name": name} for name in ["cat", "dog", "fox", "owl"]]
    images, labels = coloured_images(16, 64, 7)
    split = write_store(other / "train", images, labels, classes)
    images, labels = coloured_images(8, 64, 1)
    write_store(other / "val", images, labels, classes, stats=split.stats)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--data", str(other), "--epochs", "3"]) == 0
    notices = [line for line in capsys.readouterr().out.splitlines() if "notice:" in line]
    assert len(notices) == 1 and "is not the one" in notices[0]
    assert f"{run / 'checkpoint.pt'} was trained on" in notices[0]


def test_resuming_on_its_own_store_has_no_notice(run, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    captured = capsys.readouterr()
    assert "notice" not in captured.out + captured.err


def test_resuming_a_run_at_its_recorded_max_steps_says_how_to_go_on(store, tmp_path, capsys):
    """`train --resume RUN --max-steps 2` records run.max_steps=2 in RUN; a later plain
    `--resume RUN` trained nothing and said only `done (max_steps): 2 steps`."""
    out = tmp_path / "capped"
    assert main(["train", "--data", str(store), "--out", str(out), *sets(TINY),
                 "--set", "optim.epochs=3", "--max-steps", "1"]) == 0
    assert main(["train", "--resume", str(out), "--max-steps", "2"]) == 0
    assert "nothing trained" not in capsys.readouterr().out  # it trained step 2
    assert main(["train", "--resume", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("done (max_steps): 2 steps") for line in lines)
    assert "(nothing trained: the run's run.max_steps=2, recorded in its config, was already " \
        "reached; continue it with a higher --max-steps, or --max-steps 0 for no limit)" in lines
    assert main(["train", "--resume", str(out), "--max-steps", "0"]) == 0
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 3  # every epoch, as told
