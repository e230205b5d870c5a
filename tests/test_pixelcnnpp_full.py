"""The full (three-resolution) PixelCNN++ on fastgen kernels, and its resampling convolutions.

The strided and transposed shifted convolutions (fastgen.nn.shifted_resample) are checked in float64 on the
fastgen kernels (interpreted on CPU) against plain references written the openai/pixel-cnn way: ``F.pad`` +
``F.conv2d(stride=s)``, and ``F.conv_transpose2d(stride=s, output_padding=s-1)`` + openai's crop; outputs and
the gradients of input, weight and bias, odd sizes, strides 2 and 3, several kernel sizes.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.nn import (DownRightShiftedConvTranspose2d, DownShiftedConvTranspose2d, StridedDownRightShiftedConv2d,
                        StridedDownShiftedConv2d)
from tolerances import assert_close

# ------------------------------------------------------------------------------ resampling convolutions


def reference_strided(x, module):
    """openai's down_shifted_conv2d / down_right_shifted_conv2d with strides: pad, then a VALID strided conv."""
    (kh, kw), left = module.kernel_size, module.shift_taps.padding[1]
    return F.conv2d(F.pad(x, (left, kw - 1 - left, kh - 1, 0)), module.weight, module.bias, stride=module.stride)


def reference_transposed(x, module):
    """openai's down_shifted_deconv2d / down_right_shifted_deconv2d: a VALID transposed conv (H*s + kh - 1 rows),
    then rows [0, H*s) and columns [c0, c0 + W*s) (c0 = (kw-1)//2 resp. 0)."""
    (kh, kw), s = module.kernel_size, module.stride[0]
    height, width = x.shape[2:]
    out = F.conv_transpose2d(x, module.weight, module.bias, stride=s, output_padding=s - 1)
    assert out.shape[2:] == (height * s + kh - 1, width * s + kw - 1)  # TF's VALID target shape
    c0 = (kw - 1) // 2 if isinstance(module, DownShiftedConvTranspose2d) else 0
    return out[:, :, :height * s, c0:c0 + width * s]


STRIDED = [(StridedDownShiftedConv2d, (2, 3)), (StridedDownShiftedConv2d, (1, 3)),
           (StridedDownShiftedConv2d, (3, 3)), (StridedDownShiftedConv2d, (2, 2)),
           (StridedDownRightShiftedConv2d, (2, 2)), (StridedDownRightShiftedConv2d, (2, 1)),
           (StridedDownRightShiftedConv2d, (3, 2))]
TRANSPOSED = [(DownShiftedConvTranspose2d, (2, 3)), (DownShiftedConvTranspose2d, (1, 3)),
              (DownShiftedConvTranspose2d, (3, 3)), (DownShiftedConvTranspose2d, (2, 2)),
              (DownRightShiftedConvTranspose2d, (2, 2)), (DownRightShiftedConvTranspose2d, (2, 1)),
              (DownRightShiftedConvTranspose2d, (3, 2))]
# (batch, H, W): even, odd, H != W, smaller than the stride
STRIDED_SHAPES = [(2, 8, 6), (1, 5, 7), (1, 3, 2), (1, 1, 1)]
TRANSPOSED_SHAPES = [(2, 4, 3), (1, 3, 5), (1, 1, 1)]


def check_against(module, reference, shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((shape[0], module.in_channels) + shape[1:], generator=g, dtype=torch.float64)
    with torch.no_grad():  # a bias that is not zero
        module.bias.copy_(torch.randn(module.bias.shape, generator=g, dtype=torch.float64))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = module(x1), reference(x2, module)
    assert out.shape == expected.shape
    assert_close(out, expected, torch.float64)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (x1, module.weight, module.bias), grad)
    want = torch.autograd.grad(expected, (x2, module.weight, module.bias), grad)
    for name, a, b in zip(("x", "weight", "bias"), got, want):
        assert_close(a, b, torch.float64, name)


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("cls,kernel_size", STRIDED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_strided_shifted_conv_equals_openai_form(cls, kernel_size, stride):
    torch.manual_seed(0)
    module = cls(3, 5, kernel_size, stride=stride).double()
    for i, shape in enumerate(STRIDED_SHAPES):
        check_against(module, reference_strided, shape, seed=i)
    assert module(torch.zeros(1, 3, 7, 5, dtype=torch.float64)).shape == (1, 5, -(-7 // stride), -(-5 // stride))


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("cls,kernel_size", TRANSPOSED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_shifted_conv_transpose_equals_openai_form(cls, kernel_size, stride):
    torch.manual_seed(0)
    module = cls(3, 5, kernel_size, stride=stride).double()
    for i, shape in enumerate(TRANSPOSED_SHAPES):
        check_against(module, reference_transposed, shape, seed=i)


def test_phase_geometry_of_the_model_layers():
    """The coarse windows the model's resampling layers read (see the module doc)."""
    assert StridedDownShiftedConv2d(1, 1).phase_taps.kernel_size == (2, 2)
    assert StridedDownShiftedConv2d(1, 1).phase_taps.padding == (1, 1)
    assert StridedDownRightShiftedConv2d(1, 1).phase_taps.kernel_size == (2, 2)
    assert DownShiftedConvTranspose2d(1, 1).phase_taps.kernel_size == (1, 2)
    assert DownShiftedConvTranspose2d(1, 1).phase_taps.padding == (0, 0)
    assert DownRightShiftedConvTranspose2d(1, 1).phase_taps.kernel_size == (1, 1)
    # 2x3 at stride 2: 6 taps spread over 4 coarse taps x 4 phases, each reached once
    index = StridedDownShiftedConv2d(1, 1).phase_index
    assert sorted(index[index < 6].tolist()) == list(range(6))


@pytest.mark.parametrize("cls,twin,kwargs", [
    (StridedDownShiftedConv2d, nn.Conv2d, dict(kernel_size=(2, 3), stride=2)),
    (StridedDownRightShiftedConv2d, nn.Conv2d, dict(kernel_size=(2, 2), stride=2)),
    (DownShiftedConvTranspose2d, nn.ConvTranspose2d, dict(kernel_size=(2, 3), stride=2, output_padding=1)),
    (DownRightShiftedConvTranspose2d, nn.ConvTranspose2d, dict(kernel_size=(2, 2), stride=2, output_padding=1)),
])
def test_state_dict_is_the_torch_twins(cls, twin, kwargs):
    torch.manual_seed(0)
    ours, theirs = cls(4, 6), twin(4, 6, **kwargs)
    assert isinstance(ours, twin)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.weight, theirs.weight)
    assert ours.stride == theirs.stride


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="stride"):
        StridedDownShiftedConv2d(2, 2, stride=0)
    with pytest.raises(TypeError, match="stride"):
        DownShiftedConvTranspose2d(2, 2, stride=2.0)
    with pytest.raises(ValueError, match="kernel_size"):
        StridedDownRightShiftedConv2d(2, 2, kernel_size=(2, 2, 2))
    with pytest.raises(ValueError, match="output_size"):
        DownShiftedConvTranspose2d(2, 2)(torch.zeros(1, 2, 2, 2), output_size=(4, 4))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        StridedDownShiftedConv2d(2, 2)(torch.zeros(2, 2, 2))
