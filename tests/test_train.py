"""`alexnet train`: the paper net runs, learns, resumes exactly after a real kill, schedules
its lr on plateaus, stops on a non-finite loss, and refuses bad input in one line."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _stops import ctrl_c_at_step
from PIL import Image

from alexnet import checkpoint, paper
from alexnet.cli import main
from alexnet.config import resolve
from alexnet.data.store import open_split, write_store
from alexnet.errors import UserError
from alexnet.train import train
from alexnet.training import saving

CLASSES = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(4)]
TINY = ["model.width=0.125", "optim.batch_size=8", "run.progress=false", "run.device=cpu"]


def coloured_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose class is their dominant colour: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    images = rng.integers(0, 90, (n, size, size, 3), dtype=np.uint8)
    for c in range(3):
        images[labels == c, :, :, c] += 150
    return images, labels


def make_store(root: Path, size: int = 256, n_train: int = 48, n_val: int = 16) -> Path:
    images, labels = coloured_images(n_train, size, 0)
    train_split = write_store(root / "train", images, labels, CLASSES)
    images, labels = coloured_images(n_val, size, 1)
    write_store(root / "val", images, labels, CLASSES, stats=train_split.stats)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def finished_run(store, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs") / "done"
    return train(resolve("paper", TINY + ["optim.epochs=2"],
                         {"data.store": str(store), "run.out": str(out)}))


def alexnet_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m alexnet ARGS` in a subprocess (the real command)."""
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True,
                          text=True, timeout=300)


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit-identical model weights and momentum buffers."""
    ca, cb = checkpoint.load(a), checkpoint.load(b)
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for key, state in ca["optimizer"]["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, cb["optimizer"]["state"][key][name]), (key, name)
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])


def test_a_few_steps_of_the_full_size_paper_net(store, tmp_path):
    result = train(resolve("paper", ["run.progress=false", "run.device=cpu",
                                     "optim.batch_size=4", "run.max_steps=2",
                                     "data.val_split=none"],
                           {"data.store": str(store), "run.out": str(tmp_path / "run")}))
    assert result["steps"] == 2 and result["stopped"] == "max_steps"
    assert math.isfinite(result["train_loss"])
    ckpt = checkpoint.load(result["checkpoint"])
    n_params = sum(v.numel() for v in ckpt["model"].values())
    # the paper's 60,965,224 parameters, with a 4-class fc8 instead of 1000 classes
    assert n_params == paper.PARAMETERS - (paper.FC_WIDTH + 1) * (paper.NUM_CLASSES - 4)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 2)
    lrs = {g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert lrs == {paper.BASE_LR}


def test_run_folder_holds_log_csv_curves_config(finished_run):
    run = Path(finished_run["run_dir"])
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert 0 <= row["val_top1_error"] <= row["val_top5_error"] + 1  # both present
        assert row["images_per_s"] > 0 and row["lr"] == paper.BASE_LR
    csv_lines = (run / "log.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,steps,lr,train_loss") and len(csv_lines) == 3
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "config.json").read_text())
    assert config["optim"]["batch_size"] == 8 and config["model"]["width"] == 0.125
    ckpt = checkpoint.load(run / "checkpoint.pt")
    assert ckpt["config"] == config and ckpt["classes"] == CLASSES
    assert ckpt["metrics"] == rows and (ckpt["epoch"], ckpt["step"]) == (2, 0)
    train_split = open_split(ckpt["config"]["data"]["store"], "train")
    np.testing.assert_array_equal(ckpt["stats"]["mean_image"], train_split.stats["mean_image"])
    assert finished_run["best"] and Path(finished_run["best"]).exists()


def test_loss_falls_on_real_fashion_mnist(fashion_mnist_dir, tmp_path):
    """The full-size paper net on 320 real images, with the demo's documented initialisation
    (biases 0.1: with the paper's 1 it stays at chance far longer; docs/training.md)."""
    from alexnet.data.prepare import prepare

    for split, limit in (("train", 320), ("test", 100)):
        prepare(fashion_mnist_dir, tmp_path / "fm", limit=limit, splits=split,
                names="fashion-mnist")
    result = train(resolve("paper", ["model.init_bias=0.1", "optim.batch_size=32",
                                     "optim.epochs=2", "run.progress=false", "run.device=cpu",
                                     "run.save_best=false"],
                           {"data.store": str(tmp_path / "fm"), "run.out": str(tmp_path / "r")}))
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < min(losses[0], math.log(10)) - 0.05, losses
    assert result["val_top1_error"] < 0.8  # chance is 0.9


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


KILL_ARGS = TINY + ["optim.epochs=3"]


@pytest.fixture(scope="module")
def reference_run(store, tmp_path_factory) -> Path:
    """The uninterrupted run the interrupted ones must reproduce (a real subprocess)."""
    out = tmp_path_factory.mktemp("reference") / "ref"
    ref = alexnet_cli("train", "--data", str(store), *sets(KILL_ARGS), "--out", str(out))
    assert ref.returncode == 0, ref.stderr
    return out


def strip_timing(log: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(r).items() if k not in ("images_per_s",
                                                                 "epoch_seconds")}
            for r in log.read_text().splitlines()]


