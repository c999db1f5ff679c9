"""`alexnet bench pipeline`: training from a real store beside the model alone and the loader alone.

One run writes a store of photo-like 256x256 images twice (raw and jpeg, quality 90, about
18 KB per image like ILSVRC photos at that size), then measures on the device, each figure
beside the others of the same run:

- model only: the paper net's training step (alexnet.training.loop.train_step) on a batch already on
  the device (on CUDA in bf16 with channels_last, the fast settings without compile; fp32 on
  the CPU), timed first and last, the faster kept;
- loader only: TrainLoader's batches (full augmentation, float out on the device, in the
  model's memory format as `alexnet train` asks for it: channels_last on CUDA), nothing
  else; raw at read-ahead depths 4, 8, 16 and the default; jpeg decoded on the CPU alone by
  1, 2, 4, 8, 16 read-ahead threads (up to the cores), each decoding its own batch (the
  default feeding a GPU), and by one decode thread per core shared by the default depth's
  read-ahead threads; jpeg with the GPU decoding none, the default share, half and all of
  each batch (the other settings default), and the splits the loader timed at start to choose
  its default share and GPU decoder (loader.gpu_choice);
- training from the store: both together, as `alexnet train` runs them; the ratio to the
  model-only figure says how much the loader costs; then again with the batches augmented in
  the other place (read-ahead threads or consumer: loader.default_augment_in_readers);
- each store's loader from disk: its files dropped from the page cache first (fadvise, no
  root needed; on a tmpfs they stay in memory and the figure is the cached one), timed over
  its first epoch only;
- a third store, the same images as JPEGs of quality LOW_QUALITY (`prepare --jpeg-quality`):
  its loader alone and training from it at the defaults, its CPU decoders at 1 thread and at
  the cores (and the GPU decoders), and both qualities' mean and max distance from the raw
  pixels;
- with more than one GPU decoder here (decode.GPU_DECODERS: nvImageCodec's hardware engines,
  torchvision's nvJPEG), the jpeg loader alone and training from it at the defaults with each
  decoder other than the loader's (the fastest beside the CPU decoders), at its own share;
- on CUDA, what limits training from a store: training from the raw store at read-ahead
  depths 4 and 8 beside the default, from the jpeg store with every image decoded on the GPU
  (GPU share 1: the host's cores left to training) at depth 4 and the default, and the
  model alone and training from either store
  with the whole step replayed from one CUDA graph (`Trainer(graphed=True)`): the host then
  launches one graph per step instead of every kernel, so a training thread slowed by the
  read-ahead threads (the interpreter lock, the cores) shows as training closer to the model
  with the graph than without.

And the decoders alone on the store's JPEG bytes: each CPU decoder at 1, 2, 4, 8 and 16 threads
(threads beyond the host's cores are skipped), each GPU decoder's batches on the GPU, and the
mean and max difference in levels between GPU and CPU pixels. The store is made of `distinct` images
repeated (decoding and copying cost the same whatever the repeats), so that it is written in
seconds. Timed spans exclude warm-up and end with a device synchronisation. Each loader's span
lies within one epoch, after its read-ahead's first round (`timed_warmup`): each epoch starts
its read-ahead afresh, which an ILSVRC epoch of 5,000 batches pays once, and a span crossing
this store's epochs (a few dozen batches) would pay it every few dozen; the store holds as
many repeats as the longest span needs (`store_repeats`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet import paper

SIZE = paper.IMAGE_SIZE
QUALITY = 90  # the jpeg store's default (alexnet.data.store.JPEG_QUALITY)
LOW_QUALITY = 75  # `prepare --jpeg-quality 75`, measured beside it: cheaper to decode
THREADS = (1, 2, 4, 8, 16)
CUDA_RUN = {"amp": "bf16", "channels_last": True}  # the Trainer's run settings on CUDA


def settings_line(amp: str | None, channels_last: bool) -> str:
    """The Trainer's settings as its figures record them (bench/goals.py checks them)."""
    return f"amp {amp}, channels_last {channels_last}"


