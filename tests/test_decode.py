"""The JPEG decoders of decode.py: each CPU decoder against PIL, threads, errors, the GPU path."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from _images import jpeg, photo, smooth

from alexnet.data import decode
from alexnet.errors import UserError

SIZE = 64
# Stated bounds (docs/loading.md). Every CPU decoder runs libjpeg-turbo's accurate integer
# IDCT and smooth chroma upsampling, as PIL does: at most 1 level apart (0 measured here).
CPU_MAX, CPU_MEAN = 1, 0.02
# nvJPEG's IDCT and upsampling differ from libjpeg-turbo's: a few levels on average, more at
# sharp colour edges (the measured figures: `alexnet bench pipeline` on a GPU).
GPU_MAX, GPU_MEAN = 64, 2.0
# The JPEG quantisation itself (quality 90, 4:2:0) on these test images.
QUANT_MEAN = 3.0


def images(n: int) -> np.ndarray:
    """n test images: smooth ones and textured photo-like ones, SIZE x SIZE."""
    return np.stack([smooth(SIZE, SIZE, seed=i) if i % 2 else photo(SIZE, SIZE, i % 6, seed=i)
                     for i in range(n)])


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    return [jpeg(image, quality=90) for image in images(12)]


def pil_reference(blobs: list[bytes]) -> np.ndarray:
    """PIL's decode, written independently of decode.py."""
    import io

    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def test_decoders_agree_with_pil(blobs: list[bytes]) -> None:
    reference = pil_reference(blobs)
    assert decode.available_cpu_decoders()[-1] == "pil"
    for name in decode.available_cpu_decoders():
        out = decode.decode_cpu(blobs, SIZE, name)
        assert out.shape == (len(blobs), SIZE, SIZE, 3) and out.dtype == np.uint8
        diff = np.abs(out.astype(np.int64) - reference)
        assert diff.max() <= CPU_MAX and diff.mean() <= CPU_MEAN, name


def test_decoded_pixels_are_the_images_up_to_quantisation(blobs: list[bytes]) -> None:
    out = decode.decode_cpu(blobs, SIZE)
    error = np.abs(out.astype(np.int64) - images(len(blobs)))
    assert error.mean() <= QUANT_MEAN


def test_decoding_into_views_and_in_threads_gives_the_same_pixels(blobs: list[bytes]) -> None:
    alone = decode.decode_cpu(blobs, SIZE)
    out = np.zeros_like(alone)
    halves = [(blobs[:6], out[:6]), (blobs[6:], out[6:])]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda part: decode.decode_cpu(part[0], SIZE, out=part[1]), halves))
    np.testing.assert_array_equal(out, alone)


def test_auto_is_the_first_importable_and_bad_names_are_user_errors() -> None:
    assert decode.resolve_cpu_decoder("auto") == decode.available_cpu_decoders()[0]
    with pytest.raises(UserError):
        decode.resolve_cpu_decoder("libjpeg")
    missing = [name for name in decode.CPU_DECODERS if not decode.importable(name)]
    for name in missing:
        with pytest.raises(UserError):
            decode.resolve_cpu_decoder(name)


def test_wrong_size_and_garbage_are_user_errors(blobs: list[bytes]) -> None:
    for name in decode.available_cpu_decoders():
        with pytest.raises(UserError):
            decode.decode_cpu(blobs[:1], SIZE + 8, name)
        with pytest.raises(UserError):
            decode.decode_cpu([b"not a jpeg at all"], SIZE, name)


def one_pixel_high(blob: bytes) -> bytes:
    """`blob` with the height in its frame header (SOF0) set to 1: damaged bytes that the
    decoders still decode, to the image's first row."""
    at = blob.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then the height
    return blob[:at] + (1).to_bytes(2, "big") + blob[at + 2:]


