"""The checkpoint policy of a run: what is saved when and in which order (checkpoint.pt,
then best.pt), which checkpoint a run continues from, and never overwriting another run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet import checkpoint, distributed
from alexnet.config import Config
from alexnet.errors import UserError
from alexnet.training.run_folder import RunFiles
from alexnet.training.runtime import Runtime
from alexnet.training.state import RunState, make_checkpoint


def save_checkpoints(s: RunState, config: Config, train_store: Any, files: RunFiles,
                     rt: Runtime, best: bool = False) -> Path | None:
    """Rank 0 writes checkpoint.pt (and best.pt); every rank waits for it."""
    if rt.dist.is_main:
        state = make_checkpoint(s, config, train_store, rt)
        checkpoint.save(files.checkpoint, state)
        if best and config.run.save_best:
            checkpoint.save(files.best, state)
    distributed.barrier()
    return files.checkpoint


def resume_checkpoint(config: Config, files: RunFiles) -> tuple[dict | None, Path | None]:
    """The checkpoint to continue from, or None; refuses to overwrite another run."""
    if config.run.resume:
        path = Path(config.run.resume)
        if path.is_dir():
            path = path / "checkpoint.pt"
        return checkpoint.load(path), path
    if files.checkpoint.exists():
        raise UserError(f"{files.root} already holds a run (checkpoint.pt); continue it with "
                        f"--resume {files.root} or choose another --out")
    return None, None

