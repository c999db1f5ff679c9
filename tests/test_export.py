"""`alexnet export`: ONNX, TorchScript and weights-only files whose outputs equal the
checkpoint's, and the plain LRN equal to the paper's (hubconf.py: test_hubconf.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _stops import held_elsewhere, tree  # a lock held by another process

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import resolve, to_dict
from alexnet.errors import UserError
from alexnet.export import PlainLRN, check_input, export, exportable
from alexnet.model import LRN, AlexNet, build_model
from alexnet.optim import PaperSGD

CLASSES = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(3)]


def lrn_reference(a: np.ndarray, groups: int, n: int, alpha: float, beta: float,
                  k: float) -> np.ndarray:
    """The paper's formula (section 3.3), one channel at a time, in float64 NumPy."""
    out = np.empty_like(a)
    per = a.shape[1] // groups
    for g in range(groups):
        for i in range(per):
            lo, hi = max(0, i - n // 2), min(per - 1, i + n // 2)
            s = (a[:, g * per + lo:g * per + hi + 1] ** 2).sum(axis=1)
            out[:, g * per + i] = a[:, g * per + i] / (k + alpha * s) ** beta
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_plain_lrn_is_the_papers_lrn(groups):
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64) * 4
    paper_lrn = LRN(groups)
    plain = PlainLRN(groups, paper_lrn.n, paper_lrn.alpha, paper_lrn.beta, paper_lrn.k)
    expected = lrn_reference(x.numpy(), groups, paper_lrn.n, paper_lrn.alpha, paper_lrn.beta,
                             paper_lrn.k)
    np.testing.assert_allclose(plain(x).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(paper_lrn(x).numpy(), expected, rtol=1e-12)


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Path:
    """A checkpoint as training writes it: a small net after one update, with momentum."""
    torch.manual_seed(0)
    config = resolve("paper", ["model.width=0.125"])
    model = build_model("alexnet", num_classes=3, width=0.125)
    optimizer = PaperSGD(model.parameters(), lr=0.01)
    model(check_input(224, batch=2)).logsumexp(1).sum().backward()
    optimizer.step()
    stats = {"channel_mean": np.array([120.0, 115.0, 100.0], np.float32),
             "mean_image": np.full((256, 256, 3), 110.0, np.float32)}
    path = tmp_path_factory.mktemp("ckpt") / "run" / "checkpoint.pt"
    checkpoint.save(path, checkpoint.make_state(
        model, optimizer=optimizer.state_dict(), config=to_dict(config), classes=CLASSES,
        stats=stats, epoch=1, step=1, metrics=[]))
    return path


def _logits(model: torch.nn.Module, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_input(224, batch=batch, seed=7)
    with torch.no_grad():
        return x, model.eval()(x)


def test_exportable_copy_computes_the_same_function(ckpt_path):
    model, _ = checkpoint.load_model(ckpt_path)
    x, ref = _logits(model, 2)
    plain = exportable(model)
    assert not any(isinstance(m, LRN) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_torchscript_export_equals_the_checkpoint_for_any_batch(ckpt_path, tmp_path):
    result = export(ckpt_path, "torchscript", tmp_path / "net.torchscript.pt")
    assert result["check"].startswith("checked: outputs equal")
    model, _ = checkpoint.load_model(ckpt_path)
    loaded = torch.jit.load(result["path"])
    for batch in (1, 5):  # traced with one image; other batch sizes work too
        x, ref = _logits(model, batch)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), ref, rtol=1e-5, atol=1e-5)
    info = json.loads(Path(result["info"]).read_text())
    assert info["classes"] == CLASSES and info["mean"] == "image"
    assert info["channel_mean"] == pytest.approx([120.0, 115.0, 100.0])


@pytest.mark.parametrize("mean, crop, says", [
    ("image", 224, "minus the training mean image (c.weights.pt.mean.npy beside this file, "
                   "numpy.load gives it: float32 (256, 256, 3), rows x columns x RGB on the "
                   "0..255 scale) pixel by pixel; then the 224x224 patch cut (the centre one: "
                   "rows and columns [16:240, 16:240]"),
    ("channel", 200, "on the 0..255 scale, minus channel_mean; then the 200x200 patch cut (the "
                     "centre one: rows and columns [28:228, 28:228]"),
    ("none", 224, "on the 0..255 scale; then the 224x224 patch"),
    ("torchvision", 224, "divided by 255, minus [0.485, 0.456, 0.406] and divided by "
                         "[0.229, 0.224, 0.225] channel by channel"),
])
def test_the_sidecar_says_how_to_make_the_input(ckpt_path, tmp_path, mean, crop, says):
    """The sidecar said "float32 (N, 3, 224, 224) RGB" and the mean's name: not the scale,
    the size images are rescaled to, nor where the patch and its mean window lie."""
    state = checkpoint.load(ckpt_path)
    state["config"]["data"].update(mean=mean, crop=crop)
    state["model"] = build_model("alexnet", num_classes=3, width=0.125, crop=crop).state_dict()
    state["model_args"] = {**state["model_args"], "crop": crop}
    checkpoint.save(tmp_path / "c.pt", state)
    result = export(tmp_path / "c.pt", "weights", tmp_path / "c.weights.pt")
    info = json.loads(Path(result["info"]).read_text())
    assert info["mean"] == mean and info["image_size"] == 256
    assert info["input"] == f"float32 (N, 3, {crop}, {crop}) RGB"
    assert info["normalise"].startswith("the image rescaled as `alexnet prepare` does (shorter "
                                        "side 256, central 256x256), as float32 RGB")
    assert says in info["normalise"]


def test_onnx_export_equals_the_checkpoint(ckpt_path, tmp_path):
    pytest.importorskip("onnx", reason="onnx not installed: pip install onnx")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    result = export(ckpt_path, "onnx", tmp_path / "net.onnx")
    assert result["check"].startswith("checked: outputs equal")
    model, _ = checkpoint.load_model(ckpt_path)
    session = ort.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x, ref = _logits(model, batch)
        out = session.run(["logits"], {"image": x.numpy()})[0]
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def sensitive_net(tmp_path_factory) -> Path:
    """A checkpoint whose logits move with the input (PyTorch's default initialisation: the
    paper's leaves them almost constant at first) and whose mean image is not constant, so
    that a patch or mean window off by a pixel shows; LRN and two columns as in the paper."""
    torch.manual_seed(1)
    model = AlexNet(num_classes=5, width=0.125)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    stats = {"channel_mean": np.array([110.0, 115.0, 120.0], np.float32),
             "mean_image": np.stack([70 + x / 3, 90 + y / 4, 150 - (x + y) / 5], -1)}
    path = tmp_path_factory.mktemp("sensitive") / "net.pt"
    checkpoint.save(path, checkpoint.make_state(
        model, classes=[{"wnid": f"s{i}", "name": f"s {i}"} for i in range(5)], stats=stats,
        epoch=1, step=0))
    return path


def blocks(n: int, seed: int) -> np.ndarray:
    """n uint8 256x256 RGB images of 32-pixel blocks of noise."""
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(128, 50, (n, 8, 8, 3)), 0, 255).astype(np.uint8)
    return images.repeat(32, 1).repeat(32, 2)


