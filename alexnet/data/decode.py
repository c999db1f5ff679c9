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

On a CUDA device `decode_gpu` decodes a list of JPEGs in one batched call and returns the
batch on the device, where the loader augments it like a raw batch. GPU decoders, in the
order "auto" tries them (ALEXNET_GPU_DECODER picks one), each checked once on the device;
the loader times every one that passes beside its CPU decoders and uses the fastest
(`usable_gpu_decoders`, loader.gpu_choice):

- `nvimgcodec`: NVIDIA's nvImageCodec (pip package nvidia-nvimgcodec-cu12/-cu13 with
  nvidia-nvjpeg), on the GPU's hardware JPEG engines (A100, H100, H200), which leave the
  CUDA cores to training; its CUDA-core nvJPEG decoder for what they cannot decode.
- `torchvision`: torchvision.io.decode_jpeg(list, device=...), nvJPEG on the CUDA cores.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from alexnet.errors import UserError, one_line

CPU_DECODERS = ("simplejpeg", "cv2", "torchvision", "pil")  # "auto": the first that works
_MODULES = {"simplejpeg": "simplejpeg", "cv2": "cv2", "torchvision": "torchvision",
            "pil": "PIL"}
_GPU_LOCK = threading.Lock()  # one GPU decode at a time: each decoder's state is shared

Blob = bytes | bytearray | memoryview | np.ndarray


class UndecodableImage(UserError):
    """A JPEG of a batch that does not decode to the store's image size: `row` is its place
    in the blobs given, `reason` what went wrong. The loader, which knows the store and the
    image's index there, names them instead (store.damaged_image)."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"store image {row} of the batch {reason}; the store's bytes are "
                         "damaged: delete its split folder and rerun `alexnet prepare` to "
                         "rebuild it")
        self.row, self.reason = row, reason


@functools.cache
def probe_jpeg(size: int = 16) -> bytes:
    """A JPEG of size x size pixels (a colour gradient, PIL's 4:2:0 like the store's) that a
    working decoder must decode."""
    from PIL import Image

    ramp = (np.arange(size) * 256 // size).astype(np.uint8)
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
    if image is None:
        raise ValueError("not a JPEG")
    _fill(out, image if rgb is not None else image[..., ::-1])


def _torchvision(blob: Blob, out: np.ndarray) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    _fill(out, decode_jpeg(data, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy())


def _pil(blob: Blob, out: np.ndarray) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(bytes(blob))) as image:
        _fill(out, np.asarray(image.convert("RGB")))


def _fill(out: np.ndarray, image: np.ndarray) -> None:
    """Copy a decoded (H, W, 3) `image` into `out`; one of another size is a ValueError, not
    broadcast (a JPEG one pixel high or wide, as a damaged height in its header gives, would
    otherwise fill every row or column of the image with its one)."""
    if image.shape != out.shape:
        raise ValueError(f"decodes to {image.shape[1]}x{image.shape[0]}, not the store's "
                         f"{out.shape[1]}x{out.shape[0]}")
    out[...] = image


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
            raise UndecodableImage(row, f"does not decode to {size}x{size} RGB "
                                        f"({type(err).__name__}: {one_line(err, 100)})"
                                   ) from None
    return out


def gpu_unavailable(device: torch.device | str, decoder: str | None = None) -> str | None:
    """Why no GPU decoder (or GPU decoder `decoder`; default GPU_DECODER) can run on
    `device`; None when one can."""
    return _resolve_gpu(device, decoder)[1]


def usable_gpu_decoders(device: torch.device | str, decoder: str | None = None) -> list[str]:
    """The GPU decoders that pass their check on `device`, in GPU_DECODERS' order: `decoder`
    alone when it names one (default GPU_DECODER; `auto`: all); [] off CUDA. The loader times
    each of them beside its CPU decoders and takes the fastest (loader.gpu_choice)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return []
    return [name for name in gpu_decoders_named(decoder)
            if _gpu_failure(name, _cuda_index(device)) is None]


def gpu_decoder(device: torch.device | str, decoder: str | None = None) -> str:
    """The GPU decoder that runs on CUDA `device`: `decoder` (default GPU_DECODER), `auto`
    being the first of GPU_DECODERS whose check passes there; a UserError when none can."""
    name, reason = _resolve_gpu(device, decoder)
    if name is None:
        raise UserError(f"GPU jpeg decode: {reason}; use the CPU decoder (gpu_decode 0)")
    return name


