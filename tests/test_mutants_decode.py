"""Wrong decodes and wrong evaluation counts that the other tests let through (found by a
mutation audit of decode.py's CPU side and evaluate.py), each against PIL, NumPy or the
paper's definitions (section 6: top-k error; section 4.1: the 10 patches' softmax average)."""

from __future__ import annotations

import importlib.machinery
import io
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from alexnet.data import decode
from alexnet.data.store import open_split, write_store
from alexnet.evaluate import (
    Stopped,
    evaluate_model,
    format_table,
    predict_probs,
    topk_errors,
    topk_wrong,
)
from alexnet.paper import IMAGE_SIZE, RESULTS

SIZE = 48
RNG = np.random.default_rng(2012)


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def lopsided(seed: int) -> np.ndarray:
    """An image unlike its transpose, its mirror images and its channel swaps."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    noise = np.random.default_rng(seed).integers(0, 40, (SIZE, SIZE))
    return np.stack([(4 * x + noise) % 256, (y * y // 12 + 7 * seed) % 256,
                     np.full_like(x, 30 + 40 * seed)], axis=-1).astype(np.uint8)


def pil_rgb(blob: bytes) -> np.ndarray:
    """PIL's own decode to RGB, written apart from decode.py."""
    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    return [jpeg(lopsided(seed)) for seed in range(3)]


@pytest.fixture
def fresh_probes():
    """The decoders' import checks (cached) redone inside the test and after it."""
    decode.importable.cache_clear()
    yield
    decode.importable.cache_clear()