def test_onnx_gives_predicts_probabilities_on_predicts_patches(sensitive_net, tmp_path):
    """The export's check runs on noise; here onnxruntime gets the patches `alexnet predict`
    classifies (centre and 10-crop, from the evaluation loader, less the zeros it pads for
    conv1, which the exported graph adds itself): its logits equal the checkpoint net's within
    the export's TOLERANCE, and the softmax averaged over the patches gives predict's
    probabilities."""
    pytest.importorskip("onnx", reason="onnx not installed: pip install onnx")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from alexnet.data.store import write_store
    from alexnet.evaluate import eval_loader, input_settings
    from alexnet.export import TOLERANCE, max_difference
    from alexnet.predict import predict_images

    result = export(sensitive_net, "onnx", tmp_path / "net.onnx")
    session = ort.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    model, ckpt = checkpoint.load_model(sensitive_net)
    images = blocks(3, seed=3)
    store = write_store(tmp_path / "store" / "test", images, np.zeros(3, np.int64),
                        ckpt["classes"], stats=ckpt["stats"])
    for crops in (1, 10):
        want = predict_images(model, images, ckpt, crops=crops)
        loader = eval_loader(store, crops=crops, batch_size=2, device="cpu",
                             stats=ckpt["stats"], **input_settings(ckpt))
        logits = []
        for x, _ in loader:
            patches = x[..., :224, :224].numpy()  # the loader's 227: conv1's zeros
            out = torch.from_numpy(session.run(["logits"], {"image": patches})[0])
            with torch.no_grad():
                assert max_difference(model(x), out) <= TOLERANCE
            logits.append(out)
        got = torch.cat(logits).softmax(1).view(len(images), crops, -1).mean(1)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5)


