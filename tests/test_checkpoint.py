"""Checkpoints: round trips, atomic writes (even under a real kill), refusals in one line."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch

from alexnet import atomic, checkpoint
from alexnet.errors import UserError
from alexnet.model import AlexNet


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return AlexNet(num_classes=10, width=0.125)


def full_state(net: torch.nn.Module, **extra) -> dict:
    stats = {"mean_image": np.full((4, 4, 3), 120.5, np.float32), "eigval": np.arange(3.0),
             "pixels": 16}
    fields = dict(optimizer={"state": {}, "param_groups": []}, schedule={"drops": 1}, epoch=3,
                  step=7, config={"a": {"b": 1}}, classes=[{"wnid": "n1", "name": "one"}],
                  stats=stats, rng=checkpoint.rng_state(), metrics=[{"epoch": 1}])
    return checkpoint.make_state(net, **{**fields, **extra})


def test_round_trip_and_load_model_rebuilds_the_same_function(tmp_path):
    net = small_net()
    path = checkpoint.save(tmp_path / "run" / "checkpoint.pt", full_state(net))
    ckpt = checkpoint.load(tmp_path / "run")  # a run folder means its checkpoint.pt
    for key, value in net.state_dict().items():
        assert torch.equal(ckpt["model"][key], value)
    assert (ckpt["epoch"], ckpt["step"], ckpt["schedule"]) == (3, 7, {"drops": 1})
    assert ckpt["stats"]["mean_image"].dtype == np.float32 and ckpt["stats"]["pixels"] == 16
    np.testing.assert_array_equal(ckpt["stats"]["eigval"], np.arange(3.0))
    model, _ = checkpoint.load_model(path)
    assert not model.training
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        assert torch.equal(model(x), net.eval()(x))


def test_wrappers_are_stripped_from_saved_weights():
    net = small_net()
    compiled = torch.compile(net)  # lazily compiled: nothing is built until it is called
    assert checkpoint.unwrap(compiled) is net
    state = checkpoint.make_state(compiled)
    assert set(state["model"]) == set(net.state_dict())
    assert checkpoint.clean_state_dict({"module._orig_mod.conv1.weight": 1}) == \
        {"conv1.weight": 1}


def test_rng_states_round_trip():
    state = checkpoint.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    net = small_net()
    path = checkpoint.save(tmp_path / "checkpoint.pt", full_state(net))
    before = path.read_bytes()

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(UserError, match="disk full") as err:
        checkpoint.save(path, full_state(net, epoch=4))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the temporary file is gone


def test_a_real_kill_mid_write_never_leaves_an_invalid_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    script = textwrap.dedent(f"""
        import torch, sys
        from alexnet import atomic, checkpoint
        big = torch.arange(12_000_000, dtype=torch.float32)
        n = 0
        while True:
            checkpoint.save({str(path)!r}, {{"format": checkpoint.FORMAT,
                            "format_version": checkpoint.FORMAT_VERSION, "n": n, "big": big}})
            n += 1
            print(n, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete file exists
        time.sleep(0.15 + 0.3 * random.random())  # somewhere inside a later write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = checkpoint.load(path)
    assert ckpt["n"] >= 0 and torch.equal(ckpt["big"][-3:], torch.tensor([11_999_997.0,
                                                                          11_999_998, 11_999_999]))
    for leftover in tmp_path.iterdir():  # a temporary file may remain, never under the name
        assert leftover == path or leftover.name.startswith(atomic.TMP_PREFIX)


@pytest.mark.parametrize("content, fragment", [
    ("truncate", "truncated, corrupt or foreign"),
    (b"\x00" * 64, "truncated, corrupt or foreign"),
    ("plain", "not an alexnet checkpoint"),
    ("pickle", "truncated, corrupt or foreign"),
])
def test_bad_files_are_one_line_user_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.pt"
    if content == "truncate":
        good = checkpoint.save(tmp_path / "good.pt", full_state(small_net()))
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif content == "plain":
        torch.save({"model": {}}, path)
    elif content == "pickle":  # an arbitrary object: weights_only refuses to build it
        path.write_bytes(pickle.dumps(ValueError("x")))
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_missing_checkpoint_and_wrong_weights(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "nothing.pt")
    state = full_state(small_net())
    state["model_args"] = {**state["model_args"], "width": 0.25}  # weights of another shape
    checkpoint.save(tmp_path / "c.pt", state)
    with pytest.raises(UserError, match="do not fit"):
        checkpoint.load_model(tmp_path / "c.pt")


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys, torch
    from alexnet import checkpoint
    from alexnet.errors import UserError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    try:
        checkpoint.save(sys.argv[1], {"format": checkpoint.FORMAT, "format_version":
                        checkpoint.FORMAT_VERSION, "big": torch.zeros(100_000)})
    except UserError as err:
        print(err)
""")


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """torch.save's writer raises RuntimeError (inline_container.cc) around the OSError."""
    path = checkpoint.save(tmp_path / "checkpoint.pt", full_state(small_net()))
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and str(path) in proc.stdout
    assert "File too large" in proc.stdout and "inline_container" not in proc.stdout
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_one_flipped_byte_is_refused(tmp_path):
    path = checkpoint.save(tmp_path / "c.pt", full_state(small_net()))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights' data
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="CRC") as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_random_bytes_are_named_plainly(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert "not a zip archive" in message and "Weights only" not in message
    assert "\n" not in message


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    net = small_net()
    with torch.no_grad():
        net.fc8.weight[0, 0] = float("nan")
    checkpoint.save(tmp_path / "nan.pt", full_state(net))
    with pytest.raises(UserError, match="non-finite weights in fc8.weight"):
        checkpoint.load_model(tmp_path / "nan.pt")


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    dead = int(proc.stdout)  # a process that has ended
    stale = tmp_path / f"{atomic.TMP_PREFIX}checkpoint.pt.{dead}"
    stale.write_bytes(b"PK half")
    live = tmp_path / f"{atomic.TMP_PREFIX}best.pt.{os.getppid()}"  # a running writer's
    live.write_bytes(b"PK half")
    assert atomic.remove_stale(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path)) == [live.name]


