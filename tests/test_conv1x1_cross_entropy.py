"""fastgen.conv1x1_cross_entropy (the fused output head) against the eager head: ``F.conv2d`` then the
per-sub-pixel cross-entropy, evaluated in float64 (the reference)."""

import zlib

import pytest
import torch
import torch.nn.functional as F

import fastgen
import fastgen.ops.conv1x1_cross_entropy as op
from fastgen import reference
from tolerances import assert_close

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
DTYPE_REDUCTIONS = [(d, r) for d in DTYPES for r in REDUCTIONS if r != "sum" or d in (torch.float32, torch.float64)]

# 16-bit logits are rounded once by the convolution (eager rounds them too, then upcasts): the loss and the
# gradients of hidden and weight sum over K or over the pixels of rounded terms, so they are compared looser
# than an elementwise op's one rounding.
HEAD_TOLERANCES = {torch.float16: dict(rtol=1e-2, atol=1e-2), torch.bfloat16: dict(rtol=6e-2, atol=6e-2)}


def generator(*key):
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def make_head(batch, hidden_channels, channels, levels, height, width, dtype, device, bias=True, key=""):
    g = generator(batch, hidden_channels, channels, levels, height, width, key)
    hidden = torch.relu(torch.randn(batch, hidden_channels, height, width, dtype=torch.float64, generator=g))
    weight = torch.randn(channels * levels, hidden_channels, dtype=torch.float64, generator=g) / hidden_channels**0.5
    b = torch.randn(channels * levels, dtype=torch.float64, generator=g) if bias else None
    targets = torch.randint(0, levels, (batch, channels, height, width), generator=g)
    return ([t.to(device, dtype).requires_grad_() for t in (hidden, weight)]
            + [None if b is None else b.to(device, dtype).requires_grad_()] + [targets.to(device)])


def close(actual, expected, dtype, msg):
    if dtype in HEAD_TOLERANCES:
        torch.testing.assert_close(actual.double(), expected.double(), **HEAD_TOLERANCES[dtype], equal_nan=True,
                                   msg=lambda m: f"{msg}: {m}")
    else:
        assert_close(actual, expected, dtype, msg)


def check_against_reference(hidden, weight, bias, targets, reduction, dtype):
    """Loss and the gradients of hidden, weight and bias against the float64 eager head, upstream gradient != 1."""
    out = fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets, reduction)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    bias64 = leaves64[2] if bias is not None else None
    expected = reference.conv1x1_cross_entropy(leaves64[0], leaves64[1], bias64, targets, reduction)
    assert out.dtype == op.compute_dtype(dtype) and out.shape == expected.shape
    close(out, expected, dtype, "loss")
    if out.dim() == 0:
        grad_out = torch.full_like(out, 2.5)
    else:
        grad_out = torch.randn(out.shape, dtype=torch.float64, generator=generator(out.shape)).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected_grads = torch.autograd.grad(expected, leaves64, grad_out.double())
    for name, grad, exp, x in zip(("hidden", "weight", "bias"), grads, expected_grads, leaves):
        assert grad.dtype == x.dtype and grad.shape == x.shape, name
        close(grad, exp, x.dtype, f"gradient of {name}")


# (batch, K, C, levels, H, W): RGB groups, grayscale digits (17 levels), levels past one tile (looped)
SHAPES = [(2, 8, 3, 16, 3, 4), (3, 6, 1, 17, 4, 5), (1, 4, 1, 1100, 2, 3)]


