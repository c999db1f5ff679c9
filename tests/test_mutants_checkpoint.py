"""What a mutation audit of checkpoint.py, export.py and predict.py found unchecked: nested
wrappers, cached Gaussian draws and a trial RNG restore, GPU-written files, format versions,
partial or overflowing weights, what a weights export keeps and what its check compares,
the sidecar of a store of another size, the files an export may replace, and predict's
preprocessing, 10 crops, channel mean, class names, ties, folders and best.pt. Expectations
come from NumPy, PIL and torch primitives (the net's forward on patches cut by hand)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.model import AlexNet

CLASSES = [{"wnid": f"n{i:08d}", "name": f"thing {i}"} for i in range(5)]
CROP = 224


def sensitive_net(seed: int = 0, **kwargs) -> AlexNet:
    """A small net whose outputs move with its input (PyTorch's default initialisation)."""
    torch.manual_seed(seed)
    net = AlexNet(num_classes=len(CLASSES), width=0.0625, **kwargs)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return net.eval()


def gradient_mean(size: int) -> np.ndarray:
    """A mean image that differs from pixel to pixel, so a window off by one shows."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([70 + x / 3, 90 + y / 4, 150 - (x + y) / 5], -1)


def stats_of(size: int) -> dict[str, np.ndarray]:
    return {"mean_image": gradient_mean(size),
            "channel_mean": np.array([110.0, 115.0, 120.0], np.float32)}


def noise_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 RGB of 4-pixel blocks of noise on a gradient (textured, not smooth)."""
    blocks = rng.normal(0, 45, ((height + 3) // 4, (width + 3) // 4, 3))
    noise = blocks.repeat(4, 0).repeat(4, 1)[:height, :width]
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([60 + 120 * x / width, 200 - 100 * y / height, 128 + 0 * x], -1)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def reference_probs(net: nn.Module, image: np.ndarray, mean: np.ndarray, crop: int,
                    crops: int) -> np.ndarray:
    """Section 4.1 by hand: (image - mean), the four corner patches and the centre one (offset
    (S - crop) // 2, rounded down) and their mirror images; the softmax averaged over them."""
    x = image.astype(np.float32) - mean
    side = x.shape[0]
    far, mid = side - crop, (side - crop) // 2
    offsets = [(mid, mid)] if crops == 1 else [(0, 0), (0, far), (far, 0), (far, far),
                                                (mid, mid)]
    patches = [x[t:t + crop, left:left + crop] for t, left in offsets]
    if crops == 10:
        patches += [p[:, ::-1] for p in patches]
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(patches).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        logits = net(batch).double().numpy()
    return softmax_rows(logits).mean(0)


def save_ckpt(path: Path, net: nn.Module, **fields) -> Path:
    base = {"classes": CLASSES, "stats": stats_of(256), "epoch": 1, "step": 0}
    return checkpoint.save(path, checkpoint.make_state(net, **{**base, **fields}))


# ------------------------------------------------------------------------------ checkpoint


class Compiled(nn.Module):
    """Stands for torch.compile's wrapper: the wrapped net as `_orig_mod`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


def test_unwrap_strips_nested_wrappers_of_either_kind():
    """`unwrap` goes through any nesting of compile and (Distributed)DataParallel wrappers,
    and the saved keys are the plain net's."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    for wrapped in (nn.DataParallel(Compiled(net)), Compiled(nn.DataParallel(net)),
                    Compiled(Compiled(net)), nn.DataParallel(nn.DataParallel(net))):
        assert checkpoint.unwrap(wrapped) is net
        assert set(checkpoint.make_state(wrapped)["model"]) == {"0.weight", "0.bias",
                                                                "2.weight", "2.bias"}


def draws() -> tuple:
    """One Gaussian draw from each generator (NumPy's and Python's cache a second one)."""
    return np.random.randn(3), random.gauss(0.0, 1.0), torch.randn(2)


def test_rng_state_through_a_file_restores_cached_gaussians(tmp_path):
    """An odd number of Gaussian draws leaves numpy's and Python's second value cached; the
    restored generators give the same next draws, cached values included."""
    np.random.randn(1)
    random.gauss(0.0, 1.0)
    path = checkpoint.save(tmp_path / "c.pt", {"format": checkpoint.FORMAT,
                                              "format_version": checkpoint.FORMAT_VERSION,
                                              "stats": None, "rng": checkpoint.rng_state()})
    first = draws()
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])
    again = draws()
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1] and torch.equal(first[2], again[2])


