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
    scaler = torch.amp.GradScaler(device.type, enabled=r.amp == "fp16")
    return Runtime(dist_info, device, dtype, scaler, r.channels_last, r.compile)


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
