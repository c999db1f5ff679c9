"""Guards of the tool commands (bench, demo, relu-vs-tanh, ablate): devices torch names but
the package cannot run on, the net's environment settings, impossible numbers, and result
files of the user's that a command would have replaced; each is refused in one line before
any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_mutants_reports import fake_train_run  # a stand-in training run

import alexnet.bench.model
import alexnet.demo
from alexnet import model
from alexnet.cli import main
from alexnet.config import resolve
from alexnet.data import augment, decode
from alexnet.data.store import write_store
from alexnet.demo import Earlier, _earlier_run, _run_folder, base_config
from alexnet.distributed import pick_device
from alexnet.errors import UserError
from alexnet.experiments import ablate as ab
from alexnet.experiments import relu_tanh as rt

CLASSES = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(4)]


def refused(*args, **kwargs):
    raise AssertionError("a refused command did its work")


@pytest.fixture(scope="module")
def noise_store(tmp_path_factory) -> Path:
    """40 random 16x16 training images of 4 classes."""
    root = tmp_path_factory.mktemp("noise16")
    rng = np.random.default_rng(0)
    write_store(root / "train", rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8),
                np.arange(40) % 4, CLASSES)
    return root


def relu_vs_tanh(data: Path, out: Path, *more: str) -> list[str]:
    return ["relu-vs-tanh", "--data", str(data), "--steps", "4", "--seeds", "1", "--window",
            "2", "--lrs", "0.01", "--batch-size", "8", "--device", "cpu", "--no-progress",
            "--out", str(out), *more]


def one_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


# ----------------------------------------------------------------------- 1: device types

@pytest.mark.parametrize("name", ["mps", "meta", "xpu", "meta:0"])
def test_device_types_other_than_cpu_and_cuda_are_not_devices(name):
    """torch.device accepts mps, meta, xpu: they passed the check and crashed later (meta:
    KeyError 'relu', mps: NotImplementedError)."""
    with pytest.raises(UserError, match=f"--device '{name}': not a device; use cpu, cuda"):
        pick_device(name)


def test_bench_on_the_meta_device_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(alexnet.bench.model, "bench", refused)
    assert main(["bench", "--device", "meta", "--smoke", "model"]) == 2
    assert "--device 'meta': not a device" in one_error(capsys)


# --------------------------------------------------------------- 2: environment settings

@pytest.mark.parametrize("module, name, env", [
    (model, "LRN_BACKEND", "ALEXNET_LRN"), (model, "POOL_BACKEND", "ALEXNET_POOL"),
    (model, "COLUMN_CONV", "ALEXNET_COLUMNS"), (model, "CONV1_FORM", "ALEXNET_CONV1"),
    (augment, "AUGMENT_BACKEND", "ALEXNET_AUGMENT"),
    (decode, "GPU_DECODER", "ALEXNET_GPU_DECODER")])
def test_each_setting_of_the_net_is_checked_at_once(module, name, env, monkeypatch):
    model.check_environment()  # the defaults pass
    monkeypatch.setattr(module, name, "bogus")
    with pytest.raises(UserError, match=f"({env}='bogus': choose from |'bogus' \\({env}\\))"):
        model.check_environment()


@pytest.mark.parametrize("command", [
    ["bench", "--device", "cpu", "--smoke", "model"],
    ["demo", "--device", "cpu"],
    ["relu-vs-tanh", "--data", "nothing", "--device", "cpu"],
    ["ablate", "--data", "nothing"],
    ["train", "--data", "nothing"],
    ["evaluate", "nothing"],
    ["predict", "nothing", "photo.jpg"],
    ["figures", "nothing"],
    ["export", "nothing"],
])
def test_a_bad_setting_is_refused_before_any_work(command, monkeypatch, tmp_path, capsys):
    """bench said it after half a minute of measuring, wrapped in a RuntimeError; train,
    evaluate, predict, figures and export only where the net met it. Every command that
    runs the net checks them first (alexnet.cli)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model, "LRN_BACKEND", "bogus")
    monkeypatch.setattr(alexnet.bench.model, "bench", refused)
    monkeypatch.setattr(alexnet.demo, "demo", refused)
    assert main(command) == 2
    assert "ALEXNET_LRN='bogus': choose from auto, triton, torch" in one_error(capsys)


# -------------------------------------------------------------------- 3: learning rates

@pytest.mark.parametrize("lr", [1e308, float("inf"), float("nan"), 0.0])
def test_learning_rates_must_be_finite_in_float32(lr):
    with pytest.raises(UserError, match="give positive finite learning rates"):
        rt.check_options(20, 2, 1, [0.01, lr])
    rt.check_options(20, 2, 1, [0.01, 1e30])


# --------------------------------------------------------------- 4, 5: foreign results

@pytest.mark.parametrize("name, content", [("relu_vs_tanh.json", '{"mine": 1}\n'),
                                           ("figure1.png", "my notes\n")])
def test_relu_vs_tanh_keeps_a_file_it_did_not_write(name, content, noise_store, tmp_path,
                                                    monkeypatch, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / name).write_text(content)
    monkeypatch.setattr(rt, "train_run", refused)
    assert main(relu_vs_tanh(noise_store, out)) == 2
    err = one_error(capsys)
    assert f"its {name}: an existing file that is not an earlier" in err
    assert (out / name).read_text() == content