def test_checking_an_rng_state_leaves_the_generators_as_they_were():
    """`rng_problem` sets the generators on trial and must put the current ones back."""
    older = checkpoint.rng_state()
    draws()
    now = checkpoint.rng_state()
    assert checkpoint.rng_problem(older) is None
    after_check = draws()
    checkpoint.set_rng_state(now)
    expected = draws()
    np.testing.assert_array_equal(after_check[0], expected[0])
    assert after_check[1] == expected[1] and torch.equal(after_check[2], expected[2])


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    """Tensors saved from CUDA (their storages tagged cuda:0) come back on the CPU."""
    net = sensitive_net()
    state = checkpoint.make_state(net, classes=CLASSES, stats=stats_of(8))
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        path = checkpoint.save(tmp_path / "gpu.pt", state)
    ckpt = checkpoint.load(path)
    weight = ckpt["model"]["fc8.weight"]
    assert weight.device.type == "cpu" and torch.equal(weight, net.fc8.weight.detach())
    model, _ = checkpoint.load_model(path)
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("version", [0, 2, None])
def test_another_format_version_is_refused_naming_the_file(tmp_path, version):
    """Older and newer versions (and none) are refused; the message names the checkpoint
    file, also when a run folder is given."""
    state = {"format": checkpoint.FORMAT, "format_version": version, "stats": None}
    path = checkpoint.save(tmp_path / "run" / "checkpoint.pt", state)
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path / "run")
    assert str(err.value) == (f"{path}: checkpoint format version {version}, this alexnet "
                              "reads version 1; use a matching release")


def test_without_a_config_the_mean_is_the_image_mean(tmp_path):
    """A checkpoint that does not say its data.mean was trained with the paper's mean image
    (section 2): statistics without it are refused; without the channel mean, accepted."""
    stats = stats_of(8)
    net = sensitive_net()
    path = checkpoint.save(tmp_path / "c.pt", checkpoint.make_state(
        net, stats={"channel_mean": stats["channel_mean"]}))
    with pytest.raises(UserError, match="lack mean_image, which its data.mean = 'image'"):
        checkpoint.load(path)
    checkpoint.save(path, checkpoint.make_state(net, stats={"mean_image": stats["mean_image"]}))
    assert set(checkpoint.load(path)["stats"]) == {"mean_image"}


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_weights_with_a_key_missing_or_extra_do_not_fit(tmp_path, change):
    """A state_dict without fc8.bias (or with a stray key) is refused, not half loaded."""
    state = checkpoint.make_state(sensitive_net(), classes=CLASSES, stats=stats_of(8))
    if change == "missing":
        del state["model"]["fc8.bias"]
    else:
        state["model"]["fc9.weight"] = torch.zeros(2)
    checkpoint.save(tmp_path / "c.pt", state)
    with pytest.raises(UserError, match="the weights do not fit architecture 'alexnet'"):
        checkpoint.load_model(tmp_path / "c.pt")


def test_infinite_weights_are_refused(tmp_path):
    net = sensitive_net()
    with torch.no_grad():
        net.fc6.bias[1] = float("-inf")
    save_ckpt(tmp_path / "inf.pt", net)
    with pytest.raises(UserError, match="non-finite weights in fc6.bias"):
        checkpoint.load_model(tmp_path / "inf.pt")


def test_only_a_weights_export_counts_as_a_weights_file(tmp_path):
    """Marked weights_only and without an optimizer: both are needed (an export may replace
    such a file, never a training checkpoint)."""
    net = sensitive_net()
    cases = {"export": ({"weights_only": True}, True),
             "marked, with optimizer": ({"weights_only": True, "optimizer": {}}, False),
             "no optimizer, unmarked": ({}, False)}
    for name, (fields, expected) in cases.items():
        path = save_ckpt(tmp_path / f"{name}.pt", net, **fields)
        assert checkpoint.is_weights_file(path) is expected, name


# ---------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def channel_ckpt(tmp_path_factory) -> Path:
    """A checkpoint trained with data.mean = "channel", with metrics, epoch and step."""
    path = tmp_path_factory.mktemp("channel") / "c.pt"
    return save_ckpt(path, sensitive_net(), config={"data": {"mean": "channel", "crop": CROP}},
                     metrics=[{"epoch": 1, "val_top1": 0.5}], epoch=4, step=2,
                     optimizer={"state": {}, "param_groups": []}, schedule={"drops": 0},
                     rng=checkpoint.rng_state())


