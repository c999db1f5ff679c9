"""figures, evaluate and predict on damaged logs, bad options, rebuilt stores, a checkpoint
given twice and folders holding files that are not regular files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from alexnet.checkpoint import make_state, save
from alexnet.cli import main
from alexnet.data.store import open_split, write_store
from alexnet.errors import UserError
from alexnet.figures.curves import plot_curves, read_log
from alexnet.model import AlexNet
from alexnet.paper import IMAGE_SIZE

CLASSES = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]
ROWS = [{"epoch": 1, "train_loss": 1.1, "lr": 0.01}, {"epoch": 2, "train_loss": 0.9, "lr": 0.01}]


def tiny_images(seed: int, count: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def store_and_run(tmp_path_factory):
    """A tiny store (train 6, test 3) and a run folder: a small net's checkpoint.pt and its
    log.jsonl (two epochs)."""
    root = tmp_path_factory.mktemp("guards")
    images, labels = tiny_images(4, 9), np.arange(9) % 3
    write_store(root / "store" / "train", images[:6], labels[:6], CLASSES)
    train = open_split(root / "store", "train")
    write_store(root / "store" / "test", images[6:], labels[6:], CLASSES, stats=train.stats)
    torch.manual_seed(0)
    model = AlexNet(num_classes=3, width=0.0625)
    for module in model.modules():  # PyTorch's init: fc7 vectors far apart
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    run = root / "run"
    run.mkdir()
    save(run / "checkpoint.pt", make_state(model, classes=CLASSES, stats=train.stats, epoch=2,
                                           step=0))
    (run / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return root / "store", run


def run_copy(run, tmp_path, log: str, steps: str | None = None):
    """A run folder R2 of `run`'s checkpoint with the log.jsonl (and steps.jsonl) `log`."""
    r2 = tmp_path / "R2"
    r2.mkdir()
    shutil.copyfile(run / "checkpoint.pt", r2 / "checkpoint.pt")
    (r2 / "log.jsonl").write_text(log)
    if steps is not None:
        (r2 / "steps.jsonl").write_text(steps)
    return r2


def figures(ckpt, store, out, *extra: str) -> int:
    return main(["figures", str(ckpt), "--data", str(store), "--out", str(out), "--images", "1",
                 "--queries", "1", "--device", "cpu", *extra])


# ------------------------------------------------------------------ 1: damaged logs

def test_a_log_cut_short_by_a_kill_draws_its_whole_rows(store_and_run, tmp_path, capsys):
    """A half-written last line (a killed write) stopped `figures` with a JSONDecodeError
    traceback after every other figure was written."""
    store, run = store_and_run
    log = (run / "log.jsonl").read_text()
    r2 = run_copy(run, tmp_path, log + log[:40])
    assert read_log(r2 / "log.jsonl") == ROWS
    out = tmp_path / "F"
    assert figures(r2, store, out) == 0, capsys.readouterr().err
    assert (out / "training_curves.png").is_file()
    assert json.loads((out / "figures.json").read_text())["curves"].endswith("curves.png")


@pytest.mark.parametrize("damage", ["damaged line", "no epoch", "a list", "step row"])
def test_a_damaged_row_is_one_line_naming_file_and_line(store_and_run, tmp_path, damage):
    """A damaged line before the last, a row without "epoch" (KeyError) or a row that is a
    JSON list (AttributeError), in log.jsonl or in steps.jsonl, gave a raw traceback."""
    _, run = store_and_run
    good = "".join(json.dumps(row) + "\n" for row in ROWS)
    bad = {"damaged line": '{"epoch": 1, "train_lo\n', "no epoch": '{"train_loss": 1.0}\n',
           "a list": "[1, 2]\n", "step row": good}[damage]
    step = json.dumps({"step": 1, "epoch": 0.5, "loss": 1.0, "lr": 0.01}) + "\n"
    steps = step + '{"epoch": 0.7, "loss": 1.0}\n' + step if damage == "step row" else None
    r2 = run_copy(run, tmp_path, good if steps else good[:-1] + "\n" + bad + good, steps)
    with pytest.raises(UserError) as err:
        plot_curves(r2 / "log.jsonl", tmp_path / "c.png")
    name, line = ("steps.jsonl", 2) if steps else ("log.jsonl", 3)
    assert str(err.value).startswith(f"{r2 / name}, line {line}: ") and "\n" not in str(err.value)
    assert not (tmp_path / "c.png").exists()


