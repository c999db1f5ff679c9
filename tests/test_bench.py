"""`alexnet bench`: every benchmark runs on the CPU in its smoke mode (the least work that runs
every line), writes its figures as JSON, and its ratios are the quotients of its own figures.
The figures themselves say nothing here: speed is measured by the benchmarks, not by tests."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _stops import stand_in_bench

from alexnet import paper
from alexnet.bench.train import GRAPH_ROW, settings_for
from alexnet.cli import main
from alexnet.training.graphs import graphed_step

SMOKE_ON_CPU = {"quick": True, "smoke": True, "gpu": None}  # the JSON's "run" entry


def run_bench(what: str, tmp_path, capsys) -> dict:
    out = tmp_path / f"{what}.json"
    assert main(["bench", what, "--smoke", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"== alexnet bench {what}" in printed
    return json.loads(out.read_text())[what]


def positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_model(tmp_path, capsys):
    r = run_bench("model", tmp_path, capsys)[f"threads_{torch.get_num_threads()}"]
    ips = r["images_per_s"]
    assert positive(ips["paper"]) and positive(ips["paper, no LRN"])
    assert r["paper_over_no_lrn"] == pytest.approx(ips["paper"] / ips["paper, no LRN"])
    assert r["lrn_share_of_step"] == pytest.approx(r["lrn_seconds"] / r["step_seconds"])


def test_bench_data(tmp_path, capsys):
    r = run_bench("data", tmp_path, capsys)
    for key in ("prepare_images_per_s_per_core", "usual_images_per_s_per_core",
                "loader_images_per_s_per_core", "loader_images_per_s_prefetch2"):
        assert positive(r[key]), key
    assert r["prepare_over_usual"] == pytest.approx(
        r["prepare_images_per_s_per_core"] / r["usual_images_per_s_per_core"])
    assert r["loader_over_usual"] == pytest.approx(
        r["loader_images_per_s_per_core"] / r["usual_images_per_s_per_core"])


def test_prepare_scaling_is_timed_on_a_source_that_grows_with_the_cores(tmp_path, monkeypatch):
    """With N cores the N-worker runs read every file N times (so that starting N processes
    does not dominate a short run); the rates divide each run's own image count."""
    import os

    from alexnet.bench import data

    src = tmp_path / "jpegs"
    files = data.make_jpegs(src, 3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    calls = []

    def prepare(source, out, workers):
        paths = sorted(p for p in source.rglob("*") if p.is_file())
        calls.append((workers, len(paths)))
        for p in paths:  # each the same bytes as one of the originals
            assert any(p.read_bytes() == f.read_bytes() for f, _ in files)
        out.mkdir()

    r = data._time_prepare(prepare, src, tmp_path / "store", 3)
    assert calls == [(1, 3), (8, 24), (8, 24), (1, 3), (1, 3), (8, 24)]
    assert r["prepare_workers"] == 8 and r["prepare_images_many"] == 24
    runs = r["prepare_images_per_s_runs"]
    assert r["prepare_scaling"] == pytest.approx(max(runs["8"]) / max(runs["1"]))
    assert r["prepare_images_per_s_per_core"] == max(runs["1"])


def test_bench_train(tmp_path, capsys):
    r = run_bench("train", tmp_path, capsys)
    settings = r["settings"]
    for name in ("fp32", "channels_last", "bf16"):
        assert positive(settings[name]["alexnet"]), name
    assert "needs CUDA" in settings["fp16+GradScaler"]["note"]
    assert settings[GRAPH_ROW] == {"note": "skipped: CUDA graphs need CUDA"}
    assert r["train_gflop_per_image"] == pytest.approx(4.3, abs=0.05)  # the full paper net's
    variants = r["variants"]  # the paper net's other column forms (and LRN kernels on CUDA)
    assert set(variants) == {"default", "columns split (SplitAlexNet, one device)",
                             "conv1 blocks (ALEXNET_CONV1=blocks)"} | {
        f"columns {f} (all three layers)" for f in ("groups", "separate", "dense")}
    assert all(positive(v) for v in variants.values())


@pytest.fixture
def broken_torchvision(tmp_path, monkeypatch):
    """A torchvision whose import fails as one built for another torch does (RuntimeError,
    not ImportError), in place of any installed one; the decoders' probes forgotten around."""
    import sys

    from alexnet.data import decode

    package = tmp_path / "site" / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(package.parent))
    for name in [m for m in sys.modules if m.partition(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, name)
    decode.importable.cache_clear()
    yield
    decode.importable.cache_clear()


def test_a_torchvision_that_does_not_import_is_left_out_saying_why(broken_torchvision,
                                                                   tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "train", "data", "--smoke", "--device", "cpu",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torchvision does not import (RuntimeError: operator torchvision::nms does not " \
        "exist): the paper/torchvision ratio is against" in printed
    figures = json.loads(out.read_text())
    assert positive(figures["train"]["settings"]["fp32"]["alexnet"])
    assert figures["data"]["usual_pipeline"].startswith("PIL stand-in")
    assert positive(figures["data"]["usual_images_per_s_per_core"])


def test_torchvisions_own_alexnet_is_the_layout_of_alexnet_tv():
    """bench train's torchvision column: torchvision.models.alexnet where it imports, with
    the parameter shapes of this project's alexnet-tv (so paper/tv compares like with like)."""
    from alexnet.bench import torchvision_problem
    from alexnet.bench.train import build_net, torchvision_alexnet

    if torchvision_problem():
        assert torchvision_alexnet() is None
        pytest.skip(torchvision_problem())
    theirs, ours = torchvision_alexnet().state_dict(), build_net("alexnet-tv").state_dict()
    assert type(torchvision_alexnet()).__module__ == "torchvision.models.alexnet"
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}


def test_graph_row_is_skipped_on_the_cpu():
    rows = {name: (opts, note) for name, opts, note in settings_for(torch.device("cpu"), False)}
    assert rows[GRAPH_ROW] == (None, "skipped: CUDA graphs need CUDA")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_matches_eager_steps():
    """Three replays of the captured step (fp32, dropout on) leave the parameters where three
    eager train_step calls on the same batch leave them. The paper net at 1/8 width, batch 4:
    the same layers, LRN and pool, dropout, loss and PaperSGD update that graphed_step
    captures for the full net (at full size and batch 8 the test took 42.6 s of the GPU
    check's tests step); at this width three steps move every parameter tensor."""
    import copy

    from alexnet.bench import SMOKE_WIDTH
    from alexnet.config import Config
    from alexnet.distributed import DistInfo
    from alexnet.model import build_model
    from alexnet.optim import PaperSGD, param_groups
    from alexnet.training.loop import train_step
    from alexnet.training.runtime import setup_runtime

    device = torch.device("cuda")
    rt = setup_runtime(Config(), DistInfo(device=device))
    torch.manual_seed(0)
    eager = build_model("alexnet", num_classes=paper.NUM_CLASSES, width=SMOKE_WIDTH).to(device)
    graphed = copy.deepcopy(eager)
    start = [p.detach().clone() for p in eager.parameters()]
    x = torch.randn(4, 3, paper.CROP_SIZE, paper.CROP_SIZE, device=device) * 60
    y = torch.randint(0, paper.NUM_CLASSES, (4,), device=device)

    def optimizer(net):
        return PaperSGD(param_groups(net), lr=paper.BASE_LR, momentum=paper.MOMENTUM,
                        weight_decay=paper.WEIGHT_DECAY)

    torch.cuda.manual_seed(1)
    opt = optimizer(eager)
    losses = [train_step(eager, x, y, opt, rt)[0].item() for _ in range(3)]
    torch.cuda.manual_seed(1)
    step = graphed_step(graphed, x, y, optimizer(graphed), rt, warmup=3)
    replayed = [step()[0].item() for _ in range(3)]
    assert replayed == pytest.approx(losses, rel=1e-4)
    for (name, a), b, s in zip(eager.named_parameters(), graphed.parameters(), start,
                               strict=True):
        assert not torch.equal(a, s), name  # the steps moved it
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_bench_evaluate(tmp_path, capsys):
    r = run_bench("evaluate", tmp_path, capsys)
    assert positive(r["crops1_images_per_s"]) and positive(r["crops10_images_per_s"])
    assert r["crops10_crops_per_s"] == pytest.approx(10 * r["crops10_images_per_s"])
    assert r["images_per_s_ratio_centre_over_10crop"] == pytest.approx(
        r["crops1_images_per_s"] / r["crops10_images_per_s"])


def test_unknown_bench_is_one_line(capsys):
    assert main(["bench", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown benchmark 'nosuch'" in err


def test_a_run_stopped_by_sigterm_keeps_the_figures_it_reached(tmp_path, monkeypatch, capsys):
    """As `timeout` stops a step of bench/gpu_check.sh: the benchmarks done are in the JSON,
    the one running with the figures it had put in args.figures, and the exit status is 124."""
    import os
    import signal


    def finished(args):
        return {"rate": 1.0}

    def cut(args):
        args.figures["first row"] = 2.0
        try:  # as the Triton kernels' checks catch what a kernel raises
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next instruction
        except Exception:
            args.figures["swallowed"] = True
        args.figures["never reached"] = 3.0
        return args.figures

    def wrapped(args):
        args.figures["first row"] = 4.0
        try:  # as torch.compile's tracing wraps what is raised inside it
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException as err:
            raise RuntimeError("while tracing") from err
        return args.figures

    for name, fn in (("finished", finished), ("cut", cut), ("wrapped", wrapped)):
        stand_in_bench(monkeypatch, name, fn, f"a stand-in, {name}")
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "figures.json"
    assert main(["bench", "finished", "cut", "--device", "cpu", "--json", str(out)]) == 124
    written = json.loads(out.read_text())
    assert written["finished"] == {"rate": 1.0} and written["cut"] == {"first row": 2.0}
    assert written["stopped"].startswith("SIGTERM during `alexnet bench cut`")
    assert "stopped by SIGTERM during cut" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before
    assert main(["bench", "wrapped", "--device", "cpu", "--json", str(out)]) == 124
    written = json.loads(out.read_text())
    assert written["wrapped"] == {"first row": 4.0} and "during `alexnet bench wrapped`" in \
        written["stopped"]

    def broken(args):
        args.figures["first row"] = 5.0
        raise RuntimeError("a benchmark's own error")

    stand_in_bench(monkeypatch, "broken", broken, "a stand-in that fails")
    with pytest.raises(RuntimeError, match="own error"):  # no SIGTERM: an error stays one
        main(["bench", "finished", "broken", "--device", "cpu", "--json", str(out)])
    written = json.loads(out.read_text())  # with what was measured before it
    assert written["finished"] == {"rate": 1.0} and written["broken"] == {"first row": 5.0}
    assert written["failed"] == ("`alexnet bench broken` failed: RuntimeError: a benchmark's "
                                 "own error; its entry holds the figures it had reached, the "
                                 "benchmarks after it none")


def test_bench_model_stopped_after_the_lrn_rows_keeps_them(tmp_path, monkeypatch, capsys):
    """gpu_check's limit may stop `bench model` anywhere: issue 8's LRN figures, measured
    first, are in the JSON even when the column rows after them are cut."""
    import os
    import signal

    import alexnet.bench.model

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM's handler did not stop the run")

    monkeypatch.setattr(alexnet.bench.model, "_column_rows", stopped)
    out = tmp_path / "model.json"
    assert main(["bench", "model", "--smoke", "--device", "cpu", "--json", str(out)]) == 124
    lrn = json.loads(out.read_text())["model"]["parts"]["lrn"]
    assert positive(lrn["conv1"]["relu"]) and positive(lrn["conv2"]["relu"])


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0),
                                        ("NVIDIA H100 80GB HBM3", 989.0),
                                        ("NVIDIA H100 NVL", 835.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)])
