"""The paper's augmentation (section 4.1) against NumPy slicing and against its distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from alexnet.config import MEAN_CHOICES
from alexnet.data import augment
from alexnet.paper import CROP_SIZE, IMAGE_SIZE, PCA_ALPHA_STD, TEST_CROPS

RNG = np.random.default_rng(12)


def test_the_constants_are_the_papers() -> None:
    # section 2: 256x256 images; section 4.1: 224 patches, 10 at test time, alpha sd 0.1
    assert (IMAGE_SIZE, CROP_SIZE, TEST_CROPS, PCA_ALPHA_STD) == (256, 224, 10, 0.1)


def numpy_ten_crops(image: np.ndarray, c: int) -> list[np.ndarray]:
    """The paper's 10 patches of one (S, S, 3) image by plain slicing, in TEN_CROP_ORDER."""
    s = image.shape[0]
    m = (s - c) // 2
    five = [image[:c, :c], image[:c, s - c:], image[s - c:, :c], image[s - c:, s - c:],
            image[m:m + c, m:m + c]]
    return five + [p[:, ::-1] for p in five]


@pytest.mark.parametrize("size,c", [(64, 56), (IMAGE_SIZE, CROP_SIZE)])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_ten_crops_are_the_corners_centre_and_their_mirrors(size: int, c: int,
                                                            layout: str) -> None:
    images = RNG.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    batch = torch.from_numpy(images)
    if layout == "nchw":
        batch = batch.permute(0, 3, 1, 2).contiguous()
    out = augment.ten_crops(batch, c)
    assert out.shape[0] == 2 * TEST_CROPS and out.dtype == torch.uint8
    out = out.numpy() if layout == "nhwc" else out.permute(0, 2, 3, 1).numpy()
    for b in range(2):
        for k, expected in enumerate(numpy_ten_crops(images[b], c)):
            np.testing.assert_array_equal(out[b * TEST_CROPS + k], expected,
                                          err_msg=augment.TEN_CROP_ORDER[k])
    centre = augment.centre_crop(batch, c)
    m = (size - c) // 2
    expected = images[:, m:m + c, m:m + c]
    got = centre.numpy() if layout == "nhwc" else centre.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, expected)


def coordinate_image(size: int) -> torch.Tensor:
    """(1, S, S, 3) uint8 whose pixel (r, c) holds (r, c, 7): a patch says where it was cut."""
    r, c = np.mgrid[0:size, 0:size]
    return torch.from_numpy(np.stack([r, c, np.full_like(r, 7)], -1).astype(np.uint8))[None]


def test_crop_positions_are_uniform_and_patches_are_windows() -> None:
    size, c, n = 24, 16, 8100  # 81 positions, 100 expected draws each
    base = coordinate_image(size)
    patches = augment.random_crop(base.expand(n, -1, -1, -1), torch.Generator().manual_seed(1),
                                  c)
    top, left = patches[:, 0, 0, 0].long(), patches[:, 0, 0, 1].long()
    # Every patch is exactly the window at the offsets it reveals.
    r, q = np.mgrid[0:c, 0:c]
    np.testing.assert_array_equal(patches[:, :, :, 0].numpy(), top.numpy()[:, None, None] + r)
    np.testing.assert_array_equal(patches[:, :, :, 1].numpy(), left.numpy()[:, None, None] + q)
    counts = np.bincount((top * (size - c + 1) + left).numpy(), minlength=81)
    assert len(counts) == 81 and counts.min() > 0
    # Chi-square with 80 degrees of freedom: a uniform draw fails this 1 time in 10^4.
    assert sps.chisquare(counts).pvalue > 1e-4


def test_flips_happen_with_probability_one_half_and_mirror_exactly() -> None:
    n = 10_000
    base = coordinate_image(8)
    out = augment.random_flip(base.expand(n, -1, -1, -1), torch.Generator().manual_seed(2))
    flipped = out[:, 0, 0, 1] == 7  # column 7 at the left edge: mirrored
    np.testing.assert_array_equal(out[flipped].numpy(),
                                  np.broadcast_to(base.numpy()[:, :, ::-1], out[flipped].shape))
    np.testing.assert_array_equal(out[~flipped].numpy(),
                                  np.broadcast_to(base.numpy(), out[~flipped].shape))
    # Binomial(10^4, 0.5): sd 50; 4.5 sd is a 7e-6 two-sided false alarm.
    assert abs(int(flipped.sum()) - n / 2) < 4.5 * 50


