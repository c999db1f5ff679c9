"""Mutation audit of the loader's GPU-decode choice (alexnet/data/loader.py, decode.py): the
split of a batch between the CPU and GPU decoders, the GPU share, the choice among measured
rates, the defaults per device and format, the fallbacks. CUDA and the GPU decoders are stood
in for (monkeypatch), timings by stand-in clocks; every expectation is recomputed here by a
hand formula, independently of the code under test."""

from __future__ import annotations

import io
import math
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from _images import photo
from PIL import Image

from alexnet.data import decode, loader
from alexnet.data.loader import GpuChoice, Reading

SIZE = 24


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def pil_pixels(blob: bytes) -> np.ndarray:
    """PIL's decode of one JPEG: the reference, written apart from decode.py."""
    with Image.open(io.BytesIO(bytes(blob))) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    return [jpeg_bytes(photo(SIZE, SIZE, i % 6, seed=i)) for i in range(20)]


class FakeStore:
    """A jpeg store of `blobs` (no files): what the loader's reading code asks of one."""

    def __init__(self, blobs: list[bytes], path: str = "/stores/a/train", fmt: str = "jpeg"):
        self.blobs, self.format, self.image_size = list(blobs), fmt, SIZE
        self.path, self.split = Path(path), "train"

    def __len__(self) -> int:
        return len(self.blobs)

    def encoded(self, index) -> list[bytes]:
        return [self.blobs[int(i)] for i in np.asarray(index).reshape(-1)]


def nearest_step(share: Fraction) -> float:
    """The multiple of 0.05 nearest `share` (exact arithmetic; no ties are asked for)."""
    k = min(range(21), key=lambda j: abs(Fraction(j, 20) - share))
    return round(k / 20, 2)


def test_the_gpu_share_is_rounded_to_the_nearest_step() -> None:
    """share_of = g / (g + c) to the nearest 0.05: neither floored (0.48 -> 0.5) nor ceiled
    (0.42 -> 0.4)."""
    for g, c in ((48, 52), (42, 58), (12_000, 13_600), (7, 93), (93, 7), (1, 2), (2, 1),
                 (31, 69), (64, 36)):
        assert loader.share_of(float(g), float(c)) == nearest_step(Fraction(g, g + c)), (g, c)


