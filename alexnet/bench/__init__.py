"""`alexnet bench WHAT`: benchmarks that report speed as ratios against a baseline run beside.

Each stage owns its benchmark module (alexnet/bench/<what>.py) with a `bench(args) -> dict`
function that prints its figures and returns them; `--json FILE` holds them beside a "run"
entry saying how they were measured (`run_mode`: --quick, --smoke, the GPU's name). A benchmark
fills `args.figures` (a dict, the one that becomes its entry) as it goes and calls
`keep_figures` after each row: the file is rewritten then (atomically), so that a run killed
outright (SIGKILL) leaves every figure it had measured. When a time limit stops the run with
SIGTERM (`timeout`, as bench/gpu_check.sh runs it), the file gets what it holds by then, with
"stopped" saying so, and the exit status is 124 (a second SIGTERM changes nothing); after
Ctrl-C, "stopped" says "interrupted (Ctrl-C)" (after an error, "failed" says which). Each
such stop says on stderr which file holds the figures so far. A stop that does not end the
run within GRACE_S seconds (the main thread held in C code, as while CUDA's autograd thread
compiles Triton kernels, or its Stopped swallowed by code that catches everything) is ended
by a watchdog thread: it prints where every thread was, writes the figures and exits 124.
`--smoke` runs every line with the least work (the tests use it): implies `--quick`, a paper
net of 1/8 width (SMOKE_WIDTH) without the torchvision layout beside it, a handful of images.
Its figures say nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alexnet.atomic import check_output, ensure_folder, read_json_object, write_json
from alexnet.errors import UserError, one_line

SMOKE_WIDTH = 0.125  # --smoke: the paper net at 1/8 width (not a paper number)
# After SIGTERM, the seconds the run has to stop before the watchdog ends it: the JSON write
# and the exit then fit within bench/gpu_check.sh's `timeout -k 10` (SIGKILL 10 s after)
GRACE_S = 5.0

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
# The run in progress (`run`): "json" (its --json path or None), "results" (the figures),
# "what" (the benchmark running), "written" (the JSON text last written); empty outside a run
_RUN: dict[str, Any] = {}
_WRITING = threading.Lock()  # one writer of --json at a time: the run, or the watchdog


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
    must stop and write its figures before the time limit's SIGKILL. Before measuring, the
    figures measured so far are kept (`keep_figures`), and a SIGTERM whose Stopped was
    swallowed on its way up (by code that catches everything) stops the run here."""
    if _SIGTERM.is_set():
        raise Stopped
    keep_figures()
    try:
        return measure()
    except Exception as err:  # noqa: BLE001 - any failure: said in its place, the run goes on
        if _SIGTERM.is_set():
            raise
        return {"error": f"{type(err).__name__}: {one_line(err)}"}


def keep_figures() -> None:
    """Rewrite the run's --json now with every figure measured so far (the benchmarks call it
    after each row; atomic, so a SIGKILL at any moment leaves this file or the one before),
    once some benchmark has a figure (before that, an earlier file stays). Nothing outside
    `run` or without --json."""
    results = _RUN.get("results")
    if _RUN.get("json") is None or not any(results.get(w) for w in WHATS):
        return
    try:
        text = json.dumps(results)
    except (TypeError, ValueError):  # a value that is no JSON (yet): the end's write says so
        return
    _write_figures(text)


def _write_figures(text: str | None = None) -> None:
    """Write the run's figures to its --json, unless they are what was last written (`text`:
    them as compact JSON, when the caller has it)."""
    text = json.dumps(_RUN["results"]) if text is None else text
    with _WRITING:
        if text != _RUN.get("written"):
            write_json(_RUN["json"], _RUN["results"], indent=2)
            _RUN["written"] = text


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
    whats = args.what or list(WHATS)
    what, disarm = whats[0], None
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        _RUN.update(json=args.json, results=results, what=what, written=None)
        disarm = _watchdog() if main_thread else None
        for what in whats:
            _RUN["what"] = what
            module = importlib.import_module(f"alexnet.bench.{what}")
            print(f"== alexnet bench {what}: {WHATS[what]}")
            args.figures = results[what] = {}
            results[what] = module.bench(args)
            if args.json:  # after each benchmark, as after each of its rows
                _write_figures()
    except BaseException as err:
        keep = args.json and any(results.get(w) for w in WHATS)  # none: the earlier file stays
        if not _SIGTERM.is_set():
            if keep:  # the figures measured before Ctrl-C or a failure are kept too
                results.update(_unfinished(what, err))
                _write_figures()
                how = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                print(f"alexnet bench: {how} during {what}; the figures so far are in "
                      f"{args.json}", file=sys.stderr)
            raise
        results["stopped"] = (f"SIGTERM during `alexnet bench {what}`: its entry holds the "
                              "figures it had reached, the benchmarks after it none")
        print(f"alexnet bench: stopped by SIGTERM during {what}"
              + (f"; the figures so far are in {args.json}" if keep else ""),
              file=sys.stderr)
        if keep:
            _write_figures()
        return 124
    finally:
        if disarm is not None:
            disarm()
        if main_thread and not _SIGTERM.is_set():  # after one, SIGTERM stays ignored while
            signal.signal(signal.SIGTERM, previous)  # the run ends; cli.main restores it
        _SIGTERM.clear()  # `measured` outside a run sees no SIGTERM of an earlier one
        _RUN.clear()
    return 0