def numpy_eigen(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvector columns of a correlated RGB pixel cloud."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(5000, 3)) @ np.array([[50, 40, 30], [0, 15, 5], [0, 0, 4.0]])
    val, vec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    return val[::-1].copy(), vec[:, ::-1].copy()


@pytest.mark.parametrize("scale", ["std", "eigval"])
def test_pca_shift_has_the_stated_distribution(scale: str) -> None:
    eigval, eigvec = numpy_eigen()
    n = 20_000
    images = torch.zeros(n, 3, 2, 2)
    out = augment.pca_colour(images, torch.Generator().manual_seed(4), eigval, eigvec,
                             scale=scale).double().numpy()
    # One shift per image, the same at every pixel.
    shift = out[:, :, 0, 0]
    np.testing.assert_allclose(out, np.broadcast_to(shift[:, :, None, None], out.shape),
                               atol=1e-9)
    s = np.sqrt(eigval) if scale == "std" else eigval
    alpha = (shift @ eigvec) / s  # eigvec is orthonormal: coordinates along p1, p2, p3
    # The shift is eigvec @ (alpha * s): rebuilt from the recovered alpha it matches.
    np.testing.assert_allclose((alpha * s) @ eigvec.T, shift, rtol=1e-6, atol=1e-3)
    # Mean: standard error 0.1 / sqrt(n) = 7e-4; std: standard error 0.1 / sqrt(2n) = 5e-4;
    # tolerances are 5 standard errors (float32 images add ~1e-7 relative noise).
    assert np.all(np.abs(alpha.mean(axis=0)) < 5 * PCA_ALPHA_STD / np.sqrt(n))
    assert np.all(np.abs(alpha.std(axis=0) - PCA_ALPHA_STD) < 5 * PCA_ALPHA_STD / np.sqrt(2 * n))
    corr = np.corrcoef(alpha.T)[np.triu_indices(3, 1)]
    assert np.all(np.abs(corr) < 5 / np.sqrt(n))  # independent components
    # Scale: along p1 the shift's sd is 0.1 sqrt(l1) levels ("std") or 0.1 l1 ("eigval").
    along = shift @ eigvec[:, 0]
    assert along.std() == pytest.approx(PCA_ALPHA_STD * s[0], rel=0.03)


def test_pca_shift_lies_in_the_span_of_the_scaled_eigenvectors() -> None:
    grey = np.random.default_rng(5).normal(100, 30, 4000)
    pixels = np.stack([grey, grey, grey], 1)  # greyscale data: covariance of rank 1
    val, vec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    val, vec = np.maximum(val[::-1], 0), vec[:, ::-1]
    alpha = augment.draw_alpha(500, torch.Generator().manual_seed(6))
    shift = augment.pca_shift(alpha, val, vec).numpy()
    np.testing.assert_allclose(shift[:, 0], shift[:, 1], atol=1e-9)  # only brightness moves
    np.testing.assert_allclose(shift[:, 1], shift[:, 2], atol=1e-9)
    np.testing.assert_allclose(shift, (alpha.numpy() * np.sqrt(val)) @ vec.T, atol=1e-9)


def test_pca_alpha_is_drawn_anew_for_every_use() -> None:
    eigval, eigvec = numpy_eigen()
    g = torch.Generator().manual_seed(7)
    a = augment.pca_colour(torch.zeros(4, 3, 1, 1), g, eigval, eigvec)
    b = augment.pca_colour(torch.zeros(4, 3, 1, 1), g, eigval, eigvec)
    assert not torch.equal(a, b)
    assert len({tuple(np.round(v, 6)) for v in a[:, :, 0, 0].numpy()}) == 4


def numpy_train_batch(images: np.ndarray, mean_image: np.ndarray, eigval: np.ndarray,
                      eigvec: np.ndarray, top: np.ndarray, left: np.ndarray,
                      mirror: np.ndarray, alpha: np.ndarray, c: int) -> np.ndarray:
    """The paper's pipeline in NumPy: subtract the mean image, cut, mirror, shift colour."""
    out = []
    for b in range(len(images)):
        centred = images[b].astype(np.float64) - mean_image
        patch = centred[top[b]:top[b] + c, left[b]:left[b] + c]
        if mirror[b]:
            patch = patch[:, ::-1]
        patch = patch + eigvec @ (alpha[b] * np.sqrt(eigval))
        out.append(patch.transpose(2, 0, 1))
    return np.stack(out)


def synthetic_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    pixels = images.reshape(-1, 3).astype(np.float64)
    val, vec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    return {"mean_image": images.mean(axis=0), "channel_mean": pixels.mean(axis=0),
            "eigval": val[::-1].copy(), "eigvec": vec[:, ::-1].copy()}


@pytest.mark.parametrize("size,c", [(64, 56), (IMAGE_SIZE, CROP_SIZE)])
def test_train_batch_equals_numpy(size: int, c: int) -> None:
    images = RNG.integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    st = synthetic_stats(images)
    out = augment.train_batch(torch.from_numpy(images), torch.Generator().manual_seed(8), st,
                              crop_size=c)
    assert out.shape == (6, 3, c, c) and out.dtype == torch.float32 and out.is_contiguous()
    # The documented draw order: top, left, flip, alpha.
    g = torch.Generator().manual_seed(8)
    top, left = augment.crop_offsets(6, size, c, g)
    mirror = augment.flip_mask(6, g)
    alpha = augment.draw_alpha(6, g)
    expected = numpy_train_batch(images, st["mean_image"], st["eigval"], st["eigvec"],
                                 top.numpy(), left.numpy(), mirror.numpy(), alpha.numpy(), c)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-4)
    # The same from (B, 3, S, S) input, and in channels_last memory format.
    nchw = augment.train_batch(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                               torch.Generator().manual_seed(8), st, crop_size=c)
    np.testing.assert_allclose(nchw.numpy(), expected, atol=2e-4)
    cl = augment.train_batch(torch.from_numpy(images), torch.Generator().manual_seed(8), st,
                             crop_size=c, channels_last=True)
    assert cl.shape == (6, 3, c, c) and cl.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(cl.numpy(), expected, atol=2e-4)


