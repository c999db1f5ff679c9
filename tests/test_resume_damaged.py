"""`alexnet train --resume` of a checkpoint that lacks part of a training state, or holds it in
another form (written by another tool or version, a weights-only file, a damaged one): one
line naming the file, the key and what to do, before anything is built, and the run folder
left as it was; never a KeyError or TypeError traceback from the middle of the restore."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _stops import tree
from test_train import make_store  # 64-pixel images: a fast store

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import resolve
from alexnet.train import train

TINY = ["model.width=0.125", "optim.batch_size=8", "run.progress=false", "run.device=cpu",
        "data.crop=64", "optim.epochs=2", "run.max_steps=3"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run stopped at its step limit (3 steps: mid-epoch 2), to be continued."""
    root = tmp_path_factory.mktemp("damaged")
    store = make_store(root / "store", size=64, n_train=16, n_val=8)
    train(resolve("paper", TINY, {"data.store": str(store), "run.out": str(root / "run")}))
    return root / "run"


@pytest.fixture(scope="module")
def state(finished) -> dict[str, Any]:
    return checkpoint.load(finished)


def without(key: str) -> Any:
    return lambda s: s.pop(key)


def setting(key: str, value: Any) -> Any:
    return lambda s: s.__setitem__(key, value)


def rng_with(**entries: Any) -> Any:
    return lambda s: s.__setitem__("rng", {**s["rng"], **entries})


def lr_a_str(s: dict[str, Any]) -> None:
    groups = [{**g, "lr": "x"} for g in s["optimizer"]["param_groups"]]
    s["optimizer"] = {**s["optimizer"], "param_groups": groups}


