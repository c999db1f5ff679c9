"""`train --init-from`: start a run from trained weights (fine-tuning) instead of the paper's
initialisation.

The source is a checkpoint or weights file of this project, or "torchvision" (its ImageNet
weights for the alexnet-tv layout; needs the torchvision package, and its weights file in
torch's cache or a network to fetch it). Every layer is copied. The output layer (fc8) has a
row per class: when the source names its classes (our checkpoints do), each class of this
run whose wnid the source has takes that class's row, wherever it stands there (a store
prepared again, a subset of ImageNet's classes), and the others keep their fresh
initialisation; without names (torchvision's weights) fc8 is copied when the class count
matches. Only the weights move: the optimizer, schedule and counters start anew (that is
what --resume is for).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from alexnet.errors import UserError, one_line

TORCHVISION = "torchvision"
OUTPUT_LAYER = {"alexnet": "fc8", "alexnet-tv": "classifier.6"}  # the class-count layer
# model arguments that change the function a net computes but no weight's shape, so a source
# of another value would load unnoticed. Not compared: width, columns, crop and num_classes
# (their shapes are checked), dropout (training only: the eval function is the same, and a
# fine-tuning run may choose its own), init_bias (the weights replace it), column_conv and
# conv1_form (how the same function is computed; checkpoints do not record them)
FUNCTION_ARGS = ("activation", "lrn", "lrn_alpha_over_n", "overlap_pool")


def source_weights(source: str
                   ) -> tuple[dict[str, torch.Tensor], str, list[Any], dict[str, Any] | None]:
    """(state_dict, arch, classes, model arguments) of `source`: a checkpoint/weights file, or
    torchvision's (its classes unnamed here: [], its arguments unrecorded: None)."""
    if source == TORCHVISION:
        return _torchvision_weights(), "alexnet-tv", [], None
    from alexnet.checkpoint import load

    ckpt = load(source)
    held = ckpt.get("model_args")
    return (ckpt["model"], str(ckpt.get("arch", "alexnet")), list(ckpt.get("classes") or []),
            held if isinstance(held, dict) else None)


def check_function(net: nn.Module, source: str, arch: str, held: dict[str, Any] | None
                   ) -> None:
    """A one-line UserError naming the first of FUNCTION_ARGS where the source's net (arch
    `arch`, model arguments `held`: None when it records none) differs from `net`: its
    weights would start a net that computes another function."""
    from alexnet.checkpoint import unwrap
    from alexnet.model import ARCHS

    if held is None or arch not in ARCHS:
        return
    defaults = {name: p.default for name, p in
                inspect.signature(ARCHS[arch].__init__).parameters.items()}
    theirs = {**defaults, **held}  # an older checkpoint lacks the arguments added since
    ours = {**defaults, **getattr(unwrap(net), "kwargs", {})}
    for key in FUNCTION_ARGS:
        if key in defaults and theirs[key] != ours[key]:
            value = str(theirs[key]).lower() if isinstance(theirs[key], bool) else theirs[key]
            raise UserError(f"--init-from {source}: its net has model.{key}={theirs[key]!r}, "
                            f"this run's model.{key}={ours[key]!r}; set it as the source run "
                            f"had it (--set model.{key}={value})")


def source_file(source: str) -> str:
    """What the training line names as the source: a run folder's checkpoint.pt and why
    (every consumer of a folder says which file it took), else `source` as given."""
    folder = Path(source)
    if source == TORCHVISION or not folder.is_dir():
        return source
    best = folder / "best.pt"
    other = f"give {best} for its lowest validation error" if best.is_file() else \
        "a run folder gives its checkpoint.pt"
    return f"{folder / 'checkpoint.pt'} (the run's last epoch; {other})"


def class_ids(classes: list[Any]) -> list[str]:
    """Each class's identity: its wnid (an image folder's is its folder name)."""
    return [str(c.get("wnid", c.get("name"))) if isinstance(c, dict) else str(c)
            for c in classes]


def class_rows(theirs: list[Any], ours: list[Any] | None) -> list[int | None] | None:
    """For each of our classes, the source's fc8 row of the same class (None: the source has
    no such class); None when either side's classes are not named (copy by position)."""
    if not theirs or not ours:
        return None
    where = {wnid: row for row, wnid in enumerate(class_ids(theirs))}
    return [where.get(wnid) for wnid in class_ids(ours)]