def test_a_torchscript_export_is_named_without_torchs_warning(tmp_path):
    path = tmp_path / "net.torchscript.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError) as err:
        warnings.simplefilter("always")
        checkpoint.load(path)
    message = str(err.value)
    assert "a TorchScript export" in message and "give the run folder" in message
    assert str(path) in message and "\n" not in message
    assert [w for w in caught if not issubclass(w.category, DeprecationWarning)] == []


def test_an_onnx_export_is_named_as_such(tmp_path):
    """The start of an ONNX model as torch's exporter writes it: ir_version, then the
    producer name."""
    path = tmp_path / "net.onnx"
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.5.0" + bytes(200))
    with pytest.raises(UserError, match="an ONNX export .*, not a checkpoint; give the run "):
        checkpoint.load(path)


def test_an_output_below_a_file_says_so(tmp_path):
    """`export --out w.pt/foo.pt` with w.pt a file said only "w.pt: File exists"."""
    (tmp_path / "w.pt").write_bytes(b"weights")
    with pytest.raises(UserError, match=r"--out .*foo.pt: .*w.pt is a file, not a folder; "
                                        r"choose another --out"):
        atomic.check_output(tmp_path / "w.pt" / "foo.pt", "export", lambda path: True)


def test_a_refused_export_names_a_weights_file_where_the_command_takes_one(tmp_path, capsys):
    """The refusal of an ONNX or TorchScript file asked for "the run folder or its
    checkpoint.pt", never for the weights file that export, evaluate, predict, figures and
    --init-from read as well; a resumed run cannot take one, and is not told it can."""
    from alexnet.cli import main

    path = tmp_path / "net.onnx"
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.5.0" + bytes(200))
    assert main(["export", str(path), "--out", str(tmp_path / "again.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith(
        f"{path}: an ONNX export (alexnet export), not a checkpoint; give the run folder, its "
        "checkpoint.pt or best.pt, or a weights file (`alexnet export --format weights`)"), err
    assert main(["train", "--resume", str(path), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("not a checkpoint; give the run folder or its checkpoint.pt")
    assert "weights file" not in err and not (tmp_path / "new").exists()


def test_a_run_folder_whose_checkpoint_is_a_folder_is_named_as_such(tmp_path):
    """`load(RUN)` with RUN/checkpoint.pt a folder said "RUN/checkpoint.pt: no such
    checkpoint"; given that folder itself, "RUN/checkpoint.pt/checkpoint.pt: no such
    checkpoint"."""
    inner = tmp_path / "run" / "checkpoint.pt"
    inner.mkdir(parents=True)
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path / "run")
    assert str(err.value) == (f"{inner}: a folder, not a checkpoint file, so {tmp_path / 'run'} "
                              "holds no checkpoint; give a checkpoint file or another run "
                              "folder (or move that folder away)")
    with pytest.raises(UserError) as err:
        checkpoint.load(inner)
    assert str(err.value).startswith(f"{inner}: a folder without a checkpoint.pt (no such "
                                     "checkpoint); give a checkpoint file or a run folder")


@pytest.mark.parametrize("mean, key", [("image", "mean_image"), ("channel", "channel_mean")])
def test_statistics_that_lack_the_mean_are_refused_naming_the_checkpoint(tmp_path, mean, key):
    """A `stats` table without the statistic of its data.mean was read, and the loader then
    said "statistics lack mean_image; prepare the store again" (predict: a KeyError), blaming
    a store that is not involved. A file without statistics still loads (evaluate takes the
    store's then)."""
    state = full_state(small_net(), config={"data": {"mean": mean}})
    state["stats"] = {k: v for k, v in state["stats"].items() if k != key} | {
        "channel_mean" if key == "mean_image" else "mean_image": np.zeros(3, np.float32)}
    path = checkpoint.save(tmp_path / "c.pt", state)
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert str(err.value) == (f"{path}: its 'stats' (the normalisation statistics) lack {key}, "
                              f"which its data.mean = {mean!r} subtracts from every input "
                              "(damaged, or written by another tool); use another checkpoint "
                              "of the run")
    checkpoint.save(path, {**state, "stats": None})
    assert checkpoint.load(path)["stats"] is None
    checkpoint.save(path, {**state, "config": {"data": {"mean": "none"}}})
    assert key not in checkpoint.load(path)["stats"]
