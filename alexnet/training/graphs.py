"""The training step replayed from a CUDA graph (run.cuda_graph): the host launches one graph
per step instead of one kernel at a time, so a step no longer waits on Python. On one H200
(2026-11-29, bf16 + channels_last, batch 256, `alexnet bench train`) the paper net's step ran
at 1.06x the eager step this way (docs/model.md, "CUDA graphs").

`graphed_step` captures `train_step` on a static batch (PyTorch's whole-network recipe);
`GraphedStep` is what the training loop calls: it refills the static batch with each new one
and captures again when the lr changes (PaperSGD reads it as a number, which the capture
holds; so are momentum and weight decay) or the batch's shape does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from alexnet.training.runtime import Runtime

WARMUP = 3  # eager steps before a capture (PyTorch's recipe: on a side stream), then undone


def graphed_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 optimizer: torch.optim.Optimizer, rt: Runtime,
                 warmup: int = WARMUP) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """train_step on the static CUDA batch (x, y) captured once in a CUDA graph: returns a
    function that replays it, giving train_step's (loss, wrong), overwritten by each replay.

    PyTorch's whole-network recipe: `warmup` steps on a side stream, grads set to None (the
    captured backward allocates them in the graph's pool), capture. The warm-up is then undone
    (parameters, optimizer state, the CUDA RNG; state it created is zeroed, PaperSGD's start),
    so the first replay is train_step's next step. lr is captured as a number; refill x and y
    in place, and step the model only by replays (an eager train_step would drop the graph's
    grads). Not with fp16: GradScaler's step syncs with the host, which a capture forbids.
    """
    from alexnet.training.loop import train_step

    if x.device.type != "cuda":
        raise ValueError(f"graphed_step: CUDA graphs need CUDA tensors, not {x.device}")
    if rt.scaler.is_enabled():
        raise ValueError("graphed_step: GradScaler's step syncs with the host; use bf16 or fp32")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [p.detach().clone() for p in params]
    saved_state = {(i, key): value.clone() for i, p in enumerate(params)
                   for key, value in optimizer.state.get(p, {}).items() if torch.is_tensor(value)}
    rng = torch.cuda.get_rng_state(x.device)
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            train_step(model, x, y, optimizer, rt)
    torch.cuda.current_stream(x.device).wait_stream(side)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    # thread_local: read-ahead threads of a loader may work on their own streams meanwhile
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = train_step(model, x, y, optimizer, rt)
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(saved[i])
            for key, value in optimizer.state[p].items():
                if torch.is_tensor(value) and (i, key) in saved_state:
                    value.copy_(saved_state[i, key])
                elif torch.is_tensor(value):
                    value.zero_()
    torch.cuda.set_rng_state(rng, x.device)

    def replay() -> tuple[torch.Tensor, torch.Tensor]:
        graph.replay()
        return out

    return replay


class GraphedStep:
    """`train_step(model, x, y, optimizer, rt)` for batch after batch, each replayed from one
    CUDA graph: the batch is copied into the graph's static input first (not when it is that
    same tensor again), and the step is captured afresh (`graphed_step`: its warm-up is
    undone, so every call is the eager step's next step) on the first call, when any group's
    lr (or other number: momentum, weight decay) has changed since the capture, and when the
    batch's shape, dtype or memory format does. The (loss, wrong) it returns are
    overwritten by the next call: use them first.

    `capture` (default `graphed_step`) makes the replay (tests give a stand-in: CUDA graphs
    need CUDA)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime,
                 capture: Callable[..., Callable[[], tuple[torch.Tensor, torch.Tensor]]]
                 | None = None) -> None:
        self.model, self.optimizer, self.rt, self.capture = model, optimizer, rt, capture
        self.captures = 0  # how many times the step was captured
        self._replay: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
        self._key: tuple | None = None
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step on (x, y): (mean loss, number wrong), as train_step gives them."""
        key = (_numbers(self.optimizer), *((t.shape, t.dtype, t.stride()) for t in (x, y)))
        if self._replay is None or key != self._key:
            self._replay = self._inputs = None  # the old graph's memory goes first
            self._inputs = (x.clone(memory_format=torch.preserve_format), y.clone())
            capture = self.capture or graphed_step
            self._replay = capture(self.model, *self._inputs, self.optimizer, self.rt)
            self._key, self._last = key, (x, y)
            self.captures += 1
        elif self._last is None or self._last[0] is not x or self._last[1] is not y:
            self._inputs[0].copy_(x)
            self._inputs[1].copy_(y)
            self._last = (x, y)
        return self._replay()


def _numbers(optimizer: torch.optim.Optimizer) -> tuple:
    """Each parameter group's numbers (lr, momentum, weight decay...): a capture holds them as
    they were."""
    return tuple(tuple(sorted((k, v) for k, v in group.items()
                              if k != "params" and isinstance(v, int | float)))
                 for group in optimizer.param_groups)
