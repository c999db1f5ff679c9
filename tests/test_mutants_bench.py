"""Mutation audit of the benchmarks' arithmetic and of bench/goals.py's verdicts: the checks
below pin what no other test did (goals exactly at their value, which row or key a figure is read
from, warm-up left out of the timed span, the best of the repeats, the rate's numerator and
denominator, the ratios' direction), each against figures worked out by hand from fake clocks and
hand-written JSON, never against real speed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import alexnet.bench
import alexnet.evaluate
import alexnet.model
from alexnet.bench import data as bench_data
from alexnet.bench import evaluate as bench_evaluate
from alexnet.bench import model as bench_model
from alexnet.bench import pipeline as bench_pipeline
from alexnet.bench import train as bench_train
from alexnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("goals_under_audit", ROOT / "bench" / "goals.py")
goals = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(goals)

H200 = {"quick": False, "smoke": False, "gpu": "NVIDIA H200"}
CPU = {"quick": False, "smoke": False, "gpu": None}
MODEL_PARTS = {"batch": 256, "dtype": "torch.bfloat16", "layout": "channels_last"}
PIPE_SETTING = {"batch": 256, "settings": "amp bf16, channels_last True"}


class Clock:
    """A fake time.perf_counter: time moves only when `advance` is called."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def module(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(perf_counter=self)


def write(outdir: Path, name: str, figures: dict, run: dict | None = H200) -> None:
    entry = {name: figures} if run is None else {"run": run, name: figures}
    (outdir / f"{name}.json").write_text(json.dumps(entry))


def by_goal(outdir: Path) -> dict[str, tuple[float | None, str]]:
    return {goal: (value, said) for _, goal, value, _, said in goals.goals(outdir)}


def verdict_of(outdir: Path, start: str) -> list[tuple[float | None, str]]:
    return [v for goal, v in by_goal(outdir).items() if goal.startswith(start)]


# ---- bench/goals.py -------------------------------------------------------------------------

def test_a_figure_exactly_at_its_goal_is_met_and_one_just_past_it_missed(tmp_path: Path):
    """Issue 8/9's goals say "at least" (>=) and, for LRN, "at most" (<=): a figure equal to
    the goal must read "met", one just on the wrong side "MISSED" (guards > for >=, < for <=,
    and the goal constants 0.8, 0.9, 1.5, 25,000, 80,000, 0.9)."""
    def figures(eps: float) -> None:
        write(tmp_path, "train", {"batch": 256, "versus": "torchvision", "settings": {
            goals.BF16_CL: {"paper_over_torchvision": 0.8 - eps},
            goals.COMPILED: {"paper_over_torchvision": 0.9 - eps}}})
        write(tmp_path, "model", {"parts": {**MODEL_PARTS, "lrn": {
            "conv1": {goals.FUSED: 1.5 + eps}, "conv2": {goals.FUSED: 1.5 + eps}}}})
        write(tmp_path, "pipeline", {**PIPE_SETTING, "model_only": 20_000.0,
                                     "reading": {"raw": {"prefetch": 8},
                                                 "jpeg": {"gpu_decode": 0.5}},
                                     "raw_loader": {"8": 80_000.0 - eps},
                                     "jpeg_loader": {"0.5": 25_000.0 - eps},
                                     "raw_training": 18_000.0 - eps,  # 0.9 of the model
                                     "jpeg_training": 18_000.0 - eps})

    figures(0.0)
    got = [said for _, goal, value, _, said in goals.goals(tmp_path) if value is not None]
    assert got == ["met"] * 8
    figures(1e-6)
    got = [said for _, goal, value, _, said in goals.goals(tmp_path) if value is not None]
    assert got == ["MISSED"] * 8