def test_switches_change_only_their_own_step() -> None:
    images = RNG.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    st = synthetic_stats(images)
    g = torch.Generator().manual_seed(9)
    top, left = augment.crop_offsets(5, 64, 56, g)
    x = torch.from_numpy(images)
    plain = augment.train_batch(x, torch.Generator().manual_seed(9), st, crop_size=56,
                                flip=False, pca=False, mean="none").numpy()
    expected = np.stack([images[b, top[b]:top[b] + 56, left[b]:left[b] + 56].transpose(2, 0, 1)
                         for b in range(5)]).astype(np.float32)
    np.testing.assert_array_equal(plain, expected)
    channel = augment.train_batch(x, torch.Generator().manual_seed(9), st, crop_size=56,
                                  flip=False, pca=False, mean="channel").numpy()
    np.testing.assert_allclose(channel, expected - st["channel_mean"][None, :, None, None],
                               atol=1e-4)


def test_mean_subtraction_of_ten_crops_equals_numpy() -> None:
    images = RNG.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    st = synthetic_stats(images)
    out = augment.eval_batch(torch.from_numpy(images), st, crops=10, crop_size=56).numpy()
    for b in range(3):
        centred = images[b].astype(np.float64) - st["mean_image"]
        for k, patch in enumerate(numpy_ten_crops(centred, 56)):
            np.testing.assert_allclose(out[b * 10 + k], patch.transpose(2, 0, 1), atol=1e-4)
    # Subtracting the full mean image before cropping gives the same patches.
    full = augment.subtract_mean(torch.from_numpy(images).permute(0, 3, 1, 2), "image", st)
    np.testing.assert_allclose(augment.ten_crops(full, 56).numpy(), out, atol=1e-4)


