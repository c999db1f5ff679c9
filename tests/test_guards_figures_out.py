"""figures: no stale figure of an earlier call is left beside the new ones, the default folder
of another store is its own, the inputs are checked before any figure, and figure 4 right names
the split its images come from."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from alexnet.checkpoint import make_state, save
from alexnet.cli import main
from alexnet.data.store import open_split, write_store
from alexnet.model import AlexNet
from alexnet.paper import IMAGE_SIZE

CLASSES = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]
USER_FILES = {"notes.txt": b"the user's own notes\n", "fig5.png": b"not one of ours"}


def tiny_net(columns: int, seed: int) -> AlexNet:
    """A small net with PyTorch's init (fc7 vectors apart)."""
    torch.manual_seed(seed)
    model = AlexNet(num_classes=3, width=0.0625, columns=columns)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


def write_splits(root, size: int, splits: dict[str, slice]) -> None:
    """A store at `root` with the given splits of 14 random `size`-pixel images."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(14, size, size, 3), dtype=np.uint8)
    labels = np.arange(14) % 3
    stats = None
    for name, part in splits.items():
        write_store(root / name, images[part], labels[part], CLASSES, stats=stats)
        stats = stats or open_split(root, name).stats


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """A store (train, val, test) and two run folders recording it: `a` a two-column net beside
    a log, `b` a one-column net without one."""
    base = tmp_path_factory.mktemp("figout")
    store = base / "store"
    write_splits(store, IMAGE_SIZE, {"train": slice(0, 8), "val": slice(8, 11),
                                     "test": slice(11, 14)})
    stats = open_split(store, "train").stats
    config = {"data": {"store": str(store)}}
    paths = {}
    for name, columns in (("a", 2), ("b", 1)):
        run = base / name
        run.mkdir()
        paths[name] = save(run / "net.pt", make_state(tiny_net(columns, seed=columns),
                                                      classes=CLASSES, stats=stats, epoch=1,
                                                      step=0, config=config))
    (base / "a" / "log.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0,
                                                      "lr": 0.01}) + "\n")
    return store, paths["a"], paths["b"]


def figures(ckpt, *extra: str) -> int:
    return main(["figures", str(ckpt), "--images", "1", "--queries", "1", "--device", "cpu",
                 *extra])


def pngs(folder) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".png"}


def test_a_second_net_into_the_same_folder_leaves_none_of_the_firsts_figures(nets, tmp_path,
                                                                             capsys):
    """Net b's figures into net a's folder kept a's fig3_conv1_column{1,2}.png (b has one
    column) and training_curves.png (b has no log) beside b's figure 3."""
    store, a, b = nets
    out = tmp_path / "F"
    assert figures(a, "--out", str(out)) == 0
    assert pngs(out) == {"fig3_kernels.png", "fig3_conv1_column1.png",
                         "fig3_conv1_column2.png", "fig4_top5.png", "fig4_neighbours.png",
                         "training_curves.png"}
    for name, data in USER_FILES.items():
        (out / name).write_bytes(data)
    assert figures(b, "--out", str(out)) == 0, capsys.readouterr().err
    assert pngs(out) == {"fig3_kernels.png", "fig3_conv1.png", "fig4_top5.png",
                         "fig4_neighbours.png", "fig5.png"}
    assert {name: (out / name).read_bytes() for name in USER_FILES} == USER_FILES
    assert json.loads((out / "figures.json").read_text())["checkpoint"] == str(b)


def test_a_store_without_train_split_removes_the_earlier_neighbours(nets, tmp_path, capsys):
    """Figure 4 right skipped (no train split) left the earlier fig4_neighbours.png, of
    another store, beside the new figures."""
    store, a, _ = nets
    other = tmp_path / "other"
    shutil.copytree(store, other, ignore=lambda d, names: ["train"] if d == str(store) else [])
    out = tmp_path / "F"
    assert figures(a, "--out", str(out)) == 0
    assert (out / "fig4_neighbours.png").is_file()
    capsys.readouterr()
    assert figures(a, "--data", str(other), "--out", str(out)) == 0
    assert "figure 4 right skipped" in capsys.readouterr().err
    assert not (out / "fig4_neighbours.png").exists()
    assert (out / "fig4_top5.png").is_file() and (out / "training_curves.png").is_file()


def test_the_default_folder_of_another_store_carries_its_name(nets, tmp_path, capsys):
    """Without --out, figures on another store replaced those on the run's own store."""
    store, a, _ = nets
    run = tmp_path / "run"
    shutil.copytree(a.parent, run)
    other = tmp_path / "elsewhere"
    shutil.copytree(store, other)
    assert figures(run / "net.pt") == 0
    own = (run / "figures" / "figures.json").read_bytes()
    assert figures(run / "net.pt", "--data", str(other)) == 0
    assert json.loads((run / "figures-elsewhere" / "figures.json").read_text())["data"] == \
        str(other)
    assert (run / "figures" / "figures.json").read_bytes() == own
    assert figures(run / "net.pt", "--data", str(store), "--images", "2") == 0  # its own
    assert len(json.loads((run / "figures" / "figures.json").read_text())["top5"]["images"]) == 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("figures")) == \
        ["figures", "figures-elsewhere"]


def test_a_store_the_net_cannot_read_is_refused_before_any_figure(nets, tmp_path, capsys):
    """A 32-pixel store drew figure 3, then failed on the crop without naming the checkpoint
    or the store, advising a rerun that failed again."""
    _, a, _ = nets
    data = tmp_path / "s32"
    write_splits(data, 32, {"train": slice(0, 8), "val": slice(8, 14)})
    out = tmp_path / "F3"
    code = figures(a, "--data", str(data), "--out", str(out))
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1 and captured.out == "", captured
    assert f"error: {a} on {data / 'val'}: crop 224: must lie in 1..32" in captured.err
    assert "stopped with only" not in captured.err
    assert not out.exists()


@pytest.mark.parametrize("split", ["auto", "test"])
def test_figure4_right_names_the_split_of_its_images(nets, tmp_path, monkeypatch, split):
    """The title said "test image" when `--split auto` took them from the val split."""
    import matplotlib.figure

    store, _, b = nets
    titles: dict[str, str] = {}
    savefig = matplotlib.figure.Figure.savefig

    def spy(fig, fname, *args, **kwargs):
        name = os.path.basename(getattr(fname, "name", str(fname)))
        titles[name] = fig.get_suptitle()
        return savefig(fig, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    out = tmp_path / "F"
    assert figures(b, "--out", str(out), "--split", split) == 0
    name = {"auto": "val", "test": "test"}[split]
    assert json.loads((out / "figures.json").read_text())["split"] == name
    title = next(t for file, t in titles.items() if "fig4_neighbours" in file)
    assert title.startswith(f"{name} image (left)"), title


def test_curves_skipped_on_a_damaged_log_remove_the_earlier_ones(nets, tmp_path, capsys):
    """Curves skipped (a damaged log) left the earlier training_curves.png of the log before."""
    _, a, _ = nets
    run = tmp_path / "run"
    shutil.copytree(a.parent, run)
    out = tmp_path / "F"
    assert figures(run / "net.pt", "--out", str(out)) == 0
    assert (out / "training_curves.png").is_file()
    log = run / "log.jsonl"
    log.write_text("not json\n" + log.read_text())
    capsys.readouterr()
    assert figures(run / "net.pt", "--out", str(out)) == 0
    assert "training curves skipped" in capsys.readouterr().err
    assert not (out / "training_curves.png").exists()
    assert "curves" not in json.loads((out / "figures.json").read_text())
