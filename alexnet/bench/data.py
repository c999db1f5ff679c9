"""`alexnet bench data`: prepare and the training loader, each beside the usual pipeline.

On generated ImageNet-like JPEGs (500x375, about 100 KB, quality 90, an ImageFolder tree),
in one run, one core each (torch.set_num_threads(1), no worker processes):

- `prepare` (alexnet/data/prepare.py, workers=1): decode, shorter side to 256, centre crop,
  store write and statistics, done once per image; then with one worker per core (this one
  is not per core), timed in the order 1, N, N, 1, 1, N so that drift in the machine's load
  hits both; the scaling is the ratio of the best times (goal: at least 0.8 x cores);
- TrainLoader: random 224 crop, flip, PCA colour, mean image, ending in float batches of 128,
  read from the 256x256 store with prefetch=0 (everything on the calling thread);
- TrainLoader on a jpeg store of the same images, with 1 and 2 read-ahead threads (prefetch 1
  and 2), PIL beside the automatic decoder (alexnet/data/decode.py), ratios in the same run;
- the usual pipeline on the same files: torchvision's ImageFolder + Resize(256) +
  RandomCrop(224) + RandomHorizontalFlip + ToTensor + Normalize through a DataLoader with
  num_workers=0 when torchvision is importable; otherwise the same steps written with PIL,
  NumPy and torch (labelled "PIL stand-in"), which decodes the original JPEG every time.

Ratios are of figures measured in the same run. With a CUDA device it also times uint8
batches through TrainLoader on the GPU (4 read-ahead threads, pinned non_blocking copy,
on-device augmentation) and the on-device augmentation alone, by default (the one-pass Triton
kernel where it runs) and by the torch path (ALEXNET_AUGMENT=torch); the goal there is 20,000
images/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet.paper import BATCH_SIZE, CROP_SIZE, IMAGE_SIZE

# torchvision's ImageNet normalisation (the usual pipeline's convention, not the paper's).
TV_MEAN = (0.485, 0.456, 0.406)
TV_STD = (0.229, 0.224, 0.225)
JPEG_SIZE = (500, 375)  # a typical ILSVRC photo
JPEG_QUALITY = 90
CLASSES = 4
GPU_GOAL = 20_000  # images/s (issue 3)


def make_jpegs(root: Path, count: int, seed: int = 0) -> list[tuple[Path, int]]:
    """`count` photo-like JPEGs (about 100 KB each) in an ImageFolder tree under `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = JPEG_SIZE
    y, x = np.mgrid[0:h, 0:w]
    files = []
    for i in range(count):
        label = i % CLASSES
        phase = rng.uniform(0, 6, 3)
        base = np.stack([128 + 60 * np.sin(x / 37 + p) * np.cos(y / 23 + 2 * p)
                         for p in phase], -1)
        coarse = rng.normal(0, 40, (h // 25 + 1, w // 25 + 1, 3)).repeat(25, 0).repeat(25, 1)
        image = np.clip(base + coarse[:h, :w] + rng.normal(0, 18, (h, w, 3)), 0, 255)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:05d}.JPEG"
        Image.fromarray(image.astype(np.uint8)).save(path, "JPEG", quality=JPEG_QUALITY)
        files.append((path, label))
    return files


class PilFolder(torch.utils.data.Dataset):
    """The usual ImageFolder pipeline without torchvision: decode the original JPEG, shorter
    side to 256 (bilinear, antialiased like torchvision's Resize), random 224 crop, flip with
    p=0.5, to float CHW in 0..1, normalise with the ImageNet mean and std."""

    def __init__(self, files: list[tuple[Path, int]]) -> None:
        self.files = files
        self.mean = torch.tensor(TV_MEAN).view(3, 1, 1)
        self.std = torch.tensor(TV_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            scale = IMAGE_SIZE / min(w, h)
            image = image.resize((max(IMAGE_SIZE, round(w * scale)),
                                  max(IMAGE_SIZE, round(h * scale))), Image.BILINEAR)
            array = np.asarray(image)
        top = np.random.randint(0, array.shape[0] - CROP_SIZE + 1)
        left = np.random.randint(0, array.shape[1] - CROP_SIZE + 1)
        patch = array[top:top + CROP_SIZE, left:left + CROP_SIZE]
        if np.random.rand() < 0.5:
            patch = patch[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, label


def usual_pipeline(root: Path, files: list[tuple[Path, int]]) -> tuple[Any, str]:
    """(dataset, name): torchvision's ImageFolder pipeline where torchvision imports, else the
    stand-in (alexnet.bench.torchvision_problem)."""
    from alexnet.bench import torchvision_problem

    if torchvision_problem():
        return PilFolder(files), "PIL stand-in for ImageFolder+RandomCrop/flip/ToTensor/Normalize"
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Resize(IMAGE_SIZE), transforms.RandomCrop(CROP_SIZE),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(TV_MEAN, TV_STD)])
    return datasets.ImageFolder(str(root), transform=transform), \
        "torchvision ImageFolder+Resize/RandomCrop/flip/ToTensor/Normalize"


def _rate(images: int, run: Callable[[], int | None], sync: Callable[[], None] = lambda: None
          ) -> float:
    """images / seconds of one call of `run`; a run that returns a count went through that
    many images instead (whole batches past `images`)."""
    sync()
    start = time.perf_counter()
    done = run()
    sync()
    return (images if done is None else done) / (time.perf_counter() - start)


def _time_usual(dataset: Any, images: int) -> float:
    """Images/s of the usual pipeline: DataLoader(batch 128, shuffle, num_workers=0)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True,
                                         num_workers=0, drop_last=True)
    next(iter(loader))  # warm-up

    def run() -> int:
        seen = 0
        while seen < images:
            for x, _ in loader:
                seen += len(x)
                if seen >= images:
                    break
        return seen

    return _rate(images, run)


def _time_loader(store: Any, images: int, device: torch.device, prefetch: int,
                 decoder: str = "auto") -> float:
    """Images/s of TrainLoader with full augmentation (batch 128, crop 224) on `device`."""
    from alexnet.data.loader import TrainLoader
    from alexnet.model import loader_pad

    loader = TrainLoader(store, BATCH_SIZE, device=device, prefetch=prefetch, decoder=decoder,
                         pad=loader_pad("alexnet", CROP_SIZE))  # as `alexnet train` asks
    if len(loader) == 0:
        raise ValueError(f"the store needs at least {BATCH_SIZE} images")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    next(iter(loader.epoch(0)))  # warm-up (page cache, kernels)
    batches = max(1, images // BATCH_SIZE)

    def run() -> None:
        done, epoch = 0, 1
        while done < batches:
            for _x, _ in loader.epoch(epoch):
                done += 1
                if done >= batches:
                    break
            epoch += 1

    return _rate(batches * BATCH_SIZE, run, sync)


def _time_jpeg_loader(store: Any, path: Path, images: int) -> dict[str, dict[int, float]]:
    """TrainLoader img/s on a jpeg store of the same images, 1 and 2 read-ahead threads,
    for PIL and for the automatic decoder ({decoder: {threads: img/s}})."""
    from alexnet.data import decode
    from alexnet.data.store import write_store

    jpeg = write_store(path / "train", store.read(range(len(store))), store.labels,
                       store.classes, format="jpeg")
    cpu = torch.device("cpu")
    return {name: {threads: _time_loader(jpeg, images, cpu, threads, name)
                   for threads in (1, 2)}
            for name in dict.fromkeys(["pil", decode.resolve_cpu_decoder("auto")])}


def _time_device_augment(store: Any, device: torch.device, repeats: int,
                         backend: str | None = None) -> float:
    """Images/s of augment.train_batch alone on a uint8 batch already on `device`, with
    `backend` (None: the default, ALEXNET_AUGMENT), channels_last out as training asks."""
    from alexnet.data import augment
    from alexnet.model import loader_pad

    images = torch.from_numpy(store.read(range(BATCH_SIZE))).to(device)
    stats = augment.device_stats(store.stats, device)
    pad = loader_pad("alexnet", CROP_SIZE)

    def step(k: int) -> torch.Tensor:
        return augment.train_batch(images, torch.Generator().manual_seed(k), stats,
                                   channels_last=True, pad=pad, backend=backend)

    def run() -> None:
        for k in range(repeats):
            step(k)

    step(0)
    torch.cuda.synchronize(device)
    return _rate(repeats * BATCH_SIZE, run, lambda: torch.cuda.synchronize(device))


def augment_runs_triton(store: Any, device: torch.device) -> bool:
    """Whether train_batch runs the Triton kernel on this device's store batches by default."""
    from alexnet.data import augment

    images = torch.from_numpy(store.read(range(2))).to(device)
    return augment.use_triton_augment(images, "image", augment.device_stats(store.stats, device))


def repeated_tree(src: Path, dst: Path, times: int) -> int:
    """`dst`: the ImageFolder tree `src` with every file present `times` times under new names
    (hard links, copies where the file system has none); returns the number of files."""
    import shutil

    count = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        folder = dst / path.parent.relative_to(src)
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(times):
            copy = folder / f"{path.stem}-{k}{path.suffix}"
            try:
                os.link(path, copy)
            except OSError:
                shutil.copyfile(path, copy)
            count += 1
    return count


def _time_prepare(prepare: Callable[..., Any], src: Path, out: Path, images: int
                  ) -> dict[str, Any]:
    """Images/s of prepare with 1 worker and with one per core, in the order 1, N, N, 1, 1, N
    (the best of three each, so that a busy moment of the machine hits both alike).

    With N workers the source holds every file N times (hard links), so that a run lasts
    about as long as one with 1 worker and the fixed costs of a run (starting N worker
    processes, the final write-out) weigh alike in both: on the 512 files alone they would
    hide the rate of the cores (a real prepare of ILSVRC-2012 spans 1.28M images). The rates
    are images per second either way.
    """
    import shutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1
    many = src.with_name(f"{src.name}-x{cores}")
    count = {1: images, cores: images}
    if cores > 1:
        count[cores] = repeated_tree(src, many, cores)
    seconds: dict[int, list[float]] = {}
    for run, workers in enumerate((1, cores, cores, 1, 1, cores)):
        where = out if run == 0 else out.with_name(f"{out.name}-{run}")
        start = time.perf_counter()
        prepare(many if workers > 1 else src, where, workers=workers)
        seconds.setdefault(workers, []).append(time.perf_counter() - start)
        if where != out:
            shutil.rmtree(where)
    rates = {w: [count[w] / t for t in ts] for w, ts in seconds.items()}
    return {"prepare_images_per_s_per_core": max(rates[1]),
            "prepare_workers": cores, "prepare_images_many": count[cores],
            "prepare_images_per_s_runs": {str(w): r for w, r in rates.items()},
            "prepare_scaling": max(rates[cores]) / max(rates[1])}


def bench(args: argparse.Namespace) -> dict:
    """Images/s of prepare and of TrainLoader, each beside the usual pipeline (one core).
    Each figure goes into args.figures as soon as it is measured, so that a run stopped by a
    time limit keeps those it reached (prepare's scaling, issue 9's goal, comes first)."""
    from alexnet.bench import keep_figures
    from alexnet.data.prepare import prepare
    from alexnet.data.store import open_split
    from alexnet.evaluate import resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    quick = bool(getattr(args, "quick", False))
    files_n, usual_n, loader_n = (160, 128, 640) if quick else (512, 512, 3072)
    if getattr(args, "smoke", False):
        files_n, usual_n, loader_n = BATCH_SIZE, 16, BATCH_SIZE  # one batch: the loader's least
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    figures = getattr(args, "figures", None)  # alexnet.bench.run's: filled as measured
    result: dict[str, Any] = {} if figures is None else figures
    result.update(device=str(device), jpegs=files_n)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "jpegs", Path(tmp) / "store"
            files = make_jpegs(src, files_n)
            result["jpeg_kb_mean"] = float(np.mean([os.path.getsize(p) for p, _ in files])
                                           / 1024)
            result.update(_time_prepare(prepare, src, out, files_n))
            keep_figures()  # each figure in --json as soon as measured (a kill keeps them)
            dataset, name = usual_pipeline(src, files)
            result["usual_pipeline"] = name
            result["usual_images_per_s_per_core"] = _time_usual(dataset, usual_n)
            keep_figures()
            store = open_split(out, "train")
            cpu = torch.device("cpu")
            result["loader_images_per_s_per_core"] = _time_loader(store, loader_n, cpu, 0)
            keep_figures()
            result["loader_images_per_s_prefetch2"] = _time_loader(store, loader_n, cpu, 2)
            keep_figures()
            result["jpeg_loader"] = _time_jpeg_loader(store, Path(tmp) / "jpeg", loader_n // 2)
            keep_figures()
            if device.type == "cuda":
                result["gpu_loader_images_per_s"] = _time_loader(store, 4 * loader_n, device, 4)
                keep_figures()
                repeats = 20 if quick else 200
                result["gpu_augment_images_per_s"] = _time_device_augment(store, device,
                                                                          repeats)
                keep_figures()
                result["gpu_augment_torch_images_per_s"] = _time_device_augment(
                    store, device, repeats, "torch")
                result["gpu_augment_triton"] = augment_runs_triton(store, device)
    finally:
        torch.set_num_threads(threads)
    usual = result["usual_images_per_s_per_core"]
    result["prepare_over_usual"] = result["prepare_images_per_s_per_core"] / usual
    result["loader_over_usual"] = result["loader_images_per_s_per_core"] / usual
    _print(result)
    return result


def _print(r: dict[str, Any]) -> None:
    usual = r["usual_images_per_s_per_core"]
    print(f"{r['jpegs']} JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]}, {r['jpeg_kb_mean']:.0f} KB "
          f"mean, quality {JPEG_QUALITY}; one core (torch threads 1, no worker processes)")
    print(f"  usual pipeline ({r['usual_pipeline']}):")
    print(f"  {'':<44}{usual:10.1f} images/s")
    print(f"  {'prepare (once per image, workers=1)':<44}"
          f"{r['prepare_images_per_s_per_core']:10.1f} images/s  "
          f"{r['prepare_over_usual']:6.2f}x the usual pipeline")
    n, runs = str(r["prepare_workers"]), r["prepare_images_per_s_runs"]
    many = r.get("prepare_images_many", r["jpegs"])
    print(f"  prepare with one worker per core: {many} images"
          + (f" (the {r['jpegs']} files {many // r['jpegs']} times, hard links)"
             if many != r["jpegs"] else ""))
    print(f"  {'prepare, workers=' + n + ' (one per core)':<44}{max(runs[n]):10.1f} images/s  "
          f"{r['prepare_scaling']:6.2f}x workers=1 (goal {0.8 * int(n):.1f}x; runs: "
          f"workers=1 {', '.join(f'{v:.0f}' for v in runs['1'])}, "
          f"workers={n} {', '.join(f'{v:.0f}' for v in runs[n])})")
    print(f"  {'TrainLoader, full augmentation, float out':<44}"
          f"{r['loader_images_per_s_per_core']:10.1f} images/s  "
          f"{r['loader_over_usual']:6.2f}x the usual pipeline (goal 10x)")
    print(f"  {'TrainLoader, prefetch=2 (2 threads, 2+ cores)':<44}"
          f"{r['loader_images_per_s_prefetch2']:10.1f} images/s  (not per core)")
    pil = r["jpeg_loader"]["pil"]
    for name, rates in r["jpeg_loader"].items():
        for threads, rate in rates.items():
            print(f"  {f'TrainLoader jpeg, {name}, {threads} thread(s)':<44}"
                  f"{rate:10.1f} images/s  {rate / pil[threads]:6.2f}x PIL, "
                  f"{rate / rates[1]:5.2f}x 1 thread")
    if "gpu_loader_images_per_s" in r:
        print(f"  {'GPU: TrainLoader, prefetch=4, uint8 over bus':<44}"
              f"{r['gpu_loader_images_per_s']:10.1f} images/s  (goal {GPU_GOAL})")
        which = "one-pass Triton kernel" if r["gpu_augment_triton"] else "torch path"
        print(f"  {'GPU: on-device augmentation alone':<44}"
              f"{r['gpu_augment_images_per_s']:10.1f} images/s  (default: {which})")
        torch_rate = r["gpu_augment_torch_images_per_s"]
        ratio = r["gpu_augment_images_per_s"] / torch_rate
        print(f"  {'GPU: the same, torch path (ALEXNET_AUGMENT=torch)':<44}"
              f"{torch_rate:10.1f} images/s  (the default runs at {ratio:.2f}x this)")