def test_the_cpu_goals_exactly_at_their_value_are_met(tmp_path: Path) -> None:
    """On the 2-core CPU: paper/tv layout >= 0.8 and prepare scaling >= 0.8 x 2 = 1.6."""
    write(tmp_path, "model", {"threads_2": {"paper_over_torchvision": 0.8},
                              "threads_1": {"paper_over_torchvision": 0.1}}, CPU)
    write(tmp_path, "data", {"prepare_workers": 2, "prepare_scaling": 1.6}, CPU)
    assert verdict_of(tmp_path, "on the 2-core CPU: paper net") == [(0.8, "met")]
    assert verdict_of(tmp_path, "on the 2-core CPU: prepare") == [(1.6, "met")]
    # the 2-core CPU is the goal: no second "this host" row beside it
    assert verdict_of(tmp_path, "prepare on this") == []


def test_the_loader_goals_read_the_default_share_and_depth_among_several(tmp_path: Path):
    """The jpeg loader goal is the figure at the loader's default GPU share, the raw one at its
    default read-ahead depth: not the best of the rows, nor the first key near it."""
    write(tmp_path, "pipeline", {
        **PIPE_SETTING, "model_only": 1000.0,
        "reading": {"raw": {"prefetch": 8}, "jpeg": {"gpu_decode": 0.5}},
        "raw_loader": {"4": 70_000.0, "8": 81_000.0, "16": 95_000.0},
        "jpeg_loader": {"0.0": 10_000.0, "0.25": 12_000.0, "0.5": 26_000.0, "1.0": 40_000.0}})
    got = by_goal(tmp_path)
    assert got["jpeg store, loader at the default GPU share >= 25,000 img/s"] == (26_000.0,
                                                                                  "met")
    assert got["raw store, loader at the default depth >= 80,000 img/s"] == (81_000.0, "met")


def test_training_over_model_is_training_divided_by_the_model(tmp_path: Path) -> None:
    """training / model alone, both from the same run: 450 / 500 = 0.9 (met), never
    500 / 450; the low-quality store's rows read its own figures."""
    write(tmp_path, "pipeline", {
        **PIPE_SETTING, "model_only": 500.0, "raw_training": 450.0, "jpeg_training": 400.0,
        "low_quality": {"quality": 75, "jpeg_loader": 30_000.0, "jpeg_training": 475.0}})
    got = by_goal(tmp_path)
    assert got["training from the raw store / the model alone >= 0.9x"] == (0.9, "met")
    assert got["training from the jpeg store / the model alone >= 0.9x"] == (0.8, "MISSED")
    assert got["training from the jpeg q75 store / the model alone >= 0.9x"] == (0.95, "met")
    assert got["jpeg q75 store, loader at its default GPU share >= 25,000 img/s"] == (
        30_000.0, "met")


def test_the_graphed_rows_are_against_the_graphed_model(tmp_path: Path) -> None:
    """A CUDA-graph training row is divided by the model alone as a CUDA graph (600), not by
    the eager model (1000): 540 / 600 = 0.9."""
    write(tmp_path, "pipeline", {**PIPE_SETTING, "model_only": 1000.0, "graphed": {
        "model_only": 600.0, "raw_training": 540.0}})
    got = verdict_of(tmp_path, "training from the raw store / the model alone, both as one")
    assert got == [(pytest.approx(0.9), "met")]


def test_decode_rates_that_stay_level_do_not_grow(tmp_path: Path) -> None:
    """"grows with threads" needs each rate above the one before: equal rates are MISSED."""
    rates = {"1": 1000.0, "4": 3000.0, "8": 3000.0, "16": 9000.0}
    write(tmp_path, "pipeline", {**PIPE_SETTING, "jpeg_loader_threads": rates})
    rows = [said for _, goal, *_, said in goals.goals(tmp_path)
            if goal.startswith("jpeg loader, CPU decode")]
    assert rows == ["MISSED"]


