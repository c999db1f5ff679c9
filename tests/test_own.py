"""A researcher's own small data set: the `own` preset learns it, the paper's defaults sit at
chance there and the chance check says so with what to change, a non-terminal log has plain
progress lines and no carriage-return redraws, a step log feeds curves.png, `--init-from`
copies every layer but a resized fc8, and torchvision's normalisation is expressible.

The data: three classes of 64 JPEG photos each (48 train, 16 val; colour-coded scenes with
gradients and grain at landscape and portrait sizes, tests/_images.py), made into a store by
the real `alexnet prepare`. CPU budget (stated, not timed): the `own` run is 27 steps of 16
images at width 0.5 plus 3 validations, about 15 s on a quiet 2-core machine; the paper run
18 steps, about 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _images import jpeg, photo

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import resolve
from alexnet.data import augment
from alexnet.learning_check import Evidence, at_chance, chance_advice, chance_error
from alexnet.model import build_model
from alexnet.train import train
from alexnet.training.init_from import describe, load_initial_weights

REPO = Path(__file__).resolve().parents[1]
NAMES = ("poppy", "fern", "sky")
SIZES = [(320, 240), (240, 320), (300, 300), (400, 260), (260, 380)]
CHANCE = chance_error(len(NAMES))  # 2/3


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Three classes of JPEG photos in train/ and val/ class folders, prepared for real."""
    root = tmp_path_factory.mktemp("photos")
    for split, n, seed0 in (("train", 48, 0), ("val", 16, 1000)):
        for k, name in enumerate(NAMES):
            folder = root / "src" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = SIZES[i % len(SIZES)]
                (folder / f"{name}_{i:03d}.jpg").write_bytes(
                    jpeg(photo(w, h, k, seed0 + 7 * i + k)))
    assert main(["prepare", str(root / "src"), str(root / "store"), "--workers", "1"]) == 0
    return root / "store"


