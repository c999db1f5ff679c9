"""evaluate: one report per ensemble, the paper row a centre-crop run compares with, and
ranks computed a chunk of rows at a time (exactly as before)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import alexnet.evaluate as ev
from alexnet.checkpoint import make_state, save
from alexnet.cli import main
from alexnet.data.store import open_split, write_store
from alexnet.model import AlexNet
from alexnet.paper import CENTRE_CROP_REPRODUCTIONS, IMAGE_SIZE, RESULTS

CLASSES = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """A tiny store (4 val images) and three tiny nets, each saved in a folder of its own."""
    root = tmp_path_factory.mktemp("ens")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0])
    train = write_store(root / "store" / "train", images, labels, CLASSES)
    write_store(root / "store" / "val", images, labels, CLASSES, stats=train.stats)
    paths = {}
    for seed, name in enumerate("abd"):
        torch.manual_seed(seed)
        (root / name).mkdir()
        paths[name] = save(root / name / "best.pt", make_state(
            AlexNet(num_classes=3, width=0.0625), classes=CLASSES, stats=train.stats, epoch=1,
            step=0))
    return root / "store", paths


def reports(folder: Path) -> dict[str, list[str]]:
    return {p.name: json.loads(p.read_text())["checkpoints"]
            for p in sorted(folder.glob("*.per-class.json"))}


def test_an_ensembles_report_does_not_replace_another_ensembles(nets, capsys):
    """`evaluate a b` then `evaluate a d` wrote both to a/best-ensemble2.val.1crop...: the
    a+b report was gone without a word. Each set of nets now has its own file, the same set
    (rerun, or given in another order after the first) the same one, and one net's name is
    as before."""
    store, p = nets
    folder = p["a"].parent

    def evaluate(*names: str) -> str:
        assert main(["evaluate", *(str(p[n]) for n in names), "--data", str(store),
                     "--device", "cpu", "--batch-size", "4", "--crops", "1"]) == 0
        return capsys.readouterr().out.splitlines()[-1].rsplit(": ", 1)[1]

    ab = evaluate("a", "b")
    ad = evaluate("a", "d")
    assert ab != ad
    assert reports(folder) == {Path(ab).name: [str(p["a"]), str(p["b"])],
                               Path(ad).name: [str(p["a"]), str(p["d"])]}
    assert Path(ab).name.startswith("best-ensemble2.") and Path(ab).parent == folder
    assert evaluate("a", "b") == ab  # a rerun replaces its own report
    assert evaluate("a", "d", "b") == evaluate("a", "b", "d")  # one set of nets, one file
    assert evaluate("a") == str(folder / "best.val.1crop.per-class.json")
    assert len(reports(folder)) == 4


def test_the_default_name_names_the_set_by_resolved_path(tmp_path):
    """Other spellings of the same files (relative, through a link) give the same name; a
    report on another store keeps the store's name in it; one checkpoint's names are as
    before."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, other = tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt"
    (tmp_path / "link.pt").symlink_to(other)
    name = ev.default_report_path([first, other], "val", 10)
    assert name.parent == first.parent and name.name.startswith("best-ensemble2.")
    assert name.name.endswith(".val.10crop.per-class.json")
    assert ev.default_report_path([first, tmp_path / "link.pt"], "val", 10) == name
    assert ev.default_report_path([first, tmp_path / "b" / ".." / "b" / "best.pt"], "val",
                                  10) == name
    assert ev.default_report_path([first, tmp_path / "c.pt"], "val", 10) != name
    assert ev.default_report_path([first, other], "val", 10, "other").name.endswith(
        ".other.val.10crop.per-class.json")
    assert ev.default_report_path([first], "test", 1) == \
        tmp_path / "a" / "best.test.1crop.per-class.json"
    assert ev.default_report_path([first], "test", 1, "other") == \
        tmp_path / "a" / "best.other.test.1crop.per-class.json"
    assert ev.default_report_path([tmp_path / "a"], "val", 1) == \
        tmp_path / "a" / "checkpoint.val.1crop.per-class.json"


# ------------------------------------------------------------------ the row compared

def marked(table: str) -> list[str]:
    return [line for line in table.splitlines() if line.endswith("<-")]


