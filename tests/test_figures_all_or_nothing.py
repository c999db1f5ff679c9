"""figures: a rerun that fails or is stopped while drawing leaves the earlier set (figures and
figures.json) as it was; the set is drawn in a hidden folder, moved in only once complete, and
one left by a killed command is removed by the next."""

from __future__ import annotations

import errno
import json
import os

import pytest
import test_guards_figures_out as guards
from _stops import tree
from test_guards_figures_out import figures, pngs

import alexnet.figures
import alexnet.figures.kernels
import alexnet.figures.neighbours
from alexnet.atomic import TMP_PREFIX

FULL = os.strerror(errno.ENOSPC)
nets = guards.nets  # the tiny store and two run folders (a: two columns and a log, b: one)


def full_disk_in(monkeypatch: pytest.MonkeyPatch, module) -> None:
    """Every PNG that `module` writes fails as on a full disk, inside the real atomic write."""
    real = module.write_atomic

    def write_atomic(path, content, **kwargs):
        def full(f):
            raise OSError(errno.ENOSPC, FULL)

        return real(path, full, **kwargs)

    monkeypatch.setattr(module, "write_atomic", write_atomic)


def hidden(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.mark.parametrize("where, first", [
    ("kernels", "fig3_conv1_column1.png"),  # the first figure written
    ("neighbours", "fig4_neighbours.png"),  # figure 4 right, after figures 3 and 4 left
])
def test_a_full_disk_leaves_the_earlier_set_as_it_was(nets, tmp_path, monkeypatch, capsys,
                                                      where, first):
    """A rerun that failed on a full disk removed figures.json first and left the new figures
    it had written beside the earlier ones."""
    _, a, _ = nets
    out = tmp_path / "F"
    assert figures(a, "--out", str(out)) == 0
    before = tree(out)
    capsys.readouterr()
    full_disk_in(monkeypatch, getattr(alexnet.figures, where))
    code = figures(a, "--out", str(out), "--seed", "1")
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert tree(out) == before and not hidden(out)
    assert code == 2 and err.count("\n") == 0, captured.err
    assert err.startswith(f"alexnet figures: error: {out / first}: cannot write ({FULL})"), err
    assert f"nothing in {out} changed" in err and TMP_PREFIX not in err
    assert TMP_PREFIX not in captured.out


def test_an_interrupt_midway_leaves_the_earlier_set_as_it_was(nets, tmp_path, monkeypatch,
                                                              capsys):
    """Ctrl-C at figure 4 right left figures 3 and 4 left of the rerun and no figures.json."""
    _, a, _ = nets
    out = tmp_path / "F"
    assert figures(a, "--out", str(out)) == 0
    before = tree(out)
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(alexnet.figures, "_neighbours_figure", interrupted)
    code = figures(a, "--out", str(out), "--seed", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert tree(out) == before and not hidden(out)
    assert code == 130 and len(err) == 2 and err[1] == "alexnet figures: interrupted", err
    assert err[0].startswith(f"alexnet figures: note: nothing in {out} changed"), err


def test_a_failed_rerun_then_another_net_replaces_the_whole_set(nets, tmp_path, monkeypatch,
                                                                capsys):
    """After a failed rerun the earlier set is whole; a successful one of another net replaces
    it, removes the figures it did not draw, and names only the files in OUT."""
    _, a, b = nets
    out = tmp_path / "F"
    assert figures(a, "--out", str(out)) == 0
    full_disk_in(monkeypatch, alexnet.figures.neighbours)
    assert figures(b, "--out", str(out)) == 2
    assert json.loads((out / "figures.json").read_text())["checkpoint"] == str(a)
    assert {"fig3_conv1_column1.png", "training_curves.png"} <= pngs(out)
    monkeypatch.undo()
    capsys.readouterr()
    assert figures(b, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert pngs(out) == {"fig3_kernels.png", "fig3_conv1.png", "fig4_top5.png",
                         "fig4_neighbours.png"}
    summary = json.loads((out / "figures.json").read_text())
    assert summary["checkpoint"] == str(b)
    files = [summary["kernels"]["figure"], summary["top5"]["file"],
             summary["neighbours"]["file"], *(p["file"] for p in summary["kernels"]["panels"])]
    assert sorted(files) == sorted(str(out / name) for name in pngs(out))
    assert TMP_PREFIX not in printed and f"summary: {out / 'figures.json'}" in printed
    assert all(os.path.isfile(f) for f in files) and not hidden(out)


def test_the_hidden_folder_of_a_killed_command_is_removed_by_the_next(nets, tmp_path):
    """A command killed while drawing left its hidden folder of figures in OUT for good."""
    _, _, b = nets
    out = tmp_path / "F"
    out.mkdir()
    stale = out / f"{TMP_PREFIX}figures.{os.getpid() + 1}"  # any pid: OUT's lock was free
    (stale / f"{TMP_PREFIX}fig4_top5.png.7").parent.mkdir()
    (stale / "fig3_kernels.png").write_bytes(b"half a set")
    (stale / f"{TMP_PREFIX}fig4_top5.png.7").write_bytes(b"half a figure")
    mine = {f"{TMP_PREFIX}notes.txt.1": b"another program's", "notes.txt": b"the user's"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    assert figures(b, "--out", str(out)) == 0
    assert hidden(out) == [f"{TMP_PREFIX}notes.txt.1"]
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert (out / "figures.json").is_file()
