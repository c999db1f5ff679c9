"""predict: real image files of every kind in, the five most probable classes out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import make_state, save
from alexnet.cli import main
from alexnet.data.stats import compute_stats
from alexnet.model import AlexNet
from alexnet.paper import CROP_SIZE, IMAGE_SIZE

CLASSES = [{"wnid": "n00000001", "name": "red thing"}, {"wnid": "n00000002", "name": "blue thing"}]
CLASSES += [{"wnid": f"n1000000{i}", "name": f"unused {i}"} for i in range(4)]
RED, BLUE = 0, 1


def photo(rng: np.random.Generator, height: int, width: int, colour: int) -> np.ndarray:
    """A photo-like uint8 image: a tinted gradient, blobs and noise, mostly red or blue."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.zeros((height, width, 3))
    base[..., 0 if colour == RED else 2] = 150 + 80 * np.sin(6 * x + rng.uniform(0, 6))
    base[..., 1] = 40 + 30 * y
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        base[((y - cy) ** 2 + (x - cx) ** 2) < r * r] *= rng.uniform(0.6, 1.2)
    base += rng.normal(0, 12, size=base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def centre(image: np.ndarray) -> np.ndarray:
    """The paper's preprocessing for square inputs is the identity; make them 256x256."""
    return np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small net trained (a few seconds) to tell red photos from blue ones."""
    rng = np.random.default_rng(0)
    labels = np.array([RED, BLUE] * 12)
    images = np.stack([centre(photo(rng, 200, 200, c)) for c in labels])
    stats = compute_stats(images)
    mean = torch.from_numpy(np.asarray(stats["mean_image"], np.float32))
    torch.manual_seed(0)
    # speed over faithfulness here: no LRN, no dropout, PyTorch's default init and Adam
    model = AlexNet(num_classes=len(CLASSES), width=0.0625, lrn=False, dropout=0.0)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):  # random conv features suffice
        getattr(model, name).requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = torch.from_numpy(images).float() - mean
    target = torch.from_numpy(labels)
    model.train()
    for step in range(10):
        idx = torch.from_numpy(np.random.default_rng(step).choice(len(images), 8, False))
        oy, ox = np.random.default_rng(100 + step).integers(0, IMAGE_SIZE - CROP_SIZE + 1, 2)
        x = data[idx, oy:oy + CROP_SIZE, ox:ox + CROP_SIZE].permute(0, 3, 1, 2).contiguous()
        loss = torch.nn.functional.cross_entropy(model(x), target[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("net") / "net.pt"
    save(path, make_state(model, classes=CLASSES, stats=stats, epoch=1, step=0))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real files: JPEG and PNG of different sizes, greyscale, CMYK, palette, and a fake."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    out = {}
    out["red.jpg"] = photo(rng, 240, 320, RED)
    out["blue.png"] = photo(rng, 500, 200, BLUE)
    out["red_big.jpg"] = photo(rng, 480, 640, RED)
    out["blue_small.jpg"] = photo(rng, 120, 90, BLUE)
    for name, array in out.items():
        Image.fromarray(array).save(folder / name, quality=92)
    Image.fromarray(photo(rng, 300, 260, RED)).convert("L").save(folder / "grey.jpg")
    Image.fromarray(photo(rng, 260, 300, BLUE)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(photo(rng, 256, 256, RED)).convert("P").save(folder / "palette.png")
    (folder / "text.jpg").write_text("this is not a JPEG\n")
    return folder


def test_predict_names_the_class_of_photos(trained, files, capsys):
    names = ["red.jpg", "blue.png", "red_big.jpg", "blue_small.jpg"]
    code = main(["predict", str(trained), *[str(files / n) for n in names], "--json",
                 "--device", "cpu"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(files / n) for n in names]
    for name, result in zip(names, results, strict=True):
        top = result["top"]
        assert len(top) == 5
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert top[0]["name"] == ("red thing" if name.startswith("red") else "blue thing")


@pytest.mark.parametrize("crops", ["1", "10"])
def test_predict_greyscale_cmyk_palette(trained, files, capsys, crops):
    names = ["grey.jpg", "cmyk.jpg", "palette.png"]
    code = main(["predict", str(trained), *[str(files / n) for n in names], "--crops", crops,
                 "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    for name in names:
        start = out.index(f"{files / name}:")
        rows = out[start + 1:start + 6]
        assert len(rows) == 5 and all(r.startswith("  ") for r in rows)
        total = sum(float(r.split("%")[0]) for r in rows) / 100
        assert 0 < total <= 1 + 1e-3
        assert len({r.split("%", 1)[1] for r in rows}) == 5  # five different classes


def test_predict_json_probabilities_equal_the_net(trained, files, capsys):
    """--crops 1 on a 256x256 PNG: the net's own softmax on the centre patch."""
    from alexnet.checkpoint import load_model

    image = photo(np.random.default_rng(5), IMAGE_SIZE, IMAGE_SIZE, BLUE)
    Image.fromarray(image).save(files / "exact.png")
    assert main(["predict", str(trained), str(files / "exact.png"), "--crops", "1", "--json",
                 "--top", "6", "--device", "cpu"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    model, ckpt = load_model(trained)
    off = (IMAGE_SIZE - CROP_SIZE) // 2
    x = image.astype(np.float32) - ckpt["stats"]["mean_image"].astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(
        x[off:off + CROP_SIZE, off:off + CROP_SIZE].transpose(2, 0, 1)))[None]
    with torch.no_grad():
        want = torch.softmax(model(x), 1)[0].numpy()
    got = {t["label"]: t["probability"] for t in result["top"]}
    assert sorted(got) == list(range(6))
    np.testing.assert_allclose([got[i] for i in range(6)], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad", ["text.jpg", "missing.jpg"])
def test_predict_refuses_non_images_in_one_line(trained, files, capsys, bad):
    code = main(["predict", str(trained), str(files / "red.jpg"), str(files / bad),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and bad in err


def test_predict_uses_the_image_size_of_the_checkpoints_store(trained, files, tmp_path,
                                                              capsys):
    """A net trained on a 240-pixel store: files are rescaled to 240, as its store's were."""
    state = torch.load(trained, weights_only=True)
    side = 240
    mean = state["stats"]["mean_image"].numpy()
    state["stats"]["mean_image"] = torch.from_numpy(np.asarray(
        Image.fromarray(mean.clip(0, 255).astype(np.uint8)).resize((side, side)), np.float32))
    save(tmp_path / "net240.pt", state)
    code = main(["predict", str(tmp_path / "net240.pt"), str(files / "red.jpg"), "--json",
                 "--top", str(len(CLASSES)), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    top = json.loads(captured.out)[0]["top"]
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)


def test_predict_refuses_nan_weights_in_one_line(trained, files, tmp_path, capsys):
    state = torch.load(trained, weights_only=True)
    state["model"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    save(tmp_path / "nan.pt", state)
    code = main(["predict", str(tmp_path / "nan.pt"), str(files / "red.jpg"), "--device",
                 "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and "nan%" not in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "non-finite" in captured.err


def test_a_file_name_that_is_not_utf8_prints_as_its_bytes(trained, files, tmp_path):
    """Under a strict UTF-8 locale (PYTHONIOENCODING=utf-8, as en_US.UTF-8) the name's bytes
    go out as they are (the C locale's behaviour), not a UnicodeEncodeError mid-output."""
    import os
    import subprocess
    import sys

    image = os.path.join(os.fsencode(tmp_path), b"red\xff.jpg")
    with open(image, "wb") as f:
        f.write((files / "red.jpg").read_bytes())
    done = subprocess.run([sys.executable, "-m", "alexnet", "predict", str(trained), image],
                          capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert image + b":" in done.stdout and b"red thing" in done.stdout


def test_a_folders_files_left_out_for_their_extension_are_said(trained, files, tmp_path,
                                                               capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((files / "red.jpg").read_bytes())
    Image.open(files / "blue.png").save(folder / "e.gif")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".hidden.gif").write_bytes((folder / "e.gif").read_bytes())
    assert main(["predict", str(trained), str(folder)]) == 0
    captured = capsys.readouterr()
    assert f"{folder / 'a.jpg'}:" in captured.out and "e.gif:" not in captured.out
    assert (f"{folder}: 2 file(s) without an image extension left out (e.gif, notes.txt)"
            in captured.err), captured.err
    assert main(["predict", str(trained), str(folder / "e.gif")]) == 0  # named: classified
    assert "blue thing" in capsys.readouterr().out.splitlines()[1]


def test_an_image_under_max_pixels_is_classified_whatever_pils_own_limit(trained, files,
                                                                          monkeypatch, capsys):
    """predict decoded with PIL's limit (89 megapixels), not prepare's --max-pixels (134):
    a 100-megapixel photo printed PIL's two-line DecompressionBombWarning, one of 180 was
    refused with advice naming an option predict had not. A lower PIL limit stands in."""
    import warnings

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)  # red.jpg: 240x320 = 76,800
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["predict", str(trained), str(files / "red.jpg"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "red thing" in captured.out.splitlines()[1]
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []
    assert Image.MAX_IMAGE_PIXELS == 30_000  # PIL's setting is the caller's again


def test_max_pixels_refuses_larger_images_in_one_line(trained, files, capsys):
    code = main(["predict", str(trained), str(files / "red.jpg"), "--max-pixels", "50000",
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"{files / 'red.jpg'}: not a usable image (320x240 pixels: over the " \
           "decompression-bomb limit of 50000 (--max-pixels))" in err


def test_an_image_past_twice_the_limit_names_the_users_limit(trained, files, capsys):
    """Past twice the limit PIL refuses it first, quoting twice its setting (ours): the line
    gives the limit the user set."""
    code = main(["predict", str(trained), str(files / "red.jpg"), "--max-pixels", "100",
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"{files / 'red.jpg'}: not a usable image (76800 pixels: over the " \
           "decompression-bomb limit of 100 (--max-pixels))" in err


def test_a_folder_is_classified_a_chunk_at_a_time_as_in_one_go(trained, files, tmp_path,
                                                                monkeypatch, capsys):
    """Every file's images were decoded, stacked and written to the temporary store at once
    (10,000 files: 2 GB, twice over while stacked). They go a chunk at a time now: with
    chunks of 2, no step holds more than 2 images, and the output is the one of a single
    chunk: the same files, labels and order, probabilities within float32 rounding (the CPU's
    convolutions may sum in another order for another batch size; on AVX-512/AMX hosts they
    differ by about 3e-7)."""
    import alexnet.predict as predict

    names = ["red.jpg", "blue.png", "red_big.jpg", "blue_small.jpg", "grey.jpg"]
    args = ["predict", str(trained), *[str(files / n) for n in names], "--json", "--crops",
            "10", "--device", "cpu"]
    assert main(args) == 0
    whole = capsys.readouterr().out
    held = []
    real = predict.predict_images

    def spy(model, images, ckpt, **kwargs):
        held.append(len(images))
        return real(model, images, ckpt, **kwargs)

    monkeypatch.setattr(predict, "CHUNK", 2, raising=False)  # absent before chunks
    monkeypatch.setattr(predict, "predict_images", spy)
    assert main(args) == 0
    chunked = json.loads(capsys.readouterr().out)
    assert held == [2, 2, 1]
    assert len(chunked) == len(json.loads(whole))
    for one, other in zip(json.loads(whole), chunked, strict=True):
        assert one["image"] == other["image"]
        assert [t["label"] for t in one["top"]] == [t["label"] for t in other["top"]]
        np.testing.assert_allclose([t["probability"] for t in other["top"]],
                                   [t["probability"] for t in one["top"]], rtol=1e-5, atol=1e-7)
    assert [r["image"] for r in json.loads(whole)] == [str(files / n) for n in names]


def test_the_memory_of_predict_does_not_grow_with_the_number_of_files(trained, files,
                                                                      tmp_path, monkeypatch,
                                                                      capsys):
    """Peak traced memory (decoded images, the temporary store's arrays) for 16 files stays
    within a 256x256 image of the peak for 4: a chunk of images, not every file."""
    import tracemalloc

    import alexnet.predict as predict

    monkeypatch.setattr(predict, "CHUNK", 2, raising=False)  # absent before chunks
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(16):
        (folder / f"{i:02d}.jpg").write_bytes((files / "red.jpg").read_bytes())
    paths = sorted(folder.iterdir())

    def peak(count: int) -> int:
        tracemalloc.start()
        try:
            assert main(["predict", str(trained), *map(str, paths[:count]), "--crops", "1",
                         "--device", "cpu"]) == 0
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(4)  # imports and first-call caches, outside the comparison
    # the least of two runs each: tracemalloc also counts what any other thread of the process
    # allocates meanwhile (a clean clone's CI once saw 7.7 MB more in one run of 16 files)
    few, many = min(peak(4), peak(4)), min(peak(16), peak(16))
    capsys.readouterr()
    assert many - few < IMAGE_SIZE * IMAGE_SIZE * 3, (few, many)
