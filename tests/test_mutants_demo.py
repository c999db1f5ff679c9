"""Mutation audit of `alexnet demo` (alexnet/demo.py): what the other tests left unchecked.
The printed figures (top-5 was never read back, the time was never read in minutes), the
hint for a missing Fashion-MNIST folder, the 5 s margin in the 10-crop time rule, the extra
centre pass when 10 crops cover the whole test split, a run folder holding only a
final.json (another run's, never to be overwritten) or a final.json without figures, the
default store's name (one per subset), what trained.json and final.json record, and the
training's time limit when the store took the whole budget (0 would mean no limit); and in
the chance check (alexnet/learning_check.py), evidence without any error and the advice's
way to turn the check off. Expectations come from docs/training.md, docs/data.md and
arithmetic done here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import alexnet.checkpoint
import alexnet.data.store
import alexnet.demo
import alexnet.evaluate
import alexnet.train
from alexnet.atomic import write_json
from alexnet.config import Config, resolve
from alexnet.demo import (
    FINAL,
    IDX_FILES,
    TRAINED,
    Earlier,
    Plan,
    _config_dict,
    _earlier_run,
    _report,
    _run_folder,
    _train,
    base_config,
    demo,
    evaluate_run,
    find_idx_folder,
)
from alexnet.errors import UserError
from alexnet.learning_check import Evidence, chance_advice


def _plan(budget_s: float = 780.0, train_images: int = 4000, test_images: int = 1000,
          batch_size: int = 64) -> Plan:
    """A CPU plan with the given budget and subset."""
    return Plan("cpu", train_images=train_images, test_images=test_images,
                batch_size=batch_size, epochs=4, budget_s=budget_s, why="test")


def _config(out: Path | None = None) -> Config:
    """The demo preset's config on the CPU, writing to `out` when given."""
    overrides = [f"run.out={out}"] if out is not None else []
    return resolve("demo", overrides, base=base_config("cpu"))


class _Clock:
    """A monotonic clock that moves only when the fake evaluation says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        """The current fake time in seconds."""
        return self.now


class _Split:
    """A test split of `size` images of ten classes."""

    classes = [str(i) for i in range(10)]

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _fake_evaluation(monkeypatch: pytest.MonkeyPatch, size: int,
                     seconds_per_thousand_crops: float) -> tuple[_Clock, list[tuple[int, int]]]:
    """Replace the checkpoint, the store and the evaluation: each pass takes
    `seconds_per_thousand_crops` per 1000 images per crop on the fake clock; the calls are
    recorded as (crops, images)."""
    clock = _Clock()
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(alexnet.demo, "time", clock)

    def fake_evaluate(model: Any, split: _Split, crops: int, indices: list[int] | None = None,
                      progress: str | None = None, **kwargs: Any) -> dict[str, Any]:
        images = len(split) if indices is None else len(indices)
        calls.append((crops, images))
        clock.now += seconds_per_thousand_crops * images / 1000 * crops
        return {"top1_error": 0.3, "top5_error": 0.05, "images": images}

    monkeypatch.setattr(alexnet.checkpoint, "load_model",
                        lambda path, device: (None, {"stats": None}))
    monkeypatch.setattr(alexnet.data.store, "open_split", lambda store, split: _Split(size))
    monkeypatch.setattr(alexnet.evaluate, "evaluate_model", fake_evaluate)
    return clock, calls


def test_the_report_prints_top1_top5_and_the_minutes(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Top-1 0.25 and top-5 0.01 are 25.00% and 1.00%, chance 0.9 is 90%, and 90 s are
    1.5 minutes (the report says 'min')."""
    final = {"test_top1_error": 0.25, "test_top5_error": 0.01, "chance_top1_error": 0.9,
             "test_images": 1000, "seconds": 90.0}
    _report(final, tmp_path, tmp_path / "store")
    out = capsys.readouterr().out
    assert "test top-1 error 25.00% (chance: 90%), top-5 1.00%, centre crop, 1000 test" in out
    assert "done in 1.5 min" in out


