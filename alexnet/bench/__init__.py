"""`alexnet bench WHAT`: benchmarks that report speed as ratios against a baseline run beside.

Each stage owns its benchmark module (alexnet/bench/<what>.py) with a `bench(args) -> dict`
function that prints its figures and returns them; `--json FILE` writes them out after each
benchmark, beside a "run" entry saying how they were measured (`run_mode`: --quick, --smoke,
the GPU's name). A benchmark may also fill `args.figures` (a dict, the one that becomes its entry)
as it goes: when a time limit stops the run with SIGTERM (`timeout`, as bench/gpu_check.sh
runs it), the file gets what it holds by then, with "stopped" saying so, and the exit status
is 124 (a second SIGTERM changes nothing); after Ctrl-C, "stopped" says "interrupted (Ctrl-C)".
`--smoke` runs every line with the least work (the tests use it): implies `--quick`, a paper
net of 1/8 width (SMOKE_WIDTH) without the torchvision layout beside it, a handful of images.
Its figures say nothing about speed.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alexnet.atomic import check_output, ensure_folder, read_json_object, write_json
from alexnet.errors import UserError, one_line

SMOKE_WIDTH = 0.125  # --smoke: the paper net at 1/8 width (not a paper number)

WHATS = {
    "model": "LRN cost and the paper net's training step beside the torchvision layout",
    "data": "prepare and the training loader beside an ImageFolder pipeline",
    "train": "training images/s in fp32 and with each speed option",
    "evaluate": "evaluation images/s, centre and 10-crop",
    "pipeline": "training from a raw and a jpeg store beside the model alone and the loader alone",
}


def torchvision_problem() -> str | None:
    """Why torchvision cannot be used here, None when it imports. One installed for another
    torch fails its import with RuntimeError ("operator torchvision::nms does not exist"), not
    ImportError: the benchmarks then run without it, as where it is absent, and say why."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return "torchvision is not installed"
    except Exception as err:  # noqa: BLE001 - any failure of its import
        return f"torchvision does not import ({type(err).__name__}: {one_line(err, 80)})"
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet bench`."""
    parser.add_argument("what", nargs="*", default=[],
                        help="which benchmarks (default: all): " + ", ".join(WHATS))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="write all figures to FILE")
    parser.add_argument("--smoke", action="store_true",
                        help="least work that runs every line (tests; figures meaningless)")


class Stopped(BaseException):
    """SIGTERM arrived: the run stops where it is and keeps the figures it has. Not an
    Exception, so that code catching Exception (torch.compile's tracing, the Triton kernels'
    first-use checks) neither swallows nor wraps it."""


_SIGTERM = threading.Event()  # set by the handler: a Stopped wrapped on its way up still counts


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM's handler during the run: further SIGTERMs are ignored (`timeout` and a process
    group's signal may come twice; the second must not cut the figures being written, nor
    turn 124 into 143), and Stopped is raised where the benchmark is."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _SIGTERM.set()
    raise Stopped


T = TypeVar("T")


def measured(measure: Callable[[], T]) -> T | dict[str, str]:
    """measure(), or {"error": its one-line error} where it raises: a figure that fails (a
    row that has not run on a GPU yet) must not take the benchmark's other figures with it.
    After SIGTERM the error goes on up instead: it is the Stopped that the code it hit
    wrapped in an exception of its own (torch.compile, a CUDA graph's capture), and the run
    must stop and write its figures before the time limit's SIGKILL."""
    try:
        return measure()
    except Exception as err:  # noqa: BLE001 - any failure: said in its place, the run goes on
        if _SIGTERM.is_set():
            raise
        return {"error": f"{type(err).__name__}: {one_line(err)}"}


def is_bench_json(path: Path) -> bool:
    """Whether `path` holds figures an earlier `alexnet bench --json` wrote (what --json may
    replace): an object keyed by benchmark names (and its run, stopped and failed notes)."""
    data = read_json_object(path)
    return bool(data) and set(data) <= set(WHATS) | {"run", "failed", "stopped"}


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """How this run measures, written beside its figures: --quick and --smoke (short runs, whose
    figures are no goal's) and the name of the GPU when the device is one (the goals of issues
    8 and 9 are an H100's or H200's). bench/goals.py reads it."""
    import torch

    from alexnet.evaluate import resolve_device

    device = resolve_device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"quick": bool(args.quick), "smoke": bool(args.smoke), "gpu": gpu}


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmarks one after the other (exit status 124 when SIGTERM stopped
    them, like `timeout`'s)."""
    unknown = [w for w in args.what if w not in WHATS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(WHATS)}")
    if args.json:  # refused before the benchmarks, not after: unwritable, or another file
        check_output(args.json, "benchmark JSON", is_bench_json, "--json")
        ensure_folder(args.json.parent, "folder for --json")
    args.quick = args.quick or args.smoke
    results: dict[str, Any] = {"run": run_mode(args)}
    _SIGTERM.clear()
    main_thread = threading.current_thread() is threading.main_thread()  # signals need it
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        for what in args.what or list(WHATS):
            module = importlib.import_module(f"alexnet.bench.{what}")
            print(f"== alexnet bench {what}: {WHATS[what]}")
            args.figures = results[what] = {}
            results[what] = module.bench(args)
            if args.json:  # after each benchmark: a run cut short keeps what it measured
                write_json(args.json, results, indent=2)
    except BaseException as err:
        keep = args.json and any(results.get(w) for w in WHATS)  # none: the earlier file stays
        if not _SIGTERM.is_set():
            if keep:  # the figures measured before Ctrl-C or a failure are kept too
                results.update(_unfinished(what, err))
                write_json(args.json, results, indent=2)
            raise
        results["stopped"] = (f"SIGTERM during `alexnet bench {what}`: its entry holds the "
                              "figures it had reached, the benchmarks after it none")
        print(f"alexnet bench: stopped by SIGTERM during {what}"
              + (f"; the figures so far are in {args.json}" if keep else ""),
              file=sys.stderr)
        if keep:
            write_json(args.json, results, indent=2)
        return 124
    finally:
        if main_thread and not _SIGTERM.is_set():  # after one, SIGTERM stays ignored while
            signal.signal(signal.SIGTERM, previous)  # the run ends; cli.main restores it
        _SIGTERM.clear()  # `measured` outside a run sees no SIGTERM of an earlier one
    return 0


def _unfinished(what: str, err: BaseException) -> dict[str, str]:
    """The JSON's note when a benchmark ended early without SIGTERM: "stopped" for
    Ctrl-C (not a failure of the benchmark), "failed" with the error for anything else."""
    rest = "its entry holds the figures it had reached, the benchmarks after it none"
    if isinstance(err, KeyboardInterrupt):
        return {"stopped": f"interrupted (Ctrl-C) during `alexnet bench {what}`: {rest}"}
    return {"failed": f"`alexnet bench {what}` failed: {type(err).__name__}: {one_line(err)}; "
                      f"{rest}"}
