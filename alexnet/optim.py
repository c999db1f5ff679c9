"""The paper's update rule and learning-rate schedule (section 5).

PaperSGD is the paper's exact rule, v <- m v - wd lr w - lr g ; w <- w + v, where lr sits
inside the velocity. torch.optim.SGD keeps lr outside it (b <- m b + g + wd w ; w <- w - lr b):
the two are the same while lr is constant (v = -lr b) but differ right after lr drops from
lr0 to lr1. Torch's next step is -lr1 (m b + g + wd w): the accumulated velocity shrinks by
the factor at once. The paper's is m v - lr1 (g + wd w) with v = -lr0 b still carrying the
steps taken at lr0: paper minus torch = m (1 - lr1 / lr0) v = -m (lr0 - lr1) b, and the
old momentum decays away at rate m over the following steps.

cuda-convnet and Caffe apply no weight decay to biases, and the paper's formula names only
the weights w: `param_groups` gives biases weight_decay 0 unless asked otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from alexnet import paper


class PaperSGD(torch.optim.Optimizer):
    """v <- momentum v - weight_decay lr w - lr grad ; w <- w + v (section 5), per group."""

    def __init__(self, params: Iterable[Any], lr: float = paper.BASE_LR,
                 momentum: float = paper.MOMENTUM,
                 weight_decay: float = paper.WEIGHT_DECAY) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"PaperSGD: lr={lr}, momentum={momentum}, "
                             f"weight_decay={weight_decay} out of range")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update of every parameter that has a gradient; velocities start at zero."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            # one multi-tensor kernel per operation for the parameters of a group that share a
            # device and dtype (split_columns puts the columns on two GPUs); the same
            # arithmetic as the per-parameter ops
            alike: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for w in group["params"]:
                if w.grad is not None:
                    alike.setdefault((w.device, w.dtype), []).append(w)
            for ws in alike.values():
                vs = [self._velocity(w) for w in ws]
                torch._foreach_mul_(vs, m)
                if wd != 0:
                    torch._foreach_add_(vs, ws, alpha=-wd * lr)
                torch._foreach_add_(vs, [w.grad for w in ws], alpha=-lr)
                torch._foreach_add_(ws, vs)
        return loss

    def _velocity(self, w: torch.Tensor) -> torch.Tensor:
        """The velocity of `w`, zero (in w's memory format) at its first update."""
        state = self.state[w]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(w, memory_format=torch.preserve_format)
        return state["velocity"]


def param_groups(model: nn.Module, bias_decay: bool = False) -> list[dict[str, Any]]:
    """Optimizer groups: weights with the optimizer's weight decay, biases with none.

    With `bias_decay` every parameter is in one group (torch's usual behaviour).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if bias_decay:
        return [{"params": [p for _, p in params]}]
    weights = [p for n, p in params if not n.endswith("bias")]
    biases = [p for n, p in params if n.endswith("bias")]
    groups: list[dict[str, Any]] = [{"params": weights}]
    if biases:
        groups.append({"params": biases, "weight_decay": 0.0})
    return groups


class PlateauSchedule:
    """Divide lr by `factor` when validation error stops improving (section 5), at most
    `max_drops` times.

    An epoch improves when its error is below the best so far by more than `threshold`
    (absolute; 0.001 is a tenth of a percentage point). After `patience` consecutive epochs
    without improvement every group's lr is divided by `factor` and the count restarts.
    The paper says only "stopped improving"; patience 3 and threshold 0.001 are our choice.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float = paper.LR_DROP_FACTOR,
                 patience: int = 3, threshold: float = 0.001,
                 max_drops: int = paper.MAX_LR_DROPS) -> None:
        if factor <= 1 or patience < 0 or threshold < 0 or max_drops < 0:
            raise ValueError(f"PlateauSchedule: factor={factor}, patience={patience}, "
                             f"threshold={threshold}, max_drops={max_drops} out of range")
        self.optimizer, self.factor = optimizer, factor
        self.patience, self.threshold, self.max_drops = patience, threshold, max_drops
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops = 0

    def step(self, val_error: float) -> bool:
        """Record one epoch's validation error; True when lr was divided."""
        if val_error < self.best - self.threshold:
            self.best, self.bad_epochs = float(val_error), 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience or self.drops >= self.max_drops:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] /= self.factor
        self.drops += 1
        self.bad_epochs = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        """The counters (the lr itself lives in the optimizer's state_dict)."""
        return {"best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters written by `state_dict`."""
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.drops = int(state["drops"])
