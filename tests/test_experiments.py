"""`alexnet relu-vs-tanh` (figure 1) and `alexnet ablate`: the lr search, per-step runs and
their crossings on Fashion-MNIST, ablations that each change exactly one key, over seeds,
with deltas, intervals and verdicts."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _stops import ctrl_c_at_step, held_elsewhere, tree  # a lock held elsewhere
from PIL import Image

from alexnet import paper
from alexnet.cli import main
from alexnet.config import resolve
from alexnet.data.store import write_store
from alexnet.errors import UserError
from alexnet.experiments import ablate as ab
from alexnet.experiments import crossing, speedup
from alexnet.experiments import relu_tanh as rt

# ----------------------------------------------------------------------------- relu-vs-tanh


@pytest.fixture
def one_thread():
    """The small net trains many times faster on one thread when the cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(lr: float, curve: list[float], threshold: float = 0.25) -> dict:
    """A search run whose running error after each step is `curve` (window 1)."""
    wrong = [100 if math.isnan(e) else round(100 * e) for e in curve]
    return {"lr": lr, "final_error": curve[-1], "crossings": {
        f"{threshold:g}": crossing.crossing(wrong, [100] * len(curve), 1, threshold)}}


def test_lr_search_picks_the_fewest_updates_to_threshold():
    runs = [_run(0.001, [0.8, 0.6, 0.5, 0.4]),  # never reaches
            _run(0.01, [0.6, 0.4, 0.3, 0.2]),  # reaches after 3 updates
            _run(0.03, [0.5, 0.3, 0.2, 0.1]),  # after 2: the fastest
            _run(0.1, [0.9, 0.4, 0.24, 0.05])]  # after 2 too, with the lowest final error
    assert speedup.select_best(runs, 0.25)["lr"] == 0.03  # the tie goes to the smaller rate
    # a run that reaches the threshold beats one that does not, whatever their final errors
    assert speedup.select_best([_run(0.1, [0.5, 0.2, 0.24], 0.22),
                                _run(0.01, [0.6, 0.3, 0.23], 0.22)], 0.22)["lr"] == 0.1


def test_lr_search_without_any_run_at_threshold_takes_the_lowest_final_error():
    runs = [_run(0.001, [0.8, 0.7]), _run(0.01, [0.7, 0.5]), _run(0.1, [0.9, float("nan")])]
    assert speedup.select_best(runs, 0.25)["lr"] == 0.01
    with pytest.raises(UserError):
        speedup.select_best([], 0.25)


def test_lr_search_stops_runs_that_cannot_win_and_flags_a_best_rate_on_the_edge():
    """Synthetic training: a rate's curve falls faster the larger the rate, up to 0.1."""
    calls = []

    def train(lr: float, seed: int, thresholds: tuple, stop) -> dict:
        tracker = crossing.Tracker(2, thresholds)
        speed = min(lr, 0.1) if lr <= 0.1 else 0.01
        for step in range(200):
            tracker.add(round(100 * max(0.9 - speed * 3 * step, 0.05)), 100)
            if stop(tracker):
                break
        calls.append((lr, tracker.steps))
        return {"lr": lr, "final_error": tracker.error, "crossings": {
            f"{t:g}": tracker.crossed.get(t) for t in thresholds}}

    best, runs, edge = speedup.search(train, [0.3, 0.03, 0.1], 0.25, 2, seed=0)
    assert best["lr"] == 0.1 and edge == "inside" and [r["lr"] for r in runs] == [0.03, 0.1, 0.3]
    # 0.03 ran until it crossed; 0.1 crossed sooner; 0.3 stopped where 0.1 had crossed
    assert calls[0][1] > calls[1][1] == calls[2][1]
    assert speedup.search(train, [0.01, 0.03], 0.25, 2, seed=0)[2] == "highest"
    assert speedup.search(train, [0.1, 0.3, 1.0], 0.25, 2, seed=0)[2] == "lowest"


def test_four_layer_net_reads_any_size_and_uses_each_units_gain():
    for size in (16, 28, 32):
        net = rt.FourLayerNet(10, size, "tanh")
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 10)
    net = rt.FourLayerNet(10, 32, "relu")
    weighted = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(weighted) == 4  # "a four-layer convolutional neural network"
    assert [m.out_channels for m in weighted[:3]] == [32, 32, 64]
    conv2 = weighted[1].weight  # fan-in 32 * 5 * 5: std sqrt(2 / 800) for ReLU
    assert conv2.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.05)
    tanh_conv2 = rt.FourLayerNet(10, 32, "tanh").conv[3].weight
    assert tanh_conv2.std().item() == pytest.approx(5 / 3 / math.sqrt(800), rel=0.05)


