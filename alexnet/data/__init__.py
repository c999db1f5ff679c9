"""Data preparation, the store format, loading and augmentation (paper sections 2 and 4.1)."""

from alexnet.data.store import Store, open_split, write_store

__all__ = ["Store", "open_split", "write_store"]
