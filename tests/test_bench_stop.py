"""`alexnet bench --json` when a time limit ends a run: every figure measured is on disk as
soon as it is measured (a SIGKILL leaves them), and SIGTERM ends the run with status 124 and
its figures even where its Stopped cannot end it: the main thread held in C code (on CUDA,
waiting in backward while the autograd thread compiles Triton kernels) or the Stopped
swallowed by code that catches everything. bench/gpu_check.sh's `bench train` step was
SIGKILLed 10 s after its SIGTERM with no JSON at all."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _stops import stand_in_bench

from alexnet.cli import main


def positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


# `alexnet bench train --smoke` as the program runs it, its variants ending in a stand-in that
# takes long (as a variant compiling its kernels on a GPU): it says when it has started
SLOW_VARIANT = """
import contextlib, sys, time
from pathlib import Path
import alexnet.bench.train as train
from alexnet.cli import main

started = Path(sys.argv.pop(1))
real = train.variants_for


@contextlib.contextmanager
def slow():
    started.write_text("the slow variant started")
    time.sleep(600)
    yield


train.variants_for = lambda device: real(device) + [("a slow stand-in", {}, slow)]
sys.exit(main())
"""


def test_a_killed_train_bench_leaves_every_row_it_timed(tmp_path: Path) -> None:
    """SIGKILL during a variant: --json holds the table and the variants before it (it was
    written only at the end, or at SIGTERM)."""
    out, started = tmp_path / "train.json", tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_VARIANT, str(started), "bench", "train",
                             "--smoke", "--device", "cpu", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), proc.stdout.read() if proc.poll() is not None else "timeout"
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    figures = json.loads(out.read_text())["train"]
    settings = figures["settings"]
    for name in ("fp32", "channels_last", "bf16", "bf16+channels_last"):
        assert positive(settings[name]["alexnet"]), name
    assert "needs CUDA" in settings["fp16+GradScaler"]["note"]
    variants = figures["variants"]
    assert set(variants) == {"default", "columns split (SplitAlexNet, one device)",
                             "conv1 blocks (ALEXNET_CONV1=blocks)"} | {
        f"columns {f} (all three layers)" for f in ("groups", "separate", "dense")}
    assert all(positive(v) for v in variants.values())
    beside = figures["variants_default"]  # the default, timed in turns with each variant
    assert set(beside) == set(variants) - {"default"}
    assert variants["default"] == max(beside.values())


# A stand-in benchmark that SIGTERM cannot end through its Stopped: `held` keeps the main
# thread in C code (the signal blocked there lands in another thread, as one does while the
# main thread waits in backward for CUDA's autograd thread), `swallowed` catches the Stopped
# and goes on in Python (as code that catches everything would)
NOT_STOPPING = """
import os, signal, sys, threading, time, types
import alexnet.bench
from alexnet.cli import main

how = sys.argv.pop(1)
alexnet.bench.GRACE_S = 1.0


def held(args):
    args.figures["row"] = alexnet.bench.measured(lambda: 1.0)
    if how == "held":  # SIGTERM comes from another thread once this one sleeps
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        time.sleep(120)
    else:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except BaseException:
            pass
        end = time.monotonic() + 120
        while time.monotonic() < end:
            sum(range(1000))
    args.figures["never reached"] = 2.0
    return args.figures


module = types.ModuleType("alexnet.bench.held")
module.bench = held
sys.modules["alexnet.bench.held"] = module
alexnet.bench.WHATS["held"] = "a stand-in"
sys.exit(main())
"""


@pytest.mark.parametrize("how", ["held", "swallowed"])
def test_a_run_that_sigterm_does_not_stop_is_ended_with_its_figures(how: str,
                                                                    tmp_path: Path) -> None:
    """GRACE_S after SIGTERM the watchdog says where each thread was, writes the figures with
    "stopped" and ends the process with 124: before it, the run went on until SIGKILL."""
    out = tmp_path / "figures.json"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", NOT_STOPPING, how, "bench", "held",
                           "--device", "cpu", "--json", str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 124, proc.stderr
    assert time.monotonic() - start < 45
    written = json.loads(out.read_text())
    assert written["held"] == {"row": 1.0}
    assert written["stopped"].startswith("SIGTERM during `alexnet bench held`")
    assert "was ended" in written["stopped"]
    assert "SIGTERM did not stop `alexnet bench held` within 1 s" in proc.stderr
    assert " in held" in proc.stderr  # faulthandler's line of the main thread's frame
    assert proc.stderr.rstrip().endswith(
        f"alexnet bench: stopped by SIGTERM during held; the figures so far are in {out}")


def test_a_sigterm_swallowed_on_its_way_up_stops_the_run_at_the_next_figure(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """The run stops (124) at the next figure instead of measuring it, its figures kept."""

    from alexnet.bench import measured

    def swallowing(args):
        args.figures["first"] = measured(lambda: 1.0)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        except BaseException:  # noqa: BLE001 - as code that catches everything would
            pass
        args.figures["second"] = measured(lambda: 2.0)
        return args.figures

    stand_in_bench(monkeypatch, "swallowing", swallowing)
    out = tmp_path / "figures.json"
    assert main(["bench", "swallowing", "--device", "cpu", "--json", str(out)]) == 124
    written = json.loads(out.read_text())
    assert written["swallowing"] == {"first": 1.0}
    assert written["stopped"].startswith("SIGTERM during `alexnet bench swallowing`")
    assert "stopped by SIGTERM during swallowing" in capsys.readouterr().err


def test_bench_model_stopped_in_its_column_rows_keeps_the_layers_timed(tmp_path, monkeypatch):
    """gpu_check's model step was stopped in its column rows: the layers timed before the
    stop are in the JSON (the rows were put there only once all three were timed)."""
    import alexnet.bench.model

    timed = alexnet.bench.model.time_all
    columns = []

    def time_all(fns, *args, **kwargs):
        if set(fns) == {"groups", "separate", "dense"}:
            columns.append(fns)
            if len(columns) == 2:  # conv4's row, after conv2's
                os.kill(os.getpid(), signal.SIGTERM)
        return timed(fns, *args, **kwargs)

    monkeypatch.setattr(alexnet.bench.model, "time_all", time_all)
    out = tmp_path / "model.json"
    assert main(["bench", "model", "--smoke", "--device", "cpu", "--json", str(out)]) == 124
    parts = json.loads(out.read_text())["model"]["parts"]
    assert list(parts["columns"]) == ["conv2"]
    assert all(positive(parts["columns"]["conv2"][f]) for f in ("groups", "separate", "dense"))
    assert positive(parts["lrn"]["conv1"]["relu"])