def test_the_sidecars_recipe_needs_only_numpy_and_the_mean_file(sensitive_net, tmp_path):
    """For data.mean = "image" the sidecar said to subtract "the training mean image", which
    lay only in the torch-format checkpoint (`stats`): with onnxruntime and no torch, the
    input could not be made. Now NAME.mean.npy lies beside the export, named in the sidecar,
    and the recipe followed with numpy and that file alone gives, through onnxruntime, the
    torch net's logits on the centre patch predict classifies and predict's probabilities."""
    pytest.importorskip("onnx", reason="onnx not installed: pip install onnx")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from alexnet.data.store import write_store
    from alexnet.evaluate import eval_loader, input_settings
    from alexnet.export import TOLERANCE, max_difference
    from alexnet.predict import predict_images

    result = export(sensitive_net, "onnx", tmp_path / "net.onnx")
    info = json.loads(Path(result["info"]).read_text())
    assert info["mean_image"] == "net.onnx.mean.npy" in info["normalise"]
    assert result["mean_image"] == str(tmp_path / "net.onnx.mean.npy")
    assert info["image_size"] == 256 and info["mean"] == "image"
    assert "rows and columns [16:240, 16:240]" in info["normalise"]
    mean = np.load(tmp_path / info["mean_image"], allow_pickle=False)  # numpy alone
    assert mean.dtype == np.float32 and mean.shape == (256, 256, 3)
    images = blocks(3, seed=3)
    x = (images.astype(np.float32) - mean)[:, 16:240, 16:240].transpose(0, 3, 1, 2)
    session = ort.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    by_hand = session.run(["logits"], {"image": np.ascontiguousarray(x)})[0]
    model, ckpt = checkpoint.load_model(sensitive_net)
    store = write_store(tmp_path / "store" / "test", images, np.zeros(3, np.int64),
                        ckpt["classes"], stats=ckpt["stats"])
    (patches, _), = eval_loader(store, crops=1, batch_size=3, device="cpu",
                                stats=ckpt["stats"], **input_settings(ckpt))
    with torch.no_grad():
        assert max_difference(model(patches), torch.from_numpy(by_hand)) <= TOLERANCE
    np.testing.assert_allclose(torch.from_numpy(by_hand).softmax(1).numpy(),
                               predict_images(model, images, ckpt, crops=1).numpy(), atol=1e-5)


def with_mean(ckpt_path: Path, path: Path, mean: str, fill: float = 110.0) -> Path:
    """A copy of the `ckpt_path` checkpoint trained with data.mean = `mean`, its mean image
    all `fill`."""
    state = checkpoint.load(ckpt_path)
    state["config"]["data"]["mean"] = mean
    state["stats"]["mean_image"] = np.full((256, 256, 3), fill, np.float32)
    return checkpoint.save(path, state)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
