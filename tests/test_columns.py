"""The column-restricted convolutions (conv2, conv4, conv5) in every form against groups=2:
same outputs and gradients, same state_dict, and zeros that stay exactly zero in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alexnet.model import COLUMN_FORMS, AlexNet, ColumnConv2d, Conv1, block_diagonal
from alexnet.optim import PaperSGD, param_groups

FORMS = [f for f in COLUMN_FORMS if f != "auto"]


def test_block_diagonal_weight_is_the_grouped_weight_and_zeros():
    w = torch.randn(6, 2, 3, 3)  # 3 columns of 2 kernels, each seeing 2 maps
    dense = block_diagonal(w, 3)
    assert dense.shape == (6, 6, 3, 3)
    for r in range(3):
        for c in range(3):
            block = dense[2 * r:2 * r + 2, 2 * c:2 * c + 2]
            assert torch.equal(block, w[2 * r:2 * r + 2] if r == c else torch.zeros_like(block))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_form_equals_groups_outputs_and_gradients(form, channels_last):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(8, 6, 3, 1, 1, groups=2).double()
    conv = ColumnConv2d(8, 6, 3, 1, 1, groups=2, form=form).double()
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        conv = conv.to(memory_format=torch.channels_last)
    g = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), conv(xb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [*FORMS, "conv1 direct", "conv1 blocks"])
def test_every_form_without_its_bias_is_the_conv_less_its_bias(layer):
    """`_conv_forward(x, weight, None)`, what the net runs before an LRN kernel that adds
    the bias itself (model.conv_act_lrn), is conv(x) minus the bias in every form (conv1's
    too), and it leaves the bias out of the graph (no gradient reaches it)."""
    torch.manual_seed(0)
    if layer.startswith("conv1"):
        conv = Conv1(3, 6, 11, 4, form=layer.split()[1]).double()
        x = torch.randn(2, 3, 31, 31, dtype=torch.float64)
    else:
        conv = ColumnConv2d(8, 6, 3, 1, 1, groups=2, form=layer).double()
        x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        conv.bias.uniform_(1, 2)
    y = conv._conv_forward(x, conv.weight, None)
    torch.testing.assert_close(y + conv.bias.view(1, -1, 1, 1), conv(x), rtol=1e-12,
                               atol=1e-12)
    y.sum().backward()
    assert conv.bias.grad is None and conv.weight.grad is not None


@pytest.mark.parametrize("layer", ["dense", "separate", "conv1 blocks"])
@pytest.mark.parametrize("geometry", [{"dilation": 2}, {"padding_mode": "reflect"},
                                      {"stride": (2, 1)}, {"padding": (1, 0)}])
def test_every_form_keeps_the_geometry_nn_conv2d_was_given(layer, geometry):
    """A layer built with a dilation, a padding mode, or a stride or padding that differs
    between the axes computes nn.Conv2d's function in every form: the dense and separate
    forms once dropped the dilation and the padding mode, and conv1's blocks form took the
    first axis's stride and padding for both (the paper's layers have none of these)."""
    torch.manual_seed(0)
    kwargs = {"stride": 1, "padding": 1, **geometry}
    if layer == "conv1 blocks":
        kwargs["stride"] = geometry.get("stride", 2)
        conv = Conv1(3, 4, 3, form="blocks", **kwargs).double()
        ref = torch.nn.Conv2d(3, 4, 3, **kwargs).double()
        x = torch.randn(1, 3, 15, 15, dtype=torch.float64)
    else:
        conv = ColumnConv2d(4, 4, 3, groups=2, form=layer, **kwargs).double()
        ref = torch.nn.Conv2d(4, 4, 3, groups=2, **kwargs).double()
        x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    ref.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_the_paper_net_in_every_form_is_the_same_function(form):
    torch.manual_seed(0)
    ref = AlexNet(num_classes=5, width=0.1, dropout=0.0, column_conv="groups").double()
    net = AlexNet(num_classes=5, width=0.1, dropout=0.0, column_conv=form).double()
    net.load_state_dict(ref.state_dict())
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}
    assert net.kwargs == ref.kwargs  # the form is not part of the architecture
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 50
    for model in (ref, net):
        model(x).square().sum().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_dense_form_trains_like_groups_and_its_zeros_stay_zero():
    # many PaperSGD steps with weight decay and momentum: the same weights as groups=2, and
    # the dense weight's off-diagonal blocks exactly zero though their gradient is not
    torch.manual_seed(0)
    ref = ColumnConv2d(4, 6, 3, 1, 1, groups=2, form="groups").double()
    conv = ColumnConv2d(4, 6, 3, 1, 1, groups=2, form="dense").double()
    conv.load_state_dict(ref.state_dict())
    opts = [PaperSGD(param_groups(m), lr=0.05, momentum=0.9, weight_decay=0.05)
            for m in (ref, conv)]
    for _ in range(30):
        x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
        target = torch.randn(3, 6, 5, 5, dtype=torch.float64)
        for model, opt in zip((ref, conv), opts, strict=True):
            opt.zero_grad()
            F.mse_loss(model(x), target).backward()
            opt.step()
    assert conv.weight.shape == ref.weight.shape == (6, 2, 3, 3)
    torch.testing.assert_close(conv.weight, ref.weight, rtol=1e-9, atol=1e-12)
    dense = block_diagonal(conv.weight, 2)
    dense.retain_grad()
    F.conv2d(x, dense, conv.bias, 1, 1).square().sum().backward()
    assert torch.count_nonzero(dense.grad[:3, 2:]) > 0  # a free weight there would move ...
    for off in (dense[:3, 2:], dense[3:, :2]):
        assert torch.count_nonzero(off) == 0  # ... but these are no parameter


def test_auto_is_groups_on_cpu_and_unknown_forms_are_refused():
    conv = ColumnConv2d(4, 6, 3, groups=2)
    assert conv.resolved_form(torch.zeros(1, 4, 5, 5)) == "groups"
    with pytest.raises(ValueError, match="column_conv='diag'"):
        ColumnConv2d(4, 6, 3, groups=2, form="diag")


def test_a_bad_alexnet_columns_setting_is_a_user_error(monkeypatch):
    import alexnet.model
    from alexnet.errors import UserError

    monkeypatch.setattr(alexnet.model, "COLUMN_CONV", "diag")
    with pytest.raises(UserError, match="ALEXNET_COLUMNS='diag'"):
        AlexNet(width=0.1)
    assert AlexNet(width=0.1, column_conv="dense").conv2.form == "dense"  # the kwarg wins


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_is_each_layers_measured_form():
    from alexnet.model import CUDA_AUTO_FORM, AlexNet

    net = AlexNet(width=0.1).cuda()
    x = torch.zeros(1, device="cuda")
    assert {name: getattr(net, name).resolved_form(x) for name in CUDA_AUTO_FORM} == \
        {"conv2": "dense", "conv4": "dense", "conv5": "groups"}
