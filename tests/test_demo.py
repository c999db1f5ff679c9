"""`alexnet demo` on the real Fashion-MNIST files, with a tiny budget: the wiring, the run
folder, and that nothing is overwritten. (The full demo is run by hand: docs/training.md.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _stops import ctrl_c_at_step

from alexnet.cli import main
from alexnet.config import resolve
from alexnet.demo import Plan, base_config, default_plan, demo


def tiny_plan() -> Plan:
    return Plan("cpu", train_images=40, test_images=20, batch_size=8, epochs=1, budget_s=300,
                why="a test")


def test_demo_writes_a_complete_run_folder(fashion_mnist_dir, tmp_path, capsys):
    result = demo(fashion_mnist_dir, tmp_path / "demo", plan=tiny_plan(),
                  overrides=["model.width=0.125", "run.log_every=2"], device="cpu", ten_crop=True)
    run = Path(result["run_dir"])
    assert run == tmp_path / "demo"
    for name in ("config.json", "log.jsonl", "log.csv", "curves.png", "checkpoint.pt",
                 "final.json"):
        assert (run / name).is_file(), name
    final = json.loads((run / "final.json").read_text())
    assert final["test_images"] == 20
    for key in ("test_top1_error", "test_top5_error", "test_top1_error_10crop"):
        assert 0 <= final[key] <= 1
    assert final["test_top5_error"] <= final["test_top1_error"]
    assert final["train"]["steps"] == 5  # 40 images / batch 8, one epoch
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["arch"] == "alexnet" and config["optim"]["lr"] == 0.01
    assert Path(config["data"]["store"]) == Path(result["store"])
    out = capsys.readouterr().out
    assert "40 training and 20 test images" in out and str(run / "final.json") in out
    assert "the paper's network at 0.125 of its width" in out and "full-size" not in out
    written = [Path(line.split(": ")[0].strip()) for line in
               out.split("Written:\n")[1].splitlines() if line.startswith("  ")]
    assert run / "steps.jsonl" in written and all(path.exists() for path in written)  # 2 rows
    # the same demo again reuses the finished run; another config never overwrites it
    capsys.readouterr()
    same = demo(fashion_mnist_dir, tmp_path / "demo", plan=tiny_plan(),
                overrides=["model.width=0.125", "run.log_every=2"], device="cpu", ten_crop=None)
    assert Path(same["run_dir"]) == run and same["test_top1_error"] == final["test_top1_error"]
    assert f"{run} holds this demo's finished run: reusing it" in capsys.readouterr().out
    again = demo(fashion_mnist_dir, tmp_path / "demo", plan=tiny_plan(),
                 overrides=["model.width=0.0625"], device="cpu", ten_crop=None)
    assert Path(again["run_dir"]) == tmp_path / "demo-2" and again["store"] == result["store"]
    assert json.loads((run / "final.json").read_text()) == final
    # with time to spare, 10 crops cover the whole (tiny) test split
    assert again["ten_crop_images"] == 20 and 0 <= again["test_top1_error_10crop"] <= 1


def test_a_rerun_continues_an_interrupted_demo(fashion_mnist_dir, tmp_path, monkeypatch,
                                               capsys):
    """Ctrl-C in training: the message says to rerun the demo, and the rerun resumes the run
    in its folder; Ctrl-C in the final evaluation: the rerun only evaluates."""
    import alexnet.demo
    import alexnet.train

    def run_demo() -> dict:
        return demo(fashion_mnist_dir, tmp_path / "demo", plan=tiny_plan(),
                    overrides=["model.width=0.125"], device="cpu", ten_crop=False)

    ctrl_c_at_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_demo()
    out = capsys.readouterr().out
    assert "continue with the same `alexnet demo` command (it resumes this run)" in out
    monkeypatch.undo()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(alexnet.demo, "evaluate_run", interrupted)
    with pytest.raises(KeyboardInterrupt):  # the rerun resumes, then is stopped in the test
        run_demo()
    out = capsys.readouterr().out
    run = tmp_path / "demo"
    assert f"{run} holds this demo's interrupted run: continuing it" in out
    assert f"resuming from {run / 'checkpoint.pt'}" in out and "writing to" not in out
    assert json.loads((run / "trained.json").read_text())["steps"] == 5
    monkeypatch.undo()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(alexnet.train, "train", no_training)
    result = run_demo()
    assert Path(result["run_dir"]) == run and result["train"]["steps"] == 5
    assert f"{run} holds this demo's trained net: evaluating it" in capsys.readouterr().out
    assert json.loads((run / "final.json").read_text())["test_images"] == 20
    assert not (tmp_path / "demo-2").exists()


def test_a_store_another_demo_writes_is_refused_naming_store(fashion_mnist_dir, tmp_path,
                                                             capsys):
    from _stops import held_elsewhere

    store = tmp_path / "store"
    store.mkdir()
    with held_elsewhere(store / ".lock"):
        assert main(["demo", "--data", str(fashion_mnist_dir), "--store", str(store), "--out",
                     str(tmp_path / "d"), "--device", "cpu", "--train-images", "40",
                     "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "another process is writing this store" in err and err.count("\n") == 1
    assert err.strip().endswith("choose another --store"), err


def test_a_plan_changed_by_options_says_so(monkeypatch, tmp_path):
    """The plan's reason ("a 4,000-image subset, batch 64") was printed beside the numbers
    that --train-images and --batch-size had replaced."""
    import alexnet.demo

    plans = []
    monkeypatch.setattr(alexnet.demo, "demo", lambda *args: plans.append(args[3]))
    assert main(["demo", "--device", "cpu", "--out", str(tmp_path / "d")]) == 0
    assert main(["demo", "--device", "cpu", "--out", str(tmp_path / "d"), "--train-images",
                 "40", "--batch-size", "8"]) == 0
    default, given = plans
    assert given.why == f"--train-images, --batch-size as given (the default plan: {default.why})"
    assert (given.train_images, given.batch_size) == (40, 8)


def test_default_plans_fit_their_budgets():
    cpu = default_plan("cpu")
    assert cpu.budget_s <= 15 * 60 and cpu.batch_size < 128
    assert cpu.train_images * 256 * 256 * 3 < 1e9  # the subset stays under 1 GB on disk
    gpu = default_plan("cuda")
    assert gpu.train_images > cpu.train_images and gpu.batch_size == 128


@pytest.mark.parametrize("args, fragment", [
    (["--data", "/nonexistent/fashion"], "no Fashion-MNIST folder"),
    (["--budget", "0"], "--budget 0"),
    (["--train-images", "0"], "--train-images 0"),
])
def test_bad_demo_options_are_one_line_errors(args, fragment, tmp_path, capsys):
    assert main(["demo", *args, "--out", str(tmp_path / "d"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_a_folder_without_idx_files_is_refused(tmp_path, capsys):
    (tmp_path / "idx").mkdir()
    assert main(["demo", "--data", str(tmp_path / "idx"), "--out", str(tmp_path / "d")]) == 2
    assert "missing train-images-idx3-ubyte" in capsys.readouterr().err


def test_the_demo_runs_bf16_channels_last_on_a_gpu_only():
    gpu = resolve("demo", None, base=base_config("cuda"))
    assert (gpu.run.amp, gpu.run.channels_last) == ("bf16", True)
    cpu = resolve("demo", None, base=base_config("cpu"))
    assert (cpu.run.amp, cpu.run.channels_last) == ("off", False)
    # an explicit --set still wins, and the paper preset itself stays fp32
    off = resolve("demo", ["run.amp=off"], base=base_config("cuda"))
    assert off.run.amp == "off" and resolve("paper").run.amp == "off"


@pytest.mark.parametrize("args, fragment", [
    (["--set", "foo.bar=1"], "unknown section 'foo'"),
    (["--set", "optim.lr=abc"], "optim.lr must be float"),
    (["--out", "/sys/alexnet-demo"], "cannot create files there"),  # refused even to root
    (["--out", "a_file"], "is a file, not a folder"),
    (["--store", "a_file"], "--store"),
    (["--out", "shared", "--store", "shared"], "overlap"),
    (["--out", "shared", "--store", "shared/store"], "overlap"),
    (["--train-images", "50", "--test-images", "20"], "larger than the training split"),
])
def test_bad_options_are_refused_before_the_store_is_prepared(
        args, fragment, fashion_mnist_dir, tmp_path, capsys, monkeypatch):
    import alexnet.demo

    def prepared(*args, **kwargs):
        raise AssertionError("the store was prepared")

    monkeypatch.setattr(alexnet.demo, "prepare_store", prepared)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["demo", "--data", str(fashion_mnist_dir), "--store", str(tmp_path / "store"),
                 "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "shared").exists()  # no run