def photo_like(count: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, 256, 256, 3): soft colour waves, blocky shapes and grain, like photos
    (about 18 KB each at JPEG quality 90)."""
    rng = np.random.default_rng(seed)
    line = np.arange(SIZE, dtype=np.float32)
    grain = rng.normal(0, 7, (8, SIZE, SIZE, 3)).astype(np.float32)
    out = np.empty((count, SIZE, SIZE, 3), np.uint8)
    for i in range(count):
        f, p = rng.uniform(8, 60, 3), rng.uniform(0, 6.3, 3)
        waves = np.stack([np.outer(np.cos(line / f[2 - c] + 2 * p[c]), np.sin(line / f[c] + p[c]))
                          for c in range(3)], -1)  # (y, x, channel), separable
        blocks = rng.normal(0, 25, (SIZE // 32, SIZE // 32, 3)).astype(np.float32)
        image = 128 + 70 * waves + blocks.repeat(32, 0).repeat(32, 1) + grain[i % 8]
        out[i] = np.clip(image, 0, 255)
    return out


def write_twin_stores(root: Path, images: np.ndarray, repeats: int, classes: int,
                      low_quality: bool = False) -> dict[str, Any]:
    """A raw and a jpeg store (root/raw, root/jpeg) of `images` repeated `repeats` times;
    with `low_quality` also a jpeg store at LOW_QUALITY (root/jpeg75)."""
    from alexnet.data.stats import pixel_sums
    from alexnet.data.store import SplitWriter, encode_jpeg, open_split

    sums = pixel_sums(images)
    labels = np.arange(len(images)) % classes
    names = {"raw": QUALITY, "jpeg": QUALITY}
    if low_quality:
        names[f"jpeg{LOW_QUALITY}"] = LOW_QUALITY
    for name, quality in names.items():
        blobs = None
        if name != "raw":
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                blobs = list(pool.map(encode_jpeg, images, [quality] * len(images)))
        writer = SplitWriter(root / name / "train", split="train", image_size=SIZE,
                             classes=[f"c{k}" for k in range(classes)],
                             format="raw" if name == "raw" else "jpeg", jpeg_quality=quality,
                             source="bench pipeline", checkpoint_seconds=float("inf"))
        for r in range(repeats):
            writer.add_chunk(images, np.roll(labels, r), sums=sums, jpegs=blobs)
        writer.finish()
    return {name: open_split(root / name, "train") for name in names}


def drop_from_cache(folder: Path) -> bool:
    """Ask the kernel to drop the files of `folder` from the page cache (POSIX_FADV_DONTNEED
    after fsync: no root needed; pages mapped by a process stay, and a tmpfs keeps
    everything). False where the call does not exist."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def disk_rates(stores: dict[str, Any], device: torch.device, batch: int, steps: int
               ) -> dict[str, float]:
    """Loader-only img/s of each store read from disk: its files dropped from the page cache
    first, and no more batches than its first epoch holds (each image read once). The files
    are then read into the page cache again, where the other figures read them."""
    rates = {}
    for fmt, store in stores.items():
        loader = train_loader(store, batch, device)
        timed = min(steps, len(loader) - timed_warmup(loader, 0))
        if timed > 0 and drop_from_cache(store.path):
            rates[fmt] = loader_rate(loader, device, timed, 0)
            read_into_cache(store.path)
    return rates