def test_a_rate_is_the_fastest_timed_round_after_the_untimed_one(monkeypatch) -> None:
    """_fastest: the first call is untimed (set-up), then the minimum of `rounds` timed ones;
    not the slowest, not their mean, and not the untimed one even when it was the quickest."""
    durations = [0.01, 0.5, 0.2, 0.3]  # the first (untimed) is the shortest
    clock, calls = [0.0], []

    def run() -> None:
        clock[0] += durations[len(calls)]
        calls.append(1)

    monkeypatch.setattr(loader, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    assert loader._fastest(run, 3) == pytest.approx(min(durations[1:]))
    assert len(calls) == 4


def test_decode_rates_count_threads_side_by_side_and_wrap_a_small_store(blobs,
                                                                      monkeypatch) -> None:
    """(GPU, CPU) images/s: the GPU's batch / its time and `threads` x RATE_IMAGES / the CPU's
    time (the threads decode at once); a store smaller than the batches is read round and
    round (image i of a part is the store's i mod n), never past its end."""
    small = FakeStore(blobs[:5])
    seen_gpu: list[list[bytes]] = []
    seconds = iter([0.5, 0.25])  # _fastest's answers: the GPU's round, then the CPU's

    def fastest(run, rounds: int) -> float:
        run()
        return next(seconds)

    monkeypatch.setattr(loader, "_fastest", fastest)
    monkeypatch.setattr(loader, "decode_on_gpu", lambda part, size, device, name=None: (
        seen_gpu.append(list(part)) or torch.zeros((len(part), size, size, 3), dtype=torch.uint8)))
    gpu, cpu = loader.decode_rates(small, torch.device("cpu"), "pil", 3, 12)
    assert gpu == pytest.approx(12 / 0.5)
    assert cpu == pytest.approx(3 * loader.RATE_IMAGES / 0.25)
    assert seen_gpu == [[small.blobs[i % 5] for i in range(12)]]


def test_a_split_rate_reads_one_batch_at_depth_0_and_wraps_a_small_store(blobs,
                                                                        monkeypatch) -> None:
    """Depth 0 still reads (one reader): images/s = max(1, depth) x batch / seconds; the
    batch is the store's first images round and round when the store is smaller."""
    small = FakeStore(blobs[:5])
    read: list[list[int]] = []
    monkeypatch.setattr(loader, "read_batch", lambda store, index, device, how, decoders:
                        read.append([int(i) for i in index]))
    monkeypatch.setattr(loader, "_fastest", lambda run, rounds: (run(), 0.5)[1])
    for depth in (0, 1, 3):
        read.clear()
        how = Reading(depth, "pil", 1, 0.0, False)
        rate = loader.split_rate(small, torch.device("cpu"), how, 12)
        assert rate == pytest.approx(max(1, depth) * 12 / 0.5)
        assert read == [[i % 5 for i in range(12)]] * max(1, depth)


def reference_best(rates: dict, alone: dict) -> tuple[float, str | None]:
    """best_split by a plain loop: the first strictly fastest split; the decoder of the fastest
    split with a GPU share (share > 0, a named decoder), else the fastest alone, else None."""
    best_split, best_rate = None, -math.inf
    for split, rate in rates.items():
        if rate > best_rate:
            best_split, best_rate = split, rate
    gpu_best, gpu_rate = None, -math.inf
    for (name, share), rate in rates.items():
        if name is not None and share > 0 and rate > gpu_rate:
            gpu_best, gpu_rate = name, rate
    if gpu_best is None:
        for name, rate in alone.items():
            if rate > gpu_rate:
                gpu_best, gpu_rate = name, rate
    return best_split[1], gpu_best


def test_the_best_split_is_the_fastest_the_cpu_alone_winning_ties() -> None:
    """The fastest split sets the share, the CPU alone first of equals (a GPU share only where
    it measured faster); the decoder is the fastest GPU split's, else the fastest alone's,
    else None; `failed` is kept."""
    cases = [
        ({(None, 0.0): 10.0, ("a", 0.3): 10.0, ("b", 0.5): 9.0}, {"a": 5.0, "b": 6.0}),
        ({(None, 0.0): 10.0, ("a", 0.3): 12.0, ("b", 0.5): 15.0, ("b", 0.25): 11.0},
         {"a": 9.0, "b": 3.0}),
        ({(None, 0.0): 20.0, ("a", 0.3): 12.0, ("b", 0.5): 15.0}, {"a": 9.0, "b": 3.0}),
        ({(None, 0.0): 10.0}, {"a": 2.0, "b": 9.0, "c": 4.0}),  # no split with a GPU share
        ({(None, 0.0): 10.0}, {}),  # every GPU decoder failed
        ({(None, 0.0): 10.0, ("a", 0.0): 50.0, ("b", 0.3): 20.0}, {"a": 1.0, "b": 1.0}),
    ]
    rng = np.random.default_rng(0)
    for _ in range(40):  # and random ones, with ties
        rates = {(None, 0.0): float(rng.integers(5, 9))}
        for name in ("a", "b", "c")[:rng.integers(0, 4)]:
            for share in (0.2, 0.4):
                rates[(name, share)] = float(rng.integers(5, 9))
        cases.append((rates, {name: float(rng.integers(1, 9)) for name, _ in rates if name}))
    for rates, alone in cases:
        choice = loader.best_split(rates, alone, {"x": "Err: e"})
        assert (choice.share, choice.decoder) == reference_best(rates, alone), (rates, alone)
        assert (choice.rates, choice.alone, choice.failed) == (rates, alone, {"x": "Err: e"})


@pytest.fixture
def measuring(monkeypatch):
    """measure_gpu_choice's parts stood in for: decode_rates from `gpu` (img/s per GPU decoder,
    CPU 100 img/s; a rate of None fails), split_rate from the split (what `timed` records),
    host_cores `cores`."""
    state = types.SimpleNamespace(gpu={}, cores=8, threads=[], timed=[])

    def decode_rates(store, device, decoder, threads, gpu_batch, name):
        state.threads.append(threads)
        if state.gpu[name] is None:
            raise RuntimeError("fails at scale")
        return state.gpu[name], 100.0

    def split_rate(store, device, how, batch):
        state.timed.append((how.gpu_decoder, how.gpu_decode))
        return 100.0 + 10 * how.gpu_decode

    monkeypatch.setattr(loader, "decode_rates", decode_rates)
    monkeypatch.setattr(loader, "split_rate", split_rate)
    monkeypatch.setattr(loader, "host_cores", lambda: state.cores)
    return state


def test_the_cpu_rate_is_measured_with_the_threads_the_loader_runs(blobs, measuring) -> None:
    """max(1, depth) readers of `threads` threads each, at most the host's cores."""
    store = FakeStore(blobs)
    measuring.gpu = {"g": 50.0}
    for depth, threads, cores in ((0, 3, 8), (4, 3, 8), (2, 1, 8), (16, 1, 4), (1, 1, 1)):
        measuring.cores, measuring.threads[:] = cores, []
        loader.measure_gpu_choice(store, torch.device("cpu"), "pil", ["g"], depth, threads, 16)
        assert measuring.threads == [min(cores, max(1, depth) * threads)], (depth, threads)


def test_a_share_that_rounds_to_0_is_not_timed_and_the_fastest_alone_is_named(
        blobs, measuring) -> None:
    """GPU decoders at 1 and 2 img/s beside a CPU at 100: g / (g + c) < 0.025 rounds to share
    0, so only the CPU alone is timed; the decoder named is the faster GPU decoder by itself
    (its own rate, not the CPU's)."""
    measuring.gpu = {"slow": 1.0, "less slow": 2.0}
    choice = loader.measure_gpu_choice(FakeStore(blobs), torch.device("cpu"), "pil",
                                       ["slow", "less slow"], 2, 1, 16)
    assert all(g / (g + 100.0) < 0.025 for g in measuring.gpu.values())
    assert measuring.timed == [(None, 0.0)]
    assert list(choice.rates) == [(None, 0.0)] and choice.share == 0.0
    assert choice.decoder == "less slow" and choice.alone == measuring.gpu


def test_with_every_gpu_decoder_failing_the_cpu_decodes_alone(blobs, measuring) -> None:
    measuring.gpu = {"a": None, "b": None}
    choice = loader.measure_gpu_choice(FakeStore(blobs), torch.device("cpu"), "pil",
                                       ["a", "b"], 2, 1, 16)
    assert (choice.share, choice.decoder, choice.alone) == (0.0, None, {})
    assert choice.failed == {"a": "RuntimeError: fails at scale",
                             "b": "RuntimeError: fails at scale"}


@pytest.fixture
def choosing(monkeypatch):
    """gpu_choice with a GPU decoder "g" usable everywhere and measure_gpu_choice counted."""
    measured: list[tuple] = []

    def measure(store, device, decoder, names, prefetch, threads, batch):
        measured.append((store.path, prefetch, threads, batch))
        return GpuChoice(0.25, "g")

    monkeypatch.setattr(loader, "_MEASURED_CHOICES", {})
    monkeypatch.setattr(loader, "measure_gpu_choice", measure)
    monkeypatch.setattr(decode, "usable_gpu_decoders", lambda device, decoder=None: ["g"])
    return measured


def test_raw_and_empty_stores_are_not_measured(blobs, choosing) -> None:
    """Share 0 and no GPU decoder for a raw store or an empty jpeg store, even where a GPU
    decoder runs: nothing to decode, nothing timed."""
    for store in (FakeStore(blobs, fmt="raw"), FakeStore([])):
        assert loader.gpu_choice(store, "cuda") == GpuChoice()
    assert choosing == []
    assert loader.gpu_choice(FakeStore(blobs), "cuda") == GpuChoice(0.25, "g")
    assert len(choosing) == 1


def test_each_store_and_setting_is_measured_once(blobs, choosing) -> None:
    """The cache holds one choice per store and setting: another store, depth, thread count
    or batch size is measured anew; the same one is not."""
    a, b = FakeStore(blobs, "/stores/a/train"), FakeStore(blobs, "/stores/b/train")
    settings = [(a, 4, 1, 64), (a, 4, 1, 64), (a, 8, 1, 64), (a, 4, 2, 64), (a, 4, 1, 32),
                (b, 4, 1, 64), (a, 8, 1, 64)]
    for store, prefetch, threads, batch in settings:
        loader.gpu_choice(store, "cuda", "pil", prefetch, threads, batch)
    want = list(dict.fromkeys((s.path, p, t, n) for s, p, t, n in settings))
    assert choosing == want


def test_a_loader_on_a_gpu_defaults_to_the_gpus_settings(blobs, monkeypatch) -> None:
    """reading() for a CUDA device (none here: no GPU decoder runs, share 0): the GPU's
    read-ahead depth (one per core, 4 to 16), one decoding thread per batch, and augmenting
    in the readers for raw stores, by the consumer for jpeg stores; the CPU's otherwise."""
    for cores in (2, 8, 32):
        monkeypatch.setattr(loader, "host_cores", lambda cores=cores: cores)
        for fmt in ("jpeg", "raw"):
            for device in ("cuda", "cpu"):
                how = loader.reading(FakeStore(blobs, fmt=fmt), torch.device(device), decoder="pil")
                gpu = device == "cuda"
                assert how.prefetch == (max(4, min(16, cores)) if gpu else min(2, cores))
                assert how.threads == (1 if gpu else min(2, cores))
                assert how.augment_in_readers is (not gpu or fmt == "raw"), (fmt, device)
                assert (how.gpu_decode, how.gpu_decoder) == (0.0, None)


@pytest.fixture
def gpu_stand_in(monkeypatch):
    """decode.decode_gpu stood in for by PIL, recording the size of each GPU part."""
    parts: list[int] = []

    def decode_gpu(part, size, device, decoder=None):
        parts.append(len(part))
        return torch.from_numpy(np.stack([pil_pixels(b) for b in part]))

    monkeypatch.setattr(decode, "decode_gpu", decode_gpu)
    return parts


def read(store: FakeStore, index: list[int], how: Reading) -> torch.Tensor:
    with loader.decode_pool(store, how) as decoders:
        return loader.read_batch(store, np.array(index), torch.device("cpu"), how, decoders)


def test_the_gpu_part_is_the_share_of_the_batch_rounded_to_the_nearest_image(
        blobs, gpu_stand_in) -> None:
    """round(share x B) images go to the GPU (neither floored nor ceiled), the rest to the
    CPU, and the batch comes back in order (PIL's pixels where every decoder is PIL)."""
    store = FakeStore(blobs)
    index = [3, 17, 0, 9, 12, 5, 1, 8]
    want = np.stack([pil_pixels(blobs[i]) for i in index])
    for share in (0.1, 0.3, 0.35, 0.6, 0.9, 1.0):
        gpu_stand_in.clear()
        out = read(store, index, Reading(1, "pil", 1, share, False, "g"))
        expected = math.floor(share * len(index) + 0.5)  # no halves among these
        assert gpu_stand_in == ([expected] if expected else []), share
        np.testing.assert_array_equal(out.numpy(), want)


def test_the_cpu_part_is_decoded_in_one_chunk_per_thread(blobs, monkeypatch) -> None:
    """The CPU part goes in min(threads, images) chunks of sizes at most one apart, which
    together cover it once."""
    chunks: list[int] = []
    real = decode.decode_cpu

    def counted(part, size, decoder="auto", out=None):
        chunks.append(len(part))
        return real(part, size, decoder, out)

    monkeypatch.setattr(decode, "decode_cpu", counted)
    store = FakeStore(blobs)
    for images, threads in ((6, 3), (7, 2), (3, 5), (8, 4)):
        chunks.clear()
        out = read(store, list(range(images)), Reading(1, "pil", threads, 0.0, False))
        np.testing.assert_array_equal(out.numpy(), np.stack([pil_pixels(b)
                                                             for b in blobs[:images]]))
        assert len(chunks) == min(threads, images) and sum(chunks) == images
        assert max(chunks) - min(chunks) <= 1, chunks


@pytest.mark.parametrize("threads", [1, 2])
def test_a_damaged_jpeg_of_the_cpu_part_is_named_by_its_store_index(blobs, gpu_stand_in,
                                                                    threads: int) -> None:
    """With a GPU share, the CPU part's rows start after the GPU part's: a damaged image
    there is named by its own index in the store, whichever thread decodes it."""
    damaged = list(blobs)
    damaged[11] = b"not a jpeg at all"
    index = [4, 6, 2, 7, 11, 3, 9, 1]  # store image 11 is row 4, the CPU part's row 2
    with pytest.raises(decode.UserError, match=r": image 11 of the store's 'train' split"):
        read(FakeStore(damaged), index, Reading(1, "pil", threads, 0.25, False, "g"))


def test_stacked_gives_channels_last_batches_and_names_the_bad_row() -> None:
    """(3, S, S) images are (S, S, 3) pixels viewed channels-last, (S, S, 3) ones kept as they
    are; a missing image or one of another shape is named by its row."""
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    chw = [torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) for image in hwc]
    out = decode._stacked(chw, 6, channels_first=True)
    np.testing.assert_array_equal(out.numpy(), hwc)
    assert out.permute(0, 3, 1, 2).is_contiguous()  # channels-last memory
    same = decode._stacked([torch.from_numpy(image) for image in hwc], 6, channels_first=False)
    np.testing.assert_array_equal(same.numpy(), hwc)
    for channels_first, images in ((True, chw), (False, [torch.from_numpy(i) for i in hwc])):
        for row in (0, 2):
            bad = list(images)
            bad[row] = None
            with pytest.raises(decode.UndecodableImage) as info:
                decode._stacked(bad, 6, channels_first)
            assert info.value.row == row
            bad[row] = torch.zeros((3, 5, 6) if channels_first else (5, 6, 3), dtype=torch.uint8)
            with pytest.raises(decode.UndecodableImage, match="expected") as info:
                decode._stacked(bad, 6, channels_first)
            assert info.value.row == row


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda said to be there, its current device `state.current`; the GPU decoders'
    checks cleared before and after."""
    state, checks = types.SimpleNamespace(current=0), decode._gpu_failure
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state.current)
    checks.cache_clear()
    yield state
    checks.cache_clear()


def test_each_gpu_decoder_is_checked_on_the_device_asked_for(fake_cuda, monkeypatch) -> None:
    """nvImageCodec failing on cuda:1 only: usable there (and on a bare "cuda" while cuda:1 is
    the current device) is torchvision alone; on cuda:0 both. No CUDA: none."""
    monkeypatch.setattr(decode, "_gpu_failure", lambda name, index: "fails" if (
        name, index) == ("nvimgcodec", 1) else None)
    assert decode.usable_gpu_decoders("cuda:1") == ["torchvision"]
    assert decode.usable_gpu_decoders("cuda:0") == ["nvimgcodec", "torchvision"]
    fake_cuda.current = 1
    assert decode.usable_gpu_decoders("cuda") == ["torchvision"]
    assert decode.gpu_decoder("cuda") == "torchvision"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert decode.usable_gpu_decoders("cuda:0") == []


def test_a_gpu_decoder_not_installed_or_off_by_many_levels_is_not_used(
        fake_cuda, monkeypatch) -> None:
    """A GPU decoder's package missing is said as such (its decode is not tried); one whose
    pixels are far from PIL's on the test JPEG fails its check; one within a level passes.
    The loader then falls back to the decoder that passed, or to none."""
    offsets = {"torchvision": 1}
    tried: list[str] = []

    def stand_in(name):
        def decode_gpu(part, size, device):
            tried.append(name)
            pixels = np.stack([pil_pixels(b) for b in part]).astype(np.int64) + offsets[name]
            return torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8))
        return decode_gpu

    for name in decode.GPU_DECODERS:
        monkeypatch.setitem(decode._GPU_DECODE, name, stand_in(name))
    monkeypatch.setattr(decode, "_installed", lambda module: module != "nvidia.nvimgcodec")
    assert decode._gpu_failure("nvimgcodec", 0) == "nvimgcodec is not installed"
    assert tried == []
    assert decode._gpu_failure("torchvision", 0) is None
    assert decode.usable_gpu_decoders("cuda:0") == ["torchvision"]
    offsets["torchvision"] = 60
    decode._gpu_failure.cache_clear()
    assert "pixels differ" in decode._gpu_failure("torchvision", 0)
    assert decode.usable_gpu_decoders("cuda:0") == []


def fake_module(monkeypatch, name: str, **members) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(members)
    monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("has_rgb_flag", [True, False])
def test_the_cv2_decoder_gives_rgb_like_pil(blobs, monkeypatch, has_rgb_flag: bool) -> None:
    """OpenCV stood in for (PIL inside, BGR unless asked for RGB, as imdecode does): with
    IMREAD_COLOR_RGB (OpenCV >= 4.11) it is asked for RGB, else its BGR is reversed."""
    flags = {"IMREAD_COLOR": 1, **({"IMREAD_COLOR_RGB": 256} if has_rgb_flag else {})}

    def imdecode(array, flag):
        rgb = pil_pixels(array.tobytes())
        return rgb.copy() if flag == flags.get("IMREAD_COLOR_RGB") else rgb[..., ::-1].copy()

    fake_module(monkeypatch, "cv2", imdecode=imdecode, **flags)
    for blob in blobs[:4]:
        out = np.empty((SIZE, SIZE, 3), np.uint8)
        decode._cv2(blob, out)
        np.testing.assert_array_equal(out, pil_pixels(blob))


def test_the_torchvision_cpu_decoder_gives_rows_then_columns_like_pil(blobs,
                                                                      monkeypatch) -> None:
    """torchvision's (3, H, W) decode stood in for by PIL: the decoder's pixels are PIL's."""
    def decode_jpeg(data, mode):
        return torch.from_numpy(pil_pixels(bytes(data.numpy())).transpose(2, 0, 1).copy())

    fake_module(monkeypatch, "torchvision")
    fake_module(monkeypatch, "torchvision.io", decode_jpeg=decode_jpeg,
                ImageReadMode=types.SimpleNamespace(RGB="RGB"))
    for blob in blobs[:4]:
        out = np.empty((SIZE, SIZE, 3), np.uint8)
        decode._torchvision(blob, out)
        np.testing.assert_array_equal(out, pil_pixels(blob))


def test_a_damaged_jpeg_met_only_by_the_rate_measurement_is_a_user_error(blobs, monkeypatch):
    """The decoders' rates apart are measured on the store's first max(batch / 2, RATE_IMAGES)
    images, more than the batch the splits are timed on: a damaged one met only there names
    its store and index (not taken for a failing GPU decoder, to surface mid-training)."""
    damaged = list(blobs)
    bad = loader.RATE_IMAGES - 4  # past the batch of 8 the splits read
    damaged[bad] = b"not a jpeg at all"
    monkeypatch.setattr(loader, "host_cores", lambda: 2)
    monkeypatch.setattr(loader, "decode_on_gpu", lambda part, size, device, name=None:
                        torch.zeros((len(part), size, size, 3), dtype=torch.uint8))
    with pytest.raises(decode.UserError, match=rf": image {bad} of the store's 'train' split"):
        loader.measure_gpu_choice(FakeStore(damaged), torch.device("cpu"), "pil", ["g"], 1, 1, 8)