def test_a_weights_export_keeps_what_rebuilds_and_feeds_the_net(channel_ckpt, tmp_path):
    from alexnet.export import export

    export(channel_ckpt, "weights", tmp_path / "w.weights.pt")
    full, weights = checkpoint.load(channel_ckpt), checkpoint.load(tmp_path / "w.weights.pt")
    for key in ("classes", "config", "metrics", "epoch", "step", "arch", "model_args"):
        assert weights[key] == full[key], key
    np.testing.assert_array_equal(weights["stats"]["channel_mean"],
                                  full["stats"]["channel_mean"])
    assert weights["weights_only"] is True
    assert not {"optimizer", "schedule", "rng"} & set(weights)


@pytest.mark.parametrize("fmt", ["weights", "torchscript"])
@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_the_check_compares_the_written_file_with_the_checkpoint(channel_ckpt, tmp_path,
                                                                 monkeypatch, fmt):
    """An export whose file computes another function is refused by its check."""
    import alexnet.export

    def shifted(model: nn.Module) -> nn.Module:
        copy = AlexNet(**model.kwargs).eval()
        copy.load_state_dict({k: v + 0.5 for k, v in model.state_dict().items()})
        return copy

    if fmt == "weights":
        real = alexnet.export.export_weights
        monkeypatch.setattr(alexnet.export, "export_weights",
                            lambda model, ckpt, path: real(shifted(model), ckpt, path))
    else:
        real = alexnet.export.exportable
        monkeypatch.setattr(alexnet.export, "exportable", lambda model: real(shifted(model)))
    with pytest.raises(UserError, match="outputs differ from the checkpoint's"):
        alexnet.export.export(channel_ckpt, fmt, tmp_path / f"m.{fmt}.pt")
    assert not (tmp_path / f"m.{fmt}.pt").exists()


def test_the_comparison_refuses_nan_and_another_shape_and_is_relative():
    """max |a - b| / max(1, max |a|), by NumPy; NaN or a broadcastable other shape fails."""
    from alexnet.export import _compare, max_difference

    a = torch.tensor([[0.2, -0.4], [0.1, 0.3]])
    b = torch.tensor([[0.2, -0.3], [0.1, 0.3]])
    assert max_difference(a, b) == pytest.approx(0.1 / 1.0)
    big = a * 50
    assert max_difference(big, big + 1) == pytest.approx(1 / 20.0)
    with pytest.raises(UserError, match="outputs differ"):
        _compare("x", a, torch.full_like(a, float("nan")))
    with pytest.raises(UserError, match="outputs differ"):
        _compare("x", a[:1].repeat(3, 1), a[:1])  # one row for three: equal values


def test_the_sidecar_of_a_store_of_another_size_and_odd_margin(tmp_path):
    """A net trained on 240-pixel images with 225 crops: the sidecar says 240 and the centre
    window [7:232] ((240 - 225) // 2, rounded down as the loader does); that window of
    (image - mean image) through the net gives predict's probabilities."""
    from alexnet.export import export
    from alexnet.predict import predict_images

    net = sensitive_net(crop=225)
    path = save_ckpt(tmp_path / "c.pt", net, stats=stats_of(240),
                     config={"data": {"mean": "image", "crop": 225}})
    info = json.loads(Path(export(path, "weights", tmp_path / "c.weights.pt")["info"])
                      .read_text())
    assert info["image_size"] == 240 and info["input"] == "float32 (N, 3, 225, 225) RGB"
    assert "shorter side 240, central 240x240" in info["normalise"]
    assert "float32 (240, 240, 3)" in info["normalise"]
    assert "rows and columns [7:232, 7:232]" in info["normalise"]
    image = noise_image(np.random.default_rng(3), 240, 240)
    mean = np.load(tmp_path / info["mean_image"])
    x = (image.astype(np.float32) - mean)[7:232, 7:232].transpose(2, 0, 1)
    with torch.no_grad():
        by_recipe = softmax_rows(net(torch.from_numpy(x.copy())[None]).double().numpy())
    model, ckpt = checkpoint.load_model(path)
    got = predict_images(model, image[None], ckpt, crops=1).numpy()
    np.testing.assert_allclose(got, by_recipe, atol=1e-5)