@pytest.mark.parametrize("mean", MEAN_CHOICES)
def test_conv1s_padding_is_zeros_after_the_patches_values(mean: str) -> None:
    """pad=3: every patch as without it, then 3 zero columns and rows (what the paper net's
    pad_for_conv1 adds to a 224 patch), in the memory format asked for."""
    images = torch.from_numpy(RNG.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8))
    st = synthetic_stats(images.numpy())
    for cl in (False, True):
        plain, padded = (augment.train_batch(images, torch.Generator().manual_seed(2), st,
                                             crop_size=32, mean=mean, channels_last=cl, pad=p)
                         for p in (0, 3))
        assert padded.shape == (4, 3, 35, 35)
        assert padded.is_contiguous(memory_format=torch.channels_last if cl else
                                    torch.contiguous_format)
        assert torch.equal(padded[..., :32, :32], plain)
        assert not padded[..., 32:, :].any() and not padded[..., 32:].any()
    plain, padded = (augment.eval_batch(images, st, crops=TEST_CROPS, crop_size=32, mean=mean,
                                        pad=p) for p in (0, 3))
    assert padded.shape == (40, 3, 35, 35) and padded.is_contiguous()
    assert torch.equal(padded[..., :32, :32], plain)
    assert torch.equal(padded, torch.nn.functional.pad(plain, (0, 3, 0, 3)))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        augment.crop_offsets(2, 64, 65, torch.Generator())
    with pytest.raises(ValueError):
        augment.pca_shift(torch.zeros(1, 3), np.ones(3), np.eye(3), scale="variance")
    with pytest.raises(ValueError):
        augment.ten_crops(torch.zeros(2, 5, 8, 8, dtype=torch.uint8), 4)
    with pytest.raises(ValueError):
        augment.multi_crop_offsets(2, 64, 56, crops=5)
    with pytest.raises(ValueError, match="pad -1"):
        augment.train_batch(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.Generator(), {},
                            crop_size=4, pca=False, mean="none", pad=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mean", MEAN_CHOICES)
def test_augmenting_on_the_gpu_never_makes_the_host_wait(mean: str) -> None:
    """The consumer augments on the training stream: a blocking copy of the CPU draws there
    would wait for the whole previous step. torch's sync debug mode turns every host
    synchronisation into an error; the batches still equal the CPU's."""
    images = RNG.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    on_gpu = torch.from_numpy(images).cuda()
    stats = augment.device_stats(synthetic_stats(images), "cuda")
    cpu_stats = augment.device_stats(synthetic_stats(images), "cpu")
    augment.use_triton_augment(on_gpu, mean, stats)  # its check before first use syncs, once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = augment.train_batch(on_gpu, torch.Generator().manual_seed(3), stats, crop_size=56,
                                mean=mean, channels_last=True)
        tests = [augment.eval_batch(on_gpu, stats, crops=crops, crop_size=56, mean=mean)
                 for crops in (1, TEST_CROPS)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = augment.train_batch(torch.from_numpy(images), torch.Generator().manual_seed(3),
                               cpu_stats, crop_size=56, mean=mean)
    np.testing.assert_allclose(x.cpu().numpy(), want.numpy(), atol=1e-3)
    for crops, got in zip((1, TEST_CROPS), tests, strict=True):
        want = augment.eval_batch(torch.from_numpy(images), cpu_stats, crops=crops,
                                  crop_size=56, mean=mean)
        np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), atol=1e-3)


@pytest.mark.parametrize("mean", MEAN_CHOICES)
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_the_cpus_patch_at_a_time_path_equals_the_batchwise_path_bit_for_bit(
        mean: str, layout: str) -> None:
    """On the CPU the torch path makes each patch in one pass (`_per_image`); on a GPU it
    runs batch-wise (`_batchwise`), and the Triton kernel is held to the torch path bit for
    bit: the two must give the same floats for every mean, input layout, output memory
    format, padding, shift and repeated source (ten crops of each image), mirrored or not."""
    images = RNG.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    st = synthetic_stats(images)
    batch = torch.from_numpy(images)
    if layout == "nchw":
        batch = batch.permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(4)
    k = 12
    source = torch.randint(0, 3, (k,), generator=g)
    top, left = augment.crop_offsets(k, 20, 13, g)
    mirror = augment.flip_mask(k, g)
    assert 0 < int(mirror.sum()) < k
    shift = augment.pca_shift(augment.draw_alpha(k, g), st["eigval"], st["eigvec"])
    for x in (batch, batch.float(), batch.double() + 0.3):
        for shifted in (None, shift):
            for channels_last in (False, True):
                for pad in (0, 3):
                    args = (x, source, top, left, mirror, mean, st, shifted, 13,
                            channels_last, pad)
                    want, got = augment._batchwise(*args), augment._per_image(*args)
                    assert got.shape == want.shape and got.stride() == want.stride()
                    assert torch.equal(got, want), (x.dtype, shifted is None, channels_last,
                                                    pad)
                    for make in (augment._batchwise, augment._per_image):  # into `out`
                        memory = augment.batch_memory(k, 13, pad, channels_last)
                        got = make(*args, memory.fill_(float("nan")))
                        assert got.data_ptr() == memory.data_ptr()
                        assert got.stride() == want.stride() and torch.equal(got, want)


