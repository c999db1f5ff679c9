"""Atomic save and load of the full training state, and `load_model` for evaluation.

A checkpoint is one `torch.save` file holding a plain dict (docs/design.md):
`format` ("alexnet-checkpoint"), `format_version`, `arch`, `model_args`, `model` (state_dict of
the unwrapped module: never the DDP or torch.compile wrapper), `optimizer`, `schedule`, `epoch`
(the epoch in progress), `step` (batches of that epoch already done), `config` (the resolved run
config), `classes`, `stats` (the normalisation statistics the net was trained with), `rng`
(torch CPU/CUDA, numpy and python generator states; rank 0's) and `metrics` (the log so far);
under torchrun also `rank_acc` and `rank_rng`, every rank's partial sums and generator states.

Only tensors and plain Python values are stored, so files load with `weights_only=True`: a
foreign pickle cannot run code. `save` goes through alexnet.atomic (temporary file, fsync,
rename): a kill mid-write leaves the previous checkpoint intact and never a file under the
final name that is half-written. `load` checks every member's CRC, so a damaged file is refused
rather than trained on; `model_from_state` refuses non-finite weights.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.atomic import write_atomic
from alexnet.data.augment import MEAN_STATS
from alexnet.errors import UserError, one_line

FORMAT = "alexnet-checkpoint"
FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside DDP and torch.compile wrappers (in any nesting)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Strip wrapper prefixes (`_orig_mod.`, `module.`) so keys match the plain network."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def rng_state() -> dict[str, Any]:
    """Every random generator training touches, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by `rng_state` (CUDA only where the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def rng_problem(state: Any) -> str | None:
    """Why `state` is not generator states that `set_rng_state` restores, or None: a resumed
    run must fail before it builds anything, not halfway through its restore. The CPU
    generators are set from it on trial and put back as they were; CUDA's is looked at only."""
    if not isinstance(state, dict):
        return f"is {kind_of(state)}, not a table of generator states"
    cuda = state.get("cuda")
    if cuda is not None and not (isinstance(cuda, list | tuple) and all(
            isinstance(s, torch.Tensor) for s in cuda)):
        return "has a 'cuda' entry that is not a list of generator states"
    before = {k: v for k, v in rng_state().items() if k != "cuda"}
    try:
        set_rng_state({k: v for k, v in state.items() if k != "cuda"})
    except KeyError as err:
        return f"lacks the entry {err.args[0]!r}"
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        return f"holds a generator state that does not fit ({one_line(err, 80)})"
    finally:
        set_rng_state(before)
    return None


def kind_of(value: Any) -> str:
    """A checkpoint entry in words, for a message: a short scalar as itself (`-3`, `None`),
    anything else by its type (`a str`, `an int`)."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _to_lists(value: Any) -> Any:
    """Tuples to lists, recursively (weights_only pickles stay plain)."""
    if isinstance(value, tuple | list):
        return [_to_lists(v) for v in value]
    return value


def stats_to_tensors(stats: dict[str, Any] | None) -> dict[str, torch.Tensor] | None:
    """A store's statistics (numpy arrays) as CPU tensors for the checkpoint."""
    if stats is None:
        return None
    return {k: v if isinstance(v, int | float | str) else torch.as_tensor(np.asarray(v))
            for k, v in stats.items()}


def stats_to_numpy(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """Checkpoint statistics back to numpy arrays, as `Store.stats` gives them."""
    if stats is None:
        return None
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in stats.items()}


def make_state(model: nn.Module, **fields: Any) -> dict[str, Any]:
    """A checkpoint dict for `model` (unwrapped here) plus the given fields."""
    net = unwrap(model)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": getattr(net, "arch", "alexnet"),
        "model_args": dict(getattr(net, "kwargs", {})),
        "model": clean_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()}),
    }
    fields["stats"] = stats_to_tensors(fields.get("stats"))
    state.update(fields)
    return state


