"""Max-pooling (section 3.4's overlapping 3x3, stride 2) as Triton kernels for channels_last
tensors, registered as the PyTorch custom op `torch.ops.alexnet.max_pool`.

The forward reads each window's K x K pixels as 16-byte vectors of consecutive channels
(aligned: a pixel's channels are contiguous in channels_last) and writes the maximum and, per
output element, the window position it came from as one byte (i K + j; four bytes for windows
of more than 128 pixels), where PyTorch's max_pool2d writes an 8-byte flat index. The backward
gathers instead of scattering: each input pixel sums the gradients of the (at most
ceil(K / S)^2) windows that hold it and chose it, in PyTorch's order, so it writes every input
element once and needs neither a zeroed buffer nor atomics. Ties go to the first maximum in
scan order and NaN propagates, as in PyTorch. No padding, dilation 1, floor mode: the paper
net's pooling. Maxima and sums are in fp32 (fp64 for fp64 maps).

This module imports triton; alexnet.model imports it only where the Triton pool may run (CUDA
under ALEXNET_POOL=auto, the default, or ALEXNET_POOL=triton; docs/model.md). Under
TRITON_INTERPRET=1 the kernels run on CPU tensors.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

if not hasattr(torch.library, "custom_op"):
    raise ImportError("the Triton max-pool needs torch >= 2.4 (torch.library.custom_op)")

BLOCK_PIXELS = 128  # output (forward) or input (backward) pixels per program
NUM_WARPS = 4


@triton.jit
def _channels(C, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):
    """This program's channels and their mask, constant along the row when BLOCK_C divides C
    (EVEN_C), so that the loads stay 16-byte vectors."""
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    if EVEN_C:
        ok = tl.full([BLOCK_C], 1, tl.int1)
    else:
        ok = c < C
    return c, ok


@triton.jit
def _max_pool_forward_kernel(x_ptr, out_ptr, idx_ptr, n_out, H, W, OH, OW, C,
                             K: tl.constexpr, S: tl.constexpr, BLOCK_P: tl.constexpr,
                             BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr,
                             COMPUTE: tl.constexpr):
    o = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixels, n-major
    c, c_ok = _channels(C, BLOCK_C, EVEN_C)
    mask = (o < n_out)[:, None] & c_ok[None, :]
    ow = o % OW
    oh = (o // OW) % OH
    n = o // (OW * OH)
    top_left = (n * H + oh * S) * W + ow * S  # the window's first input pixel
    best = tl.full([BLOCK_P, BLOCK_C], float("-inf"), COMPUTE)
    arg = tl.zeros([BLOCK_P, BLOCK_C], tl.int32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            r = (top_left + i * W + j).to(tl.int64)
            v = tl.load(x_ptr + r[:, None] * C + c[None, :], mask=mask, other=float("-inf"))
            v = v.to(COMPUTE)
            take = (v > best) | (v != v)  # PyTorch's rule: the first maximum; NaN wins
            best = tl.where(take, v, best)
            arg = tl.where(take, i * K + j, arg)
    out = o.to(tl.int64)[:, None] * C + c[None, :]
    tl.store(out_ptr + out, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + out, arg.to(idx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _max_pool_backward_kernel(g_ptr, idx_ptr, out_ptr, n_in, H, W, OH, OW, C,
                              K: tl.constexpr, S: tl.constexpr, BLOCK_P: tl.constexpr,
                              BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr,
                              COMPUTE: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # input pixels, n-major
    c, c_ok = _channels(C, BLOCK_C, EVEN_C)
    in_p = p < n_in
    iw = p % W
    ih = (p // W) % H
    n = p // (W * H)
    REACH: tl.constexpr = (K + S - 1) // S  # windows per axis that can hold a pixel
    acc = tl.zeros([BLOCK_P, BLOCK_C], COMPUTE)
    # windows in PyTorch's order (oh, then ow, ascending), so sums round as its scatter does
    for a in tl.static_range(REACH):
        oh = ih // S - (REACH - 1 - a)
        ok_h = (oh >= 0) & (oh < OH) & (ih - oh * S < K)
        for b in tl.static_range(REACH):
            ow = iw // S - (REACH - 1 - b)
            ok = in_p & ok_h & (ow >= 0) & (ow < OW) & (iw - ow * S < K)
            m = ok[:, None] & c_ok[None, :]
            at = ((n * OH + oh) * OW + ow).to(tl.int64)[:, None] * C + c[None, :]
            chose = tl.load(idx_ptr + at, mask=m, other=-1).to(tl.int32)
            g = tl.load(g_ptr + at, mask=m, other=0.0).to(COMPUTE)
            here = ((ih - oh * S) * K + (iw - ow * S))[:, None]
            acc += tl.where(chose == here, g, 0.0)
    out = p.to(tl.int64)[:, None] * C + c[None, :]
    tl.store(out_ptr + out, acc.to(out_ptr.dtype.element_ty), mask=in_p[:, None] & c_ok[None, :])


def pooled(size: int, k: int, s: int) -> int:
    """Output side of a K x K, stride S pooling without padding (floor mode)."""
    return (size - k) // s + 1


def _block_c(c: int) -> tuple[int, bool]:
    """Channels per program: 32 where that divides C (96 and 256 maps: no masked lanes),
    else C rounded up to a power of two (at most 32) with masked lanes."""
    if c % 32 == 0:
        return 32, True
    block = min(32, triton.next_power_of_2(c))
    return block, c % block == 0


def _positions(k: int) -> torch.dtype:
    """The dtype of the window positions i K + j: one byte up to K = 11 (the paper's 3)."""
    return torch.int8 if k * k <= 128 else torch.int32


def _compute(dtype: torch.dtype) -> tl.dtype:
    """The maxima's and sums' precision: fp32, fp64 for fp64 maps (fp32 would round them)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check(x: torch.Tensor, k: int, s: int) -> None:
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"max_pool: need a channels_last (N, C, H, W) tensor, got "
                         f"{tuple(x.shape)} with strides {x.stride()}")
    if s < 1 or not 1 <= k <= min(x.shape[2:]):  # s > k (pixels in no window) is fine
        raise ValueError(f"max_pool: kernel {k}, stride {s} on {tuple(x.shape[2:])} maps")


def _launch(kernel, args: list, k: int, s: int) -> None:
    """Run `kernel` on args (three tensors, the pixel count it walks, h, w, oh, ow, C): a
    program per block of BLOCK_PIXELS pixels and of channels (`_block_c`)."""
    pixels, c = args[3], args[-1]
    block_c, even = _block_c(c)
    grid = (triton.cdiv(pixels, BLOCK_PIXELS), triton.cdiv(c, block_c))
    device = args[0].device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](*args, K=k, S=s, BLOCK_P=BLOCK_PIXELS, BLOCK_C=block_c, EVEN_C=even,
                     COMPUTE=_compute(args[0].dtype), num_warps=NUM_WARPS)


def forward(x: torch.Tensor, k: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K x K max-pooling with stride S of a channels_last x: (maxima, window position of each
    maximum, i K + j, in `_positions(k)`), both channels_last; the launch, without autograd
    (`apply` and the op `max_pool` add it)."""
    _check(x, k, s)
    n, c, h, w = x.shape
    oh, ow = pooled(h, k, s), pooled(w, k, s)
    out = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    idx = torch.empty((n, c, oh, ow), dtype=_positions(k), device=x.device,
                      memory_format=torch.channels_last)
    if out.numel():
        _launch(_max_pool_forward_kernel, [x, out, idx, n * oh * ow, h, w, oh, ow, c], k, s)
    return out, idx


def backward(g: torch.Tensor, idx: torch.Tensor, k: int, s: int, h: int,
             w: int) -> torch.Tensor:
    """grad_x of forward(x, k, s) for the outputs' gradient g, x being (N, C, h, w)."""
    n, c, oh, ow = idx.shape
    g = g.contiguous(memory_format=torch.channels_last)
    out = torch.empty((n, c, h, w), dtype=g.dtype, device=g.device,
                      memory_format=torch.channels_last)
    if out.numel():
        _launch(_max_pool_backward_kernel, [g, idx, out, n * h * w, h, w, oh, ow, c], k, s)
    return out


# The custom ops: what torch.compile traces. In eager mode `apply` runs the same launches
# through an autograd.Function, without a custom op's dispatch and registered autograd (tens
# of microseconds of Python per call: pytorch/pytorch#139500, #176592), three pools a step.
max_pool = torch.library.custom_op("alexnet::max_pool", forward, mutates_args=())
max_pool_backward = torch.library.custom_op("alexnet::max_pool_backward", backward,
                                            mutates_args=())


@max_pool.register_fake
def _max_pool_fake(x, k, s):
    n, c, h, w = x.shape
    shape = (n, c, pooled(h, k, s), pooled(w, k, s))
    return (x.new_empty(shape).contiguous(memory_format=torch.channels_last),
            x.new_empty(shape, dtype=_positions(k)).contiguous(
                memory_format=torch.channels_last))


@max_pool_backward.register_fake
def _max_pool_backward_fake(g, idx, k, s, h, w):
    return g.new_empty((idx.shape[0], idx.shape[1], h, w)).contiguous(
        memory_format=torch.channels_last)


def _setup_context(ctx, inputs, output) -> None:
    x, k, s = inputs
    ctx.save_for_backward(output[1])
    ctx.consts = (k, s, x.shape[2], x.shape[3])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, g: torch.Tensor, _g_idx: torch.Tensor | None):
    (idx,) = ctx.saved_tensors
    return max_pool_backward(g, idx, *ctx.consts), None, None