def test_a_jpeg_one_pixel_high_or_wide_is_a_user_error_not_broadcast(blobs: list[bytes]):
    """A decoded row or column must not fill the whole image (numpy would broadcast it)."""
    image = images(1)[0]
    thin = [jpeg(image[:1]), jpeg(np.ascontiguousarray(image[:, :1])), one_pixel_high(blobs[0])]
    for name in decode.available_cpu_decoders():
        for blob in thin:
            with pytest.raises(UserError, match="does not decode to"):
                decode.decode_cpu([blob], SIZE, name)


def test_gpu_decode_refused_with_a_reason_off_cuda(blobs: list[bytes]) -> None:
    assert "not a CUDA device" in decode.gpu_unavailable("cpu")
    with pytest.raises(UserError):
        decode.decode_gpu(blobs, SIZE, "cpu")


def fake_torchvision(monkeypatch, decode_jpeg) -> None:
    """A torchvision that imports, whose io.decode_jpeg is `decode_jpeg`: as one whose image
    library or nvJPEG did not load (torchvision then only warns at import)."""
    import importlib.machinery
    import sys
    import types

    package = types.ModuleType("torchvision")
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    io = types.ModuleType("torchvision.io")
    io.ImageReadMode = types.SimpleNamespace(RGB="RGB")
    io.decode_jpeg = decode_jpeg
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.io", io)


def pil_decode_jpeg(data, mode, device=None):
    """torchvision.io.decode_jpeg stood in for by PIL: one (3, H, W) tensor or a list."""
    if isinstance(data, list):
        return [pil_decode_jpeg(d, mode) for d in data]
    return torch.from_numpy(pil_reference([bytes(data.numpy())])[0]).permute(2, 0, 1)


def failing_decode_jpeg(data, mode, device=None):
    raise RuntimeError("torchvision not compiled with nvJPEG support\n(more lines)")


def test_a_gpu_batch_of_mixed_sizes_is_a_user_error(blobs: list[bytes], monkeypatch) -> None:
    """A store image of another size is named in one line, not torch.stack's RuntimeError
    (nvJPEG stood in for by PIL: the check does not depend on the decoder)."""
    fake_torchvision(monkeypatch, pil_decode_jpeg)
    cpu = torch.device("cpu")
    out = decode._torchvision_gpu(blobs[:3], SIZE, cpu)
    assert torch.equal(out, torch.from_numpy(pil_reference(blobs[:3])))
    bigger = jpeg(photo(SIZE + 8, SIZE + 8, 1, seed=0), quality=90)
    with pytest.raises(UserError, match=r"store image 1 of the batch decodes to \(3, 72, 72\)"):
        decode._torchvision_gpu([blobs[0], bigger, blobs[1]], SIZE, cpu)


def test_a_gpu_batch_that_fails_names_the_image_that_does_not_decode(
        blobs: list[bytes], monkeypatch) -> None:
    """nvJPEG fails a whole batch for one bad JPEG, naming none: the row is found (an image
    PIL cannot decode either); a failure with every image sound stays what it was."""
    def batch_failing(data, mode, device=None):
        raise RuntimeError("nvjpegDecodeBatched failed: 5")

    fake_torchvision(monkeypatch, batch_failing)
    cpu = torch.device("cpu")
    with pytest.raises(decode.UndecodableImage, match=r"^store image 2 of the batch does not "
                                                      r"decode on the GPU \(nvjpeg") as info:
        decode._torchvision_gpu([blobs[0], blobs[1], b"garbage", blobs[2]], SIZE, cpu)
    assert info.value.row == 2
    with pytest.raises(RuntimeError, match="nvjpegDecodeBatched"):
        decode._torchvision_gpu(blobs[:3], SIZE, cpu)


needs_nvimgcodec = pytest.mark.skipif(not decode._installed("nvidia.nvimgcodec"),
                                      reason="nvImageCodec is not installed (the dev extra "
                                             "has it on Linux x86-64)")


@needs_nvimgcodec
def test_nvimgcodec_decodes_as_pil_does(blobs: list[bytes]) -> None:
    """nvImageCodec's batch decode through the same code as on a GPU, on its CPU backend
    (libjpeg-turbo, as PIL): the store's interleaved RGB, within the CPU decoders' bound."""
    out = decode._nvimgcodec(blobs, SIZE, torch.device("cpu"))
    assert out.shape == (len(blobs), SIZE, SIZE, 3) and out.dtype == torch.uint8
    diff = np.abs(out.numpy().astype(np.int64) - pil_reference(blobs))
    assert diff.max() <= CPU_MAX and diff.mean() <= CPU_MEAN


