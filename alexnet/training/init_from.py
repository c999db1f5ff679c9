"""`train --init-from`: start a run from trained weights (fine-tuning) instead of the paper's
initialisation.

The source is a checkpoint or weights file of this project, or "torchvision" (its ImageNet
weights for the alexnet-tv layout; needs the torchvision package, and its weights file in
torch's cache or a network to fetch it). Every layer is copied; the output layer (fc8) is
copied too when its class count matches, else it keeps its fresh initialisation. Only the
weights move: the optimizer, schedule and counters start anew (that is what --resume is for).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from alexnet.errors import UserError, one_line

TORCHVISION = "torchvision"
OUTPUT_LAYER = {"alexnet": "fc8", "alexnet-tv": "classifier.6"}  # the class-count layer


def source_weights(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, arch) of `source`: a checkpoint/weights file, or torchvision's."""
    if source == TORCHVISION:
        return _torchvision_weights(), "alexnet-tv"
    from alexnet.checkpoint import load

    ckpt = load(source)
    return ckpt["model"], str(ckpt.get("arch", "alexnet"))


def _torchvision_weights() -> dict[str, torch.Tensor]:
    try:
        from torchvision.models import AlexNet_Weights, alexnet
    except ImportError:
        raise UserError("--init-from torchvision: the torchvision package is not installed; "
                        "pip install torchvision, or give a checkpoint") from None
    try:
        return alexnet(weights=AlexNet_Weights.IMAGENET1K_V1).state_dict()
    except Exception as err:  # noqa: BLE001 - a download or cache failure, said in one line
        reason = one_line(err, 100)
        raise UserError(f"--init-from torchvision: could not get its ImageNet weights "
                        f"({reason}); they download once into torch's cache "
                        "(~/.cache/torch/hub/checkpoints)") from None


def load_initial_weights(net: nn.Module, source: str) -> dict[str, Any]:
    """Copy the weights of `source` into `net`; return {'loaded': [...], 'fresh': [...]}.

    Only the output layer may differ in shape (another class count); anything else that
    does not fit is a UserError naming the setting to change.
    """
    weights, arch = source_weights(source)
    net_arch = getattr(net, "arch", "alexnet")
    if arch != net_arch:
        raise UserError(f"--init-from {source}: weights of arch {arch!r}, this run builds "
                        f"{net_arch!r}; set --set model.arch={arch}")
    own = net.state_dict()
    output = OUTPUT_LAYER.get(net_arch, "")
    loaded, fresh = {}, []
    for key, value in own.items():
        theirs = weights.get(key)
        if theirs is not None and theirs.shape == value.shape:
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
    return {"loaded": sorted(loaded), "fresh": fresh}


def describe(source: str, result: dict[str, Any]) -> str:
    """The line training prints about it."""
    new = f"; {result['fresh'][0].rpartition('.')[0]} is new (another class count)" \
        if result["fresh"] else ""
    return f"weights from {source}: {len(result['loaded'])} tensors loaded{new}"