def _watchdog() -> Callable[[], None]:
    """Arm the stop's watchdog, and return what disarms it: a thread woken by SIGTERM itself,
    through the interpreter's signal wakeup fd (written by the signal's C-level handler in
    whichever thread it lands, also while the main thread is held in C code and cannot run
    `_stop`), that gives the run GRACE_S seconds to stop, then ends it (`_give_up`)."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)  # the handler's write must never block
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    done = threading.Event()
    thread = threading.Thread(target=_watch, args=(reader, done), daemon=True,
                              name="alexnet-bench-stop")
    thread.start()

    def disarm() -> None:
        done.set()
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(OSError):
            writer.send(b"\0")  # wakes the thread if it is still waiting for a signal
        thread.join(1.0)
        reader.close()
        writer.close()

    return disarm


def _watch(reader: socket.socket, done: threading.Event) -> None:
    """The watchdog's thread: wait for SIGTERM's byte on `reader` (other signals' bytes
    pass), then GRACE_S seconds for the run to end (`done`); past them, `_give_up`."""
    while True:
        try:
            got = reader.recv(64)
        except OSError:
            return
        if done.is_set() or not got:
            return
        if signal.SIGTERM in got:
            break
    if not done.wait(GRACE_S):
        _give_up()


def _give_up() -> None:
    """SIGTERM has not ended the run within GRACE_S seconds: say where every thread was (the
    next run's log then names what held the stop), write the figures reached with "stopped",
    and end the process with status 124, before a time limit's SIGKILL would."""
    what, path = _RUN.get("what"), _RUN.get("json")
    _say(f"alexnet bench: SIGTERM did not stop `alexnet bench {what}` within {GRACE_S:g} s; "
         "where each thread was:")
    with contextlib.suppress(OSError, ValueError):
        faulthandler.dump_traceback(file=2, all_threads=True)
    wrote = False
    if path is not None and _WRITING.acquire(timeout=1.0):
        try:
            figures = _snapshot()
            if figures and any(figures.get(w) for w in WHATS):
                figures["stopped"] = (
                    f"SIGTERM during `alexnet bench {what}`: its entry holds the figures it had "
                    f"reached, the benchmarks after it none; the run had not stopped "
                    f"{GRACE_S:g} s later and was ended (where it was: the log)")
                write_json(path, figures, indent=2)
                wrote = True
        except Exception:  # noqa: BLE001 - the file written after the last row stays
            pass
        finally:
            _WRITING.release()
    _say(f"alexnet bench: stopped by SIGTERM during {what}"
         + (f"; the figures so far are in {path}" if wrote else ""))
    os._exit(124)


def _forget_wakeup_fd() -> None:
    """In a process forked during a run: no signal wakeup fd. It would share the run's, and a
    SIGTERM to this process alone (a pool stopping its workers) would arm the run's watchdog."""
    if _RUN:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_wakeup_fd)


def _snapshot() -> dict[str, Any] | None:
    """A copy of the run's figures for the watchdog: taken whole (the C encoder holds the
    interpreter meanwhile, so a main thread still running cannot change them halfway), else
    the ones last written."""
    try:
        return json.loads(json.dumps(_RUN["results"]))
    except (TypeError, ValueError, RuntimeError):
        written = _RUN.get("written")
        return json.loads(written) if written else None


def _say(line: str) -> None:
    """`line` on stderr, straight to its file descriptor: the main thread may hold the lock
    of sys.stderr's buffer."""
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode("utf-8", "replace"))


def _unfinished(what: str, err: BaseException) -> dict[str, str]:
    """The JSON's note when a benchmark ended early without SIGTERM: "stopped" for
    Ctrl-C (not a failure of the benchmark), "failed" with the error for anything else."""
    rest = "its entry holds the figures it had reached, the benchmarks after it none"
    if isinstance(err, KeyboardInterrupt):
        return {"stopped": f"interrupted (Ctrl-C) during `alexnet bench {what}`: {rest}"}
    return {"failed": f"`alexnet bench {what}` failed: {type(err).__name__}: {one_line(err)}; "
                      f"{rest}"}
