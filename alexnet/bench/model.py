"""`alexnet bench model`: the paper net's training step beside the torchvision layout.

Images/s of one training step (forward, backward, PaperSGD step) for the paper's net, the
same net without LRN, and torchvision's layout, on the same batch in the same run: warm-up
excluded, the variants taking turns, fastest of several repeats. Also the share of the paper
step spent in LRN (forward and backward on the real conv1 and conv2 activation shapes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from alexnet import paper
from alexnet.model import AlexNet, build_model, conv1_pad, lrn
from alexnet.optim import PaperSGD, param_groups


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_all(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int,
              repeats: int) -> dict[str, float]:
    """Fastest seconds of one call of each fn: the fns take turns (so a busy machine slows
    them alike), `warmup` untimed rounds first; the minimum is the least disturbed run."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def _train_step(model: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor) -> Callable[[], None]:
    opt = PaperSGD(param_groups(model))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _lrn_step(shapes: list[tuple[int, ...]], groups: int,
              device: torch.device) -> Callable[[], None]:
    inputs = [torch.rand(s, device=device).mul_(50).requires_grad_() for s in shapes]
    grads = [torch.randn(s, device=device) for s in shapes]

    def step() -> None:
        for a, g in zip(inputs, grads, strict=True):
            lrn(a, groups=groups).backward(g)

    return step


def _report(seconds: dict[str, float], batch: int) -> dict:
    """Images/s, the paper/torchvision ratio and LRN's share of the paper step, printed."""
    lrn_s, step = seconds["lrn"], seconds["paper"]
    result = {"images_per_s": {k: batch / v for k, v in seconds.items() if k != "lrn"},
              "lrn_seconds": lrn_s, "step_seconds": step,
              "paper_over_torchvision": seconds["torchvision layout"] / step,
              "paper_over_no_lrn": seconds["paper, no LRN"] / step,
              "lrn_share_of_step": lrn_s / step}
    for k, v in result["images_per_s"].items():
        print(f"  {k:20s} {v:8.1f} images/s")
    print(f"  paper / torchvision layout: {result['paper_over_torchvision']:.2f}x, "
          f"paper / no LRN: {result['paper_over_no_lrn']:.2f}x")
    print(f"  LRN fwd+bwd alone (conv1 and conv2 shapes): {lrn_s * 1e3:.1f} ms, "
          f"{100 * result['lrn_share_of_step']:.1f}% of the paper step")
    return result


def bench(args: argparse.Namespace) -> dict:
    """Print and return images/s of each net's training step and LRN's share of the step.

    On a CPU with several threads it also measures with one thread: on a shared machine,
    waits for a descheduled thread can dominate short operations.
    """
    device = _device(args.device)
    batch = 8 if args.quick else 32
    warmup, repeats = (1, 2) if args.quick else (2, 6)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, paper.CROP_SIZE, paper.CROP_SIZE, device=device) * 50
    y = torch.randint(0, paper.NUM_CLASSES, (batch,), device=device)
    nets = {"paper": AlexNet(), "paper, no LRN": AlexNet(lrn=False),
            "torchvision layout": build_model("alexnet-tv")}
    side = AlexNet.crop_size + conv1_pad(AlexNet.crop_size)
    s1 = (side - paper.CONV1[1]) // paper.CONV1[2] + 1  # 55
    s2 = (s1 - paper.POOL_SIZE) // paper.POOL_STRIDE + 1  # 27
    shapes = [(batch, paper.CONV1[0], s1, s1), (batch, paper.CONV2[0], s2, s2)]
    fns = {name: _train_step(net.to(device).train(), x, y) for name, net in nets.items()}
    fns["lrn"] = _lrn_step(shapes, paper.COLUMNS, device)
    threads = torch.get_num_threads()
    settings = [threads] + ([1] if device.type == "cpu" and threads > 1 and not args.quick
                            else [])
    result: dict = {"device": str(device), "batch": batch}
    try:
        for n in settings:
            torch.set_num_threads(n)
            print(f"device {device}, batch {batch}, {n} thread(s), fastest of {repeats} "
                  f"interleaved repeats after {warmup} warm-up rounds")
            result[f"threads_{n}"] = _report(_time_all(fns, device, warmup, repeats), batch)
    finally:
        torch.set_num_threads(threads)
    return result
