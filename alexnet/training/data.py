"""The data side of a training run: the store's training and validation splits (the "auto"
validation choice), the per-rank batch and the deterministic training loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet.config import Config
from alexnet.distributed import print0
from alexnet.errors import UserError
from alexnet.training.runtime import Runtime


def open_data(config: Config) -> tuple[Any, Any | None, str | None]:
    """(train split, validation split or None, its name): `val`, else `test` with a notice."""
    from alexnet.data.store import check_root, open_split

    if not config.data.store:
        raise UserError("no store given: --data STORE (a folder made by 'alexnet prepare')")
    root = check_root(config.data.store)
    train_store = open_split(root, "train")
    check_crop(config, train_store.image_size, root)
    choice = config.data.val_split
    if choice == "none":
        return train_store, None, None
    if choice == "auto":
        from alexnet.data.splits import auto_split

        choice = auto_split(root) or ""
        if choice == "test":
            print0(f"notice: {root} has no 'val' split; validating on its 'test' split "
                   "(the schedule then sees test error: report test figures with that in mind)")
        if not choice:
            print0(f"notice: {root} has neither 'val' nor 'test': no validation, constant lr")
            return train_store, None, None
    return train_store, open_split(root, choice), choice


def check_crop(config: Config, image_size: int, root: Path) -> None:
    """A one-line UserError, with a crop that fits, when data.crop exceeds the store's images."""
    from alexnet.model import min_crop
    from alexnet.paper import CROP_SIZE, IMAGE_SIZE

    crop = config.data.crop
    if crop <= image_size:
        return
    smallest = min_crop(config.model.overlap_pool)
    if image_size < smallest:
        raise UserError(f"{root}: its {image_size}-pixel images are smaller than the net's "
                        f"smallest input ({smallest}); prepare the store with --size "
                        f"{IMAGE_SIZE} (the paper's) or at least {smallest}")
    fit = max(smallest, image_size * CROP_SIZE // IMAGE_SIZE)  # the paper's crop ratio
    raise UserError(f"data.crop {crop} is larger than the {image_size}-pixel images of {root}; "
                    f"train with --set data.crop={fit} (from {smallest} to {image_size}), or "
                    f"prepare the store with --size {IMAGE_SIZE}")


def per_rank_batch(config: Config, n_train: int, world: int) -> int:
    """The batch of each rank: the global batch split evenly (checked against the data)."""
    b = config.optim.batch_size
    if b < 1:
        raise UserError(f"optim.batch_size {b}: must be at least 1")
    if b > n_train:
        raise UserError(f"optim.batch_size {b} is larger than the training split "
                        f"({n_train} images); use a smaller --batch-size")
    if b % world:
        raise UserError(f"optim.batch_size {b} (the global batch) does not split evenly over "
                        f"{world} ranks; use a multiple of {world}")
    return b // world


def train_loader(store: Any, per_rank: int, config: Config, rt: Runtime, stats: Any) -> Any:
    """The sharded, deterministic training loader (loader.py)."""
    from alexnet.data.loader import TrainLoader
    from alexnet.model import loader_pad

    d = config.data
    return TrainLoader(store, per_rank, crop=d.crop, seed=config.run.seed, rank=rt.dist.rank,
                       world_size=rt.dist.world_size, device=rt.device, flip=d.flip, pca=d.pca,
                       pca_scale=d.pca_scale, mean=d.mean, stats=stats,
                       prefetch=config.run.prefetch, channels_last=rt.channels_last,
                       decoder=config.run.jpeg_decoder, decode_threads=config.run.decode_threads,
                       gpu_decode=config.run.gpu_decode,
                       augment_in_readers={"readers": True, "consumer": False}.get(
                           config.run.augment_in),
                       pad=loader_pad(config.model.arch, d.crop))

