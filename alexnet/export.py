"""`alexnet export`: a trained net as ONNX, TorchScript or a weights-only file, checked.

Every export is read back and its outputs compared with the checkpoint's on the same input
batch (ONNX through onnxruntime when it is installed; otherwise that check is skipped and the
reason printed). The exported ONNX and TorchScript models take what the net takes:
float32 (N, 3, crop, crop) RGB pixels on the 0..255 scale minus the training mean (or, for
data.mean = "torchvision", torchvision's normalised input); N is free. A sidecar
`NAME.json` lists the classes and says how to make that input from an image file (the channel
mean in it). For data.mean = "image" the training mean image goes beside them as
`NAME.mean.npy` (float32 (S, S, 3), rows x columns x RGB on the 0..255 scale), so that numpy
and the export alone make the input; the other means need no file (the sidecar's
`mean_image` is null).

The paper's LRN runs as an autograd Function with chunked in-place loops (fast to train, not
traceable for any batch size); the exported graph uses `PlainLRN`, the same formula written
with plain tensor operations, and the check above shows the two agree.

A weights file is a checkpoint without the optimizer, schedule and RNG state (about half
the size): `evaluate`, `predict`, `figures` and `train --init-from` read it like a checkpoint.

An export replaces only an earlier export of the same format (and its sidecar and mean image
file): never a training checkpoint, a store's file or an unrelated file
(alexnet.atomic.check_output); under a default name, only an export of the same checkpoint
file, which its sidecar records (`check_default_name`). One export writes a given file at
a time (`export_lock`), so that the file, its mean image and its sidecar are always of the
same export: the mean image is renamed into place with the file once both are written and
checked (an export that fails leaves the earlier export's three files), and a re-export that
needs none removes the earlier one's.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import io
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.atomic import (
    FolderLock,
    check_output,
    ensure_folder,
    read_json_object,
    remove_stale,
    replacing,
    write_json,
)
from alexnet.errors import UserError, one_line

FORMATS = ("onnx", "torchscript", "weights")
# TorchScript's deprecation notice: a DeprecationWarning up to torch 2.13, a FutureWarning
# (shown by default) from 2.14.
TORCHSCRIPT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "weights": ".weights.pt"}
MEAN_SUFFIX = ".mean.npy"  # FILE.mean.npy: the training mean image of a data.mean = "image" net
ONNX_OPSET = 17
CHECK_BATCH = 3  # images in the comparison batch (traced with 1, so batch size is free)
TOLERANCE = 1e-4  # max |difference| of the logits, relative to their largest magnitude
WEIGHT_KEYS = ("classes", "stats", "config", "metrics", "epoch", "step")


class PlainLRN(nn.Module):
    """The paper's LRN (section 3.3) in plain tensor operations, for tracing and ONNX.

    b = a / (k + alpha * sum over the n adjacent channels of a^2)^beta, the window clipped
    at the first and last channel, separately in each column (`groups`).
    """

    def __init__(self, groups: int, n: int, alpha: float, beta: float, k: float) -> None:
        super().__init__()
        self.groups, self.half, self.alpha, self.beta, self.k = groups, n // 2, alpha, beta, k

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """LRN of x, or of ReLU(x) with `relu` (the call LRN also accepts)."""
        if relu:
            x = F.relu(x)
        a = x.unflatten(1, (self.groups, -1))  # (N, G, C/G, H, W)
        sq = F.pad(a * a, (0, 0, 0, 0, self.half, self.half))  # zeros beyond the edges
        c = a.shape[2]
        window = sum(sq[:, :, d:d + c] for d in range(2 * self.half + 1))
        return (a / (self.k + self.alpha * window).pow(self.beta)).flatten(1, 2)


def exportable(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every LRN replaced by PlainLRN (same function)."""
    from alexnet.model import LRN

    plain = copy.deepcopy(model).cpu().eval()
    for name, module in list(plain.named_modules()):
        if isinstance(module, LRN):
            parent_name, _, child = name.rpartition(".")
            parent = plain.get_submodule(parent_name) if parent_name else plain
            setattr(parent, child, PlainLRN(module.groups, module.n, module.alpha,
                                            module.beta, module.k))
    return plain