def fake_module(monkeypatch, name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def fake_cv2(monkeypatch, has_rgb_flag: bool) -> None:
    """OpenCV stood in for by PIL, as its documentation has it: imdecode gives BGR with
    IMREAD_COLOR, RGB with IMREAD_COLOR_RGB (OpenCV 4.11 on), None for undecodable bytes."""
    def imdecode(array: np.ndarray, flag: int):
        try:
            rgb = pil_rgb(array.tobytes())
        except OSError:
            return None
        return rgb.copy() if flag == 7 else np.ascontiguousarray(rgb[..., ::-1])

    flags = {"IMREAD_COLOR": 1, **({"IMREAD_COLOR_RGB": 7} if has_rgb_flag else {})}
    fake_module(monkeypatch, "cv2", imdecode=imdecode, **flags)


def fake_torchvision(monkeypatch) -> None:
    """torchvision.io.decode_jpeg stood in for by PIL, as documented: (C, H, W) uint8, C the
    file's own channels with ImageReadMode.UNCHANGED, 3 with RGB; RuntimeError (a message of
    several lines) for bytes that are not a JPEG."""
    def decode_jpeg(data: torch.Tensor, mode: str = "UNCHANGED", device=None):
        try:
            with Image.open(io.BytesIO(bytes(data.numpy()))) as image:
                pixels = np.asarray(image.convert("RGB") if mode == "RGB" else image)
        except OSError as err:
            raise RuntimeError(f"Not a JPEG file\nlibjpeg said: {err}") from None
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    package = fake_module(monkeypatch, "torchvision")
    package.io = fake_module(monkeypatch, "torchvision.io", decode_jpeg=decode_jpeg,
                             ImageReadMode=types.SimpleNamespace(RGB="RGB",
                                                                 UNCHANGED="UNCHANGED"))


# ------------------------------------------------------------------------ decoders stood in


@pytest.mark.parametrize("has_rgb_flag", [False, True])
def test_cv2_gives_rgb_whichever_flag_opencv_has(monkeypatch, fresh_probes, blobs,
                                                  has_rgb_flag) -> None:
    """OpenCV's BGR is turned to RGB (old OpenCV), its RGB kept (new): PIL's pixels; bytes it
    cannot decode (imdecode's None) are an UndecodableImage naming the row."""
    fake_cv2(monkeypatch, has_rgb_flag)
    assert decode.resolve_cpu_decoder("cv2") == "cv2"
    out = decode.decode_cpu(blobs, SIZE, "cv2")
    np.testing.assert_array_equal(out, np.stack([pil_rgb(b) for b in blobs]))
    with pytest.raises(decode.UndecodableImage) as info:
        decode.decode_cpu([blobs[0], b"not a jpeg"], SIZE, "cv2")
    assert info.value.row == 1


def test_torchvision_cpu_decode_is_rgb_height_by_width(monkeypatch, fresh_probes, blobs) -> None:
    """torchvision's (C, H, W) comes out as (H, W, C) (not transposed), asked for in RGB (a
    grey JPEG then has three channels), and its multi-line RuntimeError for garbage is a
    one-line UndecodableImage."""
    fake_torchvision(monkeypatch)
    assert decode.resolve_cpu_decoder("torchvision") == "torchvision"
    out = decode.decode_cpu(blobs, SIZE, "torchvision")
    np.testing.assert_array_equal(out, np.stack([pil_rgb(b) for b in blobs]))
    grey = jpeg(lopsided(0)[..., 0])
    np.testing.assert_array_equal(decode.decode_cpu([grey], SIZE, "torchvision")[0],
                                  pil_rgb(grey))
    with pytest.raises(decode.UndecodableImage) as info:
        decode.decode_cpu([blobs[0], blobs[1], b"garbage"], SIZE, "torchvision")
    assert info.value.row == 2 and "\n" not in str(info.value)


# -------------------------------------------------------------------------- real decoders


def test_a_grey_jpeg_is_its_grey_in_all_three_channels(blobs) -> None:
    """Each CPU decoder here turns a one-channel JPEG into R = G = B = PIL's grey levels."""
    grey_pixels = lopsided(1)[..., 0]
    blob = jpeg(grey_pixels)
    with Image.open(io.BytesIO(blob)) as image:
        assert image.mode == "L"
        levels = np.asarray(image).astype(np.int64)
    for name in decode.available_cpu_decoders():
        out = decode.decode_cpu([blob], SIZE, name)[0].astype(np.int64)
        for channel in range(3):
            assert np.abs(out[..., channel] - levels).max() <= 1, name


def test_the_error_names_the_row_and_the_size_for_each_decoder(blobs) -> None:
    """The UndecodableImage of a JPEG of another size names its row in the batch and the
    store's size, on one line."""
    other = jpeg(np.ascontiguousarray(lopsided(2)[:, : SIZE - 8]))
    for name in decode.available_cpu_decoders():
        with pytest.raises(decode.UndecodableImage) as info:
            decode.decode_cpu([blobs[0], blobs[1], other], SIZE, name)
        assert info.value.row == 2, name
        assert f"does not decode to {SIZE}x{SIZE} RGB" in str(info.value), name
        assert str(info.value).startswith("store image 2 of the batch"), name
        assert "\n" not in str(info.value), name


def test_blobs_as_arrays_and_memoryviews_decode_as_bytes(blobs) -> None:
    """The store hands out JPEG bytes as NumPy views: each decoder reads them as bytes."""
    reference = np.stack([pil_rgb(b) for b in blobs])
    views = [np.frombuffer(b, np.uint8) for b in blobs[:2]] + [memoryview(blobs[2])]
    for name in decode.available_cpu_decoders():
        np.testing.assert_array_equal(decode.decode_cpu(views, SIZE, name), reference)


def test_the_gpu_batch_names_a_truncated_jpeg_that_pil_opens(monkeypatch, blobs) -> None:
    """A batch decode that fails naming no image: the row found is that of a JPEG cut short,
    whose header PIL still opens but whose pixels it cannot decode."""
    def batch_failing(data, mode, device=None):
        raise RuntimeError("nvjpegDecodeBatched failed: 5")

    package = fake_module(monkeypatch, "torchvision")
    package.io = fake_module(monkeypatch, "torchvision.io", decode_jpeg=batch_failing,
                             ImageReadMode=types.SimpleNamespace(RGB="RGB"))
    scan = blobs[1].index(b"\xff\xda")  # start of scan: the header ends here
    cut = blobs[1][: (scan + len(blobs[1])) // 2]
    with Image.open(io.BytesIO(cut)) as image:
        assert image.size == (SIZE, SIZE)  # the header reads
    with pytest.raises(decode.UndecodableImage) as info:
        decode._torchvision_gpu([blobs[0], cut, blobs[2]], SIZE, torch.device("cpu"))
    assert info.value.row == 1


# ------------------------------------------------------------------------------- top-k


def test_an_infinite_probability_counts_as_wrong_at_every_k() -> None:
    """+inf (a diverged net) is no probability: its image is wrong even where the inf is at
    the true class, like a NaN."""
    probs = torch.tensor([[float("inf"), 0.1, 0.2, 0.3, 0.4],
                          [0.1, 0.2, 0.3, 0.4, 0.0],
                          [0.5, 0.1, 0.1, 0.1, 0.2]])
    labels = torch.tensor([0, 3, 0])
    assert topk_wrong(probs, labels, ks=(1, 2)) == {"top1_wrong": 1, "top2_wrong": 1}


def test_a_broken_image_is_wrong_in_the_top_k_of_all_the_classes() -> None:
    """With k equal to the number of classes every label is in the top k; an image with a NaN
    is still wrong (its true class is not ranked at all)."""
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.2, float("nan"), 0.2, 0.2, 0.2]])
    labels = torch.tensor([4, 0])
    assert topk_wrong(probs, labels, ks=(5,)) == {"top5_wrong": 1}