def test_a_missing_default_folder_says_how_to_install_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --data the hint is docs/data.md's `apt-get install dataset-fashion-mnist`; a
    --data folder that is missing is the user's own, so the hint is to give another."""
    monkeypatch.setattr(alexnet.demo, "FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        find_idx_folder(None)
    with pytest.raises(UserError) as err:
        find_idx_folder(tmp_path / "mine")
    assert "apt-get" not in str(err.value) and "four IDX files" in str(err.value)


def test_ten_crops_keep_five_seconds_of_the_budget(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """90 s spent before the evaluation, a 1 s centre pass over 1000 images, budget 100 s:
    the 10 crops may take min(100 - 91 - 5, 0.15 * 100) = 4 s, at 1000 / 10 = 100 images/s
    that is 400 images (without the 5 s margin it would be 900)."""
    _, calls = _fake_evaluation(monkeypatch, 1000, 1.0)
    final = evaluate_run(tmp_path, tmp_path, _config(), _plan(100.0), -90.0, None)
    assert final["ten_crop_images"] == 400
    assert calls == [(1, 1000), (10, 400), (1, 400)]


def test_ten_crops_on_the_whole_split_need_no_second_centre_pass(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With --ten-crop on all 20 test images the first centre pass already covers the same
    images: two passes (centre, 10 crops), and no 'centre crop on the same images' figures."""
    _, calls = _fake_evaluation(monkeypatch, 20, 1.0)
    final = evaluate_run(tmp_path, tmp_path, _config(), _plan(100.0), 0.0, True)
    assert calls == [(1, 20), (10, 20)] and final["ten_crop_images"] == 20
    assert "test_top1_error_centre_same_images" not in final


def test_a_folder_with_only_a_final_json_is_another_run(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """docs/training.md: 'A run folder holding a run of another config is never overwritten'.
    A folder holding a final.json but no checkpoint is not this demo's: the next free
    demo-2 is used, and an empty folder is this demo's to fill."""
    out = tmp_path / "demo"
    out.mkdir()
    write_json(out / FINAL, {"test_top1_error": 0.5})
    config = _config()
    assert _earlier_run(out, config, None) is None
    folder, earlier = _run_folder(out, config, None)
    assert folder == tmp_path / "demo-2" and earlier == Earlier()
    assert f"writing to {tmp_path / 'demo-2'}" in capsys.readouterr().out


def test_a_final_json_without_figures_is_evaluated_again(tmp_path: Path) -> None:
    """A final.json of this demo that holds no test error (not a finished evaluation) is not
    reused: the run is evaluated again from its checkpoint."""
    config = _config()
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    write_json(tmp_path / "config.json", _config_dict(config))
    write_json(tmp_path / FINAL, {"ten_crop": "skipped"})
    earlier = _earlier_run(tmp_path, config, None)
    assert earlier is not None and earlier.final is None
    assert earlier.checkpoint == tmp_path / "checkpoint.pt"


def test_training_gets_a_limit_even_when_the_store_took_the_whole_budget(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Preparing took twice the 60 s budget: training still gets a positive time limit below
    the budget (run.time_limit 0 means no limit at all: docs_claims' demo preset)."""
    seen: list[float] = []

    def fake_train(config: Config, **kwargs: Any) -> dict[str, Any]:
        seen.append(config.run.time_limit)
        return {"stopped": "time", "epochs": 1, "steps": 2, "train_loss": 1.0,
                "train_error": 0.5, "val_top1_error": 0.5}

    monkeypatch.setattr(alexnet.train, "train", fake_train)
    _train(_config(tmp_path), Earlier(), _plan(60.0), spent=120.0)
    assert len(seen) == 1 and 0 < seen[0] < 60.0


def test_trained_json_records_how_the_training_ended(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """trained.json ('how the training ended') holds the stop reason, epochs, steps, the
    training loss and error and the validation error that train returned, and nothing of
    the rest (the run folder)."""
    ended = {"stopped": "epochs", "epochs": 4, "steps": 248, "train_loss": 0.6,
             "train_error": 0.2, "val_top1_error": 0.23}

    monkeypatch.setattr(alexnet.train, "train",
                        lambda config, **kwargs: {**ended, "run_dir": str(tmp_path)})
    assert _train(_config(tmp_path), Earlier(), _plan(), spent=10.0) == ended
    assert json.loads((tmp_path / TRAINED).read_text()) == ended


def _idx_folder(tmp_path: Path) -> Path:
    """A folder holding (empty) files of the four IDX names."""
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in IDX_FILES:
        (folder / name).write_bytes(b"")
    return folder


def test_each_subset_has_its_own_store_beside_the_run_and_final_json_holds_the_plan(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two demos whose plans differ only in the test images must not share a store (one
    would hold the other's test subset); the store is kept beside the run folder
    (docs/training.md), and final.json records the training's end and the plan used."""
    trained = {"stopped": "epochs", "epochs": 1, "steps": 5, "train_loss": 2.0,
               "train_error": 0.8, "val_top1_error": 0.8}
    monkeypatch.setattr(alexnet.demo, "prepare_store", lambda source, store, plan: store)
    monkeypatch.setattr(alexnet.demo, "_train", lambda config, earlier, plan, spent: trained)
    monkeypatch.setattr(alexnet.demo, "evaluate_run", lambda *args: {
        "test_top1_error": 0.5, "test_top5_error": 0.1, "test_images": 20,
        "chance_top1_error": 0.9})
    source = _idx_folder(tmp_path)
    plans = (_plan(300.0, 40, 20, 8), _plan(300.0, 40, 10, 8))
    results = [demo(source, tmp_path / name, plan=plan, device="cpu")
               for name, plan in zip(("a", "b"), plans, strict=True)]
    stores = [Path(result["store"]) for result in results]
    assert stores[0] != stores[1] and all(store.parent == tmp_path for store in stores)
    final = json.loads((tmp_path / "a" / FINAL).read_text())
    assert final["train"] == trained
    assert (final["plan"]["train_images"], final["plan"]["test_images"],
            final["plan"]["batch_size"], final["plan"]["budget_s"]) == (40, 20, 8, 300.0)


def test_the_chance_advice_says_how_to_turn_the_check_off() -> None:
    """docs/training.md: 'once run.chance_steps optimizer steps have run (100; 0 turns the
    check off)': the warning names that setting with its value 0."""
    stuck = Evidence(step=200, num_classes=10, val_error=0.9)
    for init_bias in (1.0, 0.1):
        advice = chance_advice(stuck, init_bias=init_bias, lr=0.01)
        assert advice is not None and "run.chance_steps=0" in advice


def test_evidence_without_any_error_gives_no_advice() -> None:
    """An epoch that measured neither a validation nor a training error (both None) is no
    evidence of sitting at chance: no advice, and no error raised."""
    assert chance_advice(Evidence(step=500, num_classes=10), init_bias=1.0, lr=0.01) is None
