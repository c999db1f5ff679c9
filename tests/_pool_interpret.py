"""Runs the Triton max-pool through Triton's interpreter on CPU tensors; tests/test_pool_triton.py
starts it in a child process, because TRITON_INTERPRET=1 must be set before triton is
imported and must not reach the rest of the suite.

Usage: TRITON_INTERPRET=1 python tests/_pool_interpret.py OUT
writes OUT (.npz): for each case the input, the output gradient, what the kernels gave and
what torch's max_pool2d gave on the same tensors; a width-scaled paper net with
ALEXNET_POOL=triton and torch, eager and compiled; pools the paper net does not make
(`edges`); and the check of `triton_pool_verified`.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import alexnet.model
from alexnet.model import AlexNet, max_pool
from alexnet.pool_triton import pooled

CASES = {  # name: (shape, kernel, stride)
    "conv1": ((2, 96, 13, 13), 3, 2),  # the paper's overlapping pool, 32-channel blocks
    "odd": ((2, 12, 9, 7), 3, 2),  # masked channel lanes, non-square maps
    "conv5": ((3, 256, 7, 7), 3, 2),
    "plain2": ((1, 40, 8, 8), 2, 2),  # section 3.4's non-overlapping comparison
}


def _grads(x: torch.Tensor, g: torch.Tensor, k: int, s: int, kernel: bool,
           module: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pooled x, its gradient for g and (from the op) each maximum's window position: by the
    op (or, with `module`, model.max_pool with ALEXNET_POOL=triton, which picks the op for
    what it takes) or by torch's max_pool2d."""
    xi = x.detach().clone().requires_grad_()
    idx = None
    if module:
        y = max_pool(xi, nn.MaxPool2d(k, s), "triton")
    elif kernel:
        y, idx = torch.ops.alexnet.max_pool(xi, k, s)
    else:
        y = F.max_pool2d(xi, k, s)
    y.backward(g)
    return y.detach(), xi.grad, idx


def kernels() -> dict[str, np.ndarray]:
    """Each case in fp32 and bf16, random values and small integers (ties)."""
    gen = torch.Generator().manual_seed(0)
    saved: dict[str, np.ndarray] = {}
    for name, (shape, k, s) in CASES.items():
        out = (shape[0], shape[1], pooled(shape[2], k, s), pooled(shape[3], k, s))
        for ties in (False, True):
            x = (torch.randint(0, 4, shape, generator=gen).double() if ties
                 else torch.randn(shape, generator=gen, dtype=torch.float64))
            g = torch.randn(out, generator=gen, dtype=torch.float64)
            for dtype in (torch.float32, torch.bfloat16):
                key = f"{name}.{'ties' if ties else 'random'}.{str(dtype)[6:]}"
                xd = x.to(dtype).contiguous(memory_format=torch.channels_last)
                gd = g.to(dtype).contiguous(memory_format=torch.channels_last)
                y, dx, idx = _grads(xd, gd, k, s, kernel=True)  # one interpreted forward
                ry, rdx, _ = _grads(xd, gd, k, s, kernel=False)
                saved[f"{key}.x"], saved[f"{key}.g"] = xd.double().numpy(), gd.double().numpy()
                saved[f"{key}.y"], saved[f"{key}.dx"] = y.double().numpy(), dx.double().numpy()
                saved[f"{key}.torch_y"] = ry.double().numpy()
                saved[f"{key}.torch_dx"] = rdx.double().numpy()
                saved[f"{key}.idx"] = idx.numpy()
                saved[f"{key}.layout_kept"] = np.array(
                    y.is_contiguous(memory_format=torch.channels_last)
                    and dx.is_contiguous(memory_format=torch.channels_last)
                    and idx.dtype == torch.int8)
    return saved