def test_labels_not_one_per_image_are_refused() -> None:
    """One label for several images is a ValueError, not that label applied to all."""
    probs = torch.tensor(np.random.default_rng(0).random((4, 6)))
    for labels in (torch.tensor([0]), torch.tensor([0, 1, 2]), torch.zeros(4, 1)):
        with pytest.raises(ValueError, match="labels"):
            topk_errors(probs, labels)


# ----------------------------------------------------------------------- predict_probs


def test_an_empty_batch_is_skipped_and_crops_must_divide() -> None:
    """A batch of no images adds nothing; crops that are not a whole number per image (7 rows
    for 2 images of 6 classes: a view would still fit) are a ValueError."""
    logits = RNG.normal(size=(4, 6)).astype(np.float32)
    batches = [(torch.zeros(0, 6), torch.zeros(0, dtype=torch.int64)),
               (torch.from_numpy(logits), torch.tensor([1, 2, 3, 4]))]
    probs, labels = predict_probs(nn.Identity(), batches)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs.numpy(), e / e.sum(1, keepdims=True), rtol=1e-5)
    assert labels.tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="image-major"):
        predict_probs(nn.Identity(), [(torch.zeros(7, 6), torch.tensor([0, 1]))])


def test_the_net_is_put_back_in_the_mode_it_was_in() -> None:
    """Training validates with the net in training mode: it is in that mode again after."""
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5)).train()
    predict_probs(net, [(torch.ones(2, 3), torch.tensor([0, 1]))])
    assert net.training and net[1].training
    net.eval()
    predict_probs(net, [(torch.ones(2, 3), torch.tensor([0, 1]))])
    assert not net.training


# ---------------------------------------------------------------------- evaluate_model

PREFERENCE = torch.tensor([2.0, 1.0, 0.0])  # class 0 over 1 over 2, whatever the image
LABELS = [0, 1, 2, 0, 2, 1, 1]


