"""The paper's augmentation (section 4.1) and mean subtraction (section 2), batch-wise on tensors.

Every function works on a whole batch at once, on whatever device the batch lives on (uint8
goes to the GPU, the augmentation runs there). On a GPU there is no per-image Python loop: all
crops are one `index_select` from a strided view of every possible patch row (see `crop`), in
the style of airbench's batch_crop/batch_flip_lr and timm's PrefetchLoader. On the CPU,
train_batch and eval_batch make the same floats a patch at a time (`_per_image`), which keeps
each patch in the cache instead of sweeping the whole float batch through memory once per
step. Images are (B, 3, S, S) or (B, S, S, 3) (the store's layout), uint8 or float.

Every random draw takes an explicit CPU `torch.Generator` and is made on the CPU (the draws
are B or 3B numbers), then moved to the batch's device, so a seed gives the same batch on the
CPU and on a GPU. Pixels stay on the paper's 0..255 scale: the mean is subtracted, nothing is
divided by a standard deviation, except with mean="torchvision" (torchvision's published
normalisation, for its pretrained weights): (x / 255 - TV_MEAN) / TV_STD per channel.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import torch

from alexnet.config import MEAN_CHOICES
from alexnet.paper import CROP_SIZE, PCA_ALPHA_STD, TEST_CROPS

# data.mean (config.MEAN_CHOICES) -> the statistic it subtracts: the paper's mean image
# (section 2), the per-channel mean, nothing, or torchvision's fixed constants (below)
MEAN_STATS = {"image": "mean_image", "channel": "channel_mean", "none": None,
              "torchvision": None}
# torchvision's ImageNet normalisation of 0..1 RGB (its weights expect it); not the paper's.
TV_MEAN = (0.485, 0.456, 0.406)
TV_STD = (0.229, 0.224, 0.225)
PCA_SCALES = ("std", "eigval")
# The paper's 10 test patches (section 4.1), in the order `ten_crops` returns them for each
# image: torchvision's TenCrop order (corners, centre, then the same five mirrored).
TEN_CROP_ORDER = ("top-left", "top-right", "bottom-left", "bottom-right", "centre",
                  "top-left mirrored", "top-right mirrored", "bottom-left mirrored",
                  "bottom-right mirrored", "centre mirrored")


def is_channels_last(images: torch.Tensor) -> bool:
    """True for a (B, S, S, 3) batch, False for (B, 3, S, S); a ValueError for anything else."""
    if images.ndim == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
        return True
    if images.ndim == 4 and images.shape[1] == 3:
        return False
    raise ValueError(f"expected a batch (B, 3, S, S) or (B, S, S, 3), got {tuple(images.shape)}")


def image_side(images: torch.Tensor) -> int:
    """S of a batch of square images (B, 3, S, S) or (B, S, S, 3); a ValueError for non-square
    ones, whose crops would be cut with a wrong row length (the crop code assumes S x S)."""
    nhwc = is_channels_last(images)
    height, width = images.shape[1:3] if nhwc else images.shape[2:4]
    if height != width:
        raise ValueError(f"images: expected square S x S images, got {height}x{width} "
                         f"(batch of shape {tuple(images.shape)})")
    return int(height)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device` without making the host wait: a CPU tensor bound for a CUDA
    device is pinned and copied asynchronously. (A copy from pageable memory waits for all
    the work queued on the stream, on the training stream the whole previous step, so the
    host could not queue the next step while the GPU runs this one.)"""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# ----------------------------------------------------------------------------- crops and flips


