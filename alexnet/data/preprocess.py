"""The paper's preprocessing of one image (section 2), as `alexnet prepare` and `predict` do it.

Each image is decoded, given its EXIF orientation, converted to RGB, rescaled so that its
SHORTER side is S (paper: 256) and cropped to the central S x S patch. The rescale matches
torchvision's `Resize(S)` + `CenterCrop(S)` on PIL images: new long side int(S * long / short),
PIL's antialiased BILINEAR filter without `reducing_gap` (exact), crop offset
round((side - S) / 2); only the source region under the crop is resampled (PIL's `box`), which
gives the same pixels (up to float rounding, at most 1 level) at a fraction of the cost. An
image that cannot be used raises `Skip` with the reason for the skip report.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

MAX_PIXELS = 2**27  # decompression-bomb limit, ~134 megapixels (11585 x 11585)


class Skip(Exception):
    """An image that cannot be used; the message is the reason written to the skip report."""


def init_worker(max_pixels: int) -> None:
    """Per-process PIL settings: our bomb limit, and no warnings (we give the reason)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@contextlib.contextmanager
def pil_settings(max_pixels: int) -> Iterator[None]:
    """`init_worker`'s settings in this process for a while (it decodes too)."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        init_worker(max_pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


# file formats whose integer samples have at most 16 bits: PIL's mode I from them (a PGM of
# maxval above 255, its values stretched to 0..65535) is 16-bit data, however dark
SIXTEEN_BIT_FORMATS = ("PPM", "PNG")


def _to_rgb(image: Any, fmt: str | None = None) -> Any:
    """Any PIL mode as RGB: CMYK through its ICC profile when it has one, 16-bit scaled,
    floating point images in 0..1 scaled to 0..255. `fmt`: the file's format (PIL's
    `format`, which a transposed copy no longer has)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode == "CMYK" and image.info.get("icc_profile"):
        try:
            from PIL import ImageCms

            profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
            return ImageCms.profileToProfile(image, profile, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB")
        except Exception:  # a broken profile: fall back to PIL's plain conversion
            pass
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16") or array.max() > 255 or (
                image.mode == "I" and (fmt or image.format) in SIXTEEN_BIT_FORMATS):
            array = array / 257.0  # 16-bit data: 65535 -> 255
        elif image.mode == "F" and array.size and 0 <= array.min() and array.max() <= 1:
            array = array * 255.0  # floats in 0..1 (scientific TIFFs): all but black before
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def resize_crop(image: Any, size: int) -> np.ndarray:
    """Shorter side to `size` (antialiased bilinear), then the central size x size crop."""
    from PIL import Image

    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    out = image.resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


def read_span(archive: str, offset: int, size: int) -> bytes:
    """The `size` bytes at `offset` of the file `archive` (a tar member's data), or `Skip`."""
    try:
        with open(archive, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as err:
        raise Skip(f"unreadable archive member: {err.strerror or err}") from None
    if len(data) < size:
        raise Skip(f"unreadable archive member: the archive ends {size - len(data)} bytes "
                   "into it (truncated)")
    return data


def load_image(payload: tuple[str, Any], size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One source image (("path", str) | ("bytes", bytes) | ("span", (archive, offset, size))
    | ("array", ndarray)) as uint8 (size, size, 3), or `Skip` with the reason."""
    from PIL import Image, ImageOps

    kind, value = payload
    if kind == "error":
        raise Skip(value)
    if kind == "array":
        image = Image.fromarray(np.asarray(value, np.uint8))
        return resize_crop(_to_rgb(image), size)
    if kind == "span":
        value = read_span(*value)
    try:
        data = Path(value).read_bytes() if kind == "path" else value
    except OSError as err:
        raise Skip(f"unreadable file: {err.strerror or err}") from None
    if not data:
        raise Skip("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
        if w * h > max_pixels:
            raise Skip(f"{w}x{h} pixels: over the decompression-bomb limit of {max_pixels} "
                       "(--max-pixels)")
        if w < 1 or h < 1:
            raise Skip(f"empty image ({w}x{h})")
        image.load()
    except Skip:
        raise
    except Image.DecompressionBombError as err:  # PIL's own check, past twice our limit
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise Skip(f"{pixels.group(1) + ' pixels: ' if pixels else ''}over the "
                   f"decompression-bomb limit of {max_pixels} (--max-pixels)") from None
    except Image.UnidentifiedImageError:
        raise Skip("not an image format PIL can identify") from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
        message = re.sub(r" ?<[^>]* at 0x[0-9a-fA-F]+>", "", str(err).split("\n")[0])
        raise Skip(f"cannot decode: {type(err).__name__}: {message}") from None
    fmt = image.format
    try:
        if image.getexif().get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF: keep the stored orientation
        pass
    try:
        return resize_crop(_to_rgb(image, fmt), size)
    except Exception as err:
        raise Skip(f"cannot convert: {type(err).__name__}: {err}") from None