@needs_nvimgcodec
def test_nvimgcodec_names_the_image_that_does_not_decode(blobs: list[bytes]) -> None:
    cpu = torch.device("cpu")
    with pytest.raises(UserError, match="store image 1 of the batch does not decode"):
        decode._nvimgcodec([blobs[0], b"not a jpeg at all", blobs[1]], SIZE, cpu)
    bigger = jpeg(photo(SIZE + 8, SIZE + 8, 1, seed=0), quality=90)
    with pytest.raises(UserError, match=r"store image 2 of the batch decodes to \(72, 72, 3\)"):
        decode._nvimgcodec([blobs[0], blobs[1], bigger], SIZE, cpu)


def _decoders_made(monkeypatch, *calls: tuple[int | None, bool]) -> list[dict]:
    """The keyword arguments of each nvimgcodec.Decoder that decode._nvimgcodec_decoder makes
    for `calls` (device, hardware_only), with the Decoder stood in for and its cache empty."""
    made: list[dict] = []
    monkeypatch.setattr(decode._nvimgcodec_module(), "Decoder",
                        lambda **kwargs: made.append(kwargs) or kwargs)
    decode._nvimgcodec_decoder.cache_clear()
    try:
        for device, hardware_only in calls:
            decode._nvimgcodec_decoder(device, hardware_only=hardware_only)
    finally:
        decode._nvimgcodec_decoder.cache_clear()
    return made


@needs_nvimgcodec
def test_nvimgcodec_asks_for_the_engines_then_its_cuda_core_decoder(monkeypatch) -> None:
    """The hardware engines (HW_GPU_ONLY) first, then nvImageCodec's CUDA-core JPEG decoder,
    which it registers as HYBRID_CPU_GPU (not GPU_ONLY: that would leave no fallback)."""
    made = _decoders_made(monkeypatch, (0, False), (0, True))
    kinds = decode._nvimgcodec_module().BackendKind
    assert [[b.backend_kind for b in m["backends"]] for m in made] == [
        [kinds.HW_GPU_ONLY, kinds.HYBRID_CPU_GPU], [kinds.HW_GPU_ONLY]]
    assert [m["device_id"] for m in made] == [0, 0]


@needs_nvimgcodec
def test_nvimgcodec_keeps_to_its_own_host_thread(monkeypatch) -> None:
    """Its default (max_num_cpu_threads 0) is one host thread per core, and its CUDA-core
    decoder decodes the Huffman code of images this small on them: the cores the loader's
    CPU decoders use, so the two decoders took turns on the H200 host. Every decoder made
    (engines, CUDA cores, the CPU backend of the tests) asks for NVIMGCODEC_HOST_THREADS."""
    made = _decoders_made(monkeypatch, (0, False), (0, True), (None, False))
    assert [m.get("max_num_cpu_threads") for m in made] == [decode.NVIMGCODEC_HOST_THREADS] * 3
    assert decode.NVIMGCODEC_HOST_THREADS == 1