def crop_offsets(batch: int, size: int, crop: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, left) int64 (B,): uniform over all (size - crop + 1)^2 positions (section 4.1)."""
    if not 0 < crop <= size:
        raise ValueError(f"crop {crop} must lie in 1..{size}")
    top = torch.randint(0, size - crop + 1, (batch,), generator=generator)
    left = torch.randint(0, size - crop + 1, (batch,), generator=generator)
    return top, left


def flip_mask(batch: int, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """bool (B,): which images are mirrored, each with probability p (section 4.1: 0.5)."""
    return torch.rand(batch, generator=generator) < p


def crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int,
         flip: torch.Tensor | None = None, *, source: torch.Tensor | None = None,
         channels_first: bool | None = None) -> torch.Tensor:
    """Window (top[k], left[k]) of size x size of each image, mirrored where flip[k].

    Output k comes from image source[k] (default k: one crop per image). The result is
    contiguous, of the input's dtype, and of the input's layout unless `channels_first` says
    otherwise. Batch-wise: every patch row is one row of an overlapping strided view of the
    batch (rows starting at every pixel), and one `index_select` copies them all, so each row
    is a contiguous copy (airbench's batch_crop idea, without its per-offset masks).
    """
    nhwc = is_channels_last(images)
    full = image_side(images)
    if not 0 < size <= full:
        raise ValueError(f"crop {size} must lie in 1..{full}")
    if source is None:
        source = torch.arange(len(top))
    _check_cpu_range("top", top, full - size)
    _check_cpu_range("left", left, full - size)
    _check_cpu_range("source", source, len(images) - 1)
    images = images.contiguous()
    device = images.device
    source, top, left = (to_device(t.long(), device) for t in (source, top, left))
    k = len(source)
    r = torch.arange(size, device=device)
    flat = images.reshape(-1)
    if nhwc:  # a patch row is size pixels of 3 bytes: rows may start at any pixel
        pixel = ((source[:, None] * full + top[:, None] + r) * full + left[:, None])
        rows = flat.as_strided((flat.numel() // 3 - size + 1, size * 3), (3, 1))
        out = rows.index_select(0, pixel.reshape(-1)).view(k, size, size, 3)
        if channels_first:
            out = out.permute(0, 3, 1, 2).contiguous()
    else:  # a patch row is size values of one channel plane
        channel = torch.arange(3, device=device)
        plane = source[:, None] * 3 + channel  # (K, 3)
        start = ((plane[:, :, None] * full + top[:, None, None] + r) * full
                 + left[:, None, None])
        rows = flat.as_strided((flat.numel() - size + 1, size), (1, 1))
        out = rows.index_select(0, start.reshape(-1)).view(k, 3, size, size)
        if channels_first is False:
            out = out.permute(0, 2, 3, 1).contiguous()
    if flip is not None:
        out = flip_images(out, flip)
    return out


def _check_cpu_range(name: str, values: torch.Tensor, high: int) -> None:
    """A ValueError unless CPU `values` lie in 0..high: a window outside the image would be
    read from the next row, plane or image. Values on a GPU are not checked (that would make
    the host wait for the device)."""
    if values.device.type == "cpu" and values.numel() and (
            int(values.min()) < 0 or int(values.max()) > high):
        raise ValueError(f"{name}: must lie in 0..{high}, got values in "
                         f"{int(values.min())}..{int(values.max())}")


def flip_images(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The batch with images where `flip` (bool (B,)) mirrored left-right (new tensor if any).
    An integer `flip` is refused: indexing would read it as image indices, not as a mask."""
    width_dim = 2 if is_channels_last(images) else 3
    if flip.dtype != torch.bool or tuple(flip.shape) != (len(images),):
        raise ValueError(f"flip: expected a bool mask of shape ({len(images)},), got "
                         f"{flip.dtype} of shape {tuple(flip.shape)}")
    flip = to_device(flip, images.device)
    if images.is_cuda:  # no host sync: one pass over the batch
        shape = (-1, 1, 1, 1)
        return torch.where(flip.view(shape), images.flip(width_dim), images)
    if not bool(flip.any()):
        return images
    out = images.clone()
    out[flip] = images[flip].flip(width_dim)
    return out


def random_crop(images: torch.Tensor, generator: torch.Generator, size: int = CROP_SIZE
                ) -> torch.Tensor:
    """A size x size patch of each image at a uniformly random position (section 4.1)."""
    full = image_side(images)
    top, left = crop_offsets(len(images), full, size, generator)
    return crop(images, top, left, size)


def random_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5
                ) -> torch.Tensor:
    """Each image mirrored left-right with probability p (section 4.1: p = 0.5)."""
    return flip_images(images, flip_mask(len(images), generator, p))