def test_a_centre_crop_run_is_compared_with_the_centre_crop_reproductions():
    """A 1-crop ILSVRC-2012 run was marked against the paper's "1 CNN" 40.7%, most likely a
    10-crop figure; it compares with the single-crop reproductions, their top-1 and top-5
    shown; a 10-crop run still with the paper's row."""
    result = {"checkpoints": ["a"], "crops": 1, "top1_error": .43, "top5_error": .2,
              "images": 50000}
    rows = marked(ev.format_table(result, "ilsvrc2012", "val", 1000))
    assert len(rows) == len(CENTRE_CROP_REPRODUCTIONS)
    for row, (name, (top1, top5)) in zip(rows, CENTRE_CROP_REPRODUCTIONS.items(), strict=True):
        assert name in row and "paper" not in row
        assert row.split()[-3:] == [f"{top1:.1f}%", f"{top5:.1f}%", "<-"]
    ten = marked(ev.format_table({**result, "crops": 10}, "ilsvrc2012", "val", 1000))
    top1, top5 = RESULTS["ilsvrc2012-val"]["1 CNN"]
    assert len(ten) == 1 and ten[0].startswith("paper ilsvrc2012-val: 1 CNN ")
    assert ten[0].split()[-3:-1] == [f"{top1:.1f}%", f"{top5:.1f}%"]
    for n in (5, 7):  # the paper's ensembles: the same table, most likely 10 crops too
        five = {**result, "checkpoints": [str(i) for i in range(n)]}
        assert marked(ev.format_table(five, "ilsvrc2012", "val", 1000)) == []
        assert len(marked(ev.format_table({**five, "crops": 10}, "ilsvrc2012", "val"))) == 1
    one = marked(ev.format_table(result, "ilsvrc2010", "test", 1000))  # 2010 says its crops
    assert len(one) == 1 and "1 CNN, centre crop" in one[0]


# ------------------------------------------------------------------ bounded temporaries

def loop_rank(probs: np.ndarray, labels: np.ndarray) -> list[int]:
    """How many other classes are at least as probable, one image at a time; a NaN or inf
    image beyond every k."""
    out = []
    for row, label in zip(probs, labels, strict=True):
        if not np.isfinite(row).all():
            out.append(np.iinfo(np.int64).max)
            continue
        out.append(sum(1 for c, p in enumerate(row) if c != label and p >= row[label]))
    return out


def tied_probs(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities on a coarse grid (many ties), some rows NaN or inf."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.randint(0, 4, (n, classes), generator=gen).float() / 8
    probs[3, 2] = float("nan")
    probs[n - 2, 0] = float("inf")
    probs[n // 2] = 0.25  # every class tied
    return probs, torch.randint(0, classes, (n,), generator=gen)


def test_true_rank_a_chunk_of_rows_at_a_time_is_exact():
    """true_rank held N x C booleans twice (13 KB an image with predict_probs' copies at 1000
    classes); a chunk of rows at a time it gives the same ranks, ties against the net."""
    probs, labels = tied_probs(53, 9, 0)
    want = loop_rank(probs.numpy(), labels.numpy())
    for chunk in (1, 7, 53, 100):
        got = ev.true_rank(probs, labels, chunk=chunk)
        assert got.dtype == torch.int64 and got.tolist() == want, chunk
    assert ev.true_rank(probs[:0], labels[:0], chunk=7).tolist() == []


def test_topk_and_the_per_class_report_with_small_chunks_count_as_before(monkeypatch):
    """topk_wrong and per_class_report over chunks of 5 rows: the counts of one image at a
    time, ties and broken rows included."""
    probs, labels = tied_probs(41, 7, 1)
    rank = np.array(loop_rank(probs.numpy(), labels.numpy()))
    monkeypatch.setattr(ev, "RANK_ELEMENTS", 5 * 7)  # 5 rows at a time
    assert ev.topk_wrong(probs, labels, ks=(1, 3, 5)) == {
        f"top{k}_wrong": int((rank >= k).sum()) for k in (1, 3, 5)}
    rows = ev.per_class_report(probs, labels, CLASSES + [f"c{i}" for i in range(3, 7)])[
        "classes"]
    y = labels.numpy()
    for row in rows:
        mine = rank[y == row["label"]]
        assert row["images"] == len(mine)
        if len(mine):
            assert row["top1_error"] == (mine >= 1).sum() / len(mine)
            assert row["top5_error"] == (mine >= 5).sum() / len(mine)


class Rows(nn.Module):
    """The "net" hands back its input as logits: (B, C, 1, 1) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Counted:
    """Batches with the number of images known beforehand (`images`), as an EvalLoader's."""

    def __init__(self, batches: list, images: int) -> None:
        self.batches, self.images = batches, images

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_predict_probs_fills_one_tensor_exactly_as_cat_did(nets):
    """With the number of images known, predict_probs writes the batches into one (N, C)
    tensor (it appended them and concatenated: two copies at the end); the figures are those
    of the batches one by one, also when the loader gives fewer or more images than it said."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(11, 6, 1, 1, generator=gen)
    labels = torch.randint(0, 6, (11,), generator=gen)
    batches = [(logits[i:i + 4], labels[i:i + 4]) for i in range(0, 11, 4)]
    want = torch.cat([torch.softmax(x.flatten(1), 1) for x, _ in batches])
    for images in (11, 9, 13):
        probs, y = ev.predict_probs(Rows(), Counted(batches, images))
        assert torch.equal(probs, want) and torch.equal(y, labels), images
        assert probs.is_contiguous()
    assert ev.loader_images(Counted(batches, 11)) == 11
    store, _ = nets
    loader = ev.eval_loader(open_split(store, "val"), crops=1, batch_size=3, device="cpu",
                            stats=None, indices=[3, 1, 2])
    assert ev.loader_images(loader) == 3
    assert ev.loader_images(ev._UntilStop(loader, lambda: False)) == 3
    assert ev.loader_images(batches) is None
