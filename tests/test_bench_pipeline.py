"""`alexnet bench pipeline` end to end on a tiny plan: the stores it writes and its figures."""

from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.bench import pipeline
from alexnet.data import decode


def test_twin_stores_hold_the_same_images_repeated(tmp_path: Path) -> None:
    images = pipeline.photo_like(3, seed=1)
    stores = pipeline.write_twin_stores(tmp_path, images, repeats=2, classes=2,
                                        low_quality=True)
    raw, jpeg, low = stores["raw"], stores["jpeg"], stores[f"jpeg{pipeline.LOW_QUALITY}"]
    assert len(raw) == len(jpeg) == len(low) == 6 and jpeg.format == low.format == "jpeg"
    assert (jpeg.meta["jpeg_quality"], low.meta["jpeg_quality"]) == (90, pipeline.LOW_QUALITY)
    np.testing.assert_array_equal(low.labels, raw.labels)
    assert sum(map(len, low.encoded(range(3)))) < sum(map(len, jpeg.encoded(range(3))))
    np.testing.assert_array_equal(raw.read(range(6)), np.concatenate([images, images]))
    np.testing.assert_array_equal(raw.labels, jpeg.labels)
    assert np.abs(jpeg.read(range(6)).astype(int) - raw.read(range(6))).mean() < 6  # quality 90
    np.testing.assert_allclose(raw.stats["mean_image"], images.mean(0), atol=1e-4)


def test_the_run_reports_every_figure(tmp_path: Path, capsys) -> None:
    plan = {"distinct": 4, "batch": 2, "steps": 1, "warmup": 1, "loader_steps": 2, "rounds": 1}
    r = pipeline.run_pipeline(torch.device("cpu"), plan, tmp_path, classes=4, width=0.125)
    rates = [r["model_only"], r["raw_training"], r["jpeg_training"], r["raw_training_moved"],
             r["jpeg_training_moved"],
             *r["raw_loader"].values(), *r["jpeg_loader"].values(),
             *r["jpeg_loader_threads"].values(), r["jpeg_loader_shared_pool"],
             *r["from_disk"].values()]
    assert set(r["from_disk"]) == {"raw", "jpeg"}  # Linux has posix_fadvise
    rates += [v for by_threads in r["cpu_decode"].values() for v in by_threads.values()]
    assert all(np.isfinite(v) and v > 0 for v in rates)
    assert list(r["cpu_decode"]) == decode.available_cpu_decoders()
    assert r["reading"]["jpeg"]["decoder"] == decode.resolve_cpu_decoder("auto")
    assert "gpu_decode" not in r and list(r["jpeg_loader"]) == [0.0]  # no GPU here
    assert "gpu_choice" not in r
    pipeline.print_figures(r)
    out = capsys.readouterr().out
    assert "model only" in out and "jpeg store: training" in out and "x model" in out
    assert "raw store: training, augmented by the consumer" in out  # the CPU default moved
    assert "jpeg loader only, CPU decode" in out and "threads shared by" in out
    low = r["low_quality"]
    assert low["quality"] == pipeline.LOW_QUALITY and low["jpeg_kb_mean"] < r["jpeg_kb_mean"]
    assert all(np.isfinite(v) and v > 0 for v in
               [low["jpeg_loader"], low["jpeg_training"],
                *(v for rates in low["cpu_decode"].values() for v in rates.values())])
    levels = r["levels_from_raw"]
    assert 0 < levels[90]["mean"] < levels[pipeline.LOW_QUALITY]["mean"]  # coarser: further
    assert "JPEG quality 90 against 75" in out and f"jpeg q{pipeline.LOW_QUALITY} store" in out
    assert "other_gpu_decoders" not in r  # one GPU decoder at most here
    # the GPU decoders' lines as a CUDA run prints them (its figures stood in for)
    figures = {"images_per_s": 1000.0, "diff_mean": 1.5, "diff_max": 60}
    r["gpu_decode"] = low["gpu_decode"] = {"batch": 2, "default": "nvimgcodec",
                                           **dict.fromkeys(decode.GPU_DECODERS, figures)}
    r["other_gpu_decoders"] = {"torchvision": {"jpeg_loader": 3.0, "jpeg_training": 2.0,
                                               "share": 0.25}}
    r["gpu_choice"] = {"share": 0.0, "decoder": "torchvision",
                       "alone": {"nvimgcodec": 900.0, "torchvision": 1500.0},
                       "splits": [[None, 0.0, 1800.0], ["nvimgcodec", 0.35, 1300.0],
                                  ["torchvision", 0.45, 1700.0]],
                       "failed": {"other": "RuntimeError: stood in"}}
    assert "graphed" not in r and "raw_training_depth" not in r  # CUDA only
    r["raw_training_depth"] = {4: 5.0, 8: {"error": "RuntimeError: stood in for"}}
    r["jpeg_training_gpu_all"] = {4: 4.5, 16: 4.0}
    r["graphed"] = {"model_only": 8.0, "raw_training": 6.0, "jpeg_training": 4.0}
    pipeline.print_figures(r)
    out = capsys.readouterr().out
    lines = {}  # row name -> the columns after it (names and columns are 2+ spaces apart)
    for line in out.splitlines():
        name, *columns = re.split(r"\s{2,}", line.strip())
        lines[name] = " ".join(columns).split()
    assert lines["raw store: training, depth 4"][0] == "5"
    assert lines["raw store: training, depth 8"] == ["failed:", "RuntimeError:", "stood", "in",
                                                     "for"]
    assert "jpeg store: training, all decoded on the GPU, depth 16" in lines
    # each graphed row against the graphed model alone
    assert lines["raw store: training, CUDA graph step"] == ["6", "0.75"]
    assert lines["model only, CUDA graph step"] == ["8", "1.00"]
    assert "GPU decode alone (nvimgcodec (the default), batches of 2): 1000 img/s" in out
    assert "GPU decode alone (torchvision, batches of 2)" in out
    assert "jpeg store: training, GPU decoder torchvision (its share 0.25)" in lines
    assert ("img/s:\n    CPU alone: 1800; nvimgcodec 0.35: 1300; torchvision 0.45: 1700\n"
            "    GPU decoders alone: nvimgcodec 900, torchvision 1500; chosen: share 0.00, GPU "
            "decoder torchvision\n    other failed while timed, left out: RuntimeError: stood "
            "in\n") in out
    assert "torchvision GPU decode, img/s" in out
    r["gpu_decode"] = {**r["gpu_decode"], "torchvision": {"error": "UserError: stood in"}}
    pipeline.print_figures(r)
    out = capsys.readouterr().out
    assert "GPU decode alone (torchvision, batches of 2): failed: UserError: stood in" in out