def test_mfu_peak_is_the_devices_own(monkeypatch, name, peak):
    """NVIDIA's dense bf16 figures; a longer name (H200 NVL) is not taken for a shorter one."""
    from alexnet.bench.train import peak_tflops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_tflops(torch.device("cuda")) == peak


@pytest.mark.parametrize("where", ["/sys/alexnet-bench/x.json", "a folder", "another file"])
def test_a_json_file_that_cannot_be_written_is_refused_before_the_benchmarks(
        where, tmp_path, monkeypatch, capsys):
    """/sys refuses new files even to root; a folder is no file name; another file (here a
    checkpoint's stand-in) would be lost, unlike an earlier benchmark JSON."""
    import alexnet.bench.model

    def ran(args):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(alexnet.bench.model, "bench", ran)
    path = {"a folder": tmp_path, "another file": tmp_path / "checkpoint.pt"}.get(where, where)
    if where == "another file":
        path.write_bytes(b"a checkpoint")
    assert main(["bench", "model", "--smoke", "--device", "cpu", "--json", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("alexnet bench: error:")
    assert "--json" in captured.err and captured.out == ""
    if where == "another file":
        assert path.read_bytes() == b"a checkpoint"


def test_the_json_of_an_earlier_benchmark_is_replaced(tmp_path, monkeypatch) -> None:
    import alexnet.bench.model

    monkeypatch.setattr(alexnet.bench.model, "bench", lambda args: {"step_ms": 1.0})
    path = tmp_path / "model.json"
    path.write_text('{"model": {"step_ms": 2.0}, "stopped": "SIGTERM"}')
    assert main(["bench", "model", "--smoke", "--device", "cpu", "--json", str(path)]) == 0
    assert json.loads(path.read_text()) == {"run": SMOKE_ON_CPU, "model": {"step_ms": 1.0}}


def test_a_benchmark_stopped_before_any_figure_keeps_the_earlier_json(tmp_path, monkeypatch):
    """Ctrl-C (or a failure) before anything was measured: the earlier complete JSON is not
    replaced by empty figures."""
    import alexnet.bench.model

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(alexnet.bench.model, "bench", interrupted)
    path = tmp_path / "model.json"
    earlier = '{"model": {"step_ms": 2.0}}'
    path.write_text(earlier)
    assert main(["bench", "model", "--smoke", "--device", "cpu", "--json", str(path)]) == 130
    assert path.read_text() == earlier


def test_ctrl_c_keeps_the_figures_and_says_interrupted_not_failed(tmp_path, monkeypatch, capsys):
    """Ctrl-C wrote `"failed": "... failed: KeyboardInterrupt: KeyboardInterrupt"`, which reads
    as a broken benchmark."""
    import alexnet.bench.model

    def interrupted(args):
        args.figures["lrn_ms"] = 1.5
        raise KeyboardInterrupt

    monkeypatch.setattr(alexnet.bench.model, "bench", interrupted)
    path = tmp_path / "model.json"
    assert main(["bench", "model", "--smoke", "--device", "cpu", "--json", str(path)]) == 130
    written = json.loads(path.read_text())
    assert written == {"run": SMOKE_ON_CPU, "model": {"lrn_ms": 1.5}, "stopped": (
        "interrupted (Ctrl-C) during `alexnet bench model`: its entry holds the figures it had "
        "reached, the benchmarks after it none")}
    assert capsys.readouterr().err.endswith("alexnet bench: interrupted\n")


# `alexnet bench cut` as the program runs it (sys.argv), its benchmark stopped by SIGTERM; a
# second SIGTERM comes while the figures are written, or after main has returned (the
# interpreter's teardown takes half a second with torch loaded), as `timeout` and a signal
# to the process group send two.
TWO_SIGTERMS = """
import os, signal, sys, time, types
import alexnet.bench
from alexnet.cli import main

when = sys.argv.pop(1)


def cut(args):
    args.figures["row"] = 1.0
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends


def write_json(*args, **kwargs):
    if when == "while writing":
        os.kill(os.getpid(), signal.SIGTERM)
    return write(*args, **kwargs)


module = types.ModuleType("alexnet.bench.cut")
module.bench = cut
sys.modules["alexnet.bench.cut"] = module
alexnet.bench.WHATS["cut"] = "a stand-in"
write, alexnet.bench.write_json = alexnet.bench.write_json, write_json
code = main()
if when == "after main":
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
sys.exit(code)
"""


@pytest.mark.parametrize("when", ["while writing", "after main"])
def test_a_second_sigterm_keeps_the_status_124_and_the_figures(when, tmp_path):
    """The handler was restored (to the default) before the exit: a second SIGTERM 20-50 ms
    after the first killed the run with 143 (or, during the JSON, a Stopped traceback)."""
    import subprocess
    import sys

    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-c", TWO_SIGTERMS, when, "bench", "cut", "--device",
                           "cpu", "--json", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 124, proc.stderr
    assert proc.stderr == ("alexnet bench: stopped by SIGTERM during cut; the figures so far "
                           f"are in {out}\n")
    assert json.loads(out.read_text())["cut"] == {"row": 1.0}


def test_bench_model_stopped_in_conv2s_lrn_row_keeps_conv1s(tmp_path, monkeypatch):
    """On a GPU conv2's LRN row compiles a dozen kernels after conv1's row is timed: a time
    limit there must not lose conv1's figures (issue 8's goal)."""
    import os
    import signal

    import alexnet.bench.model

    timed = alexnet.bench.model.time_all
    calls = []

    def time_all(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # conv2's LRN row
            os.kill(os.getpid(), signal.SIGTERM)
        return timed(*args, **kwargs)

    monkeypatch.setattr(alexnet.bench.model, "time_all", time_all)
    out = tmp_path / "model.json"
    assert main(["bench", "model", "--smoke", "--device", "cpu", "--json", str(out)]) == 124
    lrn = json.loads(out.read_text())["model"]["parts"]["lrn"]
    assert positive(lrn["conv1"]["relu"]) and "conv2" not in lrn


def test_a_timed_function_that_fails_leaves_the_others_figures(monkeypatch):
    """A kernel variant that fails on the GPU (never run there before) is said in its place;
    the rows beside it (the goal's fused LRN among them) are still timed."""
    import threading

    import alexnet.bench
    from alexnet.bench.model import time_all

    monkeypatch.setattr(alexnet.bench, "_SIGTERM", threading.Event())  # no SIGTERM came

    def broken():
        raise RuntimeError("triton: out of resources\nmore")

    failed = {}
    t = time_all({"relu": lambda: torch.ones(4).relu(), "variant": broken},
                  torch.device("cpu"), 1, 2, failed=failed)
    assert list(t) == ["relu"] and positive(t["relu"])
    assert failed == {"variant": "RuntimeError: triton: out of resources more"}


def test_a_setting_or_variant_that_fails_is_said_and_the_others_are_timed(tmp_path, monkeypatch,
                                                                        capsys):
    """`bench train` on a GPU runs rows never run there (compile with the Triton ops, a CUDA
    graph, split columns): one that fails is recorded in its place, not the end of the bench."""
    import alexnet.bench.train

    made = alexnet.bench.train.warm_step

    def warm_step(arch, device, batch, run_opts, warmup, width=1.0, **net_kwargs):
        if run_opts.get("amp") == "bf16" or net_kwargs.get("column_conv") == "dense":
            raise RuntimeError("stood in\nfor a failure")
        return made(arch, device, batch, run_opts, warmup, width, **net_kwargs)

    monkeypatch.setattr(alexnet.bench.train, "warm_step", warm_step)
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--smoke", "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["train"]
    assert positive(r["settings"]["fp32"]["alexnet"])
    assert r["settings"]["bf16"] == {"errors": {"alexnet": "RuntimeError: stood in for a "
                                                           "failure"}}
    assert positive(r["variants"]["columns groups (all three layers)"])
    assert r["variants"]["columns dense (all three layers)"] == {
        "error": "RuntimeError: stood in for a failure"}
    printed = capsys.readouterr().out
    assert "bf16: paper net failed: RuntimeError: stood in for a failure" in printed


def test_an_error_after_sigterm_stops_the_run_instead_of_being_recorded(tmp_path, monkeypatch):
    """A SIGTERM that code under measurement wraps in an error of its own (torch.compile, a
    CUDA graph's capture) is not a failed figure: the run stops and writes its JSON, before
    the time limit's SIGKILL, instead of going on."""
    import os
    import signal

    from alexnet.bench import pipeline

    def capture() -> float:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException as err:
            raise RuntimeError("operation failed during capture") from err
        return 1.0

    def cut(args):
        args.figures["first row"] = 2.0
        pipeline._diagnosis(args.figures, "graphed", "model_only", capture)
        args.figures["never reached"] = 3.0
        return args.figures

    stand_in_bench(monkeypatch, "cut", cut)
    out = tmp_path / "figures.json"
    assert main(["bench", "cut", "--device", "cpu", "--json", str(out)]) == 124
    assert json.loads(out.read_text())["cut"] == {"first row": 2.0}


def test_bench_data_stopped_after_prepare_keeps_its_figures(tmp_path, monkeypatch):
    """prepare's scaling (issue 9's goal) is measured first: a time limit later in `bench
    data` keeps it in the JSON."""
    import os
    import signal

    import alexnet.bench.data

    def prepare_figures(prepare, src, out, images):
        return {"prepare_workers": 16, "prepare_scaling": 13.0}

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM's handler did not stop the run")

    monkeypatch.setattr(alexnet.bench.data, "_time_prepare", prepare_figures)
    monkeypatch.setattr(alexnet.bench.data, "usual_pipeline", stopped)
    out = tmp_path / "data.json"
    assert main(["bench", "data", "--smoke", "--device", "cpu", "--json", str(out)]) == 124
    data = json.loads(out.read_text())["data"]
    assert (data["prepare_workers"], data["prepare_scaling"]) == (16, 13.0)


def test_the_compile_row_is_not_timed_eager_when_compiles_check_fails(monkeypatch):
    """The compile row used torch.compile without runtime.compile_model's gradient check;
    where that check fails, compile_model gives the eager net, which the row must not time
    under the compile label."""
    from alexnet.bench import train as bench_train

    called = []
    monkeypatch.setattr(bench_train, "compile_model",
                        lambda net, device: called.append(device) or net)
    with pytest.raises(RuntimeError, match="torch.compile gives wrong gradients here"):
        bench_train.warm_step("alexnet", torch.device("cpu"), 2, {"compile": True}, 0,
                              width=0.0625)
    assert called == [torch.device("cpu")]


def test_the_json_says_how_its_figures_were_measured(tmp_path, monkeypatch) -> None:
    """A --quick or --smoke run's figures, or a GPU's other than the goals' H100/H200, are no
    goal's: the JSON says so beside them (bench/goals.py reads it); before, nothing did, and
    bench pipeline's quick run, at the goals' batch of 256, read like a full run."""
    import alexnet.bench.model

    monkeypatch.setattr(alexnet.bench.model, "bench", lambda args: {"step_ms": 1.0})
    path = tmp_path / "model.json"
    assert main(["bench", "model", "--quick", "--device", "cpu", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["run"] == {"quick": True, "smoke": False, "gpu": None}
    assert main(["bench", "model", "--device", "cpu", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["run"] == {"quick": False, "smoke": False, "gpu": None}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert main(["bench", "model", "--device", "cuda", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["run"]["gpu"] == "NVIDIA H200"


def test_bench_model_gives_each_net_the_batch_its_loader_gives_it(tmp_path, monkeypatch) -> None:
    """The paper nets got 224 patches and padded them to 227 in every timed step (a copy of
    the batch that training does not make: the loaders write conv1's zeros), so the CPU goal's
    paper/tv-layout ratio counted it against the paper net; the torchvision layout gets 224."""
    import alexnet.bench.model
    from alexnet.model import conv1_pad

    sides = []
    step = alexnet.bench.model._train_step

    def train_step(model, x, y):
        sides.append(x.shape[-1])
        return step(model, x, y)

    monkeypatch.setattr(alexnet.bench.model, "_train_step", train_step)
    monkeypatch.setattr(alexnet.bench.model, "bench_parts", lambda device, quick, parts: parts)
    monkeypatch.setattr(alexnet.bench.model, "time_all", lambda fns, *args, **kwargs: {
        name: 1.0 for name in fns})
    args = type("Args", (), {"device": "cpu", "quick": True, "smoke": False, "figures": {}})()
    alexnet.bench.model.bench(args)
    padded = paper.CROP_SIZE + conv1_pad(paper.CROP_SIZE)
    assert sorted(sides) == [paper.CROP_SIZE, padded, padded]
    assert args.figures["threads_" + str(torch.get_num_threads())]["paper_over_torchvision"] == 1.0


def test_the_table_keeps_the_goals_timing_and_the_variants_take_fewer_steps(monkeypatch,
                                                                           capsys) -> None:
    """On CUDA (stood in for): every row of the table, issue 8's goal rows among them, at
    batch 256 with 5 warm-up and 20 timed steps; the variant rows with VARIANT_TIMING's (the
    run must fit gpu_check's limit), said in their header and the JSON."""
    import argparse

    import alexnet.bench.model
    import alexnet.evaluate
    from alexnet.bench import train as bench_train

    calls = []

    def time_setting(archs, device, batch, run_opts, warmup, steps, width=1.0):
        calls.append(("table", batch, warmup, steps))
        return {arch: 10.0 for arch in archs}

    monkeypatch.setattr(alexnet.evaluate, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    def warm_step(arch, device, batch, run_opts, warmup, width=1.0, **net_kwargs):
        calls.append(("made", batch))
        return lambda: None

    def time_all(fns, device, warmup, repeats, failed=None):  # the variants, in turns
        calls.append(("variant", tuple(fns), warmup, repeats))
        return {name: 0.1 for name in fns}

    monkeypatch.setattr(bench_train, "time_setting", time_setting)
    monkeypatch.setattr(bench_train, "warm_step", warm_step)
    monkeypatch.setattr(alexnet.bench.model, "time_all", time_all)
    monkeypatch.setattr(bench_train, "variants_for",
                        lambda device: [("a stand-in", {"stand_in": True}, None)])
    args = argparse.Namespace(device="cuda", quick=False, smoke=False, figures={})
    r = bench_train.bench(args)
    assert {c for c in calls if c[0] == "table"} == {("table", 256, 5, 20)}
    assert calls[-3:] == [("made", 256), ("made", 256), ("variant", ("default", "a stand-in"),
                                                         *bench_train.VARIANT_TIMING)]
    assert bench_train.VARIANT_TIMING[1] < 20
    assert r["variant_timing"] == dict(zip(("warmup", "steps"), bench_train.VARIANT_TIMING,
                                           strict=True))
    assert r["settings"][bench_train.BF16_CL]["alexnet"] == 10.0 and r["batch"] == 256
    warmup, steps = bench_train.VARIANT_TIMING
    assert f"whole step, {warmup} warm-up + {steps} timed steps" in capsys.readouterr().out
