"""evaluate: top-k errors, the 10-crop softmax average and ensembles against NumPy."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from alexnet.checkpoint import make_state, save
from alexnet.cli import main
from alexnet.data.store import open_split, write_store
from alexnet.evaluate import (
    ensemble_probs,
    eval_loader,
    evaluate_model,
    format_table,
    input_settings,
    paper_set,
    predict_probs,
    store_source,
    topk_errors,
)
from alexnet.model import AlexNet
from alexnet.paper import CROP_SIZE, IMAGE_SIZE, RESULTS

CLASSES = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]


def np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_topk_error(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean([labels[i] not in top[i] for i in range(len(labels))]))


def np_ten_crops(image: np.ndarray, crop: int = CROP_SIZE) -> list[np.ndarray]:
    """Section 4.1: the four corner patches, the centre patch and their reflections."""
    s = image.shape[0]
    c = (s - crop) // 2
    corners = [(0, 0), (0, s - crop), (s - crop, 0), (s - crop, s - crop), (c, c)]
    patches = [image[y:y + crop, x:x + crop] for y, x in corners]
    return patches + [p[:, ::-1] for p in patches]


class PixelLinear(nn.Module):
    """logits[c] = sum(x * W[c]): a net whose output NumPy can compute independently."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(weight.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.weight)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """A tiny store: 256x256 images of three classes in train and val."""
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    write_store(root / "train", images, labels, CLASSES)
    train = open_split(root, "train")
    write_store(root / "val", images[:6], labels[:6], CLASSES, stats=train.stats)
    return root


@pytest.fixture(scope="module")
def checkpoint(store_root, tmp_path_factory):
    torch.manual_seed(0)
    model = AlexNet(num_classes=3, width=0.0625)
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    store = open_split(store_root, "train")
    save(path, make_state(model, classes=CLASSES, stats=store.stats, epoch=1, step=0))
    return path


def test_topk_errors_match_numpy():
    rng = np.random.default_rng(1)
    probs = np_softmax(rng.normal(size=(300, 20)) * 2)
    labels = rng.integers(0, 20, size=300)
    got = topk_errors(torch.from_numpy(probs), torch.from_numpy(labels), ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert got[f"top{k}_error"] == pytest.approx(np_topk_error(probs, labels, k))
    assert 0 < got["top5_error"] < got["top3_error"] < got["top1_error"] < 1


def test_topk_ties_count_against_the_net():
    """A net that outputs the same probability for every class is wrong, not right."""
    probs = np.full((4, 10), 0.1)
    labels = np.arange(4)
    assert topk_errors(probs, labels) == {"top1_error": 1.0, "top5_error": 1.0}
    # label 0 at 0.3 tied with four others above the rest: in no top 1, but in the top 5
    probs = np.array([[0.3, 0.3, 0.3, 0.05, 0.05]])
    assert topk_errors(probs, np.array([0]), ks=(1, 3)) == {"top1_error": 1.0,
                                                            "top3_error": 0.0}


def test_predict_probs_averages_softmax_not_logits():
    """Known logits in, the mean of the crops' softmax outputs out (section 4.1)."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 10, 7)) * 3  # 5 images, 10 crops, 7 classes
    labels = rng.integers(0, 7, size=5)
    model = nn.Flatten()  # the "net" returns its input: (B * 10, 7, 1, 1) -> logits
    x = torch.from_numpy(logits.reshape(50, 7, 1, 1).astype(np.float32))
    batches = [(x[:30], torch.from_numpy(labels[:3])), (x[30:], torch.from_numpy(labels[3:]))]
    probs, got_labels = predict_probs(model, batches)
    expected = np_softmax(logits).mean(axis=1)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got_labels.numpy(), labels)
    assert not np.allclose(expected, np_softmax(logits.mean(axis=1)), atol=1e-3)


