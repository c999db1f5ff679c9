"""JPEG bytes of a jpeg-format store back to uint8 pixels: on the CPU, and batched on the GPU.

The jpeg store (data.md) keeps each 256x256 image as its JPEG bytes, so the loader decodes
every image every time it is used. One decode costs about 0.5 ms of a core, so feeding a GPU
needs many cores at once, and that needs a decoder that releases the interpreter lock for
the whole decode. PIL's decode does not scale with threads (2,010 img/s with 1 thread, 2,174
with 16 on the 16-core H200 host of issue 9); libjpeg-turbo through simplejpeg does (13,615
with 16), and so does OpenCV's imdecode.

CPU decoders, in the order "auto" tries them (docs/loading.md has the measurements):

- `simplejpeg`: libjpeg-turbo, GIL released, decodes straight into the batch (no copy).
- `cv2`: OpenCV's imdecode (libjpeg-turbo too), GIL released; present on many GPU machines.
- `torchvision`: torchvision.io.decode_jpeg on the CPU (libjpeg-turbo, GIL released).
- `pil`: Pillow, always installed; the store's own decoder (store.decode_jpeg).

All four use libjpeg-turbo's accurate integer DCT and smooth chroma upsampling, so their
pixels agree to within a few levels (tests/test_decode.py states the bound).

On a CUDA device with torchvision importable, `decode_gpu` decodes a list of JPEGs in one
batched nvJPEG call (torchvision.io.decode_jpeg(list, device=...)) and returns the batch on
the device, where the loader augments it like a raw batch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from alexnet.errors import UserError, one_line

CPU_DECODERS = ("simplejpeg", "cv2", "torchvision", "pil")  # "auto": the first importable
_MODULES = {"simplejpeg": "simplejpeg", "cv2": "cv2", "torchvision": "torchvision",
            "pil": "PIL"}
_GPU_LOCK = threading.Lock()  # one nvJPEG batch at a time: the decoder state is shared

Blob = bytes | bytearray | memoryview | np.ndarray


@functools.cache
def probe_jpeg() -> bytes:
    """A small JPEG (16x16, a colour gradient) that a working decoder must decode."""
    from PIL import Image

    ramp = np.arange(16, dtype=np.uint8) * 16
    pixels = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@functools.cache
def importable(decoder: str) -> bool:
    """True when the package behind CPU decoder `decoder` is installed, imports and decodes
    a small JPEG (a torchvision built for another torch, or whose image library failed to
    load, is installed but does not)."""
    if importlib.util.find_spec(_MODULES[decoder]) is None:
        return False
    try:
        _DECODE[decoder](probe_jpeg(), np.empty((16, 16, 3), np.uint8))
    except Exception:  # any failure to import or decode: not usable here
        return False
    return True


def available_cpu_decoders() -> list[str]:
    """The CPU decoders importable here, fastest first."""
    return [name for name in CPU_DECODERS if importable(name)]


def resolve_cpu_decoder(decoder: str = "auto") -> str:
    """The decoder name to use: `auto` is the first importable of CPU_DECODERS."""
    if decoder == "auto":
        return available_cpu_decoders()[0]
    if decoder not in CPU_DECODERS:
        raise UserError(f"jpeg decoder {decoder!r}: choose auto or one of "
                        f"{', '.join(CPU_DECODERS)}")
    if not importable(decoder):
        raise UserError(f"jpeg decoder {decoder!r}: the package {_MODULES[decoder]!r} is not "
                        "installed; install it or use decoder auto")
    return decoder


def _simplejpeg(blob: Blob, out: np.ndarray) -> None:
    import simplejpeg

    if simplejpeg.decode_jpeg(blob, colorspace="RGB", buffer=out).shape != out.shape:
        raise ValueError("the JPEG is smaller than the store's image size")


def _cv2(blob: Blob, out: np.ndarray) -> None:
    import cv2

    array = np.frombuffer(blob, np.uint8)
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)
    image = cv2.imdecode(array, cv2.IMREAD_COLOR if rgb is None else rgb)
    if image is None or image.shape != out.shape:
        raise ValueError("not a JPEG of the store's image size")
    out[...] = image if rgb is not None else image[..., ::-1]


def _torchvision(blob: Blob, out: np.ndarray) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    out[...] = decode_jpeg(data, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


def _pil(blob: Blob, out: np.ndarray) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(bytes(blob))) as image:
        out[...] = np.asarray(image.convert("RGB"))


_DECODE = {"simplejpeg": _simplejpeg, "cv2": _cv2, "torchvision": _torchvision, "pil": _pil}


def decode_cpu(blobs: Sequence[Blob], size: int, decoder: str = "auto",
               out: np.ndarray | None = None) -> np.ndarray:
    """JPEGs of size x size pixels to uint8 (B, size, size, 3), each decoded on this thread.

    `out` (uint8 (B, size, size, 3), C order) receives the pixels when given. A JPEG of
    another size, or bytes that are not a JPEG, raise a UserError naming what to do.
    """
    decode = _DECODE[resolve_cpu_decoder(decoder)]
    if out is None:
        out = np.empty((len(blobs), size, size, 3), np.uint8)
    for row, blob in enumerate(blobs):
        try:
            decode(blob, out[row])
        except (ValueError, OSError, RuntimeError, TypeError) as err:
            raise UserError(f"store image {row} of the batch does not decode to {size}x{size} "
                            f"RGB ({type(err).__name__}: {err}); rerun `alexnet prepare` to "
                            "rebuild the store") from None
    return out


def gpu_unavailable(device: torch.device | str) -> str | None:
    """Why the GPU decode cannot run on `device` (None when it can)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"device {device} is not a CUDA device"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed (its io.decode_jpeg runs nvJPEG)"
    index = torch.cuda.current_device() if device.index is None else device.index
    return _nvjpeg_failure(index)