def save(path: str | os.PathLike, state: dict[str, Any], *, user_errors: bool = True) -> Path:
    """Write `state` to `path` atomically (alexnet.atomic: temporary file, fsync, os.replace);
    `user_errors=False` raises a filesystem failure as it is, for a caller whose `path` is
    itself a temporary and who names the file the user knows.

    A state read by `load` saves as it is (its statistics go back to tensors).
    """
    if "stats" in state:
        state = {**state, "stats": stats_to_tensors(state["stats"])}
    return write_atomic(path, lambda f: torch.save(state, f), user_errors=user_errors)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu",
         mmap: bool = False, resuming: bool = False) -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated, corrupt or foreign file is a UserError.

    Every member's CRC is checked first (torch.load does not), so one flipped byte is caught.
    `mmap` maps the tensors instead of reading them (a cheap look at several checkpoints).
    `resuming`: the file is to continue a run (`train --resume`), which a weights file of
    `alexnet export` cannot do; the messages advise accordingly.
    """
    path = checkpoint_file(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; give a checkpoint file or a run folder")
    reason = _damage(path)
    export = "a TorchScript" if reason is None and is_torchscript(path) else \
        "an ONNX" if is_onnx(path) else None
    if export:
        usable = "the run folder or its checkpoint.pt" if resuming else \
            "the run folder, its checkpoint.pt or best.pt, or a weights file (`alexnet export " \
            "--format weights`)"
        raise UserError(f"{path}: {export} export (alexnet export), not a checkpoint; give "
                        f"{usable}")
    state = None
    if reason is None:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as err:  # noqa: BLE001 - any reader failure means an unusable file
            reason = _load_failure(err)
    if reason is not None:
        raise UserError(f"{path}: not a readable alexnet checkpoint (truncated, corrupt or "
                        f"foreign: {reason}); use another checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an alexnet checkpoint (no '{FORMAT}' header); "
                        "give a file written by 'alexnet train'")
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {state.get('format_version')}, "
                        f"this alexnet reads version {FORMAT_VERSION}; use a matching release")
    if not isinstance(state.get("stats"), dict | None):
        raise UserError(f"{path}: its 'stats' (the normalisation statistics) is "
                        f"{kind_of(state['stats'])}, not a table (damaged, or written by another "
                        "tool); use another checkpoint")
    missing = missing_stats(state)
    if missing:
        raise UserError(f"{path}: its 'stats' (the normalisation statistics) lack {missing}, "
                        f"which its data.mean = {trained_mean(state)!r} subtracts from every "
                        "input (damaged, or written by another tool); use another checkpoint "
                        "of the run")
    state["stats"] = stats_to_numpy(state.get("stats"))
    return state


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file `path` names: itself, or a run folder's checkpoint.pt
    (`run_checkpoint`)."""
    path = Path(path)
    return run_checkpoint(path) if path.is_dir() else path


def run_checkpoint(folder: Path) -> Path:
    """The checkpoint file of run folder `folder` (its checkpoint.pt), or a UserError naming
    what is wrong: no checkpoint.pt there, or a folder in its place."""
    path = folder / "checkpoint.pt"
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint file, so {folder} holds no "
                        "checkpoint; give a checkpoint file or another run folder (or move "
                        "that folder away)")
    if not path.exists():
        raise UserError(f"{folder}: a folder without a checkpoint.pt (no such checkpoint); give "
                        "a checkpoint file or a run folder")
    return path


def trained_checkpoint(path: str | os.PathLike) -> tuple[Path, str]:
    """(file, why): the trained net `path` offers for use (evaluate, predict, figures, export,
    the hub): a run folder's best.pt when there is one (the epoch of lowest validation error,
    as the paper reports), else its checkpoint.pt (`run_checkpoint`); a file is itself."""
    path = Path(path)
    if not path.is_dir():
        return path, "as given"
    if (path / "best.pt").is_file():
        return path / "best.pt", "the run's lowest validation error; RUN/checkpoint.pt is " \
            "the last epoch"
    if not (path / "checkpoint.pt").exists():
        raise UserError(f"{path}: a folder without best.pt or checkpoint.pt; give a checkpoint "
                        "file or the folder of a run")
    return run_checkpoint(path), "the run's last epoch; it has no best.pt"


def trained_mean(state: dict[str, Any]) -> str:
    """The mean a checkpoint's net was trained with (config data.mean; the paper's "image",
    section 2, when the config does not say)."""
    mean = ((state.get("config") or {}).get("data") or {}).get("mean")
    return mean if isinstance(mean, str) else "image"