def test_inputs_are_centred_and_divided_by_the_pixel_std(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    images[..., 1] //= 3  # channels with different spreads
    store = write_store(tmp_path / "train", images, np.arange(20) % 2,
                        [{"wnid": "a", "name": "a"}, {"wnid": "b", "name": "b"}])
    mean, divisor = rt.input_transform(store.stats, "std")
    x = images.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), x.mean(0).transpose(2, 0, 1), rtol=1e-6)
    per_channel_var = x.reshape(-1, 3).var(axis=0)  # about each channel's mean
    assert divisor == pytest.approx(math.sqrt(per_channel_var.mean()))
    assert rt.input_transform(store.stats, "none")[1] == 1.0


def test_training_is_seeded_and_deterministic_on_the_cpu(one_thread):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 40)
    kwargs = dict(activation="relu", lr=0.01, steps=7, mean=torch.zeros(3, 12, 12),
                  divisor=64.0, num_classes=3, seed=5, batch_size=16, window=2,
                  thresholds=(0.5,))
    a = rt.train_run(images, labels, **kwargs)
    b = rt.train_run(images, labels, **kwargs)
    assert a["wrong"] == b["wrong"] and a["crossings"] == b["crossings"]
    # 40 images in minibatches of 16: 16, 16, 8, then the next epoch; 7 steps in all
    assert a["seen"] == [16, 16, 8, 16, 16, 8, 16] and a["ended"] == "budget"
    stopped = rt.train_run(images, labels, **{**kwargs, "thresholds": ()},
                           stop=lambda tracker: tracker.steps == 3)
    assert stopped["steps"] == 3 and stopped["ended"] == "stopped"
    assert stopped["wrong"] == a["wrong"][:3]


def test_a_greyscale_store_is_recognised():
    grey = np.repeat(np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3)[..., :1], 3, axis=3)
    assert rt.is_grey(grey)
    colour = grey.copy()
    colour[0, 0, 0, 2] += 1
    assert not rt.is_grey(colour)


def test_default_threshold_is_the_papers_on_cifar10_and_documented_on_fashion_mnist():
    cifar = [{"wnid": n, "name": n} for n in rt.CIFAR10_NAMES]
    assert rt.default_threshold(cifar)[0] == paper.RELU_TANH_THRESHOLD
    fashion = [{"wnid": n, "name": n.capitalize()} for n in rt.FASHION_MNIST_NAMES]
    assert rt.default_threshold(fashion)[0] == rt.FASHION_MNIST_THRESHOLD


@pytest.fixture(scope="module")
def fashion_store(fashion_mnist_dir, tmp_path_factory) -> Path:
    """600 Fashion-MNIST training images at 16x16 (an equal share per class)."""
    from alexnet.data.prepare import prepare

    out = tmp_path_factory.mktemp("fm16")
    prepare(fashion_mnist_dir, out, size=16, limit=600, splits="train", workers=1)
    return out


def test_relu_vs_tanh_on_fashion_mnist_gives_the_ratio_over_seeds(fashion_store, tmp_path,
                                                                  capsys, one_thread):
    out = tmp_path / "fig1"
    code = main(["relu-vs-tanh", "--data", str(fashion_store), "--limit", "300",
                 "--steps", "40", "--seeds", "2", "--window", "4", "--lrs", "0.01", "0.03",
                 "--threshold", "0.6", "--thresholds", "0.7", "0.6", "0.01",
                 "--batch-size", "32", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "relu_vs_tanh.json").read_text())
    assert result["images"] == 300 and result["image_size"] == 16
    assert result["channels"] == 1  # Fashion-MNIST is grey: fed as one channel
    assert result["seeds"] == [1, 2] and result["search_seed"] == 0
    for activation in ("relu", "tanh"):
        search = result["search"][activation]
        assert [r["lr"] for r in search] == [0.01, 0.03]
        assert result["best_lr"][activation] == speedup.select_best(search, 0.6)["lr"]
        assert result["lr_edge"][activation] in ("lowest", "highest")  # two rates: an edge
        for run, seed in zip(result["runs"][activation], (1, 2), strict=True):
            assert run["seed"] == seed and run["lr"] == result["best_lr"][activation]
            # each recorded crossing is the one read again from the run's logged steps
            for t in (0.7, 0.6, 0.01):
                assert run["crossings"][f"{t:g}"] == crossing.crossing(
                    run["wrong"], run["seen"], 4, t)
    rows = {row["threshold"]: row for row in result["rows"]}
    assert sorted(rows) == [0.01, 0.6, 0.7]
    assert rows[0.01]["kind"] == "none"  # nobody reaches 1% in 40 steps
    row = rows[0.6]
    if row["kind"] == "ratio":  # the ratio of geometric means of the seeds' epochs
        e = {a: np.log(row[a]["epochs"]) for a in ("relu", "tanh")}
        assert row["ratio"]["estimate"] == pytest.approx(np.exp(e["tanh"].mean()
                                                                - e["relu"].mean()))
        assert row["ratio"]["low"] <= row["ratio"]["estimate"] <= row["ratio"]["high"]
    assert "tanh/ReLU" in printed and "the best may lie outside it" in printed
    with Image.open(out / "figure1.png") as png:
        png.verify()


