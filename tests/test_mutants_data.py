"""Wrong computations of preprocessing, statistics, augmentation and evaluation that the other
tests let through (found by a mutation audit), each against an independent NumPy/PIL reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from alexnet.checkpoint import make_state
from alexnet.data import augment
from alexnet.data.preprocess import load_image
from alexnet.data.stats import compute_stats, pixel_sums, stats_from_sums
from alexnet.data.store import open_split, write_store
from alexnet.evaluate import ensemble_probs, per_class_report, predict_probs
from alexnet.model import AlexNet
from alexnet.paper import IMAGE_SIZE, TEST_CROPS

RNG = np.random.default_rng(2012)
# torchvision's published ImageNet normalisation of 0..1 RGB (its models' documentation).
TORCHVISION_MEAN, TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("w,h", [(33, 32), (35, 32), (32, 33), (32, 35)])
def test_an_image_whose_shorter_side_is_the_size_is_cut_at_centrecrops_offset(w, h):
    """No rescale: the stored pixels are exactly the window at torchvision's CenterCrop offset
    int(round((side - S) / 2)), half to even (33 -> 0, 35 -> 2). Noise, so a window one pixel
    off differs everywhere (smooth test images hide it within the 1-level tolerance)."""
    array = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    top, left = int(round((h - 32) / 2.0)), int(round((w - 32) / 2.0))
    np.testing.assert_array_equal(load_image(("bytes", png(array)), 32),
                                  array[top:top + 32, left:left + 32])


def test_a_16_bit_file_that_pil_opens_in_mode_i_is_scaled_to_8_bits():
    """A 16-bit PGM opens as mode "I" (not "I;16"): 65535 -> 255 as for 16-bit PNGs."""
    deep = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    pgm = b"P5\n32 32\n65535\n" + deep.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    got = load_image(("bytes", pgm), 32)
    np.testing.assert_array_equal(got, np.repeat(np.rint(deep / 257.0)[..., None], 3, -1))


@pytest.mark.parametrize("maxval,value,want", [(65535, 200, 1), (65535, 255, 1),
                                                (1023, 3, 1), (1023, 1023, 255)])
def test_a_dark_16_bit_pgm_is_scaled_as_a_16_bit_png_is(maxval, value, want):
    """A 16-bit PGM whose pixels are all 255 or less was stored as it was (200 as 200, not
    1): mode "I" was taken for 16-bit data only above 255. PIL stretches a PGM's maxval to
    65535 (10-bit 3 -> 192), so its mode "I" is 16-bit data however dark, as PNG's I;16."""
    deep = np.full((32, 32), value, np.uint16)
    pgm = f"P5\n32 32\n{maxval}\n".encode() + deep.astype(">u2").tobytes()
    png = io.BytesIO()
    Image.fromarray(np.full((32, 32), round(value * 65535 / maxval), np.uint16)).save(png, "PNG")
    for data in (pgm, png.getvalue()):
        np.testing.assert_array_equal(load_image(("bytes", data), 16), np.full((16, 16, 3), want))


def test_a_cmyk_file_with_a_profile_is_converted_through_that_profile(monkeypatch):
    """The embedded ICC profile, not PIL's plain inversion, gives the colours (no CMYK
    profile ships here: a stand-in transform that paints the image a known colour)."""
    from PIL import ImageCms

    seen = []

    def to_srgb(image, profile, target, outputMode):  # noqa: N803 (ImageCms's keyword)
        seen.append(profile)
        return Image.new("RGB", image.size, (10, 200, 30))

    monkeypatch.setattr(ImageCms, "ImageCmsProfile", lambda f: f.read())
    monkeypatch.setattr(ImageCms, "profileToProfile", to_srgb)
    buffer = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(buffer, "JPEG", icc_profile=b"profile")
    got = load_image(("bytes", buffer.getvalue()), 16)
    assert seen == [b"profile"]
    np.testing.assert_array_equal(got, np.broadcast_to(np.uint8([10, 200, 30]), (16, 16, 3)))


# ----------------------------------------------------------------------------- statistics


def test_sums_over_more_pixels_than_one_block_equal_numpy():
    """A batch of 256 x 256 images spans many 2^16-pixel blocks; the other tests fit in one,
    so a block's x x^T sum replacing, not adding to, the earlier ones went unseen."""
    images = RNG.integers(0, 256, (3, 160, 160, 3), dtype=np.uint8)  # 76,800 pixels: 2 blocks
    images[..., 1] = images[..., 0] // 2 + images[..., 1] // 2
    flat = images.reshape(-1, 3).astype(np.int64)
    assert pixel_sums(images)["outer_sum"].tolist() == (flat.T @ flat).tolist()
    stats = compute_stats(images, batch=3)
    np.testing.assert_allclose(stats["rgb_cov"], np.cov(flat.T.astype(np.float64), bias=True),
                               rtol=1e-12)