@pytest.mark.parametrize("crops", [1, 10])
def test_evaluate_model_equals_numpy_crops(store_root, crops):
    """The loader's crops, mean subtraction and the softmax average, computed independently."""
    store = open_split(store_root, "val")
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(3, 3, CROP_SIZE, CROP_SIZE)) / 2000.0
    model = PixelLinear(weight)
    result = evaluate_model(model, store, crops=crops, batch_size=4, device="cpu")
    images = store.read(np.arange(len(store))).astype(np.float64)
    centred = images - store.stats["mean_image"].astype(np.float64)
    probs = []
    for image in centred:
        patches = np_ten_crops(image) if crops == 10 else [np_ten_crops(image)[4]]
        logits = np.stack([np.einsum("hwc,kchw->k", p, weight) for p in patches])
        probs.append(np_softmax(logits).mean(axis=0))
    probs = np.stack(probs)
    labels = store.labels
    assert result["images"] == len(store) and result["crops"] == crops
    assert result["top1_error"] == pytest.approx(np_topk_error(probs, labels, 1))
    assert result["top5_error"] == pytest.approx(np_topk_error(probs, labels, 5))
    got, _ = predict_probs(model, eval_loader(store, crops=crops, batch_size=4, device="cpu",
                                               stats=store.stats))
    np.testing.assert_allclose(got.numpy(), probs, rtol=1e-4, atol=1e-6)


def test_the_paper_net_is_evaluated_on_patches_that_carry_conv1s_padding(store_root,
                                                                         checkpoint):
    """evaluate_model and the checkpoint's input settings hand the paper net 227 patches
    (model.loader_pad), torchvision's layout 224; the probabilities are those of the 224
    patches that the net pads itself."""
    from alexnet.checkpoint import load, model_from_state

    store = open_split(store_root, "val")
    ckpt = load(checkpoint)
    assert input_settings(ckpt) == {"mean": "image", "crop": CROP_SIZE, "pad": 3}
    assert input_settings({**ckpt, "arch": "alexnet-tv"})["pad"] == 0
    net = model_from_state(ckpt, checkpoint, "cpu")
    seen: list[int] = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]))
    for crops in (1, 10):
        own_pad, _ = predict_probs(net, eval_loader(store, crops=crops, batch_size=4,
                                                    device="cpu", stats=store.stats))
        assert set(seen) == {CROP_SIZE}
        seen.clear()
        result = evaluate_model(net, store, crops=crops, batch_size=4, device="cpu")
        assert set(seen) == {CROP_SIZE + 3}
        seen.clear()
        assert result["top1_error"] == topk_errors(own_pad, torch.as_tensor(store.labels))[
            "top1_error"]
        ensemble, _ = ensemble_probs([checkpoint], store, crops=crops, batch_size=4)
        np.testing.assert_array_equal(ensemble.numpy(), own_pad.numpy())


