"""The augmentation of a batch (section 4.1) in one Triton kernel: crop, mirror, mean, colour.

On a GPU the torch path of alexnet/data/augment.py makes a training batch in about ten
passes over it (gather the patches, mirror them, convert to float, gather the mean image's
windows, subtract, add the colour shift): about 1.4 GB of memory traffic for 256 patches of
224x224, where the batch itself is 38.5 MB of uint8 in and 154 MB of float32 out. This
kernel reads each patch pixel once and writes each output value once:

    out[k, c, y, x] = (float(images[b, top + y, sx, c]) - mean[top + y, sx, c]) + shift[k, c]

with b = source[k] and sx = left + x, or left + crop - 1 - x for a mirrored patch (the mean
image's window is mirrored with it, which equals subtracting before cropping). With `pad`,
the kernel also writes the zeros right and bottom of each patch that conv1 needs (224 -> 227,
alexnet.model.conv1_pad), so the net need not copy the whole batch to pad it. The
operations and their order are the torch path's, in float32, so the values are the same bit
for bit. The mean is any tensor broadcast to (S, S, 3) by its strides (the mean image, the
per-channel mean, or zeros), the shift a (K, 3) float32 tensor (zeros without PCA).

This module imports triton; alexnet/data/augment.py imports it only where the kernel may run
(CUDA under ALEXNET_AUGMENT=auto, the default, or ALEXNET_AUGMENT=triton). Under
TRITON_INTERPRET=1 the kernel runs on CPU tensors.
"""

from __future__ import annotations

import threading

import torch
import triton
import triton.language as tl

BLOCK = 512  # output pixels of one patch per program
NUM_WARPS = 4
_LAUNCH_LOCK = threading.Lock()  # Triton's JIT does not lock its first compile of a shape


@triton.jit
def _patches_kernel(img_ptr, i_sb, i_sy, i_sx, i_sc, src_ptr, top_ptr, left_ptr, mirror_ptr,
                    mean_ptr, m_sy, m_sx, m_sc, shift_ptr, out_ptr, o_sk, o_sc, o_sy, o_sx,
                    CROP, SIDE, BLOCK_P: tl.constexpr):
    k = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    y = p // SIDE
    x = p % SIDE
    written = p < SIDE * SIDE
    inside = written & (y < CROP) & (x < CROP)  # the rest of the side: conv1's zero padding
    b = tl.load(src_ptr + k).to(tl.int64)
    sy = tl.load(top_ptr + k) + y
    left = tl.load(left_ptr + k)
    sx = tl.where(tl.load(mirror_ptr + k) != 0, left + CROP - 1 - x, left + x)
    pixel = b * i_sb + sy.to(tl.int64) * i_sy + sx.to(tl.int64) * i_sx
    mean = sy * m_sy + sx * m_sx
    out = k.to(tl.int64) * o_sk + y * o_sy + x * o_sx
    for c in tl.static_range(3):
        v = tl.load(img_ptr + pixel + c * i_sc, mask=inside, other=0).to(tl.float32)
        mu = tl.load(mean_ptr + mean + c * m_sc, mask=inside, other=0.0)
        shift = tl.load(shift_ptr + k * 3 + c)
        tl.store(out_ptr + out + c * o_sc, tl.where(inside, (v - mu) + shift, 0.0), mask=written)


def patches(images: torch.Tensor, source: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
            mirror: torch.Tensor, mean: torch.Tensor, shift: torch.Tensor, crop: int,
            channels_last: bool = False, pad: int = 0, out: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Float32 (K, 3, crop + pad, crop + pad): patch k of uint8 image source[k] (images
    (B, S, S, 3) or (B, 3, S, S), any strides) at (top[k], left[k]), mirrored where mirror[k],
    minus `mean` (float32, broadcastable to (S, S, 3)) under it, plus shift[k] (float32
    (K, 3)), then `pad` zeros right and bottom; in the channels_last memory format if asked.
    source/top/left/mirror: (K,) on the images' device. `out`: the result's memory, of that
    shape and memory format, or None for new memory."""
    nhwc = images.shape[-1] == 3 and images.shape[1] != 3
    sb, sy, sx, sc = (images.stride(i) for i in ((0, 1, 2, 3) if nhwc else (0, 2, 3, 1)))
    full = images.shape[1] if nhwc else images.shape[2]
    if not 0 < crop <= full:  # the torch path's check: a larger one would read past the images
        raise ValueError(f"crop {crop} must lie in 1..{full}")
    mean = mean.to(torch.float32).expand(full, full, 3)
    k, side = len(source), crop + pad
    if out is None:
        out = torch.empty((k, 3, side, side), dtype=torch.float32, device=images.device,
                          memory_format=torch.channels_last if channels_last else
                          torch.contiguous_format)
    if k == 0:
        return out
    ints = [t.to(torch.int32).contiguous() for t in (source, top, left, mirror)]
    grid = (k, triton.cdiv(side * side, BLOCK))
    with _LAUNCH_LOCK:  # read-ahead threads may launch it first at once: one compiles
        _patches_kernel[grid](images, sb, sy, sx, sc, *ints, mean, *mean.stride(),
                              shift.to(torch.float32).contiguous(), out, out.stride(0),
                              out.stride(1), out.stride(2), out.stride(3), crop, side,
                              BLOCK_P=BLOCK, num_warps=NUM_WARPS)
    return out
