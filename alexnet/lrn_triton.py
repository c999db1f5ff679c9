"""The paper's LRN (section 3.3) as two fused Triton kernels, registered as a PyTorch custom op.

One kernel reads a once and writes b = a s^-beta, s = k + alpha * windowsum(a^2); the other
reads g and a once and writes grad_a = g s^-beta - 2 alpha beta a windowsum(g a s^(-beta-1)),
recomputing s from a instead of saving it (memory traffic bounds LRN on a GPU). In the tile
layout each forward program holds a block of one column's maps (16 of conv1's 48, 32 of
conv2's 128: no masked lanes) for a block of pixels, the contiguous axis last so that loads
vectorise, and loads each shifted map it needs once (the neighbours' from the cache): the
2 HALF + 1 maps of a. The backward's program holds a whole column: it loads the 2 HALF + 1
maps of a and one of g, computes one power per element (for beta = 3/4 from rsqrt and sqrt,
else exp2 and log2; `_powers`), writes u = g a s^(-beta-1) into the output and reads it
back at the window's shifts (`_lrn_backward_twophase_kernel`). Loads outside the column are
masked to zero, which is exactly the window clipped at the column's first and last map.
The windows are unrolled for n = 3 and 5 (the paper's); alexnet.model runs wider ones on
the torch path. A ReLU before the LRN can be folded in (`relu=True`): the kernels
read the conv's output and apply it on the fly, which saves the ReLU's own passes over the
map forward and backward. Sums are in fp32 (fp64 for fp64 inputs) whatever the storage
dtype. NCHW and channels_last work alike: only the strides differ. `torch.ops.alexnet.lrn`
has autograd and fake (meta) implementations, so torch.compile traces it as one node,
without a graph break. Other layouts (ALEXNET_LRN_LAYOUT): two (band, gather) read whole
rows of a column; and halo, for channels_last tensors, where each thread holds one 16-byte
group of a pixel's maps and loads the maps beyond its edges that its windows reach as one
more vector on each side (halo2: the same kernels with two groups a thread). The default,
auto, times tile, band, gather, halo and halo2 on the device at first use, for each shape
and for the forward and backward apart, and keeps the fastest that agrees with tile
(figures at LAYOUT; the channels and rows layouts and the recompute backward were measured
slower there and removed).

This module imports triton; alexnet.model imports it only when the Triton path is chosen
(ALEXNET_LRN, docs/model.md). Under TRITON_INTERPRET=1 the kernels run on CPU tensors.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from alexnet.errors import UserError

if not hasattr(torch.library, "custom_op"):
    raise ImportError("the Triton LRN needs torch >= 2.4 (torch.library.custom_op)")

FORWARD_TILE = 4096  # elements per program (channels times pixels), forward
BACKWARD_TILE = 2048  # backward: a whole column (rounded up to a power of two) times pixels
NUM_WARPS = 8
MAX_HALF = 2  # the kernels unroll windows up to n = 5 (the paper's); wider ones run in torch


def _setting(env: str, value: str, choices: tuple[str, ...]) -> str:
    """value (of environment variable `env`, or what a caller set) if one of `choices`, else
    a UserError: a typo is the user's to fix, not a kernel failure that the first-use check
    (alexnet.model) would answer with a fallback for the whole run."""
    if value not in choices:
        raise UserError(f"{env}={value!r}: choose from {', '.join(choices)}")
    return value


LAYOUTS = ("auto", "tile", "band", "gather", "halo", "halo2")
# ALEXNET_LRN_LAYOUT picks the kernels' layout, read at import (or set lrn_triton.LAYOUT):
# auto (the default: for each tensor shape, dtype and memory format, and for the forward and
# the backward apart, the fastest of AUTO_LAYOUTS as timed on the device at first use,
# `_auto`), tile (a 2-D block of channels x pixels, shifted maps from the cache) or
# band (channels_last, not float64: a block of pixels x a whole column read once in rows,
# the window sums as a product with the 0/1 band matrix on the tensor cores,
# `_window_sums`; a NaN or inf reaches every map of its pixel's column there, through the
# band's zeros, where the others keep it to its window) or gather (the band kernels with
# the window sums gathered along each row, `_window_gather`: exact, any dtype, not yet timed
# on a GPU) or halo (channels_last tensors whose columns are whole 16-byte groups, any
# dtype: a thread per 16-byte group of a pixel's column, with the maps its windows reach on
# each side loaded as one vector each, from the cache; not yet timed on a GPU) or halo2 (the
# halo kernels with programs twice as long: two groups a thread, `HALO_GROUPS`). Measured
# on one H200 (bf16, channels_last, batch 256, ReLU folded in, fwd+bwd;
# `alexnet bench model --device cuda`, 2026-11-29) conv1's output 0.772 ms tile, 0.658 ms
# band (its forward 0.188 ms against tile's 0.289); conv2's 0.417 and 0.982 ms. So no one
# layout is fastest on both: auto. Two layouts were removed after that run, slower than
# tile on both shapes: channels (a run of maps streamed through registers; 3.631 and
# 2.322 ms) and rows (each thread whole pixels, 16-byte loads; 1.014 and 0.725 ms); and
# the tile layout's other backward, recompute (each s_j from the loaded squares, 5 powers
# per element: 0.820 ms against the twophase kernel's 0.383 on conv1's output).
LAYOUT = _setting("ALEXNET_LRN_LAYOUT", os.environ.get("ALEXNET_LRN_LAYOUT", "auto"), LAYOUTS)
# What auto times (tile first: the reference the others must agree with)
AUTO_LAYOUTS = ("tile", "band", "gather", "halo", "halo2")
AUTO_MIN_ELEMENTS = 1 << 20  # smaller tensors take tile untimed (too short to time; checks)
AUTO_ROUNDS, AUTO_REPEATS = 3, 4  # timed rounds (each layout in turn) of launches each
AUTO_CHECK_ELEMENTS = 1 << 24  # about how many results a candidate must give as tile does
BAND_BLOCK_P = 64  # pixels per program of the band layout
# halo layout: one 16-byte group per thread (2048 elements, 8 warps), the fewest registers
# (sm_90, bf16: 32 forward, 48 backward; 2 groups a thread take 40 and 72, 4 take 72 and 161)
HALO_TILE = 2048  # elements (pixels times the column's maps, rounded up) per program
HALO_NUM_WARPS = 8
# programs HALO_GROUPS[layout] times HALO_TILE long, the same warps: halo2 gives each thread
# two groups (twice the loads in flight a thread, fewer threads a core for its registers);
# which is faster is the GPU's to say, so auto times both
HALO_GROUPS = {"halo": 1, "halo2": 2}


@triton.jit
def _shifted(ptr, base, c, p, in_p, cg, s_c, s_p, D: tl.constexpr, ON: tl.constexpr,
             COMPUTE: tl.constexpr):
    """The tile's elements D maps further along the column (0 outside [0, cg) or if not ON)."""
    v = tl.zeros(c.shape, COMPUTE) + tl.zeros(p.shape, COMPUTE)
    if ON:
        cj = c + D
        m = (cj >= 0) & (cj < cg) & in_p
        # one pointer per element shared by every shift (the shift is a scalar: in
        # channels_last a constant, folded into the load's address)
        v = tl.load(ptr + base + (c * s_c + p * s_p) + D * s_c, mask=m, other=0.0)
        v = v.to(COMPUTE)
    return v