def _resolve_gpu(device: torch.device | str, decoder: str | None) -> tuple[str | None, str | None]:
    """(the GPU decoder that runs on `device`, None) or (None, why none can)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, f"device {device} is not a CUDA device"
    if not torch.cuda.is_available():
        return None, "CUDA is not available"
    reasons = []
    for name in gpu_decoders_named(decoder):
        why = _gpu_failure(name, _cuda_index(device))
        if why is None:
            return name, None
        reasons.append(why)
    return None, "; ".join(reasons)


def _cuda_index(device: torch.device) -> int:
    """The index of CUDA `device`, the current device's for a bare "cuda"."""
    return torch.cuda.current_device() if device.index is None else device.index


def gpu_decoders_named(decoder: str | None = None) -> tuple[str, ...]:
    """The GPU decoders `decoder` (default GPU_DECODER, ALEXNET_GPU_DECODER) names: all for
    auto; a name that is none of them is a one-line UserError (checked without CUDA)."""
    decoder = GPU_DECODER if decoder is None else decoder
    if decoder == "auto":
        return GPU_DECODERS
    if decoder not in GPU_DECODERS:
        raise UserError(f"GPU jpeg decoder {decoder!r} (ALEXNET_GPU_DECODER): choose auto or "
                        f"one of {', '.join(GPU_DECODERS)}")
    return (decoder,)


@functools.cache
def _gpu_failure(decoder: str, index: int) -> str | None:
    """Why GPU decoder `decoder` fails on cuda:`index`, or None when a small JPEG decodes
    there to within a few levels of PIL's pixels (checked once per process): a package can
    import where its GPU libraries (nvJPEG, the hardware engines) did not load."""
    if not _installed(_GPU_MODULES[decoder]):
        return f"{decoder} is not installed"
    blob = probe_jpeg(PROBE_SIZE)
    try:
        got = _GPU_DECODE[decoder]([blob], PROBE_SIZE, torch.device("cuda", index)).cpu()
        want = torch.from_numpy(decode_cpu([blob], PROBE_SIZE, "pil"))
        if (got.int() - want.int()).abs().float().mean() > 4:
            return f"{decoder}'s pixels differ from PIL's on a test JPEG"
    except UserError:
        return f"{decoder} cannot decode a test JPEG here{_import_notes(decoder)}"
    except Exception as err:  # any failure: this decoder cannot run here
        return (f"{decoder} fails here ({type(err).__name__}: {one_line(err)})"
                f"{_import_notes(decoder)}")
    return None


PROBE_SIZE = 64  # the checks' JPEG: big enough for every decoder and engine, cheap to decode


def _import_notes(decoder: str) -> str:
    """What nvImageCodec said about libnvjpeg while it was imported, for a failure's reason
    (that it could not load it explains a decode that fails)."""
    if decoder != "nvimgcodec":
        return ""
    lines = [line.strip() for line in _NVIMGCODEC_IMPORT_LOG
             if "nvjpeg" in line.lower() and "nvjpeg2k" not in line.lower()]
    return f" [{one_line(RuntimeError(' '.join(lines)), 120)}]" if lines else ""


def decode_gpu(blobs: Sequence[Blob], size: int, device: torch.device | str,
               decoder: str | None = None) -> torch.Tensor:
    """JPEGs to uint8 (B, size, size, 3) on CUDA `device`, decoded there in one batch by
    GPU decoder `decoder` (default GPU_DECODER: `auto`, the first of GPU_DECODERS that
    passes its check on the device).

    The result is on the device's current stream when it returns, like any CUDA op, and
    channels-last like a raw store batch. Call it on a stream that no other thread queues
    work on meanwhile (the loader's nvJPEG thread has its own; see `_torchvision_gpu`).
    """
    name = gpu_decoder(device, decoder)
    # "cuda" and "cuda:0" differ to torchvision, which rebuilds its decoder on a change
    device = torch.device("cuda", _cuda_index(torch.device(device)))
    if not blobs:
        return torch.empty((0, size, size, 3), dtype=torch.uint8, device=device)
    return _GPU_DECODE[name](blobs, size, device)


