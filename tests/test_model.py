"""The network against the paper's table (section 3), its LRN formula, init and columns."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet import paper
from alexnet.model import (
    ARCHS,
    LRN,
    AlexNet,
    AlexNetTV,
    blocked_conv,
    build_model,
    conv1_pad,
    loader_pad,
    lrn,
    space_to_depth,
    split_columns,
)

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def meta(**kwargs) -> AlexNet:
    """A full-size net without memory or init cost, for shape-only checks."""
    with torch.device("meta"):
        return AlexNet(**kwargs)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------
# The paper's table


def test_the_constants_are_the_papers():
    # figure 2 / section 3.5 (kernels, size, stride, padding: conv1's is our right/bottom pad)
    assert [paper.CONV1, paper.CONV2, paper.CONV3, paper.CONV4, paper.CONV5] == \
        [(96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)]
    assert (paper.FC_WIDTH, paper.NUM_CLASSES, paper.COLUMNS, paper.DROPOUT_P) == \
        (4096, 1000, 2, 0.5)
    assert paper.ABLATION_DELTAS == {"lrn": (1.4, 1.2), "overlapping_pool": (0.4, 0.3),
                                     "two_columns": (1.7, 1.2), "pca_colour": (1.0, None)}
    # section 6's tables
    assert paper.RESULTS["ilsvrc2010-test"] == {
        "1 CNN, 10-crop": (37.5, 17.0), "1 CNN, centre crop": (39.0, 18.3),
        "SIFT + Fisher vectors": (45.7, 25.7)}
    assert paper.RESULTS["ilsvrc2012-val"] == {
        "1 CNN": (40.7, 18.2), "5 CNNs": (38.1, 16.4),
        "1 CNN, 6th conv layer, pre-trained": (39.0, 16.6), "7 CNNs": (36.7, 15.4)}
    assert paper.CENTRE_CROP_REPRODUCTIONS == {"Caffe bvlc_alexnet": (42.9, 19.8),
                                               "torchvision alexnet": (43.5, 20.9)}


def test_parameter_count_matches_the_table():
    # each layer from the paper's table: kernels * (k * k * depth seen) + kernels biases
    table = [(96, 11 * 11 * 3), (256, 5 * 5 * 48), (384, 3 * 3 * 256), (384, 3 * 3 * 192),
             (256, 3 * 3 * 192), (4096, 6 * 6 * 256), (4096, 4096), (1000, 4096)]
    expected = sum(out * (fan_in + 1) for out, fan_in in table)
    assert expected == paper.PARAMETERS == 60_965_224
    assert sum(p.numel() for p in meta().parameters()) == expected


def test_every_layer_shape_and_neuron_count():
    model = AlexNet(width=1.0).eval()
    seen: dict[str, tuple[int, ...]] = {}
    pooled: list[tuple[int, ...]] = []
    for name in LAYERS:
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
    model.pool.register_forward_hook(lambda m, i, o: pooled.append(tuple(o.shape[1:])))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224) * 50)
    assert out.shape == (1, 1000)
    assert seen == {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13),
                    "conv4": (384, 13, 13), "conv5": (256, 13, 13), "fc6": (4096,),
                    "fc7": (4096,), "fc8": (1000,)}
    assert pooled == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]
    neurons = [math.prod(seen[n]) for n in LAYERS]
    # the paper's line matches every layer but the first, a known slip: 55*55*96 = 290,400
    assert neurons[1:] == list(paper.PAPER_NEURONS[1:])
    assert neurons[0] == 290_400 != paper.PAPER_NEURONS[0]


def test_224_padded_and_227_give_the_same_maps():
    assert conv1_pad(224) == 3 and conv1_pad(227) == 0
    assert 1 + math.ceil((224 - 11) / 4) == 55 == (227 - 11) // 4 + 1
    model = AlexNet(width=0.1).eval()
    x = torch.randn(2, 3, 227, 227) * 50
    with torch.no_grad():
        # a 224 crop padded by 3 zeros right and bottom is the 227 image with that border zeroed
        padded = torch.zeros_like(x)
        padded[..., :224, :224] = x[..., :224, :224]
        assert torch.allclose(model(x[..., :224, :224]), model(padded), atol=1e-5)
        assert model.conv_features(x).shape[1:] == (model.conv5.out_channels, 6, 6)


def test_the_loaders_padding_is_the_nets_own_padding_done_earlier():
    """loader_pad: conv1's padding for the paper net, none for torchvision's layout; the
    paper net gives the same outputs, bit for bit, on a patch padded by the loader."""
    assert loader_pad("alexnet", 224) == 3 and loader_pad("alexnet", 227) == 0
    assert loader_pad("alexnet", 226) == conv1_pad(226) == 1
    assert loader_pad("alexnet-tv", 224) == 0
    net = AlexNet(num_classes=5, width=0.125).eval()
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        assert torch.equal(net(x), net(torch.nn.functional.pad(x, (0, 3, 0, 3))))


@pytest.mark.parametrize("split", [False, True])
def test_a_227_crop_reaches_conv1_without_a_copy(split):
    # 227 needs no padding (conv1_pad 0): conv1 gets the batch itself, not F.pad's copy of it;
    # 224 gets the padded copy, zeros on the right and bottom
    net = AlexNet(num_classes=3, width=0.125, dropout=0.0)
    net = split_columns(net, ("cpu", "cpu")) if split else net
    conv1 = net.cols[0]["conv1"] if split else net.conv1
    seen = []
    conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    for size in (227, 224):
        x = torch.randn(2, 3, size, size)
        net(x)
        if size == 227:
            assert seen[-1].data_ptr() == x.data_ptr()
        else:
            assert seen[-1].shape[-2:] == (227, 227) and seen[-1][..., :224, :224].equal(x)
            assert not seen[-1][..., 224:, :].any() and not seen[-1][..., 224:].any()


# (batch, channels, height, width, kernels, kernel h, kernel w, stride, padding): the paper's
# conv1 on 227 patches, torchvision's (padding 2) on 224, odd sizes and strides, a kernel
# that is whole blocks, rows and columns that no output reads
BLOCKED = [(2, 3, 227, 227, 8, 11, 11, 4, 0), (1, 3, 224, 224, 6, 11, 11, 4, 2),
           (2, 2, 30, 27, 5, 5, 5, 2, 0), (1, 3, 31, 33, 4, 7, 5, 3, 1),
           (1, 3, 20, 20, 4, 4, 4, 4, 0), (1, 1, 26, 19, 3, 3, 6, 2, 0)]


@pytest.mark.parametrize("shape", BLOCKED)
@pytest.mark.parametrize("channels_last", [False, True])
def test_blocked_conv_is_the_strided_convolution(shape, channels_last):
    """conv1's `blocks` form: the same outputs and gradients (input, weight, bias) as
    F.conv2d, in float64, and the output in F.conv2d's memory format."""
    n, c, h, w, o, kh, kw, stride, padding = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(o, c, kh, kw, generator=gen, dtype=torch.float64)
    bias = torch.randn(o, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for conv in (F.conv2d, blocked_conv):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, weight, bias))
        y = conv(xi, wi, bi, stride, padding)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y))
        results.append((y.detach(), xi.grad, wi.grad, bi.grad))
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-11)
    got, want = results[1][0], results[0][0]
    assert got.is_contiguous(memory_format=torch.channels_last) == \
        want.is_contiguous(memory_format=torch.channels_last)
    assert got.is_contiguous() == want.is_contiguous()