@functools.cache
def _nvjpeg_failure(index: int) -> str | None:
    """Why torchvision's nvJPEG decode fails on cuda:`index` (None when a small JPEG decodes
    there): torchvision imports even where its image library, or nvJPEG, did not load."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        data = torch.frombuffer(bytearray(probe_jpeg()), dtype=torch.uint8)
        with _GPU_LOCK:
            image = decode_jpeg([data], mode=ImageReadMode.RGB,
                                device=torch.device("cuda", index))[0]
        torch.cuda.synchronize(index)
        if tuple(image.shape) != (3, 16, 16):
            return f"torchvision's nvJPEG decode gave shape {tuple(image.shape)} for 16x16"
    except Exception as err:  # any failure: the GPU decode cannot run here
        return f"torchvision's nvJPEG decode fails here ({type(err).__name__}: {one_line(err)})"
    return None


def decode_gpu(blobs: Sequence[Blob], size: int, device: torch.device | str) -> torch.Tensor:
    """JPEGs to uint8 (B, size, size, 3) on CUDA `device`, decoded there in one nvJPEG batch.

    The result is on the device's current stream when it returns, like any CUDA op; it
    is channels-last like a raw store batch (a strided view of the decoder's (B, 3, S, S)).
    The current stream is drained first: torchvision's decoder allocates its outputs on it
    but writes them from its own stream without waiting for it, so it could overwrite memory
    that work queued there still reads (pytorch/vision#9606). On the loader's nvJPEG thread
    that stream is idle and the wait costs nothing. Call it on a stream that no other thread
    queues work on meanwhile (the loader's nvJPEG thread has its own): the drain cannot
    cover work another thread queues after it.
    """
    reason = gpu_unavailable(device)
    if reason:
        raise UserError(f"GPU jpeg decode: {reason}; use the CPU decoder (gpu_decode 0)")
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    if device.type == "cuda":
        # "cuda" and "cuda:0" differ to torchvision, which rebuilds its decoder on a change
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None
                              else device.index)
        torch.cuda.current_stream(device).synchronize()
    if not blobs:
        return torch.empty((0, size, size, 3), dtype=torch.uint8, device=device)
    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    with _GPU_LOCK:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    for row, image in enumerate(images):
        if tuple(image.shape) != (3, size, size):
            raise UserError(f"store image {row} of the batch decodes to {tuple(image.shape)} on "
                            f"the GPU, expected (3, {size}, {size}); rerun `alexnet prepare` "
                            "to rebuild the store")
    return torch.stack(images).permute(0, 2, 3, 1)


def describe() -> dict[str, Any]:
    """What decoders this machine has: for benchmarks and notices."""
    return {"cpu": available_cpu_decoders(), "auto": resolve_cpu_decoder("auto"),
            "gpu": gpu_unavailable("cuda") or "available"}