def test_figures_without_a_run_entry_or_in_nchw_are_not_counted(tmp_path: Path) -> None:
    """A JSON with no "run" entry (an older `alexnet bench`) may be a --quick run on any GPU,
    and LRN timed in NCHW is not the goal's channels_last: neither is "met"."""
    write(tmp_path, "train", {"batch": 256, "versus": "torchvision", "settings": {
        goals.BF16_CL: {"paper_over_torchvision": 0.95}}}, run=None)
    write(tmp_path, "model", {"parts": {**MODEL_PARTS, "layout": "nchw", "lrn": {
        "conv1": {goals.FUSED: 1.0}, "conv2": {goals.FUSED: 1.0}}}})
    assert {said for *_, said in goals.goals(tmp_path)} == {"not measured"}


# ---- alexnet/bench/__init__.py ----------------------------------------------------------------

def test_the_figures_returned_at_a_benchmarks_end_are_written(tmp_path, monkeypatch) -> None:
    """A benchmark that computes its last figures (ratios) after its last kept row: the write
    after each benchmark puts them in --json."""
    from _stops import stand_in_bench

    def finishing(args):
        args.figures["row"] = 2.0
        return {**args.figures, "ratio": 0.5}

    stand_in_bench(monkeypatch, "finishing", finishing)
    out = tmp_path / "f.json"
    assert main(["bench", "finishing", "--device", "cpu", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["finishing"] == {"row": 2.0, "ratio": 0.5}


def test_each_row_is_in_the_json_while_the_run_goes_on(tmp_path, monkeypatch) -> None:
    """keep_figures rewrites --json as soon as one benchmark has a figure (not once all have),
    and `measured` keeps the rows so far before it measures the next: a run killed
    (SIGKILL) in the middle of a row leaves the rows before it."""
    from _stops import stand_in_bench

    out = tmp_path / "f.json"
    seen = {}

    def on_disk():
        return json.loads(out.read_text())["rows"] if out.exists() else None

    def rows(args):
        args.figures["first"] = 1.0
        alexnet.bench.keep_figures()
        seen["kept"] = on_disk()
        args.figures["second"] = 2.0
        alexnet.bench.measured(lambda: seen.setdefault("measuring", on_disk()))
        return args.figures

    stand_in_bench(monkeypatch, "rows", rows)
    assert main(["bench", "rows", "--device", "cpu", "--json", str(out)]) == 0
    assert seen == {"kept": {"first": 1.0}, "measuring": {"first": 1.0, "second": 2.0}}


# ---- alexnet/bench/train.py -------------------------------------------------------------------

def test_time_setting_times_the_nets_in_turns_and_keeps_each_ones_fastest_step(
        monkeypatch) -> None:
    """Each net's step is made and warmed, then the nets take turns, one step each a round
    (after time_all's first call of each): batch / the fastest timed step, 4 / 0.25 = 16 and
    4 / 0.5 = 8 img/s; a net whose step cannot be made is its error, the others timed."""
    clock = Clock()
    durations = {"a": [9.0, 0.5, 0.25, 0.4], "b": [9.0, 1.0, 0.5, 0.75]}
    calls, made = [], []

    def warm_step(arch, device, batch, run_opts, warmup, width=1.0):
        made.append((arch, batch, run_opts, warmup))
        if arch == "c":
            raise RuntimeError("stood in\nfor a failure")

        def step():
            calls.append(arch)
            clock.advance(durations[arch].pop(0))
        return step

    monkeypatch.setattr(bench_model, "time", clock.module())
    monkeypatch.setattr(bench_train, "warm_step", warm_step)
    rates = bench_train.time_setting(["a", "c", "b"], torch.device("cpu"), 4, {"amp": "x"},
                                     2, 3)
    assert rates == {"a": pytest.approx(16.0), "c": {"error": "RuntimeError: stood in for a "
                                                              "failure"},
                     "b": pytest.approx(8.0)}
    assert list(rates) == ["a", "c", "b"]  # in the order asked, for the table's columns
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert made == [(arch, 4, {"amp": "x"}, 2) for arch in "acb"]


def test_warm_step_runs_the_warm_up_steps_before_the_timed_ones(monkeypatch) -> None:
    """warm_step runs `warmup` untimed steps (compilation, caches) before returning the step."""
    import alexnet.training.loop

    calls = []
    monkeypatch.setattr(alexnet.training.loop, "train_step", lambda *a, **k: calls.append(1))
    step = bench_train.warm_step("alexnet", torch.device("cpu"), 2, {}, 3, width=0.125)
    assert len(calls) == 3
    step()
    assert len(calls) == 4


def test_flops_per_image_counts_the_paper_nets_layers_by_hand() -> None:
    """Forward MACs from the layer shapes (227 input, grouped conv2/4/5):
    conv1 96*55*55*3*11*11 + conv2 256*27*27*48*25 + conv3 384*13*13*256*9
    + conv4 384*13*13*192*9 + conv5 256*13*13*192*9 + fc 9216*4096 + 4096*4096 + 4096*1000;
    training FLOPs = 2 x 3 x MACs."""
    from alexnet import paper
    from alexnet.model import build_model

    macs = (96 * 55 * 55 * 363 + 256 * 27 * 27 * 1200 + 384 * 169 * 2304 + 384 * 169 * 1728
            + 256 * 169 * 1728 + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)
    got = bench_train.flops_per_image(build_model("alexnet", num_classes=paper.NUM_CLASSES))
    assert got == {"forward_macs": float(macs), "train_flops": 6.0 * macs}


def _fake_train_bench(monkeypatch, cuda: bool, torchvision: bool) -> tuple[dict, list]:
    rates = {"alexnet": 800.0, "torchvision": 1000.0, "alexnet-tv": 500.0}
    calls = []

    def time_setting(archs, device, batch, opts, warmup, steps, width=1.0):
        calls.extend((arch, batch, warmup, steps) for arch in archs)
        return {arch: rates[arch] for arch in archs}

    monkeypatch.setattr(bench_train, "time_setting", time_setting)
    monkeypatch.setattr(bench_train, "time_variants", lambda *a, **k: None)
    monkeypatch.setattr(bench_train, "flops_per_image",  # the count is checked above
                        lambda net: {"forward_macs": 1e9, "train_flops": 6e9})
    monkeypatch.setattr(alexnet.model, "build_model", lambda *a, **k: None)
    monkeypatch.setattr(alexnet.bench, "torchvision_problem",
                        lambda: None if torchvision else "torchvision is not installed")
    if cuda:
        monkeypatch.setattr(alexnet.evaluate, "resolve_device",
                            lambda name: torch.device("cuda"))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    args = argparse.Namespace(device="cuda" if cuda else "cpu", quick=False, smoke=False,
                              figures=None)
    return bench_train.bench(args), calls


def test_bench_train_on_an_h200_gives_the_goals_their_figures(tmp_path, monkeypatch) -> None:
    """With fake timings (paper 800, torchvision 1000, tv layout 500 img/s) on a stood-in
    H200: batch 256, 5 warm-up + 20 timed steps per row, paper/torchvision = 800/1000 = 0.8
    (torchvision's own net, not the tv layout), MFU = 800 x 6e9 (the stood-in FLOPs per
    image) / 989e12 (the H200's peak); and
    bench/goals.py reads that JSON as the goal met exactly."""
    result, calls = _fake_train_bench(monkeypatch, cuda=True, torchvision=True)
    assert result["batch"] == 256 and result["versus"] == "torchvision"
    assert {(b, w, s) for _, b, w, s in calls} == {(256, 5, 20)}
    for row in (goals.BF16_CL, goals.COMPILED):
        assert result["settings"][row]["paper_over_torchvision"] == 0.8
    mfu = 800.0 * 6e9 / 989e12
    assert result["settings"][goals.BF16_CL]["mfu"] == pytest.approx(mfu)
    write(tmp_path, "train", result)
    got = by_goal(tmp_path)
    assert got["paper net / torchvision's alexnet, bf16+channels_last >= 0.8x"] == (0.8, "met")


def test_bench_train_without_torchvision_says_its_ratio_is_against_the_tv_layout(
        monkeypatch) -> None:
    """Without torchvision the ratio is paper / tv layout (800 / 500 = 1.6) and "versus" says
    so (alexnet-tv), so that bench/goals.py does not count it as the goal's."""
    result, _ = _fake_train_bench(monkeypatch, cuda=False, torchvision=False)
    assert result["versus"] == "alexnet-tv"
    assert result["settings"]["fp32"]["paper_over_torchvision"] == pytest.approx(1.6)


# ---- alexnet/bench/model.py -------------------------------------------------------------------

def _timed_fns(clock: Clock, durations: dict[str, list[float]]) -> dict:
    def fn(name):
        def call():
            clock.advance(durations[name].pop(0))
        return call
    return {name: fn(name) for name in durations}


def test_time_all_keeps_the_fastest_timed_call_after_the_warm_up(monkeypatch) -> None:
    """Each fn: a first (checked) call, `warmup` untimed rounds, then `repeats` timed calls;
    the figure is the least of the timed ones (not their mean, not a warm-up call)."""
    clock = Clock()
    monkeypatch.setattr(bench_model, "time", clock.module())
    # check call, 1 warm-up, 3 timed: [4, 2, 6] -> 2 (mean 4)
    fns = _timed_fns(clock, {"a": [9.0, 9.0, 4.0, 2.0, 6.0], "b": [9.0, 9.0, 1.0, 3.0, 2.0]})
    assert bench_model.time_all(fns, torch.device("cpu"), 1, 3) == {"a": 2.0, "b": 1.0}
    # one timed call: the warm-up's slow call (50) is not it
    fns = _timed_fns(clock, {"a": [90.0, 50.0, 3.0]})
    assert bench_model.time_all(fns, torch.device("cpu"), 1, 1) == {"a": 3.0}


def test_report_turns_seconds_into_images_and_ratios() -> None:
    """From seconds per step at batch 32: paper 0.5 s -> 64 img/s; paper/tv layout is tv's
    seconds over the paper's (0.4 / 0.5 = 0.8: the paper net's speed relative to tv's);
    likewise paper / no LRN; LRN's share = 0.1 / 0.5."""
    seconds = {"paper": 0.5, "paper, no LRN": 0.45, "torchvision layout": 0.4, "lrn": 0.1}
    got = bench_model._report(seconds, 32)
    assert got["images_per_s"] == {"paper": 64.0, "paper, no LRN": pytest.approx(32 / 0.45),
                                   "torchvision layout": 80.0}
    assert got["paper_over_torchvision"] == pytest.approx(0.8)
    assert got["paper_over_no_lrn"] == pytest.approx(0.9)
    assert got["lrn_share_of_step"] == pytest.approx(0.2)


def test_lrn_rows_are_lrn_time_over_relu_time(monkeypatch) -> None:
    """The LRN goal's ratio (<= 1.5x) is LRN's seconds over ReLU's: 0.03 / 0.01 = 3."""
    monkeypatch.setattr(bench_model, "time_all",
                        lambda fns, *a, **k: {"relu": 0.01, "lrn torch": 0.03})
    rows = bench_model._lrn_rows(1, torch.device("cpu"), torch.float32,
                                 torch.contiguous_format, (1, 1),
                                 {"conv1": (1, 4, 3, 3)})
    assert rows["conv1"]["lrn torch / relu"] == pytest.approx(3.0)


@pytest.mark.parametrize("cuda", [False, True])
def test_bench_parts_records_the_setting_it_measured(monkeypatch, cuda: bool) -> None:
    """parts' batch, dtype and layout (what bench/goals.py checks) are those it ran: on the CPU
    full run batch 16, float32, NCHW; on CUDA batch 256, bfloat16, channels_last."""
    for name in ("_lrn_rows", "_column_rows"):
        monkeypatch.setattr(bench_model, name, lambda *a, **k: {})
    monkeypatch.setattr(bench_model, "_pad_and_pool_rows", lambda *a, **k: {})
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    parts = bench_model.bench_parts(torch.device("cuda" if cuda else "cpu"), quick=False)
    assert {k: parts[k] for k in ("batch", "dtype", "layout")} == (
        MODEL_PARTS if cuda else {"batch": 16, "dtype": "torch.float32", "layout": "nchw"})


# ---- alexnet/bench/evaluate.py ----------------------------------------------------------------

def test_evaluate_rates_and_ratios_from_the_pass_times(monkeypatch) -> None:
    """2 images (smoke): a centre pass of 0.5 s and a 10-crop pass of 2 s give 4 and 1 img/s,
    4 and 10 crops/s; centre/10-crop images/s = 4, 10-crop/centre crops/s = 2.5."""
    monkeypatch.setattr(bench_evaluate, "_time_eval",
                        lambda model, store, crops, *a: {1: 0.5, 10: 2.0}[crops])
    got = bench_evaluate.bench(argparse.Namespace(device="cpu", quick=True, smoke=True,
                                                  figures=None))
    assert (got["crops1_images_per_s"], got["crops10_images_per_s"]) == (4.0, 1.0)
    assert (got["crops1_crops_per_s"], got["crops10_crops_per_s"]) == (4.0, 10.0)
    assert got["images_per_s_ratio_centre_over_10crop"] == 4.0
    assert got["crops_per_s_ratio_10crop_over_centre"] == 2.5


def test_time_eval_is_the_best_pass_after_a_warm_up_pass(monkeypatch) -> None:
    """One untimed pass, then the least of `repeats` timed passes."""
    clock = Clock()
    passes: list[float] = []
    monkeypatch.setattr(bench_evaluate, "time", clock.module())
    monkeypatch.setattr(alexnet.evaluate, "eval_loader", lambda *a, **k: "loader")
    monkeypatch.setattr(alexnet.evaluate, "predict_probs",
                        lambda model, loader: clock.advance(passes.pop(0)))
    model = types.SimpleNamespace(arch="alexnet")
    store = types.SimpleNamespace(stats=None)
    passes[:] = [10.0, 3.0]
    assert bench_evaluate._time_eval(model, store, 1, 2, torch.device("cpu"), 1) == 3.0
    passes[:] = [10.0, 3.0, 1.0, 2.0]
    assert bench_evaluate._time_eval(model, store, 1, 2, torch.device("cpu"), 3) == 1.0


# ---- alexnet/bench/pipeline.py ----------------------------------------------------------------

def test_timed_counts_only_the_steps_after_the_warm_up(monkeypatch) -> None:
    """images x steps / seconds of the timed steps: 8 x 3 / (3 x 0.5 s) = 16 img/s, the two
    warm-up steps (slow, 10 s each) neither timed nor counted."""
    clock = Clock()
    durations = [10.0, 10.0, 0.5, 0.5, 0.5]
    monkeypatch.setattr(bench_pipeline, "time", clock.module())
    rate = bench_pipeline._timed(torch.device("cpu"), 8, 3, 2,
                                 lambda: clock.advance(durations.pop(0)))
    assert rate == pytest.approx(16.0) and durations == []


def test_cpu_decode_rate_is_the_images_over_the_seconds(monkeypatch) -> None:
    """8 images split over 4 threads in 1 s: 8 img/s, whatever the threads."""
    from alexnet.data import decode

    ticks = iter(np.arange(100.0, 200.0, 1.0))
    monkeypatch.setattr(bench_pipeline, "time", types.SimpleNamespace(
        perf_counter=lambda: float(next(ticks))))
    monkeypatch.setattr(decode, "available_cpu_decoders", lambda: ["fake"])
    monkeypatch.setattr(decode, "decode_cpu", lambda blobs, size, name=None: None)
    got = bench_pipeline.cpu_decode_rates([b"x"] * 8, (1, 4))
    assert got == {"fake": {1: 8.0, 4: 8.0}}


def test_levels_are_the_mean_and_max_distance() -> None:
    """|decoded - raw| of (0, 10, 4) against (2, 4, 4): mean 8/3, max 6."""
    got = bench_pipeline.levels(np.array([0, 10, 4], np.uint8), np.array([2, 4, 4], np.uint8))
    assert got == {"mean": pytest.approx(8 / 3), "max": 6}


def test_the_trainer_says_its_own_settings_on_the_cpu() -> None:
    """The CPU's Trainer runs fp32 NCHW and says so: not the goal's bf16/channels_last."""
    trainer = bench_pipeline.Trainer(torch.device("cpu"), 4, width=0.125)
    assert trainer.settings == "amp off, channels_last False"


def test_the_pipelines_model_figure_is_the_faster_of_its_two_and_thread_rows_span_rounds(
        tmp_path, monkeypatch) -> None:
    """The model alone is timed first and last, the faster kept (100 then 250: 250); each
    CPU-decode thread row times `rounds` batches per read-ahead thread, from the first."""
    plan = {"distinct": 4, "batch": 2, "steps": 1, "warmup": 1, "loader_steps": 2, "rounds": 3}
    models = [100.0, 250.0]
    loaders = []
    monkeypatch.setattr(bench_pipeline, "model_rate", lambda *a: models.pop(0))
    monkeypatch.setattr(bench_pipeline, "training_rate", lambda *a: 1.0)

    def loader_rate(loader, device, steps, warmup):
        how = loader.reading
        loaders.append((how.prefetch, how.threads, how.gpu_decode, steps, warmup))
        return 1.0

    monkeypatch.setattr(bench_pipeline, "loader_rate", loader_rate)
    r = bench_pipeline.run_pipeline(torch.device("cpu"), plan, tmp_path, classes=4,
                                    width=0.125)
    assert r["model_only"] == 250.0 and models == []
    threads = list(r["jpeg_loader_threads"])
    assert threads == [1, 2] and all((n, 1, 0.0, 3 * n, 0) in loaders for n in threads)


def test_a_loaders_span_waits_a_batch_per_read_ahead_thread_and_fits_one_epoch() -> None:
    """The untimed batches are at least one per read-ahead thread (4 here, though warm-up 2);
    an epoch of 5 batches cannot hold 1 warm-up + 5 timed ones."""
    loader = types.SimpleNamespace(reading=types.SimpleNamespace(prefetch=4), batch_size=2,
                                   __len__=lambda: 5)
    assert bench_pipeline.timed_warmup(loader, 2) == 4
    assert bench_pipeline.timed_warmup(loader, 6) == 6

    class Loader:
        reading = types.SimpleNamespace(prefetch=1)
        batch_size = 2

        def __len__(self) -> int:
            return 5

        def epoch(self, n):
            raise AssertionError("not to be read: the span does not fit")

    with pytest.raises(ValueError, match="cannot hold"):
        bench_pipeline._timed_epoch(Loader(), torch.device("cpu"), 5, 1, lambda x, y: None)


# ---- alexnet/bench/data.py --------------------------------------------------------------------

def test_bench_data_ratios_are_its_figures_over_the_usual_pipelines(tmp_path, monkeypatch):
    """prepare and the loader against the usual pipeline: 50 / 100 = 0.5x and 1000 / 100 = 10x
    (the loader's goal is 10x), with every timing stood in."""
    import alexnet.data.store

    def make_jpegs(root, count):
        root.mkdir(parents=True)
        (root / "a.JPEG").write_bytes(b"x" * 2048)
        return [(root / "a.JPEG", 0)]

    monkeypatch.setattr(bench_data, "make_jpegs", make_jpegs)
    monkeypatch.setattr(bench_data, "_time_prepare", lambda *a: {
        "prepare_images_per_s_per_core": 50.0, "prepare_workers": 2, "prepare_images_many": 2,
        "prepare_images_per_s_runs": {"1": [50.0], "2": [90.0]}, "prepare_scaling": 1.8})
    monkeypatch.setattr(bench_data, "usual_pipeline", lambda root, files: (None, "usual"))
    monkeypatch.setattr(bench_data, "_time_usual", lambda dataset, n: 100.0)
    monkeypatch.setattr(bench_data, "_time_loader", lambda store, n, device, prefetch: 1000.0)
    monkeypatch.setattr(bench_data, "_time_jpeg_loader",
                        lambda *a: {"pil": {1: 10.0, 2: 20.0}})
    monkeypatch.setattr(alexnet.data.store, "open_split", lambda *a: None)
    got = bench_data.bench(argparse.Namespace(device="cpu", quick=True, smoke=True,
                                              figures=None))
    assert got["jpeg_kb_mean"] == 2.0
    assert got["prepare_over_usual"] == 0.5 and got["loader_over_usual"] == 10.0


def test_prepare_scaling_is_the_best_rate_of_n_workers_over_the_best_of_one(
        tmp_path, monkeypatch) -> None:
    """4 cores, 10 images (40 for 4 workers), runs in the order 1, 4, 4, 1, 1, 4 taking
    2, 2.5, 2, 1.6, 2.5, 4 s: 1 worker 5, 6.25, 4 img/s; 4 workers 16, 20, 10 img/s;
    scaling = 20 / 6.25 = 3.2, per core 6.25."""
    import os

    clock = Clock()
    took = [2.0, 2.5, 2.0, 1.6, 2.5, 4.0]

    def prepare(src, where, workers):
        Path(where).mkdir()
        clock.advance(took.pop(0))

    monkeypatch.setattr(bench_data, "time", clock.module())
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(bench_data, "repeated_tree", lambda src, dst, times: 10 * times)
    got = bench_data._time_prepare(prepare, tmp_path / "src", tmp_path / "out", 10)
    assert got["prepare_workers"] == 4 and got["prepare_images_many"] == 40
    assert got["prepare_images_per_s_runs"] == {"1": pytest.approx([5.0, 6.25, 4.0]),
                                                "4": pytest.approx([16.0, 20.0, 10.0])}
    assert got["prepare_images_per_s_per_core"] == pytest.approx(6.25)
    assert got["prepare_scaling"] == pytest.approx(3.2)


def test_the_usual_pipelines_rate_counts_the_images_it_went_through(monkeypatch):
    """DataLoader hands out whole batches of 128: asked to time 16 images (`--smoke`), it went
    through 128, so the rate is 128 per timed second, not 16 (a clock that reads 0, then 2)."""
    from alexnet.bench import data as bench_data

    clock = iter([0.0, 2.0])
    monkeypatch.setattr(bench_data.time, "perf_counter", lambda: next(clock))
    dataset = torch.utils.data.TensorDataset(torch.zeros(256, 1), torch.zeros(256))
    assert bench_data._time_usual(dataset, 16) == 128 / 2


def test_the_device_augment_rate_is_batches_over_seconds(monkeypatch):
    """`_time_device_augment` (a CUDA row, run here on the CPU with synchronize stubbed out)
    times `repeats` batches of 128 between two clock reads: 3 x 128 images in 4 s."""
    from alexnet.bench import data as bench_data

    class Store:
        stats = {"mean_image": np.zeros((224, 224, 3)), "eigval": np.ones(3),
                 "eigvec": np.eye(3)}

        @staticmethod
        def read(index):
            return np.zeros((len(index), 224, 224, 3), dtype=np.uint8)  # crop 224: no room

    clock = iter([10.0, 14.0])
    monkeypatch.setattr(bench_data.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    rate = bench_data._time_device_augment(Store(), torch.device("cpu"), repeats=3)
    assert rate == 3 * 128 / 4