@triton.jit
def _input(ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, D: tl.constexpr,
           ON: tl.constexpr, COMPUTE: tl.constexpr, BIAS: tl.constexpr):
    """The input's tile D maps along (`_shifted`) with those maps' biases added (BIAS: the
    conv's bias add folded in); 0 outside the column, as there."""
    v = _shifted(ptr, base, c, p, in_p, cg, s_c, s_p, D, ON, COMPUTE)
    if BIAS:
        if ON:
            cj = c + D
            v += tl.load(bias_ptr + col0 + cj, mask=(cj >= 0) & (cj < cg), other=0.0).to(COMPUTE)
    return v


@triton.jit
def _relu(x, RELU: tl.constexpr):
    """ReLU(x) as torch's: NaN stays NaN (tl.maximum would give 0, hiding a divergence)."""
    if RELU:
        x = tl.where(x < 0.0, 0.0, x)
    return x


@triton.jit
def _relu_grad(grad, x, RELU: tl.constexpr):
    """grad through the ReLU of x: 0 where x <= 0 (at 0 too), as torch's threshold_backward,
    which passes NaN's gradient on."""
    if RELU:
        grad = tl.where(x <= 0.0, 0.0, grad)
    return grad


@triton.jit
def _window(qm2, qm1, q0, qp1, qp2, HALF: tl.constexpr):
    """Sum of the squares in a window of 2 HALF + 1 maps centred on q0 (HALF 1 or 2)."""
    w = qm1 + q0 + qp1
    if HALF == 2:
        w += qm2 + qp2
    return w


@triton.jit
def _newest_window(x0, x1, x2, x3, x4, HALF: tl.constexpr):
    """(sum of squares, centre map) of the window over the newest 2 HALF + 1 of five maps
    streamed through registers (x4 the newest): the halo kernels' window."""
    if HALF == 2:
        w = _window(x0 * x0, x1 * x1, x2 * x2, x3 * x3, x4 * x4, HALF)
        centre = x2
    else:
        w = _window(x0, x2 * x2, x3 * x3, x4 * x4, x0, HALF)
        centre = x3
    return w, centre


@triton.jit
def _powers(s, beta, BETA_3_4: tl.constexpr):
    """s^-beta and s^(-beta-1). For the paper's beta = 3/4 from r = rsqrt(s) as r sqrt(r) and
    r^3 sqrt(r): two fast hardware operations and three products, where exp2(-beta log2 s)
    costs a software log2 (tens of instructions) besides the exp2."""
    if BETA_3_4:
        r = tl.rsqrt(s)
        p = r * tl.sqrt(r)
        q = p * r * r
    else:
        p = tl.exp2(-beta * tl.log2(s))
        q = p / s
    return p, q


@triton.jit
def _tile(hw, cg, groups, s_n, s_c, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
          CHANNELS_LAST: tl.constexpr):
    """This program's offsets: base (image and column), channels c within the column, pixels
    p; the contiguous axis last, so loads vectorise (channels in channels_last); and col0, the
    column's first channel (where its maps' biases start)."""
    pid = tl.program_id(0)  # images x columns x channel blocks: axis 0 has no 65535 cap
    pid_p = tl.program_id(1)
    blocks = tl.cdiv(cg, BLOCK_C)
    n = pid // (groups * blocks)
    col = (pid // blocks) % groups
    c0 = (pid % blocks) * BLOCK_C
    base = n.to(tl.int64) * s_n + (col * cg).to(tl.int64) * s_c
    if CHANNELS_LAST:
        c = c0 + tl.arange(0, BLOCK_C)[None, :]
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)[:, None]
    else:
        c = c0 + tl.arange(0, BLOCK_C)[:, None]
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    return base, c, p, col * cg


@triton.jit
def _lrn_forward_kernel(a_ptr, bias_ptr, b_ptr, hw, cg, groups, s_n, s_c, s_p, alpha, beta,
                        k, COMPUTE: tl.constexpr, HALF: tl.constexpr, RELU: tl.constexpr,
                        BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                        CHANNELS_LAST: tl.constexpr, BETA_3_4: tl.constexpr):
    base, c, p, col0 = _tile(hw, cg, groups, s_n, s_c, BLOCK_C, BLOCK_P, CHANNELS_LAST)
    in_p = p < hw
    # the window's 2 HALF + 1 maps, each loaded once (the shifted ones from the cache)
    am2 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, -2,
                       HALF == 2, COMPUTE, BIAS), RELU)
    am1 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, -1,
                       True, COMPUTE, BIAS), RELU)
    a0 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, 0,
                      True, COMPUTE, BIAS), RELU)
    ap1 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, 1,
                       True, COMPUTE, BIAS), RELU)
    ap2 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, 2,
                       HALF == 2, COMPUTE, BIAS), RELU)
    s = k + alpha * _window(am2 * am2, am1 * am1, a0 * a0, ap1 * ap1, ap2 * ap2, HALF)
    pw, _ = _powers(s, beta, BETA_3_4)
    b = a0 * pw
    tl.store(b_ptr + base + (c * s_c + p * s_p), b.to(b_ptr.dtype.element_ty),
             mask=(c < cg) & in_p)