def test_relu_vs_tanh_refuses_bad_options_in_one_line(fashion_store, tmp_path, capsys,
                                                     monkeypatch):
    assert main(["relu-vs-tanh", "--data", str(fashion_store), "--threshold", "1.5"]) == 2
    assert main(["relu-vs-tanh", "--data", str(tmp_path / "nothing")]) == 2
    assert main(["relu-vs-tanh", "--data", str(fashion_store), "--limit", "0"]) == 2
    assert main(["relu-vs-tanh", "--data", str(fashion_store), "--thresholds", "0"]) == 2
    monkeypatch.setattr(rt, "MAX_IN_MEMORY", 100 * 16 * 16 * 3)  # a store too big to hold
    assert main(["relu-vs-tanh", "--data", str(fashion_store), "--limit", "101"]) == 2
    # options before the data (a missing store is not what is said), no output in a store
    assert main(["relu-vs-tanh", "--data", str(tmp_path / "nothing"), "--steps", "1"]) == 2
    monkeypatch.setattr(rt, "MAX_IN_MEMORY", 10 ** 9)
    assert main(["relu-vs-tanh", "--data", str(fashion_store), "--limit", "50",
                 "--out", str(fashion_store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 7 and all(line.startswith("alexnet relu-vs-tanh: error:") for line in err)
    assert "--steps 1: give at least the window" in err[5]
    assert "is the store" in err[6] and not (fashion_store / "relu_vs_tanh.json").exists()


def test_relu_vs_tanh_refuses_an_empty_training_split_naming_it(tmp_path, capsys):
    """An empty train split was read as a greyscale set of 0 images and refused as
    "--batch-size 128: give 1 to 0", an option the user had not given."""
    store, classes = tmp_path / "store", [{"wnid": "c0", "name": "class 0"}]
    one = write_store(tmp_path / "one" / "train", np.zeros((1, 16, 16, 3), np.uint8), [0],
                      classes)
    write_store(store / "train", np.zeros((0, 16, 16, 3), np.uint8), [], classes,
                stats=one.stats)  # an empty split has none of its own
    out = tmp_path / "fig1"
    assert main(["relu-vs-tanh", "--data", str(store), "--out", str(out),
                 "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"alexnet relu-vs-tanh: error: {store / 'train'}: the train split "
                            "holds no images; prepare it again\n")
    assert captured.out == "" and not out.exists()


@pytest.fixture(scope="module")
def noise_store(tmp_path_factory) -> Path:
    """40 random 16x16 training images of 4 classes: enough for runs of a few steps."""
    root = tmp_path_factory.mktemp("noise16")
    rng = np.random.default_rng(0)
    write_store(root / "train", rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8),
                np.arange(40) % 4, [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(4)])
    return root


def short_relu_vs_tanh(data: Path, out: Path) -> list[str]:
    return ["relu-vs-tanh", "--data", str(data), "--steps", "4", "--seeds", "1", "--window",
            "2", "--lrs", "0.01", "--batch-size", "8", "--device", "cpu", "--no-progress",
            "--out", str(out)]


def no_training(*args, **kwargs):
    raise AssertionError("a refused relu-vs-tanh trained")


def test_a_second_relu_vs_tanh_into_the_same_folder_is_refused_before_training(
        noise_store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fig1"
    out.mkdir()
    (out / "relu_vs_tanh.json").write_text('{"the other command": 1}\n')
    monkeypatch.setattr(rt, "train_run", no_training)
    with held_elsewhere(out / ".lock"):
        before = tree(out)
        code = main(short_relu_vs_tanh(noise_store, out))
        after = tree(out)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"{out}: another `alexnet relu-vs-tanh` is writing this folder" in err
    assert "wait for it to end, or choose another --out" in err
    assert after == before


def test_relu_vs_tanh_stopped_midway_says_nothing_was_written(noise_store, tmp_path,
                                                              monkeypatch, capsys):
    out = tmp_path / "fig1"
    train_run, calls = rt.train_run, []

    def interrupted_second(*args, **kwargs):
        calls.append(kwargs["activation"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_run(*args, **kwargs)

    monkeypatch.setattr(rt, "train_run", interrupted_second)
    assert main(short_relu_vs_tanh(noise_store, out)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1] == "alexnet relu-vs-tanh: interrupted", err
    assert err[0] == (f"alexnet relu-vs-tanh: note: stopped before writing anything to {out} "
                      "(results are written once both units are trained; an earlier result "
                      "there is kept); rerunning the same command starts over")
    assert os.listdir(out) == [".lock"]
    monkeypatch.undo()
    assert main(short_relu_vs_tanh(noise_store, out)) == 0  # the rerun, from the start
    assert sorted(os.listdir(out)) == [".lock", "figure1.png", "relu_vs_tanh.json"]


# ----------------------------------------------------------------------------------- ablate

CLASSES = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(4)]
TINY = ["model.width=0.125", "optim.batch_size=8", "run.progress=false", "run.device=cpu"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """16 training and 8 validation 232x232 images whose class is their dominant colour."""
    root = tmp_path_factory.mktemp("ablate_store")
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 16), ("val", 8)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 90, (n, 232, 232, 3), dtype=np.uint8)
        for c in range(3):
            images[labels == c, :, :, c] += 150
        splits[split] = write_store(root / split, images, labels, CLASSES,
                                    stats=splits["train"].stats if split == "val" else None)
    return root


@pytest.fixture(scope="module")
def ablation(tiny_store, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ablate") / "run"
    base = resolve("paper", TINY, {"data.store": str(tiny_store)})
    result = ab.ablate(base, out, ab.choose_variants(None), budget_steps=2, seeds=2)
    return {"out": out, "base": base, **result}


def test_ablate_trains_every_variant_with_exactly_one_switch(ablation):
    configs, out = ablation["configs"], ablation["out"]
    assert list(configs) == ["paper"] + [v.name for v in ab.VARIANTS]
    expected = {"no-lrn": ("model.lrn", False), "no-overlap": ("model.overlap_pool", False),
                "one-column": ("model.columns", 1), "tanh": ("model.activation", "tanh"),
                "no-dropout": ("model.dropout", 0.0), "no-pca": ("data.pca", False)}
    # what each run really trained with: the config.json train wrote into its run folder
    written = {name: json.loads((out / name / "seed-0" / "config.json").read_text())
               for name in configs}
    paper_run = written["paper"]
    assert paper_run["model"] == {**paper_run["model"], "lrn": True, "overlap_pool": True,
                                  "columns": 2, "activation": "relu", "dropout": 0.5}
    assert paper_run["data"]["pca"] is True and paper_run["model"]["width"] == 0.125
    for name, (key, value) in expected.items():
        section, field = key.split(".")
        diff = {(s, k) for s in paper_run for k in paper_run[s]
                if paper_run[s][k] != written[name][s][k]} - {("run", "out")}
        assert diff == {(section, field)}, name
        assert written[name][section][field] == value
        assert ab.config_difference(configs["paper"], configs[name]) == \
            {key: (paper_run[section][field], value)}
    for name in configs:  # one equal budget, the same two seeds for every net
        for seed in (0, 1):
            folder = out / name / f"seed-{seed}"
            done = json.loads((folder / ab.RESULT).read_text())
            # the budget of 2 steps is the one epoch of 16 images in batches of 8 that
            # ablate sets: the run completed (a budget that ends mid-epoch says max_steps)
            assert done["steps"] == 2 and done["stopped"] == "completed"
            ran = json.loads((folder / "config.json").read_text())["run"]
            assert ran["max_steps"] == 2 and ran["seed"] == seed


def test_ablate_writes_the_table_with_deltas_their_intervals_and_the_papers(ablation):
    from scipy import stats as sps

    out, rows = ablation["out"], ablation["rows"]
    results = ablation["results"]
    assert [r["variant"] for r in rows] == list(ablation["configs"])
    by_name = {r["variant"]: r for r in rows}
    base1 = [100 * r["top1_error"] for r in results["paper"]]
    for name, row in by_name.items():
        top1 = [r["top1_error"] for r in results[name]]
        assert row["seeds"] == 2 and row["top1_errors"] == top1
        assert row["top1_mean"] == pytest.approx(np.mean(top1))
        assert row["top1_sd"] == pytest.approx(np.std(top1, ddof=1))
        if name == "paper":
            continue
        ours = [100 * v for v in top1]
        d = row["delta_top1"]
        assert d["estimate"] == pytest.approx(np.mean(ours) - np.mean(base1))
        if np.std(ours) + np.std(base1) > 0:  # Welch's interval, as scipy computes it
            ci = sps.ttest_ind(ours, base1, equal_var=False).confidence_interval(0.95)
            assert (d["low"], d["high"]) == pytest.approx((ci.low, ci.high))
        excluded = not d["low"] <= 0 <= d["high"]
        assert row["verdict_top1"].startswith("distinguishable" if excluded else "not")
    assert (by_name["no-lrn"]["paper_delta_top1"], by_name["no-lrn"]["paper_delta_top5"]) == \
        paper.ABLATION_DELTAS["lrn"]
    assert by_name["one-column"]["paper_delta_top1"] == paper.ABLATION_DELTAS["two_columns"][0]
    assert by_name["no-overlap"]["paper_delta_top5"] == \
        paper.ABLATION_DELTAS["overlapping_pool"][1]
    assert by_name["no-pca"]["paper_delta_top1"] == paper.ABLATION_DELTAS["pca_colour"][0]
    assert by_name["tanh"]["paper_delta_top1"] is None and by_name["tanh"]["paper_note"]
    assert by_name["no-dropout"]["paper_delta_top1"] is None
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and "Welch" in saved["note"]
    assert saved["seeds"] == [0, 1]
    with open(out / "ablation.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == [r["variant"] for r in rows]
    assert float(table[1]["top1_mean"]) == pytest.approx(rows[1]["top1_mean"])
    assert float(table[1]["delta_top1_low"]) == pytest.approx(rows[1]["delta_top1"]["low"])
    md = (out / "ablation.md").read_text()
    assert "| no-lrn | model.lrn=false | 2 |" in md and "+1.40" in md and "n/a" in md
    assert md.count("- no-lrn: top-1 delta") == 1  # one sentence per variant
    assert sum(line.startswith("- ") for line in md.splitlines()) == len(ab.VARIANTS)


def test_the_same_config_twice_is_not_distinguishable_from_zero(ablation, tmp_path):
    """The paper net trained again, as if it were a variant: its delta must read as noise."""
    from alexnet.config import from_dict

    again = ab.seed_configs(from_dict({"run": {"out": str(tmp_path / "again")}},
                                      ablation["configs"]["paper"]), 2)
    runs = [ab.train_variant("paper again", c, log=lambda *_: None) for c in again]
    row = ab.delta_row("paper again", "-", runs, ablation["results"]["paper"], (None, None))
    for k in ("top1", "top5"):
        assert row[f"delta_{k}"]["estimate"] == pytest.approx(0.0, abs=1e-9)
        assert row[f"verdict_{k}"].startswith("not distinguishable from 0")
    assert "not distinguishable from 0" in ab.sentence({**row, "paper_note": "no figure"})


def test_a_second_ablate_reuses_the_finished_runs(ablation, monkeypatch):
    import alexnet.train

    def no_training(config):
        raise AssertionError("trained again")

    monkeypatch.setattr(alexnet.train, "train", no_training)
    again = ab.ablate(ablation["base"], ablation["out"], ab.choose_variants(None),
                      budget_steps=2, seeds=2, log=lambda *_: None)
    assert again["rows"] == ablation["rows"]
    with pytest.raises(UserError, match="another config"):  # a different budget is refused
        ab.ablate(ablation["base"], ablation["out"], ab.choose_variants(["no-lrn"]),
                  budget_steps=3, seeds=2, log=lambda *_: None)


@pytest.mark.parametrize("junk", ["{not json", "[1, 2]", "{}", "\udcff"])
def test_a_damaged_result_is_refused_naming_the_folder_to_delete(junk, tmp_path, monkeypatch):
    """A result.json that does not parse (or is not ablate's) is not another config."""
    import alexnet.train

    def no_training(config):
        raise AssertionError("trained again")

    monkeypatch.setattr(alexnet.train, "train", no_training)
    folder = tmp_path / "paper" / "seed-0"
    folder.mkdir(parents=True)
    (folder / ab.RESULT).write_bytes(junk.encode("utf-8", "surrogateescape"))
    config = resolve("paper", TINY, {"run.out": str(folder)})
    with pytest.raises(UserError) as err:
        ab.train_variant("paper seed 0", config, log=lambda *_: None)
    message = str(err.value)
    assert "damaged" in message and f"delete the run folder {folder}" in message
    assert "another config" not in message and "\n" not in message
    assert (folder / ab.RESULT).read_bytes() == junk.encode("utf-8", "surrogateescape")


def test_budget_is_steps_or_epochs_and_steps_set_the_epochs_they_span():
    base = resolve("paper", TINY)
    steps = ab.budget_config(base, 10, None, train_images=20)  # 2 steps of 8 per epoch
    assert steps.run.max_steps == 10 and steps.optim.epochs == 5
    # 10 steps of 8 on 1,000 images span one epoch: set to 1, down from the paper's 90
    assert base.optim.epochs == paper.EPOCHS
    assert ab.budget_config(base, 10, None, train_images=1000).optim.epochs == 1
    epochs = ab.budget_config(base, None, 3, train_images=20)
    assert epochs.optim.epochs == 3 and epochs.run.max_steps == 0
    with pytest.raises(UserError):
        ab.budget_config(base, 10, 3)
    with pytest.raises(UserError):
        ab.budget_config(base, 0, None)


def test_ablate_refuses_bad_input(tiny_store, tmp_path, capsys):
    with pytest.raises(UserError, match="nosuch"):
        ab.choose_variants(["nosuch"])
    base = resolve("paper", TINY + ["model.lrn=false"], {"data.store": str(tiny_store)})
    with pytest.raises(UserError, match="no-lrn"):  # the variant would be the paper net
        ab.variant_configs(base, ab.choose_variants(["no-lrn"]), tmp_path)
    no_shift = resolve("paper", TINY + ["data.pca_scale=0"], {"data.store": str(tiny_store)})
    with pytest.raises(UserError, match="data.pca_scale=0 .*no-pca"):  # no colour shift already
        ab.variant_configs(no_shift, ab.choose_variants(["no-pca"]), tmp_path)
    no_val = tmp_path / "no_val"
    no_val.mkdir()
    (no_val / "train").symlink_to(tiny_store / "train")
    assert main(["ablate", "--data", str(no_val), "--budget-steps", "1", "--out",
                 str(tmp_path / "x")]) == 2
    assert main(["ablate", "--data", str(tiny_store), "--variants", "nosuch"]) == 2
    assert main(["ablate", "--data", str(tmp_path / "nostore"), "--budget-steps", "1",
                 "--out", str(tmp_path / "y")]) == 2
    assert main(["ablate", "--data", str(tiny_store), "--budget-steps", "1", "--out",
                 str(tiny_store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("alexnet ablate: error:") for line in err)
    assert "is the store" in err[3] and not (tiny_store / "paper").exists()
    assert err[2].endswith("nostore: no such store; make one with `alexnet prepare SOURCE "
                           f"{tmp_path / 'nostore'}`")


def test_an_interrupted_variant_is_resumed_not_restarted(ablation, tmp_path, monkeypatch,
                                                        capsys):
    from alexnet import checkpoint

    out = tmp_path / "abl"
    variants = ab.choose_variants(["no-lrn"])
    ctrl_c_at_step(monkeypatch, 3)  # no-lrn's first step, after the paper net's two
    with pytest.raises(KeyboardInterrupt):
        ab.ablate(ablation["base"], out, variants, budget_steps=2, seeds=1,
                  log=lambda *_: None)
    monkeypatch.undo()
    assert checkpoint.load(out / "no-lrn" / "seed-0" / "checkpoint.pt")["global_step"] == 1
    capsys.readouterr()
    result = ab.ablate(ablation["base"], out, variants, budget_steps=2, seeds=1,
                       log=lambda *_: None)
    folder = out / "no-lrn" / "seed-0"
    assert f"resuming from {folder / 'checkpoint.pt'}" in capsys.readouterr().out
    assert result["results"]["no-lrn"][0]["steps"] == 2
    # and it ends with the weights of the uninterrupted run (bit-identical on the CPU)
    resumed = checkpoint.load(folder / "checkpoint.pt")["model"]
    whole = checkpoint.load(ablation["out"] / "no-lrn" / "seed-0" / "checkpoint.pt")["model"]
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
