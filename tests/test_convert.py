"""fastgen.nn.convert on peer-style PixelCNN code: masked convolutions written the ways the public
implementations write them are swapped for fastgen's, with the same outputs, input and live-weight gradients
(float64), the same state_dict keys and checkpoints; masks no tap set expresses are left alone and reported."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgen
from peer_models import InPlaceMaskedConv2d

F64 = torch.float64


class ProductMaskedConv2d(nn.Conv2d):
    """The other common pattern: a [1, 1, kh, kw] mask, ``F.conv2d(x, weight * mask)`` in the forward."""

    def __init__(self, in_channels, out_channels, kernel_size, live, padding):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        kh, kw = self.kernel_size
        mask = torch.zeros(1, 1, kh * kw)
        mask[..., :live] = 1
        self.register_buffer("conv_mask", mask.view(1, 1, kh, kw))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.conv_mask, self.bias, padding=self.padding)


class RGBMaskedConv2d(nn.Conv2d):
    """RGB PixelCNN's centre-tap channel groups, contiguous (c * 3 // C) or interleaved (c % 3)."""

    def __init__(self, mask_type, in_channels, out_channels, kernel_size, interleaved=False):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        k = kernel_size
        group = (lambda c, n: c % 3) if interleaved else (lambda c, n: c * 3 // n)
        mask = torch.ones(out_channels, in_channels, k, k)
        mask[:, :, k // 2, k // 2 + 1:] = 0
        mask[:, :, k // 2 + 1:] = 0
        for o in range(out_channels):
            for i in range(in_channels):
                seen = group(i, in_channels) < group(o, out_channels) if mask_type == "A" else \
                    group(i, in_channels) <= group(o, out_channels)
                mask[o, i, k // 2, k // 2] = float(seen)
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def peer_model(channels=1, interleaved=False):
    torch.manual_seed(0)
    if channels == 3:
        layers = [RGBMaskedConv2d("A", 3, 6, 5, interleaved), nn.ReLU(), RGBMaskedConv2d("B", 6, 6, 3, interleaved)]
    else:
        layers = [InPlaceMaskedConv2d("A", 1, 6, 5, padding=2, bias=False), nn.ReLU(),
                  InPlaceMaskedConv2d("B", 6, 6, 3, padding=1), nn.ReLU(),
                  ProductMaskedConv2d(6, 6, (1, 3), live=2, padding=(0, 1)),  # a 1 x 3 horizontal stack (B)
                  nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(6, 4, 1)).to(F64)


def outputs_and_gradients(model, x):
    x = x.clone().requires_grad_()
    out = model(x)
    masked = [m for m in model.modules() if hasattr(m, "mask") or hasattr(m, "conv_mask")]
    weights = [m.weight for m in masked]
    grads = torch.autograd.grad(out.square().sum(), [x, *weights])
    live = [g * getattr(m, "mask", getattr(m, "conv_mask", None)) for g, m in zip(grads[1:], masked)]
    return out.detach(), grads[0], live


@pytest.mark.parametrize("channels, interleaved", [(1, False), (3, False), (3, True)], ids=str)
def test_converted_model_computes_the_same(channels, interleaved, device):
    """Contiguous (c * 3 // C) and interleaved (c % 3) RGB channel groups both convert, with the same outputs,
    input gradients and live-weight gradients (the grouping is applied when the kernels pack the live taps)."""
    model = peer_model(channels, interleaved).to(device)
    x = torch.randn(2, channels, 6, 5, dtype=F64, device=device)
    before = outputs_and_gradients(model, x)
    keys = list(model.state_dict())
    checkpoint = copy.deepcopy(model.state_dict())
    report = fastgen.nn.convert(model)
    assert len(report.converted) == (2 if channels == 3 else 3) and not report.left_alone, str(report)
    converted = [m for m in model if isinstance(m, fastgen.nn.TapConv2d)]
    assert len(converted) == len(report.converted)
    assert [m.taps.interleaved for m in converted] == [interleaved and channels == 3] * len(converted)
    if interleaved:
        assert "interleaved" in str(report)
    with fastgen.use_backend("triton"):
        after = outputs_and_gradients(model, x)
    for got, expected in zip([after[0], after[1], *after[2]], [before[0], before[1], *before[2]], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert list(model.state_dict()) == keys  # same keys: checkpoints load both ways
    model.load_state_dict(checkpoint)


def test_report_names_what_it_leaves_alone(device):
    model = peer_model(3).to(device)
    with torch.no_grad():  # a centre tap that no channel grouping explains: output 0 sees input 5
        model[2].mask[0, 5, 1, 1] = 1.0
    report = fastgen.nn.convert(model)
    assert len(report.converted) == 1 and len(report.left_alone) == 1
    assert "left alone 2: its last live tap connects channels in a pattern other than" in str(report)

    class Strided(InPlaceMaskedConv2d):
        pass

    odd = nn.Sequential(Strided("B", 1, 2, 3, padding=1, stride=2), nn.Conv2d(2, 2, 3))  # a plain conv: skipped
    report = fastgen.nn.convert(odd)
    assert report.left_alone == [("0", "stride=(2, 2) (fastgen's tap-set convolutions have stride 1, dilation 1, "
                                       "groups 1)")]
    cropped = nn.Sequential(ProductMaskedConv2d(1, 2, 3, live=4, padding=0))  # a valid-size output
    assert "does not keep the output size" in fastgen.nn.convert(cropped).left_alone[0][1]


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_with_interleaved_channel_groups(mask_type, device):
    """MaskedConv2d(channel_groups="interleaved"): channel c in group c % 3, on the kernels: the output of
    F.conv2d(x, weight * mask), and the masked weights get exactly zero gradient."""
    torch.manual_seed(1)
    conv = fastgen.nn.MaskedConv2d(3, 7, 3, mask_type, data_channels=3, channel_groups="interleaved")
    conv = conv.to(device, F64)
    expected_mask = RGBMaskedConv2d(mask_type, 3, 7, 3, interleaved=True).mask.to(device, F64)
    assert torch.equal(conv.mask, expected_mask)
    x = torch.randn(2, 3, 4, 5, dtype=F64, device=device, requires_grad=True)
    with fastgen.use_backend("triton"):
        out = conv(x)
    torch.testing.assert_close(out, F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=1))
    (grad,) = torch.autograd.grad(out.square().sum(), conv.weight)
    assert grad[expected_mask == 0].abs().max() == 0
    with pytest.raises(ValueError, match="channel_groups"):
        fastgen.nn.MaskedConv2d(3, 6, 3, "A", data_channels=3, channel_groups="strided")