def _installed(module: str) -> bool:
    """Whether `module` (dotted: its parents too) is installed, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or one without a spec
        return False


def _stacked(images: Sequence[torch.Tensor | None], size: int, channels_first: bool
             ) -> torch.Tensor:
    """The decoded images of one batch as (B, size, size, 3); an image that did not decode,
    or to another size, is a UserError naming its row."""
    want = (3, size, size) if channels_first else (size, size, 3)
    for row, image in enumerate(images):
        if image is None:
            raise UndecodableImage(row, "does not decode on the GPU")
        if tuple(image.shape) != want:
            raise UndecodableImage(row, f"decodes to {tuple(image.shape)} on the GPU, "
                                        f"expected {want}")
    if channels_first:  # (B, 3, S, S) viewed as (B, S, S, 3): channels-last memory
        return torch.stack(list(images)).permute(0, 2, 3, 1)
    return torch.stack(list(images))


def _torchvision_gpu(blobs: Sequence[Blob], size: int, device: torch.device) -> torch.Tensor:
    """torchvision.io.decode_jpeg's batched nvJPEG decode (CUDA cores).

    The current stream is drained first: torchvision's decoder allocates its outputs on it
    but writes them from its own stream without waiting for it, so it could overwrite memory
    that work queued there still reads (pytorch/vision#9606). On the loader's nvJPEG thread
    that stream is idle and the wait costs nothing; the drain cannot cover work that another
    thread queues on the same stream after it.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        _drain(torch.cuda.current_stream(device))
    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    try:
        with _GPU_LOCK:
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as err:  # one bad JPEG fails the whole batch, unnamed
        row = _first_undecodable(blobs)
        if row is None:
            raise
        raise UndecodableImage(row, f"does not decode on the GPU ({one_line(err, 100)})"
                               ) from None
    return _stacked(images, size, channels_first=True)


def _first_undecodable(blobs: Sequence[Blob]) -> int | None:
    """The row of the first of `blobs` that PIL cannot decode either, or None: which image
    failed a batched decode that names none."""
    from PIL import Image

    for row, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(bytes(blob))) as image:
                image.convert("RGB")
        except (OSError, ValueError):
            return row
    return None


_NVIMGCODEC_IMPORT_LOG: list[str] = []  # its stderr lines while it was imported
_IMPORT_LOCK = threading.Lock()


@functools.cache
def _nvimgcodec_module() -> Any:
    """nvidia.nvimgcodec, imported with the C-level stderr captured: its import loads every
    codec extension it ships and prints an error line for each library missing (JPEG 2000,
    TIFF), none of which a JPEG decode needs. The lines are kept (_NVIMGCODEC_IMPORT_LOG) for
    the check's reason, should the decode fail. One thread at a time: fd 2 is the process's."""
    import tempfile

    with _IMPORT_LOCK:
        if "nvidia.nvimgcodec" in sys.modules:
            return sys.modules["nvidia.nvimgcodec"]
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with tempfile.TemporaryFile("w+", errors="replace") as log:
                os.dup2(log.fileno(), 2)
                try:
                    from nvidia import nvimgcodec
                finally:
                    os.dup2(saved, 2)
                log.seek(0)
                _NVIMGCODEC_IMPORT_LOG[:] = log.read().splitlines()
        finally:
            os.close(saved)
    return nvimgcodec


# nvImageCodec's own host threads (its `max_num_cpu_threads`; its default, 0, is one per
# core). For the images its hardware engines do not take, its CUDA-core nvJPEG decoder
# decodes the Huffman code of every image under a million pixels on them (the host Huffman
# decoder: nvImageCodec's cuda_decoder.cpp, DEFAULT_GPU_HYBRID_HUFFMAN_THRESHOLD): with one
# per core, the cores the loader's CPU decoders use. On the H200 host (2026-11-29) the loader
# at GPU shares 0.4 / 0.5 / 1 gave 13.4k / 13.1k / 10.2k img/s, what decoders taking turns
# give (1 / (s / 11.7k + (1 - s) / 18.0k): 14.8k / 14.2k / 11.7k), not what they give side by
# side (29k / 23k / 11.7k). The engines' batched decode needs one host thread.
NVIMGCODEC_HOST_THREADS = 1


