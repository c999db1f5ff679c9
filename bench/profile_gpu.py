"""Where a training step spends its device time: torch.profiler's table of the paper net's
step beside torchvision's alexnet, as `alexnet bench train` runs them (bf16 + channels_last,
batch 256, synthetic batch on the device). A benchmark aid, not a test: it says which
kernels hold the gap between the two nets.

Usage: python bench/profile_gpu.py OUTDIR [--device cuda] [--batch 256] [--steps 3]
Prints each net's per-step device time and its 30 costliest operations and kernels by their
own device time; writes the tables to OUTDIR/profile.txt and each net's trace (Chrome
format, gzip) to OUTDIR/trace_NET.json.gz.
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
                out: Path) -> str:
    """The profiler's table of `steps` warm steps of `arch`, its trace written beside it."""
    opts = {"amp": "bf16", "channels_last": True} if device.type == "cuda" else {}
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
    trace = out / f"trace_{arch}.json"
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
    head = (f"== {arch} ({BF16_CL if opts else 'fp32'}, batch {batch}): "
            f"{total / steps / 1000:.2f} ms of {key} per step, {steps} steps")
    return head + "\n" + events.table(sort_by=key, row_limit=30, max_name_column_width=70)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0, help="the paper net's width")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.outdir.mkdir(parents=True, exist_ok=True)
    archs = ["alexnet"] if torchvision_problem() else ["alexnet", "torchvision"]
    tables = []
    for arch in archs:
        table = profile_net(arch, device, args.batch, args.steps, args.width, args.outdir)
        print(table, flush=True)
        tables.append(table)
    (args.outdir / "profile.txt").write_text("\n\n".join(tables) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