def check_input(crop: int, batch: int = CHECK_BATCH, seed: int = 0) -> torch.Tensor:
    """A fixed batch on the net's input scale (mean-subtracted 0..255 pixels)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, crop, crop, generator=g) * 60.0


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, max |a|): the check's measure."""
    return float((a - b).abs().max() / a.abs().max().clamp(min=1.0))


def _compare(what: str, ref: torch.Tensor, out: torch.Tensor) -> float:
    diff = max_difference(ref, torch.as_tensor(out, dtype=ref.dtype))
    if out.shape != ref.shape or not diff <= TOLERANCE:
        raise UserError(f"{what}: outputs differ from the checkpoint's (max relative "
                        f"difference {diff:.2e} > {TOLERANCE:g}); the export is not usable")
    return diff


def export_weights(model: nn.Module, ckpt: dict[str, Any], path: Path) -> Path:
    """The net's state_dict plus what rebuilds and feeds it (classes, statistics, config),
    written to `path`, the temporary of `replacing`, which names the user's file in an error
    (the temporary's own name said nothing to the user)."""
    from alexnet import checkpoint

    fields = {k: ckpt.get(k) for k in WEIGHT_KEYS}
    fields["weights_only"] = True
    return checkpoint.save(path, checkpoint.make_state(model, **fields), user_errors=False)


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Hide tracing's known, harmless warnings: TorchScript's deprecation notice (torch 2.9+),
    the TracerWarning of conv1's padding (a Python int from the input size, constant for the
    fixed crop an export takes) and the ONNX exporter's "Constant folding" notices about Slice
    ops it leaves unfolded. Every other warning still shows; the export is checked anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", TORCHSCRIPT_DEPRECATED)
        warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean",
                                torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        yield