@pytest.mark.parametrize("h,w,hb,wb", [(227, 227, 57, 57), (224, 226, 56, 57), (9, 7, 2, 3),
                                        (13, 13, 4, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_space_to_depth_puts_each_blocks_pixels_in_its_channels(h, w, hb, wb, channels_last):
    """Block channel c s s + i s + j at block (b, d) is pixel (b s + i, d s + j) of channel c,
    0 past x's edge (a 227 input in 57 blocks of 4: one zero row and column), pixels past the
    last block left out; the input's memory format; the cast in the same copy. Fresh memory
    is NaN here (deterministic mode's fill), so a zero left unwritten would show."""
    s = 4
    x = torch.arange(2 * 3 * h * w, dtype=torch.float32).view(2, 3, h, w) + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = torch.zeros(2, 3, hb * s, wb * s)
    rows, cols = min(h, hb * s), min(w, wb * s)
    want[:, :, :rows, :cols] = x[:, :, :rows, :cols]
    want = want.view(2, 3, hb, s, wb, s).permute(0, 1, 3, 5, 2, 4).reshape(2, 3 * s * s, hb, wb)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.utils.deterministic.fill_uninitialized_memory
        got = space_to_depth(x, s, hb, wb)
        half = space_to_depth(x, s, hb, wb, torch.bfloat16)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert half.dtype == torch.bfloat16 and torch.equal(half, want.to(torch.bfloat16))


def test_conv1_forms_compute_the_same_net():
    """AlexNet(conv1_form="blocks") is the direct net: the same parameters and state_dict
    keys, outputs and every gradient to float64 rounding; `auto` is direct on the CPU."""
    torch.manual_seed(0)
    direct = AlexNet(num_classes=5, width=0.25, dropout=0.0, conv1_form="direct").double()
    blocks = AlexNet(num_classes=5, width=0.25, dropout=0.0, conv1_form="blocks").double()
    assert shapes(blocks) == shapes(direct)
    blocks.load_state_dict(direct.state_dict())
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 60
    grads = []
    for net in (direct, blocks):
        xi = x.clone().requires_grad_()
        y = net(xi)
        y.square().sum().backward()
        grads.append([y.detach(), xi.grad] + [p.grad for p in net.parameters()])
    for want, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert AlexNet(width=0.125).conv1.resolved_form(x) == "direct"
    assert blocks.conv1.resolved_form(x) == "blocks"


def test_conv1_blocks_under_bf16_autocast_and_channels_last():
    """Mixed precision casts the input before the blocks are cut (the copy is then half the
    bytes): the result is the direct conv's under the same autocast, to bf16 rounding."""
    torch.manual_seed(0)
    net = AlexNet(num_classes=5, width=0.25, conv1_form="direct")
    x = (torch.randn(2, 3, 227, 227) * 60).contiguous(memory_format=torch.channels_last)
    conv1 = net.conv1.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = conv1(x)
        conv1.form = "blocks"
        got = conv1(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2,
                               atol=2e-2 * float(want.detach().abs().max()))


def test_conv1_blocks_trace_under_torch_compile():
    """torch.compile (fullgraph: no graph break) of the blocks form, its buffer filled by
    slices, gives the eager outputs and gradients."""
    torch.manual_seed(0)
    net = AlexNet(num_classes=5, width=0.125, conv1_form="blocks").conv1
    x = torch.randn(2, 3, 227, 227) * 60
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    results = []
    for conv in (net, compiled):
        net.zero_grad()
        y = conv(x)
        y.square().sum().backward()
        results.append((y.detach(), net.weight.grad.clone(), net.bias.grad.clone()))
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


def test_a_conv1_form_that_does_not_exist_is_refused(monkeypatch):
    import alexnet.model
    from alexnet.errors import UserError

    with pytest.raises(ValueError, match="conv1_form='fft'"):
        AlexNet(width=0.125, conv1_form="fft")
    monkeypatch.setattr(alexnet.model, "CONV1_FORM", "fft")
    with pytest.raises(UserError, match="ALEXNET_CONV1='fft'"):
        AlexNet(width=0.125)


def paper_forward(net: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """Figure 2 and sections 3.1-3.5 written out with plain functional calls: ReLU after every
    layer but fc8, LRN (the NumPy formula, within each column) after the ReLUs of conv1 and
    conv2, max-pool 3/2 after both LRNs and after conv5; no dropout (test time)."""
    def conv(layer: nn.Conv2d, h: torch.Tensor, groups: int = 1) -> torch.Tensor:
        return F.conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding, groups=groups)

    def norm(h: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(lrn_numpy(h.numpy(), paper.LRN_N, paper.LRN_ALPHA,
                                          paper.LRN_BETA, paper.LRN_K, paper.COLUMNS))

    def pool(h: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(h, paper.POOL_SIZE, paper.POOL_STRIDE)

    h = F.pad(x, (0, 3, 0, 3))  # the 224 crop, 3 zeros right and bottom
    h = pool(norm(F.relu(conv(net.conv1, h))))
    h = pool(norm(F.relu(conv(net.conv2, h, groups=2))))  # own column only
    h = F.relu(conv(net.conv3, h))  # both columns
    h = F.relu(conv(net.conv4, h, groups=2))
    h = pool(F.relu(conv(net.conv5, h, groups=2)))
    h = F.relu(F.linear(h.flatten(1), net.fc6.weight, net.fc6.bias))
    h = F.relu(F.linear(h, net.fc7.weight, net.fc7.bias))
    return F.linear(h, net.fc8.weight, net.fc8.bias)


def test_forward_is_the_papers_composition():
    # conv, ReLU, LRN, pool in that order; dropout (p = 0.5) does nothing at test time
    torch.manual_seed(0)
    net = AlexNet(num_classes=10, width=0.25).double().eval()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 60
    with torch.no_grad():
        want = paper_forward(net, x)
        torch.testing.assert_close(net(x), want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(split_columns(net, ("cpu", "cpu"))(x), want, rtol=1e-10,
                                   atol=1e-12)


def test_dropout_acts_on_the_outputs_of_fc6_and_fc7_only():
    torch.manual_seed(0)
    net = AlexNet(num_classes=5, width=0.125).train()
    seen: dict[str, list[torch.Tensor]] = {"drop": [], "fc6": [], "fc7": []}
    net.drop.register_forward_hook(lambda m, i, o: seen["drop"].append((i[0].clone(), o)))
    for name in ("fc6", "fc7"):  # their outputs before the in-place ReLU
        getattr(net, name).register_forward_hook(
            lambda m, i, o, name=name: seen[name].append(o.clone()))
    net(torch.randn(4, 3, 224, 224) * 60)
    assert len(seen["drop"]) == 2
    for (kept_in, out), fc in zip(seen["drop"], (seen["fc6"][0], seen["fc7"][0]), strict=True):
        assert torch.equal(kept_in, F.relu(fc))  # dropout sees the layer's ReLU output
        dropped = (out == 0) & (kept_in != 0)
        # inverted dropout: each unit zeroed with p = 0.5, the kept ones scaled by 1 / (1 - p)
        assert abs(dropped.float().mean() / (kept_in != 0).float().mean() - paper.DROPOUT_P) \
            < 0.05
        kept = out != 0
        torch.testing.assert_close(out[kept], kept_in[kept] / (1 - paper.DROPOUT_P))


def test_features_are_fc7_after_relu():
    model = AlexNet(width=0.1, dropout=0.5).eval()
    x = torch.randn(3, 3, 224, 224) * 50
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (3, model.fc7.out_features) and (f >= 0).all()
        assert torch.allclose(model(x), model.fc8(f))


# ---------------------------------------------------------------------------------------
# LRN (section 3.3)


def lrn_numpy(a: np.ndarray, n: int, alpha: float, beta: float, k: float,
              groups: int = 1) -> np.ndarray:
    """The paper's formula, channel by channel, the window clipped within each column."""
    out = np.empty_like(a)
    per = a.shape[1] // groups
    for c in range(a.shape[1]):
        start, i = (c // per) * per, c % per
        lo, hi = start + max(0, i - n // 2), start + min(per - 1, i + n // 2)
        s = k + alpha * (a[:, lo:hi + 1] ** 2).sum(axis=1)
        out[:, c] = a[:, c] / s ** beta
    return out


@pytest.mark.parametrize("alpha_over_n", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_equals_the_formula(alpha_over_n, groups):
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 300, size=(2, 12, 4, 3))  # large enough that the denominator matters
    module = LRN(groups=groups, alpha_over_n=alpha_over_n)
    got = module(torch.from_numpy(a)).numpy()
    alpha = paper.LRN_ALPHA / paper.LRN_N if alpha_over_n else paper.LRN_ALPHA
    want = lrn_numpy(a, paper.LRN_N, alpha, paper.LRN_BETA, paper.LRN_K, groups)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the edge channels see a clipped window: channel 0 sums channels 0..2 only
    assert not np.allclose(want, lrn_numpy(a, paper.LRN_N, alpha, paper.LRN_BETA,
                                           paper.LRN_K, 3 - groups))
    # float32 (the training dtype) agrees too
    got32 = module(torch.from_numpy(a).float()).numpy()
    np.testing.assert_allclose(got32, want, rtol=2e-5)


def test_pooling_windows_are_the_papers():
    # section 3.4: overlapping pools z = 3, s = 2 against the non-overlapping z = s = 2
    assert (paper.POOL_SIZE, paper.POOL_STRIDE) == (3, 2)
    assert (paper.NON_OVERLAP_POOL_SIZE, paper.NON_OVERLAP_POOL_STRIDE) == (2, 2)
    for overlap, window in ((True, (3, 2)), (False, (2, 2))):
        pool = meta(overlap_pool=overlap).pool
        assert (pool.kernel_size, pool.stride) == window


def test_lrn_constants_are_the_papers():
    assert (paper.LRN_K, paper.LRN_N, paper.LRN_ALPHA, paper.LRN_BETA) == (2, 5, 1e-4, 0.75)
    model = meta()
    assert model.lrn1.alpha == model.lrn2.alpha == paper.LRN_ALPHA
    assert meta(lrn_alpha_over_n=True).lrn1.alpha == pytest.approx(paper.LRN_ALPHA / 5)


@pytest.mark.parametrize("n,beta,groups", [(5, 0.75, 2), (3, 0.75, 1), (5, 0.6, 1)])
def test_lrn_gradient(n, beta, groups):
    torch.manual_seed(0)
    x = (torch.rand(2, 6, 2, 2, dtype=torch.float64) * 40 - 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: lrn(t, n, 2e-3, beta, 2.0, groups), (x,))


def test_lrn_chunked_cpu_path_matches_one_pass(monkeypatch):
    import alexnet.model as model_module

    x = (torch.rand(6, 16, 5, 5, dtype=torch.float64) * 200).requires_grad_()
    g = torch.randn(6, 16, 5, 5, dtype=torch.float64)
    outs = []
    for chunk in (1 << 40, 1):  # whole batch, then one row per chunk
        monkeypatch.setattr(model_module, "CHUNK_BYTES", chunk)
        y = lrn(x, groups=2)
        (grad,) = torch.autograd.grad(y, x, g)
        outs.append((y.detach(), grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.allclose(outs[0][1], outs[1][1])



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_half_precision_lrn_is_the_float32_one_rounded_once(dtype, beta):
    """bf16 and fp16 maps are summed and raised in float32 (as the Triton kernels do): the
    output is float32's rounded to the dtype, so within its half-ulp of the exact one (summed
    in bf16, s put b up to 2.6% off, beyond bf16's 0.4% rounding); the gradient within a few
    of its ulps."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(3, 96, 7, 7) * 150).to(dtype)
    g = torch.randn(x.shape).to(dtype)
    exact = x.double().requires_grad_()
    want = lrn(exact, 5, 1e-4, beta, 2.0, groups=2)
    want.backward(g.double())
    xh = x.clone().requires_grad_()
    got = lrn(xh, 5, 1e-4, beta, 2.0, groups=2)
    got.backward(g)
    ulp = torch.finfo(dtype).eps
    assert got.dtype == xh.grad.dtype == dtype
    assert ((got.double() - want).abs() <= 0.501 * ulp * want.abs() + 1e-30).all()
    scale = exact.grad.abs().max()
    assert (xh.grad.double() - exact.grad).abs().max() <= 4 * ulp * scale


def test_second_derivatives_through_the_lrn_have_every_term():
    """Under create_graph the LRN's backward is the formula's gradient, recorded by autograd:
    gradgradcheck passes (float64, both columns' edges), a Hessian-vector product through it
    equals the one through torch's own F.local_response_norm applied column by column
    (alpha * n: torch divides alpha by the window), and the first derivative is unchanged.
    With torch's once_differentiable a second derivative came back without the LRN's term."""
    torch.manual_seed(0)
    x = (torch.rand(2, 6, 3, 3, dtype=torch.float64) * 4 - 1).requires_grad_()
    g = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: lrn(x, groups=2, k=1.0, alpha=0.1), (x,))
    (plain,) = torch.autograd.grad(lrn(x, groups=2), x, g)
    (dx,) = torch.autograd.grad(lrn(x, groups=2), x, g, create_graph=True)
    torch.testing.assert_close(dx, plain, rtol=1e-12, atol=0)

    def torch_lrn(x: torch.Tensor) -> torch.Tensor:
        n = paper.LRN_N
        return torch.cat([F.local_response_norm(col, n, alpha=paper.LRN_ALPHA * n,
                                                beta=paper.LRN_BETA, k=paper.LRN_K)
                          for col in x.chunk(2, dim=1)], dim=1)

    for f in (lrn, torch_lrn):
        (dx,) = torch.autograd.grad(f(x) if f is torch_lrn else f(x, groups=2), x, g,
                                    create_graph=True)
        hvp = torch.autograd.grad((dx ** 2).sum(), (x, g))
        if f is lrn:
            ours = hvp
    for a, b in zip(ours, hvp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_hessian_vector_product_of_the_net_matches_finite_differences():
    """A Hessian-vector product of the paper net's loss in its weights (double backward
    through conv, LRN, max-pool, dropout off) equals the central difference of its
    gradients along the same direction (float64; a step small enough that no ReLU or
    pooling choice changes)."""
    torch.manual_seed(0)
    net = AlexNet(num_classes=3, width=1 / 32, crop=67).double().eval()
    images, labels = torch.randn(2, 3, 67, 67, dtype=torch.float64), torch.tensor([0, 2])
    params = list(net.parameters())
    v = [torch.randn_like(q) for q in params]

    def grads() -> list[torch.Tensor]:
        loss = F.cross_entropy(net(images), labels)
        return list(torch.autograd.grad(loss, params, create_graph=True))

    first = grads()
    hvp = torch.autograd.grad(sum((q * d).sum() for q, d in zip(first, v, strict=True)),
                              params)
    eps, sides = 1e-6, []
    with torch.no_grad():
        for sign in (1, -1):
            for q, d in zip(params, v, strict=True):
                q.add_(d, alpha=sign * eps)
            with torch.enable_grad():
                sides.append([t.detach() for t in grads()])
            for q, d in zip(params, v, strict=True):
                q.sub_(d, alpha=sign * eps)
    for got, plus, minus in zip(hvp, *sides, strict=True):
        torch.testing.assert_close(got, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Two columns (section 3.2)


def changed(layer: nn.Module, x: torch.Tensor, cols: slice) -> torch.Tensor:
    """Which output channels of `layer` move when its input channels `cols` are perturbed."""
    x2 = x.clone()
    x2[:, cols] += torch.randn_like(x2[:, cols])
    with torch.no_grad():
        diff = (layer(x2) - layer(x)).abs()
    return diff.flatten(2).amax(2).amax(0) > 0 if diff.dim() == 4 else diff.amax(0) > 0


def test_column_isolation():
    torch.manual_seed(0)
    model = AlexNet(width=0.25)
    for name in ("conv2", "conv4", "conv5"):
        layer = getattr(model, name)
        cin, cout = layer.in_channels, layer.out_channels
        hit = changed(layer, torch.randn(2, cin, 13, 13), slice(0, cin // 2))
        assert hit[:cout // 2].all() and not hit[cout // 2:].any(), name
        hit = changed(layer, torch.randn(2, cin, 13, 13), slice(cin // 2, cin))
        assert not hit[:cout // 2].any() and hit[cout // 2:].all(), name
    # LRN normalises within a column
    hit = changed(model.lrn1, torch.rand(2, 24, 5, 5) * 100, slice(0, 12))
    assert hit[:12].all() and not hit[12:].any()
    # conv3 and fc6 see both columns
    conv3 = model.conv3
    hit = changed(conv3, torch.randn(2, conv3.in_channels, 13, 13),
                  slice(0, conv3.in_channels // 2))
    assert hit.all()
    hit = changed(model.fc6, torch.randn(2, model.fc6.in_features),
                  slice(0, model.fc6.in_features // 2))
    assert hit.all()
    assert [getattr(model, n).groups for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] \
        == [1, 2, 1, 2, 2]


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.grad for k, v in model.named_parameters()}


@pytest.mark.parametrize("kwargs", [{}, {"columns": 1}, {"lrn": False, "activation": "tanh"}])
def test_split_columns_compute_the_grouped_function(kwargs):
    torch.manual_seed(0)
    grouped = AlexNet(width=0.25, dropout=0.0, **kwargs).double()
    split = split_columns(grouped, ("cpu",) * grouped.columns)
    assert split.arch == grouped.arch and split.kwargs == grouped.kwargs
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 50
    y = torch.randint(0, 1000, (2,))
    for net in (grouped, split):
        nn.functional.cross_entropy(net(x), y).backward()
    assert torch.allclose(grouped(x), split(x), rtol=1e-10, atol=1e-12)
    # gradients: each grouped layer's gradient is the concatenation of its columns'
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        for kind in ("weight", "bias"):
            want = getattr(getattr(grouped, name), kind).grad
            got = torch.cat([getattr(col[name], kind).grad for col in split.cols])
            assert torch.allclose(want, got, rtol=1e-9, atol=1e-12), (name, kind)
    assert torch.allclose(grouped.fc8.weight.grad, split.fc8.weight.grad, rtol=1e-9)


def test_split_columns_state_dict_is_the_grouped_layout():
    grouped = AlexNet(width=0.1, dropout=0.0).double()
    split = split_columns(grouped, ("cpu", "cpu"))
    sd = split.state_dict()
    assert shapes(grouped) == {k: tuple(v.shape) for k, v in sd.items()}
    assert all(torch.equal(sd[k], v) for k, v in grouped.state_dict().items())
    fresh = AlexNet(width=0.1, dropout=0.0).double()
    other = split_columns(fresh, ("cpu", "cpu"))
    other.load_state_dict(sd)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 50
    assert torch.allclose(other(x), grouped(x), rtol=1e-10, atol=1e-12)
    back = other.grouped()
    assert isinstance(back, AlexNet) and torch.allclose(back(x), grouped(x), rtol=1e-10,
                                                        atol=1e-12)
    buf = io.BytesIO()
    torch.save(split.state_dict(), buf)  # what a checkpoint holds loads into a plain AlexNet
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    assert torch.allclose(fresh(x), grouped(x), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Initialisation (section 5)


def test_initialisation_statistics():
    torch.manual_seed(0)
    model = AlexNet()
    for name in LAYERS:
        layer = getattr(model, name)
        w = layer.weight.detach().double()
        n = w.numel()
        # sample std of n normal draws has std sigma / sqrt(2n); mean has sigma / sqrt(n)
        assert abs(w.std().item() - paper.INIT_STD) < 6 * paper.INIT_STD / math.sqrt(2 * n)
        assert abs(w.mean().item()) < 6 * paper.INIT_STD / math.sqrt(n)
        want = 1.0 if name in paper.BIAS_ONE_LAYERS else 0.0
        assert torch.equal(layer.bias.detach(), torch.full_like(layer.bias, want)), name
    assert set(paper.BIAS_ONE_LAYERS) == {"conv2", "conv4", "conv5", "fc6", "fc7"}


# ---------------------------------------------------------------------------------------
# Ablation switches: each changes what it names and nothing else


def describe(model: nn.Module) -> dict[str, str]:
    """Every module's repr line and every parameter's shape, by name."""
    out = {f"module {n}": f"{type(m).__name__} {m.extra_repr()}"
           for n, m in model.named_modules() if n}
    out.update({f"param {k}": str(v) for k, v in shapes(model).items()})
    return out


def differences(a: nn.Module, b: nn.Module) -> set[str]:
    da, db = describe(a), describe(b)
    return {k for k in da.keys() | db.keys() if da.get(k) != db.get(k)}


@pytest.mark.parametrize("switch,value,expected", [
    ("activation", "tanh", {"module act"}),
    ("lrn", False, {"module lrn1", "module lrn2"}),
    ("lrn_alpha_over_n", True, {"module lrn1", "module lrn2"}),
    ("overlap_pool", False, {"module pool"}),
    ("dropout", 0.0, {"module drop"}),
    ("num_classes", 10, {"module fc8", "param fc8.weight", "param fc8.bias"}),
])
def test_each_switch_changes_only_what_it_names(switch, value, expected):
    base, variant = meta(), meta(**{switch: value})
    assert differences(base, variant) == expected
    assert variant.kwargs == {**base.kwargs, switch: value}


def test_one_column_net_follows_footnote_3():
    two, one = meta(), meta(columns=1)
    changed_names = {k.split()[1].split(".")[0] for k in differences(two, one)}
    assert changed_names == {"conv1", "conv2", "conv3", "conv4", "conv5", "lrn1", "lrn2"}
    kernels = [getattr(one, n).out_channels for n in ("conv1", "conv2", "conv3", "conv4",
                                                      "conv5")]
    assert kernels == [48, 128, 192, 192, 256]  # half, except the last conv layer
    assert [getattr(one, n).groups for n in ("conv2", "conv4", "conv5")] == [1, 1, 1]
    # conv2, conv4, conv5 kernels see the depth they see in the two-column net (a column's
    # maps); conv3's see all 128 maps of the halved conv2, half the two-column net's 256
    assert [one.conv2.weight.shape[1:], one.conv4.weight.shape[1]] == \
        [two.conv2.weight.shape[1:], two.conv4.weight.shape[1]]
    assert one.conv3.weight.shape[1] == 128 == two.conv3.weight.shape[1] // 2
    assert one.conv5.weight.shape == two.conv5.weight.shape
    assert shapes(one.fc6) == shapes(two.fc6)
    assert one.lrn1.groups == 1 and two.lrn1.groups == 2


@pytest.mark.parametrize("width", [0.001, 0.1, 0.125, 0.3, 0.7])
def test_footnote_3_holds_at_every_width(width):
    """conv5 and the fully connected layers are the two-column net's at the same width (were
    rounded on one column: 77 kernels against 76 at width 0.3, 1 against 2 at 0.001); the other
    conv layers have half its kernels."""
    two, one = meta(width=width), meta(width=width, columns=1)
    for name in ("conv5", "fc6", "fc7"):
        assert getattr(one, name).weight.shape[0] == getattr(two, name).weight.shape[0], name
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert 2 * getattr(one, name).out_channels == getattr(two, name).out_channels, name


@pytest.mark.parametrize("kwargs", [{"columns": 1, "overlap_pool": False},
                                    {"activation": "tanh", "lrn": False, "dropout": 0.0}])
def test_width_works_with_every_switch(kwargs):
    model = AlexNet(num_classes=7, width=0.1, **kwargs)
    out = model(torch.randn(2, 3, 224, 224) * 50)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        out_size = getattr(model, name).weight.shape[0]
        assert out_size % model.columns == 0 and out_size < 4096 * 0.2


def test_build_model_round_trip():
    assert set(ARCHS) == {"alexnet", "alexnet-tv"}
    for arch, kwargs in (("alexnet", {"width": 0.1, "columns": 1, "num_classes": 5}),
                         ("alexnet-tv", {"num_classes": 5})):
        model = build_model(arch, **kwargs)
        again = build_model(model.arch, **model.kwargs)
        assert type(again) is type(model) and shapes(again) == shapes(model)
    with pytest.raises(ValueError):
        build_model("vgg")


# ---------------------------------------------------------------------------------------
# torchvision's layout


# torchvision.models.alexnet (vision/torchvision/models/alexnet.py), written out by hand
TORCHVISION_KEYS = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def test_torchvision_layout_keys_and_loading(tmp_path):
    with torch.device("meta"):
        assert shapes(AlexNetTV()) == TORCHVISION_KEYS
        assert sum(p.numel() for p in AlexNetTV().parameters()) == 61_100_840
    torch.manual_seed(0)
    source = AlexNetTV(num_classes=1000)
    # the paper's initialisation under torchvision's names: bias 1 in conv2, 4, 5, fc6, fc7
    ones = {"features.3", "features.8", "features.10", "classifier.1", "classifier.4"}
    for key, value in source.state_dict().items():
        if key.endswith("bias"):
            assert torch.equal(value, torch.full_like(value, float(key[:-5] in ones))), key
    path = tmp_path / "alexnet-owt.pth"
    torch.save(source.state_dict(), path)  # a weights file: a bare state_dict
    model = build_model("alexnet-tv")
    model.load_state_dict(torch.load(path))
    model.eval()
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (2, 4096) and (f >= 0).all()
        assert torch.allclose(model(x), model.classifier[6](f), atol=1e-5)
    conv1 = model.features[0]
    assert (conv1.padding, conv1.stride) == ((2, 2), (4, 4))
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert [type(m).__name__ for m in model.classifier][:4] == ["Dropout", "Linear", "ReLU",
                                                                "Dropout"]


def test_threads_asking_for_a_kernel_check_at_once_share_one_run(monkeypatch):
    """The loader's read-ahead threads may all ask for the Triton augmentation's check on
    their first batch: one runs it (and warns, if it fails), the others wait for its result."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import alexnet.model

    monkeypatch.setattr(alexnet.model, "_TRITON", {})
    runs = []

    def slow_check(device: torch.device) -> bool:
        runs.append(device)
        time.sleep(0.2)
        return False

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: alexnet.model._checked_once(
            "augment_verified.cpu", slow_check, torch.device("cpu")), range(8)))
    assert got == [False] * 8 and len(runs) == 1


def test_a_kernels_first_use_check_passes_a_users_mistake_on():
    """The check that makes `auto` fall back from a failing kernel takes any exception for the
    kernel's fault, but a UserError is the user's (a mistyped setting): it goes through."""
    from alexnet.errors import UserError
    from alexnet.model import _kernel_fault

    def mistyped() -> bool:
        raise UserError("ALEXNET_LRN_LAYOUT='rowz': choose from ...")

    def broken() -> bool:
        raise RuntimeError("no kernel image for this GPU\nmore")

    with pytest.raises(UserError, match="rowz"):
        _kernel_fault(mistyped, "the torch path")
    assert _kernel_fault(broken, "the torch path") == \
        "failed (RuntimeError: no kernel image for this GPU)"
    assert _kernel_fault(lambda: False, "x") == "differs from x on a test input"
    assert _kernel_fault(lambda: True, "x") is None