def net() -> dict[str, np.ndarray]:
    """A width-scaled paper net in channels_last (without LRN, which has its own tests; its
    torch path does not compile with fullgraph): logits and input gradients with the Triton
    pool (eager and torch.compile(fullgraph=True, aot_eager)) and with torch's."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=5, width=0.125, dropout=0.0, lrn=False)
    model = model.to(memory_format=torch.channels_last)
    x = (torch.randn(2, 3, 224, 224) * 50).contiguous(memory_format=torch.channels_last)

    def run(m: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        return y.detach().numpy(), xi.grad.numpy()

    alexnet.model.POOL_BACKEND = "triton"
    eager_y, eager_dx = run(model)
    comp_y, comp_dx = run(torch.compile(model, backend="aot_eager", fullgraph=True))
    alexnet.model.POOL_BACKEND = "torch"
    torch_y, torch_dx = run(model)
    return {"net.eager_y": eager_y, "net.eager_dx": eager_dx, "net.compiled_y": comp_y,
            "net.compiled_dx": comp_dx, "net.torch_y": torch_y, "net.torch_dx": torch_dx}


def edges() -> dict[str, np.ndarray]:
    """Pools the paper net does not make, through model.max_pool with the kernels chosen, and
    torch's on the same tensors: fp64 maps (maxima 1e-12 apart), a 12 x 12 window (positions
    up to 143, past one signed byte), a stride longer than the window. A failure is saved as
    its message."""
    gen = torch.Generator().manual_seed(1)
    fp64 = torch.randn((1, 4, 5, 5), generator=gen, dtype=torch.float64)
    fp64[0, 0, 0, :2] = torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64) + 10
    wide = torch.randn((1, 2, 12, 13), generator=gen)
    wide[0, 0, 11, 11] = wide[0, 1, 11, 12] = 10.0  # window positions 143 and 142, 143
    cases = {"fp64": (fp64, 3, 2), "k12": (wide, 12, 1),
             "stride3": (torch.randn((1, 4, 8, 8), generator=gen), 2, 3)}
    saved: dict[str, np.ndarray] = {}
    for name, (x, k, s) in cases.items():
        x = x.contiguous(memory_format=torch.channels_last)
        g = torch.randn(F.max_pool2d(x, k, s).shape, generator=gen, dtype=x.dtype)
        try:
            y, dx, _ = _grads(x, g, k, s, kernel=True, module=True)
        except Exception as err:
            saved[f"edge.{name}.error"] = np.array(f"{type(err).__name__}: {err}")
            continue
        ry, rdx, _ = _grads(x, g, k, s, kernel=False)
        saved[f"edge.{name}.y"], saved[f"edge.{name}.dx"] = y.numpy(), dx.numpy()
        saved[f"edge.{name}.torch_y"], saved[f"edge.{name}.torch_dx"] = ry.numpy(), rdx.numpy()
    return saved


def check() -> dict[str, np.ndarray]:
    """The check `auto` makes before its first use of the kernels on a device type."""
    return {"verified.cpu": np.array(alexnet.model.triton_pool_verified(torch.device("cpu")))}


def double_backward() -> dict[str, np.ndarray]:
    """Second and third derivatives through the kernels' backward and through nn.MaxPool2d:
    of a function of the first derivative in x and in the outputs' gradient g, float64,
    3/2 windows (overlapping) and 2/2, with ties (small integers) and without."""
    gen = torch.Generator().manual_seed(3)
    saved = {}
    for k, s in ((3, 2), (2, 2)):
        for ties in (False, True):
            x = (torch.randint(0, 3, (2, 4, 7, 5), generator=gen).double() if ties else
                 torch.randn((2, 4, 7, 5), generator=gen, dtype=torch.float64))
            x = x.contiguous(memory_format=torch.channels_last)
            g = torch.randn((2, 4, pooled(7, k, s), pooled(5, k, s)), generator=gen,
                            dtype=torch.float64).contiguous(memory_format=torch.channels_last)
            v = torch.randn((2, 4, pooled(7, k, s), pooled(5, k, s)), generator=gen,
                            dtype=torch.float64)
            for backend in ("triton", "torch"):
                xi, gi = x.clone().requires_grad_(), g.clone().requires_grad_()
                (dx,) = torch.autograd.grad(max_pool(xi, nn.MaxPool2d(k, s), backend), xi, gi,
                                            create_graph=True)
                d2x, d2g = torch.autograd.grad((dx ** 2 * xi.cos()).sum(), (xi, gi),
                                               create_graph=True)
                (d3g,) = torch.autograd.grad((d2g * v).sum(), gi)
                key = f"double.k{k}s{s}.ties{int(ties)}.{backend}"
                saved[f"{key}.grad"] = dx.detach().numpy()
                saved[f"{key}.d2x"] = d2x.detach().numpy()
                saved[f"{key}.d2g"] = d2g.detach().numpy()
                saved[f"{key}.d3g"] = d3g.numpy()
    return saved


if __name__ == "__main__":
    np.savez(sys.argv[1], **{**kernels(), **net(), **edges(), **check(), **double_backward()})