def centre_offset(size: int, crop_size: int) -> int:
    """Offset of the centre patch: (size - crop) // 2 (16 for 224 of 256; rounds down)."""
    return (size - crop_size) // 2


def ten_crop_offsets(size: int, crop_size: int) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """(top, left, flip) of the 10 patches in TEN_CROP_ORDER."""
    far, mid = size - crop_size, centre_offset(size, crop_size)
    top = torch.tensor([0, 0, far, far, mid] * 2)
    left = torch.tensor([0, far, 0, far, mid] * 2)
    flip = torch.tensor([False] * 5 + [True] * 5)
    return top, left, flip


def multi_crop_offsets(batch: int, size: int, crop_size: int, crops: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source, top, left, flip) of `crops` (1: centre, 10: the paper's) patches per image,
    image-major: output b * crops + c is patch c of image b."""
    if crops == 1:
        mid = centre_offset(size, crop_size)
        top = left = torch.full((1,), mid)
        flip = torch.zeros(1, dtype=torch.bool)
    elif crops == TEST_CROPS:
        top, left, flip = ten_crop_offsets(size, crop_size)
    else:
        raise ValueError(f"crops must be 1 or {TEST_CROPS}, got {crops}")
    source = torch.arange(batch).repeat_interleave(crops)
    return source, top.repeat(batch), left.repeat(batch), flip.repeat(batch)


def centre_crop(images: torch.Tensor, size: int = CROP_SIZE) -> torch.Tensor:
    """The centre size x size patch of each image (the paper's single-patch test)."""
    full = image_side(images)
    source, top, left, _ = multi_crop_offsets(len(images), full, size, 1)
    return crop(images, top, left, size, source=source)


def ten_crops(images: torch.Tensor, size: int = CROP_SIZE) -> torch.Tensor:
    """The paper's 10 test patches of each image (section 4.1), image-major (B * 10, ...):
    output 10 b + c is patch TEN_CROP_ORDER[c] of image b (corners, centre, then mirrored)."""
    full = image_side(images)
    source, top, left, flip = multi_crop_offsets(len(images), full, size, TEST_CROPS)
    return crop(images, top, left, size, flip, source=source)


# ----------------------------------------------------------------------------- PCA colour


def draw_alpha(batch: int, generator: torch.Generator, std: float = PCA_ALPHA_STD
               ) -> torch.Tensor:
    """float64 (B, 3): alpha_i ~ N(0, std) per image per use (section 4.1: std 0.1)."""
    return torch.randn(batch, 3, generator=generator, dtype=torch.float64) * std


def pca_shift(alpha: torch.Tensor, eigval: Any, eigvec: Any, scale: str = "std"
              ) -> torch.Tensor:
    """(B, 3) RGB shift of each image: eigvec @ (alpha_b * s), the paper's
    [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with s = sqrt(eigval) ("std", the default) or eigval.

    The eigenvalues of the 0..255 RGB covariance are variances (thousands for ImageNet), so
    the paper taken literally ("eigval") shifts colours by hundreds of levels; cuda-convnet2
    and fb.resnet.torch scale by the standard deviation along each component, which gives
    shifts of a few levels, the "intensity and colour of the illumination" the paper means.
    `eigvec` columns are the unit eigenvectors (the store's convention).
    """
    if scale not in PCA_SCALES:
        raise ValueError(f"pca scale {scale!r}: choose from {', '.join(PCA_SCALES)}")
    eigval, eigvec = (_float64(v, alpha.device) for v in (eigval, eigvec))
    s = eigval.clamp(min=0).sqrt() if scale == "std" else eigval
    return (alpha.to(torch.float64) * s) @ eigvec.T


def _float64(value: Any, device: torch.device) -> torch.Tensor:
    """A tensor or array as a float64 tensor on `device` (NumPy views may have any strides)."""
    if not torch.is_tensor(value):
        value = np.ascontiguousarray(value, dtype=np.float64)
    return to_device(torch.as_tensor(value, dtype=torch.float64), device)


def add_per_image(images: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """images + values[b] at every pixel of image b (values (B, 3)); in place for floats."""
    shape = (-1, 1, 1, 3) if is_channels_last(images) else (-1, 3, 1, 1)
    values = to_device(values, images.device).to(
        images.dtype if images.is_floating_point() else torch.float32).view(shape)
    return images.add_(values) if images.is_floating_point() else images + values


def pca_colour(images: torch.Tensor, generator: torch.Generator, eigval: Any, eigvec: Any,
               scale: str = "std", std: float = PCA_ALPHA_STD) -> torch.Tensor:
    """Float images with the PCA colour shift of section 4.1 added (new alpha per image)."""
    alpha = draw_alpha(len(images), generator, std)
    return add_per_image(images.float(), pca_shift(alpha, eigval, eigvec, scale))


# ----------------------------------------------------------------------------- mean subtraction


def mean_windows(mean_image: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int,
                 flip: torch.Tensor | None = None, *, channels_first: bool = True
                 ) -> torch.Tensor:
    """The mean image's window under each crop: what subtracting the (S, S, 3) mean image
    before cropping (and mirroring) removes from the patch: float (K, 3, size, size), or
    (K, size, size, 3) when not channels_first."""
    full = mean_image.shape[0]
    flip = torch.zeros(len(top), dtype=torch.bool) if flip is None else flip.to(torch.bool).cpu()
    # A mirrored patch at `left` is the patch of the mirrored mean at full - size - left.
    both = torch.stack([mean_image, mean_image.flip(1)])
    if channels_first:  # gather from (2, 3, S, S): the patches come out contiguous
        both = both.permute(0, 3, 1, 2).contiguous()
    left = torch.where(flip, full - size - left.cpu(), left.cpu())
    return crop(both, top, left, size, source=flip.long(), channels_first=channels_first)


def _tv_levels(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's mean and std on the 0..255 scale (float32 (3,) each, on `device`)."""
    m, s = (torch.tensor(v).mul_(255) for v in (TV_MEAN, TV_STD))
    return to_device(m, device), to_device(s, device)


def subtract_mean(images: torch.Tensor, mean: str, stats: dict[str, Any],
                  top: torch.Tensor | None = None, left: torch.Tensor | None = None,
                  flip: torch.Tensor | None = None, out: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Float images minus the training set's mean (section 2), still on the 0..255 scale.

    mean="image" (the paper) subtracts the per-pixel mean image; for patches, pass the crops'
    (top, left, flip) and the matching window of the mean image is subtracted, which equals
    subtracting before cropping. "channel" subtracts the per-channel mean, "none" nothing,
    "torchvision" gives (x / 255 - TV_MEAN) / TV_STD (no store statistics needed). The result
    is a new float32 tensor, or `out` (float32, the images' shape, any strides) when given.
    """
    images = images.to(torch.float32, copy=True) if out is None else out.copy_(images)
    nhwc = is_channels_last(images)
    if mean == "none":
        return images
    if mean == "torchvision":
        shape = (1, 1, 1, 3) if nhwc else (1, 3, 1, 1)
        m, s = _tv_levels(images.device)
        return images.sub_(m.view(shape)).div_(s.view(shape))
    if mean == "channel":
        cm = to_device(torch.as_tensor(stats["channel_mean"], dtype=torch.float32),
                       images.device)
        return images.sub_(cm.view((1, 1, 1, 3) if nhwc else (1, 3, 1, 1)))
    if mean != "image":
        raise ValueError(f"mean {mean!r}: choose from {', '.join(MEAN_CHOICES)}")
    mean_image = to_device(torch.as_tensor(stats["mean_image"], dtype=torch.float32),
                           images.device)
    size = images.shape[1] if nhwc else images.shape[2]
    if top is None:
        if size != mean_image.shape[0]:
            raise ValueError(f"{size}x{size} images need crop offsets to subtract the "
                             f"{mean_image.shape[0]}x{mean_image.shape[0]} mean image")
        return images.sub_(mean_image if nhwc else mean_image.permute(2, 0, 1))
    assert left is not None
    return images.sub_(mean_windows(mean_image, top, left, size, flip,
                                    channels_first=not nhwc))


# ----------------------------------------------------------------------------- whole batches


def device_stats(stats: dict[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The statistics the augmentation needs as tensors on `device` (float32; eig in float64)."""
    out: dict[str, torch.Tensor] = {}
    if stats.get("mean_image") is not None:
        out["mean_image"] = torch.as_tensor(np.asarray(stats["mean_image"], np.float32),
                                            device=device)
    for key in ("channel_mean", "eigval", "eigvec"):
        if stats.get(key) is not None:
            out[key] = torch.as_tensor(np.asarray(stats[key], np.float64), device=device)
    return out


def train_batch(images: torch.Tensor, generator: torch.Generator, stats: dict[str, Any], *,
                crop_size: int = CROP_SIZE, flip: bool = True, pca: bool = True,
                pca_scale: str = "std", alpha_std: float = PCA_ALPHA_STD, mean: str = "image",
                channels_last: bool = False, pad: int = 0, backend: str | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """A training batch from uint8 images (B, S, S, 3) or (B, 3, S, S): random crop, mirror
    with p=0.5, PCA colour shift, mean subtraction; float32 (B, 3, crop, crop) on the
    images' device (channels_last memory format if asked), with `pad` zeros right and bottom
    (conv1's padding, see `padded_buffer`). `backend` (default ALEXNET_AUGMENT) picks the torch
    path or the one-pass Triton kernel: the same values. `out` (from `batch_memory`) is the
    memory to write the batch into; None: new memory.

    The draws, always made in this order whatever is switched off (so switching one off
    changes nothing else): crop top, crop left, flip, alpha.
    """
    b = len(images)
    full = image_side(images)
    top, left = crop_offsets(b, full, crop_size, generator)
    mirror = flip_mask(b, generator)
    alpha = draw_alpha(b, generator, alpha_std)
    mirror = mirror if flip else torch.zeros_like(mirror)
    shift = None
    if pca:
        shift = pca_shift(to_device(alpha, images.device), stats["eigval"], stats["eigvec"],
                          pca_scale)
    source = torch.arange(b, device=images.device)
    if use_triton_augment(images, mean, stats, backend):
        return _fused(images, source, top, left, mirror, mean, stats, shift, crop_size,
                      channels_last, pad, out)
    if mean == "torchvision" and shift is not None:  # the shift is in 0..255 levels
        shift = shift / to_device(255 * torch.tensor(TV_STD, dtype=shift.dtype), shift.device)
    make = _per_image if images.device.type == "cpu" else _batchwise
    x = make(images, source, top, left, mirror, mean, stats, shift, crop_size, channels_last,
             pad, out)
    return x.permute(0, 3, 1, 2) if channels_last else x


def eval_batch(images: torch.Tensor, stats: dict[str, Any], *, crops: int = 1,
               crop_size: int = CROP_SIZE, mean: str = "image", pad: int = 0,
               backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Test patches of uint8 images, mean subtracted: float32 (B * crops, 3, crop, crop),
    image-major, with `pad` zeros right and bottom; crops 1 (centre) or 10 (TEN_CROP_ORDER).
    `pad`, `backend` and `out` as for train_batch."""
    full = image_side(images)
    source, top, left, mirror = multi_crop_offsets(len(images), full, crop_size, crops)
    if use_triton_augment(images, mean, stats, backend):
        return _fused(images, source, top, left, mirror, mean, stats, None, crop_size, False,
                      pad, out)
    make = _per_image if images.device.type == "cpu" else _batchwise
    return make(images, source, top, left, mirror, mean, stats, None, crop_size, False, pad,
                out)


def _batchwise(images: torch.Tensor, source: torch.Tensor, top: torch.Tensor,
               left: torch.Tensor, mirror: torch.Tensor, mean: str, stats: dict[str, Any],
               shift: torch.Tensor | None, crop_size: int, channels_last: bool, pad: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Patch k of image source[k] at (top[k], left[k]), mirrored where mirror[k], minus the
    mean, plus shift[k] (on the mean's scale; None: none), in padded_buffer's layout (NHWC
    if channels_last): crop, subtract_mean and add_per_image over the whole batch, a few
    launches whatever its size (the torch path on a GPU)."""
    patches = crop(images, top, left, crop_size, mirror, source=source,
                   channels_first=not channels_last)
    x, inside = _padded(len(source), crop_size, pad, channels_last, images.device, out)
    subtract_mean(patches, mean, stats, top, left, mirror, out=inside)
    if shift is not None:
        add_per_image(inside, shift)  # in place
    return x


def _per_image(images: torch.Tensor, source: torch.Tensor, top: torch.Tensor,
               left: torch.Tensor, mirror: torch.Tensor, mean: str, stats: dict[str, Any],
               shift: torch.Tensor | None, crop_size: int, channels_last: bool, pad: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """`_batchwise`'s values bit for bit, a patch at a time (the torch path on the CPU):
    each patch goes from its window of the uint8 image, read in place, straight into the
    buffer with its mean window subtracted in one pass, then gets its shift while it is
    still in the cache. The batch-wise passes each sweep the whole float batch (77 MB for
    128 patches of 224) through memory, ten times; here the image is read once and the
    buffer written about twice."""
    _check_pad(pad)
    nhwc = is_channels_last(images)
    full = image_side(images)
    if not 0 < crop_size <= full:
        raise ValueError(f"crop {crop_size} must lie in 1..{full}")
    if mean not in MEAN_STATS:
        raise ValueError(f"mean {mean!r}: choose from {', '.join(MEAN_CHOICES)}")
    x, inside = _padded(len(source), crop_size, pad, channels_last, images.device, out)
    hwc = (1, 1, 3) if channels_last else (3, 1, 1)  # a per-channel value's shape in a patch
    width = 1 if channels_last else 2  # a patch's width axis
    windows = _mean_images(mean, stats, full, channels_last)
    tv_mean, tv_std = _tv_levels(images.device)
    if shift is not None:
        shift = shift.to(torch.float32)
    rows = zip(source.tolist(), top.tolist(), left.tolist(), mirror.tolist(), strict=True)
    for i, (s, t, left_i, m) in enumerate(rows):
        window = images[s, t:t + crop_size, left_i:left_i + crop_size] if nhwc else \
            images[s, :, t:t + crop_size, left_i:left_i + crop_size]
        if nhwc != channels_last:
            window = window.permute(2, 0, 1) if nhwc else window.permute(1, 2, 0)
        if m:
            window = window.flip(width)
        if torch.promote_types(window.dtype, torch.float32) != torch.float32:
            window = window.float()  # float64 images: rounded first, as `_batchwise` copies
        out = inside[i]
        if windows is None:
            out.copy_(window)
        elif windows[0].dim() == 1:  # one value per channel
            torch.sub(window, windows[0].view(hwc), out=out)
        else:  # a mirrored patch at left is the mirrored mean's patch at full - size - left
            at = full - crop_size - left_i if m else left_i
            mean_image = windows[1 if m else 0]
            torch.sub(window, mean_image[t:t + crop_size, at:at + crop_size] if channels_last
                      else mean_image[:, t:t + crop_size, at:at + crop_size], out=out)
        if mean == "torchvision":
            out.sub_(tv_mean.view(hwc)).div_(tv_std.view(hwc))
        if shift is not None:
            out.add_(shift[i].view(hwc))
    return x


def _mean_images(mean: str, stats: dict[str, Any], full: int, channels_last: bool
                 ) -> tuple[torch.Tensor, ...] | None:
    """What `_per_image` subtracts before any torchvision scaling: the mean image and its
    mirror in the patches' layout (contiguous, so that a window reads whole rows), the
    channel mean (one tensor of 3), or None."""
    if mean == "channel":
        return (torch.as_tensor(stats["channel_mean"], dtype=torch.float32),)
    if mean != "image":
        return None
    mean_image = torch.as_tensor(stats["mean_image"], dtype=torch.float32).cpu()
    if mean_image.shape[0] != full:
        raise ValueError(f"{full}x{full} images need a mean image of their size, got "
                         f"{mean_image.shape[0]}x{mean_image.shape[1]}")
    both = (mean_image, mean_image.flip(1))
    if not channels_last:
        both = tuple(m.permute(2, 0, 1) for m in both)
    return tuple(m.contiguous() for m in both)


def padded_buffer(patches: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, inside) for float32 patches with `pad` zeros after their last row and column:
    the buffer (the patches' layout, side crop + pad, the margins zeroed) and its view of
    the patches' place, which the mean subtraction writes into (the whole buffer for pad 0).
    The paper net's conv1 needs those zeros on 224 patches (alexnet.model.conv1_pad: 3);
    written here the net gets 227 patches and skips its own copy of the batch
    (model.pad_for_conv1), and nothing copies the batch once more to pad it."""
    nhwc = is_channels_last(patches)
    crop = patches.shape[1] if nhwc else patches.shape[2]
    return _padded(len(patches), crop, pad, nhwc, patches.device)


def batch_memory(patches: int, crop: int, pad: int = 0, channels_last: bool = False,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Uninitialised memory for train_batch's or eval_batch's float32 result of `patches`
    patches, their `out`: memory a caller keeps and reuses batch after batch
    (alexnet.data.loader's BatchMemory does, so that big CPU batches are not page-faulted
    afresh each time)."""
    _check_pad(pad)
    side = crop + pad
    return torch.empty((patches, 3, side, side), dtype=torch.float32, device=device,
                       memory_format=torch.channels_last if channels_last else
                       torch.contiguous_format)


def _check_out(out: torch.Tensor, patches: int, crop: int, pad: int, channels_last: bool,
               device: torch.device) -> torch.Tensor:
    """`out` if it is what batch_memory(patches, crop, pad, channels_last, device) makes."""
    side, where = crop + pad, torch.device(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if (tuple(out.shape) != (patches, 3, side, side) or out.dtype != torch.float32
            or out.device.type != where.type or where.index not in (None, out.device.index)
            or not out.is_contiguous(memory_format=layout)):
        raise ValueError(f"out: needs batch_memory({patches}, {crop}, {pad}, channels_last="
                         f"{channels_last}) on {where}, got a {out.dtype} tensor of shape "
                         f"{tuple(out.shape)} and strides {out.stride()} on {out.device}")
    return out


def _padded(b: int, crop: int, pad: int, nhwc: bool, device: torch.device,
            out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """padded_buffer's (buffer, inside) for b patches of crop x crop, NHWC if `nhwc`, in
    `out`'s memory if given (see batch_memory)."""
    _check_pad(pad)
    out = batch_memory(b, crop, pad, nhwc, device) if out is None else _check_out(
        out, b, crop, pad, nhwc, device)
    buffer = out.permute(0, 2, 3, 1) if nhwc else out  # its memory's own order
    spatial = buffer if nhwc else buffer.movedim(1, 3)  # (B, side, side, 3) either way
    spatial[:, crop:].zero_()  # the bottom rows
    spatial[:, :crop, crop:].zero_()  # the right columns
    return buffer, (spatial[:, :crop, :crop] if nhwc else buffer[:, :, :crop, :crop])


def _check_pad(pad: int) -> None:
    if pad < 0:
        raise ValueError(f"pad {pad}: must be >= 0")


# ----------------------------------------------------------------------------- one-pass kernel

AUGMENT_BACKENDS = ("auto", "torch", "triton")
# ALEXNET_AUGMENT picks how train_batch and eval_batch run, read once at import: auto (the
# default: the one-pass Triton kernel of alexnet/data/augment_triton.py on CUDA uint8 batches
# when triton imports and the kernel passes a check on first use, else the torch path),
# torch, or triton (the kernel wherever it applies; CPU tensors need TRITON_INTERPRET=1).
# mean="torchvision" always takes the torch path.
AUGMENT_BACKEND = os.environ.get("ALEXNET_AUGMENT", "auto")


def use_triton_augment(images: torch.Tensor, mean: str, stats: dict[str, Any],
                       backend: str | None = None) -> bool:
    """Whether a batch of `images` is augmented by the Triton kernel under `backend`
    (default ALEXNET_AUGMENT): uint8 images, a mean the kernel takes and its statistics."""
    from alexnet import model  # the switches between Triton kernels and torch paths

    backend = model._chosen("ALEXNET_AUGMENT", AUGMENT_BACKEND if backend is None else backend,
                            AUGMENT_BACKENDS)
    if backend == "torch" or (backend == "auto" and not images.is_cuda) \
            or images.dtype != torch.uint8 or mean not in MEAN_STATS or mean == "torchvision" \
            or (MEAN_STATS[mean] is not None and stats.get(MEAN_STATS[mean]) is None):
        return False
    return model._triton_runs("ALEXNET_AUGMENT", backend,
                              model._triton_kernels("augment", "data.augment_triton"),
                              lambda: triton_augment_verified(images.device), images.device)


def triton_augment_verified(device: torch.device) -> bool:
    """Whether the Triton augmentation runs on `device`'s type and gives the torch path's
    values exactly, on a tiny batch (tried once per device type, then cached). If it fails
    or disagrees, one warning line, and the process keeps the torch path."""
    from alexnet import model

    return model._checked_once(f"augment_verified.{device.type}", _verify_triton_augment,
                               device)


def _verify_triton_augment(device: torch.device) -> bool:
    """triton_augment_verified's check, uncached; warns on stderr when it fails."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 12, 12, 3), generator=gen, dtype=torch.uint8)
    stats = device_stats({"mean_image": (torch.rand(12, 12, 3, generator=gen) * 255).numpy(),
                          "eigval": np.array([300.0, 50.0, 10.0]), "eigvec": np.eye(3)},
                         device)
    images = images.to(device)

    def agrees() -> bool:
        for seed, channels_last, pad in ((0, False, 0), (1, True, 3)):
            got, want = (train_batch(images, torch.Generator().manual_seed(seed), stats,
                                     crop_size=8, channels_last=channels_last, pad=pad,
                                     backend=b)
                         for b in ("triton", "torch"))
            if not torch.equal(got, want):
                return False
        got, want = (eval_batch(images, stats, crops=TEST_CROPS, crop_size=8, pad=3, backend=b)
                     for b in ("triton", "torch"))
        return torch.equal(got, want)

    from alexnet import model

    why = model._kernel_fault(agrees, "the torch path")
    if why is not None:
        print(f"alexnet: warning: the Triton augmentation on {device.type} {why}; using the "
              "torch path (set ALEXNET_AUGMENT=torch to skip this check)", file=sys.stderr)
    return why is None


def _fused(images: torch.Tensor, source: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
           mirror: torch.Tensor, mean: str, stats: dict[str, Any],
           shift: torch.Tensor | None, crop_size: int, channels_last: bool, pad: int,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel's patches: the values of crop, subtract_mean, add_per_image, in
    padded_buffer's layout (in `out` if given)."""
    _check_pad(pad)
    from alexnet.data import augment_triton

    device = images.device
    key = MEAN_STATS[mean]
    values = torch.zeros(3) if key is None else torch.as_tensor(stats[key])
    values = to_device(values.to(torch.float32), device)
    if shift is None:
        shift = torch.zeros(len(source), 3, device=device)
    source, top, left, mirror = (to_device(t.to(torch.int32), device)
                                 for t in (source, top, left, mirror))
    if out is not None:
        out = _check_out(out, len(source), crop_size, pad, channels_last, device)
    return augment_triton.patches(images, source, top, left, mirror, values, shift, crop_size,
                                  channels_last, pad, out)