@pytest.mark.parametrize("mean", ["channel", "none", "torchvision"])
def test_other_means_need_no_mean_file_and_a_re_export_removes_the_earlier_one(
        ckpt_path, tmp_path, mean):
    """Only data.mean = "image" subtracts a mean image: the other exports carry no file (the
    sidecar's mean_image is null), and one over an earlier "image" export removes its file,
    which would otherwise lie beside a sidecar that does not name it."""
    out = tmp_path / "m.torchscript.pt"
    export(with_mean(ckpt_path, tmp_path / "ckpt" / "image.pt", "image"), "torchscript", out)
    assert np.load(tmp_path / "m.torchscript.pt.mean.npy").shape == (256, 256, 3)
    result = export(with_mean(ckpt_path, tmp_path / "ckpt" / "other.pt", mean), "torchscript",
                    out)
    info = json.loads(Path(result["info"]).read_text())
    assert info["mean"] == mean and info["mean_image"] is None and result["mean_image"] is None
    assert ".npy" not in info["normalise"] and "mean image" not in info["normalise"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt", "m.torchscript.pt", "m.torchscript.pt.json"]


def test_a_re_export_replaces_the_mean_file_and_a_failed_one_leaves_the_earlier(
        ckpt_path, tmp_path, monkeypatch):
    """The mean file goes with its export: a second export to the same --out replaces it with
    its own, and one that fails leaves the earlier export's three files as they were, and no
    mean file where the earlier export had none."""
    import alexnet.export

    out = tmp_path / "m.weights.pt"
    mean_file = tmp_path / "m.weights.pt.mean.npy"
    nets = {fill: with_mean(ckpt_path, tmp_path / "ckpt" / f"{fill}.pt", "image", fill)
            for fill in (90.0, 130.0)}
    for fill, net in nets.items():
        export(net, "weights", out)
        assert np.array_equal(np.load(mean_file), np.full((256, 256, 3), fill, np.float32))
    channel = with_mean(ckpt_path, tmp_path / "ckpt" / "channel.pt", "channel")

    def stopped(*args, **kwargs):
        raise UserError("stopped midway")

    for earlier in (nets[130.0], channel):
        export(earlier, "weights", out)
        kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        with monkeypatch.context() as patch:
            patch.setattr(alexnet.export, "check_export", stopped)
            with pytest.raises(UserError, match="stopped midway"):
                export(nets[90.0], "weights", out)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == kept
    assert not mean_file.exists()


def test_an_unrelated_file_where_the_mean_file_goes_is_kept(ckpt_path, tmp_path, capsys):
    mine = tmp_path / "m.weights.pt.mean.npy"
    mine.write_text("mine")
    code = main(["export", str(ckpt_path), "--out", str(tmp_path / "m.weights.pt")])
    err = capsys.readouterr().err
    assert code == 2 and f"its mean image {mine}: an existing file that is not an earlier " \
        "export mean image" in err, err
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        mine.name]