def test_a_torchvision_layout_net_is_exported_for_its_training_crop(tmp_path):
    """The torchvision layout is not sized by data.crop (its model.crop_size stays 224): an
    export of one trained on 64 crops of 72-pixel images takes 64x64 inputs, the centre
    window (72 - 64) // 2 = 4. (A full-size net: about 5 s and 440 MB, removed after.)"""
    from alexnet.export import export
    from alexnet.model import build_model

    torch.manual_seed(0)
    net = build_model("alexnet-tv", num_classes=len(CLASSES))
    path = checkpoint.save(tmp_path / "tv.pt", checkpoint.make_state(
        net, classes=CLASSES, stats={"mean_image": gradient_mean(72)},
        config={"data": {"mean": "image", "crop": 64}}))
    del net
    try:
        result = export(path, "weights", tmp_path / "tv.weights.pt")
        info = json.loads(Path(result["info"]).read_text())
    finally:
        for file in tmp_path.glob("tv.*pt"):
            file.unlink()
    assert result["check"].startswith("checked: outputs equal")
    assert info["input"] == "float32 (N, 3, 64, 64) RGB" and info["image_size"] == 72
    assert "the 64x64 patch cut (the centre one: rows and columns [4:68, 4:68]" in \
        info["normalise"]


def test_the_mean_file_is_float32_whatever_the_checkpoint_holds(tmp_path):
    from alexnet.export import export

    mean = gradient_mean(256).astype(np.float64) + 0.25
    path = save_ckpt(tmp_path / "c.pt", sensitive_net(), stats={"mean_image": mean})
    result = export(path, "weights", tmp_path / "m.weights.pt")
    saved = np.load(result["mean_image"])
    assert saved.dtype == np.float32
    np.testing.assert_array_equal(saved, mean.astype(np.float32))
    export(path, "weights", tmp_path / "m.weights.pt")  # its own export may be replaced


@pytest.mark.parametrize("what, content", [
    ("float64 mean image", np.zeros((8, 8, 3))),
    ("not square", np.zeros((4, 5, 3), np.float32)),
    ("a json with a format", {"format": "weights", "note": "mine"}),
])
def test_unrelated_files_where_the_mean_file_or_sidecar_goes_are_kept(channel_ckpt, tmp_path,
                                                                      what, content):
    """Only an earlier export's float32 (S, S, 3) mean image or sidecar (format, input and
    classes) may be replaced."""
    from alexnet.export import export

    out = tmp_path / "m.weights.pt"
    if isinstance(content, dict):
        mine = tmp_path / "m.weights.pt.json"
        mine.write_text(json.dumps(content))
    else:
        mine = tmp_path / "m.weights.pt.mean.npy"
        np.save(mine, content)
    before = mine.read_bytes()
    with pytest.raises(UserError, match="choose another --out"):
        export(channel_ckpt, "weights", out)
    assert mine.read_bytes() == before and sorted(tmp_path.iterdir()) == [mine]


# --------------------------------------------------------------------------------- predict


def test_top_k_is_most_probable_first_ties_in_class_order_and_bounded():
    from alexnet.predict import top_k

    probs = torch.tensor([[0.1, 0.3, 0.05, 0.3, 0.25], [0.2, 0.2, 0.2, 0.2, 0.2]])
    for k in (1, 3, 5, 9):
        values, labels = top_k(probs, k)
        order = np.argsort(-probs.numpy(), axis=1, kind="stable")[:, :min(k, 5)]
        assert labels.tolist() == order.tolist()
        np.testing.assert_array_equal(values.numpy(),
                                      np.take_along_axis(probs.numpy(), order, 1))
    wide = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (2, 1000)) / 4.0)
    _, labels = top_k(wide, 1000)  # a 1000-class net whose outputs tie (underflow to 0)
    assert labels.tolist() == np.argsort(-wide.numpy(), axis=1, kind="stable").tolist()


def test_labels_beyond_the_class_list_are_named_by_number():
    from alexnet.predict import described

    classes = CLASSES[:2]
    assert described([0.5, 0.3, 0.2], [2, 1, 0], classes) == [
        {"label": 2, "wnid": "", "name": "class 2", "probability": 0.5},
        {"label": 1, "wnid": "n00000001", "name": "thing 1", "probability": 0.3},
        {"label": 0, "wnid": "n00000000", "name": "thing 0", "probability": 0.2}]
    assert described([1.0], [0], None)[0]["name"] == "class 0"


