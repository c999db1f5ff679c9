"""Runs the cases of tests/test_mutants_pool.py that need the Triton max-pool's kernels,
through Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 must be set before triton is
imported, so the test starts this in a child process).

Usage: TRITON_INTERPRET=1 python tests/_mutants_pool_interpret.py OUT
writes OUT (.npz): NaN and -inf windows, gradients summed in PyTorch's order (fp32) and in
fp32 for bf16 maps, outputs written into views of larger buffers, output gradients in
other layouts, the ops' output metadata, and the first-use check on broken kernels.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

import alexnet.model
import alexnet.pool_triton as m

CL = torch.channels_last


def _run(x: torch.Tensor, g: torch.Tensor, k: int, s: int, prefix: str) -> dict:
    """The op's maxima, window positions and input gradient for g, beside torch's."""
    xi, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, idx = torch.ops.alexnet.max_pool(xi, k, s)
    y.backward(g)
    ry = F.max_pool2d(xr, k, s)
    ry.backward(g)
    return {f"{prefix}.x": x.double().numpy(), f"{prefix}.g": g.double().numpy(),
            f"{prefix}.y": y.detach().double().numpy(), f"{prefix}.idx": idx.numpy(),
            f"{prefix}.dx": xi.grad.double().numpy(),
            f"{prefix}.torch_dx": xr.grad.double().numpy()}


def special_values() -> dict:
    """NaN (one, and two in a window) and windows of nothing but -inf."""
    gen = torch.Generator().manual_seed(3)
    nan, inf = float("nan"), float("inf")
    x = torch.randn((1, 3, 5, 7), generator=gen)
    x[0, 0, 2, 2] = nan  # in four windows
    x[0, 1, 0, 1] = x[0, 1, 1, 0] = nan  # two in the first window: the later one is taken
    x[0, 1, 4, 6] = nan
    x[0, 2] = -inf  # every window of channel 2 is -inf but the last column's
    x[0, 2, :, 6] = 1.5
    g = torch.randn((1, 3, 2, 3), generator=gen)
    return _run(x.contiguous(memory_format=CL), g.contiguous(memory_format=CL), 3, 2, "special")


def summing_order() -> dict:
    """A pixel that is the maximum of four 3/2 windows, with gradients whose fp32 sum changes
    with any order but PyTorch's (up to the first two terms, which commute)."""
    x = torch.zeros((1, 2, 5, 5))
    x[:, :, 2, 2] = 1.0
    g = torch.tensor([[1.0, 2.0 ** -24], [-1.0, 3 * 2.0 ** -25]])
    g = torch.stack([g, g.flip(0)])[None]  # channel 1: the rows of windows swapped
    saved = _run(x.contiguous(memory_format=CL), g.contiguous(memory_format=CL), 3, 2, "order")
    # bf16 maps: 1 + 3 x 2^-8, each 2^-8 below half a bf16 step at 1 if added in bf16
    xb = x[:, :1].bfloat16().contiguous(memory_format=CL)
    gb = torch.tensor([[[[1.0, 2.0 ** -8], [2.0 ** -8, 2.0 ** -8]]]]).bfloat16()
    saved.update(_run(xb, gb.contiguous(memory_format=CL), 3, 2, "bf16sum"))
    return saved


def in_views(c: int) -> dict:
    """Forward and backward launched on outputs that are the first image of two-image
    buffers filled with 7 (and positions with 99): what lies past them must stay."""
    gen = torch.Generator().manual_seed(c)
    h, w, k, s = 8, 6, 3, 2  # sides one past a window: floor mode drops a pixel
    oh, ow = m.pooled(h, k, s), m.pooled(w, k, s)
    x = torch.randn((1, c, h, w), generator=gen).contiguous(memory_format=CL)
    out = torch.full((2, c, oh, ow), 7.0).contiguous(memory_format=CL)
    idx = torch.full((2, c, oh, ow), 99, dtype=torch.int8).contiguous(memory_format=CL)
    m._launch(m._max_pool_forward_kernel, [x, out[:1], idx[:1], oh * ow, h, w, oh, ow, c], k, s)
    g = torch.randn((1, c, oh, ow), generator=gen).contiguous(memory_format=CL)
    dx = torch.full((2, c, h, w), 7.0).contiguous(memory_format=CL)
    m._launch(m._max_pool_backward_kernel, [g, idx[:1], dx[:1], h * w, h, w, oh, ow, c], k, s)
    return {f"views{c}.x": x.numpy(), f"views{c}.g": g.numpy(), f"views{c}.out": out.numpy(),
            f"views{c}.idx": idx.numpy(), f"views{c}.dx": dx.numpy()}


def gradient_layouts() -> dict:
    """Output gradients that are not channels_last: NCHW, and the expanded one of y.sum()."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn((2, 3, 8, 6), generator=gen).contiguous(memory_format=CL)
    g = torch.randn((2, 3, 3, 2), generator=gen)  # NCHW
    saved = _run(x, g, 3, 2, "nchw")
    xi = x.clone().requires_grad_()
    m.apply(xi, 3, 2).sum().backward()
    saved["summed.dx"] = xi.grad.numpy()
    return saved


def metadata() -> dict:
    """Shapes, strides and dtypes of the ops' outputs on non-square maps (3/2 and 12/1)."""
    saved = {}
    for name, shape, k, s in (("k3", (2, 3, 10, 7), 3, 2), ("k12", (1, 2, 12, 14), 12, 1)):
        x = torch.randn(shape).contiguous(memory_format=CL)
        y, idx = torch.ops.alexnet.max_pool(x, k, s)
        dx = torch.ops.alexnet.max_pool_backward(torch.ones_like(y), idx, k, s, *shape[2:])
        for part, t in (("y", y), ("idx", idx), ("dx", dx)):
            saved[f"meta.{name}.{part}"] = np.array([*t.shape, *t.stride()])
            saved[f"meta.{name}.{part}.dtype"] = np.array(str(t.dtype))
    return saved


def checks() -> dict:
    """The first-use check (uncached) on kernels broken in fp32 alone, and on sound kernels
    asked from inside no_grad, inference_mode and CPU autocast."""
    launch = m._launch
    saved = {}

    def broken(how: str):
        def run(kernel, args, k, s):
            launch(kernel, args, k, s)
            if how == "forward" and kernel is m._max_pool_forward_kernel:
                args[1].add_(0.5)  # every maximum half a unit high; the positions right
            if (how == "fp32grad" and kernel is m._max_pool_backward_kernel
                    and args[2].dtype == torch.float32):
                args[2].mul_(1.001)  # 0.1% off: a thousand times fp32's rounding
        return run

    device = torch.device("cpu")
    for how in ("forward", "fp32grad"):
        m._launch = broken(how)
        try:
            saved[f"check.{how}"] = np.array(alexnet.model._verify_triton_pool(device))
        finally:
            m._launch = launch
    modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
             "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    for name, mode in modes.items():
        with mode():
            saved[f"check.{name}"] = np.array(alexnet.model._verify_triton_pool(device))
    return saved


if __name__ == "__main__":
    np.savez(sys.argv[1], **{**special_values(), **summing_order(), **in_views(12),
                             **in_views(40), **gradient_layouts(), **metadata(), **checks()})