@triton.jit
def _lrn_backward_twophase_kernel(g_ptr, a_ptr, bias_ptr, out_ptr, hw, cg, groups, s_n, s_c,
                                  s_p, alpha, beta, k, COMPUTE: tl.constexpr,
                                  HALF: tl.constexpr, RELU: tl.constexpr, BIAS: tl.constexpr,
                                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                                  CHANNELS_LAST: tl.constexpr, BETA_3_4: tl.constexpr):
    # grad_c = g_c s_c^-beta - 2 alpha beta a_c sum_{j in window(c)} u_j with one power per
    # element (not one per s_j, as each s_j recomputed would take): the program
    # holds a whole column (BLOCK_C >= cg), writes each map's u_c = g_c a_c s_c^(-beta-1)
    # into the output (in its dtype), waits for all its threads, reads u back at
    # c-HALF..c+HALF (from the cache) and overwrites it with the gradient
    base, c, p, col0 = _tile(hw, cg, groups, s_n, s_c, BLOCK_C, BLOCK_P, CHANNELS_LAST)
    in_p = p < hw
    H2: tl.constexpr = HALF == 2
    am2 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p,
                       -2, H2, COMPUTE, BIAS), RELU)
    am1 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, -1,
                       True, COMPUTE, BIAS), RELU)
    x0 = _input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, 0, True, COMPUTE, BIAS)
    a0 = _relu(x0, RELU)
    ap1 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p, 1,
                       True, COMPUTE, BIAS), RELU)
    ap2 = _relu(_input(a_ptr, bias_ptr, base, col0, c, p, in_p, cg, s_c, s_p,
                       2, H2, COMPUTE, BIAS), RELU)
    s = k + alpha * _window(am2 * am2, am1 * am1, a0 * a0, ap1 * ap1, ap2 * ap2, HALF)
    pw, q = _powers(s, beta, BETA_3_4)
    g0 = _shifted(g_ptr, base, c, p, in_p, cg, s_c, s_p, 0, True, COMPUTE)
    offs = c * s_c + p * s_p
    mask = (c < cg) & in_p
    tl.store(out_ptr + base + offs, (g0 * a0 * q).to(out_ptr.dtype.element_ty), mask=mask)
    tl.debug_barrier()  # every u of the column written before any is read
    acc = _window(_shifted(out_ptr, base, c, p, in_p, cg, s_c, s_p, -2, H2, COMPUTE),
                  _shifted(out_ptr, base, c, p, in_p, cg, s_c, s_p, -1, True, COMPUTE),
                  _shifted(out_ptr, base, c, p, in_p, cg, s_c, s_p, 0, True, COMPUTE),
                  _shifted(out_ptr, base, c, p, in_p, cg, s_c, s_p, 1, True, COMPUTE),
                  _shifted(out_ptr, base, c, p, in_p, cg, s_c, s_p, 2, H2, COMPUTE), HALF)
    grad = _relu_grad(g0 * pw - 2.0 * alpha * beta * a0 * acc, x0, RELU)
    tl.debug_barrier()  # every u read before any is overwritten
    tl.store(out_ptr + base + offs, grad.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _centre_grad(x0, x2, u0, u1, u2, u3, u4, g0, g1, p0, p1, alpha, beta, HALF: tl.constexpr,
                 RELU: tl.constexpr):
    """The halo backward's gradient at the centre c of the newest full window: a_c, g_c,
    p_c lag the stream by 2 HALF maps (x0, g0, p0 for HALF 2; x2, g1, p1 for HALF 1), and the
    window's u_j are the newest 2 HALF + 1 of u0..u4."""
    if HALF == 2:
        acc = u0 + u1 + u2 + u3 + u4
        ac, gc, pc = x0, g0, p0
    else:
        acc = u2 + u3 + u4
        ac, gc, pc = x2, g1, p1
    # a_c = ReLU(x_c) <= 0 where x_c <= 0, and NaN where x_c is
    return _relu_grad(gc * pc - 2.0 * alpha * beta * ac * acc, ac, RELU)


@triton.jit
def _unpack(v, BLOCK_P: tl.constexpr, G: tl.constexpr):
    """The G channels of v [BLOCK_P, G] (G = 2, 4 or 8) as eight [BLOCK_P] vectors (zeros
    past G): in-thread splits of a row each thread holds whole, no data movement."""
    z = tl.zeros([BLOCK_P], v.dtype)
    x0, x1, x2, x3, x4, x5, x6, x7 = z, z, z, z, z, z, z, z
    if G == 2:
        x0, x1 = tl.split(v)
    elif G == 4:  # channel 2 i + k at [:, i, k]
        e, o = tl.split(tl.reshape(v, [BLOCK_P, 2, 2]))
        x0, x2 = tl.split(e)
        x1, x3 = tl.split(o)
    else:  # channel 4 i + 2 j + k at [:, i, j, k]
        e, o = tl.split(tl.reshape(v, [BLOCK_P, 2, 2, 2]))
        ee, eo = tl.split(e)
        oe, oo = tl.split(o)
        x0, x4 = tl.split(ee)
        x2, x6 = tl.split(eo)
        x1, x5 = tl.split(oe)
        x3, x7 = tl.split(oo)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _pack(x0, x1, x2, x3, x4, x5, x6, x7, BLOCK_P: tl.constexpr, G: tl.constexpr):
    """[BLOCK_P, G] from the first G of eight [BLOCK_P] vectors: `_unpack`'s inverse."""
    if G == 2:
        v = tl.join(x0, x1)
    elif G == 4:
        v = tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), [BLOCK_P, 4])
    else:
        ee, eo = tl.join(x0, x4), tl.join(x2, x6)
        oe, oo = tl.join(x1, x5), tl.join(x3, x7)
        v = tl.reshape(tl.join(tl.join(ee, eo), tl.join(oe, oo)), [BLOCK_P, 8])
    return v


@triton.jit
def _pick(e: tl.constexpr, x0, x1, x2, x3, x4, x5, x6, x7):
    """The e-th of eight values (e a compile-time index)."""
    v = x0
    if e == 1:
        v = x1
    elif e == 2:
        v = x2
    elif e == 3:
        v = x3
    elif e == 4:
        v = x4
    elif e == 5:
        v = x5
    elif e == 6:
        v = x6
    elif e == 7:
        v = x7
    return v


@triton.jit
def _put(e: tl.constexpr, v, x0, x1, x2, x3, x4, x5, x6, x7):
    """The eight values with the e-th replaced by v (e a compile-time index)."""
    if e == 0:
        x0 = v
    elif e == 1:
        x1 = v
    elif e == 2:
        x2 = v
    elif e == 3:
        x3 = v
    elif e == 4:
        x4 = v
    elif e == 5:
        x5 = v
    elif e == 6:
        x6 = v
    else:
        x7 = v
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _band(cg, HALF: tl.constexpr, BLOCK_C: tl.constexpr):
    """The column's window as a (BLOCK_C, BLOCK_C) matrix: 1 where maps i and j are at most
    HALF apart and both in the column, 0 elsewhere (the clipped window; symmetric)."""
    i = tl.arange(0, BLOCK_C)[:, None]
    j = tl.arange(0, BLOCK_C)[None, :]
    inside = (i - j <= HALF) & (j - i <= HALF) & (i < cg) & (j < cg)
    return tl.where(inside, 1.0, 0.0)


