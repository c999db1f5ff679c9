"""torch.hub entry points: `torch.hub.load(REPO, "alexnet", source="local")` (or a GitHub
"owner/repo") returns the paper's two-column network (Krizhevsky et al. 2012).

There are no published weights of the paper's net: `weights=` takes a checkpoint or a
weights file written by `alexnet train` / `alexnet export --format weights`. `alexnet_tv`
gives torchvision's single-column layout, whose state_dict loads torchvision's weights.
"""

from __future__ import annotations

from typing import Any

dependencies = ["torch", "numpy"]


def _build(arch: str, weights: str | None, kwargs: dict[str, Any]) -> Any:
    from alexnet.checkpoint import load_model
    from alexnet.model import build_model

    if weights:
        if kwargs:
            raise ValueError(f"weights={weights!r} fixes the architecture; drop {sorted(kwargs)}")
        model, _ = load_model(weights)
        return model
    return build_model(arch, **kwargs)


def alexnet(weights: str | None = None, **kwargs: Any) -> Any:
    """The paper's AlexNet (two columns, LRN, overlapping pooling, dropout), freshly
    initialised as in section 5, or with the weights of a checkpoint file `weights`.

    kwargs go to alexnet.model.AlexNet: num_classes=1000, columns=2, activation="relu",
    lrn=True, overlap_pool=True, dropout=0.5, width=1.0.
    """
    return _build("alexnet", weights, kwargs)


def alexnet_tv(weights: str | None = None, **kwargs: Any) -> Any:
    """torchvision's AlexNet layout (num_classes=1000, dropout=0.5); its state_dict keys match
    torchvision's, so `model.load_state_dict(torchvision_weights)` works."""
    return _build("alexnet-tv", weights, kwargs)