@pytest.mark.parametrize("dtype, reduction", DTYPE_REDUCTIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_eager_head(shape, dtype, reduction, device):
    if shape[3] > 1000 and dtype != torch.float32:
        pytest.skip("the looped tile: float32 covers it (the interpreter is slow)")
    check_against_reference(*make_head(*shape, dtype, device), reduction, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_several_chunks_match_one(reduction, device, monkeypatch):
    """Batches split into chunks of images give the same loss and gradients (weight and bias accumulate)."""
    inputs = make_head(5, 8, 3, 8, 2, 3, torch.float64, device)
    monkeypatch.setattr(op, "MIN_CHUNK_ELEMENTS", 1)
    op.chunk_images.cache_clear()
    try:
        assert op.chunk_images(5, 24, 8, 6, torch.float64) == 2  # 24 / 8 -> 3 chunks: 2, 2, 1 images
        check_against_reference(*inputs, reduction, torch.float64)
    finally:
        op.chunk_images.cache_clear()


def test_chunks_are_about_the_hidden_size():
    """Liger-Kernel's rule: a chunk's logits about as large as the hidden tensor, never tiny, never the batch
    unless small."""
    op.chunk_images.cache_clear()
    # B=64 32x32 RGB, 256 levels, K=128: 768 / 128 = 6 chunks of 11 images (8.6 M logits each)
    assert op.chunk_images(64, 768, 128, 1024, torch.float32) == 11
    assert op.chunk_images(64, 17, 32, 64, torch.float32) == 64  # digits: one chunk
    assert op.chunk_images(1, 768, 128, 1024, torch.float32) == 1


def test_non_contiguous_and_channels_last(device):
    hidden, weight, bias, targets = make_head(2, 8, 3, 4, 3, 5, torch.float32, device)
    expected = fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets, "none")
    grads = torch.autograd.grad(expected.sum(), (hidden, weight, bias))
    for h, w, t in ((hidden.contiguous(memory_format=torch.channels_last), weight.t().contiguous().t(),
                     targets.contiguous(memory_format=torch.channels_last)),
                    (hidden.transpose(2, 3).contiguous().transpose(2, 3), weight[:, :, None, None],
                     targets.transpose(2, 3).contiguous().transpose(2, 3))):
        out = fastgen.conv1x1_cross_entropy(h, w, bias, t, "none")
        assert_close(out, expected, torch.float32)
        for got, exp in zip(torch.autograd.grad(out.sum(), (hidden, weight, bias)), grads):
            assert_close(got, exp, torch.float32)


def test_is_the_model_head(device):
    """What a PixelCNN computes: a masked 1x1 layer's output read as channel groups, F.cross_entropy of it."""
    conv = fastgen.nn.MaskedConv2d(6, 3 * 5, 1, "B", data_channels=3).to(device).double()
    hidden = torch.randn(2, 6, 3, 3, dtype=torch.float64, device=device)
    targets = torch.randint(0, 5, (2, 3, 3, 3), device=device)
    logits = conv(hidden).unflatten(1, (3, 5)).transpose(1, 2)
    torch.testing.assert_close(conv.cross_entropy(hidden, targets), F.cross_entropy(logits, targets))
    torch.testing.assert_close(conv.cross_entropy(hidden, targets, "none"),
                               F.cross_entropy(logits, targets, reduction="none"))


def test_masked_weights_get_no_gradient(device):
    conv = fastgen.nn.MaskedConv2d(6, 3 * 4, 1, "B", data_channels=3).to(device)
    hidden = torch.randn(2, 6, 2, 2, device=device)
    conv.cross_entropy(hidden, torch.randint(0, 4, (2, 3, 2, 2), device=device)).backward()
    mask = conv.taps.mask(12, 6, torch.float32, device)
    assert conv.weight.grad[mask == 0].abs().max() == 0 and conv.weight.grad[mask == 1].abs().max() > 0


def test_gradcheck(device):
    hidden, weight, bias, targets = make_head(2, 3, 2, 3, 1, 2, torch.float64, device)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda h, w, b: fastgen.conv1x1_cross_entropy(h, w, b, targets, reduction), (hidden, weight, bias),
            eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=reduction != "none")


def test_without_bias_and_partial_gradients(device):
    hidden, weight, _, targets = make_head(2, 4, 1, 6, 2, 2, torch.float32, device, bias=False)
    check_against_reference(hidden, weight, None, targets, "mean", torch.float32)
    out = fastgen.conv1x1_cross_entropy(hidden.detach(), weight, None, targets)  # only the weight's gradient
    (grad,) = torch.autograd.grad(out, weight)
    weight64 = weight.detach().double().requires_grad_()
    expected = reference.conv1x1_cross_entropy(hidden.detach().double(), weight64, None, targets)
    assert_close(grad, torch.autograd.grad(expected, weight64)[0], torch.float32)
    with torch.no_grad():
        out = fastgen.conv1x1_cross_entropy(hidden, weight, None, targets)
    assert not out.requires_grad
    assert_close(out, expected.detach(), torch.float32)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf in NumPy, as on a GPU
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_hidden_gives_what_eager_gives(value, device):
    hidden, weight, bias, targets = make_head(1, 4, 1, 5, 2, 2, torch.float32, device)
    hidden = hidden.detach().clone()
    hidden[0, :, 0, 0] = value
    out = fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets, "none")
    expected = reference.conv1x1_cross_entropy(hidden.double(), weight.double(), bias.double(), targets, "none")
    torch.testing.assert_close(out.double(), expected, equal_nan=True, rtol=1e-5, atol=1e-5)