def test_onnx_without_the_onnx_package_is_one_line(ckpt_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    code = main(["export", str(ckpt_path), "--format", "onnx", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install onnx" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_weights_file_is_smaller_and_loads_like_a_checkpoint(ckpt_path, tmp_path, capsys):
    out = tmp_path / "shared.weights.pt"
    assert main(["export", str(ckpt_path.parent), "--format", "weights", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "checked: outputs equal" in printed
    full, weights = checkpoint.load(ckpt_path), checkpoint.load(out)
    assert "optimizer" not in weights and weights["classes"] == CLASSES
    # the optimizer's momentum is as large as the weights: the file is about half the size
    assert out.stat().st_size < 0.6 * ckpt_path.stat().st_size
    for key, value in full["model"].items():
        assert torch.equal(weights["model"][key], value)
    np.testing.assert_array_equal(weights["stats"]["mean_image"], full["stats"]["mean_image"])


def test_unknown_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.pt"), "--format", "weights"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_export_rejects_an_unknown_format(ckpt_path):
    with pytest.raises(UserError, match="--format"):
        export(ckpt_path, "tflite")


def test_export_replaces_only_an_earlier_export_of_its_format(ckpt_path, tmp_path, capsys):
    from alexnet.data.store import write_store

    store = write_store(tmp_path / "store" / "test", np.zeros((2, 8, 8, 3), np.uint8), [0, 1],
                        CLASSES).path
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "config.json").write_text('{"a": 1}\n')
    kept = {p: p.read_bytes() for p in (ckpt_path, store / "labels.npy", notes,
                                        tmp_path / "config.json")}
    for out, fragment in ((ckpt_path, "not an earlier weights export"),
                          (store / "labels.npy", "inside the store"),
                          (tmp_path / "store" / "x.weights.pt", "inside the store"),
                          (notes, "not an earlier weights export"),
                          (tmp_path / "config", "its sidecar")):
        code = main(["export", str(ckpt_path), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
        assert "choose another --out" in err
    assert {p: p.read_bytes() for p in kept} == kept  # nothing lost
    assert not (tmp_path / "config").exists()
    out = tmp_path / "again.weights.pt"
    for _ in range(2):  # rerunning the same export is normal
        assert main(["export", str(ckpt_path), "--out", str(out)]) == 0
    code = main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out)])
    assert code == 2 and "not an earlier torchscript export" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["weights", "torchscript"])
def test_an_export_that_fails_midway_keeps_the_earlier_one(ckpt_path, tmp_path, monkeypatch,
                                                           fmt):
    """The file is written and checked aside, then renamed: an export stopped before its end
    (here its check fails; a kill is the same) leaves the earlier export and its sidecar as
    they were, and no temporary file. TorchScript was written onto the final name."""
    import alexnet.export

    out = tmp_path / f"m.{fmt}.pt"
    export(ckpt_path, fmt, out)
    kept = {p: p.read_bytes() for p in (out, out.with_name(out.name + ".json"),
                                        out.with_name(out.name + ".mean.npy"))}

    def stopped(*args, **kwargs):
        raise UserError("stopped midway")

    def half_written(*args):
        Path(args[-1]).write_bytes(b"half an export")  # the writer's path: its last argument

    monkeypatch.setattr(alexnet.export, f"export_{fmt}", half_written)
    monkeypatch.setattr(alexnet.export, "check_export", stopped)
    with pytest.raises(UserError, match="stopped midway"):
        export(ckpt_path, fmt, out)
    assert {p: p.read_bytes() for p in kept} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_an_export_removes_its_killed_temporaries_and_no_other_file(ckpt_path, tmp_path):
    """The temporaries that killed exports of this file (and its sidecar) left are removed; the
    folder is the user's, so another program's `.tmp-*` file of a dead pid stays."""
    from alexnet.atomic import TMP_PREFIX

    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # ended: its pid runs nothing
    dead.wait()
    out = tmp_path / "m.weights.pt"
    stale = [tmp_path / f"{TMP_PREFIX}m.weights.pt.{dead.pid}",
             tmp_path / f"{TMP_PREFIX}m.weights.pt.json.{dead.pid}",
             tmp_path / f"{TMP_PREFIX}m.weights.pt.mean.npy.{dead.pid}"]
    other = tmp_path / f"{TMP_PREFIX}notes.txt.{dead.pid}"
    for path in (*stale, other):
        path.write_bytes(b"left by a killed process")
    export(ckpt_path, "weights", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, out.name + ".json", out.name + ".mean.npy", other.name])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_tracing_warnings_are_not_shown(ckpt_path, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="onnx not installed: pip install onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export(ckpt_path, fmt, tmp_path / f"net.{fmt}")
    assert result["check"].startswith(("checked", "check skipped"))
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, DeprecationWarning)]
    assert shown == []


@pytest.mark.parametrize("given", [".", "checkpoint.pt"])
def test_the_default_name_comes_from_the_run_folder_given_relatively(ckpt_path, tmp_path,
                                                                     monkeypatch, given):
    """`cd RUN && alexnet export .` (or `checkpoint.pt`) wrote a hidden `.weights.pt`."""
    run = tmp_path / "run1"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(Path(ckpt_path).read_bytes())
    monkeypatch.chdir(run)
    export(given, "weights")
    assert (run / "run1.weights.pt").is_file() and (run / "run1.weights.pt.json").is_file()


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_the_default_name_of_an_export_of_an_export_drops_its_suffix(ckpt_path, tmp_path,
                                                                     monkeypatch):
    """`alexnet export m.weights.pt --format torchscript` wrote m.weights.torchscript.pt (and
    `--format weights`, m.weights.weights.pt)."""
    monkeypatch.chdir(tmp_path)
    export(ckpt_path, "weights", "m.weights.pt")
    export("m.weights.pt", "torchscript")
    export(tmp_path / "m.weights.pt", "weights")  # its own name: the same export again
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.torchscript.pt", "m.torchscript.pt.json", "m.torchscript.pt.mean.npy",
        "m.weights.pt", "m.weights.pt.json", "m.weights.pt.mean.npy"]


def test_an_out_that_names_a_folder_gets_the_default_name_in_it(ckpt_path, tmp_path, capsys):
    """`--out exports/` wrote a file named `exports`; `--out` an existing folder was refused."""
    assert main(["export", str(ckpt_path), "--out", f"{tmp_path / 'exports'}/"]) == 0
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "exports")]) == 0
    assert "exports/run.weights.pt (" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == [
        "run.weights.pt", "run.weights.pt.json", "run.weights.pt.mean.npy"]


