"""fastgen.masked_conv2d / tap_conv2d and the fastgen.nn convolutions against ``F.conv2d(x, weight * mask)``."""

import contextlib
import itertools
import zlib

import pytest
import torch
import torch.nn.functional as F

import fastgen
import fastgen.ops.tap_conv as op
from fastgen import reference
from fastgen.nn import masks
from fastgen.reference import tap_conv as ref
from peer_models import InPlaceMaskedConv2d
from tolerances import TOLERANCES, assert_close

KERNEL_SIZES = (1, 3, 5, 7)
# (batch, H, W): odd sizes, H != W, H or W smaller than the kernel, batch 1
SHAPES = [(2, 5, 7), (1, 3, 2), (1, 6, 4), (2, 2, 5)]


def make(shape, dtype, device, seed_text, scale=1.0):
    g = torch.Generator().manual_seed(zlib.crc32(seed_text.encode()))
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device, dtype)


def conv_inputs(taps, batch, height, width, c_in, c_out, dtype, device, bias=True):
    """x, weight (scaled by 1/sqrt(fan-in), so outputs are O(1) as in a network) and bias."""
    kh, kw = taps.kernel_size
    text = f"{taps} {batch} {height} {width} {c_in} {c_out} {dtype}"
    x = make((batch, c_in, height, width), dtype, device, "x" + text)
    w = make((c_out, c_in, kh, kw), dtype, device, "w" + text, scale=(c_in * kh * kw) ** -0.5)
    b = make((c_out,), dtype, device, "b" + text) if bias else None
    return x, w, b


@contextlib.contextmanager
def cudnn_tf32(enabled: bool):
    """PyTorch's TF32 switch for convolutions (``torch.backends.cudnn.allow_tf32``) set, then restored."""
    cudnn = torch.backends.cudnn
    saved = [(m, m.fp32_precision) for m in (getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)) if m]
    legacy = None if saved else cudnn.allow_tf32
    cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        for module, precision in saved:
            module.fp32_precision = precision
        if legacy is not None:
            cudnn.allow_tf32 = legacy


@pytest.fixture(autouse=True)
def _exact_fp32(request):
    """float32 convolutions multiply in exact FP32 in this file (the tight float32 tolerance), on a GPU too,
    unless a test takes the ``tf32`` parameter and sets PyTorch's switch itself."""
    if "tf32" in request.fixturenames:
        yield
        return
    with cudnn_tf32(False):
        yield


# TF32 keeps 10 of float32's 23 mantissa bits of each operand (truncated or rounded): each product is off by
# less than 2 * 2**-10 of |x| |w|, so every output (and gradient) is within TF32_BOUND * (the same sum over
# the absolute values) of the exact result, plus float32's own tolerance. The bound holds for any inputs.
TF32_BOUND = 2.0 ** -9 * 1.01


def _assert_within_tf32(actual, expected, bound, msg):
    error = (actual.double() - expected).abs()
    allowed = TF32_BOUND * bound + 1e-5 + 1e-5 * expected.abs()
    assert (error <= allowed).all(), f"{msg}: error {(error - allowed).max().item():.3g} above the TF32 bound"


def check_against_reference(x, w, b, taps, dtype, tf32=False, input_activation=None):
    """Output and the gradients of x, weight and bias (grad_output random) against the float64 reference
    (of the convolution of relu(x) or concat_elu(x) with ``input_activation``).

    ``tf32``: float32 multiplied on TF32 tensor cores: within the TF32 bound of each value instead of float32's
    tolerance (under the interpreter, which multiplies exactly either way, this holds trivially; on a GPU it
    checks the TF32 kernels)."""
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    y = fastgen.tap_conv2d(x, w, b, taps, input_activation=input_activation)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    x64, w64 = leaves64[:2]
    b64 = leaves64[2] if b is not None else None
    if input_activation == "concat_elu" and dtype.itemsize == 2 and not op._upcast(dtype):
        # 16-bit: the kernels round elu(+-x) to the dtype before multiplying, as eager F.elu's 16-bit output is
        # rounded (~2**-9 of each product in bf16: beyond its tolerance over a few dozen terms that cancel); the
        # cast passes x's gradient through unchanged. Interpreted bf16 multiplies the float32 activation.
        y_ref = ref.tap_conv2d(F.elu(torch.cat([x64, -x64], 1)).to(dtype).double(), w64, b64, taps)
    else:
        y_ref = ref.tap_conv2d(x64, w64, b64, taps, input_activation=input_activation)
    assert y.dtype == dtype and y.shape == y_ref.shape
    grad_y = make(y.shape, dtype, y.device, "grad_y")  # rounded to dtype, then the same values in float64
    grads = torch.autograd.grad(y, leaves, grad_y)
    grads_ref = torch.autograd.grad(y_ref, leaves64, grad_y.double())
    if tf32:  # the same sums over |x|, |w| and |grad_y|: the scale of each value's TF32 error
        abs64 = [t.detach().abs().requires_grad_() for t in leaves64[:2]]
        # |relu(x)| <= |x| and |elu(+-x)| <= |x|, |elu'| <= 1: the sums over |x| bound the activation's too
        abs_x = torch.cat([abs64[0]] * 2, 1) if input_activation == "concat_elu" else abs64[0]
        y_abs = ref.tap_conv2d(abs_x, abs64[1], None, taps)
        bounds = (y_abs, *torch.autograd.grad(y_abs, abs64, grad_y.double().abs()), torch.zeros_like(y_ref[0, :, 0, 0]))
        _assert_within_tf32(y, y_ref, bounds[0], "output")
    else:
        assert_close(y, y_ref, dtype, "output")
    for i, (name, grad, grad_ref) in enumerate(zip(("x", "weight", "bias"), grads, grads_ref)):
        assert grad.dtype == dtype and grad.shape == grad_ref.shape
        if tf32:
            _assert_within_tf32(grad, grad_ref, bounds[1 + i], f"grad of {name}")
        else:
            assert_close(grad, grad_ref, dtype, f"grad of {name}")
    # the gradient of a masked weight entry is exactly zero
    dead = taps.mask(w.shape[0], w.shape[1], device=w.device) == 0
    assert (grads[1][dead] == 0).all()
    return y, grads


MASKED_CASES = list(itertools.product(KERNEL_SIZES, "AB", (1, 3)))


@pytest.mark.parametrize("k,mask_type,data_channels", MASKED_CASES, ids=lambda v: str(v))
def test_masked_conv_float32(device, k, mask_type, data_channels):
    """Every kernel size x mask x data_channels, with an odd shape each, forward and all three gradients."""
    batch, height, width = SHAPES[(k + (mask_type == "A") + data_channels) % len(SHAPES)]
    taps = masks.masked(k, mask_type, data_channels)
    x, w, b = conv_inputs(taps, batch, height, width, 6, 9, torch.float32, device)
    y, _ = check_against_reference(x, w, b, taps, torch.float32)
    # the public op, with the dense weight: F.conv2d(x, weight * mask, bias, padding=k // 2)
    expected = F.conv2d(x.detach(), w.detach() * taps.mask(9, 6, device=device), b.detach(), padding=k // 2)
    assert_close(fastgen.masked_conv2d(x, w, b, mask_type, data_channels).detach(), expected.double(),
                 torch.float32, "masked_conv2d")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k,mask_type,data_channels", [(7, "B", 3), (3, "A", 1), (5, "A", 3)], ids=str)
def test_masked_conv_dtypes(device, dtype, k, mask_type, data_channels):
    # channel counts above one tile (64 for 16-bit, 32 for float64) so that channel blocks are masked too
    taps = masks.masked(k, mask_type, data_channels)
    x, w, b = conv_inputs(taps, 1, 5, 6, 66 if k == 3 else 6, 36 if k == 3 else 9, dtype, device)
    check_against_reference(x, w, b, taps, dtype)


STACK_TAP_SETS = {
    "down_shifted 2x3": masks.down_shifted((2, 3)),
    "down_right_shifted 2x2": masks.down_right_shifted((2, 2)),
    "vertical k=5 A": masks.vertical_stack(5, "A"),
    "vertical k=3 B": masks.vertical_stack(3, "B"),
    "horizontal k=5 A rgb": masks.horizontal_stack(5, "A", 3),
    "horizontal k=7 B": masks.horizontal_stack(7, "B"),
}


@pytest.mark.parametrize("name", STACK_TAP_SETS)
def test_shifted_and_stack_convs(device, name):
    taps = STACK_TAP_SETS[name]
    x, w, b = conv_inputs(taps, 2, 4, 5, 6, 3, torch.float32, device)
    check_against_reference(x, w, b, taps, torch.float32)


@pytest.mark.parametrize("taps", [masks.masked(3, "A", 3), masks.masked(5, "B", 1), masks.down_shifted(),
                                  masks.vertical_stack(3, "A"), masks.horizontal_stack(3, "B", 3)],
                         ids=lambda t: t.diagram().replace("\n", "/"))
def test_gradcheck_float64(device, taps):
    x, w, b = conv_inputs(taps, 2, 3, 4, 3, 6, torch.float64, device)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: fastgen.tap_conv2d(x, w, b, taps), inputs, fast_mode=True)