def test_figures_with_a_damaged_log_skip_the_curves_in_one_line(store_and_run, tmp_path,
                                                                capsys):
    """The curves are skipped with a notice; every other figure and figures.json are written."""
    store, run = store_and_run
    r2 = run_copy(run, tmp_path, '{"epoch": 1, "train_loss": 1.0}\n{oops\n{"epoch": 2}\n')
    out = tmp_path / "F"
    assert figures(r2, store, out) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "curves" in line]
    assert err == [f"training curves skipped: {r2 / 'log.jsonl'}, line 2: not a JSON row "
                   "(damaged); delete or repair that line"]
    assert not (out / "training_curves.png").exists()
    summary = json.loads((out / "figures.json").read_text())
    assert "curves" not in summary and (out / "fig4_neighbours.png").is_file()


# ------------------------------------------------------------------ 2: a negative seed

def test_a_negative_seed_is_refused_before_any_figure(store_and_run, tmp_path, capsys):
    """--seed -1 failed in numpy with a traceback, after figure 3 was written."""
    store, run = store_and_run
    out = tmp_path / "F"
    assert figures(run / "checkpoint.pt", store, out, "--seed", "-1") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--seed -1: give 0 or more" in err, err
    assert not out.exists() or not any(out.glob("*.png"))


# ------------------------------------------------------------------ 3: a rebuilt store

def test_a_store_rebuilt_in_place_does_not_reuse_the_cached_features(store_and_run, tmp_path,
                                                                     capsys):
    """The cache key held the store's path and image count only: a store rebuilt there with
    as many (other) images got the old store's features, and figure 4 the wrong neighbours."""
    store, run = store_and_run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    cache, ckpt = tmp_path / "fc7.npy", tmp_path / "net.pt"  # no log beside it: no curves
    shutil.copyfile(run / "checkpoint.pt", ckpt)
    assert figures(ckpt, copy, tmp_path / "a", "--features-cache", str(cache)) == 0
    before = np.load(cache)
    train = open_split(copy, "train")
    write_store(copy / "train", tiny_images(99, len(train)), train.labels, CLASSES,
                stats=train.stats)
    capsys.readouterr()
    assert figures(ckpt, copy, tmp_path / "b", "--features-cache", str(cache)) == 0
    assert "training features read from" not in capsys.readouterr().out  # recomputed
    assert not np.allclose(np.load(cache), before)
    assert figures(ckpt, copy, tmp_path / "c", "--features-cache", str(cache)) == 0
    assert "training features read from" in capsys.readouterr().out  # unchanged: reused


# ------------------------------------------------------------------ 4: one checkpoint twice

@pytest.mark.parametrize("second", ["checkpoint.pt", "link.pt", "run"])
def test_one_checkpoint_given_twice_is_not_an_ensemble(store_and_run, tmp_path, capsys,
                                                       second):
    """`evaluate RUN RUN/checkpoint.pt` reported "2 CNNs" and wrote an ensemble2 report."""
    store, run = store_and_run
    r2 = run_copy(run, tmp_path, "")
    (r2 / "link.pt").symlink_to(r2 / "checkpoint.pt")
    first = r2 if second != "run" else r2 / "checkpoint.pt"
    given = r2 if second == "run" else r2 / second
    code = main(["evaluate", str(first), str(given), "--data", str(store), "--device", "cpu"])
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if "evaluating" not in line]
    assert code == 2 and captured.out == "" and len(err) == 1, captured
    assert f"{given}: the same checkpoint as {first} ({(r2 / 'checkpoint.pt').resolve()})" \
        in err[0]
    assert not list(r2.glob("*.json"))


# ------------------------------------------------------------------ 5: predict's folders