class Fixed(nn.Module):
    """A net that ranks the classes in PREFERENCE's order for every patch: the true class's
    rank is its label, so top-k counts follow from the labels alone."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return PREFERENCE.expand(x.shape[0], 3).clone()


CLASSES = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store_mutants_decode")
    images = RNG.integers(0, 256, (len(LABELS), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    write_store(root / "val", images, LABELS, CLASSES)
    return open_split(root, "val")


@pytest.mark.parametrize("crops", [1, 10])
def test_evaluate_model_counts_each_image_once(store, crops) -> None:
    """Counts of the images evaluated (all, a subset, one): top-1 wrong = labels not 0,
    top-5 wrong = 0 with 3 classes; the crops are said as given."""
    for indices in (None, [1, 2, 3], [5]):
        chosen = LABELS if indices is None else [LABELS[i] for i in indices]
        got = evaluate_model(Fixed(), store, crops=crops, batch_size=3, indices=indices)
        wrong = sum(label != 0 for label in chosen)
        assert got == {"top1_error": wrong / len(chosen), "top5_error": 0.0,
                       "top1_wrong": wrong, "top5_wrong": 0, "images": len(chosen),
                       "crops": crops}


def test_evaluate_model_of_no_images_gives_no_error_rate(store) -> None:
    """No images: counts 0 and NaN error rates, not a 0% error."""
    got = evaluate_model(Fixed(), store, indices=[])
    assert got["images"] == 0 and got["top1_wrong"] == got["top5_wrong"] == 0
    assert np.isnan(got["top1_error"]) and np.isnan(got["top5_error"])


def test_stop_is_asked_before_each_batch_and_raises(store) -> None:
    """`stop` true before the first batch: Stopped with no batch run; true before the third:
    Stopped after two, never a partial result."""
    net = Fixed()
    with pytest.raises(Stopped):
        evaluate_model(net, store, batch_size=3, stop=lambda: True)
    assert net.calls == 0
    asked = []
    with pytest.raises(Stopped):
        evaluate_model(net, store, batch_size=3, stop=lambda: asked.append(1) or len(asked) > 2)
    assert net.calls == 2 and len(asked) == 3


def test_each_net_of_an_ensemble_is_fed_its_checkpoints_statistics(monkeypatch) -> None:
    """The module's rule: a net sees the normalisation statistics it was trained with (its
    checkpoint's), the store's only when its checkpoint has none (loader and nets stood in)."""
    from alexnet import checkpoint
    from alexnet import evaluate as ev

    fed = []

    def loader(store, *, stats, **kwargs):
        fed.append(stats)
        return [(torch.zeros(2, 3), torch.tensor([0, 1]))]

    monkeypatch.setattr(ev, "eval_loader", loader)
    monkeypatch.setattr(ev, "input_settings", lambda ckpt: {})
    monkeypatch.setattr(ev, "check_inputs", lambda *args: None)  # the store stood in has no size
    monkeypatch.setattr(checkpoint, "model_from_state", lambda ckpt, path, device: nn.Identity())
    store = types.SimpleNamespace(stats={"mean": "the store's"}, classes=None)
    ckpts = [{"stats": {"mean": "net a's"}}, {}, {"stats": {"mean": "net c's"}}]
    ev.ensemble_probs(["a.pt", "b.pt", "c.pt"], store, loaded=ckpts)
    assert fed == [{"mean": "net a's"}, {"mean": "the store's"}, {"mean": "net c's"}]


def test_the_cli_json_says_the_crops_and_an_ensembles_report_is_named_for_it(store, tmp_path,
                                                                             capsys) -> None:
    """`evaluate A B --crops 10 --json`: the JSON says 10 crops and the store's 7 images, and
    the report beside the first checkpoint is named for the ensemble of 2
    (docs/evaluation.md: `<checkpoint>-ensembleN...`)."""
    import json

    from alexnet.checkpoint import make_state, save
    from alexnet.cli import main
    from alexnet.model import AlexNet

    torch.manual_seed(0)
    net = tmp_path / "net.pt"
    save(net, make_state(AlexNet(num_classes=3, width=0.0625), classes=CLASSES,
                         stats=store.stats, epoch=1, step=0))
    twin = shutil.copyfile(net, tmp_path / "twin.pt")  # one file twice is refused
    code = main(["evaluate", str(net), str(twin), "--data", str(store.path.parent), "--split",
                 "val", "--crops", "10", "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["crops"] == 10 and result["images"] == len(LABELS)
    assert [p.name for p in tmp_path.glob("net-ensemble2.*")] != []


def table_result(checkpoints: int) -> dict:
    return {"top1_error": 0.4123, "top5_error": 0.1987, "images": 50000, "crops": 10,
            "checkpoints": [f"{i}.pt" for i in range(checkpoints)]}


def test_the_table_shows_both_errors_and_marks_the_row_of_as_many_cnns() -> None:
    """The run's line holds 41.23% and 19.87%; of the paper's ILSVRC-2012 rows the one of as
    many CNNs as checkpoints is marked, and no row for a count the paper has not."""
    for n, row in ((1, "1 CNN"), (5, "5 CNNs"), (7, "7 CNNs"), (3, None)):
        lines = format_table(table_result(n), "ilsvrc2012", "val").splitlines()
        ours = next(line for line in lines if line.startswith("this run"))
        assert ours.split()[-2:] == ["41.23%", "19.87%"]
        marked = [line for line in lines if line.endswith("<-")]
        if row is None:
            assert marked == []
        else:
            top1, top5 = RESULTS["ilsvrc2012-val"][row]
            assert len(marked) == 1 and marked[0].startswith(f"paper ilsvrc2012-val: {row} ")
            assert marked[0].split()[-3:-1] == [f"{top1:.1f}%", f"{top5:.1f}%"]


@pytest.mark.parametrize("classes", [2, 5, 6])
def test_the_top5_column_is_left_out_with_five_classes_or_fewer(classes) -> None:
    """Section 6's top-5 error is 0 by construction with 5 classes or fewer: not shown then."""
    table = format_table(table_result(1), "cifar10", "test", num_classes=classes)
    assert ("top-5 error" in table.splitlines()[0]) is (classes > 5)