def test_batches_go_into_the_memory_given_and_refuse_memory_of_another_shape() -> None:
    """train_batch and eval_batch write into `out` (from batch_memory: NaN-filled here, so
    every element, conv1's padding included, must be written) the batch they would make
    anew; memory of another shape, layout, dtype or device is refused naming `out`."""
    images = torch.from_numpy(RNG.integers(0, 256, (4, 20, 20, 3), dtype=np.uint8))
    st = synthetic_stats(images.numpy())
    for channels_last in (False, True):
        want = augment.train_batch(images, torch.Generator().manual_seed(2), st, crop_size=13,
                                   channels_last=channels_last, pad=3)
        memory = augment.batch_memory(4, 13, 3, channels_last).fill_(float("nan"))
        got = augment.train_batch(images, torch.Generator().manual_seed(2), st, crop_size=13,
                                  channels_last=channels_last, pad=3, out=memory)
        assert got.data_ptr() == memory.data_ptr()
        assert got.stride() == want.stride() and torch.equal(got, want)
    want = augment.eval_batch(images, st, crops=10, crop_size=13, pad=3)
    memory = augment.batch_memory(40, 13, 3).fill_(float("nan"))
    got = augment.eval_batch(images, st, crops=10, crop_size=13, pad=3, out=memory)
    assert got.data_ptr() == memory.data_ptr() and torch.equal(got, want)
    wrong = [augment.batch_memory(3, 13, 3), augment.batch_memory(4, 13, 0),
             augment.batch_memory(4, 13, 3, channels_last=True),
             augment.batch_memory(4, 13, 3).double(), torch.empty(4, 16, 16, 3)]
    for memory in wrong:
        with pytest.raises(ValueError, match=r"^out: needs batch_memory\(4, 13, 3"):
            augment.train_batch(images, torch.Generator().manual_seed(2), st, crop_size=13,
                                pad=3, out=memory)


def test_the_patch_at_a_time_path_refuses_what_it_cannot_cut() -> None:
    images = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    offsets = (torch.arange(2), torch.zeros(2, dtype=torch.long),
               torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="crop 17 must lie in 1..16"):
        augment._per_image(images, *offsets, "none", {}, None, 17, False, 0)
    with pytest.raises(ValueError, match="16x16 images need a mean image of their size"):
        augment._per_image(images, *offsets, "image", {"mean_image": np.zeros((20, 20, 3))},
                           None, 8, False, 0)
    with pytest.raises(ValueError, match="mean 'median'"):
        augment._per_image(images, *offsets, "median", {}, None, 8, False, 0)


def test_a_crop_that_would_reach_past_the_image_is_refused():
    """On 8x8 images a 5-pixel crop may start at rows 0..3; row 4 would read the next image's
    (or the next row's) pixels through the batch's strided view, so it is refused, as is a
    left of 4."""
    images = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    assert augment.crop(images, torch.tensor([3, 0]), torch.tensor([0, 3]), 5).shape == \
        (2, 5, 5, 3)
    for top, left in (([4, 0], [0, 0]), ([0, 0], [0, 4]), ([-1, 0], [0, 0])):
        with pytest.raises(ValueError):
            augment.crop(images, torch.tensor(top), torch.tensor(left), 5)


def test_a_slightly_negative_eigenvalue_gives_no_shift_along_it_not_nan():
    """A store of greyscale images has a rank-1 colour covariance, whose numerical
    eigenvalues can come out a hair below 0: its square root is taken as 0 (no light along
    that component), not NaN in every image's colours."""
    alpha = augment.draw_alpha(4, torch.Generator().manual_seed(0))
    shift = augment.pca_shift(alpha, np.array([100.0, 0.0, -1e-9]), np.eye(3))
    assert torch.isfinite(shift).all()
    torch.testing.assert_close(shift[:, 0], alpha[:, 0] * 10.0, rtol=1e-12, atol=0)
    assert not shift[:, 1:].any()