def export_torchscript(model: nn.Module, crop: int, path: Path) -> Path:
    """The traced net written to `path`, through memory: TorchScript's own file writer ends
    the process (a C++ abort, the temporary left behind) when the disk fills; a plain write
    raises an OSError that `replacing` turns into one line."""
    with torch.no_grad(), quiet_tracing():
        traced = torch.jit.trace(exportable(model), check_input(crop, batch=1), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    path.write_bytes(buffer.getbuffer())
    return path


def onnx_problem(model: nn.Module, crop: int) -> str | None:
    """Why ONNX cannot express `model` on `crop`-pixel inputs, or None: torch's exporter
    writes an adaptive pool only to 1x1 (average) or from maps whose sides are multiples of
    its output's (alexnet-tv's pool to 6x6 of conv5's maps, 6x6 at crop 224, 1x1 at 64).
    Learnt from one traced image, before the user waits for the export."""
    sides: list[tuple[tuple[int, int], tuple[int, int], bool]] = []

    def seen(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        h, w = inputs[0].shape[-2:]
        size = module.output_size
        oh, ow = (size, size) if isinstance(size, int) else size
        sides.append(((h, w), (oh or h, ow or w), isinstance(module, nn.AdaptiveAvgPool2d)))

    pools = [m for m in model.modules()
             if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)]
    if not pools:
        return None
    hooks = [m.register_forward_pre_hook(seen) for m in pools]
    try:
        with torch.no_grad():
            exportable(model)(check_input(crop, batch=1))
    finally:
        for hook in hooks:
            hook.remove()
    for (h, w), out, average in sides:
        if not (average and out == (1, 1)) and (h % out[0] or w % out[1]):
            return (f"its adaptive pool takes {h}x{w} maps to {out[0]}x{out[1]} at crop {crop}, "
                    f"which ONNX expresses only for sides a multiple of {out[0]}x{out[1]}")
    return None


@contextlib.contextmanager
def no_graph_dump() -> Iterator[None]:
    """Standard output (file descriptor 1) to the null device: torch's exporter (2.7+) turns
    its log on whatever `verbose` says and, when it fails, writes its whole graph there from
    C++ (dozens of lines before our one-line error)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)  # what C++ wrote through stdio, before fd 1 returns
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(model: nn.Module, crop: int, path: Path, name: str | os.PathLike = "") -> Path:
    """The net as ONNX written to `path`; what the exporter cannot express is a one-line
    UserError naming `name` (the checkpoint) and the formats that work, not its traceback."""
    try:
        import onnx  # noqa: F401 - torch's exporter needs it
    except ImportError:
        raise UserError("--format onnx needs the onnx package: pip install onnx onnxruntime "
                        "(or pip install -e '.[export]' in this repository)") from None
    try:
        with torch.no_grad(), quiet_tracing(), no_graph_dump():
            torch.onnx.export(exportable(model), (check_input(crop, batch=1),), str(path),
                              dynamo=False, opset_version=ONNX_OPSET, input_names=["image"],
                              output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    except torch.onnx.errors.OnnxExporterError as err:
        text = " ".join(str(err).split("[Caused by")[0].split(" Please feel free")[0].split())
        reason = text[:200] or one_line(err)
        raise UserError(unsupported_onnx(name, f"torch's exporter: {reason}")) from None
    return path


def unsupported_onnx(source: str | os.PathLike, reason: str) -> str:
    """The one line refusing an ONNX export of checkpoint `source`, and what works instead."""
    return (f"{source}: --format onnx cannot express this net ({reason}); use --format "
            "torchscript or --format weights, which take it as it is")


def check_export(fmt: str, path: Path, model: nn.Module, crop: int, name: Path | None = None
                 ) -> str:
    """Read the export back, run it on a fixed batch; return a line saying how it compared
    (`name`: the file as the user knows it, when `path` is its temporary file)."""
    x = check_input(crop)
    with torch.no_grad():
        ref = model.cpu().eval()(x)
    if fmt == "weights":
        from alexnet.checkpoint import load_model

        loaded, _ = load_model(path)
        with torch.no_grad():
            out = loaded(x)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", TORCHSCRIPT_DEPRECATED)
            loaded = torch.jit.load(str(path))
        with torch.no_grad():
            out = loaded(x)
    else:
        try:
            import onnxruntime
        except ImportError:
            return "check skipped: onnxruntime is not installed (pip install onnxruntime)"
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    diff = _compare(f"{name or path}", ref, out)
    return f"checked: outputs equal the checkpoint's on {len(x)} images " \
           f"(max relative difference {diff:.1e})"


def normalisation(mean: str, size: int, crop: int, mean_file: str | None = None) -> str:
    """How a user of an ONNX or TorchScript export makes its input from an image file, in
    words: what `alexnet predict` does (docs/loading.md, "Evaluation batches"); `mean_file`:
    the name of the mean image's file beside the export (data.mean = "image")."""
    from alexnet.data.augment import TV_MEAN, TV_STD

    start = (size - crop) // 2
    centre = f"[{start}:{start + crop}, {start}:{start + crop}]"
    image = (f"the image rescaled as `alexnet prepare` does (shorter side {size}, central "
             f"{size}x{size}), as float32 RGB on the 0..255 scale")
    patch = (f"; then the {crop}x{crop} patch cut (the centre one: rows and columns {centre}; "
             "the 10 of `--crops 10` add the corners and mirror images), HWC to CHW")
    ways = {
        "image": f"{image}, minus the training mean image ({mean_file} beside this file, "
                 f"numpy.load gives it: float32 ({size}, {size}, 3), rows x columns x RGB on "
                 f"the 0..255 scale) pixel by pixel{patch}",
        "channel": f"{image}, minus channel_mean{patch}",
        "none": f"{image}{patch}",
        "torchvision": f"{image}, divided by 255, minus {list(TV_MEAN)} and divided by "
                       f"{list(TV_STD)} channel by channel{patch}",
    }
    return ways.get(mean, f"{image}, normalised as data.mean = {mean!r}{patch}")


def sidecar(ckpt: dict[str, Any], crop: int, fmt: str, mean_file: str | None = None,
            source: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a user of the exported file needs: the classes, the input normalisation and the
    name of the mean image's file beside it (`mean_file`; None: the mean needs none); and the
    checkpoint file exported (`source`, resolved), which a later export under a default name
    may replace it for (`check_default_name`)."""
    from alexnet.evaluate import input_settings
    from alexnet.predict import image_size

    stats = ckpt.get("stats") or {}
    channel_mean = stats.get("channel_mean")
    mean, size = input_settings(ckpt)["mean"], image_size(ckpt)
    return {
        "format": fmt, "arch": ckpt.get("arch"), "model_args": ckpt.get("model_args"),
        "input": f"float32 (N, 3, {crop}, {crop}) RGB",
        "mean": mean,
        "normalise": normalisation(mean, size, crop, mean_file),
        "image_size": size,
        "channel_mean": None if channel_mean is None else [float(v) for v in channel_mean],
        "mean_image": mean_file,
        "output": "logits (N, classes); `alexnet predict` averages their softmax over the "
                  "patches of each image",
        "classes": ckpt.get("classes"),
        "checkpoint": None if source is None else str(Path(source).resolve()),
    }


def mean_image(ckpt: dict[str, Any], source: str | os.PathLike) -> np.ndarray | None:
    """The training mean image an export of `ckpt` (read from `source`) carries beside it:
    float32 (S, S, 3) on the 0..255 scale, as the loader subtracts it; None when its
    data.mean is not "image" (the channel mean is in the sidecar; "none" and "torchvision"
    need no statistics)."""
    from alexnet.evaluate import input_settings

    if input_settings(ckpt)["mean"] != "image":
        return None
    image = (ckpt.get("stats") or {}).get("mean_image")
    if image is None:
        raise UserError(f"{source}: holds no training mean image (stats.mean_image), which its "
                        "data.mean = 'image' subtracts from every input; export a checkpoint "
                        "written by `alexnet train`")
    return np.ascontiguousarray(np.asarray(image, np.float32))


def is_mean_file(path: Path) -> bool:
    """Whether `path` is an earlier export's mean image (see `mean_image`): a .npy file of a
    float32 (S, S, 3) array."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    shape = getattr(array, "shape", ())
    return getattr(array, "dtype", None) == np.float32 and len(shape) == 3 and shape[2] == 3 \
        and shape[0] == shape[1]


def is_export(path: Path, fmt: str) -> bool:
    """Whether `path` is an earlier export in `fmt` (what another export there may replace):
    a weights file, a TorchScript archive, or an ONNX model written by torch's exporter."""
    from alexnet import checkpoint

    if fmt == "weights":
        return checkpoint.is_weights_file(path)
    if fmt == "torchscript":
        return checkpoint.is_torchscript(path)
    return checkpoint.is_onnx(path)


def is_sidecar(path: Path) -> bool:
    """Whether `path` is an earlier export's sidecar JSON (see `sidecar`)."""
    data = read_json_object(path) or {}
    return data.get("format") in FORMATS and "input" in data and "classes" in data


def export_lock(path: Path) -> FolderLock:
    """The lock an export to `path` holds (`FolderLock.beside`: `.NAME.lock` beside it, gone
    when the export ends); while another export holds it, the export is refused at once.

    Two exports to one --out would each rename its file into place and then write its
    sidecar: A's file could end beside B's sidecar. The lock is beside the output, not in a
    FOLDER/.lock: the folder is the user's (a run folder's .lock is training's), and two
    exports to other files in it need not wait.
    """
    return FolderLock.beside(path, f"--out {path}: another `alexnet export` is writing it; "
                             "wait for it to end, or choose another --out")


def export_name(source: Path) -> str:
    """NAME of an export's default file: a run folder's name (also for its checkpoint.pt or
    best.pt, given as `.` or relatively), else the file's name less `.pt` or an export's
    suffix (`m.weights.pt` -> `m`, not `m.weights`)."""
    src = source.absolute()
    if src.is_dir():
        return src.name
    if src.name in ("checkpoint.pt", "best.pt"):
        return src.parent.name
    suffix = next((s for s in SUFFIX.values() if src.name.endswith(s) and src.name != s), "")
    return src.name[:-len(suffix)] if suffix else src.stem


def same_source(recorded: str, used: Path) -> bool:
    """Whether the checkpoint a sidecar records (`recorded`, resolved) is `used`, or is the
    other of the run's checkpoint.pt and best.pt (a run folder exports its best.pt once it has
    one: still that run's export)."""
    here, there = used.resolve(), Path(recorded)
    return here == there or (here.parent == there.parent
                             and {here.name, there.name} <= {"checkpoint.pt", "best.pt"})


def check_default_name(path: Path, info: Path, used: Path) -> None:
    """Refuse to replace, under a default name, the export of another checkpoint: the name
    comes from the run folder, and `alexnet ablate`'s OUT/VARIANT/seed-0 runs all give seed-0
    (a second variant's export replaced the first's without a word). The export of `used`
    itself (trained further since), or a weights export exported again to its own name, is
    replaced; one whose sidecar records no checkpoint cannot be told to be of it, and is kept
    too."""
    if not path.exists() or path.resolve() == used.resolve():
        return
    recorded = (read_json_object(info) or {}).get("checkpoint") if info.exists() else None
    if isinstance(recorded, str) and same_source(recorded, used):
        return
    origin = f"an export of {recorded}" if isinstance(recorded, str) else \
        f"an earlier export whose sidecar records no checkpoint ({info})"
    raise UserError(f"{path}: {origin}, which the export of {used} would replace under the "
                    "same default name; give --out another folder or a file name (or delete "
                    "it)")


def export(source: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None,
           check: bool = True) -> dict[str, Any]:
    """Export the net of checkpoint `source` as `fmt` (a run folder: its best.pt when there is
    one, as evaluate takes it); return the paths, the file exported and why, and the check."""
    from alexnet.checkpoint import load_model, trained_checkpoint

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    name = f"{export_name(Path(source))}{SUFFIX[fmt]}"
    folder = out is not None and (Path(out).is_dir() or os.fspath(out).endswith(("/", os.sep)))
    default = out is None or folder  # the name is ours: another checkpoint's may be there
    path = Path(out) / name if folder else Path(out) if out else Path(name)
    info = path.with_name(path.name + ".json")
    mean_file = path.with_name(path.name + MEAN_SUFFIX)
    check_output(path, f"{fmt} export", lambda p: is_export(p, fmt))
    check_output(info, "export sidecar", is_sidecar, name=f"--out {path}: its sidecar {info}")
    check_output(mean_file, "export mean image", is_mean_file,
                 name=f"--out {path}: its mean image {mean_file}")
    ensure_folder(path.parent, "folder for --out")
    with export_lock(path):
        used, why = trained_checkpoint(source)
        if default:
            check_default_name(path, info, used)
        model, ckpt = load_model(used)
        crop = int(((ckpt.get("config") or {}).get("data") or {}).get("crop", model.crop_size))
        problem = onnx_problem(model, crop) if fmt == "onnx" else None
        if problem:
            raise UserError(unsupported_onnx(used, problem))
        mean = mean_image(ckpt, used)
        described = sidecar(ckpt, crop, fmt, None if mean is None else mean_file.name, used)
        remove_stale(path.parent, [path, info, mean_file])  # temporaries of killed exports
        # written and checked aside, then renamed: a kill keeps the earlier export's files
        with contextlib.ExitStack() as renamed:
            tmp = renamed.enter_context(replacing(path))
            if fmt == "weights":
                export_weights(model, ckpt, tmp)
            elif fmt == "onnx":
                export_onnx(model, crop, tmp, name=used)
            else:
                export_torchscript(model, crop, tmp)
            checked = check_export(fmt, tmp, model, crop, name=path) if check else \
                "check skipped (--no-check)"
            if mean is None:
                mean_file.unlink(missing_ok=True)  # an earlier export's (check_output)
            else:  # renamed into place just before the file (the stack unwinds backwards)
                mean_tmp = renamed.enter_context(replacing(mean_file))
                with open(mean_tmp, "wb") as f:
                    np.save(f, mean, allow_pickle=False)
        write_json(info, described, indent=2)
    return {"path": str(path), "info": str(info), "format": fmt, "bytes": path.stat().st_size,
            "mean_image": None if mean is None else str(mean_file), "check": checked,
            "exported": str(used), "why": why}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file, or a run folder (its best.pt when "
                                           "there is one)")
    parser.add_argument("--format", choices=FORMATS, default="weights",
                        help="onnx (needs the onnx package), torchscript, or weights: the "
                             "net and what feeds it, without the optimizer")
    parser.add_argument("--out", help="file to write, or a folder (an existing one, or a "
                                      "name ending in /) to write the default name in "
                                      "(default: RUN.onnx, RUN.torchscript.pt or "
                                      "RUN.weights.pt here)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip reading the export back and comparing its outputs")


def run(args: argparse.Namespace) -> int:
    from alexnet.checkpoint import trained_checkpoint

    if Path(args.checkpoint).is_dir():
        used, why = trained_checkpoint(args.checkpoint)
        print(f"{args.checkpoint}: exporting {used.name} ({why})", file=sys.stderr)
    result = export(args.checkpoint, args.format, args.out, args.check)
    mean = f", {result['mean_image']} (the training mean image)" if result["mean_image"] else ""
    print(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB){mean} and {result['info']}")
    print(result["check"])
    return 0
