"""atomic.write_atomic's text: UTF-8, with a path's bytes that are not UTF-8 kept as they are."""

from __future__ import annotations

import os

import pytest

from alexnet.atomic import write_atomic
from alexnet.errors import Terminated, UserError


def test_text_holding_a_name_that_is_not_utf8_is_written_as_its_bytes(tmp_path):
    """Text naming a path whose bytes are not UTF-8 raised UnicodeEncodeError instead of being
    written (no report holds such a name as text today; the rule lives here for any)."""
    store = os.fsdecode(b"/data/st\xffre")
    path = write_atomic(tmp_path / "ablation.md", f"store: {store}, caf\u00e9\n")
    assert path.read_bytes() == b"store: /data/st\xffre, caf\xc3\xa9\n"
    assert sorted(os.listdir(tmp_path)) == ["ablation.md"]


def test_a_name_near_the_filesystems_limit_is_written_and_its_stale_temporary_found(tmp_path):
    """A legal 250-byte output name was refused: its temporary `.tmp-NAME.PID` was longer
    than 255 bytes (ENAMETOOLONG, naming a file the user never asked for)."""
    import subprocess
    import sys

    from alexnet.atomic import TMP_PREFIX, remove_stale, temp_name

    name = "\u00e9" * 120 + "x.weights.pt"  # 252 bytes in UTF-8
    assert len(os.fsencode(name)) == 252
    path = write_atomic(tmp_path / name, b"weights")
    assert path.read_bytes() == b"weights" and os.listdir(tmp_path) == [name]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{TMP_PREFIX}{temp_name(name)}.{dead.pid}"
    stale.write_bytes(b"left by a killed writer")
    assert len(os.fsencode(stale.name)) <= 255
    assert remove_stale(tmp_path, [path]) == [stale]


class _CutFile:
    """A binary file whose n-th write raises `stop`, as Ctrl-C (or SIGTERM's handler) does
    when it lands while torch.save's zip writer is writing."""

    def __init__(self, file, after: int, stop: type[BaseException]) -> None:
        self.file, self.after, self.stop, self.writes = file, after, stop, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.after:
            raise self.stop
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated])
@pytest.mark.parametrize("after", [2, 5])
def test_an_interrupted_torch_save_is_the_interrupt_and_leaves_no_temporary(tmp_path, stop,
                                                                           after):
    """torch.save's zip writer, unwinding the interrupt, raised RuntimeError("[enforce fail at
    inline_container.cc] unexpected pos"), which `replacing` let through: the CLI printed
    that traceback with exit status 1 instead of "interrupted" and 130."""
    import torch

    path = tmp_path / "net.pt"
    path.write_bytes(b"the earlier checkpoint")
    state = {"weight": torch.zeros(10_000), "bias": torch.ones(10)}
    with pytest.raises(stop):
        write_atomic(path, lambda f: torch.save(state, _CutFile(f, after, stop)))
    assert path.read_bytes() == b"the earlier checkpoint"
    assert os.listdir(tmp_path) == ["net.pt"]


def test_a_failing_torch_save_is_still_a_one_line_error(tmp_path):
    """The RuntimeError of a full disk (its context an OSError) stays a UserError."""
    import errno

    import torch

    class FullDisk(_CutFile):
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match="No space left on device"):
        write_atomic(tmp_path / "net.pt",
                     lambda f: torch.save({"w": torch.zeros(10)}, FullDisk(f, 0, OSError)))
    assert os.listdir(tmp_path) == []