max_pool.register_autograd(_backward, setup_context=_setup_context)


class _EagerMaxPool(torch.autograd.Function):
    """The op's forward and backward launches with autograd, without the op's dispatch. Under
    create_graph the backward goes through `_Gradient`, so that a second derivative gets
    its term."""

    @staticmethod
    def forward(ctx, x, k, s):
        out = forward(x, k, s)
        _setup_context(ctx, (x, k, s), out)
        return out

    @staticmethod
    def backward(ctx, g, g_idx):
        from alexnet.model import wants_graph

        (idx,) = ctx.saved_tensors
        if wants_graph(g):  # create_graph (the gradient does not depend on x: see _Gradient)
            return _Gradient.apply(g, idx, *ctx.consts), None, None
        with torch.no_grad():
            return backward(g, idx, *ctx.consts), None, None


class _Gradient(torch.autograd.Function):
    """The kernels' backward as a function of the outputs' gradient g, with its derivative:
    it is linear in g (each input pixel sums g over the windows that chose it), so its adjoint
    reads each window's chosen pixel (`chosen`). Its derivative in x is 0 wherever the choices
    do not change, as for torch's max_pool2d, so g is all it depends on."""

    @staticmethod
    def forward(ctx, g, idx, k, s, h, w):
        ctx.save_for_backward(idx)
        ctx.consts = (k, s, w)
        return backward(g, idx, k, s, h, w)

    @staticmethod
    def backward(ctx, gg):
        (idx,) = ctx.saved_tensors
        return chosen(gg, idx, *ctx.consts), None, None, None, None, None


def chosen(x: torch.Tensor, idx: torch.Tensor, k: int, s: int, w: int) -> torch.Tensor:
    """x (N, C, h, w) read at each window's chosen position (idx, as `forward` writes it), in
    differentiable torch ops: (N, C, oh, ow)."""
    n, c, oh, ow = idx.shape
    pos = idx.long()
    rows = torch.arange(oh, device=x.device).view(1, 1, oh, 1) * s + pos // k
    cols = torch.arange(ow, device=x.device).view(1, 1, 1, ow) * s + pos % k
    flat = (rows * w + cols).reshape(n, c, oh * ow)
    return x.reshape(n, c, -1).gather(2, flat).view(n, c, oh, ow)


def apply(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """The maxima of max_pool(x, k, s) with their gradient: the custom op under
    torch.compile, the same kernels through an autograd.Function in eager mode."""
    if torch.compiler.is_compiling():
        return max_pool(x, k, s)[0]
    return _EagerMaxPool.apply(x, k, s)[0]