def read_into_cache(folder: Path) -> None:
    """Read every file of `folder` once (into the page cache)."""
    buffer = bytearray(1 << 24)
    for path in folder.iterdir():
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def train_loader(store: Any, batch: int, device: torch.device, **options: Any) -> Any:
    """A TrainLoader as `alexnet train` makes it for the Trainer's settings: batches in
    channels_last memory format on CUDA (where the Trainer runs channels_last), with the
    paper net's conv1 padding."""
    from alexnet.data.loader import TrainLoader
    from alexnet.model import loader_pad

    return TrainLoader(store, batch, device=device, channels_last=device.type == "cuda",
                       pad=loader_pad("alexnet", paper.CROP_SIZE), **options)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, images: int, steps: int, warmup: int,
           step: Callable[[], None]) -> float:
    """Images/s of `steps` calls of `step` after `warmup` calls (each call: `images`)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return images * steps / (time.perf_counter() - start)


class Trainer:
    """The paper net (`width` 1; smaller for tests only), its optimizer and runtime: one
    training step at a time; `graphed` (CUDA only): each step replays one CUDA graph of the
    whole step (alexnet.training.graphs.GraphedStep, as `alexnet train` with run.cuda_graph
    runs it: captured on the first batch, each new batch copied into the graph's input
    first), so the host launches one graph per step."""

    def __init__(self, device: torch.device, classes: int, width: float = 1.0,
                 graphed: bool = False) -> None:
        from alexnet.config import Config
        from alexnet.distributed import DistInfo
        from alexnet.model import build_model
        from alexnet.optim import PaperSGD, param_groups
        from alexnet.training.runtime import setup_runtime

        config = Config()
        if device.type == "cuda":  # train_loader's batches follow channels_last
            config.run.amp, config.run.channels_last = CUDA_RUN["amp"], CUDA_RUN["channels_last"]
        self.settings = settings_line(config.run.amp, config.run.channels_last)
        self.rt = setup_runtime(config, DistInfo(device=device))
        torch.manual_seed(0)
        self.net = build_model("alexnet", num_classes=classes, width=width).to(device)
        if self.rt.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = PaperSGD(param_groups(self.net), lr=paper.BASE_LR,
                                  momentum=paper.MOMENTUM, weight_decay=paper.WEIGHT_DECAY)
        self.graphed = graphed
        self._graphed_step: Any = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from alexnet.training.loop import train_step

        if not self.graphed:
            train_step(self.net, x, y, self.optimizer, self.rt)
            return
        if self._graphed_step is None:
            from alexnet.training.graphs import GraphedStep

            self._graphed_step = GraphedStep(self.net, self.optimizer, self.rt)
        self._graphed_step(x, y)  # model_rate's steps on one batch copy nothing


def timed_warmup(loader: Any, warmup: int) -> int:
    """Untimed batches before a loader's timed span: `warmup`, and at least one per read-ahead
    thread. At an epoch's start every thread starts reading at once, so their first batches
    arrive together; a span starting among them would count batches read before it began."""
    return max(warmup, loader.reading.prefetch)


def _timed_epoch(loader: Any, device: torch.device, steps: int, warmup: int,
                 step: Callable[[torch.Tensor, torch.Tensor], object]) -> float:
    """Images/s of `step` on `steps` batches of epoch 0 of `loader`, after `timed_warmup`
    batches of the same epoch: the span never crosses into a new epoch, whose read-ahead
    starts afresh (the module docstring)."""
    warmup = timed_warmup(loader, warmup)
    if warmup + steps > len(loader):
        raise ValueError(f"an epoch of {len(loader)} batches cannot hold {warmup} warm-up and "
                         f"{steps} timed batches (store_repeats sizes the store)")
    with contextlib.closing(loader.epoch(0)) as batches:
        return _timed(device, loader.batch_size, steps, warmup, lambda: step(*next(batches)))


def loader_rate(loader: Any, device: torch.device, steps: int, warmup: int) -> float:
    """Images/s of the loader alone: batches on the device, the last one synchronised."""
    return _timed_epoch(loader, device, steps, warmup, lambda x, y: None)


def training_rate(loader: Any, trainer: Trainer, steps: int, warmup: int) -> float:
    """Images/s of training steps fed by the loader."""
    return _timed_epoch(loader, trainer.rt.device, steps, warmup, trainer.step)


def model_rate(trainer: Trainer, loader: Any, steps: int, warmup: int) -> float:
    """Images/s of training steps on one batch already on the device."""
    with contextlib.closing(loader.epoch(0)) as batches:  # no reading left running
        x, y = next(batches)
    return _timed(trainer.rt.device, len(x), steps, warmup, lambda: trainer.step(x, y))


def cpu_decode_rates(blobs: list[Any], threads: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """Images/s of each importable CPU decoder, the bytes split evenly over `threads`."""
    from alexnet.data import decode

    def rate(name: str, n: int) -> float:
        parts = [blobs[i::n] for i in range(n)]
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda part: decode.decode_cpu(part[:4], SIZE, name), parts))
            start = time.perf_counter()
            list(pool.map(lambda part: decode.decode_cpu(part, SIZE, name), parts))
            return len(blobs) / (time.perf_counter() - start)

    return {name: {n: rate(name, n) for n in threads}
            for name in decode.available_cpu_decoders()}


def gpu_decode_figures(blobs: list[Any], device: torch.device, batch: int,
                       default: str | None = None) -> dict[str, Any]:
    """Each GPU decoder that runs here (decode.GPU_DECODERS) alone: images/s in batches of
    `batch`, and its pixels against the CPU decoder's; `default` names the loader's (None:
    decode's own default). One that is not the default and fails on these batches says so
    in its place."""
    from alexnet.data import decode

    chunks = [blobs[i:i + batch] for i in range(0, len(blobs) - batch + 1, batch)]
    out: dict[str, Any] = {"batch": batch, "default": default or decode.gpu_decoder(device)}

    def figures(name: str) -> dict[str, Any]:
        decode.decode_gpu(chunks[0], SIZE, device, name)
        rate = _timed(device, batch * len(chunks), 1, 0,
                      lambda: [decode.decode_gpu(c, SIZE, device, name) for c in chunks])
        gpu = decode.decode_gpu(chunks[0], SIZE, device, name).cpu().numpy().astype(np.int64)
        diff = np.abs(gpu - decode.decode_cpu(chunks[0], SIZE))
        return {"images_per_s": rate, "diff_mean": float(diff.mean()),
                "diff_max": int(diff.max())}

    for name in decode.GPU_DECODERS:
        if decode.gpu_unavailable(device, name):
            continue
        if name == out["default"]:  # what the loader runs: its failure is the run's
            out[name] = figures(name)
        else:
            out[name] = _diagnosed(lambda name=name: figures(name))
    return out


@contextlib.contextmanager
def gpu_decoder_set(name: str) -> Iterator[None]:
    """decode_gpu's default GPU decoder set to `name` meanwhile (ALEXNET_GPU_DECODER), for
    the loader and training rows of a decoder other than the default."""
    from alexnet.data import decode

    saved, decode.GPU_DECODER = decode.GPU_DECODER, name
    try:
        yield
    finally:
        decode.GPU_DECODER = saved


def gpu_choice_figures(loader: Any) -> dict[str, Any]:
    """What `loader` (a jpeg store's) timed at start to choose its default GPU share and GPU
    decoder (loader.gpu_choice, from its cache): each split's img/s, as [GPU decoder (None:
    the CPU decoders alone), share, img/s], each GPU decoder's img/s alone, the choice, and
    the GPU decoders that failed while timed."""
    from alexnet.data.loader import gpu_choice

    how = loader.reading
    choice = gpu_choice(loader.store, loader.device, how.decoder, how.prefetch, how.threads,
                        loader.batch_size)
    return {"share": choice.share, "decoder": choice.decoder, "alone": choice.alone,
            "splits": [[name, share, rate] for (name, share), rate in choice.rates.items()],
            "failed": choice.failed}


def low_quality_figures(store: Any, trainer: Trainer, plan: dict[str, int],
                        threads: tuple[int, ...]) -> dict[str, Any]:
    """The jpeg figures again for a store at LOW_QUALITY: its size, the CPU decoders at
    `threads`, the GPU decoders where they run, the loader alone at its defaults and training
    from it."""
    from alexnet.data import decode

    device, batch = trainer.rt.device, plan["batch"]
    blobs = store.encoded(range(plan["distinct"]))
    loader = train_loader(store, batch, device)
    out: dict[str, Any] = {
        "quality": LOW_QUALITY, "jpeg_kb_mean": float(np.mean([len(b) for b in blobs]) / 1024),
        "gpu_share": loader.reading.gpu_decode,
        "cpu_decode": cpu_decode_rates(blobs, threads),
        "jpeg_loader": loader_rate(loader, device, plan["loader_steps"], plan["warmup"]),
        "jpeg_training": training_rate(loader, trainer, plan["steps"], plan["warmup"])}
    if not decode.gpu_unavailable(device):
        out["gpu_decode"] = gpu_decode_figures(blobs, device, batch, loader.reading.gpu_decoder)
    return out


def levels(decoded: np.ndarray, pixels: np.ndarray) -> dict[str, float]:
    """Mean and max absolute difference in levels between decoded JPEGs and their pixels."""
    diff = np.abs(decoded.astype(np.int64) - pixels.astype(np.int64))
    return {"mean": float(diff.mean()), "max": int(diff.max())}


def _plan(device: torch.device, quick: bool) -> dict[str, int]:
    """Sizes of the run: distinct images, batch, timed training steps, warm-up steps, timed
    loader-only steps (cheap, so more of them), timed rounds of the read-ahead threads in the
    rows of 1-16 CPU-decoding threads (each thread's batches alike, whatever their number)."""
    if device.type == "cuda":
        return ({"distinct": 512, "batch": 256, "steps": 30, "warmup": 5, "loader_steps": 30,
                 "rounds": 2} if quick else
                {"distinct": 1024, "batch": 256, "steps": 100, "warmup": 10,
                 "loader_steps": 80, "rounds": 4})
    return ({"distinct": 32, "batch": 8, "steps": 2, "warmup": 2, "loader_steps": 12,
             "rounds": 2} if quick else
            {"distinct": 128, "batch": 32, "steps": 4, "warmup": 2, "loader_steps": 24,
             "rounds": 2})


def store_repeats(plan: dict[str, int], deepest: int) -> int:
    """Repeats of the plan's distinct images that give one epoch the batches of the longest
    timed span, its warm-up included (`timed_warmup`; `deepest`: the deepest read-ahead
    timed): the training and loader spans, and the thread rows (one round of warm-up, then
    `rounds`)."""
    span = max(max(plan["warmup"], deepest) + max(plan["steps"], plan["loader_steps"]),
               (1 + plan["rounds"]) * deepest)
    return -(-span * plan["batch"] // plan["distinct"])


def run_pipeline(device: torch.device, plan: dict[str, int], root: Path,
                 classes: int = paper.NUM_CLASSES, width: float = 1.0,
                 into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of the bench, on `device`, with the sizes of `plan`; stores under root
    (`width` scales the net: tests only). The figures are put in `into` as they are measured
    (a run stopped early keeps those it has), and returned."""
    from alexnet.data import decode
    from alexnet.data.loader import default_prefetch, host_cores

    steps, warmup, batch = plan["steps"], plan["warmup"], plan["batch"]
    loader_steps, rounds = plan["loader_steps"], plan["rounds"]
    threads = tuple(n for n in THREADS if n <= host_cores())
    depth = default_prefetch(device)
    depths = sorted({4, 8, 16, depth}) if device.type == "cuda" else [depth]
    repeats = store_repeats(plan, max(*depths, *threads))
    pixels = photo_like(plan["distinct"])
    stores = write_twin_stores(root, pixels, repeats, classes, low_quality=True)
    disk = disk_rates({k: stores[k] for k in ("raw", "jpeg")}, device, batch,
                      loader_steps)  # before anything maps the files
    jpeg = stores["jpeg"]
    blobs = jpeg.encoded(range(plan["distinct"]))
    r: dict[str, Any] = {} if into is None else into
    r.update({"device": str(device), "cores": host_cores(), "images": len(jpeg), **plan,
              "repeats": repeats,
              "jpeg_kb_mean": float(np.mean([len(b) for b in blobs]) / 1024),
              "decoders": decode.describe(), "from_disk": disk})
    trainer = Trainer(device, classes, width)
    r["settings"] = trainer.settings
    raw_loader = train_loader(stores["raw"], batch, device)
    jpeg_loader = train_loader(jpeg, batch, device)
    r["reading"] = {"raw": vars(raw_loader.reading), "jpeg": vars(jpeg_loader.reading)}
    r["model_only"] = model_rate(trainer, raw_loader, steps, warmup)
    r["raw_loader"] = {d: loader_rate(train_loader(stores["raw"], batch, device, prefetch=d),
                                      device, loader_steps, warmup) for d in depths}
    r["raw_training"] = training_rate(raw_loader, trainer, steps, warmup)
    moved = not raw_loader.reading.augment_in_readers  # the other place to augment
    r["raw_training_moved"] = training_rate(
        train_loader(stores["raw"], batch, device, augment_in_readers=moved), trainer,
        steps, warmup)
    r["cpu_decode"] = cpu_decode_rates(blobs, threads)
    # CPU-only decoding is slow: `rounds` batches per read-ahead thread, after one each
    r["jpeg_loader_threads"] = {n: loader_rate(
        train_loader(jpeg, batch, device, prefetch=n, decode_threads=1, gpu_decode=0.0),
        device, rounds * n, 0) for n in threads}
    r["jpeg_loader_shared_pool"] = loader_rate(
        train_loader(jpeg, batch, device, decode_threads=host_cores(), gpu_decode=0.0),
        device, rounds * depth, 0)
    shares = [0.0]
    if not decode.gpu_unavailable(device):
        r["gpu_choice"] = gpu_choice_figures(jpeg_loader)
        r["gpu_decode"] = gpu_decode_figures(blobs, device, batch,
                                             jpeg_loader.reading.gpu_decoder)
        shares = sorted({0.0, jpeg_loader.reading.gpu_decode, 0.5, 1.0})
    r["jpeg_loader"] = {s: loader_rate(train_loader(jpeg, batch, device, gpu_decode=s),
                                       device, loader_steps, warmup) for s in shares}
    r["jpeg_training"] = training_rate(jpeg_loader, trainer, steps, warmup)
    r["jpeg_training_moved"] = training_rate(  # each format's default has its own place
        train_loader(jpeg, batch, device,
                     augment_in_readers=not jpeg_loader.reading.augment_in_readers),
        trainer, steps, warmup)
    r["low_quality"] = low_quality_figures(stores[f"jpeg{LOW_QUALITY}"], trainer, plan,
                                           (threads[0], threads[-1]))
    r["levels_from_raw"] = {
        q: levels(decode.decode_cpu(s.encoded(range(plan["distinct"])), SIZE), pixels)
        for q, s in ((QUALITY, jpeg), (LOW_QUALITY, stores[f"jpeg{LOW_QUALITY}"]))}
    r["model_only"] = max(r["model_only"], model_rate(trainer, raw_loader, steps, warmup))
    # Diagnoses beside the goals' figures, after them: each kept as measured, or its error
    others = [name for name in decode.GPU_DECODERS if name in r.get("gpu_decode", {})
              and name != r["gpu_decode"]["default"] and "error" not in r["gpu_decode"][name]]
    def with_other_decoder() -> dict[str, float]:
        loader = train_loader(jpeg, batch, device)
        return {"share": loader.reading.gpu_decode,
                "jpeg_loader": loader_rate(loader, device, loader_steps, warmup),
                "jpeg_training": training_rate(loader, trainer, steps, warmup)}

    for name in others:  # the loader and training at the defaults, with this GPU decoder
        with gpu_decoder_set(name):
            _diagnosis(r, "other_gpu_decoders", name, with_other_decoder)
    if device.type != "cuda":
        return r
    for d in (4, 8):  # what limits training from a store: the read-ahead threads?
        if d != raw_loader.reading.prefetch:
            _diagnosis(r, "raw_training_depth", d, lambda d=d: training_rate(
                train_loader(stores["raw"], batch, device, prefetch=d), trainer, steps, warmup))
    if "gpu_decode" in r:  # every jpeg image decoded on the GPU: the CPU left to training
        for d in sorted({4, jpeg_loader.reading.prefetch}):
            _diagnosis(r, "jpeg_training_gpu_all", d, lambda d=d: training_rate(
                train_loader(jpeg, batch, device, prefetch=d, gpu_decode=1.0), trainer,
                steps, warmup))
    # the host's kernel launches? (last: a failed capture can leave the device unusable)
    graphed = Trainer(device, classes, width, graphed=True)
    _diagnosis(r, "graphed", "model_only",  # captured here, with no loader running
               lambda: model_rate(graphed, raw_loader, steps, warmup))
    if isinstance(r["graphed"]["model_only"], float):
        for name, loader in (("raw", raw_loader), ("jpeg", jpeg_loader)):
            _diagnosis(r, "graphed", f"{name}_training",
                       lambda loader=loader: training_rate(loader, graphed, steps, warmup))
    return r


def _diagnosis(r: dict[str, Any], group: str, key: Any, measure: Callable[[], Any]) -> None:
    """r[group][key] = measure(), or its error (`_diagnosed`)."""
    r.setdefault(group, {})[key] = _diagnosed(measure)


def _diagnosed(measure: Callable[[], Any]) -> Any:
    """measure(), or {"error": its one-line error} where it fails (alexnet.bench.measured): a
    diagnostic row that has not run on a GPU yet must not take the goals' figures with it."""
    from alexnet.bench import measured

    return measured(measure)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Print and return the pipeline figures (see the module docstring)."""
    from alexnet.evaluate import resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    plan = _plan(device, bool(getattr(args, "quick", False)))
    root = Path(tempfile.mkdtemp(prefix="alexnet-pipeline-"))
    try:
        result = run_pipeline(device, plan, root, into=getattr(args, "figures", None))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_figures(result)
    return result


def print_figures(r: dict[str, Any]) -> None:
    """The figures as a table, each with its ratio to the model-only figure of the run."""
    model = r["model_only"]
    print(f"device {r['device']}, {r['cores']} cores for this process; store of {r['images']} "
          f"images 256x256 ({r['distinct']} distinct), jpeg {r['jpeg_kb_mean']:.1f} KB mean, "
          f"quality {QUALITY}; batch {r['batch']}, {r['steps']} timed steps after "
          f"{r['warmup']} (and at least one per read-ahead thread), within one epoch; model "
          f"{r['settings']}")
    print(f"decoders: CPU {', '.join(r['decoders']['cpu'])} (auto: {r['decoders']['auto']}); "
          f"GPU: {r['decoders']['gpu']}")
    raw, jpeg = r["reading"]["raw"], r["reading"]["jpeg"]
    rows = [("model only (batch on device)", model)]
    rows += [(f"raw loader only, depth {d}{' (default)' if d == raw['prefetch'] else ''}", v)
             for d, v in r["raw_loader"].items()]
    where = {True: "augmented by the read-ahead threads", False: "augmented by the consumer"}
    here = bool(raw["augment_in_readers"])
    rows.append((f"raw store: training (depth {raw['prefetch']})", r["raw_training"]))
    rows.append((f"raw store: training, {where[not here]}", r["raw_training_moved"]))
    rows += [(f"jpeg loader only, CPU decode ({jpeg['decoder']}), {n} read-ahead "
              f"thread{'s' * (n > 1)}", v) for n, v in r["jpeg_loader_threads"].items()]
    rows.append((f"jpeg loader only, CPU decode, {r['cores']} threads shared by "
                 f"{jpeg['prefetch']} read-ahead", r["jpeg_loader_shared_pool"]))
    rows += [(f"jpeg loader only, GPU share {s:.2f}"
              f"{' (default)' if s == jpeg['gpu_decode'] else ''}, {jpeg['threads']} threads", v)
             for s, v in r["jpeg_loader"].items()]
    rows.append((f"jpeg store: training (GPU share {jpeg['gpu_decode']:.2f}, "
                 f"{jpeg['threads']} threads, depth {jpeg['prefetch']})", r["jpeg_training"]))
    rows.append((f"jpeg store: training, {where[not jpeg['augment_in_readers']]}",
                 r["jpeg_training_moved"]))
    low = r["low_quality"]
    rows.append((f"jpeg q{low['quality']} loader only, GPU share {low['gpu_share']:.2f} "
                 "(default)", low["jpeg_loader"]))
    rows.append((f"jpeg q{low['quality']} store: training (defaults)", low["jpeg_training"]))
    rows += [(f"{fmt} loader only, from disk (page cache dropped; defaults)", v)
             for fmt, v in r["from_disk"].items()]
    width = max(len(name) for name, _ in rows)
    print(f"  {'':<{width}}{'img/s':>12}{'x model':>10}")
    for name, value in rows:
        print(f"  {name:<{width}}{value:>12.0f}{value / model:>10.2f}")
    _print_diagnoses(r)
    _print_gpu_choice(r.get("gpu_choice"))
    print(f"  CPU decode alone, img/s at threads {', '.join(map(str, _threads(r)))}:")
    for name, rates in r["cpu_decode"].items():
        print(f"    {name:<12}" + "".join(f"{v:>10.0f}" for v in rates.values()))
    g = r.get("gpu_decode", {})
    for name in _gpu_decoders(g):
        default = " (the default)" if name == g["default"] else ""
        said = (f"failed: {g[name]['error']}" if "error" in g[name] else
                f"{g[name]['images_per_s']:.0f} img/s; pixels against the CPU decoder: mean "
                f"{g[name]['diff_mean']:.3f}, max {g[name]['diff_max']} levels")
        print(f"  GPU decode alone ({name}{default}, batches of {g['batch']}): {said}")
    q, levels = low["quality"], r["levels_from_raw"]
    print(f"  JPEG quality {QUALITY} against {q} (prepare --jpeg-quality {q}):")
    print(f"    {'KB per image':<40}{r['jpeg_kb_mean']:>10.1f}{low['jpeg_kb_mean']:>10.1f}")
    print(f"    {'levels from the raw pixels, mean':<40}{levels[QUALITY]['mean']:>10.2f}"
          f"{levels[q]['mean']:>10.2f}")
    print(f"    {'levels from the raw pixels, max':<40}{levels[QUALITY]['max']:>10}"
          f"{levels[q]['max']:>10}")
    for name, rates in low["cpu_decode"].items():
        for n, rate in rates.items():
            base = r["cpu_decode"][name][n]
            print(f"    {f'{name} decode, {n} thread(s), img/s':<40}{base:>10.0f}{rate:>10.0f}"
                  f"  ({rate / base:.2f}x)")
    for name in _gpu_decoders(low.get("gpu_decode", {})):
        base = g.get(name, {}).get("images_per_s")
        rate = low["gpu_decode"][name].get("images_per_s")
        if base and rate:
            print(f"    {f'{name} GPU decode, img/s':<40}{base:>10.0f}{rate:>10.0f}  "
                  f"({rate / base:.2f}x)")


def _print_diagnoses(r: dict[str, Any]) -> None:
    """The rows that say what limits training from a store (not the defaults), each against
    the model alone in the same way of stepping; a row that failed says why."""
    rows = []
    for name, other in r.get("other_gpu_decoders", {}).items():
        share = f" (its share {other['share']:.2f})" if "share" in other else ""
        rows += [(f"jpeg loader only, GPU decoder {name}{share}",
                  other.get("jpeg_loader", other)),
                 (f"jpeg store: training, GPU decoder {name}{share}",
                  other.get("jpeg_training", other))]
    rows += [(f"raw store: training, depth {d}", v)
             for d, v in r.get("raw_training_depth", {}).items()]
    rows += [(f"jpeg store: training, all decoded on the GPU, depth {d}", v)
             for d, v in r.get("jpeg_training_gpu_all", {}).items()]
    graphed = r.get("graphed", {})
    base = graphed.get("model_only")
    steps = [(f"{what}, CUDA graph step", graphed[key]) for key, what in (
        ("model_only", "model only"), ("raw_training", "raw store: training"),
        ("jpeg_training", "jpeg store: training")) if key in graphed]
    if not rows and not steps:
        return
    title = "what limits training (not the defaults)"
    width = max(len(name) for name, _ in [(title, 0), *rows, *steps])
    print(f"  {title:<{width}}{'img/s':>12}{'x model':>10}")
    for name, value, against in ([(n, v, r["model_only"]) for n, v in rows]
                                 + [(n, v, base) for n, v in steps]):
        if isinstance(value, dict):
            print(f"  {name:<{width}}  failed: {value.get('error')}")
        else:
            ratio = f"{value / against:>10.2f}" if isinstance(against, float) else ""
            print(f"  {name:<{width}}{value:>12.0f}{ratio}")
    if steps:
        print("  (the CUDA graph rows against the model alone as a CUDA graph)")


def _print_gpu_choice(choice: dict[str, Any] | None) -> None:
    """The splits the jpeg loader timed at start (gpu_choice_figures) and what it chose."""
    if not choice:
        return
    said = [f"{'CPU alone' if name is None else f'{name} {share:.2f}'}: {rate:.0f}"
            for name, share, rate in choice["splits"]]
    alone = ", ".join(f"{name} {rate:.0f}" for name, rate in choice["alone"].items())
    print("  default GPU share, timed at start (read-ahead threads and GPU thread at once), "
          "img/s:")
    print(f"    {'; '.join(said)}")
    print(f"    GPU decoders alone: {alone}; chosen: share {choice['share']:.2f}, GPU decoder "
          f"{choice['decoder']}")
    for name, error in choice.get("failed", {}).items():
        print(f"    {name} failed while timed, left out: {error}")


def _gpu_decoders(figures: dict[str, Any]) -> list[str]:
    """The GPU decoders timed in `figures` (gpu_decode_figures' result)."""
    from alexnet.data.decode import GPU_DECODERS

    return [name for name in GPU_DECODERS if name in figures]


def _threads(r: dict[str, Any]) -> list[int]:
    return list(next(iter(r["cpu_decode"].values())).keys())
