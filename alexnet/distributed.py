"""One entry point for one device and for `torchrun`: rank detection and rank-0 helpers.

`torchrun --nproc_per_node=N -m alexnet train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; we
read them (as nanoGPT and torchvision's references do), initialise the process group with
NCCL on CUDA and gloo on the CPU, and give each rank its device. Without those variables
everything here is a no-op and training runs in one process. Only rank 0 prints, writes logs
and checkpoints (`is_main`, `print0`); metrics are averaged with `all_reduce_mean`; a split
evaluated in shares (`share`) adds up its counts with `all_reduce_sum`.

With the paper's two-column model parallelism (model.split_columns) each process drives two
GPUs: local rank r uses cuda:2r (column 1, input) and cuda:2r+1 (column 2).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from alexnet.errors import UserError
from alexnet.stops import stops_held

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank, and its device(s)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    column_devices: tuple[torch.device, torch.device] | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when RANK and WORLD_SIZE are in the environment (torchrun, or by hand)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(device: str = "auto", local_rank: int = 0, split_columns: bool = False
                ) -> tuple[torch.device, tuple[torch.device, torch.device] | None]:
    """The device of this process (and the two column devices with split_columns); a name
    that is no device, a device type other than cpu and cuda (mps, meta, xpu: the package
    runs on neither), or a GPU this machine lacks, is a one-line UserError."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        named = torch.device(device)
    except RuntimeError:
        named = None
    if named is None or named.type not in ("cpu", "cuda"):  # mps, meta, xpu: never run here
        raise UserError(f"--device {device!r}: not a device; use cpu, cuda, cuda:N or "
                        "auto")
    if named.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device!r}: no CUDA device is available here; "
                        "use --device cpu")
    if named.type == "cuda" and (named.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {device!r}: this machine has "
                        f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                        f"cuda:{torch.cuda.device_count() - 1}")
    if split_columns:
        if not device.startswith("cuda") or torch.cuda.device_count() < 2 * (local_rank + 1):
            raise UserError("model.split_columns needs two CUDA devices per process "
                            f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} "
                            "found); drop the option or run on a machine with two GPUs")
        cols = (torch.device("cuda", 2 * local_rank), torch.device("cuda", 2 * local_rank + 1))
        return cols[0], cols
    if device == "cuda":
        return torch.device("cuda", local_rank), None
    if device.startswith("cuda:") and launched_by_torchrun():
        raise UserError(f"--device {device!r}: under torchrun give plain 'cuda' (each rank "
                        "takes cuda:LOCAL_RANK)")
    return torch.device(device), None


def init_distributed(device: str = "auto", split_columns: bool = False) -> DistInfo:
    """Join the process group when launched by torchrun; return this process's place."""
    launch = launch_env()
    if launch is None:
        dev, cols = pick_device(device, 0, split_columns)
        return DistInfo(device=dev, column_devices=cols)
    rank, world, local_rank = launch
    dev, cols = pick_device(device, local_rank, split_columns)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        _check_rendezvous(world)
        _import_before_joining()
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistInfo(rank, world, local_rank, dev, cols)


LAUNCH_ADVICE = ("launch with `torchrun --nproc_per_node=N -m alexnet train ...` (it sets these "
                 "variables), or unset RANK and WORLD_SIZE for one process")


def launch_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) as torchrun set them, None in a single process; the one
    place that reads them, so that a launch set up wrongly by hand (a value that is no whole
    number or out of range) is one line naming the variable before anything is read or
    written, not a traceback."""
    if not launched_by_torchrun():
        return None
    rank, world = _launch_int("RANK"), _launch_int("WORLD_SIZE")
    local_rank = _launch_int("LOCAL_RANK", "0")
    if world < 1:
        raise UserError(f"WORLD_SIZE={world}: the number of ranks must be at least 1; "
                        f"{LAUNCH_ADVICE}")
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} with WORLD_SIZE={world}: a rank must be at least 0 and "
                        f"below WORLD_SIZE; {LAUNCH_ADVICE}")
    if local_rank < 0:
        raise UserError(f"LOCAL_RANK={local_rank}: must be 0 or more; {LAUNCH_ADVICE}")
    return rank, world, local_rank


def _launch_int(name: str, default: str | None = None) -> int:
    """The whole number in environment variable `name` (`default` when it is unset)."""
    value = os.environ.get(name, default)
    try:
        return int(value or "")
    except ValueError:
        raise UserError(f"{name}={value!r}: not a whole number; {LAUNCH_ADVICE}") from None


def _check_rendezvous(world: int) -> None:
    """Refuse to join `world` ranks without the address where they meet (env://: torch's own
    error is a traceback), before the process group is made."""
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={world} without {' and '.join(missing)}: the ranks meet at "
                        "MASTER_ADDR:MASTER_PORT; set both on every rank (rank 0's host and a "
                        f"free port), or {LAUNCH_ADVICE}")
    port = os.environ["MASTER_PORT"]
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise UserError(f"MASTER_PORT={port!r}: not a port number (1 to 65535); set it to a "
                        f"free port on every rank, or {LAUNCH_ADVICE}")


def _import_before_joining() -> None:
    """Import torch._dynamo before the process group exists: imported later (DDP's constructor
    does), it keeps a reference to the group that destroy_process_group cannot drop (torch
    2.13), so gloo's threads outlive `cleanup` and race the interpreter's exit, which then
    aborts a rank now and then ("terminate called without an active exception")."""
    import torch._dynamo  # noqa: F401


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 in a single process), before the group is
    joined."""
    launch = launch_env()
    return launch[0] if launch else 0


