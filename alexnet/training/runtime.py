"""The runtime of a training run: device, autocast precision, loss scaling, memory format,
torch.compile and the seeds, decided in one place.

Every rank draws the initialisation from `seed_everything`'s stream (the same weights on every
rank and in one process); then each rank gets its own stream for the draws of the training
step (dropout: each training case its own mask, section 4.2), rank 0 going on with the one it
has, so that one process and rank 0 draw what they always did (`seed_rank`, `restore_rng`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet import checkpoint
from alexnet.config import AMP_CHOICES, Config
from alexnet.distributed import DistInfo
from alexnet.errors import UserError


@dataclass
class Runtime:
    """Device, precision and compile, decided in one place (`setup_runtime`)."""

    dist: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    channels_last: bool
    compile: bool
    cuda_graph: bool = False  # each step replayed from a CUDA graph (training/graphs.py)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of every forward pass (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup_runtime(config: Config, dist_info: DistInfo) -> Runtime:
    """Autocast dtype and GradScaler (fp16 only), memory format and compile for this device."""
    r = config.run
    device = dist_info.device
    if r.amp not in AMP_CHOICES:
        raise UserError(f"run.amp {r.amp!r}: choose from {', '.join(AMP_CHOICES)}")
    if r.amp == "fp16" and device.type != "cuda":
        raise UserError("run.amp fp16 needs a CUDA device (loss scaling); use bf16 on the CPU")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[r.amp]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if r.cuda_graph and device.type != "cuda":
        raise UserError(f"run.cuda_graph needs a CUDA device, not {device}; leave it off")
    if r.cuda_graph and (dist_info.world_size > 1 or dist_info.column_devices is not None):
        raise UserError("run.cuda_graph captures the step of one process on one device; "
                        "leave it off under torchrun and with model.split_columns")
    scaler = torch.amp.GradScaler(device.type, enabled=r.amp == "fp16")
    return Runtime(dist_info, device, dtype, scaler, r.channels_last, r.compile, r.cuda_graph)


# Whether inductor's compiled gradients were checked on each device type (`compile_model`).
_COMPILE_CHECKED: dict[str, bool] = {}


def compile_model(net: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile(net), once a tiny conv-ReLU-max-pool-linear step compiled on `device`
    gives eager's gradients (`compiled_gradients_agree`). PyTorch 2.13's inductor on the CPU
    gives that conv exactly zero gradients (conv1-conv5 of the paper net never learned) unless
    its layout optimisation is off: where the check fails it is turned off and checked again;
    where that fails too the net runs eager, with a one-line warning."""
    import torch._inductor.config as inductor

    kind = device.type
    if kind not in _COMPILE_CHECKED:
        ok = compiled_gradients_agree(device)
        if not ok and inductor.layout_optimization:
            inductor.layout_optimization = False
            ok = compiled_gradients_agree(device)
            if ok:
                print(f"alexnet: note: torch.compile on {kind} gives wrong gradients with "
                      "inductor's layout optimisation here; compiling without it", flush=True)
        if not ok:
            print(f"alexnet: warning: torch.compile on {kind} gives wrong gradients here (a "
                  "conv-ReLU-pool check against eager); training without it", flush=True)
        _COMPILE_CHECKED[kind] = ok
    return torch.compile(net) if _COMPILE_CHECKED[kind] else net


def compiled_gradients_agree(device: torch.device) -> bool:
    """Whether a compiled Conv2d-ReLU-MaxPool2d(3, 2)-Linear step on `device` gives the eager
    gradients of every parameter (fp32 rounding apart); drawn from its own generator, so that
    the run's streams are untouched."""
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the layers' own initialisation draws
        tiny = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
                             nn.Linear(8 * 7 * 7, 10))
    with torch.no_grad():
        for p in tiny.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    tiny = tiny.to(device)
    x = torch.randn(4, 3, 17, 17, generator=generator).to(device)
    y = torch.arange(4, device=device)

    def grads(model: nn.Module) -> list[torch.Tensor]:
        tiny.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        return [p.grad.detach().clone() for p in tiny.parameters()]

    eager = grads(tiny)
    try:
        compiled = grads(torch.compile(tiny))
    finally:
        torch._dynamo.reset()
    return all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(eager, compiled,
                                                                          strict=True))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python: the initialisation (every rank alike) and
    the dropout of one process or rank 0 (`seed_rank`)."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


RANK_STREAMS = 2  # derive_seed's domain tag of the ranks' own streams (the loader's: 0 and 1)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank `rank`'s own stream of step draws, started at optimizer step `step`."""
    from alexnet.data.loader import derive_seed

    return derive_seed(RANK_STREAMS, seed, rank, step)


def seed_rank(seed: int, rank: int) -> None:
    """Give this rank its own dropout masks (torch's CPU and CUDA generators), once the
    initialisation is drawn: rank 0 goes on with `seed_everything`'s stream, rank r > 0 starts
    one from (seed, r). The loader's augmentation has its own per-rank generators."""
    if rank:
        torch.manual_seed(rank_seed(seed, rank))


def restore_rng(ckpt: dict[str, Any], rank: int, seed: int, step: int) -> None:
    """Restore this rank's generators from a checkpoint: its own saved states (`rank_rng`, one
    per rank of the saved run; `rng`, rank 0's, alone in a one-process or older checkpoint).
    A rank the saved run lacked takes rank 0's numpy and python states and a fresh torch
    stream from (seed, rank, step): still its own, and the same on every such resume."""
    saved = ckpt.get("rank_rng") or [ckpt["rng"]]
    if rank < len(saved):
        checkpoint.set_rng_state(saved[rank])
        return
    checkpoint.set_rng_state(saved[0])
    torch.manual_seed(rank_seed(seed, rank, step))