# `alexnet train` that holds at the start of its last step (epoch 3's sixth) until killed: a
# run that could end by itself had 4 s left after its first checkpoint, which a loaded
# machine could spend before the test's kill
HELD_AT_THE_LAST_STEP = """
import sys, time
import alexnet.training.loop as loop
from alexnet.cli import main

real_step, calls = loop.train_step, [0]

def step(*args):
    calls[0] += 1
    if calls[0] == 18:
        time.sleep(600)
    return real_step(*args)

loop.train_step = step
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_then_resume_gives_the_uninterrupted_weights(store, reference_run, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HELD_AT_THE_LAST_STEP, "train", "--data",
                             str(store), *sets(KILL_ARGS), "--out", str(tmp_path / "cut")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "cut" / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)  # a real kill, somewhere after the first checkpoint
    proc.communicate()
    cut = checkpoint.load(tmp_path / "cut")
    assert 1 <= cut["epoch"] < 3  # it did die before the end
    resumed = alexnet_cli("train", "--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference_run / "checkpoint.pt", tmp_path / "cut" / "checkpoint.pt")
    assert strip_timing(reference_run / "log.jsonl") == strip_timing(tmp_path / "cut" /
                                                                     "log.jsonl")


SIGNAL_IN_STEP = """
import sys, time
from pathlib import Path
import alexnet.training.loop as loop
from alexnet.cli import main

real_step, calls, mark = loop.train_step, [0], Path(sys.argv[1])

def step(*args):
    calls[0] += 1
    if calls[0] == 9:  # epoch 2's third step (6 per epoch): the test signals, then says it has
        mark.write_text("in step 9")
        t0 = time.monotonic()
        while not mark.with_name("sent").exists() and time.monotonic() - t0 < 120:
            time.sleep(0.01)
    return real_step(*args)

loop.train_step = step
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_after_the_step_and_resume_is_exact(signum, store, reference_run,
                                                                   tmp_path):
    """The real command, signalled in the middle of a step: it finishes that step, saves the
    position (no temporary left behind) and says how to continue; the resumed run ends with
    the uninterrupted run's weights and log. A scheduler's SIGTERM is handled as Ctrl-C."""
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_IN_STEP, str(tmp_path / "mark"),
                             "train", "--data", str(store), *sets(KILL_ARGS), "--out", str(cut)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "mark", proc)
    proc.send_signal(signum)
    (tmp_path / "sent").write_text("")
    out, err = proc.communicate(timeout=300)
    assert (checkpoint.load(cut)["epoch"], checkpoint.load(cut)["step"]) == (1, 3)
    assert not [p.name for p in cut.iterdir() if p.name.startswith(".tmp-")]
    if signum == signal.SIGINT:
        assert proc.returncode == 130 and "alexnet train: interrupted" in err, err
        assert "interrupted (Ctrl-C): finishing this step" in out
    else:  # Terminated: exit 143 from the CLI's handler, a traceback without it
        assert proc.returncode == 143 or "alexnet.errors.Terminated" in err, (proc.returncode,
                                                                             err)
        assert "terminated (SIGTERM): finishing this step" in out
    assert f"checkpoint saved at epoch 2, step 3: {cut / 'checkpoint.pt'}; continue with " \
        f"--resume {cut}" in out, out
    resumed = alexnet_cli("train", "--resume", str(cut / "checkpoint.pt"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference_run / "checkpoint.pt", cut / "checkpoint.pt")
    assert strip_timing(reference_run / "log.jsonl") == strip_timing(cut / "log.jsonl")


@pytest.fixture
def sigterm_raises():
    """SIGTERM raises here as the CLI's handler makes it (never the default: it would end
    pytest); restored after."""
    from alexnet.errors import Terminated

    def outside(signum, frame):
        raise Terminated("SIGTERM outside train's guard")

    previous = signal.signal(signal.SIGTERM, outside)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_the_guard_leaves_an_ignored_signal_ignored():
    """`alexnet train &` in a script starts with SIGINT ignored: the guard must not bring it
    back to life, for SIGINT nor SIGTERM."""
    from alexnet.training.loop import interrupt_guard

    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with interrupt_guard() as flag:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert not flag.hit
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_second_signal_of_either_kind_raises_at_once(sigterm_raises, capsys):
    from alexnet.errors import Terminated
    from alexnet.training.loop import interrupt_guard

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt), interrupt_guard() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert flag.hit and isinstance(flag.exception(), Terminated)
        os.kill(os.getpid(), signal.SIGINT)  # the second: at once, as the signal it is
        time.sleep(1)
    assert "terminated (SIGTERM): finishing this step (or stopping this validation)" in \
        capsys.readouterr().out
    with pytest.raises(Terminated) as info, interrupt_guard():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert str(info.value) == ""  # train's own, not the handler's it replaced
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before