def test_out_of_range_targets(device):
    hidden, weight, bias, targets = make_head(1, 4, 1, 5, 2, 2, torch.float32, device)
    bad = targets.clone()
    bad[0, 0, 1, 1] = 5
    with pytest.raises(ValueError, match="targets must be in"):
        fastgen.conv1x1_cross_entropy(hidden, weight, bias, bad)
    out = fastgen.conv1x1_cross_entropy(hidden, weight, bias, bad, "none", check_targets=False)
    assert out[0, 0, 1, 1].isnan() and out.isnan().sum() == 1


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(reduction, device):
    hidden, weight, bias, targets = make_head(0, 4, 3, 2, 2, 2, torch.float32, device)
    out = fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets, reduction)
    expected = reference.conv1x1_cross_entropy(hidden.double(), weight.double(), bias.double(), targets, reduction)
    assert out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, equal_nan=True)
    grads = torch.autograd.grad(out, (hidden, weight, bias), torch.ones_like(out), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


def test_bad_arguments(device):
    hidden, weight, bias, targets = make_head(1, 4, 3, 2, 2, 2, torch.float32, device)
    with pytest.raises(ValueError, match="hidden"):
        fastgen.conv1x1_cross_entropy(hidden[0], weight, bias, targets)
    with pytest.raises(ValueError, match="weight"):
        fastgen.conv1x1_cross_entropy(hidden, weight[:, :3], bias, targets)
    with pytest.raises(ValueError, match="weight"):
        fastgen.conv1x1_cross_entropy(hidden, weight[:5], None, targets)
    with pytest.raises(TypeError, match="weight"):
        fastgen.conv1x1_cross_entropy(hidden, weight.double(), bias, targets)
    with pytest.raises(ValueError, match="bias"):
        fastgen.conv1x1_cross_entropy(hidden, weight, bias[:3], targets)
    with pytest.raises(TypeError, match="targets"):
        fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets.float())
    with pytest.raises(ValueError, match="targets"):
        fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets[:, :, :1])
    with pytest.raises(ValueError, match="reduction"):
        fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets, "avg")
    conv = fastgen.nn.MaskedConv2d(4, 6, 3, "B")
    with pytest.raises(ValueError, match="1x1"):
        conv.cross_entropy(hidden.cpu(), targets.cpu())


def test_autocast_runs_the_head_in_the_autocast_dtype(device):
    hidden, weight, bias, targets = make_head(2, 8, 1, 6, 2, 2, torch.float32, device)
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16):
        out = fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets)
    out.backward()
    assert out.dtype == torch.float32 and weight.grad.dtype == torch.float32
    expected = reference.conv1x1_cross_entropy(*(t.detach().bfloat16().double() for t in (hidden, weight, bias)),
                                               targets)
    close(out, expected, torch.bfloat16, "loss")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("needs", [[True, True, True], [False, True, False], [False, False, False]], ids=str)
def test_custom_ops_pass_opcheck(reduction, needs, device):
    from library_checks import check_opcheck

    hidden, weight, bias, targets = (t.detach() if t.is_floating_point() else t
                                     for t in make_head(2, 4, 3, 2, 2, 3, torch.float32, device))
    weight = weight[:, :, None, None]
    leaves = [t.requires_grad_(n) for t, n in zip((hidden, weight, bias), needs)]
    check_opcheck(torch.ops.fastgen.conv1x1_cross_entropy.default, *leaves, targets, reduction, needs)
    grad_output = torch.randn(targets.shape, device=device)
    check_opcheck(torch.ops.fastgen.conv1x1_cross_entropy_backward.default, hidden.detach(), weight.detach(),
                  bias.detach(), targets, grad_output, [True, True, True])


def test_compiles_without_graph_breaks(device):
    from library_checks import check_fullgraph

    hidden, weight, bias, targets = make_head(2, 4, 3, 2, 2, 3, torch.float32, device)

    def losses(hidden, weight, bias):
        return (fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets),
                fastgen.conv1x1_cross_entropy(hidden, weight, None, targets, "none"))

    check_fullgraph(losses, hidden, weight, bias)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_custom_op_outputs_match_its_fake(dtype, device):
    """The forward op's gradients have the dtypes and shapes its fake implementation says (torch.compile traces
    with the fake), with one chunk and with several."""
    hidden, weight, bias, targets = (t.detach() if t.is_floating_point() else t
                                     for t in make_head(3, 4, 3, 2, 2, 3, dtype, device))
    weight = weight[:, :, None, None]
    default = op.MIN_CHUNK_ELEMENTS
    for min_chunk in (default, 1):
        op.MIN_CHUNK_ELEMENTS = min_chunk
        op.chunk_images.cache_clear()
        try:
            real = torch.ops.fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets, "mean", [True] * 3)
            with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
                fake = torch.ops.fastgen.conv1x1_cross_entropy(
                    *(mode.from_tensor(t) for t in (hidden, weight, bias, targets)), "mean", [True] * 3)
        finally:
            op.MIN_CHUNK_ELEMENTS = default
            op.chunk_images.cache_clear()
        assert [(t.dtype, t.shape) for t in real] == [(t.dtype, t.shape) for t in fake]