@triton.jit
def _window_sums(x, band):
    """x @ band, each row's window sums, on the tensor cores to fp32's precision: x is cut
    into hi (its first 11 significant bits, what a tf32 product takes exactly) and lo = x -
    hi (exact in fp32, rounded to 11 bits by the second product: 2^-22 of x at most); the
    band's 0s and 1s are exact, and the sums are in fp32."""
    hi = (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    acc = tl.dot(hi, band, input_precision="tf32", out_dtype=tl.float32)
    return tl.dot(x - hi, band, acc, input_precision="tf32", out_dtype=tl.float32)


@triton.jit
def _window_gather(x, cg, HALF: tl.constexpr, BLOCK_C: tl.constexpr):
    """Each row's window sums of x (a pixel's maps along axis 1): x plus its neighbours up to
    HALF maps away within [0, cg), in x's dtype, exact as the tile kernels' sums (a NaN stays
    in its window); the neighbours gathered along the row (`tl.gather`: within the threads
    that hold the row, no matrix product, no band)."""
    ch = tl.arange(0, BLOCK_C)[None, :] + tl.zeros(x.shape, tl.int32)
    w = x
    for d in tl.static_range(1, HALF + 1):
        below = tl.gather(x, tl.maximum(ch - d, 0), axis=1)
        above = tl.gather(x, tl.minimum(ch + d, BLOCK_C - 1), axis=1)
        w += tl.where(ch >= d, below, 0.0) + tl.where(ch + d < cg, above, 0.0)
    return w


@triton.jit
def _row_sums(x, band, cg, HALF: tl.constexpr, BLOCK_C: tl.constexpr, GATHER: tl.constexpr):
    """The window sums of each row of x: gathered (GATHER, the gather layout) or as a product
    with the band matrix (the band layout)."""
    if GATHER:
        w = _window_gather(x, cg, HALF, BLOCK_C)
    else:
        w = _window_sums(x, band)
    return w


@triton.jit
def _band_block(rows, C, cg, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(offsets, mask) of the program's block: BLOCK_P pixels of a channels_last tensor (rows
    of C elements) and its column's cg maps (masked up to BLOCK_C)."""
    r = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ch = tl.arange(0, BLOCK_C)
    offs = r[:, None].to(tl.int64) * C + (tl.program_id(1) * cg + ch)[None, :]
    return offs, (r < rows)[:, None] & (ch < cg)[None, :]


@triton.jit
def _band_input(a_ptr, bias_ptr, offs, mask, cg, BLOCK_C: tl.constexpr, BIAS: tl.constexpr,
                COMPUTE: tl.constexpr):
    """The band block of the input in COMPUTE, with its maps' biases added (BIAS); 0 outside
    the column."""
    x = tl.load(a_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if BIAS:
        ch = tl.program_id(1) * cg + tl.arange(0, BLOCK_C)
        b = tl.load(bias_ptr + ch, mask=tl.arange(0, BLOCK_C) < cg, other=0.0)
        x += b.to(COMPUTE)[None, :]
    return x


@triton.jit
def _lrn_forward_band_kernel(a_ptr, bias_ptr, b_ptr, rows, C, cg, alpha, beta, k,
                             COMPUTE: tl.constexpr, HALF: tl.constexpr, RELU: tl.constexpr,
                             BIAS: tl.constexpr, GATHER: tl.constexpr, BLOCK_P: tl.constexpr,
                             BLOCK_C: tl.constexpr, BETA_3_4: tl.constexpr):
    # one block of pixels x the column's maps, read once in whole rows; the window sums of
    # the squares one product with the band matrix (or gathered along the rows: GATHER)
    offs, mask = _band_block(rows, C, cg, BLOCK_P, BLOCK_C)
    a = _relu(_band_input(a_ptr, bias_ptr, offs, mask, cg, BLOCK_C, BIAS, COMPUTE), RELU)
    s = k + alpha * _row_sums(a * a, _band(cg, HALF, BLOCK_C), cg, HALF, BLOCK_C, GATHER)
    pw, _ = _powers(s, beta, BETA_3_4)
    tl.store(b_ptr + offs, (a * pw).to(b_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_backward_band_kernel(g_ptr, a_ptr, bias_ptr, out_ptr, rows, C, cg, alpha, beta, k,
                              COMPUTE: tl.constexpr, HALF: tl.constexpr, RELU: tl.constexpr,
                              BIAS: tl.constexpr, GATHER: tl.constexpr, BLOCK_P: tl.constexpr,
                              BLOCK_C: tl.constexpr, BETA_3_4: tl.constexpr):
    # s from the squares as in the forward, u = g a s^(-beta-1) in registers, and the sum of
    # u over the maps whose window holds c: the window is symmetric, so the same row sums
    offs, mask = _band_block(rows, C, cg, BLOCK_P, BLOCK_C)
    x = _band_input(a_ptr, bias_ptr, offs, mask, cg, BLOCK_C, BIAS, COMPUTE)
    a = _relu(x, RELU)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    band = _band(cg, HALF, BLOCK_C)
    s = k + alpha * _row_sums(a * a, band, cg, HALF, BLOCK_C, GATHER)
    pw, q = _powers(s, beta, BETA_3_4)
    acc = _row_sums(g * a * q, band, cg, HALF, BLOCK_C, GATHER)
    grad = _relu_grad(g * pw - 2.0 * alpha * beta * a * acc, x, RELU)
    tl.store(out_ptr + offs, grad.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _unpack_lanes(v, BLOCK_P: tl.constexpr, NG: tl.constexpr, W: tl.constexpr):
    """The W lanes of v [BLOCK_P, NG, W] (W = 1, 2, 4 or 8) as eight [BLOCK_P, NG] tensors
    (zeros past W): `_unpack` over the pixels and groups together, in-thread splits."""
    z = tl.zeros([BLOCK_P, NG], v.dtype)
    x0, x1, x2, x3, x4, x5, x6, x7 = z, z, z, z, z, z, z, z
    if W == 1:
        x0 = tl.reshape(v, [BLOCK_P, NG])
    else:
        y0, y1, y2, y3, y4, y5, y6, y7 = _unpack(tl.reshape(v, [BLOCK_P * NG, W]),
                                                 BLOCK_P * NG, W)
        x0, x1 = tl.reshape(y0, [BLOCK_P, NG]), tl.reshape(y1, [BLOCK_P, NG])
        if W >= 4:
            x2, x3 = tl.reshape(y2, [BLOCK_P, NG]), tl.reshape(y3, [BLOCK_P, NG])
        if W == 8:
            x4, x5 = tl.reshape(y4, [BLOCK_P, NG]), tl.reshape(y5, [BLOCK_P, NG])
            x6, x7 = tl.reshape(y6, [BLOCK_P, NG]), tl.reshape(y7, [BLOCK_P, NG])
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _pack_lanes(x0, x1, x2, x3, x4, x5, x6, x7, BLOCK_P: tl.constexpr, NG: tl.constexpr,
                G: tl.constexpr):
    """[BLOCK_P, NG, G] from the first G of eight [BLOCK_P, NG] tensors (G = 2, 4 or 8):
    `_unpack_lanes`'s inverse, through `_pack`."""
    n: tl.constexpr = BLOCK_P * NG
    v = _pack(tl.reshape(x0, [n]), tl.reshape(x1, [n]), tl.reshape(x2, [n]),
              tl.reshape(x3, [n]), tl.reshape(x4, [n]), tl.reshape(x5, [n]),
              tl.reshape(x6, [n]), tl.reshape(x7, [n]), n, G)
    return tl.reshape(v, [BLOCK_P, NG, G])


@triton.jit
def _halo_block(cg, BLOCK_P: tl.constexpr, NG: tl.constexpr):
    """This program's pixels r (rows of the channels_last tensor), its column's groups gi
    (NG: the column's groups rounded up to a power of two) and col0, the column's first
    channel."""
    r = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return r, tl.arange(0, NG), tl.program_id(1) * cg


@triton.jit
def _halo_lanes(ptr, bias_ptr, r, rows, C, col0, cg, gi, OFF: tl.constexpr, W: tl.constexpr,
                G: tl.constexpr, BLOCK_P: tl.constexpr, NG: tl.constexpr,
                COMPUTE: tl.constexpr, BIAS: tl.constexpr):
    """Maps gi G + OFF .. + W - 1 of the column at pixels r, for each group gi, as eight
    [BLOCK_P, NG] tensors (lanes past W zero), with their biases added (BIAS); zeros outside
    the column (the clipped window). Each span loads as one vector where the sizes allow:
    the compiler sees that the mask is constant over it when OFF and W are even and C and
    cg multiples of 16 (as conv1's and conv2's)."""
    ch = (gi * G + OFF)[None, :, None] + tl.arange(0, W)[None, None, :]  # within the column
    inside = (ch >= 0) & (ch < cg)
    offs = (r.to(tl.int64) * C)[:, None, None] + col0 + ch
    v = tl.load(ptr + offs, mask=(r < rows)[:, None, None] & inside, other=0.0).to(COMPUTE)
    if BIAS:
        v += tl.load(bias_ptr + col0 + ch, mask=inside, other=0.0).to(COMPUTE)
    return _unpack_lanes(v, BLOCK_P, NG, W)


@triton.jit
def _seq(t: tl.constexpr, H: tl.constexpr, G: tl.constexpr, l0, l1, l2, l3, x0, x1, x2, x3,
         x4, x5, x6, x7, h0, h1, h2, h3):
    """Entry t of a group's maps with H maps of halo on each side: l0.. (the H maps before the
    group), x0.. (its G maps), h0.. (the H after); t a compile-time index."""
    if t < H:
        v = _pick(t, l0, l1, l2, l3, l0, l0, l0, l0)
    elif t < H + G:
        v = _pick(t - H, x0, x1, x2, x3, x4, x5, x6, x7)
    else:
        v = _pick(t - H - G, h0, h1, h2, h3, h0, h0, h0, h0)
    return v


@triton.jit
def _lrn_forward_halo_kernel(a_ptr, bias_ptr, b_ptr, rows, C, cg, alpha, beta, k,
                             COMPUTE: tl.constexpr, HALF: tl.constexpr, RELU: tl.constexpr,
                             BIAS: tl.constexpr, G: tl.constexpr, NG: tl.constexpr,
                             BLOCK_P: tl.constexpr, BETA_3_4: tl.constexpr):
    # channels_last: each thread holds one group of G maps (16 bytes) of a pixel, the threads
    # next to it the same pixel's other groups (so a warp's loads cover whole rows), and
    # loads the HALF maps on each side that its windows reach (the halo, from the cache:
    # the neighbouring threads' groups); the G + 2 HALF maps stream through x0..x4 (x4 the
    # newest, `_newest_window`), and the G outputs go out in one 16-byte store
    r, gi, col0 = _halo_block(cg, BLOCK_P, NG)
    l0, l1, l2, l3, _l4, _l5, _l6, _l7 = _halo_lanes(a_ptr, bias_ptr, r, rows, C, col0, cg,
                                                     gi, -HALF, HALF, G, BLOCK_P, NG,
                                                     COMPUTE, BIAS)
    v0, v1, v2, v3, v4, v5, v6, v7 = _halo_lanes(a_ptr, bias_ptr, r, rows, C, col0, cg, gi, 0,
                                                 G, G, BLOCK_P, NG, COMPUTE, BIAS)
    h0, h1, h2, h3, _h4, _h5, _h6, _h7 = _halo_lanes(a_ptr, bias_ptr, r, rows, C, col0, cg,
                                                     gi, G, HALF, G, BLOCK_P, NG, COMPUTE,
                                                     BIAS)
    z = tl.zeros([BLOCK_P, NG], COMPUTE)
    x0, x1, x2, x3, x4 = z, z, z, z, z
    o0, o1, o2, o3, o4, o5, o6, o7 = z, z, z, z, z, z, z, z
    for tt in tl.static_range(G + 2 * HALF):  # map tt - HALF; completes map tt - 2 HALF
        x0, x1, x2, x3 = x1, x2, x3, x4
        x4 = _relu(_seq(tt, HALF, G, l0, l1, l2, l3, v0, v1, v2, v3, v4, v5, v6, v7, h0, h1,
                        h2, h3), RELU)
        if tt >= 2 * HALF:
            w, a = _newest_window(x0, x1, x2, x3, x4, HALF)
            pw, _ = _powers(k + alpha * w, beta, BETA_3_4)
            o0, o1, o2, o3, o4, o5, o6, o7 = _put(tt - 2 * HALF, a * pw, o0, o1, o2, o3, o4,
                                                  o5, o6, o7)
    offs = (r.to(tl.int64) * C)[:, None, None] + (col0 + gi * G)[None, :, None] \
        + tl.arange(0, G)[None, None, :]
    mask = (r < rows)[:, None, None] & (gi * G < cg)[None, :, None]
    tl.store(b_ptr + offs, _pack_lanes(o0, o1, o2, o3, o4, o5, o6, o7, BLOCK_P, NG, G)
             .to(b_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_backward_halo_kernel(g_ptr, a_ptr, bias_ptr, out_ptr, rows, C, cg, alpha, beta, k,
                              COMPUTE: tl.constexpr, HALF: tl.constexpr, RELU: tl.constexpr,
                              BIAS: tl.constexpr, G: tl.constexpr, NG: tl.constexpr,
                              BLOCK_P: tl.constexpr, BETA_3_4: tl.constexpr):
    # a streaming backward (one power per map) on one group and its halo: a at the 2 HALF maps
    # on each side (the s_j of the group's window neighbours j need them), g at HALF; step
    # tt takes a at map tt - 2 HALF, completes s_j and u_j = g_j a_j s_j^(-beta-1) at j =
    # tt - 3 HALF (g_j = 0 outside the column, so u_j = 0 there) and the gradient at
    # c = tt - 4 HALF
    r, gi, col0 = _halo_block(cg, BLOCK_P, NG)
    l0, l1, l2, l3, _l4, _l5, _l6, _l7 = _halo_lanes(a_ptr, bias_ptr, r, rows, C, col0, cg,
                                                     gi, -2 * HALF, 2 * HALF, G, BLOCK_P, NG,
                                                     COMPUTE, BIAS)
    v0, v1, v2, v3, v4, v5, v6, v7 = _halo_lanes(a_ptr, bias_ptr, r, rows, C, col0, cg, gi, 0,
                                                 G, G, BLOCK_P, NG, COMPUTE, BIAS)
    h0, h1, h2, h3, _h4, _h5, _h6, _h7 = _halo_lanes(a_ptr, bias_ptr, r, rows, C, col0, cg,
                                                     gi, G, 2 * HALF, G, BLOCK_P, NG, COMPUTE,
                                                     BIAS)
    m0, m1, m2, m3, _m4, _m5, _m6, _m7 = _halo_lanes(g_ptr, g_ptr, r, rows, C, col0, cg, gi,
                                                     -HALF, HALF, G, BLOCK_P, NG, COMPUTE,
                                                     False)
    f0, f1, f2, f3, f4, f5, f6, f7 = _halo_lanes(g_ptr, g_ptr, r, rows, C, col0, cg, gi, 0, G,
                                                 G, BLOCK_P, NG, COMPUTE, False)
    n0, n1, n2, n3, _n4, _n5, _n6, _n7 = _halo_lanes(g_ptr, g_ptr, r, rows, C, col0, cg, gi,
                                                     G, HALF, G, BLOCK_P, NG, COMPUTE, False)
    z = tl.zeros([BLOCK_P, NG], COMPUTE)
    x0, x1, x2, x3, x4 = z, z, z, z, z
    u0, u1, u2, u3, u4 = z, z, z, z, z  # u_{j-4}..u_j
    g0, g1, g2 = z, z, z  # g_{j-2}..g_j
    p0, p1, p2 = z, z, z  # p_{j-2}..p_j
    o0, o1, o2, o3, o4, o5, o6, o7 = z, z, z, z, z, z, z, z
    for tt in tl.static_range(G + 4 * HALF):
        x0, x1, x2, x3 = x1, x2, x3, x4
        x4 = _relu(_seq(tt, 2 * HALF, G, l0, l1, l2, l3, v0, v1, v2, v3, v4, v5, v6, v7, h0,
                        h1, h2, h3), RELU)
        if tt >= 2 * HALF:  # s_j is full, j = tt - 3 HALF
            w, aj = _newest_window(x0, x1, x2, x3, x4, HALF)
            pj, qj = _powers(k + alpha * w, beta, BETA_3_4)
            gj = _seq(tt - 2 * HALF, HALF, G, m0, m1, m2, m3, f0, f1, f2, f3, f4, f5, f6, f7,
                      n0, n1, n2, n3)
            u0, u1, u2, u3, u4 = u1, u2, u3, u4, gj * aj * qj
            g0, g1, g2 = g1, g2, gj
            p0, p1, p2 = p1, p2, pj
            if tt >= 4 * HALF:  # c = tt - 4 HALF has all its u_j
                grad = _centre_grad(x0, x2, u0, u1, u2, u3, u4, g0, g1, p0, p1, alpha, beta,
                                    HALF, RELU)
                o0, o1, o2, o3, o4, o5, o6, o7 = _put(tt - 4 * HALF, grad, o0, o1, o2, o3, o4,
                                                      o5, o6, o7)
    offs = (r.to(tl.int64) * C)[:, None, None] + (col0 + gi * G)[None, :, None] \
        + tl.arange(0, G)[None, None, :]
    mask = (r < rows)[:, None, None] & (gi * G < cg)[None, :, None]
    tl.store(out_ptr + offs, _pack_lanes(o0, o1, o2, o3, o4, o5, o6, o7, BLOCK_P, NG, G)
             .to(out_ptr.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor) -> torch.Tensor:
    """x as NCHW-contiguous or channels_last-contiguous (unchanged when it already is one)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _strides(x: torch.Tensor) -> tuple[int, int, int, bool]:
    """(image, channel, pixel) strides of an NCHW- or channels_last-contiguous x (pixel
    h W + w), and whether it is channels_last; from its shape, not x.stride(): a size-1
    dimension's stride is anything (a transposed (N, C, H, 1) map is contiguous with a W
    stride of H, not its pixels' 1)."""
    n, c, h, w = x.shape
    if c > 1 and x.is_contiguous(memory_format=torch.channels_last):
        return c * h * w, 1, c, True
    return c * h * w, h * w, 1, False


def _block_c(cg: int) -> int:
    """Channels per program: a power of two dividing the column's cg when one of 8..32 does
    (48 -> 16, 128 -> 32: no masked lanes), else cg rounded up to a power of two (<= 32).
    Programs next to each other in a column read each other's first maps as their window's
    edge, from the cache."""
    low = cg & -cg
    return min(low, 32) if low >= 8 else min(triton.next_power_of_2(cg), 32)


def _compute(out: torch.Tensor) -> tl.dtype:
    """The kernels' arithmetic for maps like out: fp64 for fp64, else fp32."""
    return tl.float64 if out.dtype == torch.float64 else tl.float32


def _on_device(out: torch.Tensor) -> contextlib.AbstractContextManager:
    """out's CUDA device made current for a launch (nothing to do on the CPU)."""
    return torch.cuda.device(out.device) if out.is_cuda else contextlib.nullcontext()


def _launch(kernel, tensors: list[torch.Tensor], out: torch.Tensor, groups: int, half: int,
            alpha: float, beta: float, k: float, relu: bool, tile: int,
            whole_column: bool = False, bias: torch.Tensor | None = None) -> None:
    """Run `kernel` over `tensors` (the shape and memory format of out) and `bias` (the
    input's per-map bias, added as it is loaded; None: none): a program per block of a
    column's channels (the whole column if `whole_column`) and of pixels."""
    n, c, h, w = out.shape
    cg = c // groups
    block_c = triton.next_power_of_2(cg) if whole_column else _block_c(cg)
    block_p = max(1, min(triton.next_power_of_2(h * w), tile // block_c))
    s_n, s_c, s_p, channels_last = _strides(out)
    grid = (n * groups * triton.cdiv(cg, block_c), triton.cdiv(h * w, block_p))
    with _on_device(out):
        kernel[grid](*tensors, out if bias is None else bias, out, h * w, cg, groups, s_n, s_c,
                     s_p, alpha, beta, k, COMPUTE=_compute(out), HALF=half, RELU=relu,
                     BIAS=bias is not None, BLOCK_C=block_c, BLOCK_P=block_p,
                     CHANNELS_LAST=channels_last, BETA_3_4=beta == 0.75,
                     num_warps=NUM_WARPS)


def _band_shape(cg: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps) of the band layout for columns of cg maps: the column
    rounded up to a power of two (at least 16, tl.dot's least), 64 pixels (a warp group's
    rows of a Hopper matrix product), 8 warps from 128 maps (conv2's) so that each thread
    holds 32 elements of a block."""
    block_c = max(16, triton.next_power_of_2(cg))
    return BAND_BLOCK_P, block_c, 4 if block_c <= 64 else 8


def _launch_band(kernel, tensors: list[torch.Tensor], out: torch.Tensor, groups: int,
                 half: int, alpha: float, beta: float, k: float, relu: bool,
                 bias: torch.Tensor | None = None, gather: bool = False) -> None:
    """Run a band-layout `kernel` over channels_last `tensors` (the shape and memory format of
    out) and `bias` (as `_launch`'s): a program per block of pixels and column; `gather`:
    the gather layout's window sums (the same kernels, no band matrix)."""
    n, c, h, w = out.shape
    cg = c // groups
    block_p, block_c, num_warps = _band_shape(cg)
    grid = (triton.cdiv(n * h * w, block_p), groups)
    with _on_device(out):
        kernel[grid](*tensors, out if bias is None else bias, out, n * h * w, c, cg, alpha, beta,
                     k, COMPUTE=_compute(out), HALF=half, RELU=relu, BIAS=bias is not None,
                     GATHER=gather, BLOCK_P=block_p, BLOCK_C=block_c, BETA_3_4=beta == 0.75,
                     num_warps=num_warps)


def _halo_shape(cg: int, element_size: int, layout: str = "halo") -> tuple[int, int, int]:
    """(G, NG, BLOCK_P) of the halo `layout` (halo or halo2) for columns of cg maps: G maps a
    16-byte group, the column's groups rounded up to a power of two (conv1's 6 of bf16 to 8,
    conv2's 16) and pixels per program for HALO_GROUPS[layout] x HALO_TILE elements (halo:
    32 and 16 pixels in bf16)."""
    group = 16 // element_size
    ng = triton.next_power_of_2(max(1, cg // group))
    return group, ng, max(1, HALO_GROUPS[layout] * HALO_TILE // (ng * group))


def _launch_halo(kernel, tensors: list[torch.Tensor], out: torch.Tensor, groups: int,
                 half: int, alpha: float, beta: float, k: float, relu: bool,
                 bias: torch.Tensor | None = None, layout: str = "halo") -> None:
    """Run a halo-layout `kernel` over channels_last `tensors` (the shape and memory format of
    out, columns of whole 16-byte groups) and `bias` (as `_launch`'s): a program per block
    of pixels (`_halo_shape` of `layout`, halo or halo2) and column."""
    n, c, h, w = out.shape
    cg = c // groups
    group, ng, block_p = _halo_shape(cg, out.element_size(), layout)
    grid = (triton.cdiv(n * h * w, block_p), groups)
    with _on_device(out):
        kernel[grid](*tensors, out if bias is None else bias, out, n * h * w, c, cg, alpha, beta,
                     k, COMPUTE=_compute(out), HALF=half, RELU=relu, BIAS=bias is not None, G=group,
                     NG=ng, BLOCK_P=block_p, BETA_3_4=beta == 0.75, num_warps=HALO_NUM_WARPS)


def _whole_groups(out: torch.Tensor, groups: int) -> bool:
    """Whether each of out's `groups` columns is a whole number of 16-byte groups of maps
    (8 bf16 or 4 fp32: conv1's 48 and conv2's 128 are), as the halo kernels' loads need."""
    return (out.shape[1] // groups) % (16 // out.element_size()) == 0


def _applicable(layout: str, out: torch.Tensor, groups: int) -> str:
    """The layout whose kernels run on `out` (NCHW- or channels_last-contiguous) when `layout`
    (not auto) is asked for: halo and halo2 take only channels_last tensors whose columns
    are whole 16-byte groups (`_whole_groups`), band and gather only channels_last ones
    (band not float64); the others take the tile kernels."""
    channels_last = _strides(out)[3]
    if layout == "band":  # tensor-core products: not in float64
        return "band" if channels_last and out.dtype != torch.float64 else "tile"
    if layout == "gather":
        return "gather" if channels_last else "tile"
    if layout not in HALO_GROUPS:
        return layout
    return layout if channels_last and _whole_groups(out, groups) else "tile"


def _kernels_for(out: torch.Tensor, groups: int, direction: str = "forward",
                 key: tuple = (), run: Callable[[str], None] | None = None) -> str:
    """The layout whose kernels run `direction` (forward or backward) on `out`: LAYOUT
    (ALEXNET_LRN_LAYOUT; a user error if unknown) where it applies (`_applicable`); for auto,
    the fastest of AUTO_LAYOUTS as `run(layout)` times them (`_auto`; `key`: the kernels'
    other settings), or tile where it cannot time them (no `run`)."""
    layout = _setting("ALEXNET_LRN_LAYOUT", LAYOUT, LAYOUTS)
    if layout != "auto":
        return _applicable(layout, out, groups)
    return "tile" if run is None else _auto(direction, out, groups, key, run)


_AUTO: dict[tuple, str] = {}  # what auto chose, by direction, device, shape, dtype, settings
_AUTO_LOCK = threading.Lock()


def _timeable(out: torch.Tensor) -> bool:
    """Whether auto times layouts on `out`: a CUDA tensor of at least AUTO_MIN_ELEMENTS, not
    while a CUDA graph is being captured (nothing may synchronise then) and not when the user
    asked for deterministic algorithms (a timed choice may differ from run to run)."""
    return (out.is_cuda and out.numel() >= AUTO_MIN_ELEMENTS
            and not torch.are_deterministic_algorithms_enabled()
            and not torch.cuda.is_current_stream_capturing())


def _auto(direction: str, out: torch.Tensor, groups: int, key: tuple,
          run: Callable[[str], None]) -> str:
    """auto's layout for `direction` on tensors like `out`: chosen once per direction, device,
    shape, memory format, dtype, column count and kernel settings (`key`), then cached; tile
    where only tile applies, under deterministic algorithms, and where a choice not yet made
    cannot be timed (`_timeable`: while a CUDA graph is captured, the choice its warm-up
    made holds)."""
    candidates = list(dict.fromkeys(_applicable(layout, out, groups)
                                    for layout in AUTO_LAYOUTS))
    if len(candidates) == 1 or torch.are_deterministic_algorithms_enabled():
        return "tile"
    key = _auto_key(direction, out, groups, key)
    with _AUTO_LOCK:
        if key not in _AUTO:  # a choice made before (a CUDA graph's warm-up) holds in capture
            if not _timeable(out):
                return "tile"
            what = f"{direction} on {tuple(out.shape)} {str(out.dtype).removeprefix('torch.')}"
            _AUTO[key] = _fastest(candidates, out, run, what)
        return _AUTO[key]


def _auto_key(direction: str, out: torch.Tensor, groups: int, key: tuple) -> tuple:
    """auto's cache key: what a layout's speed may depend on."""
    return (direction, out.device, tuple(out.shape), _strides(out)[3], out.dtype, groups, *key)


def _settings(half: int, relu: bool, bias: bool, beta: float) -> tuple:
    """The kernels' settings other than the tensor's, as auto keys them (the same for the
    forward and the backward, which `_auto_key` keys apart)."""
    return (half, relu, bias, beta == 0.75)


def auto_choice(x: torch.Tensor, groups: int, half: int, relu: bool, bias: bool,
                beta: float) -> dict[str, str]:
    """What auto chose for the forward and the backward of LRN on tensors like x (as the
    kernels take it: `_layout(x)`); a direction it has not timed yet is absent."""
    out = _layout(x)
    chosen = {}
    for direction in ("forward", "backward"):
        key = _auto_key(direction, out, groups, _settings(half, relu, bias, beta))
        if key in _AUTO:
            chosen[direction] = _AUTO[key]
    return chosen


def _fastest(candidates: list[str], out: torch.Tensor, run: Callable[[str], None],
             what: str) -> str:
    """The layout of `candidates` (tile first) whose `run` (writing `out`) takes least time,
    the best of AUTO_ROUNDS rounds, each layout in turn (so that a busy moment hits them
    alike). A layout that fails, or whose result on out's first images (AUTO_CHECK_ELEMENTS)
    differs from tile's beyond the rounding of out's dtype, is left out with one warning
    line; tile's own failure is raised."""
    run(candidates[0])  # tile: compiled (the first-use check passed it) and the reference
    # the images compared: the first ones, about AUTO_CHECK_ELEMENTS (a 10-crop evaluation
    # batch's maps are gigabytes; the comparison's copies need not be)
    probe = out[:max(1, AUTO_CHECK_ELEMENTS // max(1, out[0].numel()))]
    reference = probe.clone()
    usable = [candidates[0]]
    for layout in candidates[1:]:
        try:
            run(layout)
            why = None if _close(probe, reference) else "differs from the tile layout"
        except UserError:
            raise
        except Exception as err:  # a kernel that does not compile or launch here
            first = str(err).strip().partition("\n")[0]
            why = f"failed ({type(err).__name__}: {first})"
        if why is None:
            usable.append(layout)
        else:
            print(f"alexnet: warning: the Triton LRN's {layout} layout {why} on the {what}; "
                  "auto leaves it out", file=sys.stderr)
    if len(usable) == 1:
        return usable[0]
    seconds = dict.fromkeys(usable, math.inf)
    with _on_device(out):
        for _ in range(AUTO_ROUNDS):
            for layout in usable:
                seconds[layout] = min(seconds[layout], _seconds(functools.partial(run, layout)))
    return min(usable, key=seconds.__getitem__)


def _seconds(launch: Callable[[], None]) -> float:
    """Seconds per call of `launch` on the current CUDA stream: AUTO_REPEATS calls between
    two events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(AUTO_REPEATS):
        launch()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / AUTO_REPEATS


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether two layouts' results agree to the rounding of their dtype (fp32 sums kept in
    different orders, then rounded to a 16-bit dtype, may differ by its last bit): within
    1e-2 (16-bit), 1e-4 (fp32) or 1e-10 (fp64) of each value, or of the largest finite one;
    a NaN or inf only where the other has the same."""
    tol = {torch.float64: 1e-10, torch.float32: 1e-4}.get(want.dtype, 1e-2)
    wide = torch.float64 if want.dtype == torch.float64 else torch.float32
    got, want = got.to(wide), want.to(wide)
    finite = torch.where(torch.isfinite(want), want.abs(), 0)  # a NaN or inf sets no scale
    scale = float(finite.max()) if want.numel() else 0.0
    return torch.allclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True)


def _check(x: torch.Tensor, groups: int, half: int, bias: torch.Tensor | None) -> None:
    if x.dim() != 4 or x.shape[1] % groups:
        raise ValueError(f"lrn: need (N, C, H, W) with C divisible by groups={groups}, "
                         f"got {tuple(x.shape)}")
    if not 1 <= half <= MAX_HALF:
        raise ValueError(f"lrn: the kernel takes windows n = 3 or 5 (half 1 or 2), got {half}")
    if bias is not None and (bias.shape != x.shape[1:2] or bias.device != x.device):
        raise ValueError(f"lrn: the bias must be one value per map ({x.shape[1]},) on "
                         f"{x.device}, got {tuple(bias.shape)} on {bias.device}")


def _forward_launch(kernels: str, a: torch.Tensor, out: torch.Tensor, groups: int,
                    half: int, alpha: float, beta: float, k: float, relu: bool,
                    bias: torch.Tensor | None) -> None:
    """Write `forward`'s result into out with the `kernels` layout's forward kernel (each
    adds the bias as it loads a)."""
    if kernels in HALO_GROUPS:
        _launch_halo(_lrn_forward_halo_kernel, [a], out, groups, half, alpha, beta, k, relu,
                     bias, kernels)
    elif kernels in ("band", "gather"):
        _launch_band(_lrn_forward_band_kernel, [a], out, groups, half, alpha, beta, k, relu,
                     bias, gather=kernels == "gather")
    else:
        _launch(_lrn_forward_kernel, [a], out, groups, half, alpha, beta, k, relu,
                FORWARD_TILE, bias=bias)


def forward(x: torch.Tensor, groups: int, half: int, alpha: float, beta: float, k: float,
            relu: bool, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's LRN of x (N, C, H, W) (of ReLU(x) if `relu`: the two layers in one pass;
    of x + bias, one value per map, if `bias`: the conv's bias add folded in too) over
    channels within each of `groups` columns, window c-half..c+half clipped at each column's
    edges: the kernels' launch, without autograd (`apply` and the op `lrn` add it)."""
    _check(x, groups, half, bias)
    a = _layout(x)
    out = torch.empty_like(a)
    if not out.numel():
        return out
    run = functools.partial(_forward_launch, a=a, out=out, groups=groups, half=half,
                            alpha=alpha, beta=beta, k=k, relu=relu, bias=bias)
    key = _settings(half, relu, bias is not None, beta)
    run(_kernels_for(out, groups, "forward", key, run))
    return out


def _backward_launch(kernels: str, g: torch.Tensor, a: torch.Tensor, out: torch.Tensor,
                     groups: int, half: int, alpha: float, beta: float, k: float, relu: bool,
                     bias: torch.Tensor | None) -> None:
    """Write `backward`'s result into out with the `kernels` layout's backward kernel (tile:
    the twophase kernel, a program per block of a whole column and of pixels)."""
    if kernels in HALO_GROUPS:
        _launch_halo(_lrn_backward_halo_kernel, [g, a], out, groups, half, alpha, beta, k,
                     relu, bias, kernels)
    elif kernels in ("band", "gather"):
        _launch_band(_lrn_backward_band_kernel, [g, a], out, groups, half, alpha, beta, k,
                     relu, bias, gather=kernels == "gather")
    else:
        _launch(_lrn_backward_twophase_kernel, [g, a], out, groups, half, alpha, beta, k,
                relu, BACKWARD_TILE, whole_column=True, bias=bias)


def backward(g: torch.Tensor, x: torch.Tensor, groups: int, half: int, alpha: float,
             beta: float, k: float, relu: bool, bias: torch.Tensor | None = None
             ) -> torch.Tensor:
    """grad_x of forward(x, ..., bias) for the output gradient g, in one pass (also the
    gradient of x + bias, whose sum over images and pixels is the bias's: `bias_grad`)."""
    _check(x, groups, half, bias)
    a = _layout(x)
    fmt = torch.channels_last if _strides(a)[3] else torch.contiguous_format
    g = g.contiguous(memory_format=fmt)
    out = torch.empty_like(a)
    if not out.numel():
        return out
    run = functools.partial(_backward_launch, g=g, a=a, out=out, groups=groups, half=half,
                            alpha=alpha, beta=beta, k=k, relu=relu, bias=bias)
    key = _settings(half, relu, bias is not None, beta)
    run(_kernels_for(out, groups, "backward", key, run))
    return out


def bias_grad(grad: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias's gradient from `backward`'s: its sum over images and pixels, accumulated in
    fp32 (fp64 for fp64), in the bias's dtype; None without a bias."""
    if bias is None:
        return None
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return grad.sum((0, 2, 3), dtype=acc).to(bias.dtype)


# The custom ops: what torch.compile traces (one node each, no graph break). In eager mode
# `apply` runs the same launches through an autograd.Function instead: a custom op's
# dispatch and its registered autograd cost tens of microseconds of Python per call
# (pytorch/pytorch#139500, #176592), paid twice per LRN and step.
lrn = torch.library.custom_op("alexnet::lrn", forward, mutates_args=())
lrn_backward = torch.library.custom_op("alexnet::lrn_backward", backward, mutates_args=())


@lrn.register_fake
def _lrn_fake(x, groups, half, alpha, beta, k, relu, bias=None):
    return torch.empty_like(_layout(x))


@lrn_backward.register_fake
def _lrn_backward_fake(g, x, groups, half, alpha, beta, k, relu, bias=None):
    return torch.empty_like(_layout(x))


def _setup_context(ctx, inputs, output) -> None:
    x, groups, half, alpha, beta, k, relu, bias = inputs
    ctx.save_for_backward(x, bias)
    ctx.consts = (groups, half, alpha, beta, k, relu)


def _backward(ctx, g: torch.Tensor):
    x, bias = ctx.saved_tensors
    grad = lrn_backward(g, x, *ctx.consts, bias)
    return grad, None, None, None, None, None, None, bias_grad(grad, bias)


lrn.register_autograd(_backward, setup_context=_setup_context)


class _EagerLRN(torch.autograd.Function):
    """The op's forward and backward launches with autograd, without the op's dispatch. Under
    create_graph the backward is the torch path's gradient of the same function (`_formula`),
    which autograd records, so that a second derivative gets its term."""

    @staticmethod
    def forward(ctx, x, groups, half, alpha, beta, k, relu, bias):
        _setup_context(ctx, (x, groups, half, alpha, beta, k, relu, bias), None)
        return forward(x, groups, half, alpha, beta, k, relu, bias)

    @staticmethod
    def backward(ctx, g):
        from alexnet.model import differentiable_vjp, wants_graph

        x, bias = ctx.saved_tensors
        if wants_graph(g, x, bias):
            dx, dbias = differentiable_vjp(
                lambda x, bias: _formula(x, *ctx.consts, bias), (x, bias), g)
            return dx, None, None, None, None, None, None, dbias
        with torch.no_grad():
            grad = backward(g, x, *ctx.consts, bias)
            return grad, None, None, None, None, None, None, bias_grad(grad, bias)


def _formula(x: torch.Tensor, groups: int, half: int, alpha: float, beta: float, k: float,
             relu: bool, bias: torch.Tensor | None) -> torch.Tensor:
    """The kernels' function as the torch path computes it (alexnet.model.lrn with backend
    torch, whose backward autograd records under create_graph), in fp32 (fp64 for fp64 x)
    as the kernels compute."""
    from alexnet.model import lrn

    dtype = torch.promote_types(x.dtype, torch.float32)
    return lrn(x.to(dtype), 2 * half + 1, alpha, beta, k, groups, backend="torch", relu=relu,
               bias=None if bias is None else bias.to(dtype)).to(x.dtype)


def apply(x: torch.Tensor, groups: int, half: int, alpha: float, beta: float, k: float,
          relu: bool, bias: torch.Tensor | None = None) -> torch.Tensor:
    """lrn(x, ...) with its gradients (x's, and bias's when given): the custom op under
    torch.compile, the same kernels through an autograd.Function in eager mode."""
    if torch.compiler.is_compiling():
        return lrn(x, groups, half, alpha, beta, k, relu, bias)
    return _EagerLRN.apply(x, groups, half, alpha, beta, k, relu, bias)
