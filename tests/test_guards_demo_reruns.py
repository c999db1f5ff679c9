"""Guards of `alexnet demo`'s reruns (alexnet/demo.py): a rerun with other image counts is
another run (never the old one's figures), the store's refusal names --store, a demo that
fails while preparing leaves no run folder, skipped 10 crops are said, a re-evaluation keeps
the training run's time and plan, a stop while preparing or evaluating says how to continue,
and a finished run reused under another --budget says so. Training and evaluation are
stand-ins on a fake clock (tests/test_demo.py runs the real ones)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_mutants_demo import _idx_folder  # empty files of the four IDX names

import alexnet.demo
from alexnet.atomic import write_json
from alexnet.cli import main
from alexnet.config import Config
from alexnet.demo import FINAL, IDX_FILES, TRAINED, Plan, _config_dict, demo, prepare_store
from alexnet.errors import Terminated, UserError

ENDED = {"stopped": "epochs", "epochs": 1, "steps": 5, "train_loss": 2.0, "train_error": 0.8,
         "val_top1_error": 0.8}


class _Clock:
    """A monotonic clock that moves only when the stand-ins say so."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        """The current fake time in seconds."""
        return self.now


def _plan(train_images: int = 40, test_images: int = 20, budget_s: float = 300.0) -> Plan:
    """A tiny CPU plan."""
    return Plan("cpu", train_images=train_images, test_images=test_images, batch_size=8,
                epochs=1, budget_s=budget_s, why="test")


def _stand_ins(monkeypatch: pytest.MonkeyPatch, eval_seconds: float = 5.0) -> _Clock:
    """No store; training writes a run's files and takes 100 s; the evaluation takes
    `eval_seconds`, with 10 crops only when asked."""
    clock = _Clock()
    monkeypatch.setattr(alexnet.demo, "time", clock)
    monkeypatch.setattr(alexnet.demo, "prepare_store", lambda source, store, plan: store)

    def train(config: Config, earlier: Any, plan: Plan, spent: float) -> dict[str, Any]:
        out = Path(config.run.out)
        write_json(out / "config.json", _config_dict(config))
        (out / "checkpoint.pt").write_bytes(b"")
        write_json(out / TRAINED, ENDED)
        clock.now += 100.0
        return ENDED

    def evaluate(out: Path, store: Path, config: Any, plan: Plan, t_start: float,
                 ten_crop: bool | None) -> dict[str, Any]:
        clock.now += eval_seconds
        final = {"test_top1_error": 0.5, "test_top5_error": 0.1, "test_images": 20,
                 "chance_top1_error": 0.9}
        if ten_crop:
            final.update(test_top1_error_10crop=0.4, test_top5_error_10crop=0.1,
                         ten_crop_images=20)
        else:
            final["ten_crop"] = "skipped: it would not fit the time budget"
        return final

    monkeypatch.setattr(alexnet.demo, "_train", train)
    monkeypatch.setattr(alexnet.demo, "evaluate_run", evaluate)
    return clock


def test_other_image_counts_on_the_same_store_are_another_run(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The image counts are in no config key: a rerun with other counts (same --store) must
    train into OUT-2, saying so, not reuse the first run's figures; the same counts again
    reuse it."""
    _stand_ins(monkeypatch)
    source, store, out = _idx_folder(tmp_path), tmp_path / "S", tmp_path / "d"
    first = demo(source, out, store, plan=_plan(40, 20), device="cpu")
    assert Path(first["run_dir"]) == out
    capsys.readouterr()
    other = demo(source, out, store, plan=_plan(60, 10), device="cpu")
    assert Path(other["run_dir"]) == tmp_path / "d-2"
    assert f"{out} already holds another run: writing to {tmp_path / 'd-2'}" in \
        capsys.readouterr().out
    assert json.loads((tmp_path / "d-2" / FINAL).read_text())["plan"]["train_images"] == 60
    again = demo(source, out, store, plan=_plan(40, 20), device="cpu")
    assert Path(again["run_dir"]) == out
    assert "finished run: reusing it" in capsys.readouterr().out