def test_the_loaders_timed_splits_are_its_own(monkeypatch) -> None:
    """gpu_choice_figures gives the splits the jpeg loader timed for its own store and
    setting (gpu_choice's cache, the key its Reading resolved), as JSON can hold them."""
    from alexnet.data import loader as loader_module

    asked = []
    choice = loader_module.GpuChoice(0.5, "torchvision", {(None, 0.0): 2.0,
                                                          ("torchvision", 0.5): 3.0},
                                     {"torchvision": 4.0})
    monkeypatch.setattr(loader_module, "gpu_choice", lambda *args: asked.append(args) or choice)
    how = loader_module.Reading(16, "simplejpeg", 1, 0.5, False, "torchvision")
    loader = types.SimpleNamespace(store="STORE", device=torch.device("cpu"), reading=how,
                                   batch_size=256)
    figures = pipeline.gpu_choice_figures(loader)
    assert asked == [("STORE", torch.device("cpu"), "simplejpeg", 16, 1, 256)]
    assert figures == {"share": 0.5, "decoder": "torchvision", "alone": {"torchvision": 4.0},
                       "splits": [[None, 0.0, 2.0], ["torchvision", 0.5, 3.0]], "failed": {}}


def test_a_diagnosis_that_fails_is_said_in_its_place_and_the_run_goes_on() -> None:
    r: dict = {}
    pipeline._diagnosis(r, "graphed", "model_only", lambda: 3.0)

    def capture_fails() -> float:
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    pipeline._diagnosis(r, "graphed", "raw_training", capture_fails)
    assert r == {"graphed": {"model_only": 3.0, "raw_training": {
        "error": "RuntimeError: operation not permitted when stream is capturing more"}}}