def signal_in_validation(monkeypatch, signum: int, epoch: int) -> None:
    """Send `signum` to this process at the start of epoch `epoch`'s validation (1-based)."""
    from alexnet.training import procedure

    real, calls = procedure.validate_epoch, {"n": 0}

    def validate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(procedure, "validate_epoch", validate)


def test_a_signal_in_validation_stops_it_and_the_resumed_run_redoes_it(
        store, finished_run, tmp_path, monkeypatch, capsys, sigterm_raises):
    """A scheduler's SIGKILL follows its SIGTERM within seconds: the validation stops before
    its next batch, the epoch's training is saved (no step more, no row), and the resumed run
    validates that epoch and ends as the uninterrupted run, weights and log."""
    from alexnet.errors import Terminated

    run = tmp_path / "run"
    signal_in_validation(monkeypatch, signal.SIGTERM, epoch=1)
    with pytest.raises(Terminated) as info:
        train(resolve("paper", TINY + ["optim.epochs=2"],
                      {"data.store": str(store), "run.out": str(run)}))
    assert str(info.value) == ""
    out = capsys.readouterr().out
    assert "finishing this step (or stopping this validation) and saving a checkpoint" in out
    assert f"checkpoint saved at epoch 1, step 6, before its validation: " \
        f"{run / 'checkpoint.pt'}; continue with --resume {run}" in out, out
    ckpt = checkpoint.load(run)
    assert (ckpt["epoch"], ckpt["step"], ckpt["global_step"]) == (0, 6, 6)  # no step more
    assert ckpt["metrics"] == [] and "epoch 1/2" not in out
    monkeypatch.undo()
    train(resolve("paper", TINY + ["optim.epochs=2"],
                  {"data.store": str(store), "run.out": str(run), "run.resume": str(run)}))
    assert_same_weights(Path(finished_run["checkpoint"]), run / "checkpoint.pt")
    assert strip_timing(Path(finished_run["log"])) == strip_timing(run / "log.jsonl")


def test_a_ctrl_c_in_the_last_validation_is_not_dropped(store, tmp_path, monkeypatch, capsys):
    """It stops that validation (exit 130, so a script or ablate goes no further) and the
    resumed run completes it; a Ctrl-C while the last epoch is saved lets the run complete
    (its logs and checkpoint) and says there is nothing to continue."""
    run = tmp_path / "run"
    signal_in_validation(monkeypatch, signal.SIGINT, epoch=2)
    config = {"data.store": str(store), "run.out": str(run)}
    with pytest.raises(KeyboardInterrupt):
        train(resolve("paper", TINY + ["optim.epochs=2"], config))
    out = capsys.readouterr().out
    assert f"checkpoint saved at epoch 2, step 6, before its validation: {run / 'checkpoint.pt'}" \
        in out, out
    ckpt = checkpoint.load(run)
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["metrics"])) == (1, 6, 1)
    monkeypatch.undo()
    ctrl_c_in_the_last_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(resolve("paper", TINY + ["optim.epochs=2"], {**config, "run.resume": str(run)}))
    out = capsys.readouterr().out
    assert f"the run had completed: nothing to continue ({run})" in out and "continue with" \
        not in out
    ckpt = checkpoint.load(run)
    assert (ckpt["epoch"], ckpt["step"]) == (2, 0)
    assert strip_timing(run / "log.jsonl") == [
        {k: v for k, v in row.items() if k not in ("images_per_s", "epoch_seconds")}
        for row in ckpt["metrics"]] and len(ckpt["metrics"]) == 2
    monkeypatch.undo()
    again = train(resolve("paper", TINY + ["optim.epochs=2"], {**config, "run.resume": str(run)}))
    assert (again["stopped"], again["steps"]) == ("completed", 12)


def ctrl_c_in_the_last_save(monkeypatch) -> None:
    """A real SIGINT to this process as the run's next checkpoint is saved (the last epoch's,
    when resumed before its end)."""
    from alexnet.training import procedure

    real = procedure.save_checkpoints

    def save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(procedure, "save_checkpoints", save)


