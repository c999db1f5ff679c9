"""The paper's LRN (section 3.3) as two fused Triton kernels, registered as a PyTorch custom op.

One kernel reads a once and writes b = a s^-beta, s = k + alpha * windowsum(a^2); the other
reads g and a once and writes grad_a = g s^-beta - 2 alpha beta a windowsum(g a s^(-beta-1)),
recomputing s from a instead of saving it (memory traffic, not arithmetic, bounds LRN on a
GPU). Each program holds one column's channels (all of them, so the window's shifted loads
hit the cache) for a block of pixels; loads outside the column are masked to zero, which is
exactly the window clipped at the column's first and last map. A ReLU before the LRN can
be folded in (`relu=True`): the kernels read the conv's output and apply it on the fly, which
saves the ReLU's own passes over the map forward and backward. Sums are in fp32 (fp64 for
fp64 inputs) whatever the storage dtype. NCHW and channels_last work alike: only the strides
differ. `torch.ops.alexnet.lrn` has autograd and fake (meta) implementations, so
torch.compile traces it as one node, without a graph break.

This module imports triton; alexnet.model imports it only when the Triton path is chosen
(ALEXNET_LRN, docs/model.md). Under TRITON_INTERPRET=1 the kernels run on CPU tensors.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

if not hasattr(torch.library, "custom_op"):
    raise ImportError("the Triton LRN needs torch >= 2.4 (torch.library.custom_op)")

TILE = 4096  # elements per program: all of a column's channels times a block of pixels


@triton.jit
def _load(ptr, offs, mask, COMPUTE: tl.constexpr, RELU: tl.constexpr):
    """Elements at offs (0 where masked) in the COMPUTE dtype, through a ReLU if RELU."""
    v = tl.load(ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if RELU:
        v = tl.maximum(v, 0.0)
    return v


@triton.jit
def _window_sum_sq(a_ptr, base, c, p, in_p, cg, s_c, s_p, COMPUTE: tl.constexpr,
                   HALF: tl.constexpr, RELU: tl.constexpr):
    """sum of a_j^2 over j = c-HALF..c+HALF within the column [0, cg), per (c, p)."""
    acc = tl.zeros(c.shape, COMPUTE) + tl.zeros(p.shape, COMPUTE)
    for i in tl.static_range(2 * HALF + 1):
        cj = c + (i - HALF)
        m = (cj >= 0) & (cj < cg) & in_p
        v = _load(a_ptr, base + cj * s_c + p * s_p, m, COMPUTE, RELU)
        acc += v * v
    return acc


@triton.jit
def _lrn_forward_kernel(a_ptr, b_ptr, hw, cg, groups, s_n, s_c, s_p, alpha, beta, k,
                        COMPUTE: tl.constexpr, HALF: tl.constexpr, RELU: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_ng = tl.program_id(1)
    n = pid_ng // groups
    base = n.to(tl.int64) * s_n + ((pid_ng % groups) * cg).to(tl.int64) * s_c
    c = tl.arange(0, BLOCK_C)[:, None]
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    in_p = p < hw
    mask = (c < cg) & in_p
    s = k + alpha * _window_sum_sq(a_ptr, base, c, p, in_p, cg, s_c, s_p, COMPUTE, HALF, RELU)
    offs = base + c * s_c + p * s_p
    a = _load(a_ptr, offs, mask, COMPUTE, RELU)
    b = a * tl.exp2(-beta * tl.log2(s))
    tl.store(b_ptr + offs, b.to(b_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_backward_kernel(g_ptr, a_ptr, out_ptr, hw, cg, groups, s_n, s_c, s_p, alpha, beta,
                         k, COMPUTE: tl.constexpr, HALF: tl.constexpr, RELU: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_ng = tl.program_id(1)
    n = pid_ng // groups
    base = n.to(tl.int64) * s_n + ((pid_ng % groups) * cg).to(tl.int64) * s_c
    c = tl.arange(0, BLOCK_C)[:, None]
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    in_p = p < hw
    # windowsum over j of t_j = g_j a_j s_j^(-beta-1), each s_j recomputed from a
    acc = tl.zeros(c.shape, COMPUTE) + tl.zeros(p.shape, COMPUTE)
    for i in tl.static_range(2 * HALF + 1):
        cj = c + (i - HALF)
        m = (cj >= 0) & (cj < cg) & in_p
        offs = base + cj * s_c + p * s_p
        aj = _load(a_ptr, offs, m, COMPUTE, RELU)
        gj = _load(g_ptr, offs, m, COMPUTE, False)
        sj = k + alpha * _window_sum_sq(a_ptr, base, cj, p, in_p, cg, s_c, s_p, COMPUTE, HALF,
                                        RELU)
        acc += gj * aj * tl.exp2((-beta - 1.0) * tl.log2(sj))
    mask = (c < cg) & in_p
    offs = base + c * s_c + p * s_p
    x = _load(a_ptr, offs, mask, COMPUTE, False)
    a = x
    if RELU:
        a = tl.maximum(x, 0.0)
    g = _load(g_ptr, offs, mask, COMPUTE, False)
    s = k + alpha * _window_sum_sq(a_ptr, base, c, p, in_p, cg, s_c, s_p, COMPUTE, HALF, RELU)
    grad = g * tl.exp2(-beta * tl.log2(s)) - 2.0 * alpha * beta * a * acc
    if RELU:
        grad = tl.where(x > 0.0, grad, 0.0)  # ReLU's gradient, 0 at 0 as torch's
    tl.store(out_ptr + offs, grad.to(out_ptr.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor) -> torch.Tensor:
    """x as NCHW-contiguous or channels_last-contiguous (unchanged when it already is one)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _launch(kernel, tensors: list[torch.Tensor], out: torch.Tensor, groups: int, half: int,
            alpha: float, beta: float, k: float, relu: bool) -> None:
    """Run `kernel` over `tensors` (same shape and strides as out), one column per program."""
    n, c, h, w = out.shape
    cg = c // groups
    block_c = triton.next_power_of_2(cg)
    block_p = max(1, min(triton.next_power_of_2(h * w), TILE // block_c))
    compute = tl.float64 if out.dtype == torch.float64 else tl.float32
    s_n, s_c, _, s_w = out.stride()
    grid = (triton.cdiv(h * w, block_p), n * groups)
    with torch.cuda.device(out.device) if out.is_cuda else contextlib.nullcontext():
        kernel[grid](*tensors, out, h * w, cg, groups, s_n, s_c, s_w, alpha, beta, k,
                     COMPUTE=compute, HALF=half, RELU=relu, BLOCK_C=block_c,
                     BLOCK_P=block_p, num_warps=8)


def _check(x: torch.Tensor, groups: int) -> None:
    if x.dim() != 4 or x.shape[1] % groups:
        raise ValueError(f"lrn: need (N, C, H, W) with C divisible by groups={groups}, "
                         f"got {tuple(x.shape)}")


@torch.library.custom_op("alexnet::lrn", mutates_args=())
def lrn(x: torch.Tensor, groups: int, half: int, alpha: float, beta: float, k: float,
        relu: bool) -> torch.Tensor:
    """The paper's LRN of x (N, C, H, W) (of ReLU(x) if `relu`: the two layers in one pass)
    over channels within each of `groups` columns, window c-half..c+half clipped at each
    column's edges."""
    _check(x, groups)
    a = _layout(x)
    out = torch.empty_like(a)
    if out.numel():
        _launch(_lrn_forward_kernel, [a], out, groups, half, alpha, beta, k, relu)
    return out


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=())
def lrn_backward(g: torch.Tensor, x: torch.Tensor, groups: int, half: int, alpha: float,
                 beta: float, k: float, relu: bool) -> torch.Tensor:
    """grad_x of lrn(x, ...) for the output gradient g, in one pass."""
    _check(x, groups)
    a = _layout(x)
    fmt = torch.contiguous_format if a.is_contiguous() else torch.channels_last
    g = g.contiguous(memory_format=fmt)
    out = torch.empty_like(a)
    if out.numel():
        _launch(_lrn_backward_kernel, [g, a], out, groups, half, alpha, beta, k, relu)
    return out


@lrn.register_fake
def _lrn_fake(x, groups, half, alpha, beta, k, relu):
    return torch.empty_like(_layout(x))


@lrn_backward.register_fake
def _lrn_backward_fake(g, x, groups, half, alpha, beta, k, relu):
    return torch.empty_like(_layout(x))


def _setup_context(ctx, inputs, output) -> None:
    x, groups, half, alpha, beta, k, relu = inputs
    ctx.save_for_backward(x)
    ctx.consts = (groups, half, alpha, beta, k, relu)


def _backward(ctx, g: torch.Tensor):
    (x,) = ctx.saved_tensors
    return lrn_backward(g, x, *ctx.consts), None, None, None, None, None, None


lrn.register_autograd(_backward, setup_context=_setup_context)
