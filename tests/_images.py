"""Real-looking image files for the data tests: each image's colour says its class.

Class k is drawn in PALETTE[k] with a gentle texture, so a stored image's mean colour tells
which class it came from (`class_of`), in colour or in grey (greyscale files carry the
colour's luminance).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = np.array([(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 210, 50),
                    (160, 60, 200), (40, 200, 210)], np.float64)
GREYS = PALETTE @ np.array([0.299, 0.587, 0.114])  # PIL's L conversion


def photo(width: int, height: int, k: int, seed: int = 0) -> np.ndarray:
    """uint8 (height, width, 3): class k's colour, a soft gradient and some grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    wave = 12 * np.sin(x / max(width, 1) * 6.3 + seed) * np.cos(y / max(height, 1) * 4.1)
    image = PALETTE[k][None, None, :] + wave[..., None] + rng.normal(0, 4, (height, width, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def smooth(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 image with structure at every scale but no aliasing hazards (for resize tests)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [127 + 100 * np.sin(x * rng.uniform(3, 9) + rng.uniform(0, 6))
                * np.cos(y * rng.uniform(3, 9) + rng.uniform(0, 6)) for _ in range(3)]
    return np.clip(np.rint(np.stack(channels, -1)), 0, 255).astype(np.uint8)


def class_of(image: np.ndarray) -> int:
    """The class whose colour (or luminance, for grey images) is nearest the mean colour."""
    mean = image.reshape(-1, 3).astype(np.float64).mean(axis=0)
    colour = np.linalg.norm(PALETTE - mean, axis=1)
    grey = np.linalg.norm(GREYS[:, None] - mean[None, :], axis=1)
    return int(np.argmin(np.minimum(colour, grey)))


def jpeg(array: np.ndarray, quality: int = 92, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def cmyk_jpeg(array: np.ndarray) -> bytes:
    """A CMYK JPEG (Adobe-inverted, as Photoshop writes them) of an RGB array."""
    buffer = io.BytesIO()
    Image.fromarray(array).convert("CMYK").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def grey_jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("L").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """A JPEG whose pixels are stored turned 90 degrees, with EXIF orientation 6 to undo it."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # display: rotate 90 degrees clockwise
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def truncated_jpeg(array: np.ndarray) -> bytes:
    data = jpeg(array)
    return data[: len(data) * 2 // 3]


# Varied sizes and aspect ratios: landscape, portrait, square, tiny, very wide.
SIZES = [(90, 60), (50, 120), (47, 47), (13, 9), (200, 37), (64, 80)]


def zoo(k: int, seed: int = 0) -> dict[str, bytes]:
    """The real-world cases for class k: file name -> bytes (all should be readable)."""
    files = {}
    for i, (w, h) in enumerate(SIZES):
        files[f"img_{k}_{i}.JPEG"] = jpeg(photo(w, h, k, seed + i))
    files[f"cmyk_{k}.JPEG"] = cmyk_jpeg(photo(70, 50, k, seed))
    files[f"grey_{k}.JPEG"] = grey_jpeg(photo(60, 70, k, seed))
    files[f"png_{k}.JPEG"] = png(photo(55, 65, k, seed))  # PNG data in a .JPEG name
    files[f"exif_{k}.JPEG"] = exif_rotated_jpeg(photo(80, 44, k, seed))
    return files


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar holding `files` (name -> bytes), in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def ground_truth(ids: list[int], split: str = "val") -> bytes:
    """A devkit's ground truth of a split: the ILSVRC `ids` of the first images, then the
    first id again up to the devkit's number of lines (val 50,000, test 150,000)."""
    from alexnet.data.sources import GROUND_TRUTH_LINES

    lines = ids + ids[:1] * (GROUND_TRUTH_LINES[split] - len(ids))
    return "".join(f"{i}\n" for i in lines).encode()


def meta_mat(leaves: list[tuple[int, str, str]], parents: int = 2) -> bytes:
    """A devkit meta.mat: `leaves` (ilsvrc_id, wnid, words) plus non-leaf synsets after them."""
    return _meta_mat(leaves, parents, "ILSVRC2012_ID")


def meta_mat_2010(leaves: list[tuple[int, str, str]], parents: int = 2) -> bytes:
    return _meta_mat(leaves, parents, "ILSVRC2010_ID")


def _meta_mat(leaves: list[tuple[int, str, str]], parents: int, id_field: str) -> bytes:
    from scipy.io import savemat

    rows = [(i, w, words, 0) for i, w, words in leaves]
    rows += [(len(leaves) + 1 + j, f"n0900000{j}", f"parent {j}", 3) for j in range(parents)]
    dtype = [(id_field, "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
             ("num_children", "O"), ("children", "O"), ("wordnet_height", "O"),
             ("num_train_images", "O")]
    synsets = np.zeros((len(rows), 1), dtype=dtype)
    for r, (i, wnid, words, children) in enumerate(rows):
        synsets[r, 0] = (np.array([[i]], np.uint16), np.array([wnid]), np.array([words]),
                         np.array(["a gloss"]), np.array([[children]], np.uint8),
                         np.zeros((1, children), np.uint8) if children else np.zeros((1, 0)),
                         np.array([[0]], np.uint8), np.array([[1300]], np.uint16))
    buffer = io.BytesIO()
    savemat(buffer, {"synsets": synsets})
    return buffer.getvalue()