def test_a_kill_during_the_last_log_writes_is_repaired_by_resume(store, tmp_path, monkeypatch):
    """checkpoint.pt of the last epoch saved, then killed before log.jsonl, log.csv and
    curves.png were rewritten: the resumed run (nothing left to train) rewrites them."""
    from alexnet.training import procedure

    run = tmp_path / "run"
    real_write, calls = procedure.write_logs, {"n": 0}

    def killed_at_the_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return real_write(*args, **kwargs)

    monkeypatch.setattr(procedure, "write_logs", killed_at_the_second)
    config = {"data.store": str(store), "run.out": str(run)}
    with pytest.raises(Killed):
        train(resolve("paper", TINY + ["optim.epochs=2"], config))
    monkeypatch.undo()
    curves = (run / "curves.png").read_bytes()
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    result = train(resolve("paper", TINY + ["optim.epochs=2"], {**config, "run.resume": str(run)}))
    assert result["stopped"] == "completed"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows == checkpoint.load(run)["metrics"] and [r["epoch"] for r in rows] == [1, 2]
    assert len((run / "log.csv").read_text().splitlines()) == 3
    assert (run / "curves.png").read_bytes() != curves  # redrawn with epoch 2


def test_resume_logs_equal_the_checkpoints_around_partial_epochs(store, tmp_path, monkeypatch):
    """A step-limited run logs a partial epoch after its checkpoint: resumed further, the
    logs drop that row at once (the full epoch comes instead); resumed at its limit, the
    partial row is written again, once."""
    run = tmp_path / "run"
    config = {"data.store": str(store), "run.out": str(run)}
    train(resolve("paper", TINY + ["optim.epochs=2", "run.max_steps=9"], config))
    partial = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["partial"]) for r in partial] == [(1, False), (2, True)]
    train(resolve("paper", TINY + ["optim.epochs=2", "run.max_steps=9"],
                  {**config, "run.resume": str(run)}))
    again = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["partial"]) for r in again] == [(1, False), (2, True)]
    assert len((run / "log.csv").read_text().splitlines()) == 3
    import alexnet.training.loop as loop

    def killed(*args):
        raise Killed

    monkeypatch.setattr(loop, "train_step", killed)
    with pytest.raises(Killed):  # resumed further, killed in its first step
        train(resolve("paper", TINY + ["optim.epochs=2", "run.max_steps=12"],
                      {**config, "run.resume": str(run)}))
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows == checkpoint.load(run)["metrics"] and [r["epoch"] for r in rows] == [1]


def test_ablate_stopped_says_to_rerun_ablate(store, tmp_path, monkeypatch, capsys):
    """An interrupted ablate is continued by the same `alexnet ablate`, not by train --resume
    of its inner run (which would leave ablate's result and tables unwritten)."""
    from alexnet.experiments import ablate as ab

    ctrl_c_at_step(monkeypatch, 2)
    base = resolve("paper", TINY, {"data.store": str(store)})
    out = tmp_path / "abl"
    with pytest.raises(KeyboardInterrupt):
        ab.ablate(base, out, [], budget_steps=4, seeds=1, log=lambda *_: None)
    said = capsys.readouterr().out
    assert "continue with the same `alexnet ablate` command (it resumes this run)" in said
    assert "--resume" not in said
    monkeypatch.undo()
    result = ab.ablate(base, out, [], budget_steps=4, seeds=1, log=lambda *_: None)
    assert result["results"]["paper"][0]["steps"] == 4
    assert "resuming from" in capsys.readouterr().out


def test_plateau_schedule_drops_lr_by_ten_at_most_three_times(store, tmp_path):
    # validation error can never improve by a whole 100 points: every epoch is a plateau
    result = train(resolve("paper", TINY + ["optim.epochs=6", "optim.patience=0",
                                            "optim.threshold=1.0"],
                           {"data.store": str(store), "run.out": str(tmp_path / "run")}))
    rows = result["history"]
    lrs = [row["lr"] for row in rows]  # the lr each epoch trained with
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4, 1e-5, 1e-5], rel=1e-9)
    assert [row["lr_dropped"] for row in rows] == [False, True, True, True, False, False]
    ckpt = checkpoint.load(result["checkpoint"])
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([1e-5, 1e-5])


def test_no_drop_before_the_patience_runs_out(store, tmp_path):
    result = train(resolve("paper", TINY + ["optim.epochs=3", "optim.patience=5"],
                           {"data.store": str(store), "run.out": str(tmp_path / "run")}))
    assert [row["lr"] for row in result["history"]] == [1e-2] * 3