@needs_nvimgcodec
def test_nvimgcodec_lets_other_threads_run_while_it_decodes(blobs: list[bytes]) -> None:
    """Its batched decode (the GPU's path, on its CPU backend here) releases the interpreter
    lock while it decodes, so the loader's CPU decoders, which take the lock between images,
    run meanwhile. A thread that takes the lock for one count and gives it up again
    (sleep(0)) counts on during the decode (hundreds of times); across a call holding the lock
    only at its edges (`sum` of a long range, checked first), whatever the machine's speed."""
    import threading
    import time

    decode._nvimgcodec(blobs, SIZE, torch.device("cpu"))  # set up, outside the counts
    counted, stop, started = [0], threading.Event(), threading.Event()

    def count() -> None:
        started.set()
        while not stop.is_set():
            counted[0] += 1
            time.sleep(0)  # gives the lock up: the count needs it back each time

    def counts_during(call: object) -> int:
        before = counted[0]
        call()
        return counted[0] - before

    counter = threading.Thread(target=count)
    counter.start()
    started.wait()
    try:
        holding = min(counts_during(lambda: sum(range(2 * 10**6))) for _ in range(3))
        decoding = [counts_during(lambda: decode._nvimgcodec(blobs * 32, SIZE,
                                                             torch.device("cpu")))
                    for _ in range(3)]
    finally:
        stop.set()
        counter.join()
    # counts slip in at the call's edges, more on a loaded machine (3, once 15 beside a full
    # test run, when the decodes counted 477-783; once 49 in CI on a 2-core AMD host, the
    # decodes 391-433: the fewest of 3 holds now, and 5 times it): a decode that held the
    # lock would count as few; one that lets go counts hundreds
    assert max(decoding) >= max(20, 5 * holding), (holding, decoding)


def test_a_failing_nvimgcodec_says_what_it_said_of_libnvjpeg(monkeypatch) -> None:
    monkeypatch.setattr(decode, "_NVIMGCODEC_IMPORT_LOG", [
        "Failed to load nvjpeg library! Please install nvidia-nvjpeg-cu13.",
        "[ERROR] [nvjpeg2k_ext] Failed to load nvJPEG2000 library."])
    assert decode._import_notes("nvimgcodec") == \
        " [Failed to load nvjpeg library! Please install nvidia-nvjpeg-cu13.]"
    assert decode._import_notes("torchvision") == ""


@pytest.fixture
def fresh_probes():
    decode.importable.cache_clear()
    decode._gpu_failure.cache_clear()
    yield
    decode.importable.cache_clear()
    decode._gpu_failure.cache_clear()


@pytest.mark.parametrize("works", [True, False])
def test_a_decoder_that_imports_but_cannot_decode_is_not_offered(monkeypatch, fresh_probes,
                                                                   works) -> None:
    fake_torchvision(monkeypatch, pil_decode_jpeg if works else failing_decode_jpeg)
    assert decode.importable("torchvision") is works
    assert ("torchvision" in decode.available_cpu_decoders()) is works
    if works:
        assert decode.resolve_cpu_decoder("torchvision") == "torchvision"
    else:
        with pytest.raises(UserError, match="'torchvision' is not installed"):
            decode.resolve_cpu_decoder("torchvision")


def fake_cuda(monkeypatch) -> None:
    """torch.cuda said to be there (device 0, a do-nothing stream): for the GPU decoders'
    checks and choice; what really needs a GPU still fails, as on a machine without one."""
    import types

    stream = types.SimpleNamespace(synchronize=lambda: None, cuda_stream=0)
    event = types.SimpleNamespace(record=lambda stream=None: None, synchronize=lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "Event", lambda **kwargs: event)