def test_load_images_rescales_the_shorter_side_and_cuts_the_centre(tmp_path):
    """A 256x320 file (shorter side already 256): rows 32:288 exactly. A 400x300 one: PIL's
    bilinear resize to 341x256, then columns 42:298 (within rounding)."""
    from alexnet.predict import load_images

    rng = np.random.default_rng(0)
    tall, wide = noise_image(rng, 320, 256), noise_image(rng, 300, 400)
    Image.fromarray(tall).save(tmp_path / "tall.png")
    Image.fromarray(wide).save(tmp_path / "wide.png")
    got = load_images([tmp_path / "tall.png", tmp_path / "wide.png"], 256)
    np.testing.assert_array_equal(got[0], tall[32:288])
    resized = np.asarray(Image.fromarray(wide).resize((341, 256), Image.BILINEAR))
    diff = np.abs(got[1].astype(int) - resized[:, 42:298].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05
    small = load_images([tmp_path / "tall.png"], 240)  # another store's size: 240x300
    tall240 = np.asarray(Image.fromarray(tall).resize((240, 300), Image.BILINEAR))
    assert np.abs(small[0].astype(int) - tall240[30:270].astype(int)).max() <= 1


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """PNG files (lossless) whose preprocessed 256x256 image is known exactly: a square one,
    and a 256x320 one whose central 256 rows are cut."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    square, tall = noise_image(rng, 256, 256), noise_image(rng, 320, 256)
    Image.fromarray(square).save(folder / "square.png")
    Image.fromarray(tall).save(folder / "tall.png")
    return {"square": (folder / "square.png", square),
            "tall": (folder / "tall.png", tall[32:288])}


def predicted(args: list[str], capsys) -> list[dict[str, float]]:
    """`alexnet predict ... --json`: for each file, probability by label."""
    assert main(["predict", *args, "--json", "--device", "cpu"]) == 0
    return [{t["label"]: t["probability"] for t in row["top"]}
            for row in json.loads(capsys.readouterr().out)]


@pytest.mark.parametrize("crops", [1, 10])
def test_predict_gives_the_softmax_averaged_over_patches_cut_by_hand(tmp_path, image_files,
                                                                     capsys, crops):
    """--crops 10: the corners, centre and mirror images of (image - mean image); --crops 1
    the centre; every class's probability as NumPy computes it from the net's logits."""
    net = sensitive_net()
    path = save_ckpt(tmp_path / "net.pt", net)
    files = [image_files["square"], image_files["tall"]]
    got = predicted([str(path), *(str(f) for f, _ in files), "--crops", str(crops),
                     "--top", "5"], capsys)
    for row, (_, image) in zip(got, files, strict=True):
        want = reference_probs(net, image, gradient_mean(256), CROP, crops)
        assert sorted(row) == list(range(5))
        np.testing.assert_allclose([row[i] for i in range(5)], want, atol=1e-5)
    top3 = predicted([str(path), str(files[0][0]), "--crops", str(crops), "--top", "3"],
                     capsys)[0]
    assert list(top3) == list(np.argsort(-np.array([got[0][i] for i in range(5)]))[:3])


def test_predict_subtracts_the_channel_mean_of_a_channel_net(tmp_path, image_files, capsys):
    net = sensitive_net(1)
    path = save_ckpt(tmp_path / "net.pt", net, config={"data": {"mean": "channel"}})
    file, image = image_files["tall"]
    (row,) = predicted([str(path), str(file), "--crops", "10"], capsys)
    want = reference_probs(net, image, stats_of(256)["channel_mean"], CROP, 10)
    np.testing.assert_allclose([row[i] for i in range(5)], want, atol=1e-5)


def test_predict_rescales_to_the_store_of_the_checkpoint(tmp_path, capsys):
    """A net trained on 240-pixel images: a 240x300 file is cut to rows 30:270, and the 10
    patches are cut from 240 (margins 16 and 8)."""
    from alexnet.predict import image_size

    net = sensitive_net(2)
    path = save_ckpt(tmp_path / "net240.pt", net, stats=stats_of(240))
    assert image_size(checkpoint.load(path)) == 240
    assert image_size({"stats": None}) == 256
    image = noise_image(np.random.default_rng(5), 300, 240)
    Image.fromarray(image).save(tmp_path / "tall.png")
    (row,) = predicted([str(path), str(tmp_path / "tall.png"), "--crops", "10"], capsys)
    want = reference_probs(net, image[30:270], gradient_mean(240), CROP, 10)
    np.testing.assert_allclose([row[i] for i in range(5)], want, atol=1e-5)


def test_predict_of_a_run_folder_uses_its_best_epoch(tmp_path, image_files, capsys):
    best, last = sensitive_net(3), sensitive_net(4)
    run = tmp_path / "run"
    save_ckpt(run / "best.pt", best)
    save_ckpt(run / "checkpoint.pt", last)
    file, image = image_files["square"]
    (row,) = predicted([str(run), str(file), "--crops", "1"], capsys)
    want = reference_probs(best, image, gradient_mean(256), CROP, 1)
    np.testing.assert_allclose([row[i] for i in range(5)], want, atol=1e-5)


@pytest.mark.parametrize("option, value, says", [
    ("--top", "0", "--top 0: give at least 1"),
    ("--max-pixels", "0", "--max-pixels 0: must be a positive number of pixels"),
])
def test_predict_refuses_a_zero_top_or_max_pixels(tmp_path, image_files, capsys, option,
                                                  value, says):
    path = save_ckpt(tmp_path / "net.pt", sensitive_net())
    code = main(["predict", str(path), str(image_files["square"][0]), option, value])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and says in captured.err


def test_a_folder_is_its_visible_image_files_in_path_order(tmp_path):
    from alexnet.predict import expand_folders

    folder = tmp_path / "photos"
    names = ["z.png", "b/c.jpg", "a.jpeg", "b/a.png", ".cache/x.png", "b/.y.png", "m.JPG"]
    for name in names:  # created out of order
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    assert expand_folders([folder, tmp_path / "single.png"]) == [
        folder / "a.jpeg", folder / "b" / "a.png", folder / "b" / "c.jpg", folder / "m.JPG",
        folder / "z.png", tmp_path / "single.png"]


def test_predict_without_statistics_or_with_overflowing_outputs_is_refused(tmp_path):
    from alexnet.predict import predict_images

    net = sensitive_net()
    images = noise_image(np.random.default_rng(0), 256, 256)[None]
    ckpt = {"classes": CLASSES, "stats": None, "arch": "alexnet"}
    with pytest.raises(UserError, match="holds no normalisation statistics"):
        predict_images(net, images, ckpt, crops=1)
    with torch.no_grad():  # finite weights whose logits overflow float32
        net.fc8.weight.fill_(3e38)  # its inputs sum to about 18: every logit is +inf
    with pytest.raises(UserError, match="outputs are not finite"):
        predict_images(net, images, {**ckpt, "stats": stats_of(256)}, crops=1)


def test_a_net_without_class_names_shows_every_output_by_number(tmp_path, image_files,
                                                                capsys):
    """No `classes` in the file: every one of the net's outputs is still ranked (named
    "class N"), with the probabilities NumPy computes."""
    net = sensitive_net(5)
    path = save_ckpt(tmp_path / "net.pt", net, classes=None)
    file, image = image_files["square"]
    assert main(["predict", str(path), str(file), "--json", "--crops", "1"]) == 0
    (top,) = [row["top"] for row in json.loads(capsys.readouterr().out)]
    want = reference_probs(net, image, gradient_mean(256), CROP, 1)
    assert [t["label"] for t in top] == list(np.argsort(-want, kind="stable"))
    assert [t["name"] for t in top] == [f"class {t['label']}" for t in top]
    np.testing.assert_allclose([t["probability"] for t in top], np.sort(want)[::-1], atol=1e-5)


def test_a_class_named_by_its_wnid_is_printed_once(tmp_path, image_files, capsys):
    """Own data sets name classes by their folder: wnid == name is shown once, not
    "cat (cat)"; a distinct wnid follows the name in brackets."""
    classes = [{"wnid": "cat", "name": "cat"}] + CLASSES[1:]
    path = save_ckpt(tmp_path / "net.pt", sensitive_net(), classes=classes)
    assert main(["predict", str(path), str(image_files["square"][0]), "--top", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 5
    names = [line.split("%", 1)[1].strip() for line in lines]
    assert "cat" in names and "thing 1 (n00000001)" in names
