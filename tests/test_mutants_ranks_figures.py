"""Tests from a mutation audit of the ranks' shares (loader, epoch row, checkpoint saving,
rendezvous) and of figures 3 and 4 (top-5 bars, nearest neighbours, kernel panels, fc7)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_figures import CLASSES, figures_args
from test_loader import PLAIN, epoch_ids, make_store
from test_mutants_config import FakeGroup
from test_mutants_training import pytorch_initialised

from alexnet import distributed
from alexnet.checkpoint import make_state, save
from alexnet.cli import main
from alexnet.data.loader import TrainLoader, epoch_permutation
from alexnet.data.store import Store, open_split, write_store
from alexnet.distributed import DistInfo
from alexnet.errors import UserError
from alexnet.figures.kernels import kernel_grid, write_kernel_figures
from alexnet.figures.neighbours import fc7_features
from alexnet.figures.text import class_labels
from alexnet.figures.top5 import plot_top5
from alexnet.model import AlexNet
from alexnet.paper import IMAGE_SIZE
from alexnet.training import saving
from alexnet.training.loop import epoch_row

N = 100


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """test_loader's store: 100 images of 64 pixels, channel 0 saying the image's index."""
    return make_store(tmp_path_factory.mktemp("ranks") / "train", N, 64, 0)


# --- the ranks' shares of an epoch -------------------------------------------------------------

def test_global_batch_k_is_the_same_slice_of_the_epoch_whatever_the_ranks(store: Store) -> None:
    """docs/training.md: global batch k is order[kG:(k+1)G] however many ranks read it; each
    rank keeps the FIRST len * B images of its share."""
    order = epoch_permutation(N, 6, 0)
    parts = [epoch_ids(TrainLoader(store, 8, crop=56, seed=6, rank=r, world_size=3, **PLAIN), 0)
             for r in range(3)]
    assert all(len(p) == 4 for p in parts)
    for k in range(4):
        together = [i for part in parts for i in part[k]]
        assert len(set(together)) == 24
        assert set(together) == set(order[24 * k:24 * k + 24].tolist())
    one = TrainLoader(store, 8, crop=56, seed=6, **PLAIN)
    batches = epoch_ids(one, 0)
    for k in range(len(one)):
        assert one.indices(0)[8 * k:8 * k + 8].tolist() == order[8 * k:8 * k + 8].tolist()
        assert batches[k] == sorted(order[8 * k:8 * k + 8].tolist())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rank": 2, "world_size": 2}, "rank 2 of world size 2: need 0 <= rank < world"),
    ({"mean": "pixel"}, "mean 'pixel': choose from"),
    ({"pad": -1}, "pad -1: must be >= 0"),
])
def test_each_bad_loader_option_is_refused_for_its_own_reason(store: Store, kwargs: dict,
                                                              message: str) -> None:
    """With a crop that fits, a rank equal to the world size, an unknown mean and a negative
    pad are each refused by their own check, not by the crop's."""
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(")):
        TrainLoader(store, 4, crop=56, **kwargs)
    TrainLoader(store, 4, crop=56, rank=1, world_size=2)  # the last rank is one


def test_images_per_second_counts_every_ranks_images() -> None:
    """The epoch row's images/s is all ranks' images over the epoch's seconds (each rank saw
    `seen`), and `ranks` is the launch's world size."""
    s = types.SimpleNamespace(acc={"seen": 4.0, "seconds": 1.0, "loss_sum": 2.0, "wrong": 1.0},
                              epoch=0, global_step=3,
                              optimizer=types.SimpleNamespace(param_groups=[{"lr": 0.01}]))
    rt = types.SimpleNamespace(device=torch.device("cpu"), dist=DistInfo(rank=0, world_size=2))
    row = epoch_row(s, rt, {}, False, False)
    assert row["images_per_s"] == 8.0
    assert row["ranks"] == 2


def test_a_failed_write_on_rank_0_stops_the_other_ranks(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On rank 1, rank 0's failure (reported through the group) raises the one-line UserError
    naming the checkpoint rank 0 could not write; nothing is marked as saved."""
    FakeGroup(monkeypatch, 1, peer=[1.0])  # rank 0's flag: its write failed
    monkeypatch.setattr(distributed, "gather_objects", lambda obj: [obj, obj])
    s = types.SimpleNamespace(net=torch.nn.Linear(2, 2), acc={"seen": 4.0}, last_good=None)
    rt = types.SimpleNamespace(device=torch.device("cpu"), dist=DistInfo(rank=1, world_size=2))
    files = types.SimpleNamespace(checkpoint=tmp_path / "checkpoint.pt", best=tmp_path / "best.pt")
    with pytest.raises(UserError) as err:
        saving.save_checkpoints(s, None, None, files, rt)
    assert str(err.value).startswith(f"rank 0 could not write {files.checkpoint}")
    assert "\n" not in str(err.value)
    assert s.last_good is None and not files.checkpoint.exists()


@pytest.mark.parametrize("port", ["0", "70000", "65536", "\u00b2", "\uff18\uff10\uff18\uff10"])
def test_a_master_port_out_of_range_is_refused(port: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MASTER_PORT must be a port number, 1 to 65535: 0 and numbers past 65535 are one line;
    so are digits that are not ASCII ('²' passed str.isdigit and int() then raised a
    traceback; full-width '８０８０' was taken as port 8080)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", port)
    with pytest.raises(UserError) as err:
        distributed._check_rendezvous(2)
    assert str(err.value).startswith(f"MASTER_PORT={port!r}: not a port number (1 to 65535)")
    assert "\n" not in str(err.value)
    for edge in ("1", "65535"):
        monkeypatch.setenv("MASTER_PORT", edge)
        distributed._check_rendezvous(2)


# --- figure 4 left: the top-5 bars ---------------------------------------------------------------

def drawn_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probs: list[float],
               label: int) -> list[tuple[str, float, bool]]:
    """(label text, bar length, bar is red) of each bar of plot_top5's one image, top down,
    each bar paired with the label text drawn on its row."""
    import matplotlib.axes

    calls: list = []
    barh = matplotlib.axes.Axes.barh

    def spy(ax, *args, **kwargs):
        calls.append((ax, barh(ax, *args, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", spy)
    names = [f"c{k}" for k in range(len(probs))]
    plot_top5([np.zeros((8, 8, 3), np.uint8)], np.array([probs]), [label], names,
              tmp_path / "top5.png")
    ((ax, bars),) = calls
    texts = {round(t.get_position()[1]): t.get_text() for t in ax.texts}
    out = []
    for bar in sorted(bars.patches, key=lambda b: b.get_y()):
        r, g, b, _ = bar.get_facecolor()
        out.append((texts[round(bar.get_y() + bar.get_height() / 2)], bar.get_width(),
                    r > 0.6 and g < 0.4 and b < 0.4))
    return out


def test_the_true_labels_bar_is_red_and_each_bar_is_its_rows_probability(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Section 6.1: the bars are the top-5 probabilities in the order of their label texts,
    the true label's bar red and the others not; no red bar when it is not in the top 5."""
    rows = drawn_bars(tmp_path, monkeypatch, [0.1, 0.5, 0.3, 0.06, 0.04], 1)
    assert [t for t, _, _ in rows] == ["c1 0.5", "c2 0.3", "c0 0.1", "c3 0.06", "c4 0.04"]
    assert [w for _, w, _ in rows] == pytest.approx([0.5, 0.3, 0.1, 0.06, 0.04])
    assert [red for _, _, red in rows] == [True, False, False, False, False]
    rows = drawn_bars(tmp_path, monkeypatch, [0.3, 0.25, 0.2, 0.1, 0.08, 0.05, 0.02], 6)
    assert [w for _, w, _ in rows] == pytest.approx([0.3, 0.25, 0.2, 0.1, 0.08])
    assert not any(red for _, _, red in rows)


# --- figure 4 right: nearest neighbours ----------------------------------------------------------

@pytest.fixture(scope="module")
def split_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store of 6 training and 6 test images, each one constant value of its own, labels
    i % 3 in training and (i + 1) % 3 in test; a small net's checkpoint."""
    root = tmp_path_factory.mktemp("split_run")
    shape = (6, IMAGE_SIZE, IMAGE_SIZE, 3)
    train_images = np.broadcast_to((10 + 20 * np.arange(6))[:, None, None, None], shape)
    test_images = np.broadcast_to((140 + 20 * np.arange(6))[:, None, None, None], shape)
    write_store(root / "train", train_images.astype(np.uint8), np.arange(6) % 3, CLASSES)
    train = open_split(root, "train")
    write_store(root / "test", test_images.astype(np.uint8), (np.arange(6) + 1) % 3, CLASSES,
                stats=train.stats)
    ckpt = tmp_path_factory.mktemp("split_net") / "net.pt"
    save(ckpt, make_state(pytorch_initialised(0, num_classes=3, width=0.0625), classes=CLASSES,
                          stats=train.stats, epoch=1, step=0))
    return root, ckpt


def test_figure4_right_shows_the_training_images_found_with_their_training_labels(
        split_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each neighbour cell drawn is the TRAINING image of the index figures.json records, and
    its title starts with that training image's class (not the test image's of that index)."""
    import matplotlib.figure

    root, ckpt = split_run
    cells: list[list[tuple[np.ndarray, str]]] = []
    savefig = matplotlib.figure.Figure.savefig

    def spy(fig, fname, *args, **kwargs):
        if "fig4_neighbours" in str(getattr(fname, "name", fname)):
            cells.extend([[(np.asarray(ax.images[0].get_array()), ax.get_title())
                           for ax in fig.axes[r * 7:(r + 1) * 7]] for r in range(2)])
        return savefig(fig, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    out = tmp_path / "figs"
    assert main(figures_args(ckpt, root, out, "--crops", "1")) == 0
    summary = json.loads((out / "figures.json").read_text())["neighbours"]
    train, test = open_split(root, "train"), open_split(root, "test")
    names = class_labels(CLASSES, 14)
    assert len(cells) == len(summary["queries"]) == 2
    for row, query, found in zip(cells, summary["queries"], summary["neighbours"], strict=True):
        np.testing.assert_array_equal(row[0][0], test.read(np.asarray([query]))[0])
        assert sorted(found) == list(range(6))
        for (image, title), j in zip(row[1:], found, strict=True):
            np.testing.assert_array_equal(image, train.read(np.asarray([j]))[0])
            assert train.labels[j] != test.labels[j]
            assert title.startswith(f"{names[train.labels[j]]} d=")


# --- figure 3 and fc7 ----------------------------------------------------------------------------

def test_each_column_file_shows_its_own_columns_kernels(tmp_path: Path) -> None:
    """fig3_conv1_column1.png is the grid of conv1's first half of kernels (column 1),
    fig3_conv1_column2.png that of the second half, pixel for pixel."""
    torch.manual_seed(2)
    model = AlexNet(num_classes=3, width=0.125)
    weight = model.conv1.weight.detach().float()
    half = weight.shape[0] // 2
    write_kernel_figures(model, tmp_path)
    for i, kernels in ((1, weight[:half]), (2, weight[half:])):
        with Image.open(tmp_path / f"fig3_conv1_column{i}.png") as png:
            np.testing.assert_array_equal(np.asarray(png.convert("RGB")),
                                          kernel_grid(kernels.numpy()))


def test_fc7_features_are_the_eval_nets_and_leave_training_on() -> None:
    """Figure 4's vectors come without dropout even from a net in training mode (p 0.5), and
    the net is left in training mode."""
    model = pytorch_initialised(3, num_classes=3, width=0.0625, dropout=0.5)
    x = torch.randn(2, 3, 224, 224)
    model.train()
    (got,) = list(fc7_features(model, [(x, torch.zeros(2))]))
    assert model.training
    with torch.no_grad():
        dropped = model.features(x)
        want = model.eval().features(x)
    assert not torch.equal(dropped, want)  # dropout does act on this net in training mode
    torch.testing.assert_close(got, want)