def test_a_folders_image_names_that_are_not_regular_files_are_said(tmp_path, capsys):
    """A dangling link or a FIFO named .jpg was left out of a folder without a word."""
    from alexnet.predict import expand_folders

    folder = tmp_path / "D"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.jpg").symlink_to(tmp_path / "nonexistent.jpg")
    os.mkfifo(folder / "c.jpg")
    assert expand_folders([folder]) == [folder / "a.jpg"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{folder}: 2 file(s) that are not regular files" in err[0]
    assert "left out (b.jpg, c.jpg)" in err[0]


TORCHSCRIPT_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from alexnet.atomic import replacing
from alexnet.errors import UserError
from alexnet.export import export_torchscript
from alexnet.model import AlexNet
net = AlexNet(num_classes=3, width=0.1).eval()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails instead
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
try:
    with replacing(sys.argv[1]) as tmp:
        export_torchscript(net, 224, tmp)
except UserError as err:
    print(err)
"""


def test_a_torchscript_export_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """TorchScript's file writer aborted the process (c10::Error, exit 134, a C++ backtrace)
    when the disk filled, leaving its temporary file to fill the disk."""
    import subprocess
    import sys

    path = tmp_path / "net.torchscript.pt"
    path.write_bytes(b"earlier")
    proc = subprocess.run([sys.executable, "-c", TORCHSCRIPT_FULL_DISK, str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("\n") == 1 and "File too large" in proc.stdout, proc.stdout
    assert path.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == [
        path.name]


WEIGHTS_FULL_DISK = """
import resource, signal, sys
from alexnet.atomic import replacing
from alexnet.errors import UserError
from alexnet.export import export_weights
from alexnet.model import AlexNet
net = AlexNet(num_classes=3, width=0.1).eval()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
try:
    with replacing(sys.argv[1]) as tmp:
        export_weights(net, {}, tmp)
except UserError as err:
    print(err)
"""


def test_a_weights_export_on_a_full_disk_names_the_users_file(tmp_path):
    """The error named the export's temporary (.tmp-net.weights.pt.PID), not the file asked
    for."""
    import subprocess
    import sys

    path = tmp_path / "net.weights.pt"
    proc = subprocess.run([sys.executable, "-c", WEIGHTS_FULL_DISK, str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"{path}: ") and ".tmp-" not in proc.stdout, proc.stdout
    assert "File too large" in proc.stdout and list(tmp_path.iterdir()) == []


def test_an_ensemble_of_other_class_names_names_the_first_class_that_differs():
    """docs/evaluation.md: checkpoints of the same number of classes under other names are
    refused naming the first class that differs, between two checkpoints as against a store."""
    from alexnet.evaluate import check_classes

    other = [dict(c) for c in CLASSES]
    other[1]["name"] = other[1]["wnid"] = "zebra"
    with pytest.raises(UserError) as err:
        check_classes(["a.pt", "b.pt"], [CLASSES, other], None)
    assert str(err.value).startswith("b.pt: its class 1 is 'zebra', a.pt's is 'n00000001'")
    assert "ensemble" in str(err.value)


def test_a_report_on_another_store_does_not_replace_the_one_on_the_runs_own(store_and_run,
                                                                            tmp_path, capsys):
    """The default report name held no store: evaluating on a second store replaced the
    report on the run's own store."""
    store, run = store_and_run
    r2 = tmp_path / "R2"
    r2.mkdir()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    ckpt["config"] = {"data": {"store": str(store)}}
    torch.save(ckpt, r2 / "checkpoint.pt")
    other = shutil.copytree(store, tmp_path / "other")
    for data in (None, store, other):
        extra = ["--data", str(data)] if data is not None else []
        code = main(["evaluate", str(r2 / "checkpoint.pt"), "--split", "test", "--device", "cpu",
                     "--crops", "1", *extra])
        assert code == 0, capsys.readouterr().err
    own = json.loads((r2 / "checkpoint.test.1crop.per-class.json").read_text())
    theirs = json.loads((r2 / "checkpoint.other.test.1crop.per-class.json").read_text())
    assert own["data"] == str(store) and theirs["data"] == str(other)
    assert sorted(p.name for p in r2.glob("*.json")) == [
        "checkpoint.other.test.1crop.per-class.json", "checkpoint.test.1crop.per-class.json"]