FROM_WEIGHTS = "start a new run from its weights with --init-from"
ANOTHER = "resume from another checkpoint of the run, or start a new run"
DAMAGED = {  # name -> (change to a good checkpoint, what the one line says, its advice)
    "no rng": (without("rng"), "its 'rng' (the generators' states) is missing", FROM_WEIGHTS),
    "rng a str": (setting("rng", "x"), "its 'rng' is a str, not a table of generator states",
                  FROM_WEIGHTS),
    "rng without python": (lambda s: s["rng"].pop("python"),
                           "its 'rng' lacks the entry 'python'", FROM_WEIGHTS),
    "rng torch too short": (rng_with(torch=torch.zeros(3, dtype=torch.uint8)),
                            "its 'rng' holds a generator state that does not fit", FROM_WEIGHTS),
    "rank_rng a str": (setting("rank_rng", "x"), "its 'rank_rng' is a str, not a list",
                       FROM_WEIGHTS),
    "rank_rng of empty tables": (setting("rank_rng", [{}, {}]),
                                 "its 'rank_rng' lacks the entry 'torch'", FROM_WEIGHTS),
    "no epoch": (without("epoch"), "its 'epoch' is missing", FROM_WEIGHTS),
    "epoch a str": (setting("epoch", "one"), "its 'epoch' is a str, not an epoch count",
                    FROM_WEIGHTS),
    "epoch negative": (setting("epoch", -3), "its 'epoch' is -3, not an epoch count",
                       FROM_WEIGHTS),
    "no step": (without("step"), "its 'step' is missing", FROM_WEIGHTS),
    "step None": (setting("step", None), "its 'step' is None, not a step count", FROM_WEIGHTS),
    "step a float": (setting("step", 1.5), "its 'step' is 1.5, not a step count", FROM_WEIGHTS),
    "global_step a str": (setting("global_step", "x"), "its 'global_step' is a str",
                          FROM_WEIGHTS),
    "no schedule": (without("schedule"), "its 'schedule' is missing", FROM_WEIGHTS),
    "schedule a str": (setting("schedule", "x"), "its 'schedule' is a str", FROM_WEIGHTS),
    "optimizer a str": (setting("optimizer", "x"), "its 'optimizer' is a str", FROM_WEIGHTS),
    "optimizer lr a str": (lr_a_str, "its 'optimizer' is a dict, not the optimizer's state",
                           FROM_WEIGHTS),
    "no config": (without("config"), "its 'config' is missing", FROM_WEIGHTS),
    "acc a list": (setting("acc", [1, 2]), "its 'acc' is a list, not a table", FROM_WEIGHTS),
    "rank_acc a str": (setting("rank_acc", "x"), "its 'rank_acc' is a str", FROM_WEIGHTS),
    "world_size a str": (setting("world_size", "x"), "its 'world_size' is a str",
                         FROM_WEIGHTS),
    "best_error a str": (setting("best_error", "x"), "its 'best_error' is a str",
                         FROM_WEIGHTS),
    "metrics of numbers": (setting("metrics", [1, 2]), "its 'metrics' is a list, not a list "
                           "of the log's rows", FROM_WEIGHTS),
    "scaler a str": (setting("scaler", "x"), "its 'scaler' is a str", FROM_WEIGHTS),
    "no model": (without("model"), "its 'model' is missing", ANOTHER),
    "model a str": (setting("model", "x"), "its 'model' is a str", ANOTHER),
    "model_args a str": (setting("model_args", "x"), "its 'model_args' is a str", ANOTHER),
    "arch a number": (setting("arch", 3), "its 'arch' is 3, not an architecture name",
                      ANOTHER),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_or_foreign_checkpoint_is_one_line_naming_the_key(name, finished, state,
                                                                    tmp_path, capsys):
    change, says, advice = DAMAGED[name]
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    damaged = {**state, "rng": dict(state["rng"])}
    change(damaged)
    checkpoint.save(run / "checkpoint.pt", damaged)
    before = tree(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"alexnet train: error: {run / 'checkpoint.pt'}: not a training checkpoint that can be "
        "resumed: "), err
    assert says in err and err.rstrip().endswith(advice if advice is ANOTHER else
                                                 f"{advice} {run / 'checkpoint.pt'}"), err
    assert tree(run) == before


def test_schedule_counters_of_another_form_are_one_line(finished, state, tmp_path, capsys):
    """float(None) in PlateauSchedule.load_state_dict was a TypeError traceback."""
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    checkpoint.save(run / "checkpoint.pt", {**state, "schedule": {"best": None, "bad_epochs": 0,
                                                                  "drops": 0}})
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'checkpoint.pt'}: its state does not fit this " \
        "network (float() argument must be" in err, err


def test_a_weights_only_file_is_refused_with_init_from(finished, state, tmp_path, capsys):
    path = tmp_path / "net.weights.pt"
    checkpoint.save(path, {k: v for k, v in state.items() if k not in ("optimizer", "rng")}
                    | {"weights_only": True})
    assert main(["train", "--resume", str(path), "--out", str(tmp_path / "new"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"alexnet train: error: {path}: a weights-only file (export) cannot be "
                   f"resumed; use --init-from {path} to start a new run from its weights\n")
    assert not (tmp_path / "new").exists()


def test_statistics_of_another_form_are_refused_where_the_file_is_read(finished, tmp_path,
                                                                       capsys):
    """checkpoint.load turned the statistics back to arrays with `.items()`: an entry that is
    no table was an AttributeError in every command that reads a checkpoint."""
    path = tmp_path / "c.pt"
    torch.save({**torch.load(finished / "checkpoint.pt", weights_only=True), "stats": "x"}, path)
    for command in (["train", "--resume", str(path), "--out", str(tmp_path / "new")],
                    ["evaluate", str(path), "--device", "cpu"]):
        assert main([*command]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}: its 'stats' (the normalisation statistics) " \
            "is a str, not a table" in err, err


def test_every_checkpoint_a_run_writes_is_resumable(finished, state):
    """What `alexnet train` writes passes (best.pt too), and the check leaves the generators
    as they were (it tries the saved states on them)."""
    from alexnet.training.state import check_resumable

    before = checkpoint.rng_state()
    check_resumable(state, finished / "checkpoint.pt")
    check_resumable(checkpoint.load(finished / "best.pt"), finished / "best.pt")
    after = checkpoint.rng_state()
    assert torch.equal(before["torch"], after["torch"])
    assert torch.equal(before["numpy"]["keys"], after["numpy"]["keys"])
    assert before["python"] == after["python"]


@pytest.mark.parametrize("lacks, says", [
    (("mean_image",), "lack mean_image, which its data.mean = 'image' subtracts from every "
                      "input (damaged, or written by another tool); use another checkpoint of "
                      "the run"),
    (("eigval", "eigvec"), "lack eigval, eigvec, which data.pca (the PCA colour shifts) needs "
                           "(damaged, or written by another tool); resume from another "
                           "checkpoint of the run, or start a new run from its weights with "
                           "--init-from"),
])
def test_statistics_lacking_a_field_are_refused_naming_the_checkpoint(finished, state, tmp_path,
                                                                      capsys, lacks, says):
    """The statistics came from the checkpoint, yet the loader said "statistics lack
    mean_image; prepare the store again" (predict: a KeyError traceback); resumed, a table
    without the PCA's eigenvectors said the same of the store. Now the file is named."""
    from PIL import Image

    run = Path(shutil.copytree(finished, tmp_path / "run"))
    path = run / "checkpoint.pt"
    checkpoint.save(path, {**state, "stats": {k: v for k, v in state["stats"].items()
                                              if k not in lacks}})
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    before = tree(run)
    commands = [["train", "--resume", str(run), "--no-progress"]]
    if "mean_image" in lacks:  # evaluate and predict need no PCA
        commands += [["evaluate", str(path), "--device", "cpu"],
                     ["predict", str(path), str(image), "--device", "cpu"]]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}: its 'stats' " in err and says in err, err
        assert "prepare the store" not in err
    assert tree(run) == before
