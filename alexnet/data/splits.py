"""The one rule for the "auto" held-out split, shared by train (validation), evaluate and
figures: the store's `val` split when it has one, else its `test` split, else none.

`val` comes first because the paper tunes and reports on ILSVRC-2012's validation set; a store
made from a source with only a test split (CIFAR, Fashion-MNIST) is then judged on that.
"""

from __future__ import annotations

import os

from alexnet.data.store import check_root

HELD_OUT = ("val", "test")  # in order of preference


def auto_split(root: str | os.PathLike) -> str | None:
    """The held-out split of the store at `root` that "auto" means, or None when it has none;
    a UserError when `root` is no store folder at all (store.check_root), so that no command
    reports a missing store as a missing split."""
    root = check_root(root)
    for name in HELD_OUT:
        if (root / name).is_dir():
            return name
    return None
