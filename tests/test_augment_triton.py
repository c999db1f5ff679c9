"""The one-pass Triton augmentation (alexnet/data/augment_triton.py) against the torch path of
alexnet/data/augment.py, bit for bit, through Triton's interpreter in a child process
(tests/_augment_interpret.py); and how augment.py chooses between them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _interpret import HAS_TRITON, ROOT, run_interpreted

import alexnet.model
from alexnet.data import augment
from alexnet.errors import UserError


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("augment") / "interpreted.json"
    run_interpreted([str(ROOT / "tests" / "_augment_interpret.py"), str(out)])
    return json.loads(out.read_text())


def test_the_kernel_gives_the_torch_paths_batches_bit_for_bit(results: dict) -> None:
    """Every layout in (NHWC, NCHW), mean (image, channel, none), memory format out, with
    and without flips and colour, the 1 and 10 test patches, conv1's padding written with
    the patches (both memory formats, the 10 test patches), and the paper's 256 -> 224 (and
    227 with the padding), and into memory given (`out`, filled with NaN first)."""
    cases = results["cases"]
    assert len(cases) == 2 * (3 * (2 * 2 + 2) + 3 + 2) + 3
    assert [key for key, same in cases.items() if not same] == []


def test_the_check_before_first_use_passes_through_the_interpreter(results: dict) -> None:
    assert results["verified"] is True


def test_auto_keeps_the_torch_path_off_cuda_and_where_the_kernel_does_not_apply() -> None:
    images = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    stats = {"mean_image": np.zeros((8, 8, 3)), "channel_mean": np.zeros(3)}
    assert not augment.use_triton_augment(images, "image", stats)  # auto, CPU tensor
    assert not augment.use_triton_augment(images, "image", stats, backend="torch")
    for mean, st in (("torchvision", stats), ("image", {}), ("channel", {})):
        assert not augment.use_triton_augment(images, mean, st, backend="triton")
    assert not augment.use_triton_augment(images.float(), "none", stats, backend="triton")
    with pytest.raises(UserError, match="ALEXNET_AUGMENT"):
        augment.use_triton_augment(images, "none", stats, backend="fast")


def test_triton_asked_for_without_triton_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setitem(alexnet.model._TRITON, "augment", None)  # as if triton were missing
    images = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(UserError, match="ALEXNET_AUGMENT=triton: triton does not import"):
        augment.use_triton_augment(images, "none", {}, backend="triton")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("crops", [1, 10])
def test_a_patch_larger_than_the_images_is_refused_as_by_the_torch_path(crops, monkeypatch
                                                                        ) -> None:
    """The kernel's windows start at offsets computed from the image side (negative for a
    larger patch): it refuses, as crop() does, before it reads outside the batch (on CPU
    tensors as under the interpreter, where backend triton runs the kernel)."""
    monkeypatch.setattr(alexnet.model, "TRITON_INTERPRETED", True)
    images = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    stats = {"channel_mean": np.zeros(3)}
    for backend in ("triton", "torch"):
        with pytest.raises(ValueError, match=r"^crop 9 must lie in 1\.\.8$"):
            augment.eval_batch(images, stats, crops=crops, crop_size=9, mean="channel",
                               backend=backend)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_a_kernel_that_cannot_run_falls_back_with_one_warning(monkeypatch, capsys) -> None:
    """Without the interpreter the kernel cannot launch on CPU tensors: the check fails,
    says so on one line, and its answer is cached for the process."""
    from _fallback import cpu_check_warning

    err = cpu_check_warning(augment.triton_augment_verified, "augment_verified.cpu",
                            monkeypatch, capsys)
    assert err.startswith("alexnet: warning: the Triton augmentation")


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON,
                    reason="needs a CUDA device and triton")
def test_auto_runs_the_kernel_on_cuda_after_its_check() -> None:
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, device="cuda")
    rng = np.random.default_rng(1)
    stats = augment.device_stats({"mean_image": rng.uniform(0, 255, (64, 64, 3)),
                                  "eigval": np.array([200.0, 20.0, 2.0]),
                                  "eigvec": np.eye(3)}, "cuda")
    assert augment.use_triton_augment(images, "image", stats)
    for cl in (False, True):
        got, want = (augment.train_batch(images, torch.Generator().manual_seed(2), stats,
                                         crop_size=56, channels_last=cl, backend=b)
                     for b in ("auto", "torch"))
        assert got.stride() == want.stride() and torch.equal(got, want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the CUDA test compiles it")
def test_the_kernel_compiles_for_a_hopper_gpu() -> None:
    """Compiled here for an H100/H200 (sm_90), as the GPU run's JIT will: no local memory
    (spills), and only global loads and stores of the batch, the draws, mean and shift."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    import inspect
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        pytest.skip("this triton's ASTSource predates constexprs by name")
    from alexnet.data import augment_triton as m

    kernel = m._patches_kernel
    types = {"img_ptr": "*u8", "src_ptr": "*i32", "top_ptr": "*i32", "left_ptr": "*i32",
             "mirror_ptr": "*i32", "mean_ptr": "*fp32", "shift_ptr": "*fp32",
             "out_ptr": "*fp32"}
    signature = {name: "constexpr" if name == "BLOCK_P" else types.get(name, "i32")
                 for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature,
                                        constexprs={"BLOCK_P": m.BLOCK}),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": m.NUM_WARPS})
    ptx = compiled.asm["ptx"]
    assert re.search(r"\bst\.global", ptx) and re.search(r"\bld\.global", ptx)
    assert not re.search(r"\b(?:ld|st)\.local", ptx)