def alexnet_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m alexnet ARGS` with output to pipes (not a terminal), a line per update."""
    env = dict(os.environ, ALEXNET_PROGRESS_SECONDS="0")
    return subprocess.run([sys.executable, "-m", "alexnet", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------------- the chance check


def test_chance_error_and_tolerance():
    assert chance_error(3) == pytest.approx(2 / 3)
    assert chance_error(1000) == pytest.approx(0.999)
    assert at_chance(2 / 3, 3) and at_chance(0.64, 3) and not at_chance(0.62, 3)
    assert not at_chance(0.0, 1)  # one class: nothing to learn, nothing to say


def test_advice_names_init_bias_while_it_is_the_papers():
    stuck = Evidence(step=120, num_classes=3, val_error=2 / 3, train_error=0.7)
    advice = chance_advice(stuck, init_bias=1.0, lr=0.01, after_steps=100)
    assert "66.67%" in advice and "120 steps" in advice and "model.init_bias=0.1" in advice
    other = chance_advice(stuck, init_bias=0.1, lr=0.01, after_steps=100)
    assert "optim.lr=0.001" in other and "init_bias" not in other.split(";")[1]


def test_no_advice_too_early_when_learning_or_switched_off():
    stuck = Evidence(step=99, num_classes=3, val_error=2 / 3)
    assert chance_advice(stuck, init_bias=1.0, lr=0.01, after_steps=100) is None
    learning = Evidence(step=500, num_classes=3, val_error=0.3, train_error=2 / 3)
    assert chance_advice(learning, init_bias=1.0, lr=0.01, after_steps=100) is None
    assert chance_advice(Evidence(step=500, num_classes=3, val_error=2 / 3), init_bias=1.0,
                         lr=0.01, after_steps=0) is None


def test_training_error_is_the_witness_without_validation():
    ev = Evidence(step=200, num_classes=10, val_error=None, train_error=0.9)
    assert "training error is 90.00%" in chance_advice(ev, init_bias=1.0, lr=0.01)


# ------------------------------------------------------------------ the photo set, for real


@pytest.fixture(scope="module")
def own_run(store, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`alexnet train --preset own` on the photo set (width 0.5 for the CPU), output piped."""
    out = tmp_path_factory.mktemp("runs") / "own"
    done = alexnet_cli("train", "--data", str(store), "--preset", "own", "--out", str(out),
                       "--device", "cpu", "--set", "model.width=0.5", "--set", "optim.epochs=3",
                       "--set", "run.log_every=3", "--set", "run.chance_steps=18")
    assert done.returncode == 0, done.stderr
    return out, done


def test_own_preset_learns_the_photo_set_with_plain_progress_lines(own_run):
    out, done = own_run
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["val_top1_error"] <= 0.5 * CHANCE  # well below chance (66.67%)
    text = done.stdout + done.stderr
    assert "not learning" not in text  # the check stays quiet on a net that learns
    assert "\r" not in text  # no redrawn bar in a log
    assert "epoch 1/3: 9/9 batch (100%)" in done.stderr  # plain progress lines instead
    assert "run_eta" in done.stderr and "ETA" in done.stderr
    assert "validate: 1/1 batch" in done.stderr
    assert "top-5" not in done.stdout  # 3 classes: top-5 error is always 0
    assert "none scaling" not in done.stdout and "channels_last False" not in done.stdout
    assert "3 epochs x 9 steps" in done.stdout
    assert "best.pt" in done.stdout.splitlines()[-1]


def test_step_rows_feed_the_log_and_the_curves(own_run):
    out, _ = own_run
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(3, 28, 3))
    assert [r["epoch"] for r in steps] == pytest.approx([s / 9 for s in range(3, 28, 3)])
    assert all(r["lr"] == 0.01 and r["images_per_s"] > 0 and r["loss"] > 0 for r in steps)
    from alexnet.figures.curves import read_steps

    assert read_steps(out / "log.jsonl") == steps
    assert (out / "curves.png").stat().st_size > 0


def test_evaluate_a_run_folder_uses_best_pt_and_the_recorded_store(own_run, capsys):
    out, _ = own_run
    assert main(["evaluate", str(out), "--device", "cpu", "--json", "--crops", "1"]) == 0
    captured = capsys.readouterr()  # the centre patch, as training's validation
    assert "evaluating best.pt" in captured.err
    result = json.loads(captured.out)
    assert result["checkpoints"] == [str(out / "best.pt")]
    best = checkpoint.load(out / "best.pt")
    assert result["top1_error"] == pytest.approx(best["best_error"])
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "top-5" not in table.splitlines()[0] and "10 crops each" in table  # the default


def test_predict_takes_a_folder(own_run, store, tmp_path, capsys):
    out, _ = own_run
    folder = tmp_path / "mine"
    for k, name in enumerate(NAMES):
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        (folder / "sub" / f"{name}.jpg").write_bytes(jpeg(photo(300, 240, k, 99)))
    (folder / "notes.txt").write_text("not an image")
    assert main(["predict", str(out), str(folder), "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in rows] == ["fern.jpg", "poppy.jpg", "sky.jpg"]
    assert [r["top"][0]["name"] for r in rows] == ["fern", "poppy", "sky"]


def test_export_of_the_run_equals_it(own_run, tmp_path):
    from alexnet.export import export

    out, _ = own_run
    result = export(out / "best.pt", "torchscript", tmp_path / "own.torchscript.pt")
    assert result["check"].startswith("checked: outputs equal")


def test_a_split_folder_given_as_store_says_which_folder_to_give(store, tmp_path, capsys):
    code = main(["train", "--data", str(store / "train"), "--out", str(tmp_path / "x"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"give the store above it, {store}" in err


def test_chance_check_fires_on_the_papers_defaults(store, tmp_path, capsys):
    config = resolve("paper", ["model.width=0.5", "optim.batch_size=16", "optim.epochs=2",
                               "run.chance_steps=18", "run.device=cpu", "run.progress=false"],
                     {"data.store": str(store), "run.out": str(tmp_path / "paper")})
    result = train(config)
    assert result["val_top1_error"] == pytest.approx(CHANCE)  # stuck at 66.67%
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if "not learning" in line]
    assert len(warnings) == 1  # said once
    assert "after 18 steps the validation error is 66.67%" in warnings[0]
    assert "model.init_bias=0.1" in warnings[0]


# -------------------------------------------------------------------------- --init-from


def test_init_from_loads_every_layer_but_a_resized_fc8(tmp_path):
    torch.manual_seed(1)
    source = build_model("alexnet", num_classes=10, width=0.125)
    path = checkpoint.save(tmp_path / "src.pt", checkpoint.make_state(source, classes=[]))
    torch.manual_seed(2)
    net = build_model("alexnet", num_classes=3, width=0.125)
    fresh_fc8 = net.fc8.weight.clone()
    result = load_initial_weights(net, str(path))
    assert result["fresh"] == ["fc8.weight", "fc8.bias"]
    for key, value in source.state_dict().items():
        if key.startswith("fc8."):
            continue
        assert torch.equal(net.state_dict()[key], value), key
    assert torch.equal(net.fc8.weight, fresh_fc8)
    same = build_model("alexnet", num_classes=10, width=0.125)
    assert load_initial_weights(same, str(path))["fresh"] == []
    assert torch.equal(same.fc8.weight, source.fc8.weight)


def test_init_from_another_width_is_one_line(tmp_path, store, capsys):
    source = build_model("alexnet", num_classes=3, width=0.25)
    path = checkpoint.save(tmp_path / "w.pt", checkpoint.make_state(source, classes=[]))
    code = main(["train", "--data", str(store), "--init-from", str(path), "--out",
                 str(tmp_path / "r"), "--set", "model.width=0.125", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit" in err and len(err.strip().splitlines()) == 1


def test_init_from_torchvision_without_torchvision_is_one_line(tmp_path, store, capsys,
                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    code = main(["train", "--data", str(store), "--init-from", "torchvision", "--out",
                 str(tmp_path / "tv"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install torchvision" in err
    assert len(err.strip().splitlines()) == 1


def test_init_from_torchvision_sets_its_layout_and_normalisation(store, capsys):
    assert main(["train", "--data", str(store), "--init-from", "torchvision",
                 "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["model"]["arch"] == "alexnet-tv" and config["data"]["mean"] == "torchvision"


# ---------------------------------------------------------- torchvision's normalisation


def test_torchvision_normalisation_is_its_published_formula():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    x = augment.eval_batch(torch.from_numpy(images), {}, crops=1, mean="torchvision")
    centre = images[:, 16:240, 16:240, :].astype(np.float64) / 255.0
    expected = (centre - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x.numpy(), expected.transpose(0, 3, 1, 2), rtol=1e-5,
                               atol=1e-5)
    assert resolve("paper", ["data.mean=torchvision"]).data.mean == "torchvision"


def test_train_init_from_a_run_starts_from_its_weights(own_run, store, tmp_path):
    out, _ = own_run
    run = tmp_path / "tuned"
    done = alexnet_cli("train", "--data", str(store), "--preset", "own", "--out", str(run),
                       "--device", "cpu", "--init-from", str(out / "best.pt"), "--set",
                       "model.width=0.5", "--set", "optim.lr=1e-9", "--max-steps", "1",
                       "--set", "data.val_split=none")
    assert done.returncode == 0, done.stderr
    assert f"weights from {out / 'best.pt'}: 16 tensors loaded" in done.stdout
    source, tuned = checkpoint.load(out / "best.pt"), checkpoint.load(run / "checkpoint.pt")
    for key, value in source["model"].items():  # one step at lr 1e-9 moves nothing visible
        torch.testing.assert_close(tuned["model"][key], value, rtol=0, atol=1e-6)


def test_a_resumed_run_continues_the_step_log_without_gaps_or_repeats(store, tmp_path):
    base = ["--data", str(store), "--out", str(tmp_path / "r"), "--device", "cpu",
            "--set", "model.width=0.125", "--batch-size", "16", "--set", "run.log_every=1",
            "--set", "data.val_split=none", "--no-progress"]
    assert main(["train", *base, "--max-steps", "2"]) == 0
    assert main(["train", "--resume", str(tmp_path / "r"), "--max-steps", "4",
                 "--no-progress"]) == 0
    rows = (tmp_path / "r" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]


def test_a_row_torn_by_a_kill_is_dropped_when_the_run_resumes(store, tmp_path):
    base = ["--data", str(store), "--out", str(tmp_path / "r"), "--device", "cpu",
            "--set", "model.width=0.125", "--batch-size", "16", "--set", "run.log_every=1",
            "--set", "data.val_split=none", "--no-progress"]
    assert main(["train", *base, "--max-steps", "2"]) == 0
    with open(tmp_path / "r" / "steps.jsonl", "a") as f:  # a kill in the middle of an append
        f.write('{"step": 3, "epoch": 1, "lo')
    assert main(["train", "--resume", str(tmp_path / "r"), "--max-steps", "4",
                 "--no-progress"]) == 0
    rows = (tmp_path / "r" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]


def named(names: list[str]) -> list[dict[str, str]]:
    return [{"wnid": n, "name": n} for n in names]


def test_init_from_moves_fc8_class_by_class(tmp_path):
    """fc8 has a row per class: a store prepared again with its folders renamed or added
    takes each class's own row, never another class's (they were copied by position)."""
    torch.manual_seed(1)
    source = build_model("alexnet", num_classes=3, width=0.125)
    path = checkpoint.save(tmp_path / "src.pt", checkpoint.make_state(
        source, classes=named(["cat", "dog", "owl"])))
    cases = {("owl", "cat", "dog"): [2, 0, 1], ("cat", "emu", "owl"): [0, None, 2],
             ("ant", "bee", "emu"): [None, None, None], ("cat", "dog", "owl"): [0, 1, 2]}
    lines = []
    for classes, rows in cases.items():
        torch.manual_seed(2)
        net = build_model("alexnet", num_classes=3, width=0.125)
        fresh = net.fc8.weight.detach().clone(), net.fc8.bias.detach().clone()
        result = load_initial_weights(net, str(path), named(list(classes)))
        for i, row in enumerate(rows):
            for mine, theirs, new in zip((net.fc8.weight, net.fc8.bias),
                                         (source.fc8.weight, source.fc8.bias), fresh, strict=True):
                assert torch.equal(mine[i], new[i] if row is None else theirs[row])
        assert torch.equal(net.conv1.weight, source.conv1.weight)
        lines.append(describe(str(path), result))
    assert lines[0].endswith("16 tensors loaded; fc8's rows follow the class names (another "
                             "order)")
    assert lines[1].endswith("fc8: 2 of 3 classes from the source's rows of the same class, "
                             "1 new")
    assert lines[2].endswith("14 tensors loaded; fc8 is new (none of its 3 classes is one of "
                             "the source's)")
    assert lines[3].endswith("16 tensors loaded")
    more = build_model("alexnet", num_classes=4, width=0.125)  # a class added: 3 rows kept
    load_initial_weights(more, str(path), named(["cat", "dog", "owl", "yak"]))
    assert torch.equal(more.fc8.weight[:3], source.fc8.weight)