def test_a_finished_run_reused_under_another_budget_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--budget does not make another run (by design), but reusing a run trained for 5
    minutes when 10 were asked is said, with how to train for 10."""
    _stand_ins(monkeypatch)
    source, out = _idx_folder(tmp_path), tmp_path / "d"
    demo(source, out, tmp_path / "S", plan=_plan(budget_s=300.0), device="cpu")
    capsys.readouterr()
    again = demo(source, out, tmp_path / "S", plan=_plan(budget_s=600.0), device="cpu")
    assert Path(again["run_dir"]) == out
    printed = capsys.readouterr().out
    assert "finished run: reusing it" in printed
    assert f"{out} was trained with --budget 5; give another --out to train for 10" in printed


def test_a_re_evaluation_keeps_the_training_runs_time_and_plan(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A finished run evaluated again with --ten-crop under another budget: final.json keeps
    the training run's 105 s (100 training + 5 evaluating) and its plan, records the new
    evaluation's own 7 s, and the printout says what each took."""
    clock = _stand_ins(monkeypatch)
    source, out = _idx_folder(tmp_path), tmp_path / "d"
    demo(source, out, tmp_path / "S", plan=_plan(budget_s=300.0), device="cpu")
    assert json.loads((out / FINAL).read_text())["seconds"] == 105.0
    capsys.readouterr()
    monkeypatch.setattr(alexnet.demo, "_train", lambda *args: pytest.fail("trained again"))
    evaluate = alexnet.demo.evaluate_run

    def slower(*args: Any) -> dict[str, Any]:
        clock.now += 2.0
        return evaluate(*args)

    monkeypatch.setattr(alexnet.demo, "evaluate_run", slower)
    demo(source, out, tmp_path / "S", plan=_plan(budget_s=600.0), device="cpu", ten_crop=True)
    final = json.loads((out / FINAL).read_text())
    assert final["test_top1_error_10crop"] == 0.4
    assert final["seconds"] == 105.0 and final["plan"]["budget_s"] == 300.0
    assert final["evaluation_seconds"] == 7.0 and final["train"] == ENDED
    printed = capsys.readouterr().out
    assert "evaluated in 7 s; the training run took 1.8 min" in printed
    assert "done in" not in printed


def test_skipped_ten_crops_are_said_with_how_to_get_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """final.json says the 10 crops were skipped: so must the printout, with --ten-crop."""
    _stand_ins(monkeypatch)
    demo(_idx_folder(tmp_path), tmp_path / "d", tmp_path / "S", plan=_plan(), device="cpu")
    lines = [line for line in capsys.readouterr().out.splitlines() if "10 crops" in line]
    assert len(lines) == 1
    assert "skipped: it would not fit the time budget" in lines[0] and "--ten-crop" in lines[0]


@pytest.mark.parametrize("stop, status, said", [
    (KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated (SIGTERM)")])
@pytest.mark.parametrize("stage", ["prepare", "evaluate"])
def test_a_stop_while_preparing_or_evaluating_says_to_rerun(
        stop: type[BaseException], status: int, said: str, stage: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C (130) or SIGTERM (143) while the store is prepared or the net evaluated: one
    line saying where it stopped and that the same demo command continues."""
    _stand_ins(monkeypatch)

    def stopped(*args: Any) -> None:
        raise stop

    monkeypatch.setattr(alexnet.demo, "prepare_store" if stage == "prepare" else "evaluate_run",
                        stopped)
    assert main(["demo", "--data", str(_idx_folder(tmp_path)), "--out", str(tmp_path / "d"),
                 "--store", str(tmp_path / "S"), "--device", "cpu", "--train-images", "40",
                 "--batch-size", "8"]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"alexnet demo: {said} "), err
    assert "continue with the same `alexnet demo` command" in err
    assert ("preparing the store" if stage == "prepare" else "final evaluation") in err


def test_a_demo_that_fails_while_preparing_leaves_no_run_folder(
        fashion_mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An empty train-labels file: a one-line error, and no empty run folder left."""
    data = tmp_path / "bad"
    data.mkdir()
    for name in IDX_FILES:
        if name == "train-labels-idx1-ubyte":
            (data / name).write_bytes(b"")
        else:
            (data / f"{name}.gz").symlink_to(fashion_mnist_dir / f"{name}.gz")
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "d"), "--store",
                 str(tmp_path / "S"), "--device", "cpu", "--train-images", "40",
                 "--batch-size", "8"]) == 2
    assert "train-labels-idx1-ubyte" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_stores_refusal_names_store(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    """A --store prepared for other image counts is refused naming --store (the demo has no
    OUT)."""
    store = tmp_path / "S"
    prepare_store(fashion_mnist_dir, store, _plan(20, 10))
    with pytest.raises(UserError) as err:
        prepare_store(fashion_mnist_dir, store, _plan(30, 10))
    message = str(err.value)
    assert "already holds a store" in message and message.endswith("choose another --store")
    assert "OUT" not in message
