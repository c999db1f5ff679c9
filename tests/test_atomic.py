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