@pytest.mark.parametrize("works", [True, False])
def test_gpu_decode_is_offered_only_where_a_gpu_decoder_decodes(monkeypatch, fresh_probes,
                                                                works) -> None:
    """CUDA stood in for: each GPU decoder's check decodes a small JPEG on the device
    (nvImageCodec made to fail, as it does without a GPU: on the GPU machine, where
    gpu_check.sh installs it, it would decode); a failure is the reason, in one line, and the
    loader then decodes on the CPU."""
    from alexnet.data import loader

    def no_gpu(blobs, size, device):
        raise RuntimeError("no GPU here")

    fake_torchvision(monkeypatch, pil_decode_jpeg if works else failing_decode_jpeg)
    fake_cuda(monkeypatch)
    monkeypatch.setitem(decode._GPU_DECODE, "nvimgcodec", no_gpu)
    monkeypatch.setattr(loader, "_MEASURED_CHOICES", {})
    monkeypatch.setattr(loader, "decode_rates", lambda *args: (3.0, 1.0))  # GPU 3x the CPU
    # read together, each decoder at its own rate (side by side): 3 / s or 1 / (1 - s)
    monkeypatch.setattr(loader, "split_rate", lambda store, device, how, batch: min(
        3.0 / max(how.gpu_decode, 1e-9), 1.0 / max(1.0 - how.gpu_decode, 1e-9)))
    class Store:  # a jpeg store of 4 images (split_rate, stood in for, reads none)
        format, image_size = "jpeg", 16

        def __len__(self) -> int:
            return 4

    store = Store()
    reason = decode.gpu_unavailable("cuda")
    if works:
        assert reason is None and decode.gpu_decoder("cuda") == "torchvision"
        assert loader.default_gpu_decode(store, "cuda") == 0.75
        assert loader.gpu_choice(store, "cuda").decoder == "torchvision"
    else:
        assert reason.startswith("nvimgcodec ") and reason.endswith(
            "; torchvision fails here (RuntimeError: torchvision not compiled with nvJPEG "
            "support (more lines))")
        assert loader.default_gpu_decode(store, "cuda") == 0.0
        with pytest.raises(UserError, match="GPU jpeg decode: nvimgcodec "):
            decode.decode_gpu([decode.probe_jpeg()], 16, "cuda")


def test_the_gpu_decoder_is_the_one_asked_for_else_the_first_that_passes(monkeypatch):
    fake_cuda(monkeypatch)
    failures = {"nvimgcodec": None, "torchvision": None}
    monkeypatch.setattr(decode, "_gpu_failure", lambda name, index: failures[name])
    assert decode.GPU_DECODERS[0] == "nvimgcodec"  # the hardware engines first
    assert decode.gpu_decoder("cuda") == "nvimgcodec"
    assert decode.gpu_decoder("cuda", "torchvision") == "torchvision"
    assert decode.usable_gpu_decoders("cuda") == ["nvimgcodec", "torchvision"]  # all: timed
    assert decode.usable_gpu_decoders("cuda", "torchvision") == ["torchvision"]
    assert decode.usable_gpu_decoders("cpu") == []
    failures["nvimgcodec"] = "nvimgcodec is not installed"
    assert decode.gpu_decoder("cuda") == "torchvision"
    assert decode.usable_gpu_decoders("cuda") == ["torchvision"]
    with pytest.raises(UserError, match="GPU jpeg decode: nvimgcodec is not installed; use "):
        decode.gpu_decoder("cuda", "nvimgcodec")
    with pytest.raises(UserError, match="GPU jpeg decoder 'nvdec'"):
        decode.gpu_decoder("cuda", "nvdec")
    monkeypatch.setattr(decode, "GPU_DECODER", "torchvision")  # ALEXNET_GPU_DECODER
    failures["nvimgcodec"] = None
    assert decode.gpu_decoder("cuda") == "torchvision"
    assert decode.usable_gpu_decoders("cuda") == ["torchvision"]


@pytest.mark.parametrize("name", decode.GPU_DECODERS)
def test_gpu_decode_is_the_cpu_decode_up_to_the_stated_bound(blobs: list[bytes], name) -> None:
    reason = decode.gpu_unavailable("cuda", name)
    if reason:
        pytest.skip(f"GPU decode: {reason}")
    out = decode.decode_gpu(blobs, SIZE, "cuda", name)
    assert out.is_cuda and out.dtype == torch.uint8 and out.shape == (len(blobs), SIZE, SIZE, 3)
    diff = np.abs(out.cpu().numpy().astype(np.int64) - decode.decode_cpu(blobs, SIZE))
    assert diff.max() <= GPU_MAX and diff.mean() <= GPU_MEAN
    assert decode.decode_gpu([], SIZE, "cuda", name).shape == (0, SIZE, SIZE, 3)
    with pytest.raises(UserError):
        decode.decode_gpu(blobs[:2], SIZE + 8, "cuda", name)
    bigger = jpeg(photo(SIZE + 8, SIZE + 8, 1, seed=0), quality=90)
    with pytest.raises(UserError, match="store image 1 of the batch"):
        decode.decode_gpu([blobs[0], bigger], SIZE, "cuda", name)