def _torchvision_weights() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of its alexnet, from torch's cache (downloaded there
    once). Each failure is one line saying what to do: torchvision absent, or installed for
    another torch (its import then raises RuntimeError), no network, a damaged cached file."""
    try:
        from torchvision.models import AlexNet_Weights, alexnet
    except ImportError:
        raise UserError("--init-from torchvision: the torchvision package is not installed; "
                        "pip install torchvision, or give a checkpoint") from None
    except Exception as err:  # noqa: BLE001 - one built for another torch fails so
        raise UserError(f"--init-from torchvision: torchvision does not import "
                        f"({type(err).__name__}: {one_line(err, 80)}); install the release "
                        f"built for torch {torch.__version__}, or give a checkpoint") from None
    weights = AlexNet_Weights.IMAGENET1K_V1
    cached = weights_cache_file(weights.url)
    try:
        return alexnet(weights=weights).state_dict()
    except Exception as err:  # noqa: BLE001 - a download or cache failure, said in one line
        reason = one_line(err, 100)
        if cached.exists():
            raise UserError(f"--init-from torchvision: its cached weights {cached} do not load "
                            f"({reason}); delete that file to download it again") from None
        raise UserError(f"--init-from torchvision: could not download its ImageNet weights "
                        f"({reason}); without a network, put {weights.url} at {cached}"
                        ) from None


def weights_cache_file(url: str) -> Path:
    """Where torch.hub keeps the file of `url` (load_state_dict_from_url's default: the
    checkpoints folder of torch.hub.get_dir(), which TORCH_HOME and XDG_CACHE_HOME move)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_initial_weights(net: nn.Module, source: str, classes: list[Any] | None = None
                         ) -> dict[str, Any]:
    """Copy the weights of `source` into `net`, whose output rows are `classes`; return
    {'loaded': [...], 'fresh': [...], 'rows': (copied, total) or None}.

    fc8 goes class by class where both sides name their classes (`class_rows`), else
    whole when its shape matches. Only the output layer may differ in shape (another class
    count); anything else that does not fit is a UserError naming the setting to change.
    """
    weights, arch, their_classes, held = source_weights(source)
    net_arch = getattr(net, "arch", "alexnet")
    if arch != net_arch:
        raise UserError(f"--init-from {source}: weights of arch {arch!r}, this run builds "
                        f"{net_arch!r}; set --set model.arch={arch}")
    check_function(net, source, arch, held)
    own = net.state_dict()
    output = OUTPUT_LAYER.get(net_arch, "")
    rows = class_rows(their_classes, classes)
    loaded, fresh = {}, []
    for key, value in own.items():
        theirs = weights.get(key)
        if rows is not None and theirs is not None and key.rpartition(".")[0] == output \
                and theirs.shape[1:] == value.shape[1:] and len(rows) == len(value):
            mine = [i for i, row in enumerate(rows) if row is not None]
            if mine:
                value = value.clone()
                value[mine] = theirs[[rows[i] for i in mine]].to(value.dtype)
                loaded[key] = value
            else:
                fresh.append(key)
        elif theirs is not None and theirs.shape == value.shape:
            loaded[key] = theirs
        elif theirs is not None and key.rpartition(".")[0] == output:
            fresh.append(key)
        else:
            have = "missing" if theirs is None else f"shape {tuple(theirs.shape)}"
            raise UserError(f"--init-from {source}: layer {key} ({have}) does not fit this "
                            f"net's {tuple(value.shape)}; use the same model settings "
                            "(width, columns, ...) as the run that made it")
    with torch.no_grad():
        for key, value in loaded.items():
            own[key].copy_(value)
    copied = None if rows is None else (sum(row is not None for row in rows), len(rows),
                                        rows != list(range(len(rows))))
    return {"loaded": sorted(loaded), "fresh": fresh, "rows": copied, "layer": output,
            "from": source_file(source)}


def describe(source: str, result: dict[str, Any]) -> str:
    """The line training prints about it."""
    layer, rows = result.get("layer") or "fc8", result.get("rows")
    new = ""
    if rows is None:
        new = f"; {layer} is new (another class count)" if result["fresh"] else ""
    elif rows[0] == 0:
        new = f"; {layer} is new (none of its {rows[1]} classes is one of the source's)"
    elif rows[0] < rows[1]:
        new = (f"; {layer}: {rows[0]} of {rows[1]} classes from the source's rows of the same "
               f"class, {rows[1] - rows[0]} new")
    elif rows[2]:
        new = f"; {layer}'s rows follow the class names (another order)"
    taken = result.get("from", source)
    return f"weights from {taken}: {len(result['loaded'])} tensors loaded{new}"
