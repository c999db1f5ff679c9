"""Mutation audit of train()'s bookkeeping and the runtime's choices: the validation cadence,
the schedule's input, step/time limits, best.pt, the result dict and bf16/fp16/scaler choices
were unchecked at these edges; each is checked against the documented rule, worked by hand."""

from __future__ import annotations

import errno
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import alexnet.training.loop as loop
import alexnet.training.procedure as procedure
from alexnet import checkpoint
from alexnet.config import from_dict, resolve
from alexnet.data.store import write_store
from alexnet.distributed import DistInfo
from alexnet.errors import UserError
from alexnet.train import train
from alexnet.training import runtime
from alexnet.training.runtime import setup_runtime

CLASSES = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(4)]
N_TRAIN, BATCH = 24, 8  # 3 steps an epoch
TINY = ["model.width=0.125", f"optim.batch_size={BATCH}", "run.progress=false",
        "run.device=cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    labels = np.arange(N_TRAIN) % 4
    images = rng.integers(0, 255, (N_TRAIN, 256, 256, 3), dtype=np.uint8)
    split = write_store(root / "train", images, labels, CLASSES)
    write_store(root / "val", images[:8], labels[:8], CLASSES, stats=split.stats)
    return root


class Scripted:
    """A step that costs nothing (loss 1, every image right: train error stays 0%) and a
    clock that moves 1 s per step; validation returns the scripted top-1 errors in turn (top-5
    a constant 10%, which never improves) and records (epoch, step) of each call."""

    def __init__(self, monkeypatch, val_errors: list[float]) -> None:
        self.t, self.calls, self.errors = 1000.0, [], list(val_errors)

        def step(model, x, y, optimizer, rt):
            self.t += 1.0
            return torch.tensor(1.0), torch.tensor(0)

        def validate(s, val_store, config, rt, stats, flag=None):
            self.calls.append((s.epoch, s.step))
            e = self.errors.pop(0)
            return {"val_top1_error": e, "val_top5_error": 0.1}

        monkeypatch.setattr(loop, "train_step", step)
        monkeypatch.setattr(procedure, "validate_epoch", validate)
        # two different clocks: the deadline must be read on the clock the loop checks
        monkeypatch.setattr(loop, "time", types.SimpleNamespace(
            perf_counter=lambda: self.t + 5e5, monotonic=lambda: self.t))
        monkeypatch.setattr(procedure, "time", types.SimpleNamespace(
            perf_counter=lambda: self.t + 5e5, monotonic=lambda: self.t,
            time=lambda: self.t + 9e8))


def run(store: Path, out: Path, *overrides: str) -> dict:
    return train(resolve("paper", [*TINY, *overrides],
                         {"data.store": str(store), "run.out": str(out)}))


def test_validation_every_n_epochs_and_always_after_the_last(store, tmp_path, monkeypatch):
    """run.val_every=2 of 5 epochs validates after epochs 2 and 4 and, being the last,
    after epoch 5: the 0-based epochs 1, 3, 4, each at the epoch's end (before the count
    moves on); only those rows carry a validation error."""
    script = Scripted(monkeypatch, [0.6, 0.5, 0.4])
    result = run(store, tmp_path / "r", "optim.epochs=5", "run.val_every=2")
    assert script.calls == [(1, 3), (3, 3), (4, 3)]
    assert [r.get("val_top1_error") for r in result["history"]] == [None, 0.6, None, 0.5,
                                                                     0.4]


def test_the_schedule_steps_on_validation_error_not_training_error(store, tmp_path,
                                                                   monkeypatch):
    """The paper divides lr by 10 when the VALIDATION top-1 error stops improving, at most 3
    times. Training error (0%) and top-5 error (10%) never improve here; top-1 errors
    50 40 45 45 30 35 35 35 % with patience 1 and threshold 0 stall after epochs 3, 4, 6 (the
    third drop) and 7-8 (no drops left): by hand, the lr each epoch trains with is
    .01 .01 .01 .001 .0001 .0001 .00001 .00001."""
    Scripted(monkeypatch, [0.5, 0.4, 0.45, 0.45, 0.3, 0.35, 0.35, 0.35])
    result = run(store, tmp_path / "r", "optim.epochs=8", "optim.patience=1",
                 "optim.threshold=0")
    rows = result["history"]
    assert [r["lr"] for r in rows] == pytest.approx(
        [1e-2, 1e-2, 1e-2, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rel=1e-9)
    assert [r["lr_dropped"] for r in rows] == [False, False, True, True, False, True, False,
                                               False]
    assert result["lr"] == pytest.approx(1e-5, rel=1e-9)


def test_the_result_lr_is_the_one_a_continued_run_trains_with(store, tmp_path, monkeypatch):
    """Top-1 errors 50 then 60 % with patience 1: the lr is divided after the last epoch, so
    both epochs trained with 0.01 and the result (and optimizer) says 0.001."""
    Scripted(monkeypatch, [0.5, 0.6])
    result = run(store, tmp_path / "r", "optim.epochs=2", "optim.patience=1")
    assert [r["lr"] for r in result["history"]] == pytest.approx([1e-2, 1e-2], rel=1e-9)
    assert result["lr"] == pytest.approx(1e-3, rel=1e-9)


def test_best_pt_is_the_epoch_of_lowest_validation_error(store, tmp_path, monkeypatch):
    """best.pt holds the net after the epoch with the lowest validation top-1 error (the
    first of equals: a strict improvement): errors 50 30 40 30 20 25 20 30 % put it at the
    end of epoch 5, not 7; the result's best error is 20 %, its last 30 %."""
    Scripted(monkeypatch, [0.5, 0.3, 0.4, 0.3, 0.2, 0.25, 0.2, 0.3])
    result = run(store, tmp_path / "r", "optim.epochs=8", "optim.patience=9")
    best = checkpoint.load(result["best"])
    assert best["epoch"] == 5
    assert result["best_val_top1_error"] == 0.2
    assert result["val_top1_error"] == 0.3  # the last epoch's, not the best


def test_an_improving_epoch_writes_its_checkpoint_once_under_both_names(store, tmp_path,
                                                                         monkeypatch):
    """An improving epoch's best.pt and checkpoint.pt hold the same state: it is written
    once and checkpoint.pt made a hard link to it (two writes of it before: 2 x 456 MB for the
    paper net). Errors 50 30 40 %: epochs 1 and 2 improve, 3 does not, so 3 writes in all;
    the next save's rename leaves best.pt (epoch 2) as it was. Where the filesystem makes no
    hard links, both are written in full."""
    written = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda path, state, **kw: (
        written.append((Path(path).name, state["epoch"])), real_save(path, state, **kw))[1])
    Scripted(monkeypatch, [0.5, 0.3])
    two = tmp_path / "two"
    run(store, two, "optim.epochs=2", "optim.patience=9")
    assert written == [("best.pt", 1), ("best.pt", 2)]
    assert (two / "checkpoint.pt").samefile(two / "best.pt")
    assert not [p.name for p in two.iterdir() if p.name.startswith(".tmp-")]
    written.clear()
    Scripted(monkeypatch, [0.5, 0.3, 0.4])
    three = tmp_path / "three"
    run(store, three, "optim.epochs=3", "optim.patience=9")
    assert written == [("best.pt", 1), ("best.pt", 2), ("checkpoint.pt", 3)]
    assert not (three / "checkpoint.pt").samefile(three / "best.pt")
    assert (checkpoint.load(three / "best.pt")["epoch"],
            checkpoint.load(three / "checkpoint.pt")["epoch"]) == (2, 3)
    assert (three / "best.pt").stat().st_nlink == 1
    written.clear()

    def no_links(src, dst, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    Scripted(monkeypatch, [0.5, 0.3])
    plain = tmp_path / "plain"
    run(store, plain, "optim.epochs=2", "optim.patience=9")
    assert written == [("best.pt", 1), ("checkpoint.pt", 1), ("best.pt", 2),
                       ("checkpoint.pt", 2)]
    assert not (plain / "checkpoint.pt").samefile(plain / "best.pt")
    assert checkpoint.load(plain / "checkpoint.pt")["epoch"] == 2
    assert not [p.name for p in plain.iterdir() if p.name.startswith(".tmp-")]


def test_max_steps_counts_steps_over_the_whole_run(store, tmp_path, monkeypatch):
    """run.max_steps=5 with 3 steps an epoch stops 2 steps into epoch 2: one full epoch, a
    partial one (validated), and the result's epochs/step/steps say 1/2/5."""
    script = Scripted(monkeypatch, [0.5, 0.4])
    result = run(store, tmp_path / "r", "optim.epochs=4", "run.max_steps=5")
    assert (result["stopped"], result["epochs"], result["step"], result["steps"]) == \
        ("max_steps", 1, 2, 5)
    assert [r.get("partial", False) for r in result["history"]] == [False, True]
    assert script.calls == [(0, 3), (1, 2)]


def test_max_steps_at_an_epochs_end_ends_a_whole_epoch(store, tmp_path, monkeypatch):
    """run.max_steps=6, two whole epochs of 3 (of 4): the run ends as a whole epoch 2,
    validated at its end, scheduled and logged as whole (result: epochs 2, step 0), even with
    run.val_every=3, which would not validate epoch 2. It was logged as a partial epoch 2 at
    step 3 (epochs 1), its schedule not stepped (found by a mutation audit)."""
    script = Scripted(monkeypatch, [0.5])
    result = run(store, tmp_path / "r", "optim.epochs=4", "run.max_steps=6", "run.val_every=3")
    assert (result["stopped"], result["epochs"], result["step"], result["steps"]) == \
        ("max_steps", 2, 0, 6)
    assert [r.get("partial", False) for r in result["history"]] == [False, False]
    assert [r.get("val_top1_error") for r in result["history"]] == [None, 0.5]
    assert script.calls == [(1, 3)]


def test_a_step_limited_runs_cut_last_validation_is_redone_as_a_whole_epoch(
        store, tmp_path, monkeypatch):
    """run.max_steps=6 ends epoch 2 whole; a stop that cuts its validation (validate_epoch
    gives None) leaves the checkpoint at epoch 2's last step. The continued run takes no step
    and redoes that epoch's end: one whole row for epoch 2, validated, epochs 2, step 0."""
    script = Scripted(monkeypatch, [0.5, 0.4])
    real = procedure.validate_epoch
    cut = iter([False, True])

    def cut_once(*args, **kwargs):
        return real(*args, **kwargs) if next(cut, False) is False else None

    monkeypatch.setattr(procedure, "validate_epoch", cut_once)
    out = tmp_path / "r"
    first = run(store, out, "optim.epochs=4", "run.max_steps=6")
    assert (first["epochs"], first["step"], len(first["history"])) == (1, 3, 1)
    again = run(store, out, "optim.epochs=4", "run.max_steps=6", f"run.resume={out}")
    assert (again["stopped"], again["epochs"], again["step"], again["steps"]) == \
        ("max_steps", 2, 0, 6)
    assert [r.get("partial", False) for r in again["history"]] == [False, False]
    assert script.calls == [(0, 3), (1, 3)]


def test_a_time_limit_on_an_epochs_last_step_ends_a_whole_epoch(store, tmp_path, monkeypatch):
    """run.time_limit=3 with a clock moving 1 s a step: the limit falls on epoch 1's last
    step, so epoch 1 is whole (validated once, one row, not partial); a continued run starts
    epoch 2 instead of logging epoch 1 a second time."""
    script = Scripted(monkeypatch, [0.5, 0.4])
    out = tmp_path / "r"
    result = run(store, out, "optim.epochs=2", "run.time_limit=3")
    assert (result["stopped"], result["epochs"], result["step"], result["steps"]) == \
        ("time_limit", 1, 0, 3)
    assert [r.get("partial", False) for r in result["history"]] == [False]
    assert script.calls == [(0, 3)]
    again = run(store, out, "optim.epochs=2", f"run.resume={out}")
    assert (again["stopped"], again["epochs"], len(again["history"])) == ("completed", 2, 2)
    assert script.calls == [(0, 3), (1, 3)]


def test_steps_per_epoch_caps_each_epoch(store, tmp_path, monkeypatch):
    """run.steps_per_epoch=2 of 3 batches, 3 epochs: 6 steps in all, a completed run."""
    script = Scripted(monkeypatch, [0.5, 0.4, 0.3])
    result = run(store, tmp_path / "r", "optim.epochs=3", "run.steps_per_epoch=2")
    assert (result["stopped"], result["epochs"], result["step"], result["steps"]) == \
        ("completed", 3, 0, 6)
    assert script.calls == [(0, 2), (1, 2), (2, 2)]


def test_the_time_limit_is_seconds_of_training_on_the_monotonic_clock(store, tmp_path,
                                                                      monkeypatch):
    """With a clock that moves 1 s per step, run.time_limit=4 stops after the 4th step (1 into
    epoch 2): the deadline is set on the clock the loop compares it with."""
    Scripted(monkeypatch, [0.5, 0.4])
    result = run(store, tmp_path / "r", "optim.epochs=4", "run.time_limit=4")
    assert (result["stopped"], result["epochs"], result["step"], result["steps"]) == \
        ("time_limit", 1, 1, 4)


def test_a_signal_after_a_step_limited_runs_end_says_it_completed(tmp_path):
    """A Ctrl-C that comes once a run stopped by run.max_steps has validated its partial
    epoch finds nothing to continue (its epoch count is not reached, yet the run is done);
    one that cut a validation says where to continue."""
    config = from_dict({"optim": {"epochs": 4}, "run": {"max_steps": 5}})
    files = procedure.RunFiles(tmp_path)
    s = types.SimpleNamespace(epoch=1, step=2)
    line = procedure._stop_line(s, config, files, "max_steps", "--resume R", cut=False)
    assert line.startswith("the run had completed")
    line = procedure._stop_line(s, config, files, "max_steps", "--resume R", cut=True)
    assert "epoch 2, step 2, before its validation" in line and "--resume R" in line


def test_a_completed_run_reports_its_last_row(store, tmp_path, monkeypatch):
    """A completed 2-epoch run: stopped 'completed', epochs 2, step 0, steps 6, the last
    row's errors (training error 0%: every image right), two rows in the history."""
    Scripted(monkeypatch, [0.5, 0.4])
    result = run(store, tmp_path / "r", "optim.epochs=2")
    assert (result["stopped"], result["epochs"], result["step"], result["steps"]) == \
        ("completed", 2, 0, 6)
    assert (result["val_top1_error"], result["val_top5_error"], result["train_error"]) == \
        (0.4, 0.1, 0.0)
    assert result["train_loss"] == pytest.approx(1.0)
    assert len(result["history"]) == 2 and result["num_classes"] == 4


# ------------------------------------------------------------------------------- runtime


def runtime_for(device: str = "cpu", **run_options) -> runtime.Runtime:
    return setup_runtime(from_dict({"run": {"device": device, **run_options}}),
                         DistInfo(device=torch.device(device)))


@pytest.mark.parametrize(("amp", "dtype"), [("off", None), ("bf16", torch.bfloat16)])
def test_amp_maps_to_its_dtype_and_only_fp16_scales(amp, dtype, monkeypatch):
    """run.amp: off runs fp32, bf16 autocasts to bfloat16 and fp16 to float16; the loss is
    scaled (GradScaler enabled) for fp16 only (bf16 has fp32's range)."""
    made = []
    monkeypatch.setattr(runtime.torch.amp, "GradScaler",
                        lambda device, enabled: made.append((device, enabled)) or enabled)
    rt = runtime_for(amp=amp)
    assert rt.amp_dtype == dtype and made == [("cpu", False)]
    made.clear()
    rt = runtime_for("cuda", amp="fp16")
    assert rt.amp_dtype == torch.float16 and made == [("cuda", True)]
    made.clear()
    rt = runtime_for("cuda", amp="bf16")
    assert rt.amp_dtype == torch.bfloat16 and made == [("cuda", False)]


def test_autocast_is_bf16_on_the_runs_device_and_none_in_fp32():
    """rt.autocast(): bf16 computes a matmul in bfloat16 on the CPU; fp32 leaves it float32."""
    a = torch.ones(2, 2)
    with runtime_for(amp="bf16").autocast():
        assert (a @ a).dtype == torch.bfloat16
    with runtime_for(amp="off").autocast():
        assert (a @ a).dtype == torch.float32


def test_autocast_asks_for_the_chosen_dtype_on_cuda_too():
    """On CUDA torch.autocast's default is float16: bf16 must be asked for by name (the
    context's dtype is read, no GPU is touched)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast on a machine without CUDA disables itself
        context = runtime_for("cuda", amp="bf16").autocast()
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)


def test_cudnn_autotuning_is_on_for_cuda_only(monkeypatch):
    """A CUDA run lets cuDNN pick its fastest convolutions (fixed input shapes); a CPU run
    leaves the setting alone."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    runtime_for()
    assert torch.backends.cudnn.benchmark is False
    runtime_for("cuda")
    assert torch.backends.cudnn.benchmark is True


def test_memory_format_and_compile_flags_are_passed_on():
    """run.channels_last, run.compile and run.cuda_graph reach the Runtime as set."""
    rt = runtime_for(channels_last=True, compile=True)
    assert (rt.channels_last, rt.compile, rt.cuda_graph) == (True, True, False)
    rt = runtime_for()
    assert (rt.channels_last, rt.compile) == (False, False)
    assert runtime_for("cuda", cuda_graph=True).cuda_graph is True


@pytest.mark.parametrize(("run_options", "said"), [
    ({"amp": "fp16"}, "needs a CUDA device"),
    ({"cuda_graph": True}, "run.cuda_graph needs a CUDA device"),
    ({"amp": "fp8"}, "choose from"),
])
def test_cpu_refusals(run_options, said):
    """fp16 (loss scaling) and CUDA graphs need CUDA; an unknown amp names the choices."""
    with pytest.raises(UserError, match=said):
        runtime_for(**run_options)


@pytest.mark.parametrize("limit", ["run.time_limit=6", "run.max_steps=6"])
def test_a_limit_on_the_last_epochs_last_step_reports_a_completed_run(
        store, tmp_path, monkeypatch, limit):
    """A step or time limit that falls on the last step of the last epoch (2 epochs of 3
    steps, limit 6) cut nothing: the run reports 'completed', as one without the limit would,
    and so does a rerun with --resume. It said 'time_limit' or 'max_steps' though every
    epoch had run."""
    script = Scripted(monkeypatch, [0.5, 0.4])
    out = tmp_path / "r"
    result = run(store, out, "optim.epochs=2", limit)
    assert (result["stopped"], result["epochs"], result["step"], result["steps"]) == \
        ("completed", 2, 0, 6)
    assert script.calls == [(0, 3), (1, 3)]
    again = run(store, out, "optim.epochs=2", limit, f"run.resume={out}")
    assert (again["stopped"], again["epochs"], again["steps"]) == ("completed", 2, 6)
    assert script.calls == [(0, 3), (1, 3)]


def test_the_chance_advice_divides_the_starting_rate_not_the_schedules_current_one(
        capsys) -> None:
    """After three drops the epoch's rate is 1e-5; the advice is a new run's optim.lr, a
    tenth of the configured 0.01 (it named 1e-06, a tenth of the divided rate)."""
    config = resolve("paper", ["model.init_bias=0.1", "run.chance_steps=100"])
    s = types.SimpleNamespace(chance_said=False, global_step=300)
    row = {"val_top1_error": 0.9, "train_error": 0.9, "train_loss": 2.3, "lr": 1e-5}
    procedure._check_learning(s, row, config, 10)
    said = capsys.readouterr().out
    assert "--set optim.lr=0.001)" in said and s.chance_said