@functools.cache
def _nvimgcodec_decoder(index: int | None, hardware_only: bool = False) -> Any:
    """nvImageCodec's decoder for cuda:`index`: the GPU's hardware JPEG engines first
    (HW_GPU_ONLY: they use no CUDA cores, which training needs), then its CUDA-core nvJPEG
    decoder for what they cannot do (registered as HYBRID_CPU_GPU, not GPU_ONLY:
    NVIDIA/nvImageCodec#26); `hardware_only`: the engines alone. On the CPU (index None:
    libjpeg-turbo, for tests) its CPU backend. Each with NVIMGCODEC_HOST_THREADS host
    threads, so that its host work does not take the cores of the CPU decoders."""
    nvimgcodec = _nvimgcodec_module()
    kinds = nvimgcodec.BackendKind
    if index is None:
        return nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                                  max_num_cpu_threads=NVIMGCODEC_HOST_THREADS,
                                  backends=[nvimgcodec.Backend(kinds.CPU_ONLY)])
    chosen = [kinds.HW_GPU_ONLY] + ([] if hardware_only else [kinds.HYBRID_CPU_GPU])
    return nvimgcodec.Decoder(device_id=index, max_num_cpu_threads=NVIMGCODEC_HOST_THREADS,
                              backends=[nvimgcodec.Backend(kind) for kind in chosen])


@functools.cache
def nvimgcodec_engines(index: int) -> bool:
    """Whether nvImageCodec decodes a batch of store-like JPEGs on cuda:`index`'s hardware
    JPEG engines alone (else its check passed on the CUDA cores): said beside its figures."""
    try:
        out = _nvimgcodec([probe_jpeg(256)] * 16, 256, torch.device("cuda", index),
                          hardware_only=True)
        return tuple(out.shape) == (16, 256, 256, 3)
    except Exception:  # no engine, no driver support, or none for these images
        return False


def _nvimgcodec(blobs: Sequence[Blob], size: int, device: torch.device,
                hardware_only: bool = False) -> torch.Tensor:
    """nvImageCodec's batched decode on `device` (interleaved RGB, as the store's pixels).

    The decode is ordered on the current stream (`cuda_stream`), and the images come to torch
    through DLPack on that stream. The stream is drained before the decode (the hardware
    engines' batched path writes without waiting for work queued before it: the hazard of
    pytorch/vision#9606) and after the copy into the batch, before the images are released,
    so that nothing of theirs is still read when their memory goes back; both waits block on
    an event rather than spin a core the CPU decoders use. The CPU backend (device cpu) is
    the same path for tests.
    """
    nvimgcodec = _nvimgcodec_module()
    cuda = device.type == "cuda"
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.I_RGB,
                                     allow_any_depth=False, apply_exif_orientation=False)
    data = [np.frombuffer(blob, np.uint8) for blob in blobs]
    stream = torch.cuda.current_stream(device) if cuda else None
    if cuda:
        _drain(stream)
    with _GPU_LOCK:
        decoded = _nvimgcodec_decoder(device.index if cuda else None, hardware_only).decode(
            data, params=params, cuda_stream=stream.cuda_stream if cuda else 0)
    device_kind = nvimgcodec.ImageBufferKind.STRIDED_DEVICE
    images = [None if image is None else
              torch.from_dlpack(image) if image.buffer_kind == device_kind else
              torch.from_numpy(np.asarray(image)).to(device)  # a decoder that gave host memory
              for image in decoded]
    out = _stacked(images, size, channels_first=False)
    if cuda:
        _drain(stream)
    return out


def _drain(stream: torch.cuda.Stream) -> None:
    """Wait, without spinning a core, until the work queued on `stream` is done."""
    done = torch.cuda.Event(blocking=True)
    done.record(stream)
    done.synchronize()


GPU_DECODERS = ("nvimgcodec", "torchvision")  # "auto": the first whose check passes
_GPU_MODULES = {"nvimgcodec": "nvidia.nvimgcodec", "torchvision": "torchvision"}
_GPU_DECODE = {"nvimgcodec": _nvimgcodec, "torchvision": _torchvision_gpu}
GPU_DECODER = os.environ.get("ALEXNET_GPU_DECODER", "auto")  # read at import; or per call


def describe() -> dict[str, Any]:
    """What decoders this machine has: for benchmarks and notices."""
    reason = gpu_unavailable("cuda")
    gpu = reason or gpu_decoder("cuda")
    if gpu == "nvimgcodec":
        engines = nvimgcodec_engines(_cuda_index(torch.device("cuda")))
        gpu += " (hardware JPEG engines)" if engines else " (CUDA cores: no hardware engine)"
    return {"cpu": available_cpu_decoders(), "auto": resolve_cpu_decoder("auto"), "gpu": gpu}
