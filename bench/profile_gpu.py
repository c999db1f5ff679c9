"""Where a training step spends its device time: torch.profiler's table of the paper net's
step beside torchvision's alexnet, as `alexnet bench train` runs them (bf16 + channels_last,
batch 256, synthetic batch on the device). A benchmark aid, not a test: it says which
kernels hold the gap between the two nets.

Usage: python bench/profile_gpu.py OUTDIR [--device cuda] [--batch 256] [--steps 3] [--compile]
Prints each net's per-step device time and its 30 costliest operations and kernels by their
own device time; writes the tables to OUTDIR/profile.txt (as each is made) and each net's
trace (Chrome format, gzip) to OUTDIR/trace_NET.json.gz (trace_NET_compiled.json.gz with
--compile, which also profiles the torch.compile'd steps).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from alexnet.bench import torchvision_problem
from alexnet.bench.train import BF16_CL, warm_step


def profile_net(arch: str, device: torch.device, batch: int, steps: int, width: float,
                out: Path, compiled: bool = False) -> str:
    """The profiler's table of `steps` warm steps of `arch` (torch.compile'd as training
    compiles it if `compiled`), its trace written beside it."""
    opts = {"amp": "bf16", "channels_last": True} if device.type == "cuda" else {}
    if compiled:
        opts["compile"] = True
    step = warm_step(arch, device, batch, opts, 3, width)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    trace = out / f"trace_{arch}{'_compiled' if compiled else ''}.json"
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as raw, gzip.open(f"{trace}.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    trace.unlink()
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    if device.type == "cuda":  # kernels and copies: an operator's device time is theirs
        total = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    else:
        total = sum(e.self_cpu_time_total for e in events)
    setting = (BF16_CL if device.type == "cuda" else "fp32") + ("+compile" if compiled else "")
    head = (f"== {arch} ({setting}, batch {batch}): "
            f"{total / steps / 1000:.2f} ms of {key} per step, {steps} steps")
    return head + "\n" + events.table(sort_by=key, row_limit=30, max_name_column_width=70)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0, help="the paper net's width")
    parser.add_argument("--compile", action="store_true",
                        help="profile the torch.compile'd steps too (a minute of compiling)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.outdir.mkdir(parents=True, exist_ok=True)
    archs = ["alexnet"] if torchvision_problem() else ["alexnet", "torchvision"]
    tables = []
    for compiled in (False, True) if args.compile else (False,):
        for arch in archs:
            table = profile_net(arch, device, args.batch, args.steps, args.width, args.outdir,
                                compiled)
            print(table, flush=True)
            tables.append(table)
            (args.outdir / "profile.txt").write_text("\n\n".join(tables) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