def launch_world_size() -> int:
    """How many ranks torchrun started (1 in a single process), before the group is joined."""
    launch = launch_env()
    return launch[1] if launch else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process), also after the group is left: a torchrun
    rank says so from its RANK (the end of `alexnet train` prints once, not once per rank)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return launch_rank() == 0


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (llm.c's print0)."""
    if is_main():
        print(*args, **kwargs)


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device | str = "cpu"
                    ) -> dict[str, float]:
    """The mean of each metric over all ranks (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    world = dist.get_world_size()
    return {k: v / world for k, v in _summed(values, torch.float64, device).items()}


def all_reduce_sum(counts: dict[str, int], device: torch.device | str = "cpu"
                   ) -> dict[str, int]:
    """The sum of each count over all ranks, exact (int64; identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or not counts:
        return dict(counts)
    return {k: int(v) for k, v in _summed(counts, torch.int64, device).items()}


def _summed(values: dict[str, Any], dtype: torch.dtype, device: torch.device | str
            ) -> dict[str, Any]:
    """Each value summed over all ranks in one all_reduce of a `dtype` tensor."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=dtype, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist(), strict=True))


def share(n: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s part of n items (0..n-1): consecutive ones (sequential reads), parts
    differing in size by one at most, all of them together each item once."""
    return range(rank * n // world_size, (rank + 1) * n // world_size)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True if `flag` is true on any rank: every rank stops at the same step."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: object) -> list[object]:
    """`obj` of every rank, in rank order, on every rank ([obj] in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same_launch(values: dict[str, Any]) -> None:
    """Refuse, on every rank alike, a launch whose ranks disagree on `values` (what must agree:
    the resolved config, as config.json records it, and the like; ranks started by hand with
    other options would train another net each, under rank 0's config.json): a digest of each
    rank's is compared, and on a difference the first key differing is named with its values
    on rank 0 and on the first rank that differs (a no-op in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    text = json.dumps(values, sort_keys=True, default=str)
    digests = gather_objects(hashlib.sha256(text.encode()).hexdigest())
    if len(set(digests)) == 1:
        return
    every = gather_objects(values)  # only on a difference: each rank's values in full
    other = next(r for r, d in enumerate(digests) if d != digests[0])
    ours, theirs = cast(dict, every[0]), cast(dict, every[other])
    shown = {k: (_shown(ours.get(k, _ABSENT)), _shown(theirs.get(k, _ABSENT)))
             for k in [*ours, *theirs]}
    key, (mine, its) = next((k, pair) for k, pair in shown.items() if pair[0] != pair[1])
    raise UserError(f"the ranks were launched with different options: {key}: {mine} on rank 0, "
                    f"{its} on rank {other}; launch every rank with the same arguments "
                    "(torchrun does)")


_ABSENT = object()  # a key one rank's values lack


def _shown(value: object) -> str:
    """A value as a refusal names it: JSON's spelling (0.01, "cpu", true), or `absent`."""
    return "absent" if value is _ABSENT else json.dumps(value, default=str)


def on_main(action: Callable[[], T]) -> T | None:
    """Run `action` on rank 0 only (what rank 0 alone writes); a UserError it raises is raised
    on every rank, so that the others stop with its line instead of waiting for rank 0 at the
    next collective until torchrun kills them. What it returns is rank 0's (None elsewhere)."""
    if not (dist.is_available() and dist.is_initialized()):
        return action()
    result, refusal = None, None
    if dist.get_rank() == 0:
        try:
            result = action()
        except UserError as err:
            refusal = str(err)
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise UserError(refusal)
    return result


def group_failed(err: BaseException) -> bool:
    """Whether `err` is the process group failing (a rank died or hung: gloo's "Connection
    closed by peer" or a timeout, NCCL's errors), not a fault of this rank's own work."""
    return isinstance(err, dist.DistError) or (
        isinstance(err, RuntimeError) and "gloo" in str(err).lower())


def failure_text(err: BaseException, limit: int = 100) -> str:
    """A process group's error in a few words: its first sentence, without the C++ source
    location gloo puts in front ("[.../pair.cc:553] Connection closed by peer [IP]:PORT.")."""
    text = " ".join(str(err).split())
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    text = text.split(". ", 1)[0].rstrip(".")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def broadcast_object(obj: object, src: int = 0) -> object:
    """`obj` from rank `src` on every rank (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Leave the process group (if joined), and let it go: the finished run's DDP wrapper,
    which holds the group, is freed first (it can sit in a reference cycle), so that gloo's
    threads end here and not during the interpreter's exit. A stop that comes meanwhile (the
    SIGTERM torchrun sends once another rank has died) is held until the finalisers are done,
    then raised here (raised inside one of them, it was a traceback Python printed and ignored)."""
    if dist.is_available() and dist.is_initialized():
        try:
            with stops_held():
                gc.collect()
        finally:
            dist.destroy_process_group()