def diverged_run(store: Path, run: Path, monkeypatch, at_call: int, blow_up) -> str:
    """Train 3 epochs with `blow_up(net)` applied before step `at_call`; the one-line error."""
    import alexnet.training.loop as loop

    real_step, calls = loop.train_step, {"n": 0}

    def step(model, x, y, optimizer, rt):
        calls["n"] += 1
        if calls["n"] == at_call:
            with torch.no_grad():
                blow_up(model)
        return real_step(model, x, y, optimizer, rt)

    monkeypatch.setattr(loop, "train_step", step)
    with pytest.raises(UserError) as err:
        train(resolve("paper", TINY + ["optim.epochs=3"],
                      {"data.store": str(store), "run.out": str(run)}))
    assert "\n" not in str(err.value) and str(run / "checkpoint.pt") in str(err.value)
    return str(err.value)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path,
                                                                   monkeypatch):
    run = tmp_path / "run"
    message = diverged_run(store, run, monkeypatch, 8,  # inside epoch 2: weights blow up
                           lambda net: next(net.parameters()).fill_(float("inf")))
    assert "nan" in message.lower() and "epoch 2" in message
    ckpt = checkpoint.load(run)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_an_existing_run_is_never_overwritten(finished_run, store):
    before = Path(finished_run["checkpoint"]).read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(resolve("paper", TINY, {"data.store": str(store),
                                      "run.out": finished_run["run_dir"]}))
    assert Path(finished_run["checkpoint"]).read_bytes() == before