def test_each_eigenvector_column_sums_to_a_positive_number():
    """The documented sign (stats module): the columns, not the rows, are made to sum > 0, so
    the stored eigenvectors do not depend on the sign LAPACK happens to return."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        mix = rng.normal(size=(3, 3))
        pixels = np.clip(rng.normal(size=(500, 3)) @ mix * 30 + 128, 0, 255).astype(np.int64)
        sums = {"image_sum": pixels.reshape(500, 1, 1, 3), "channel_sum": pixels.sum(0),
                "outer_sum": pixels.T @ pixels, "count": np.int64(500)}
        vec = stats_from_sums(sums)["eigvec"]
        assert (vec.sum(axis=0) > 0).all()


# ----------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("size,c", [(13, 8), (15, 12)])
def test_centre_and_corner_patches_when_the_margin_is_odd(size, c):
    """Centre offset (size - crop) // 2, rounding down as documented (2 of 5, 1 of 3); the
    paper's 256/224 has an even margin, where rounding up would go unseen."""
    images = RNG.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    m = (size - c) // 2
    out = augment.ten_crops(torch.from_numpy(images), c).numpy()
    np.testing.assert_array_equal(out[4::TEST_CROPS], images[:, m:m + c, m:m + c])
    np.testing.assert_array_equal(out[9::TEST_CROPS], images[:, m:m + c, m:m + c][:, :, ::-1])
    np.testing.assert_array_equal(augment.centre_crop(torch.from_numpy(images), c).numpy(),
                                  images[:, m:m + c, m:m + c])


def test_torchvision_normalisation_with_the_pca_shift_equals_numpy():
    """mean="torchvision": (x / 255 - mean) / std per channel, the PCA shift (in 0..255
    levels) added before that scaling, in the documented draw order (top, left, flip, alpha)."""
    images = RNG.integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    pixels = images.reshape(-1, 3).astype(np.float64)
    val, vec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    stats = {"eigval": val[::-1].copy(), "eigvec": vec[:, ::-1].copy()}
    out = augment.train_batch(torch.from_numpy(images), torch.Generator().manual_seed(3), stats,
                              crop_size=16, mean="torchvision").numpy()
    g = torch.Generator().manual_seed(3)
    top, left = (t.numpy() for t in augment.crop_offsets(4, 20, 16, g))
    mirror = augment.flip_mask(4, g).numpy()
    alpha = augment.draw_alpha(4, g).numpy()
    for b in range(4):
        patch = images[b, top[b]:top[b] + 16, left[b]:left[b] + 16].astype(np.float64)
        patch = patch[:, ::-1] if mirror[b] else patch
        patch = patch + stats["eigvec"] @ (alpha[b] * np.sqrt(stats["eigval"]))
        want = (patch / 255 - np.array(TORCHVISION_MEAN)) / np.array(TORCHVISION_STD)
        np.testing.assert_allclose(out[b], want.transpose(2, 0, 1), atol=1e-4)


# ----------------------------------------------------------------------------- evaluation


def test_a_net_in_training_mode_is_evaluated_without_dropout():
    """Training validates between epochs with the net in training mode: predict_probs must
    switch dropout off (the crops' softmax mean of the raw logits) and give the mode back."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, TEST_CROPS, 5)) * 3
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5)).train()
    x = torch.from_numpy(logits.reshape(-1, 5, 1, 1).astype(np.float32))
    probs, _ = predict_probs(net, [(x, torch.tensor([0, 1, 2]))])
    np.testing.assert_allclose(probs.numpy(), np_softmax(logits).mean(axis=1), rtol=1e-5)
    assert net.training


def test_an_ensemble_of_two_different_nets_averages_their_softmax_outputs(tmp_path):
    """Section 6: the predictions of several CNNs are averaged; a net with itself (the other
    test) cannot tell the mean from the last net alone."""
    images = RNG.integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    classes = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]
    write_store(tmp_path / "val", images, np.array([0, 1, 2]), classes)
    store = open_split(tmp_path, "val")
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpts.append(make_state(AlexNet(num_classes=3, width=0.0625), classes=classes,
                                stats=store.stats, epoch=1, step=0))
    alone = [ensemble_probs([f"net{k}"], store, loaded=[c])[0].numpy()
             for k, c in enumerate(ckpts)]
    assert not np.allclose(alone[0], alone[1], atol=1e-4)
    both, labels = ensemble_probs(["net0", "net1"], store, loaded=ckpts)
    np.testing.assert_allclose(both.numpy(), (alone[0] + alone[1]) / 2, rtol=1e-6, atol=1e-7)
    assert labels.tolist() == [0, 1, 2]


def test_the_per_class_report_names_each_class_and_confusion_from_the_class_list():
    """Class dicts give each row its wnid and name, each confusion its two names, and
    fraction_of_class is the confusion's share of the TRUE class's images."""
    classes = [{"wnid": f"n{i:08d}", "name": f"name {i}"} for i in range(4)]
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    guess = torch.tensor([1, 1, 0, 2, 1, 3, 2, 0, 3, 3])
    probs = torch.nn.functional.one_hot(guess, 4).double() * 0.7 + 0.075
    report = per_class_report(probs, labels, classes)
    assert [(r["label"], r["wnid"], r["name"], r["images"]) for r in report["classes"]] == [
        (c, f"n{c:08d}", f"name {c}", n) for c, n in enumerate([4, 2, 1, 3])]
    pairs = {}
    for t, p in zip(labels.tolist(), guess.tolist(), strict=True):
        if t != p:
            pairs[t, p] = pairs.get((t, p), 0) + 1
    counts = np.bincount(labels.numpy(), minlength=4)
    want = [{"true": t, "true_name": f"name {t}", "predicted": p, "predicted_name": f"name {p}",
             "images": n, "fraction_of_class": n / counts[t]}
            for (t, p), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))]
    assert report["most_confused"] == want
