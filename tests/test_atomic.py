"""atomic.write_atomic's text: UTF-8, with a path's bytes that are not UTF-8 kept as they are."""

from __future__ import annotations

import os

from alexnet.atomic import write_atomic


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