def test_ensemble_of_a_checkpoint_with_itself_equals_it(store_root, checkpoint):
    store = open_split(store_root, "val")
    one, labels = ensemble_probs([checkpoint], store, crops=10, batch_size=3)
    two, labels2 = ensemble_probs([checkpoint, checkpoint], store, crops=10, batch_size=3)
    np.testing.assert_allclose(two.numpy(), one.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(labels.numpy(), labels2.numpy())
    np.testing.assert_allclose(one.sum(1).numpy(), 1.0, rtol=1e-5)


def test_cli_json_and_per_class_report(store_root, checkpoint, tmp_path, capsys):
    out = tmp_path / "report.json"
    twin = shutil.copyfile(checkpoint, tmp_path / "twin.pt")  # one file twice is refused
    code = main(["evaluate", str(checkpoint), str(twin), "--data", str(store_root),
                 "--crops", "1", "--device", "cpu", "--json",  # --split auto: val
                 "--out", str(out)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)  # stdout holds the JSON object only
    assert set(result) == {"top1_error", "top5_error", "images", "crops", "checkpoints"}
    assert result["images"] == 6 and result["crops"] == 1 and len(result["checkpoints"]) == 2
    store = open_split(store_root, "val")
    probs, labels = ensemble_probs([checkpoint], store, crops=1, batch_size=6)
    assert result["top1_error"] == pytest.approx(np_topk_error(probs.numpy(), labels.numpy(), 1))
    report = json.loads(out.read_text())
    predicted = probs.numpy().argmax(1)
    for row in report["classes"]:
        mask = labels.numpy() == row["label"]
        assert row["images"] == mask.sum()
        assert row["top1_error"] == pytest.approx(float(np.mean(predicted[mask] != row["label"])))
    wrong = int((predicted != labels.numpy()).sum())
    assert sum(pair["images"] for pair in report["most_confused"]) == wrong


def test_cli_table_names_the_paper_rows():
    result = {"top1_error": 0.41, "top5_error": 0.19, "images": 50000, "crops": 10,
              "checkpoints": ["a.pt"]}
    table = format_table(result, "ilsvrc2012", "val")
    top1, top5 = RESULTS["ilsvrc2012-val"]["1 CNN"]
    row = next(line for line in table.splitlines() if line.endswith("<-"))
    assert "1 CNN" in row and f"{top1:.1f}%" in row and f"{top5:.1f}%" in row
    assert "reproductions land at 42.9-43.5% top-1" in table  # Caffe's and torchvision's
    table = format_table({**result, "crops": 1}, "ilsvrc2010", "test")
    row = next(line for line in table.splitlines() if line.endswith("<-"))
    assert "centre crop" in row and f"{RESULTS['ilsvrc2010-test']['1 CNN, centre crop'][0]}" in row
    assert "no paper figure" in format_table(result, "fashion-mnist", "test")


def test_the_table_says_when_the_images_are_a_subset_of_the_papers_set():
    """A store of 60 val images (a --limit store, a part of val) was set beside the paper's
    figures on all 50,000 with no word; now the table says how many of the set's images."""
    result = {"top1_error": 0.41, "top5_error": 0.19, "images": 60, "crops": 10,
              "checkpoints": ["a.pt"]}
    assert "(on 60 of the set's 50,000 images: the paper's figures are on all of them)" in \
        format_table(result, "ilsvrc2012", "val").splitlines()
    assert "(on 1,000 of the set's 150,000 images" in format_table(
        {**result, "images": 1000}, "ilsvrc2010", "test")
    for whole in (format_table({**result, "images": 50_000}, "ilsvrc2012", "val"),
                  format_table(result, "fashion-mnist", "test")):
        assert "of the set's" not in whole


def test_the_table_figures_line_up_under_their_headings():
    """The longest paper row ("1 CNN, 6th conv layer, pre-trained") overran the name column
    and pushed its figures out from under their headings."""
    result = {"top1_error": 0.41, "top5_error": 0.19, "images": 50000, "crops": 10,
              "checkpoints": ["a.pt"]}
    for source, split in (("ilsvrc2012", "val"), ("ilsvrc2010", "test")):
        lines = format_table(result, source, split).splitlines()
        heading = lines[0]
        ends = {heading.index("top-1 error") + len("top-1 error"),
                heading.index("top-5 error") + len("top-5 error")}
        for line in lines[1:]:
            if "%" in line and not line.startswith("("):
                assert {m.end() for m in re.finditer("%", line)} == ends, line


def test_store_source_picks_the_paper_set(tmp_path):
    """The header's source kind (as `alexnet prepare` writes it) names the paper's data set."""
    image = np.zeros((1, 8, 8, 3), np.uint8)
    for kind, want in (("kaggle-cls-loc", "ilsvrc2012"), ("ilsvrc2010", "ilsvrc2010"),
                       ("ilsvrc2012", "ilsvrc2012"), ("cifar10", None)):
        store = write_store(tmp_path / kind / "val", image, [0], CLASSES[:1],
                            source={"kind": kind, "path": "/data"})
        assert paper_set(store_source(store)) == want


def test_cli_refuses_different_class_lists(store_root, checkpoint, tmp_path, capsys):
    other = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["classes"] = [{"wnid": f"x{i}", "name": f"other {i}"} for i in range(3)]
    save(other, state)
    code = main(["evaluate", str(checkpoint), str(other), "--data", str(store_root),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(other) in err


@pytest.mark.parametrize("what", ["checkpoint", "empty run", "store", "batch"])
def test_cli_bad_input_is_one_line(store_root, checkpoint, tmp_path, capsys, what):
    (tmp_path / "run").mkdir()
    args = {"checkpoint": [str(tmp_path / "missing.pt"), "--data", str(store_root)],
            "empty run": [str(tmp_path / "run"), "--data", str(store_root)],
            "store": [str(checkpoint), "--data", str(tmp_path / "nostore")],
            "batch": [str(checkpoint), "--data", str(store_root), "--batch-size", "0"]}[what]
    code = main(["evaluate", *args, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error" in err


def test_nan_outputs_are_errors_not_perfect_scores():
    """A NaN compares false with everything: the rank test alone would call it top-1."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [float("nan")] * 3, [0.1, float("nan"), 0.9]])
    labels = torch.tensor([0, 0, 2])
    assert topk_errors(probs, labels, ks=(1, 2)) == {"top1_error": 2 / 3, "top2_error": 2 / 3}


def test_broken_outputs_are_errors_at_k_beyond_the_number_of_classes():
    """Top-5 of 3 classes: every finite image is correct (its label is among the 3), a NaN or
    inf one is still an error, in the totals and in the per-class report; it ranked C (3)
    once, which k = 5 counted as correct."""
    from alexnet.evaluate import per_class_report

    probs = torch.tensor([[0.7, 0.2, 0.1], [float("nan")] * 3, [0.1, float("inf"), 0.9],
                          [0.2, 0.5, 0.3]])
    labels = torch.tensor([0, 1, 2, 2])
    assert topk_errors(probs, labels, ks=(1, 3, 5)) == {
        "top1_error": 3 / 4, "top3_error": 2 / 4, "top5_error": 2 / 4}
    rows = per_class_report(probs, labels, CLASSES)["classes"]
    assert [(r["images"], r["top1_error"], r["top5_error"]) for r in rows] == [
        (1, 0.0, 0.0), (1, 1.0, 1.0), (2, 1.0, 0.5)]


def test_cli_refuses_a_net_with_nan_weights(store_root, checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["fc8.bias"][0] = float("nan")
    save(tmp_path / "nan.pt", state)
    code = main(["evaluate", str(tmp_path / "nan.pt"), "--data", str(store_root), "--json",
                 "--device", "cpu", "--out", str(tmp_path / "report.json")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "non-finite weights in fc8.bias" in captured.err
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("where", ["file", "sys"])
def test_cli_bad_out_path_is_one_line_before_the_work(store_root, checkpoint, tmp_path,
                                                      capsys, where):
    (tmp_path / "a_file").write_text("a file, not a folder")
    out = {"file": tmp_path / "a_file" / "report.json", "sys": "/sys/alexnet/report.json"}
    code = main(["evaluate", str(checkpoint), "--data", str(store_root), "--device", "cpu",
                 "--out", str(out[where])])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.out  # no table: refused before
    assert len(captured.err.strip().splitlines()) == 1 and "--out" in captured.err


def test_auto_split_is_one_rule(tmp_path):
    from alexnet.data.splits import auto_split

    for present, want in (((), None), (("test",), "test"), (("val", "test"), "val"),
                          (("train", "val"), "val"), (("train",), None)):
        root = tmp_path / "-".join(present or ("none",))
        root.mkdir()
        for name in present:
            (root / name).mkdir(parents=True)
        assert auto_split(root) == want, present


def test_cli_same_count_other_names_says_which_class(store_root, checkpoint, tmp_path, capsys):
    renamed = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]
    renamed[1]["wnid"] = "n99999999"
    state = torch.load(checkpoint, weights_only=True)
    state["classes"] = renamed
    save(tmp_path / "renamed.pt", state)
    code = main(["evaluate", str(tmp_path / "renamed.pt"), "--data", str(store_root),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "its class 1 is 'n99999999', the store's is 'n00000001'" in err


def test_cli_out_replaces_only_an_earlier_report(store_root, checkpoint, tmp_path, capsys):
    header = store_root / "val" / "header.json"
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    kept = {p: p.read_bytes() for p in (header, notes)}
    for out, fragment in ((header, "inside the store"), (notes, "not an earlier evaluation")):
        code = main(["evaluate", str(checkpoint), "--data", str(store_root), "--device", "cpu",
                     "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == "" and fragment in captured.err
        assert len(captured.err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in kept} == kept
    out = tmp_path / "report.json"
    for _ in range(2):  # a report replaces the earlier one
        assert main(["evaluate", str(checkpoint), "--data", str(store_root), "--device", "cpu",
                     "--out", str(out)]) == 0


def test_names_that_print_alike_are_told_apart():
    """NFD `café` and NFC `café` look the same on a terminal: the message shows the code
    points and names the cause."""
    from alexnet.evaluate import class_difference

    nfc, nfd = "caf\u00e9", "cafe\u0301"
    line = class_difference(["cat", nfd], ["cat", nfc], "the store")
    assert "its class 1 is 'cafe\\u0301', the store's is 'caf\\xe9'" in line
    assert "Unicode normalisation" in line
    assert class_difference(["a"], ["b"], "the store") == \
        "its class 0 is 'a', the store's is 'b' (same count, other names)"


# ------------------------------------------------------------------ concurrent writers

def test_a_second_evaluate_writing_the_same_report_is_refused_at_once(store_root, checkpoint,
                                                                    tmp_path, monkeypatch,
                                                                    capsys):
    """Two evaluates with one --out both ended 0, each naming the report as its own; the file
    held the last one's. Now the second is refused at once while the first computes."""
    import alexnet.evaluate

    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save(other, make_state(AlexNet(num_classes=3, width=0.0625), classes=CLASSES,
                           stats=open_split(store_root, "train").stats, epoch=1, step=0))
    out = tmp_path / "report.json"
    write_json, second = alexnet.evaluate.write_json, []

    def b_meanwhile(*args, **kwargs):
        if not second:  # A has evaluated, its report not yet written
            second.append("B")
            second[0] = main(["evaluate", str(other), "--data", str(store_root), "--device",
                              "cpu", "--out", str(out)])
            second.append(capsys.readouterr().err.strip())
        return write_json(*args, **kwargs)

    monkeypatch.setattr(alexnet.evaluate, "write_json", b_meanwhile)
    assert main(["evaluate", str(checkpoint), "--data", str(store_root), "--device", "cpu",
                 "--out", str(out)]) == 0
    code, err = second
    assert code == 2 and err.count("\n") == 0, err
    assert f"--out {out}: another `alexnet evaluate` is writing this report" in err
    assert "wait for it to end, or choose another --out" in err
    assert json.loads(out.read_text())["checkpoints"] == [str(checkpoint)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt", "report.json"]


def run_folder_of(checkpoint, folder):
    """A run folder as train leaves it: config.json, best.pt, and its lock file."""
    import shutil

    folder.mkdir()
    (folder / "config.json").write_text("{}\n")
    shutil.copyfile(checkpoint, folder / "best.pt")
    (folder / ".lock").touch()
    return folder


def test_a_report_into_a_run_folder_being_trained_is_refused(store_root, checkpoint, tmp_path,
                                                             capsys):
    """`evaluate RUN` while RUN trains wrote its report beside a best.pt replaced every epoch
    (the report soon described a net the folder no longer held). Refused at once now; the
    checkpoint itself can still be evaluated with --out elsewhere."""
    from _stops import held_elsewhere, tree

    run = run_folder_of(checkpoint, tmp_path / "run")
    with held_elsewhere(run / ".lock"):
        before = tree(run)
        code = main(["evaluate", str(run), "--data", str(store_root), "--device", "cpu"])
        captured = capsys.readouterr()
        assert tree(run) == before
        assert code == 2 and captured.out == "", captured.out
        err = captured.err.strip().splitlines()[-1]  # after "RUN: evaluating best.pt (...)"
        assert f"{run}: the report's folder (beside the checkpoint) is a run folder that an " \
               "`alexnet train` is training into" in err
        assert "give --out outside the run folder" in err
        out = tmp_path / "now.json"
        assert main(["evaluate", str(run), "--data", str(store_root), "--device", "cpu",
                     "--out", str(out)]) == 0
    assert json.loads(out.read_text())["checkpoints"] == [str(run / "best.pt")]
    assert main(["evaluate", str(run), "--data", str(store_root), "--device", "cpu"]) == 0
    assert (run / "best.val.10crop.per-class.json").is_file()  # once the run has ended


def test_a_checkpoint_replaced_while_read_is_read_whole(store_root, checkpoint, tmp_path,
                                                        monkeypatch, capsys):
    """train renames each new best.pt over the old one: an evaluate that has just read it
    (memory-mapped) still evaluates the net it read, whole."""
    import alexnet.checkpoint

    run = run_folder_of(checkpoint, tmp_path / "run")
    diverged = AlexNet(num_classes=3, width=0.0625)
    with torch.no_grad():
        for weight in diverged.parameters():
            weight.fill_(float("nan"))  # evaluate refuses it: any byte of it read would show
    newer = save(tmp_path / "newer.pt", make_state(
        diverged, classes=CLASSES, stats=open_split(store_root, "train").stats, epoch=2,
        step=0))
    load = alexnet.checkpoint.load

    def load_then_replace(path, *args, **kwargs):
        state = load(path, *args, **kwargs)
        os.replace(newer, run / "best.pt")  # as checkpoint.save does
        return state

    def top1(what, out):
        assert main(["evaluate", str(what), "--data", str(store_root), "--device", "cpu",
                     "--json", "--out", str(tmp_path / out)]) == 0
        return json.loads(capsys.readouterr().out)["top1_error"]

    monkeypatch.setattr(alexnet.checkpoint, "load", load_then_replace)
    during = top1(run, "during.json")
    monkeypatch.undo()
    assert during == top1(checkpoint, "original.json")
    assert main(["evaluate", str(run), "--data", str(store_root), "--device", "cpu",
                 "--out", str(tmp_path / "after.json")]) == 2  # the diverged net is there now


def test_the_wrong_counts_of_shares_add_up_to_the_whole_splits(store_root):
    """evaluate_model's top-1/top-5 wrong counts (what torchrun's ranks sum over their shares
    of a validation) are topk_errors' counts: shares of 2 and 3 images (and an empty one) add
    up to the counts, and the errors, of the 5 images evaluated at once."""
    from alexnet.evaluate import topk_wrong

    probs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    labels = torch.tensor([0, 0, 1])  # right; third; tied first (a tie counts against)
    assert topk_wrong(probs, labels, ks=(1, 2)) == {"top1_wrong": 2, "top2_wrong": 1}
    with pytest.raises(ValueError, match="probs"):
        topk_wrong(probs, labels[:2])
    store = open_split(store_root, "val")
    weight = np.random.default_rng(5).normal(size=(3, 3, CROP_SIZE, CROP_SIZE)) / 2000.0
    model = PixelLinear(weight)
    whole = evaluate_model(model, store, batch_size=4, indices=range(5))
    parts = [evaluate_model(model, store, batch_size=4, indices=part)
             for part in (range(0, 2), range(2, 5), range(5, 5))]
    assert [p["images"] for p in parts] == [2, 3, 0]
    for k in (1, 5):
        total = sum(p[f"top{k}_wrong"] for p in parts)
        assert total == whole[f"top{k}_wrong"]
        assert total / 5 == whole[f"top{k}_error"]
    assert 0 < whole["top1_wrong"] < 5  # not all right or all wrong: the sum says something


# `alexnet evaluate` (the real command) with a first Ctrl-C in the forward pass of its second
# batch, and a second one sent by the read-ahead job of its third batch (running meanwhile)
# once the command's teardown waits for that job (ThreadPoolExecutor.shutdown on the stack of
# the main thread); BOX/second says it was sent
SECOND_CTRL_C_IN_TEARDOWN = """
import os, signal, sys, threading, time
from pathlib import Path
import alexnet.data.loader as loader
import alexnet.evaluate as evaluate
from alexnet.cli import main

box = Path(os.environ["BOX"])
real_read, real_predict = loader.read_batch, evaluate.predict_probs
reads, running, first = [0], threading.Event(), threading.Event()
count = threading.Lock()

def in_teardown():
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name == "shutdown":
            return True
        frame = frame.f_back
    return False

def read_batch(*args, **kwargs):
    with count:
        reads[0] += 1
        third = reads[0] == 3
    if third:
        running.set()
        first.wait(60)
        t0 = time.monotonic()
        while not in_teardown() and time.monotonic() - t0 < 60:
            time.sleep(0.01)
        (box / "second").write_text("sent")
        os.kill(os.getpid(), signal.SIGINT)
    return real_read(*args, **kwargs)

class FirstCtrlC:
    def __init__(self, model):
        self.model, self.calls = model, 0
    def __getattr__(self, name):
        return getattr(self.model, name)
    def __call__(self, x):
        self.calls += 1
        if self.calls == 2:
            running.wait(60)
            first.set()
            os.kill(os.getpid(), signal.SIGINT)
        return self.model(x)

loader.read_batch = read_batch
evaluate.predict_probs = lambda model, *args, **kwargs: real_predict(FirstCtrlC(model), *args,
                                                                     **kwargs)
sys.argv = ["alexnet", *sys.argv[1:]]
sys.exit(main())
"""


def test_a_second_ctrl_c_in_the_teardown_is_quiet(store_root, checkpoint, tmp_path):
    """A second Ctrl-C while evaluate tears its loader down (after a first one) was raised in
    the loader generator's finaliser, where Python prints "Exception ignored in <generator
    ...>" and a traceback; now the teardown runs where the first stop is handled: the command
    still ends in its one line and 130, and writes no report."""
    script, out = tmp_path / "entry.py", tmp_path / "report.json"
    script.write_text(SECOND_CTRL_C_IN_TEARDOWN)
    env = {**os.environ, "BOX": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), "evaluate", str(checkpoint), "--data",
                             str(store_root), "--batch-size", "1", "--device", "cpu", "--out",
                             str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert (tmp_path / "second").exists(), result.stderr[-3000:]
    assert result.returncode == 130, result.stderr[-3000:]
    assert result.stderr == "alexnet evaluate: interrupted\n", result.stderr[-3000:]
    assert not out.exists()


@pytest.mark.parametrize("num_classes", [3, 40])
def test_per_class_report_equals_counting_image_by_image(num_classes):
    """Each class's errors and the most frequent confusions (by count, then by (true,
    predicted)), against plain counting; the report counts per class in one pass (it took a
    mask of every image per class and sorted all C^2 pairs in Python: 4.6 s at 1,000)."""
    from alexnet.evaluate import per_class_report

    gen = torch.Generator().manual_seed(num_classes)
    labels = torch.randint(0, num_classes - 1, (300,), generator=gen)  # the last: no image
    probs = torch.rand(300, num_classes, generator=gen).softmax(1)
    report = per_class_report(probs, labels, None, pairs=7)
    p, y = probs.numpy(), labels.tolist()
    for row in report["classes"]:
        c = row["label"]
        mine = [i for i in range(300) if y[i] == c]
        ranks = [int((p[i] > p[i, c]).sum()) for i in mine]  # no ties in random floats
        assert row["images"] == len(mine)
        if not mine:
            assert row["top1_error"] is None and row["top5_error"] is None
            continue
        assert row["top1_error"] == pytest.approx(sum(r >= 1 for r in ranks) / len(mine))
        assert row["top5_error"] == pytest.approx(sum(r >= 5 for r in ranks) / len(mine))
    pairs: dict[tuple[int, int], int] = {}
    for i in range(300):
        guess = int(p[i].argmax())
        if guess != y[i]:
            pairs[y[i], guess] = pairs.get((y[i], guess), 0) + 1
    expected = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:7]
    assert [((r["true"], r["predicted"]), r["images"]) for r in report["most_confused"]] == \
        expected


def test_the_file_chosen_in_a_run_folder_is_said_without_nested_brackets(store_root,
                                                                         checkpoint, tmp_path,
                                                                         capsys):
    """evaluate, predict and figures said "using checkpoint.pt (the run's last epoch (no
    best.pt))": the reason came with brackets of its own."""
    import shutil

    from alexnet.checkpoint import trained_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(checkpoint, run / "checkpoint.pt")
    assert main(["evaluate", str(run), "--data", str(store_root), "--device", "cpu",
                 "--out", str(tmp_path / "report.json")]) == 0
    assert capsys.readouterr().err.splitlines()[0] == \
        f"{run}: evaluating checkpoint.pt (the run's last epoch; it has no best.pt)"
    without_best = trained_checkpoint(run)[1]
    shutil.copyfile(checkpoint, run / "best.pt")
    for why in (without_best, trained_checkpoint(run)[1]):  # said inside brackets
        assert "(" not in why and ")" not in why, why


def test_no_images_have_no_error_rate_rather_than_zero():
    """topk_errors and error_rates of no images are NaN at every k (topk_errors said 0%,
    error_rates NaN: a split with no images looked perfect)."""
    from alexnet.evaluate import error_rates

    empty = topk_errors(torch.zeros(0, 7), torch.zeros(0, dtype=torch.long), ks=(1, 5))
    assert list(empty) == ["top1_error", "top5_error"]
    assert all(math.isnan(v) for v in empty.values())
    none = error_rates({"top1_wrong": 0, "top5_wrong": 0}, 0)
    assert list(none) == ["top1_error", "top5_error"]
    assert all(math.isnan(v) for v in none.values())
    assert error_rates({"top1_wrong": 3}, 4) == {"top1_error": 0.75}