def test_reference_formulations(device):
    """The tap sets against the way PixelCNN++ and Gated PixelCNN code writes these convolutions."""
    x = make((2, 3, 5, 6), torch.float64, device, "formulations")
    w23, w22 = make((4, 3, 2, 3), torch.float64, device, "w23"), make((4, 3, 2, 2), torch.float64, device, "w22")
    # PixelCNN++ (openai/pixel-cnn nn.py): pad, then a 'valid' convolution
    torch.testing.assert_close(ref.tap_conv2d(x, w23, None, masks.down_shifted()),
                               F.conv2d(F.pad(x, (1, 1, 1, 0)), w23))
    torch.testing.assert_close(ref.tap_conv2d(x, w22, None, masks.down_right_shifted()),
                               F.conv2d(F.pad(x, (1, 0, 1, 0)), w22))
    # Gated PixelCNN (as in pytorch-vqvae): pad k//2 all round, crop; mask A zeroes the last row / column
    k = 5
    wv = make((4, 3, k // 2 + 1, k), torch.float64, device, "wv")
    keep = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64, device=device)  # the taps of k // 2 + 1 = 3
    vertical = F.conv2d(x, wv * keep.view(1, 1, 3, 1), padding=(k // 2, k // 2))
    torch.testing.assert_close(ref.tap_conv2d(x, wv, None, masks.vertical_stack(k, "A")), vertical[:, :, :5])
    wh = make((4, 3, 1, k // 2 + 1), torch.float64, device, "wh")
    horizontal = F.conv2d(x, wh * keep.view(1, 1, 1, 3), padding=(0, k // 2))
    torch.testing.assert_close(ref.tap_conv2d(x, wh, None, masks.horizontal_stack(k, "A")), horizontal[..., :6])


def test_tap_sets():
    """Live taps: rows above the centre, then the centre row up to (A: before) the centre."""
    assert masks.masked(3, "A").taps == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert masks.masked(3, "B").taps == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert masks.masked(7, "B").n_taps == 25 and masks.masked(7, "A").n_taps == 24
    assert masks.masked(1, "A").n_taps == 0
    rgb_a, rgb_b = masks.masked(3, "A", 3), masks.masked(3, "B", 3)
    assert rgb_a.centre == rgb_b.centre == 4
    # PixelRNN channel groups at the centre: R sees nothing (A) / R (B), G sees R (A) / R,G (B), ...
    a, b = rgb_a.channel_mask(3, 3), rgb_b.channel_mask(3, 3)
    assert a.tolist() == [[False, False, False], [True, False, False], [True, True, False]]
    assert b.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # with C=6, channels 0-1 are R, 2-3 G, 4-5 B
    assert rgb_b.channel_mask(6, 6)[2].tolist() == [True, True, True, True, False, False]
    mask = masks.masked(5, "A").mask(1, 1)[0, 0]
    assert mask.sum() == 12 and mask[2, 2] == 0 and mask[2, 1] == 1 and mask[3:].sum() == 0
    assert masks.masked(7, "B").live_fraction(64, 64) == pytest.approx(25 / 49)


def _pixelcnn_stack(x, weights, data_channels, backend):
    """A 7x7 mask-A layer, then two 3x3 mask-B layers, on fastgen's kernels or on the reference."""
    conv = fastgen.masked_conv2d if backend == "fastgen" else reference.tap_conv.masked_conv2d
    h = conv(x, weights[0], None, "A", data_channels)
    for w in weights[1:]:
        h = conv(torch.tanh(h), w, None, "B", data_channels)
    return h


@pytest.mark.parametrize("data_channels", [1, 3])
def test_receptive_field_is_causal(device, data_channels):
    """Perturbing input pixel p (one channel group) changes outputs only after p in raster order and, at p
    itself, only the output channel groups above the perturbed one."""
    c, height, width = 3, 5, 4
    weights = [make((6, c, 7, 7), torch.float64, device, "w0")] + [
        make((6, 6, 3, 3), torch.float64, device, f"w{i}") for i in (1, 2)]
    if data_channels == 1:
        weights[0] = weights[0][:, :1]
        c = 1
    x = make((1, c, height, width), torch.float64, device, "x")
    y = _pixelcnn_stack(x, weights, data_channels, "fastgen")
    torch.testing.assert_close(y, _pixelcnn_stack(x, weights, data_channels, "reference"))
    out_group = torch.arange(6) * data_channels // 6
    for py, px, channel in [(2, 1, 0), (1, 3, c - 1), (0, 0, c // 2)]:
        bumped = x.clone()
        bumped[0, channel, py, px] += 1.0
        changed = (_pixelcnn_stack(bumped, weights, data_channels, "fastgen") - y).abs()[0] > 1e-12  # [6, H, W]
        position = torch.arange(height * width).view(height, width)
        before = position < py * width + px
        assert not changed[:, before].any(), "an output before the perturbed pixel changed"
        at_p = changed[:, py, px].cpu()
        may_change = out_group > channel * data_channels // c
        assert not at_p[~may_change].any(), "an output group at the perturbed pixel saw its own or a later group"
        assert changed[:, ~before].any(), "nothing changed: the test would pass vacuously"


@pytest.mark.parametrize("layout", ["channels_last", "channels_last_fp16", "sliced", "transposed_hw"])
def test_strided_inputs(device, layout):
    taps = masks.masked(3, "B", 3)
    dtype = torch.float16 if layout.endswith("fp16") else torch.float32  # 16-bit channels-last: other tiles
    x, w, b = conv_inputs(taps, 2, 5, 6, 6, 9, dtype, device)
    if layout.startswith("channels_last"):
        x = x.to(memory_format=torch.channels_last)
    elif layout == "sliced":  # every other column of a wider tensor, and a weight view
        x = torch.cat([x, x], dim=3)[..., ::2]
        w = torch.cat([w, w], dim=0)[::2]
    else:
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    y, grads = check_against_reference(x, w, b, taps, dtype)
    if layout.startswith("channels_last"):
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous_grad_output(device):
    taps = masks.masked(5, "A", 1)
    x, w, b = conv_inputs(taps, 1, 4, 5, 6, 3, torch.float32, device)
    x.requires_grad_()
    y = fastgen.tap_conv2d(x, w, b, taps)
    grad_y = make((1, 3, 5, 4), torch.float32, device, "g").transpose(2, 3)  # non-contiguous
    (grad_x,) = torch.autograd.grad(y, x, grad_y)
    x64 = x.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(ref.tap_conv2d(x64, w.double(), b.double(), taps), x64, grad_y.double())
    assert_close(grad_x, expected, torch.float32)


def test_input_without_grad(device):
    """The first layer's input (the data) needs no gradient: only weight and bias get one."""
    taps = masks.masked(7, "A", 3)
    x, w, b = conv_inputs(taps, 1, 3, 3, 3, 6, torch.float32, device)
    w.requires_grad_()
    y = fastgen.tap_conv2d(x, w, None, taps)
    (grad_w,) = torch.autograd.grad(y.sum(), w)
    w64 = w.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(ref.tap_conv2d(x.double(), w64, None, taps).sum(), w64)
    assert_close(grad_w, expected, torch.float32)


@pytest.mark.parametrize("shape", [(0, 6, 4, 5), (2, 6, 0, 5), (2, 0, 4, 5)], ids=str)
def test_empty(device, shape):
    taps = masks.masked(3, "B", 3)
    x = torch.zeros(shape, device=device, requires_grad=True)
    w = make((9, shape[1], 3, 3), torch.float32, device, "w").requires_grad_()
    b = make((9,), torch.float32, device, "b").requires_grad_()
    if shape[1] == 0:
        taps = masks.masked(3, "B", 1)  # no channels to group
    y = fastgen.tap_conv2d(x, w, b, taps)
    assert y.shape == (shape[0], 9, *shape[2:])
    if shape[0] and shape[2]:
        # no input channels: the output is the bias (F.conv2d returns 0 channels here, a torch quirk)
        torch.testing.assert_close(y, b.detach().view(1, 9, 1, 1).expand(y.shape))
    grads = torch.autograd.grad(y.sum(), (x, w, b))
    assert grads[0].shape == x.shape and (grads[1] == 0).all()
    torch.testing.assert_close(grads[2], torch.full((9,), float(y[:, 0].numel()), device=device))


def test_1x1_mask_a_is_the_bias(device):
    """A 1x1 mask-A convolution on a grayscale image has no live tap: output = bias, as F.conv2d gives."""
    taps = masks.masked(1, "A", 1)
    x, w, b = conv_inputs(taps, 2, 3, 4, 1, 5, torch.float32, device)
    check_against_reference(x, w, b, taps, torch.float32)


def test_errors(device):
    x = torch.randn(1, 6, 4, 4, device=device)
    w = torch.randn(6, 6, 3, 3, device=device)

    def randn(*shape):  # every tensor on the session's device: only the named argument is wrong
        return torch.randn(*shape, device=device)

    cases = [
        (lambda: fastgen.masked_conv2d(x, w, mask_type="C"), ValueError, "mask_type"),
        (lambda: fastgen.masked_conv2d(x, w, data_channels=2), ValueError, "data_channels"),
        (lambda: fastgen.masked_conv2d(x, randn(6, 6, 4, 4)), ValueError, "kernel_size"),
        (lambda: fastgen.masked_conv2d(x, randn(6, 6, 9, 9)), ValueError, "kernel_size"),
        (lambda: fastgen.masked_conv2d(x, randn(6, 6, 3, 5)), ValueError, "square"),
        (lambda: fastgen.masked_conv2d(x, w, padding=0), ValueError, "padding"),
        (lambda: fastgen.masked_conv2d(x[0], w), ValueError, "x must be a 4-d"),
        (lambda: fastgen.masked_conv2d(x.long(), w), TypeError, "x must be a floating"),
        (lambda: fastgen.masked_conv2d(x, w.double()), TypeError, "weight has dtype"),
        (lambda: fastgen.masked_conv2d(x, w.to("meta")), ValueError, "weight is on meta"),
        (lambda: fastgen.masked_conv2d(x, randn(6, 5, 3, 3)), ValueError, "weight must have shape"),
        (lambda: fastgen.masked_conv2d(x, w, randn(5)), ValueError, "bias has shape"),
        (lambda: fastgen.masked_conv2d(x[:, :4], w[:, :4], data_channels=3), ValueError, "in_channels (4)"),
        (lambda: fastgen.tap_conv2d(x, w, None, "B"), TypeError, "taps must be"),
        (lambda: fastgen.nn.MaskedConv2d(6, 6, 3, stride=2), ValueError, "stride"),
        (lambda: fastgen.nn.MaskedConv2d(6, 6, 3, groups=2), ValueError, "groups"),
        (lambda: fastgen.nn.MaskedConv2d(6, 6, 4), ValueError, "kernel_size"),
        (lambda: fastgen.nn.MaskedConv2d(6, 5, 3, data_channels=3), ValueError, "out_channels (5)"),
        (lambda: fastgen.nn.MaskedConv2d(6, 6, 3, mask_type="a"), ValueError, "mask_type"),
    ]
    for call, error, text in cases:
        with pytest.raises(error, match=__import__("re").escape(text)):
            call()


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv2d_module_state_dict(device, mask_type):
    theirs = InPlaceMaskedConv2d(mask_type, 4, 8, 5, padding=2).to(device)
    ours = fastgen.nn.MaskedConv2d(4, 8, 5, mask_type).to(device)
    assert isinstance(ours, torch.nn.Conv2d)
    ours.load_state_dict(theirs.state_dict())  # theirs -> ours (strict)
    x = make((2, 4, 6, 5), torch.float32, device, "x")
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    ours.weight.data.normal_()
    theirs.load_state_dict(ours.state_dict())  # ours -> theirs
    torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    plain = torch.nn.Conv2d(4, 8, 5, padding=2).to(device)
    ours.load_state_dict(plain.state_dict())  # a checkpoint without mask
    other = InPlaceMaskedConv2d("B" if mask_type == "A" else "A", 4, 8, 5, padding=2).to(device)
    with pytest.raises(RuntimeError, match="mask"):
        ours.load_state_dict(other.state_dict())


def test_modules_match_reference(device):
    modules = [
        (fastgen.nn.MaskedConv2d(3, 6, 3, "A", data_channels=3), masks.masked(3, "A", 3)),
        (fastgen.nn.DownShiftedConv2d(3, 6), masks.down_shifted()),
        (fastgen.nn.DownRightShiftedConv2d(3, 6), masks.down_right_shifted()),
        (fastgen.nn.VerticalStackConv2d(3, 6, 3, "A"), masks.vertical_stack(3, "A")),
        (fastgen.nn.HorizontalStackConv2d(3, 6, 3, "B", data_channels=3), masks.horizontal_stack(3, "B", 3)),
    ]
    x = make((1, 3, 4, 5), torch.float32, device, "x")
    for module, taps in modules:
        module = module.to(device)
        # masked entries are zero from construction: the plain nn.Conv2d weight is the masked one
        assert (module.weight[taps.mask(6, 3, device=device) == 0] == 0).all()
        expected = ref.tap_conv2d(x.double(), module.weight.double(), module.bias.double(), taps)
        assert_close(module(x), expected, torch.float32, type(module).__name__)


def test_autocast(device):
    """Under autocast the convolution runs in the autocast dtype, like F.conv2d, and float32 weights get
    float32 gradients."""
    taps = masks.masked(3, "B")
    x, w, b = conv_inputs(taps, 1, 4, 5, 6, 9, torch.float32, device)
    w.requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        y = fastgen.tap_conv2d(x, w, b, taps)
        expected = F.conv2d(x, w * taps.mask(9, 6, device=device), b, padding=1)
    assert y.dtype == expected.dtype == torch.bfloat16
    assert_close(y, expected.double(), torch.bfloat16)
    (grad_w,) = torch.autograd.grad(y.float().sum(), w)
    assert grad_w.dtype == torch.float32


def test_bf16_interpreter_upcast():
    """How the bf16 path is verified without a GPU: the interpreter's bf16 tl.dot is wrong, so interpreted
    bf16 multiplies its (exactly representable) operands in float32; float16 runs the native-dtype tl.dot in
    the interpreter, the compile check proves the native bf16 kernels build with HGMMA, and the GPU script runs
    these tests on compiled bf16 kernels."""
    assert op._upcast(torch.bfloat16) == fastgen.interpreting()
    assert not op._upcast(torch.float16) and not op._upcast(torch.float32)


def test_launch_space_covers_the_heuristics():
    """Every config of every class the launchers pick is a configuration the compile check builds, with the
    precision (TF32 or exact) of its math, with and without an input activation (INPUT_ACT: one config per
    class)."""
    def launch_key(kernel, dtype_name, constexprs, num_warps, num_stages):
        return (kernel, dtype_name, tuple(sorted((k, str(v)) for k, v in constexprs.items() if k.startswith("BLOCK")
                                                 or k in ("PRECISION", "BACKWARD", "INPUT_ACT", "FOLD", "GATE_KIND"))),
                num_warps,
                num_stages)

    def configs(table, kind, math, layout, shape_class, activation, gated=False):  # what the class's launcher takes
        if activation is None and not gated:
            return table[math, layout][shape_class]
        return op.activation_configs(kind, math, layout, shape_class, activation, gated)

    launched = {launch_key(l.kernel, l.signature[0][1], dict(l.constexprs), l.num_warps, l.num_stages)
                for l in op.kernel_launches()}
    names = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}
    for dtype, tf32, layout, c_in, c_out in itertools.product(op.FLOAT_DTYPES, (False, True), ("nchw", "nhwc"),
                                                                (1, 3, 16, 17, 64, 100, 256), (3, 32, 128, 768)):
        math = op.math_of(dtype, tf32)
        precision = "tf32" if math == "tf32" else "ieee"
        for backward, (n_red, n_out) in ((False, (c_in, c_out)), (True, (c_out, c_in))):
            for (act, activation), (kind, gate) in itertools.product(enumerate(op.INPUT_ACTIVATIONS),
                                                                     enumerate(op.GATE_KINDS)):
                gated = gate is not None
                if gated and backward:  # the gate epilogues are the forward's
                    continue
                if gate == "tanh" and activation is not None:  # tap_conv2d_gated takes no input activation
                    continue
                # gated: n_out is half the weight's output channels
                shape_class = op.gemm_class(n_red, n_out // 2 if gated else n_out, backward)
                for config in configs(op.GEMM_CONFIGS, "gemm", math, layout, shape_class, activation, gated):
                    key = launch_key("tap_conv_gemm_kernel", names[dtype],
                                     dict(config.kwargs, PRECISION=precision, BACKWARD=backward, INPUT_ACT=act,
                                          FOLD=shape_class == "fold", GATE_KIND=kind),
                                     config.num_warps, config.num_stages)
                    assert key in launched, key
        wmath = op._weight_grad_math(dtype, tf32)
        for act, activation in enumerate(op.INPUT_ACTIVATIONS):
            shape_class = op.weight_grad_class(c_in, c_out, wmath)
            for config in configs(op.WEIGHT_GRAD_CONFIGS, "weight_grad", wmath, layout, shape_class, activation):
                key = launch_key("tap_conv_weight_grad_kernel", names[dtype],
                                 dict(config.kwargs, PRECISION=precision, INPUT_ACT=act, FOLD=shape_class == "fold"),
                                 config.num_warps, config.num_stages)
                assert key in launched, key


def _every_config(table):
    return op._unique(c for classes in table.values() for configs in classes.values() for c in configs)


@pytest.mark.parametrize("kind,config", [("gemm", c) for c in _every_config(op.GEMM_CONFIGS)]
                         + [("weight_grad", c) for c in _every_config(op.WEIGHT_GRAD_CONFIGS)],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={n}" for k, n in v.kwargs.items())
                         + f",w{v.num_warps}s{v.num_stages}")
def test_every_config_computes_the_convolution(device, monkeypatch, kind, config):
    """Under the interpreter each class launches its first config only: here every config of every class runs
    (all classes forced to it), forward and all three gradients, channels-last and NCHW, with channel counts
    that leave partial tiles (RGB groups at the centre tap)."""
    check_with_forced_configs(device, monkeypatch, kind, lambda classes: {name: [config] for name in classes},
                              masks.masked(3, "B", 3), 18, 21)


def check_with_forced_configs(device, monkeypatch, kind, force, taps, c_in, c_out):
    """The convolution against the reference (forward and gradients, NCHW and channels-last) with the config
    table of ``kind`` replaced per layout and math by ``force(classes)``."""
    table = op.GEMM_CONFIGS if kind == "gemm" else op.WEIGHT_GRAD_CONFIGS
    forced = {key: force(classes) for key, classes in table.items()}
    monkeypatch.setattr(op, "GEMM_CONFIGS" if kind == "gemm" else "WEIGHT_GRAD_CONFIGS", forced)
    op._launcher.cache_clear()
    op._weight_grad_plan.cache_clear()
    try:
        for channels_last in (False, True):
            x, w, b = conv_inputs(taps, 2, 5, 7, c_in, c_out, torch.float32, device)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            check_against_reference(x, w, b, taps, torch.float32)
    finally:
        monkeypatch.undo()
        op._launcher.cache_clear()
        op._weight_grad_plan.cache_clear()


def _spy_precisions(monkeypatch):
    """Records (kernel kind, dtype, PRECISION) of every GEMM and weight-gradient launch."""
    launched = []
    real = op._launcher

    class Spy:
        def __init__(self, kind, kernel):
            self.kind, self.kernel = kind, kernel

        def __getitem__(self, grid):
            run = self.kernel[grid]

            def call(*args, **kwargs):
                launched.append((self.kind, args[0].dtype, kwargs["PRECISION"]))
                return run(*args, **kwargs)
            return call

    monkeypatch.setattr(op, "_launcher", lambda kind, *rest: Spy(kind, real(kind, *rest)))
    return launched


@pytest.mark.parametrize("tf32", [False, True], ids=["allow_tf32=False", "allow_tf32=True"])
def test_float32_uses_tf32_exactly_when_pytorch_convolutions_do(device, monkeypatch, tf32):
    """float32 multiplies on TF32 tensor cores when torch.backends.cudnn.allow_tf32 (PyTorch's switch for
    convolutions, default True) is on, exactly otherwise; 16-bit and float64 launches never ask for TF32.

    Under the interpreter tl.dot multiplies float32 exactly whatever the precision, so this checks the launched
    PRECISION constexpr and that the values are within the TF32 bound of each value (TF32_BOUND); the compile
    check shows the TF32 variants on HGMMA (sm_90) / HMMA (sm_80); on a GPU the same test checks real TF32."""
    launched = _spy_precisions(monkeypatch)
    with cudnn_tf32(tf32):
        assert op.conv_uses_tf32() == tf32
        for k, mask_type, data_channels, c_in, c_out, channels_last in [(7, "B", 3, 66, 36, True),
                                                                        (3, "A", 1, 18, 9, False)]:
            taps = masks.masked(k, mask_type, data_channels)
            x, w, b = conv_inputs(taps, 1, 5, 6, c_in, c_out, torch.float32, device)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            launched.clear()
            check_against_reference(x, w, b, taps, torch.float32, tf32=tf32)
            assert {kind for kind, _, _ in launched} == {"gemm", "weight_grad"}
            assert {p for _, _, p in launched} == {"tf32" if tf32 else "ieee"}
        for dtype in (torch.float64, torch.float16):
            launched.clear()
            taps = masks.masked(3, "B")
            x, w, b = conv_inputs(taps, 1, 4, 5, 6, 9, dtype, device)
            check_against_reference(x, w, b, taps, dtype)
            assert launched and {p for _, _, p in launched} == {"ieee"}


def test_tf32_switch_is_read_on_every_call(device):
    """The switch can change between calls (no stale cached plan): the next launch follows it."""
    with cudnn_tf32(True):
        assert op.conv_uses_tf32()
        with cudnn_tf32(False):
            assert not op.conv_uses_tf32()
        assert op.conv_uses_tf32()
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: the per-operation precision, and its inheritance
        with cudnn_tf32(True):
            torch.backends.cudnn.conv.fp32_precision = "ieee"
            assert not op.conv_uses_tf32()
            torch.backends.cudnn.conv.fp32_precision = "tf32"
            assert op.conv_uses_tf32()


def test_weight_grad_split():
    """Small batches of few tiles split the pixel reduction; each split reduces several pixel blocks."""
    split, per_split = op.weight_grad_split(64 * 28 * 28, n_tiles=5, block_m=32)
    assert split > 1 and per_split % 32 == 0 and split * per_split >= 64 * 28 * 28
    assert (split - 1) * per_split < 64 * 28 * 28
    assert op.weight_grad_split(100, n_tiles=1000, block_m=32) == (1, 128)


# ---------------------------------------------------------------------------------------------- issue 16: edges
@pytest.mark.parametrize("as_int", [__import__("numpy").int64, __import__("numpy").int32], ids=str)
def test_numpy_integer_arguments_are_ints(as_int, device):
    """NumPy integers are accepted as ints (converted once, so none reaches a Triton launch)."""
    x = make((1, 6, 5, 4), torch.float32, device, "npint x")
    w = make((6, 6, 3, 3), torch.float32, device, "npint w")
    expected = fastgen.masked_conv2d(x, w, None, "B", 3)
    assert torch.equal(fastgen.masked_conv2d(x, w, None, "B", as_int(3)), expected)
    for module in (fastgen.nn.MaskedConv2d(6, 6, as_int(3), "A", as_int(3)),
                   fastgen.nn.HorizontalStackConv2d(6, 6, as_int(3), "B", as_int(3)),
                   fastgen.nn.VerticalStackConv2d(6, 6, as_int(3)),
                   fastgen.nn.DownShiftedConv2d(6, 6, (as_int(2), as_int(3))),
                   fastgen.nn.DownRightShiftedConv2d(6, 6, as_int(2))):
        module = module.to(device)
        assert all(type(v) is int for v in (*module.taps.kernel_size, *module.taps.padding, module.taps.n_taps,
                                             module.taps.groups))
        assert module(x).shape == (1, 6, 5, 4)
    taps = masks.TapSet((as_int(3), as_int(3)), (as_int(1), as_int(1)), as_int(5))
    assert taps == masks.masked(3, "B") and type(taps.n_taps) is int


def test_float_integer_arguments_raise_named_errors(device):
    """3.0 is not an int: a TypeError naming the argument (as torch's int arguments), never a Triton crash."""
    x = torch.randn(1, 6, 4, 4, device=device)
    w = torch.randn(6, 6, 3, 3, device=device)
    cases = [
        (lambda: fastgen.masked_conv2d(x, w, None, "B", 3.0), "data_channels"),
        (lambda: fastgen.nn.MaskedConv2d(6, 6, 3, "B", 3.0), "data_channels"),
        (lambda: fastgen.nn.MaskedConv2d(6, 6, 3.0), "kernel_size"),
        (lambda: fastgen.nn.MaskedConv2d(6, 6, (3.0, 3.0)), "kernel_size"),
        (lambda: fastgen.nn.VerticalStackConv2d(6, 6, 3.0), "kernel_size"),
        (lambda: fastgen.nn.DownShiftedConv2d(6, 6, 2.0), "kernel_size"),
        (lambda: masks.TapSet((3, 3), (1, 1), 4.0), "n_taps"),
    ]
    for call, name in cases:
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            call()


@pytest.mark.parametrize("taps", [masks.masked(5, "A", 3), masks.masked(3, "B", 1), masks.horizontal_stack(5, "A", 3),
                                  masks.vertical_stack(3, "A")], ids=lambda t: t.diagram().replace("\n", "/"))
def test_nan_in_masked_taps_is_ignored_by_kernels_and_reference(taps, device):
    """nan and inf written into the masked-out taps of the dense weight change nothing on either backend (the
    kernels never read those taps; the reference takes torch.where(mask, weight, 0), not weight * mask), and
    both give the output and gradients of the clean weight; the masked taps' gradient stays exactly 0."""
    x, w, b = conv_inputs(taps, 2, 5, 6, 6, 6, torch.float64, device)
    dead = taps.mask(w.shape[0], w.shape[1], torch.float64, device) == 0
    poisoned = w.clone()
    poisoned[dead] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64,
                                  device=device).repeat(int(dead.sum()))[:int(dead.sum())]
    grad_y = make((2, 6, 5, 6), torch.float64, device, "nan taps grad_y")
    results = {}
    for backend in ("triton", "reference"):
        for name, weight in (("clean", w), ("poisoned", poisoned)):
            leaves = [t.detach().clone().requires_grad_() for t in (x, weight, b)]
            with fastgen.use_backend(backend):
                y = fastgen.tap_conv2d(*leaves, taps)
            results[backend, name] = (y, *torch.autograd.grad(y, leaves, grad_y))
    for backend in ("triton", "reference"):
        for clean, poisoned_out in zip(results[backend, "clean"], results[backend, "poisoned"]):
            assert torch.equal(clean, poisoned_out), backend
        assert (results[backend, "poisoned"][2][dead] == 0).all()
    for kernel_out, reference_out in zip(results["triton", "poisoned"], results["reference", "poisoned"]):
        assert_close(kernel_out, reference_out, torch.float64)
    w3 = make((6, 6, 3, 3), torch.float64, device, "nan taps w3")
    w3_poisoned = torch.where(masks.masked(3, "B").mask(6, 6, torch.bool, device), w3, float("nan"))
    for backend in ("triton", "reference"):  # and the masked_conv2d entry point
        with fastgen.use_backend(backend):
            assert torch.equal(fastgen.masked_conv2d(x, w3_poisoned), fastgen.masked_conv2d(x, w3)), backend


# ---------------------------------------------------------------------------------------------- custom ops
# (taps, bias, channels-last x, channels-last weight, x requires grad, batch)
OPCHECK_CASES = {
    "mask A RGB": (masks.masked(3, "A", 3), True, False, False, True, 1),
    "mask B channels-last, no bias": (masks.masked(3, "B"), False, True, False, True, 1),
    "down-shifted channels-last weight, weight only": (masks.down_shifted(), True, False, True, False, 2),
    "horizontal B RGB channels-last": (masks.horizontal_stack(3, "B", 3), True, True, False, True, 1),
    "1x1 mask A: no live tap": (masks.masked(1, "A"), True, False, False, True, 1),
    "empty batch": (masks.masked(3, "B", 3), True, True, False, True, 0),
    "mask B RGB interleaved": (masks.masked(3, "B", 3, "interleaved"), True, False, False, True, 1),
}


def _taps_args(taps):
    return list(taps.kernel_size), list(taps.padding), taps.n_taps, taps.groups, taps.strict, taps.interleaved


@pytest.mark.parametrize("case,input_activation", [(c, None) for c in OPCHECK_CASES]
                         + [(c, "relu") for c in ("mask A RGB", "horizontal B RGB channels-last",
                                                  "1x1 mask A: no live tap")]
                         + [(c, "concat_elu") for c in ("mask B channels-last, no bias",
                                                        "down-shifted channels-last weight, weight only",
                                                        "1x1 mask A: no live tap")],
                         ids=str)
def test_custom_ops_pass_opcheck(case, input_activation, device):
    from library_checks import check_opcheck

    taps, bias, x_last, w_last, x_grad, batch = OPCHECK_CASES[case]
    x, w, b = conv_inputs(taps, batch, 3, 4, 3, 6, torch.float32, device, bias)
    if input_activation == "concat_elu":  # 2 * 3 input channels: elu(x)'s and elu(-x)'s
        w = torch.cat([w, -0.5 * w], 1)
    if x_last:
        x = x.to(memory_format=torch.channels_last)
    if w_last:
        w = w.to(memory_format=torch.channels_last)
    x.requires_grad_(x_grad)
    w.requires_grad_()
    b = None if b is None else b.requires_grad_()
    check_opcheck(torch.ops.fastgen.tap_conv2d.default, x, w, b, *_taps_args(taps), input_activation)
    # the backward op on its own, with the forward's packed weight
    y, packed = torch.ops.fastgen.tap_conv2d(x.detach(), w.detach(), None if b is None else b.detach(),
                                             *_taps_args(taps), input_activation)
    grad_y = make(y.shape, torch.float32, device, "grad_y").to(memory_format=torch.channels_last)
    check_opcheck(torch.ops.fastgen.tap_conv2d_backward.default, grad_y, x.detach(), packed, list(w.shape), w_last,
                  *_taps_args(taps), bias, x_grad, True, input_activation)


def test_compiles_without_graph_breaks(device):
    from library_checks import check_fullgraph

    taps = masks.masked(3, "A", 3)
    x, w, b = conv_inputs(taps, 1, 3, 4, 3, 6, torch.float32, device)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w2 = make((6, 6, 3, 3), torch.float32, device, "w2", scale=0.2).requires_grad_()

    def convs(x, w, b, w2):
        h = fastgen.masked_conv2d(x, w, b, "A", data_channels=3)
        return h, fastgen.tap_conv2d(torch.relu(h), w2, None, masks.masked(3, "B", 3))

    check_fullgraph(convs, x, w.requires_grad_(), b.requires_grad_(), w2)


def _check_module_compiles(model, x, dtype=torch.float32):
    """The module's output, input gradient and parameter gradients, compiled with fullgraph=True and eager."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (model, compiled):
        leaf = x.detach().clone().requires_grad_()
        y = fn(leaf)
        grads = torch.autograd.grad(y.float().sum(), [leaf, *model.parameters()])
        results.append((y, grads))
    (y, grads), (y_compiled, grads_compiled) = results
    assert y_compiled.dtype == y.dtype and y_compiled.stride() == y.stride()
    for got, expected in zip((y_compiled, *grads_compiled), (y, *grads), strict=True):
        assert got.dtype == expected.dtype and got.stride() == expected.stride()
        assert_close(got, expected.double(), dtype)
    return y_compiled, grads_compiled


def test_modules_compile_without_graph_breaks(device):
    """A stack of the fastgen.nn convolutions, channels-last activations and weights: the compiled forward keeps
    channels-last and gives the eager values and gradients."""
    model = torch.nn.Sequential(
        fastgen.nn.MaskedConv2d(3, 6, 3, "A", data_channels=3), torch.nn.ReLU(),
        fastgen.nn.MaskedConv2d(6, 6, 1, "B", data_channels=3), fastgen.nn.DownShiftedConv2d(6, 3),
        fastgen.nn.HorizontalStackConv2d(3, 3, 3, "B", bias=False),
    ).to(device).to(memory_format=torch.channels_last)
    x = make((1, 3, 3, 4), torch.float32, device, "x").to(memory_format=torch.channels_last)
    y, _ = _check_module_compiles(model, x)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_autocast_compiles_without_graph_breaks(device):
    """Under autocast the compiled module convolves in the autocast dtype, as eager (and F.conv2d)."""
    model = fastgen.nn.MaskedConv2d(3, 6, 3, "B", data_channels=3).to(device)
    x = make((1, 3, 3, 4), torch.float32, device, "x")
    with torch.autocast(device, dtype=torch.bfloat16):
        y, grads = _check_module_compiles(model, x, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and grads[1].dtype == torch.float32


def test_reference_backend_compiles_without_graph_breaks(device):
    from library_checks import check_fullgraph

    x, w, b = conv_inputs(masks.masked(3, "A", 3), 1, 3, 4, 3, 6, torch.float32, device)
    with fastgen.use_backend("reference"):
        check_fullgraph(lambda x, w, b: fastgen.masked_conv2d(x, w, b, "A", 3), x.requires_grad_(), w.requires_grad_(),
                        b)


# ---------------------------------------------------------------------------------------------- issue 13: relu input
def relu_inputs(x):
    """x with exact zeros (+0 and -0) and negatives: where relu and its gradient have their edge cases."""
    x = x.detach().clone()
    flat = x.view(-1) if x.is_contiguous() else x.reshape(-1)
    flat[::5] = 0.0
    flat[1::7] = -0.0
    if not x.is_contiguous():
        x.copy_(flat.view(x.shape))
    return x


RELU_CASES = [(3, "B", 3, 18, 21), (5, "A", 1, 6, 9), (1, "B", 3, 12, 6)]  # (k, mask, data channels, C_in, C_out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k,mask_type,data_channels,c_in,c_out", RELU_CASES, ids=str)
def test_relu_input(device, dtype, k, mask_type, data_channels, c_in, c_out):
    """tap_conv2d(x, ..., input_activation="relu") is the convolution of F.relu(x): values and all three gradients
    (x's is F.relu's: 0 where x <= 0) against the float64 reference of F.relu then conv."""
    taps = masks.masked(k, mask_type, data_channels)
    x, w, b = conv_inputs(taps, 2, 5, 6, c_in, c_out, dtype, device)
    x = relu_inputs(x)
    assert (x == 0).any() and (x < 0).any()
    y, grads = check_against_reference(x, w, b, taps, dtype, input_activation="relu")
    assert (grads[0][x.detach() <= 0] == 0).all()  # exactly zero, not just small
    # masked_conv2d forwards the flag; without it the result is different (the relu did something)
    dense = fastgen.masked_conv2d(x.detach(), w.detach(), b.detach(), mask_type, data_channels, input_activation="relu")
    assert torch.equal(dense, y.detach())
    assert not torch.equal(fastgen.tap_conv2d(x.detach(), w.detach(), b.detach(), taps), dense)


@pytest.mark.parametrize("taps", [masks.masked(3, "A", 3), masks.down_shifted(), masks.horizontal_stack(3, "B", 3)],
                         ids=lambda t: t.diagram().replace("\n", "/"))
def test_relu_input_gradcheck_float64(device, taps):
    x, w, b = conv_inputs(taps, 2, 3, 4, 3, 6, torch.float64, device)
    x = torch.where(x.abs() < 1e-3, 0.5, x)  # away from relu's kink, where finite differences are wrong
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: fastgen.tap_conv2d(x, w, b, taps, input_activation="relu"), inputs,
                                    fast_mode=True)


@pytest.mark.parametrize("layout", ["channels_last", "channels_last_bf16", "sliced"])
def test_relu_input_strided(device, layout):
    """The backward's gate reads x with its own strides: channels-last x, and a sliced view of x."""
    taps = masks.masked(3, "B", 3)
    dtype = torch.bfloat16 if layout.endswith("bf16") else torch.float32
    x, w, b = conv_inputs(taps, 2, 5, 6, 6, 9, dtype, device)
    x = relu_inputs(x)
    if layout.startswith("channels_last"):
        x = x.to(memory_format=torch.channels_last)
    else:
        x = torch.cat([x, -x], dim=3)[..., ::2]  # every other column of a wider tensor
    y, grads = check_against_reference(x, w, b, taps, dtype, input_activation="relu")
    if layout.startswith("channels_last"):
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_relu_input_non_finite(device):
    """nan and inf in x: relu keeps nan (it reaches the outputs whose live taps read it, not the others), maps
    -inf to 0 and keeps inf; x's gradient is F.relu's: passed where x is nan or inf, 0 at -inf. nan and inf in
    the masked-out weight taps change nothing, with the relu input too."""
    taps = masks.masked(3, "B", 3)
    x, w, b = conv_inputs(taps, 2, 5, 6, 6, 6, torch.float64, device)
    x = relu_inputs(x)
    x[0, 1, 2, 3], x[1, 4, 1, 1], x[1, 0, 3, 4] = float("nan"), float("inf"), -float("inf")
    dead = taps.mask(6, 6, torch.float64, device) == 0
    poisoned = w.clone()
    poisoned[dead] = float("nan")
    grad_y = make((2, 6, 5, 6), torch.float64, device, "relu non-finite grad_y")
    leaves = [t.detach().clone().requires_grad_() for t in (x, poisoned, b)]
    y = fastgen.tap_conv2d(*leaves, taps, input_activation="relu")
    grad_x, grad_w, grad_b = torch.autograd.grad(y, leaves, grad_y)
    # which outputs read a non-finite relu(x) through a live tap, any channel (the centre tap's masked channel
    # pairs are zeros in the packed weight, and 0 * nan is nan): the convolution of the indicator with ones
    spatial = masks.TapSet(taps.kernel_size, taps.padding, taps.n_taps)
    ones = torch.ones(6, 6, *taps.kernel_size, dtype=torch.float64, device=device)
    nan_reach = ref.tap_conv2d(torch.isnan(x).double(), ones, None, spatial) > 0
    inf_reach = ref.tap_conv2d((x == float("inf")).double(), ones, None, spatial) > 0
    assert nan_reach.any() and inf_reach.any() and (~(nan_reach | inf_reach)).any()
    assert torch.isnan(y)[nan_reach].all() and not torch.isfinite(y)[inf_reach].any()
    # elsewhere: finite, the finite reference's (the non-finite pixels are not read there through a live tap;
    # the reference's own output is nan there too, from 0 * nan at the dead taps)
    finite_x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    expected = ref.tap_conv2d(finite_x, w, b, taps, input_activation="relu")
    keep = ~(nan_reach | inf_reach)
    assert torch.isfinite(y[keep]).all()
    assert_close(y.detach()[keep], expected[keep], torch.float64)
    # x's gradient: relu's backward on the finite input-gradient of the convolution (no nan in w's live taps)
    x64 = x.detach().clone().requires_grad_()
    (expected_grad_x,) = torch.autograd.grad(ref.tap_conv2d(x64, w, b, taps, input_activation="relu"), x64, grad_y)
    assert torch.isfinite(expected_grad_x).all() and torch.isfinite(grad_x).all()
    assert_close(grad_x, expected_grad_x, torch.float64)
    assert grad_x[0, 1, 2, 3] != 0 and grad_x[1, 4, 1, 1] != 0  # nan and inf pass the gradient
    assert grad_x[1, 0, 3, 4] == 0  # -inf: relu gives 0
    # the weight and bias gradients: the reference's, non-finite where a live tap read a nan / inf
    leaves_ref = [t.detach().clone().requires_grad_() for t in (x, poisoned, b)]
    with fastgen.use_backend("reference"):
        y_ref = fastgen.tap_conv2d(*leaves_ref, taps, input_activation="relu")
    grads_ref = torch.autograd.grad(y_ref, leaves_ref, grad_y)
    for got, want in zip((grad_x, grad_w, grad_b), grads_ref):
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        finite = torch.isfinite(want)
        assert_close(got[finite], want[finite], torch.float64)
    assert (grad_w[dead] == 0).all()


def test_relu_input_without_work(device):
    """No live tap (1x1 mask A) or an empty batch: the output is the bias and x's gradient zeros, relu or not."""
    for taps, batch in ((masks.masked(1, "A"), 2), (masks.masked(3, "B", 3), 0)):
        x, w, b = conv_inputs(taps, batch, 3, 4, 3, 6, torch.float32, device)
        leaves = [t.requires_grad_() for t in (x, w, b)]
        y = fastgen.tap_conv2d(*leaves, taps, input_activation="relu")
        torch.testing.assert_close(y, b.detach().view(1, 6, 1, 1).expand(y.shape))
        grad_x, grad_w, grad_b = torch.autograd.grad(y.sum(), leaves)
        assert grad_x.shape == x.shape and (grad_x == 0).all() and (grad_w == 0).all()
        torch.testing.assert_close(grad_b, torch.full((6,), float(y[:, 0].numel()), device=device))


def test_relu_input_module_and_compile(device):
    """TapConv2d.forward(x, input_activation="relu") is conv(relu(x)); compiled with fullgraph=True (the custom ops),
    it gives the eager values and gradients."""
    from library_checks import check_fullgraph

    conv = fastgen.nn.MaskedConv2d(6, 6, 3, "B", data_channels=3).to(device)
    x = relu_inputs(make((1, 6, 3, 4), torch.float32, device, "relu module x")).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(conv(x, input_activation="relu"), conv(F.relu(x)))
        with fastgen.use_backend("reference"):
            assert_close(conv(x, input_activation="relu"), conv(F.relu(x)).double(), torch.float32)
    check_fullgraph(lambda x, w, b: fastgen.masked_conv2d(x, w, b, "B", 3, input_activation="relu"),
                    x.requires_grad_(), conv.weight, conv.bias)


# ---------------------------------------------------------------------------------------------- issue 12: small-C_in fold
# (taps, C_in, C_out, (batch, H, W)): the forward and the weight gradient of C_in < 16 reduce over k = tap * C_in + c
# (FOLD). C_out 70 > 64 leaves a partial second channel tile; 2x16x17 pixels split the weight gradient's reduction.
FOLD_CASES = {
    "7x7 A rgb C_in=3": (masks.masked(7, "A", 3), 3, 12, (2, 16, 17)),
    "7x7 A C_in=1": (masks.masked(7, "A", 1), 1, 70, (1, 6, 5)),
    "5x5 A C_in=3": (masks.masked(5, "A", 1), 3, 9, (2, 5, 6)),
    "3x3 B rgb C_in=3": (masks.masked(3, "B", 3), 3, 21, (1, 4, 7)),
    "down_shifted 2x3 C_in=1": (masks.down_shifted((2, 3)), 1, 9, (2, 5, 4)),
}


@pytest.mark.parametrize("layout,input_activation", [("nchw", None), ("channels_last", None), ("nchw", "relu"),
                                                     ("channels_last", "relu")], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", FOLD_CASES)
def test_small_c_in_fold(device, case, dtype, layout, input_activation):
    """The FOLD variants (forward, weight and bias gradients) against the float64 reference; x's gradient
    (the unfolded input-gradient kernel) too."""
    taps, c_in, c_out, (batch, height, width) = FOLD_CASES[case]
    x, w, b = conv_inputs(taps, batch, height, width, c_in, c_out, dtype, device)
    if input_activation:
        x = relu_inputs(x)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    check_against_reference(x, w, b, taps, dtype, input_activation=input_activation)


@pytest.mark.parametrize("input_activation", [None, "relu"])
def test_small_c_in_fold_gradcheck_float64(device, input_activation):
    taps = masks.masked(5, "A", 3)
    x, w, b = conv_inputs(taps, 2, 3, 4, 3, 6, torch.float64, device)
    x = torch.where(x.abs() < 1e-3, 0.5, x)  # away from relu's kink
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: fastgen.tap_conv2d(x, w, b, taps,
                                                                       input_activation=input_activation),
                                    inputs, fast_mode=True)


def test_small_c_in_launches_the_fold_variant(device, monkeypatch):
    """Fewer than 16 input channels: the forward and the weight gradient launch FOLD (their classes' "fold"
    configs), the input gradient does not; 16 input channels launch no FOLD."""
    launched = []
    real = op._launcher

    class Spy:
        def __init__(self, kind, kernel):
            self.kind, self.kernel = kind, kernel

        def __getitem__(self, grid):
            run = self.kernel[grid]

            def call(*args, **kwargs):
                launched.append((self.kind, kwargs["BACKWARD"] if self.kind == "gemm" else None, kwargs["FOLD"]))
                return run(*args, **kwargs)
            return call

    monkeypatch.setattr(op, "_launcher", lambda kind, *rest: Spy(kind, real(kind, *rest)))
    for c_in, fold in ((1, True), (3, True), (15, True), (16, False)):
        assert (op.gemm_class(c_in, 64) == "fold") == fold and op.gemm_class(64, c_in, backward=True) != "fold"
        for math in ("mma", "tf32", "fma32", "fma64"):
            assert (op.weight_grad_class(c_in, 64, math) == "fold") == fold
        taps = masks.masked(3, "A")
        x, w, b = conv_inputs(taps, 1, 3, 4, c_in, 17, torch.float32, device)
        launched.clear()
        check_against_reference(x, w, b, taps, torch.float32)
        assert sorted(launched, key=str) == sorted([("gemm", False, fold), ("gemm", True, False),
                                                    ("weight_grad", None, fold)], key=str)


def _fold_configs(table):
    return op._unique(c for classes in table.values() for c in classes.get("fold", []))


@pytest.mark.parametrize("kind,config", [("gemm", c) for c in _fold_configs(op.GEMM_CONFIGS)]
                         + [("weight_grad", c) for c in _fold_configs(op.WEIGHT_GRAD_CONFIGS)],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={n}" for k, n in v.kwargs.items())
                         + f",w{v.num_warps}s{v.num_stages}")
def test_every_fold_config_computes_the_convolution(device, monkeypatch, kind, config):
    """Each fold config (the interpreter runs the first of each list only), NCHW and channels-last, with k
    and channel tiles left partial (7x7 mask A, RGB: 24 taps x 3 channels)."""
    check_with_forced_configs(device, monkeypatch, kind, lambda classes: dict(classes, fold=[config]),
                              masks.masked(7, "A", 3), 3, 69)


# ---------------------------------------------------------------------------------------------- issue 12: weight-grad paths
# The weight gradient reaches the dense [C_out, C_in, kh, kw] gradient without fp32 partial sums where it can: one
# pixel range stores straight from the kernel ("direct"), several add with fp32/fp64 atomics ("atomic"; 16-bit:
# into a zeroed fp32 sum that the unpack kernel casts, "atomic+unpack"), and under
# torch.use_deterministic_algorithms per-range partial sums are added by the unpack kernel ("partial+unpack").
# The cases: contiguous and interleaved RGB groups at the centre tap (masked pairs), mask A and B, dead taps,
# the FOLD class (C_in < 16) and the others, NCHW and channels-last, partial channel tiles.
WEIGHT_GRAD_CASES = {  # (taps, C_in, C_out, (batch, H, W), channels-last)
    "3x3 B rgb contiguous 18->21": (masks.masked(3, "B", 3), 18, 21, (2, 5, 7), False),
    "5x5 A rgb interleaved 17->20 channels-last": (masks.masked(5, "A", 3, "interleaved"), 17, 20, (2, 6, 5), True),
    "7x7 A rgb C_in=3 (fold) channels-last": (masks.masked(7, "A", 3), 3, 12, (2, 6, 7), True),
    "3x3 B rgb interleaved C_in=4 (fold)": (masks.masked(3, "B", 3, "interleaved"), 4, 7, (2, 5, 6), False),
    "down_shifted 2x3 1->9 (fold)": (masks.down_shifted((2, 3)), 1, 9, (2, 5, 4), False),
}
WEIGHT_GRAD_PATHS = ("direct", "atomic", "deterministic")


@contextlib.contextmanager
def weight_grad_path(monkeypatch, path):
    """Forces the weight gradient's pixel split (1 range for "direct", one range per pixel block otherwise),
    the deterministic mode for "deterministic", and yields the list of paths the launches took. Every weight
    gradient buffer handed to the op is filled with nan first, so an entry the kernels leave unwritten fails."""
    taken = []
    real_path, real_weight_grad = op.weight_grad_path, op.weight_grad
    monkeypatch.setattr(op, "MIN_STEPS_PER_SPLIT", 10 ** 9 if path == "direct" else 1)
    monkeypatch.setattr(op, "MIN_PROGRAMS", 1 if path == "direct" else 10 ** 6)
    monkeypatch.setattr(op, "weight_grad_path", lambda *args: taken.append(real_path(*args)) or taken[-1])
    monkeypatch.setattr(op, "weight_grad", lambda x, grad_y, taps, grad_weight, *rest: real_weight_grad(
        x, grad_y, taps, grad_weight.fill_(float("nan")), *rest))
    op._weight_grad_plan.cache_clear()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(path == "deterministic")
    try:
        yield taken
    finally:
        torch.use_deterministic_algorithms(deterministic)
        monkeypatch.undo()
        op._weight_grad_plan.cache_clear()


def _expected_paths(path, dtype):
    if path == "direct":
        return {"direct"}
    if path == "deterministic":
        return {"partial+unpack"}
    return {"atomic" if dtype in (torch.float32, torch.float64) else "atomic+unpack"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", WEIGHT_GRAD_PATHS)
@pytest.mark.parametrize("case", WEIGHT_GRAD_CASES)
def test_weight_grad_paths(device, monkeypatch, case, path, dtype):
    """Each path's weight and bias gradients (and the rest of the convolution) against the float64 reference
    with the file's tolerances; dead taps and masked centre pairs exactly 0 (check_against_reference) in a
    gradient buffer that held nan before the backward."""
    taps, c_in, c_out, (batch, height, width), channels_last = WEIGHT_GRAD_CASES[case]
    x, w, b = conv_inputs(taps, batch, height, width, c_in, c_out, dtype, device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with weight_grad_path(monkeypatch, path) as taken:
        check_against_reference(x, w, b, taps, dtype)
    assert set(taken) == _expected_paths(path, dtype)


@pytest.mark.parametrize("path", WEIGHT_GRAD_PATHS)
def test_weight_grad_paths_split(monkeypatch, path):
    """The forced split: one range for "direct", else several (one per pixel block, the last one partial)."""
    with weight_grad_path(monkeypatch, path):
        shape_class, split, per_split = op._weight_grad_plan(2 * 5 * 7, 18, 21, 5, "fma32", "nchw")
    assert shape_class == "32x32" and split * per_split >= 70
    assert split == 1 if path == "direct" else (split > 1 and (split - 1) * per_split < 70)


@pytest.mark.parametrize("path", WEIGHT_GRAD_PATHS)
@pytest.mark.parametrize("case", ["3x3 B rgb contiguous 18->21", "3x3 B rgb interleaved C_in=4 (fold)"])
def test_weight_grad_paths_gradcheck_float64(device, monkeypatch, case, path):
    """gradcheck of every path, FOLD and not; atomics add in a varying order on a GPU: nondet_tol covers the
    last bits of float64 sums there (the interpreter runs programs in order)."""
    taps, c_in, c_out, _, _ = WEIGHT_GRAD_CASES[case]
    x, w, b = conv_inputs(taps, 2, 3, 4, c_in, c_out, torch.float64, device)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    with weight_grad_path(monkeypatch, path) as taken:
        assert torch.autograd.gradcheck(lambda x, w, b: fastgen.tap_conv2d(x, w, b, taps), inputs, fast_mode=True,
                                        nondet_tol=1e-12 if path == "atomic" else 0.0)
    assert set(taken) == _expected_paths(path, torch.float64)


@pytest.mark.parametrize("path", WEIGHT_GRAD_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_weight_grad_path_launches(device, monkeypatch, path, dtype):
    """Launches of one weight (and bias) gradient, counted as the benchmarks count them (every Triton launch
    and every ATen op that starts a kernel on a GPU): direct 1 (no partial sums, no unpack); atomic 3 (zero
    fills of the weight and bias gradients, the kernel), 16-bit 3 (one zero fill of the fp32 sums, the kernel,
    the unpack); deterministic 2 (the kernel, the unpack). Without a bias the float32 atomic path takes 2."""
    from fastgen.benchmarks.harness import count_launches

    taps = masks.masked(3, "B", 3)
    x, _, _ = conv_inputs(taps, 2, 5, 7, 18, 21, dtype, device)
    grad_y = make((2, 21, 5, 7), dtype, device, "grad_y")
    expected = {"direct": 1, "deterministic": 2, "atomic": 3}[path]
    weight_grad = op.weight_grad  # not the test's nan-filling wrapper
    with weight_grad_path(monkeypatch, path):
        for has_bias in (True, False):
            grad_weight = torch.empty((21, 18, 3, 3), dtype=dtype, device=device)
            launches = count_launches(lambda: weight_grad(x, grad_y, taps, grad_weight, has_bias))[0]
            fewer = path == "atomic" and dtype == torch.float32 and not has_bias  # no bias gradient to zero
            assert launches == expected - fewer, (has_bias, launches)


def test_weight_grad_empty_inputs(device, monkeypatch):
    """Without pixels (batch 0) or without a live tap the weight gradient is 0 and the bias gradient the sum of
    grad_y (here 0) on every path; no kernel runs."""
    for path in WEIGHT_GRAD_PATHS:
        for taps, batch in ((masks.masked(3, "B", 3), 0), (masks.masked(1, "A"), 2)):
            k = taps.kernel_size[0]
            x = torch.zeros((batch, 6, 4, 5), device=device, requires_grad=True)
            w = torch.randn((9, 6, k, k), device=device, requires_grad=True)
            b = torch.randn(9, device=device, requires_grad=True)
            with weight_grad_path(monkeypatch, path) as taken:
                y = fastgen.tap_conv2d(x, w, b, taps)
                grad_w, grad_b = torch.autograd.grad(y, (w, b), torch.ones_like(y))
            assert not taken and (grad_w == 0).all() and grad_w.shape == w.shape
            assert_close(grad_b, torch.full((9,), float(batch * 20), dtype=torch.float64), torch.float32)


def test_weight_grad_path_choice():
    """One range: direct; several: atomics whose gradient dtype is the accumulator's (float32, float64), fp32
    sums then the unpack for 16-bit; partial sums under torch.use_deterministic_algorithms."""
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        assert op.weight_grad_path(1, dtype) == "direct"
        assert op.weight_grad_path(4, dtype) == ("atomic" if dtype.itemsize > 2 else "atomic+unpack")
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert op.weight_grad_path(1, torch.float32) == "direct"
        assert op.weight_grad_path(4, torch.float32) == op.weight_grad_path(4, torch.bfloat16) == "partial+unpack"
    finally:
        torch.use_deterministic_algorithms(deterministic)


def test_weight_grad_tuning_resets_the_atomic_targets(monkeypatch):
    """On a GPU a class with several configs is tuned by running each on the real arguments: the atomic paths add
    into GRAD_W/GRAD_B, so the tuned launcher zeroes them before each timed run and after the last one
    (triton.autotune's reset_to_zero); the GEMM launchers, which only store, reset nothing."""
    monkeypatch.setattr(op, "interpreting", lambda: False)  # the tuned launchers (the interpreter takes one config)
    op._launcher.cache_clear()
    try:
        kernel = op._launcher("weight_grad", "mma", "nhwc", "wide")
        assert len(kernel._runner.configs) == len(op.WEIGHT_GRAD_CONFIGS["mma", "nhwc"]["wide"]) > 1
        assert kernel._runner.reset_to_zero == ["GRAD_W", "GRAD_B"]
        assert op._launcher("gemm", "mma", "nhwc", "wide")._runner.reset_to_zero == []
        # relu_input launches one config: straight through Triton's JIT, nothing to tune
        assert op._launcher("weight_grad", "mma", "nhwc", "wide", True)._runner is \
            op.kernels.tap_conv_weight_grad_kernel
    finally:
        monkeypatch.undo()
        op._launcher.cache_clear()


def test_weight_grad_targets_are_compiled():
    """The compile check builds each weight-gradient config for every target dtype it is launched with: the
    gradient's dtype (direct store; float32/float64 atomics and partial sums too) and, for 16-bit inputs, the fp32
    sums of the split paths; the target's strides are never specialized (one variant per target dtype)."""
    targets = {}
    for launch in op.kernel_launches():
        if launch.kernel == "tap_conv_weight_grad_kernel":
            signature = dict(launch.signature)
            key = (signature["X"], launch.constexprs, launch.num_warps, launch.num_stages)
            targets.setdefault(key, set()).add((signature["GRAD_W"], signature["GRAD_B"]))
            assert all(signature[name] == "i32" for name in op.kernels._WEIGHT_GRAD_TARGET_ARGS)
            assert not set(launch.divisible) & set(op.kernels._WEIGHT_GRAD_TARGET_ARGS)
    assert targets
    for (x, *_), found in targets.items():
        expected = {(x, x)} | ({("*fp32", "*fp32")} if x in ("*fp16", "*bf16") else set())
        assert found == expected, (x, found)


# ------------------------------------------------------------------------------------------ issue 13: concat_elu input
def concat_elu(x):
    return F.elu(torch.cat([x, -x], 1))


def concat_elu_inputs(taps, batch, height, width, c_x, c_out, dtype, device, bias=True):
    """x [B, c_x, H, W] with exact zeros (+0 and -0: elu's joint), and a weight of 2 * c_x input channels."""
    x, w, b = conv_inputs(taps, batch, height, width, 2 * c_x, c_out, dtype, device, bias)
    return relu_inputs(x[:, :c_x]).contiguous(), w, b


# (taps, C_x, C_out, (batch, H, W)): C_x < 16 runs the FOLD forward, C_x >= 16 the (tap, channel block) loop;
# C_x = 20 leaves partial channel blocks, and the weight gradient's 2 C_x rows cross from x's to -x's channels
# inside a tile (BLOCK_C 32 on FMA units, 64 on tensor cores: 2 * 40 = 80).
CONCAT_ELU_CASES = {
    "down_shifted 2x3 C_x=3 (fold)": (masks.down_shifted((2, 3)), 3, 9, (2, 5, 6)),
    "down_right_shifted 2x2 C_x=20": (masks.down_right_shifted((2, 2)), 20, 21, (2, 4, 5)),
    "down_shifted 2x3 C_x=40": (masks.down_shifted((2, 3)), 40, 17, (1, 3, 4)),
    "1x1 C_x=16": (masks.masked(1, "B"), 16, 70, (2, 3, 3)),
    "3x3 mask A C_x=5 (fold)": (masks.masked(3, "A"), 5, 6, (1, 4, 7)),
}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CONCAT_ELU_CASES)
def test_concat_elu_input(device, case, dtype, layout):
    """tap_conv2d(x, w, ..., input_activation="concat_elu") is F.conv2d of the padded F.elu(cat([x, -x], 1))
    with the masked weight: the output and the gradients of x, weight and bias against the float64 reference,
    NCHW and channels-last, on both GEMM loops (FOLD and channel blocks)."""
    taps, c_x, c_out, (batch, height, width) = CONCAT_ELU_CASES[case]
    x, w, b = concat_elu_inputs(taps, batch, height, width, c_x, c_out, dtype, device)
    assert (x == 0).any() and (x < 0).any() and (x > 0).any()
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    y, grads = check_against_reference(x, w, b, taps, dtype, input_activation="concat_elu")
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
    if dtype == torch.float64:  # the reference is F.conv2d of the padded concat_elu(x), written out
        left, right, top, bottom = taps.pads()
        expected = F.conv2d(F.pad(concat_elu(x.detach()), (left, right, top, bottom)),
                            w.detach() * taps.mask(c_out, 2 * c_x, dtype, device), b.detach())
        assert_close(y.detach(), expected, dtype, "F.conv2d of concat_elu")


def test_concat_elu_input_tf32(device):
    """float32 on TF32 tensor cores (the GPU; exact under the interpreter): within the TF32 bound."""
    taps, c_x, c_out, (batch, height, width) = CONCAT_ELU_CASES["down_right_shifted 2x2 C_x=20"]
    x, w, b = concat_elu_inputs(taps, batch, height, width, c_x, c_out, torch.float32, device)
    with cudnn_tf32(True):
        check_against_reference(x, w, b, taps, torch.float32, tf32=True, input_activation="concat_elu")


@pytest.mark.parametrize("case", ["down_shifted 2x3 C_x=3 (fold)", "down_right_shifted 2x2 C_x=20", "1x1 C_x=16"])
def test_concat_elu_input_gradcheck_float64(device, case):
    taps = CONCAT_ELU_CASES[case][0]
    c_x = CONCAT_ELU_CASES[case][1]
    x, w, b = concat_elu_inputs(taps, 2, 3, 4, c_x, 5, torch.float64, device)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))  # elu is C1 at 0 (alpha 1): zeros are fine here
    assert torch.autograd.gradcheck(lambda x, w, b: fastgen.tap_conv2d(x, w, b, taps, input_activation="concat_elu"),
                                    inputs, fast_mode=True)


def test_concat_elu_input_strided(device):
    """A sliced (non-contiguous) x: the loads and the backward's gate read x with its own strides."""
    taps = masks.down_shifted((2, 3))
    x, w, b = concat_elu_inputs(taps, 2, 4, 5, 6, 7, torch.float32, device)
    x = torch.cat([x, -x], dim=3)[..., ::2]  # every other column of a wider tensor
    assert not x.is_contiguous()
    check_against_reference(x, w, b, taps, torch.float32, input_activation="concat_elu")


def test_concat_elu_input_non_finite(device):
    """nan and inf in x: elu(nan) = nan, elu(inf) = inf, elu(-inf) = -1, so a non-finite x reaches (as nan or
    inf) exactly the outputs whose live taps read it; x's gradient is F.elu's through both halves (inf:
    elu'(-inf) = 0 on the -x half, -inf: 0 on the x half), the reference's; at a nan x it is elu_backward's
    elementwise definition (CUDA's and the CPU scalar path's: ``x <= 0 ? grad * exp(x) : grad``, which passes
    the gradient; torch's vectorized CPU kernel gives nan there instead); the weight and bias gradients match
    the reference (nan where it has nan, its finite values elsewhere)."""
    taps = masks.down_right_shifted((2, 2))
    x, w, b = concat_elu_inputs(taps, 2, 5, 6, 4, 6, torch.float64, device)
    x[0, 1, 2, 3], x[1, 3, 1, 1], x[1, 0, 3, 4] = float("nan"), float("inf"), -float("inf")
    grad_y = make((2, 6, 5, 6), torch.float64, device, "concat_elu non-finite grad_y")
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y = fastgen.tap_conv2d(*leaves, taps, input_activation="concat_elu")
    grad_x, grad_w, grad_b = torch.autograd.grad(y, leaves, grad_y)
    ones = torch.ones(6, 4, *taps.kernel_size, dtype=torch.float64, device=device)
    nan_reach = ref.tap_conv2d(torch.isnan(x).double(), ones, None, taps) > 0
    inf_reach = ref.tap_conv2d(torch.isinf(x).double(), ones, None, taps) > 0
    assert nan_reach.any() and inf_reach.any() and (~(nan_reach | inf_reach)).any()
    assert torch.isnan(y)[nan_reach].all() and not torch.isfinite(y)[inf_reach].any()
    keep = ~(nan_reach | inf_reach)
    finite_x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    expected = ref.tap_conv2d(finite_x, w, b, taps, input_activation="concat_elu")
    assert torch.isfinite(y[keep]).all()
    assert_close(y.detach()[keep], expected[keep], torch.float64)
    leaves_ref = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    grads_ref = torch.autograd.grad(ref.tap_conv2d(*leaves_ref, taps, input_activation="concat_elu"), leaves_ref,
                                    grad_y)
    not_nan = ~torch.isnan(x)
    assert torch.isfinite(grad_x).all() and torch.isfinite(grads_ref[0][not_nan]).all()
    assert_close(grad_x[not_nan], grads_ref[0][not_nan], torch.float64)
    # every pixel, nan included, from the gradient reaching concat_elu(x) and elu_backward's definition
    act = concat_elu(finite_x).requires_grad_()
    (grad_act,) = torch.autograd.grad(ref.tap_conv2d(act, w, b, taps), act, grad_y)
    elu_grad = torch.where(x <= 0, torch.exp(x), 1.0), torch.where(-x <= 0, torch.exp(-x), 1.0)
    assert_close(grad_x, elu_grad[0] * grad_act[:, :4] - elu_grad[1] * grad_act[:, 4:], torch.float64)
    assert grad_x[0, 1, 2, 3] != 0 and grad_x[1, 3, 1, 1] != 0 and grad_x[1, 0, 3, 4] != 0
    for got, want in zip((grad_w, grad_b), grads_ref[1:]):
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        finite = torch.isfinite(want)
        assert_close(got[finite], want[finite], torch.float64)
    assert torch.isnan(grad_w).any()  # the rows that reduced a nan tile


def test_concat_elu_input_without_work(device):
    """No live tap (1x1 mask A) or an empty batch: the output is the bias and x's gradient zeros."""
    for taps, batch in ((masks.masked(1, "A"), 2), (masks.down_shifted((2, 3)), 0)):
        x, w, b = concat_elu_inputs(taps, batch, 3, 4, 3, 6, torch.float32, device)
        leaves = [t.requires_grad_() for t in (x, w, b)]
        y = fastgen.tap_conv2d(*leaves, taps, input_activation="concat_elu")
        torch.testing.assert_close(y, b.detach().view(1, 6, 1, 1).expand(y.shape))
        grad_x, grad_w, grad_b = torch.autograd.grad(y.sum(), leaves)
        assert grad_x.shape == x.shape and (grad_x == 0).all() and grad_w.shape == w.shape and (grad_w == 0).all()
        torch.testing.assert_close(grad_b, torch.full((6,), float(y[:, 0].numel()), device=device))


def test_input_activation_bad_arguments_raise_named_errors(device):
    """An unknown activation, a weight of C_x (not 2 C_x) input channels, and concat_elu on an RGB-grouped tap
    set raise errors naming input_activation."""
    taps = masks.down_shifted((2, 3))
    x, w, b = concat_elu_inputs(taps, 1, 3, 4, 3, 6, torch.float32, device)
    for bad in ("gelu", True, "ELU"):
        with pytest.raises(ValueError, match="input_activation must be one of"):
            fastgen.tap_conv2d(x, w[:, :3], b, taps, input_activation=bad)
    with pytest.raises(ValueError, match=r"weight must have shape \[C_out, 6, 2, 3\].*input_activation='concat_elu'"):
        fastgen.tap_conv2d(x, w[:, :3], b, taps, input_activation="concat_elu")
    with pytest.raises(ValueError, match=r"weight must have shape \[C_out, 3, 2, 3\]"):
        fastgen.tap_conv2d(x, w, b, taps)
    w3 = make((6, 6, 3, 3), torch.float32, device, "grouped w")
    with pytest.raises(ValueError, match="input_activation='concat_elu' needs a tap set without channel groups"):
        fastgen.masked_conv2d(x, w3, None, "B", 3, input_activation="concat_elu")
    with fastgen.use_backend("reference"):  # the same checks in front of the reference backend
        with pytest.raises(ValueError, match="input_activation='concat_elu' needs a tap set without channel groups"):
            fastgen.masked_conv2d(x, w3, None, "B", 3, input_activation="concat_elu")


def test_concat_elu_input_module_compile_and_autocast(device):
    """TapConv2d.forward(x, input_activation="concat_elu") is conv(concat_elu(x)) (the module and masked_conv2d
    forms); compiled with fullgraph=True (the custom ops) it gives the eager values and gradients; under autocast
    it convolves in bfloat16 like F.conv2d."""
    from library_checks import check_fullgraph

    conv = fastgen.nn.DownRightShiftedConv2d(8, 5, (2, 2)).to(device)
    x = relu_inputs(make((1, 4, 3, 4), torch.float32, device, "concat_elu module x")).to(
        memory_format=torch.channels_last)
    with torch.no_grad():
        y = conv(x, input_activation="concat_elu")
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close(y, conv(concat_elu(x)).double(), torch.float32)
        with fastgen.use_backend("reference"):
            assert_close(conv(x, input_activation="concat_elu"), y.double(), torch.float32)
        w1 = make((5, 4, 1, 1), torch.float32, device, "concat_elu 1x1")
        assert_close(fastgen.masked_conv2d(x, torch.cat([w1, w1], 1), None, input_activation="concat_elu"),
                     F.conv2d(concat_elu(x), torch.cat([w1, w1], 1)).double(), torch.float32)
    check_fullgraph(lambda x, w, b: fastgen.tap_conv2d(x, w, b, conv.taps, input_activation="concat_elu"),
                    x.requires_grad_(), conv.weight, conv.bias)
    with torch.autocast(device, dtype=torch.bfloat16):
        y16 = conv(x, input_activation="concat_elu")
    assert y16.dtype == torch.bfloat16
    assert_close(y16, y.double(), torch.bfloat16)


@pytest.mark.parametrize("n_classes", [None, 3])
def test_pixelcnnpp_gated_resnet_fuses_concat_elu(device, monkeypatch, n_classes):
    """PixelCNN++'s GatedResnet runs conv_input and the skip 1x1 on x with input_activation="concat_elu", and
    conv_out with its gate, class embedding and residual add as tap_conv2d_gated_residual (concat_elu fused
    too), unless dropout is active in training (conv_out then unfused): values and every gradient as the unfused
    block of the same parameters, in training and eval, unconditional and class-conditional, and which form
    each convolution got."""
    from fastgen.models import pixelcnnpp

    calls, gated_calls = [], []
    real_forward, real_gated = fastgen.nn.TapConv2d.forward, pixelcnnpp.tap_conv2d_gated_residual

    def spy(self, x, input_activation=None):
        calls.append((self.in_channels, x.shape[1], input_activation))
        return real_forward(self, x, input_activation)

    def gated_spy(x, weight, *args, **kwargs):
        gated_calls.append((weight.shape[1], x.shape[1], kwargs.get("input_activation")))
        return real_gated(x, weight, *args, **kwargs)

    def unfused_gate(conv, c, x, sample_bias=None):  # the block as written before
        c = conv(pixelcnnpp.concat_elu(c))
        if sample_bias is not None:
            c = c + sample_bias[:, :, None, None]
        value, gate = c.chunk(2, 1)
        return x + value * torch.sigmoid(gate)

    torch.manual_seed(0)
    block = pixelcnnpp.GatedResnet(4, fastgen.nn.DownRightShiftedConv2d, skip_channels=4, dropout=0.5,
                                   n_classes=n_classes).to(device)
    labels = None if n_classes is None else torch.tensor([0, 2], device=device)
    x = make((2, 4, 3, 5), torch.float32, device, "gated resnet x")
    a = make((2, 4, 3, 5), torch.float32, device, "gated resnet a")
    monkeypatch.setattr(fastgen.nn.TapConv2d, "forward", spy)
    monkeypatch.setattr(pixelcnnpp, "tap_conv2d_gated_residual", gated_spy)
    fused_forms = (pixelcnnpp.conv_concat_elu, pixelcnnpp.gated_residual_concat_elu)
    unfused_forms = (lambda conv, t: conv(pixelcnnpp.concat_elu(t)), unfused_gate)
    for training, fused_out in ((False, True), (True, False)):
        block.train(training)
        results = []
        for forms in (fused_forms, unfused_forms):
            monkeypatch.setattr(pixelcnnpp, "conv_concat_elu", forms[0])
            monkeypatch.setattr(pixelcnnpp, "gated_residual_concat_elu", forms[1])
            calls.clear()
            gated_calls.clear()
            leaves = [t.detach().clone().requires_grad_() for t in (x, a)]
            torch.manual_seed(1)  # the same dropout mask for both forms
            y = block(*leaves, labels)
            results.append((y, *torch.autograd.grad(y.square().sum(), [*leaves, *block.parameters()])))
            if forms is fused_forms:
                fused = [(c_in, c_x, act) for c_in, c_x, act in calls + gated_calls if act == "concat_elu"]
                assert all(c_in == 2 * c_x for c_in, c_x, _ in fused)
                assert len(fused) == 2 + fused_out and len(gated_calls) == fused_out, (training, calls)
            else:
                assert not gated_calls and all(act is None for *_, act in calls)
        for got, expected in zip(*results, strict=True):
            assert_close(got, expected.double(), torch.float32)


# ------------------------------------------------------------------------------------------ issue 13: gated residual
def gated_inputs(taps, batch, height, width, c_x, channels, dtype, device, input_activation):
    """x [B, c_x, H, W], a weight of 2 * channels outputs (of 2 c_x inputs with concat_elu), bias, residual."""
    c_in = 2 * c_x if input_activation == "concat_elu" else c_x
    x, w, b = conv_inputs(taps, batch, height, width, c_in, 2 * channels, dtype, device)
    x = relu_inputs(x[:, :c_x]).contiguous()
    residual = make((batch, channels, height, width), dtype, device, f"residual {taps} {c_x} {channels} {dtype}")
    return x, w, b, residual


def reference_gated(x, w, b, taps, residual, input_activation, dtype, sample_bias=None):
    """The float64 reference; 16-bit: the convolution's halves rounded to the dtype, as the kernel stores the
    c = [a, b] its backward reads (the output itself comes from the unrounded accumulators: within tolerance)."""
    c = ref.tap_conv2d(x, w, b, taps, input_activation=input_activation)
    if dtype.itemsize == 2 and input_activation == "concat_elu" and not op._upcast(dtype):
        c = ref.tap_conv2d(F.elu(torch.cat([x, -x], 1)).to(dtype).double(), w, b, taps)
    if sample_bias is not None:
        c = c + sample_bias[:, :, None, None]
    value, gate = c.chunk(2, 1)
    return residual + value * torch.sigmoid(gate)


# (taps, C_x, channels (F: the weight has 2F outputs), (batch, H, W)); fold and channel-block loops, partial tiles
GATED_CASES = {
    "down_shifted 2x3 C_x=3 F=3 (fold)": (masks.down_shifted((2, 3)), 3, 3, (2, 4, 5)),
    "down_right_shifted 2x2 C_x=20 F=20": (masks.down_right_shifted((2, 2)), 20, 20, (1, 4, 5)),
    "1x1 C_x=16 F=70": (masks.masked(1, "B"), 16, 70, (1, 3, 3)),
}


@pytest.mark.parametrize("input_activation,with_sample_bias", [("concat_elu", False), (None, False),
                                                               ("concat_elu", True)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GATED_CASES)
def test_tap_conv2d_gated_residual(device, case, dtype, layout, input_activation, with_sample_bias):
    """tap_conv2d_gated_residual (the gate and residual add in the GEMM's epilogue, concat_elu on its loads or
    none, a per-image sample bias before the gate or none) against residual + a * sigmoid(b) of the float64
    reference: the output and the gradients of x, weight, bias, residual and sample bias."""
    taps, c_x, channels, (batch, height, width) = GATED_CASES[case]
    x, w, b, residual = gated_inputs(taps, batch, height, width, c_x, channels, dtype, device, input_activation)
    if layout == "channels_last":
        x, residual = (t.to(memory_format=torch.channels_last) for t in (x, residual))
    inputs = (x, w, b, residual)
    if with_sample_bias:
        inputs += (make((batch, 2 * channels), dtype, device, f"sample bias {case}"),)
    leaves = [t.requires_grad_() for t in inputs]
    y = op.tap_conv2d_gated_residual(*leaves[:3], taps, leaves[3], input_activation=input_activation,
                                     sample_bias=leaves[4] if with_sample_bias else None)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    y_ref = reference_gated(*leaves64[:3], taps, leaves64[3], input_activation, dtype, *leaves64[4:])
    assert y.dtype == dtype and y.shape == y_ref.shape == residual.shape
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, y_ref, dtype, "output")
    grad_y = make(y.shape, dtype, device, "gated grad_y")
    grads = torch.autograd.grad(y, leaves, grad_y)
    grads_ref = torch.autograd.grad(y_ref, leaves64, grad_y.double())
    names = ("x", "weight", "bias", "residual", "sample bias")[:len(leaves)]
    for name, grad, grad_ref in zip(names, grads, grads_ref, strict=True):
        assert grad.dtype == dtype and grad.shape == grad_ref.shape
        assert_close(grad, grad_ref, dtype, f"grad of {name}")


@pytest.mark.parametrize("input_activation", ["concat_elu", None])
@pytest.mark.parametrize("case", ["down_shifted 2x3 C_x=3 F=3 (fold)", "down_right_shifted 2x2 C_x=20 F=20"])
def test_tap_conv2d_gated_residual_gradcheck_float64(device, case, input_activation):
    taps, c_x, channels, _ = GATED_CASES[case]
    channels = min(channels, 5)
    inputs = gated_inputs(taps, 2, 3, 4, c_x, channels, torch.float64, device, input_activation)
    inputs += (make((2, 2 * channels), torch.float64, device, f"gradcheck sample bias {case}"),)
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(
        lambda x, w, b, r, e: op.tap_conv2d_gated_residual(x, w, b, taps, r, input_activation=input_activation,
                                                           sample_bias=e),
        inputs, fast_mode=True)


def test_tap_conv2d_gated_residual_tf32_fold(device):
    """The float32 gated fold launch on TF32 tensor cores (GATED_FOLD_CONFIGS["tf32"]; exact under the
    interpreter): within 1e-2 of the reference (TF32 keeps 10 mantissa bits; the outputs here are O(1))."""
    taps, c_x, channels, (batch, height, width) = GATED_CASES["down_shifted 2x3 C_x=3 F=3 (fold)"]
    x, w, b, residual = gated_inputs(taps, batch, height, width, c_x, channels, torch.float32, device, "concat_elu")
    with cudnn_tf32(True):
        y = op.tap_conv2d_gated_residual(x, w, b, taps, residual, input_activation="concat_elu")
    expected = reference_gated(x.double(), w.double(), b.double(), taps, residual.double(), "concat_elu",
                               torch.float32)
    torch.testing.assert_close(y.double(), expected, rtol=1e-2, atol=1e-2)


def test_tap_conv2d_gated_residual_strided_without_work_and_errors(device):
    """A sliced residual (read through its strides), the reference backend, no live tap and an empty
    batch (no kernel: the gate of the bias), and named errors for an odd C_out and a residual of the wrong
    shape."""
    taps = masks.down_shifted((2, 3))
    x, w, b, residual = gated_inputs(taps, 2, 3, 4, 4, 5, torch.float32, device, "concat_elu")
    sliced = torch.cat([residual, residual], 3)[..., ::2]
    assert not sliced.is_contiguous()
    y = op.tap_conv2d_gated_residual(x, w, b, taps, sliced, input_activation="concat_elu")
    expected = reference_gated(x.double(), w.double(), b.double(), taps, sliced.double(), "concat_elu",
                               torch.float32)
    assert_close(y, expected, torch.float32)
    with fastgen.use_backend("reference"):
        assert_close(op.tap_conv2d_gated_residual(x, w, b, taps, sliced, input_activation="concat_elu"),
                     expected, torch.float32)
    for no_work_taps, batch in ((masks.masked(1, "A"), 2), (taps, 0)):
        x0, w0, b0, r0 = gated_inputs(no_work_taps, batch, 3, 4, 3, 5, torch.float32, device, None)
        leaves = [t.requires_grad_() for t in (x0, w0, b0, r0)]
        y0 = op.tap_conv2d_gated_residual(*leaves[:3], no_work_taps, leaves[3])
        value, gate = b0.detach().view(1, 10, 1, 1).expand(batch, 10, 3, 4).chunk(2, 1)
        torch.testing.assert_close(y0, r0.detach() + value * torch.sigmoid(gate))
        grad_x, grad_w, grad_b, grad_r = torch.autograd.grad(y0.sum(), leaves)
        assert (grad_x == 0).all() and (grad_w == 0).all() and (grad_r == 1).all()
        s = torch.sigmoid(b0.detach()[5:])
        expected_b = torch.cat([s, b0.detach()[:5] * s * (1 - s)]) * (batch * 12)
        torch.testing.assert_close(grad_b, expected_b)
    with pytest.raises(ValueError, match="weight must have a multiple of 2 \\* groups = 2 output channels"):
        op.tap_conv2d_gated_residual(x, w[:9], b[:9], taps, residual, input_activation="concat_elu")
    with pytest.raises(ValueError, match=r"residual has shape \(2, 4, 3, 4\) but must have shape \(2, 5, 3, 4\)"):
        op.tap_conv2d_gated_residual(x, w, b, taps, residual[:, :4], input_activation="concat_elu")
    with pytest.raises(ValueError, match="input_activation must be one of"):
        op.tap_conv2d_gated_residual(x, w, b, taps, residual, input_activation="elu")


def test_tap_conv2d_gated_residual_opcheck_and_compile(device):
    """The custom op passes opcheck; compiled with fullgraph=True the op gives eager's values and gradients."""
    from library_checks import check_fullgraph, check_opcheck

    taps = masks.down_right_shifted((2, 2))
    x, w, b, residual = gated_inputs(taps, 1, 3, 4, 3, 4, torch.float32, device, "concat_elu")
    x, residual = (t.to(memory_format=torch.channels_last) for t in (x, residual))
    leaves = [t.requires_grad_() for t in (x, w, b, residual)]
    check_opcheck(torch.ops.fastgen.tap_conv2d_gated.default, *leaves[:3], *_taps_args(taps), "residual", leaves[3],
                  None, 1, "concat_elu")
    check_fullgraph(lambda x, w, b, r: op.tap_conv2d_gated_residual(x, w, b, taps, r, input_activation="concat_elu"),
                    *leaves)


# ------------------------------------------------------------------------------------------ issue 13: gated stacks
# (taps, C_in, n (the weight has 2n outputs), groups, other, sample bias, return_conv, (batch, H, W)): the Gated
# PixelCNN's stacks: RGB horizontal (3 gate groups, the link as other, a class embedding), vertical (the
# pre-activation returned for the link), the mask-A input layers (FOLD) and channel-block loops, partial tiles
GATED_STACK_CASES = {
    "horizontal B RGB C=24 n=24 other+bias": (masks.horizontal_stack(3, "B", 3), 24, 24, 3, True, True, False,
                                              (2, 3, 5)),
    "vertical B C=20 n=8 bias return_conv": (masks.vertical_stack(3, "B"), 20, 8, 1, False, True, True, (1, 4, 5)),
    "horizontal A RGB C=3 n=6 other (fold)": (masks.horizontal_stack(7, "A", 3), 3, 6, 3, True, False, False,
                                              (2, 3, 6)),
    "vertical A C=1 n=17 return_conv (fold)": (masks.vertical_stack(7, "A"), 1, 17, 1, False, False, True,
                                               (1, 5, 4)),
}


def gated_stack_inputs(case, dtype, device, layout="nchw"):
    """(leaves x, weight, bias[, other][, sample bias], keywords of tap_conv2d_gated but those tensors)."""
    taps, c_in, n, groups, other, sample_bias, return_conv, (batch, height, width) = GATED_STACK_CASES[case]
    x, w, b = conv_inputs(taps, batch, height, width, c_in, 2 * n, dtype, device)
    tensors = [x, w, b]
    if other:
        tensors.append(make((batch, 2 * n, height, width), dtype, device, f"other {case}"))
    if sample_bias:
        tensors.append(make((batch, 2 * n), dtype, device, f"sample bias {case}"))
    if layout == "channels_last":
        tensors = [t.to(memory_format=torch.channels_last) if t.dim() == 4 and t is not w else t for t in tensors]
    return [t.requires_grad_() for t in tensors], dict(groups=groups, return_conv=return_conv)


def call_gated_stack(fn, case, leaves, **keywords):
    taps, _, _, _, other, sample_bias, _, _ = GATED_STACK_CASES[case]
    rest = iter(leaves[3:])
    return fn(*leaves[:3], taps, other=next(rest) if other else None, sample_bias=next(rest) if sample_bias else None,
              **keywords)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GATED_STACK_CASES)
def test_tap_conv2d_gated(device, case, dtype, layout):
    """tap_conv2d_gated (the Gated PixelCNN's tanh * sigmoid gate, with the link and a per-image bias, in the
    GEMM's epilogue) against the float64 reference (the convolution, then gated_activation): the output, the
    returned pre-activation, and the gradients of every input through both."""
    leaves, keywords = gated_stack_inputs(case, dtype, device, layout)
    got = call_gated_stack(fastgen.tap_conv2d_gated, case, leaves, **keywords)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    expected = call_gated_stack(ref.tap_conv2d_gated, case, leaves64, **keywords)
    got, expected = ((got,), (expected,)) if not keywords["return_conv"] else (got, expected)
    for name, y, y_ref in zip(("output", "pre-activation")[:len(got)], got, expected, strict=True):
        assert y.dtype == dtype and y.shape == y_ref.shape
        if layout == "channels_last" and leaves[0].shape[1] > 1:  # 1 channel: both layouts at once
            assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close(y, y_ref, dtype, name)
    grads_out = [make(y.shape, dtype, device, f"gated stack grad {i} {case}") for i, y in enumerate(got)]
    grads = torch.autograd.grad(got, leaves, grads_out)
    grads_ref = torch.autograd.grad(expected, leaves64, [g.double() for g in grads_out])
    for i, (grad, grad_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        assert grad.dtype == dtype and grad.shape == grad_ref.shape
        if dtype.itemsize == 2 and i in (1, 2):
            # the weight and bias gradients reduce over the pixels the gradient of the convolution's output,
            # which is formed in the dtype (as eager autograd forms it): rounding errors of that size, summed
            tolerance = TOLERANCES[dtype]["atol"] * max(1.0, grad_ref.abs().max().item())
            torch.testing.assert_close(grad.double(), grad_ref, rtol=0, atol=tolerance, msg=f"grad of input {i}")
        else:
            assert_close(grad, grad_ref, dtype, f"grad of input {i}")


@pytest.mark.parametrize("case", ["horizontal B RGB C=24 n=24 other+bias", "vertical A C=1 n=17 return_conv (fold)"])
def test_tap_conv2d_gated_gradcheck_float64(device, case):
    leaves, keywords = gated_stack_inputs(case, torch.float64, device)

    def fn(*tensors):
        out = call_gated_stack(fastgen.tap_conv2d_gated, case, list(tensors), **keywords)
        return out if keywords["return_conv"] else (out,)

    assert torch.autograd.gradcheck(fn, tuple(leaves), fast_mode=True)


def test_tap_conv2d_gated_only_the_output_or_the_conv_used(device):
    """With return_conv, a loss of the output alone or of the pre-activation alone: the other output's
    gradient is absent (not materialized), and each matches the reference's."""
    case = "vertical B C=20 n=8 bias return_conv"
    leaves, keywords = gated_stack_inputs(case, torch.float64, device)
    leaves64 = [t.detach().clone().requires_grad_() for t in leaves]
    got = call_gated_stack(fastgen.tap_conv2d_gated, case, leaves, **keywords)
    expected = call_gated_stack(ref.tap_conv2d_gated, case, leaves64, **keywords)
    for index in (0, 1):
        grads = torch.autograd.grad(got[index].sum(), leaves, retain_graph=True, allow_unused=True)
        grads_ref = torch.autograd.grad(expected[index].sum(), leaves64, retain_graph=True, allow_unused=True)
        for grad, grad_ref in zip(grads, grads_ref, strict=True):
            if grad_ref is None:  # the sample bias does not reach the pre-activation
                assert grad is None or (grad == 0).all()
            else:
                torch.testing.assert_close(grad, grad_ref)


def test_tap_conv2d_gated_strided_without_work_and_errors(device):
    """A sliced other (read through its strides), the reference backend, no live tap and an empty batch (no
    kernel: the gate of the bias), nan/inf in the link (as the reference), and named errors."""
    taps = masks.horizontal_stack(3, "B", 3)
    x, w, b = conv_inputs(taps, 2, 3, 4, 6, 12, torch.float32, device)
    other = torch.cat([make((2, 12, 3, 4), torch.float32, device, "sliced other")] * 2, 3)[..., ::2]
    bias = make((2, 12), torch.float32, device, "strided sample bias")
    other[0, 0, 0, 0], other[1, 7, 2, 1] = float("inf"), float("-inf")
    other[0, 6, 1, 1] = float("nan")
    y = fastgen.tap_conv2d_gated(x, w, b, taps, other=other, sample_bias=bias, groups=3)
    expected = ref.tap_conv2d_gated(x.double(), w.double(), b.double(), taps, other=other.double(),
                                    sample_bias=bias.double(), groups=3)
    torch.testing.assert_close(y.double(), expected, equal_nan=True, rtol=1e-5, atol=1e-5)
    with fastgen.use_backend("reference"):
        torch.testing.assert_close(fastgen.tap_conv2d_gated(x, w, b, taps, other=other, sample_bias=bias, groups=3),
                                   expected.float(), equal_nan=True)
    for no_work_taps, batch in ((masks.masked(1, "A"), 2), (masks.vertical_stack(3, "B"), 0)):
        x0, w0, b0 = conv_inputs(no_work_taps, batch, 3, 4, 3, 10, torch.float32, device)
        e0 = make((batch, 10), torch.float32, device, "no work sample bias")
        leaves = [t.requires_grad_() for t in (x0, w0, b0, e0)]
        y0, t0 = fastgen.tap_conv2d_gated(*leaves[:3], no_work_taps, sample_bias=leaves[3], return_conv=True)
        t_expected = b0.detach().view(1, 10, 1, 1).expand(batch, 10, 3, 4)
        torch.testing.assert_close(t0, t_expected)
        torch.testing.assert_close(y0, reference.gated_activation(t_expected, None, e0.detach()))
        grads = torch.autograd.grad((y0.sum() + t0.sum()), leaves)
        grads_ref = torch.autograd.grad(sum(o.sum() for o in ref.tap_conv2d_gated(
            *leaves[:3], no_work_taps, sample_bias=leaves[3], return_conv=True)), leaves)
        for grad, grad_ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(grad, grad_ref)
    with pytest.raises(ValueError, match=r"weight must have a multiple of 2 \* groups = 6 output channels"):
        fastgen.tap_conv2d_gated(x, w[:9], b[:9], taps, groups=3)
    with pytest.raises(ValueError, match=r"other has shape \(2, 6, 3, 4\) but must have shape \(2, 12, 3, 4\)"):
        fastgen.tap_conv2d_gated(x, w, b, taps, other=other[:, :6], groups=3)
    with pytest.raises(ValueError, match=r"sample_bias has shape \(1, 12\)"):
        fastgen.tap_conv2d_gated(x, w, b, taps, sample_bias=bias[:1], groups=3)
    with pytest.raises(ValueError, match="return_conv=True needs other=None"):
        fastgen.tap_conv2d_gated(x, w, b, taps, other=other, groups=3, return_conv=True)
    with pytest.raises(ValueError, match="groups"):
        fastgen.tap_conv2d_gated(x, w, b, taps, groups=0)


def test_tap_conv2d_gated_opcheck_compile_and_autocast(device):
    """The custom op passes opcheck; compiled with fullgraph=True the op gives eager's values and gradients;
    under autocast it runs in the autocast dtype, like the convolution."""
    from library_checks import check_fullgraph, check_opcheck

    case = "horizontal B RGB C=24 n=24 other+bias"
    taps = GATED_STACK_CASES[case][0]
    leaves, keywords = gated_stack_inputs(case, torch.float32, device, "channels_last")
    check_opcheck(torch.ops.fastgen.tap_conv2d_gated.default, *leaves[:3], *_taps_args(taps), "tanh", leaves[3],
                  leaves[4], 3, None)
    check_fullgraph(lambda x, w, b, o, e: fastgen.tap_conv2d_gated(x, w, b, taps, other=o, sample_bias=e, groups=3),
                    *leaves)
    vertical = "vertical B C=20 n=8 bias return_conv"
    leaves, keywords = gated_stack_inputs(vertical, torch.float32, device)
    check_fullgraph(lambda x, w, b, e: fastgen.tap_conv2d_gated(x, w, b, GATED_STACK_CASES[vertical][0], sample_bias=e,
                                                                return_conv=True), *leaves)
    with torch.autocast(device, dtype=torch.bfloat16):
        y, t = call_gated_stack(fastgen.tap_conv2d_gated, vertical, leaves, **keywords)
    assert y.dtype == t.dtype == torch.bfloat16
    expected = call_gated_stack(ref.tap_conv2d_gated, vertical, [t.detach().to(torch.bfloat16).double()
                                                                  for t in leaves], **keywords)
    assert_close(y, expected[0], torch.bfloat16)


@pytest.mark.parametrize("data_channels,n_classes", [(1, None), (3, 4)])
def test_gated_layer_fuses_both_gates(device, monkeypatch, data_channels, n_classes):
    """GatedLayer runs each stack's convolution and gate as tap_conv2d_gated (the link and the class embedding in
    the horizontal one's epilogue): values and every gradient as the same layer with the gates unfused (the
    convolution, then fastgen.gated_activation: a forward hook on each stack convolution makes the layer
    call it as a module), grey and class-conditional RGB."""
    from fastgen.models import gated_pixelcnn

    calls = []
    real = gated_pixelcnn.tap_conv2d_gated

    def spy(x, weight, *args, **kwargs):
        calls.append((weight.shape, kwargs.get("other") is not None, kwargs.get("return_conv", False)))
        return real(x, weight, *args, **kwargs)

    monkeypatch.setattr(gated_pixelcnn, "tap_conv2d_gated", spy)
    torch.manual_seed(0)
    n = 6
    layer = gated_pixelcnn.GatedLayer(n, n, 3, "B", True, data_channels, n_classes).to(device)
    v, h = (make((2, n, 4, 5), torch.float32, device, f"gated layer {name}") for name in "vh")
    labels = None if n_classes is None else torch.tensor([1, 3], device=device)
    results = []
    for fused in (True, False):
        handles = [] if fused else [conv.register_forward_hook(lambda module, args, out: None)
                                    for conv in (layer.vertical, layer.horizontal)]
        calls.clear()
        leaves = [t.detach().clone().requires_grad_() for t in (v, h)]
        v_out, h_out = layer(*leaves, labels)
        loss = (v_out * torch.cos(v_out)).sum() + (h_out * h_out).sum()
        results.append((v_out, h_out, *torch.autograd.grad(loss, [*leaves, *layer.parameters()])))
        assert calls == ([((2 * n, n, 2, 3), False, True), ((2 * n, n, 1, 2), True, False)] if fused else [])
        for handle in handles:
            handle.remove()
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
