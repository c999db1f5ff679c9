"""torch.hub entry points: `torch.hub.load(REPO, "alexnet", source="local")` (or a GitHub
"owner/repo") returns the paper's two-column network (Krizhevsky et al. 2012).

There are no published weights of the paper's net: `weights=` takes a checkpoint or a
weights file written by `alexnet train` / `alexnet export --format weights`. `alexnet_tv`
gives torchvision's single-column layout, whose state_dict loads torchvision's weights.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

dependencies = ["torch", "numpy"]

ENTRY_POINTS = {"alexnet": "alexnet", "alexnet-tv": "alexnet_tv"}  # arch -> entry point
# arguments a checkpoint does not record, which do not change the trained net's function:
# how the columns' convolutions and conv1 are computed, and the initial bias the weights replace
NOT_RECORDED = ("column_conv", "conv1_form", "init_bias")


def arguments(arch: str) -> dict[str, Any]:
    """The keyword arguments of the net `arch` with their defaults."""
    from alexnet.model import ARCHS

    signature = inspect.signature(ARCHS[arch].__init__)
    return {name: p.default for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty}


def check_fits(weights: str | os.PathLike, arch: str, kwargs: dict[str, Any],
               ckpt: dict[str, Any]) -> None:
    """A one-line UserError unless the net of file `weights` is the `arch` entry point's net
    with `kwargs`: a file fixes its net, and loading it as another would be silent (an LRN
    or activation changed leaves every weight's shape as it was)."""
    from alexnet.errors import UserError

    entry, name = ENTRY_POINTS[arch], f"weights={os.fspath(weights)!r}"
    if ckpt.get("arch") != arch:
        other = ENTRY_POINTS.get(str(ckpt.get("arch")))
        use = f"load it with the {other!r} entry point" if other else "give a file of this net"
        raise UserError(f"{name}: holds an {ckpt.get('arch')!r} net, not the {arch!r} net of "
                        f"the {entry!r} entry point; {use}")
    accepted = arguments(arch)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(f"{entry}: no argument {', '.join(unknown)}; it takes "
                        f"{', '.join(accepted)}")
    # the file's net: its model_args, and the defaults it was built with for those it omits
    # (a paper-sized net omits crop)
    held = ckpt.get("model_args")
    recorded = {**accepted, **(held if isinstance(held, dict) else {})}
    differ = [k for k, v in kwargs.items() if k not in NOT_RECORDED and v != recorded[k]]
    if differ:
        has = ", ".join(f"{k}={recorded[k]!r}" for k in differ)
        given = ", ".join(f"{k}={kwargs[k]!r}" for k in differ)
        raise UserError(f"{name}: its net has {has}, not {given}; drop those arguments (the "
                        "file fixes the net) or give a file of that net")


def _build(arch: str, weights: str | os.PathLike | None, kwargs: dict[str, Any]) -> Any:
    """`arch` built with `kwargs`, or the trained net of `weights` (in eval mode): a file, or a
    run folder's best.pt when there is one (as evaluate takes it)."""
    from alexnet.checkpoint import load, model_from_state, trained_checkpoint
    from alexnet.model import build_model

    if not weights:
        return build_model(arch, **kwargs)
    weights = trained_checkpoint(weights)[0]
    ckpt = load(weights, mmap=True)
    check_fits(weights, arch, kwargs, ckpt)
    extra = {k: v for k, v in kwargs.items() if k in NOT_RECORDED}
    return model_from_state(ckpt, weights, arguments=extra, caller=ENTRY_POINTS[arch])


def alexnet(weights: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """The paper's AlexNet (two columns, LRN, overlapping pooling, dropout), freshly
    initialised as in section 5, or, in eval mode, the trained net of the checkpoint or
    weights file `weights` (a run folder: its best.pt when there is one, else checkpoint.pt).

    kwargs go to alexnet.model.AlexNet: num_classes=1000, columns=2, activation="relu",
    lrn=True, lrn_alpha_over_n=False, overlap_pool=True, dropout=0.5, width=1.0, crop=224,
    init_bias=1.0, column_conv=None, conv1_form=None. With `weights` the file fixes the net:
    arguments that differ from the file's are a UserError (column_conv and conv1_form, the
    forms of the computation, and init_bias, which the weights replace, are free).
    """
    return _build("alexnet", weights, kwargs)


def alexnet_tv(weights: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """torchvision's AlexNet layout (num_classes=1000, dropout=0.5, init_bias=1.0); its
    state_dict keys match torchvision's, so `model.load_state_dict(torchvision_weights)` works.
    `weights`: a checkpoint or weights file of this layout, as for `alexnet`."""
    return _build("alexnet-tv", weights, kwargs)