class Clock:
    """time.perf_counter stood in for: the number of batches handed out so far."""

    def __init__(self) -> None:
        self.batches = 0
        self.read_at: list[int] = []

    def perf_counter(self) -> float:
        self.read_at.append(self.batches)
        return float(self.batches)


class Loader:
    """A TrainLoader stood in for: `batches` per epoch read `depth` ahead; says which epochs
    were started and advances the clock by one per batch handed out."""

    def __init__(self, clock: Clock, batches: int, depth: int) -> None:
        self.clock, self.batches, self.batch_size = clock, batches, 4
        self.reading = types.SimpleNamespace(prefetch=depth)
        self.started: list[int] = []

    def __len__(self) -> int:
        return self.batches

    def epoch(self, epoch: int):
        self.started.append(epoch)
        for _ in range(self.batches):
            self.clock.batches += 1
            yield torch.zeros(1), torch.zeros(1)


def test_a_loaders_timed_span_lies_within_one_epoch_after_a_round_of_read_ahead(monkeypatch):
    """The span crossed into new epochs of the bench's short store (40 batches on a GPU),
    each starting its read-ahead afresh, which an ILSVRC epoch of 5,000 batches pays once
    (stood-in threads: 0.54-0.74x the steady rate at depth 16); and its warm-up (10) was
    shorter than the read-ahead's first round (16 threads starting together), so the span
    began among batches read before it. Both for the loader alone and for training."""
    clock = Clock()
    monkeypatch.setattr(pipeline, "time", clock)
    loader = Loader(clock, batches=120, depth=16)
    rate = pipeline.loader_rate(loader, torch.device("cpu"), 80, 10)
    assert loader.started == [0] and clock.read_at == [16, 96]  # a round, then 80 timed
    assert rate == 4.0  # 4 images a batch, one batch a tick
    trainer = types.SimpleNamespace(rt=types.SimpleNamespace(device=torch.device("cpu")),
                                    step=lambda x, y: None)
    clock.batches, clock.read_at, loader.started = 0, [], []
    pipeline.training_rate(loader, trainer, 100, 10)
    assert loader.started == [0] and clock.read_at == [16, 116]
    with pytest.raises(ValueError, match="epoch of 40 batches cannot hold 16 warm-up and 80"):
        pipeline.loader_rate(Loader(clock, batches=40, depth=16), torch.device("cpu"), 80, 10)


@pytest.mark.parametrize("cuda", [True, False])
@pytest.mark.parametrize("quick", [True, False])
def test_the_store_holds_every_timed_span_in_one_epoch(cuda: bool, quick: bool) -> None:
    """The plan's store, at the deepest read-ahead timed (16 threads on a 16-core GPU host),
    has an epoch long enough for the training and loader spans and the thread rows."""
    plan = pipeline._plan(torch.device("cuda" if cuda else "cpu"), quick)
    deepest = 16 if cuda else 2
    epoch = pipeline.store_repeats(plan, deepest) * plan["distinct"] // plan["batch"]
    assert epoch >= max(plan["warmup"], deepest) + max(plan["steps"], plan["loader_steps"])
    assert epoch >= (1 + plan["rounds"]) * deepest


def test_disk_rates_read_the_files_back_into_the_page_cache(tmp_path: Path, monkeypatch):
    """The from-disk pass reads only the epoch's first batches; the figures after it say they
    read the page cache, so the store's files are read back in once it is timed."""
    stores = pipeline.write_twin_stores(tmp_path, pipeline.photo_like(4), 4, 2)
    done = []
    monkeypatch.setattr(pipeline, "drop_from_cache", lambda path: done.append(("drop", path))
                        or True)
    monkeypatch.setattr(pipeline, "loader_rate", lambda loader, device, steps, warmup:
                        done.append(("time", loader.store.path)) or 1.0)
    monkeypatch.setattr(pipeline, "read_into_cache", lambda path: done.append(("read", path)))
    rates = pipeline.disk_rates(stores, torch.device("cpu"), 2, 4)
    assert rates == {"raw": 1.0, "jpeg": 1.0}
    assert done == [(what, stores[fmt].path) for fmt in ("raw", "jpeg")
                    for what in ("drop", "time", "read")]