def test_relu_vs_tanh_recognises_its_own_results(tmp_path):
    (tmp_path / "relu_vs_tanh.json").write_text(json.dumps(
        {"experiment": "relu-vs-tanh (paper section 3.1, figure 1)", "rows": []}))
    (tmp_path / "figure1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(8))
    rt.check_outputs(tmp_path)


@pytest.fixture(scope="module")
def val_store(tmp_path_factory) -> Path:
    """8 training and 4 validation 232x232 images."""
    root = tmp_path_factory.mktemp("ablate_store")
    rng = np.random.default_rng(0)
    train = write_store(root / "train", rng.integers(0, 256, (8, 232, 232, 3), np.uint8),
                        np.arange(8) % 4, CLASSES)
    write_store(root / "val", rng.integers(0, 256, (4, 232, 232, 3), np.uint8),
                np.arange(4) % 4, CLASSES, stats=train.stats)
    return root


@pytest.mark.parametrize("name", ["ablation.json", "ablation.csv", "ablation.md"])
def test_ablate_keeps_a_table_it_did_not_write(name, val_store, tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / name).write_text('{"mine": 1}\n')
    monkeypatch.setattr(ab, "train_all", refused)
    base = resolve("paper", ["model.width=0.125", "optim.batch_size=4", "run.device=cpu",
                             "run.progress=false"], {"data.store": str(val_store)})
    with pytest.raises(UserError, match=f"its {name}: an existing file that is not an "):
        ab.ablate(base, out, [], budget_steps=1, seeds=1, log=lambda _: None)
    assert (out / name).read_text() == '{"mine": 1}\n'


def test_ablate_recognises_its_own_tables(tmp_path):
    ab.write_outputs(tmp_path, [], "a note", {"experiment": "ablate (paper sections)",
                                              "setup": "a setup"})
    ab.check_outputs(tmp_path)


def test_demo_never_writes_over_a_config_json_of_another(tmp_path, capsys):
    """A folder without a checkpoint was this demo's to fill, whatever it held: training
    wrote its config.json over the user's."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}\n')
    config = resolve("demo", None, base=base_config("cpu"))
    assert _earlier_run(out, config, None) is None
    folder, earlier = _run_folder(out, config, None)
    assert folder == tmp_path / "demo-2" and earlier == Earlier()
    assert (out / "config.json").read_text() == '{"mine": 1}\n'
    # this demo's own config.json (a run stopped before its first checkpoint) is its own
    from alexnet.demo import _config_dict

    (out / "config.json").write_text(json.dumps(_config_dict(config)))
    assert _earlier_run(out, config, None) == Earlier()


# ----------------------------------------------------------------- 6, 7: demo's numbers

@pytest.mark.parametrize("args, said", [
    (["--train-images", "99999999"],
     "--train-images 99999999: Fashion-MNIST has 60,000 training images; give at most 60000"),
    (["--test-images", "50000"],
     "--test-images 50000: Fashion-MNIST has 10,000 test images; give at most 10000"),
    (["--budget", "nan"], "--budget nan: give a finite number of minutes > 0"),
    (["--budget", "inf"], "--budget inf: give a finite number of minutes > 0"),
])
def test_demo_refuses_impossible_numbers_naming_the_option(args, said, monkeypatch,
                                                           tmp_path, capsys):
    monkeypatch.setattr(alexnet.demo, "demo", refused)
    assert main(["demo", "--device", "cpu", "--out", str(tmp_path / "d"), *args]) == 2
    assert said in one_error(capsys)


# --------------------------------------------------------------------- 7: relu-vs-tanh

def test_a_nan_threshold_is_named_as_given(noise_store, tmp_path, capsys):
    assert main(relu_vs_tanh(noise_store, tmp_path / "o", "--threshold", "nan")) == 2
    assert "--threshold nan: give a training error between 0 and 1" in one_error(capsys)


def test_the_result_is_strict_json_with_null_for_what_one_seed_cannot_give(
        noise_store, tmp_path, monkeypatch, capsys):
    """One seed has no sd and no interval: they were written as bare NaN, not JSON."""
    monkeypatch.setattr(rt, "train_run", fake_train_run([]))
    monkeypatch.setattr(rt, "plot", lambda result, path: None)
    out = tmp_path / "o"
    assert main(relu_vs_tanh(noise_store, out, "--threshold", "0.5", "--thresholds",
                             "0.5")) == 0

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} in relu_vs_tanh.json")

    result = json.loads((out / "relu_vs_tanh.json").read_text(), parse_constant=no_constant)
    assert result["rows"][0]["relu"]["sd"] is None


def test_prepare_does_not_read_the_nets_settings(monkeypatch, tmp_path, capsys):
    """prepare runs no net (and imports no torch): its own errors come first."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model, "LRN_BACKEND", "bogus")
    assert main(["prepare", "nothing", "store"]) == 2
    error = one_error(capsys)
    assert "ALEXNET_LRN" not in error and "nothing" in error


def test_an_unknown_option_before_the_command_is_named(capsys):
    """`alexnet --nosuch` said that COMMAND was missing."""
    with pytest.raises(SystemExit) as info:
        main(["--nosuch"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized option '--nosuch'" in err and "required" not in err
