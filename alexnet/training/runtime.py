"""The runtime of a training run: device, autocast precision, loss scaling, memory format,
torch.compile and the seeds, decided in one place."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

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
    """Seed torch (CPU and CUDA), numpy and python: the initialisation and dropout draws."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)