OTHER = [{"wnid": f"o{i}", "name": f"other {i}"} for i in range(3)]


def test_two_exports_to_one_file_never_pair_one_file_with_the_other_sidecar(ckpt_path, tmp_path,
                                                                           monkeypatch):
    """B exporting to the same --out between A's rename and A's sidecar left B's file beside
    A's sidecar. Now B is refused while A writes, and no lock file stays in the folder."""
    import alexnet.export

    other = tmp_path / "other" / "checkpoint.pt"
    state = checkpoint.load(ckpt_path)
    state["classes"] = OTHER
    checkpoint.save(other, state)
    out = tmp_path / "m.weights.pt"
    write_json, second = alexnet.export.write_json, []

    def b_meanwhile(*args, **kwargs):
        if not second:  # A's file is in place, its sidecar not yet written
            second.append("written")
            try:
                export(other, "weights", out)
            except UserError as err:
                second[0] = str(err)
        return write_json(*args, **kwargs)

    monkeypatch.setattr(alexnet.export, "write_json", b_meanwhile)
    export(ckpt_path, "weights", out)
    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert checkpoint.load(out)["classes"] == info["classes"] == CLASSES  # A's pair
    assert f"--out {out}: another `alexnet export` is writing it" in second[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".json",
                                                          out.name + ".mean.npy", "other"]


def test_an_export_to_a_file_another_export_writes_is_refused_in_one_line(ckpt_path, tmp_path,
                                                                         capsys):
    out = tmp_path / "m.weights.pt"
    export(ckpt_path, "weights", out)
    with held_elsewhere(tmp_path / f".{out.name}.lock"):
        before = tree(tmp_path)
        code = main(["export", str(ckpt_path), "--out", str(out)])
        after = tree(tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"--out {out}: another `alexnet export` is writing it" in err
    assert "wait for it to end, or choose another --out" in err
    assert after == before
    assert main(["export", str(ckpt_path), "--out", str(out)]) == 0  # the lock went with it
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".json",
                                                          out.name + ".mean.npy"]


def test_torchscripts_deprecation_is_not_shown_as_a_future_warning(ckpt_path, tmp_path,
                                                                   monkeypatch):
    """torch 2.14 warns of TorchScript's deprecation with FutureWarning (2.13:
    DeprecationWarning, hidden by default): `alexnet export --format torchscript` printed
    three such notices to the user."""
    for name in ("trace", "load"):
        original = getattr(torch.jit, name)

        def deprecated(*args, _original=original, _name=name, **kwargs):
            warnings.warn(f"`torch.jit.{_name}` is deprecated. Please switch to `torch.compile` "
                          "or `torch.export`.", FutureWarning, stacklevel=2)
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch.jit, name, deprecated)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(ckpt_path, "torchscript", tmp_path / "net.torchscript")
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def run_with_best_and_last(ckpt_path: Path, root: Path) -> tuple[Path, dict, dict]:
    """A run folder whose best.pt and checkpoint.pt hold different weights (best, last)."""
    run = root / "run2"
    run.mkdir()
    best = checkpoint.load(ckpt_path)
    last = {**best, "model": {k: v + 1 if v.is_floating_point() else v
                              for k, v in best["model"].items()}}
    checkpoint.save(run / "best.pt", best)
    checkpoint.save(run / "checkpoint.pt", last)
    return run, best, last


def test_a_run_folder_exports_its_best_epoch_as_evaluate_takes_it(ckpt_path, tmp_path, capsys):
    """`alexnet export RUN` exported checkpoint.pt (the last epoch) where evaluate, predict and
    figures take best.pt (the epoch of lowest validation error): one rule for all of them."""
    run, best, _ = run_with_best_and_last(ckpt_path, tmp_path)
    out = tmp_path / "out.weights.pt"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert f"{run}: exporting best.pt (the run's lowest validation error" in \
        capsys.readouterr().err
    exported = checkpoint.load(out)["model"]
    assert exported.keys() == best["model"].keys()
    assert all(torch.equal(exported[k], v) for k, v in best["model"].items())