def missing_stats(state: dict[str, Any]) -> str | None:
    """The statistic a checkpoint's mean subtraction needs (`trained_mean`) and its non-empty
    `stats` table lacks, or None. A file without statistics is not refused here: evaluate
    takes the store's then, and predict says it needs them."""
    stats, key = state.get("stats"), MEAN_STATS.get(trained_mean(state))
    return key if stats and key is not None and stats.get(key) is None else None


def _damage(path: Path) -> str | None:
    """Why `path` is not an intact torch.save archive (zip structure, member CRCs), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return "not a zip archive as torch.save writes"
    except (OSError, EOFError, RuntimeError, ValueError, NotImplementedError) as err:
        return f"unreadable archive: {type(err).__name__}"
    return f"member {bad} fails its CRC check" if bad is not None else None


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether `path` is a TorchScript archive (torch.jit.save: its `constants.pkl` record, the
    test torch.load itself applies), which torch.load would hand to torch.jit.load."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rpartition("/")[2] == "constants.pkl" and name.count("/") == 1
                       for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError,
            NotImplementedError):
        return False


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether `path` begins as an ONNX model written by torch's exporter does (its ir_version
    field, then producer_name "pytorch")."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.startswith(b"\x08") and b"\x12\x07pytorch" in head


def is_weights_file(path: str | os.PathLike) -> bool:
    """Whether `path` holds a weights file of `alexnet export` (a checkpoint without the
    optimizer, marked `weights_only`): what an export may replace, never a training
    checkpoint. Only the small pickle is read (tensors are memory-mapped)."""
    if is_torchscript(path) or _damage(Path(path)) is not None:
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable is not a weights file
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT and \
        bool(state.get("weights_only")) and "optimizer" not in state


def _load_failure(err: Exception) -> str:
    """A short reason for a torch.load failure (never PyTorch's multi-line advice)."""
    text = str(err)
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds objects other than tensors and plain values"
    return one_line(err)


def load_model(path: str | os.PathLike,
               device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network of a checkpoint file, in eval mode on `device`."""
    ckpt = load(path)
    return model_from_state(ckpt, path, device), ckpt


def model_from_state(ckpt: dict[str, Any], path: str | os.PathLike,
                     device: str | torch.device = "cpu", arguments: dict[str, Any] | None = None,
                     caller: str = "arguments") -> nn.Module:
    """The network of a loaded checkpoint `ckpt` (read from `path`), in eval mode on `device`;
    `arguments`, the caller's over the file's model_args (hubconf's: how the net computes, not
    what), are named as `caller`'s fault when the net does not build with them.

    Non-finite weights (a diverged run) are refused: they would score NaN on every image.
    """
    from alexnet.model import build_model

    def misfit(err: BaseException) -> UserError:
        return UserError(f"{path}: the weights do not fit architecture {ckpt.get('arch')!r} "
                         f"({one_line(err)}); the file is damaged or from another version")

    try:
        held = ckpt["model_args"]
        model = build_model(ckpt["arch"], **{**held, **(arguments or {})})
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        if arguments and builds(ckpt):  # the file's own net builds: the arguments are wrong
            raise UserError(f"{caller}: {one_line(err)}") from None
        raise misfit(err) from None
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise misfit(err) from None
    bad = non_finite(model)
    if bad:
        raise UserError(f"{path}: non-finite weights in {bad} (a diverged run); use best.pt or "
                        "an earlier checkpoint")
    return model.to(device).eval()


def builds(ckpt: dict[str, Any]) -> bool:
    """Whether the net of checkpoint `ckpt` (its arch and model_args alone) builds: tells a
    caller's bad argument from a damaged file's model_args (only on that error's path)."""
    from alexnet.model import build_model

    try:
        build_model(ckpt["arch"], **ckpt["model_args"])
    except (RuntimeError, TypeError, ValueError, KeyError):
        return False
    return True


def non_finite(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer of `model` holding NaN or inf, or None."""
    for name, value in list(model.named_parameters()) + list(model.named_buffers()):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None