def _bad_inputs(store: Path, run: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    incomplete = tmp / "incomplete"
    make_store(incomplete, n_train=8, n_val=4)
    header = incomplete / "train" / "header.json"
    meta = json.loads(header.read_text())
    meta["complete"] = False
    header.write_text(json.dumps(meta))
    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    data = ["--data", str(store)]
    tiny = data + sets(TINY)
    return {
        "missing store": (["--data", str(tmp / "nowhere")], "no such store"),
        "store header given": (["--data", str(header)], "a file, not a store folder; give "
                               f"the store that holds it, {incomplete}"),
        "incomplete store": (["--data", str(incomplete)], "half-written"),
        "other architecture": (["--resume", str(run), "--set", "model.width=0.25"],
                               "another architecture"),
        "batch size 0": (data + ["--batch-size", "0"], "optim.batch_size 0"),
        "batch larger than the split": (data + ["--batch-size", "1000"],
                                        "larger than the training split"),
        "corrupt checkpoint": (["--resume", str(corrupt)], "truncated, corrupt or foreign"),
        "unknown config key": (data + ["--set", "optim.speed=11"], "unknown key optim.speed"),
        "flipped byte": (["--resume", str(flipped_byte(run, tmp))], "CRC"),
        "wrong-shape weights": (["--resume", str(wrong_shape(run, tmp))], "does not fit"),
        "random bytes": (["--resume", str(random_bytes(tmp))], "not a zip archive"),
        "out is a file": (tiny + ["--out", str(a_file(tmp))], "is a file, not a folder"),
        "out under /sys": (tiny + ["--out", "/sys/alexnet-run"], "cannot create files there"),
        "lr beyond float32": (tiny + ["--set", "optim.lr=1e308"], "float32"),
        "lr not a number": (tiny + ["--set", "optim.lr=inf"], "must be a finite number"),
        "crop too small for the net": (tiny + ["--set", "data.crop=40"], "at least 64"),
        "crop larger than the store": (["--data", str(small_store(tmp))], "data.crop=64"),
        "one class": (["--data", str(one_class_store(tmp))] + sets(TINY),
                      "a classifier needs at least 2"),
        "resume and init-from": (["--resume", str(run), "--init-from", str(run)],
                                 "--resume continues a run, --init-from starts a new one"),
        "resume on another class count": (["--resume", str(run), "--data",
                                           str(three_class_store(tmp))],
                                          "the checkpoint has 4 classes"),
        "resume a weights file": (["--resume", str(weights_file(run, tmp))],
                                  "a weights-only file (export) cannot be resumed; use "
                                  "--init-from"),
        "resume into another run": (["--resume", str(run), "--out", str(other_run(run, tmp))],
                                    "already holds another run"),
    }


def other_run(run: Path, tmp: Path) -> Path:
    """A folder holding another run (a copy of `run`'s checkpoint stands for it)."""
    other = tmp / "other_run"
    other.mkdir(exist_ok=True)
    (other / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    return other


def flipped_byte(run: Path, tmp: Path) -> Path:
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0x10
    (tmp / "flipped.pt").write_bytes(bytes(data))
    return tmp / "flipped.pt"


def wrong_shape(run: Path, tmp: Path) -> Path:
    ckpt = checkpoint.load(run)
    ckpt["model"]["fc7.weight"] = ckpt["model"]["fc7.weight"][:, :-1]
    return checkpoint.save(tmp / "wrong_shape.pt", ckpt)


def random_bytes(tmp: Path) -> Path:
    (tmp / "random.pt").write_bytes(np.random.default_rng(1).bytes(4000))
    return tmp / "random.pt"


def a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("not a folder")
    return tmp / "a_file"


def small_store(tmp: Path) -> Path:
    return make_store(tmp / "store64", size=64, n_train=8, n_val=4)


def one_class_store(tmp: Path) -> Path:
    images, _ = coloured_images(8, 256, 0)
    write_store(tmp / "store1" / "train", images, np.zeros(8, np.int64), CLASSES[:1])
    return tmp / "store1"


def three_class_store(tmp: Path) -> Path:
    images, labels = coloured_images(12, 256, 0)
    write_store(tmp / "store3" / "train", images, labels % 3, CLASSES[:3])
    return tmp / "store3"


def weights_file(run: Path, tmp: Path) -> Path:
    from alexnet.export import export

    return Path(export(run, "weights", tmp / "run.weights.pt", check=False)["path"])


def test_bad_input_is_one_line_and_exit_2(store, finished_run, tmp_path, capsys):
    run = Path(finished_run["run_dir"])
    for name, (args, fragment) in _bad_inputs(store, run, tmp_path).items():
        out = [] if "--out" in args else ["--out", str(tmp_path / name.replace(" ", "_"))]
        code = main(["train", *args, *out, "--no-progress", "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert err.count("\n") == 0 and err.startswith("alexnet train: error:"), (name, err)
        assert fragment in err, (name, err)
    proc = alexnet_cli("train", "--data", str(tmp_path / "nowhere"))  # the real command
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_tensorboard_absent_is_a_clear_error(store, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(UserError, match="tensorboard package is not installed"):
        train(resolve("paper", TINY + ["run.tensorboard=true"],
                      {"data.store": str(store), "run.out": str(tmp_path / "tb")}))
    assert not (tmp_path / "tb").exists()  # refused before the run folder is made



class Killed(BaseException):
    """Stands for kill -9: nothing in the program catches it."""


def test_resuming_a_run_at_its_step_limit_trains_no_step_more(store, tmp_path):
    """A kill after the step limit's checkpoint (during its partial-epoch validation), or a
    plain rerun, resumed: the weights stay those of the limit, not one step further."""
    run = tmp_path / "run"
    config = {"data.store": str(store), "run.out": str(run)}
    first = train(resolve("paper", TINY + ["optim.epochs=1", "run.max_steps=3"], config))
    saved = checkpoint.load(run / "checkpoint.pt")
    again = train(resolve("paper", TINY + ["optim.epochs=1", "run.max_steps=3"],
                          {**config, "run.resume": str(run)}))
    assert (again["steps"], again["stopped"]) == (first["steps"], "max_steps") == (3, "max_steps")
    ckpt = checkpoint.load(run / "checkpoint.pt")
    assert all(torch.equal(v, saved["model"][k]) for k, v in ckpt["model"].items())
    assert again["val_top1_error"] == first["val_top1_error"]


def test_a_kill_between_best_and_checkpoint_never_loses_best(store, tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = {"data.store": str(store), "run.out": str(run)}
    train(resolve("paper", TINY + ["optim.epochs=1", "run.max_steps=3"], config))  # mid-epoch
    (run / f".tmp-checkpoint.pt.{dead_pid()}").write_bytes(b"PK left by a kill -9")
    real_link, names = saving.link_atomic, []

    def killed_before_the_second_name(source, path):
        names.append((Path(source).name, Path(path).name))
        raise Killed  # the end of epoch 1 writes best.pt, then names it checkpoint.pt

    monkeypatch.setattr(saving, "link_atomic", killed_before_the_second_name)
    resumed = resolve("paper", TINY + ["optim.epochs=1"], {**config, "run.resume": str(run)})
    with pytest.raises(Killed):
        train(resumed)
    assert names == [("best.pt", "checkpoint.pt")]
    assert checkpoint.load(run)["step"] == 3  # checkpoint.pt still at the earlier position
    monkeypatch.setattr(saving, "link_atomic", real_link)
    result = train(resumed)
    assert result["best"] == str(run / "best.pt")
    best, last = checkpoint.load(run / "best.pt"), checkpoint.load(run)
    assert (best["epoch"], last["epoch"]) == (1, 1) and best["best_error"] == last["best_error"]
    for key in last["model"]:
        assert torch.equal(best["model"][key], last["model"][key]), key
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp-")]


def dead_pid() -> int:
    """The id of a process that has ended."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)


def test_a_huge_finite_loss_stops_and_keeps_the_last_good_files(store, tmp_path, monkeypatch):
    run = tmp_path / "run"
    message = diverged_run(store, run, monkeypatch, 12,  # epoch 2's last step: a huge loss
                           lambda net: net.fc8.weight.mul_(1e4))
    assert "diverged" in message and "epoch 2, step 6" in message and "nan" not in message
    for name in ("checkpoint.pt", "best.pt"):
        ckpt = checkpoint.load(run / name)
        assert (ckpt["epoch"], ckpt["step"]) == (1, 0), name
        assert max(float(v.abs().max()) for v in ckpt["model"].values()) < 100, name


def test_resuming_a_run_killed_before_its_first_checkpoint_starts_it_over(store, tmp_path,
                                                                           capsys):
    """A run killed while starting leaves its folder with config.json and no checkpoint (a
    requeued job then runs `--resume RUN`): that was refused with "a folder without a
    checkpoint.pt; give a checkpoint file or a run folder", naming the run folder. Nothing of
    it was trained, so it now starts over from its config.json: the very run it would have
    been, logs and weights."""
    flags = ["--data", str(store), "--epochs", "2", "--seed", "3", *sets(TINY)]
    assert main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    capsys.readouterr()
    assert main(["train", *flags, "--out", str(cut), "--print-config"]) == 0
    cut.mkdir()  # what the kill left: the run's config.json, as the run writes it
    (cut / "config.json").write_text(capsys.readouterr().out)
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{cut}: its run stopped before its first checkpoint, so it starts "
                          "over from its config.json\n"), out
    assert strip_timing(cut / "log.jsonl") == strip_timing(tmp_path / "whole" / "log.jsonl")
    assert_same_weights(tmp_path / "whole" / "checkpoint.pt", cut / "checkpoint.pt")
    (cut / "checkpoint.pt").unlink()  # a folder that is no run's is still refused as before
    (cut / "config.json").write_text("{}")
    assert main(["train", "--resume", str(cut)]) == 2
    assert "a folder without a checkpoint.pt" in capsys.readouterr().err


def test_a_new_lr_on_resume_is_used(store, tmp_path, capsys):
    run = tmp_path / "run"
    first = ["--data", str(store), "--out", str(run), "--epochs", "1", "--max-steps", "2",
             *sets(TINY)]
    assert main(["train", *first]) == 0
    assert main(["train", "--resume", str(run), "--lr", "0.5", "--max-steps", "3",
                 "--no-progress"]) == 0
    ckpt = checkpoint.load(run)
    assert ckpt["global_step"] == 3
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.5, 0.5]
    assert "lr 0.5 from now on" in capsys.readouterr().out


def test_an_lr_given_on_resume_is_used_even_where_the_run_started(store, tmp_path, capsys):
    """`--resume RUN --lr 0.01` after the schedule had divided the lr (0.01 -> 1e-5) went on at
    1e-5 without a word: the given lr was compared with the run's starting one."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(store), "--out", str(run), "--epochs", "1",
                 "--max-steps", "2", *sets(TINY)]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)  # as saved, to save again
    start = ckpt["config"]["optim"]["lr"]
    for group in ckpt["optimizer"]["param_groups"]:  # as after three drops of the schedule
        group["lr"] = start / 1000
    torch.save(ckpt, run / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--lr", f"{start:g}", "--max-steps", "3",
                 "--no-progress"]) == 0
    assert [g["lr"] for g in checkpoint.load(run)["optimizer"]["param_groups"]] == [start] * 2
    assert f"lr {start:g} from now on (the resumed run was at {start / 1000:g})" in \
        capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]) == 0
    assert "from now on" not in capsys.readouterr().out  # nothing given: the run's lr goes on


def test_other_crops_and_a_64_pixel_store_train(tmp_path):
    store64 = make_store(tmp_path / "s64", size=64, n_train=16, n_val=8)
    small = train(resolve("paper", TINY + ["optim.epochs=1", "data.crop=64"],
                          {"data.store": str(store64), "run.out": str(tmp_path / "r64")}))
    big = train(resolve("paper", TINY + ["optim.epochs=1", "data.crop=200", "run.max_steps=2"],
                        {"data.store": str(make_store(tmp_path / "s256", n_train=16, n_val=8)),
                         "run.out": str(tmp_path / "r200")}))
    for result, crop in ((small, 64), (big, 200)):
        assert math.isfinite(result["train_loss"]) and result["val_top1_error"] is not None
        model, ckpt = checkpoint.load_model(result["checkpoint"])
        assert model(torch.zeros(1, 3, crop, crop)).shape == (1, len(CLASSES))
        assert ckpt["config"]["data"]["crop"] == crop


FULL_DISK = """
import resource, signal, sys
from alexnet.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails instead
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # logs fit, checkpoints do not
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_and_loses_nothing(finished_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run["run_dir"], run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix == ".pt"}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, "train", "--resume", str(run),
                           "--epochs", "3", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "File too large" in proc.stderr and str(run / "checkpoint.pt") in proc.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.suffix == ".pt"} == before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp-")]


def test_a_run_folder_in_a_store_is_refused_before_any_work(tmp_path, capsys):
    store = make_store(tmp_path / "store", n_train=8, n_val=4)
    before = sorted(p for p in store.rglob("*"))
    for out in (store, store / "train", store / "train" / "run"):
        code = main(["train", "--data", str(store), *sets(TINY), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and "outside the store" in err, err
    assert sorted(p for p in store.rglob("*")) == before  # nothing written into the store


@pytest.mark.parametrize("name", ["log.jsonl", "log.csv", "steps.jsonl", "curves.png",
                                  "config.json", "best.pt"])
def test_a_folder_in_place_of_a_file_the_run_names_says_to_move_it(store, tmp_path, capsys,
                                                                    name):
    """log.jsonl (log.csv, curves.png, ...) a folder in the run folder: the run trained an
    epoch, then said "is a folder; give a file name" (steps.jsonl: "Is a directory"), advice
    for a name the user never chose. Now it is refused before any step, naming the folder."""
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    (run / name / "mine.txt").write_text("kept")
    code = main(["train", "--data", str(store), *sets(TINY), "--out", str(run),
                 "--set", "run.log_every=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith(f"alexnet train: error: {run / name}: a folder where the run writes "
                          "its "), err
    assert err.endswith("(a file); move that folder out of the run folder, or choose another "
                        "--out"), err
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == [name]  # no step
    assert (run / name / "mine.txt").read_text() == "kept"


def test_a_run_folder_whose_checkpoint_is_a_folder_names_it(store, finished_run, tmp_path,
                                                           capsys):
    """RUN/checkpoint.pt a folder: `--resume RUN` named RUN/checkpoint.pt/checkpoint.pt, a
    new run into RUN said it "already holds a run", and export called RUN/checkpoint.pt
    "no such checkpoint"."""
    run = tmp_path / "run"
    (run / "checkpoint.pt").mkdir(parents=True)
    (run / "config.json").write_bytes((Path(finished_run["run_dir"]) / "config.json")
                                      .read_bytes())
    inner = run / "checkpoint.pt"
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    for command, says in (
            (["train", "--resume", str(run)], f"{inner}: a folder, not a checkpoint file, so "
                                              f"{run} holds no checkpoint; give a checkpoint "
                                              "file or another run folder (or move that "
                                              "folder away)"),
            (["train", "--resume", str(inner)], f"{inner}: a folder without a checkpoint.pt "
                                                "(no such checkpoint)"),
            (["export", str(run)], f"{inner}: a folder, not a checkpoint file"),
            (["evaluate", str(run), "--data", str(store)],
             f"{inner}: a folder, not a checkpoint file"),  # was "without best.pt or ..."
            (["predict", str(run), str(image)], f"{inner}: a folder, not a checkpoint file"),
            (["train", "--data", str(store), *sets(TINY), "--out", str(run)],
             f"{inner}: a folder where the run writes its checkpoint (a file); move that "
             "folder out of the run folder")):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err, (command, err)
        assert "checkpoint.pt/checkpoint.pt" not in err and "already holds" not in err, err


def test_a_resumed_run_saves_the_statistics_it_trains_with(tmp_path):
    """A store re-prepared between a run's stop and its resume: the resumed run normalises
    with the checkpoint's statistics (those the net was trained with), so each checkpoint it
    saves must record those, not the store's new ones (which evaluate would then subtract)."""
    store, run = make_store(tmp_path / "store"), tmp_path / "run"
    config = {"data.store": str(store), "run.out": str(run)}
    train(resolve("paper", TINY + ["optim.epochs=1", "run.max_steps=2"], config))
    trained = checkpoint.load(run)["stats"]
    split = open_split(store, "train")
    images, labels = split.read(np.arange(len(split))), split.labels
    shifted = {**split.stats, "mean_image": split.stats["mean_image"] + 7.0}
    write_store(store / "train", images, labels, CLASSES, stats=shifted)
    train(resolve("paper", TINY + ["optim.epochs=1"], {**config, "run.resume": str(run)}))
    saved = checkpoint.load(run)
    assert (saved["epoch"], saved["step"]) == (1, 0)
    for name in ("checkpoint.pt", "best.pt"):
        stats = checkpoint.load(run / name)["stats"]
        np.testing.assert_array_equal(stats["mean_image"], trained["mean_image"], err_msg=name)
        np.testing.assert_array_equal(stats["eigvec"], trained["eigvec"], err_msg=name)
