"""fastgen.pixel_cross_entropy, dmol_nll and dmol_sample against the plain-PyTorch reference (float64 oracle).

The DMOL values at the pixel edges, the mid-bin fallback and the log-scale clamp are also checked against
closed forms written here from the paper's formulas, independently of the reference. Samples are compared
with the reference on the same uniforms (``uniforms=``); statistics tests check the in-kernel Philox draws.
"""

import functools
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import reference
from fastgen.reference.pixel_losses import split_mixture_params
import fastgen.ops.pixel_losses as op
from tolerances import assert_close

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
# "sum" only weighs the terms differently from "mean": checked in float32 and float64 (the interpreter is slow)
DTYPE_REDUCTIONS = [(d, r) for d in DTYPES for r in REDUCTIONS if r != "sum" or d in (torch.float32, torch.float64)]

# The RGB 4-D logits of these tests are channel-major (C groups of levels: a masked convolution's channel groups),
# as the reference reads 4-D logits; 1-channel and 5-D logits are unambiguous and ignore the argument.
pixel_ce = functools.partial(fastgen.pixel_cross_entropy, logits_layout="channel-major")


def generator(*key):
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def random_grad_like(out):
    """An upstream gradient != 1 (2.5 for a 0-d loss), rounded to the output's dtype."""
    if out.dim() == 0:
        return torch.full_like(out, 2.5)
    return torch.randn(out.shape, dtype=torch.float64, generator=generator(tuple(out.shape))).to(out.device,
                                                                                                  out.dtype)


# The DMOL NLL is ill-conditioned where a component is narrow (1/scale up to e^7 multiplies x - mean): its float32
# results are compared at 5e-5 (on the same data the eager float32 formula is off by up to 4e-4, see
# test_dmol_float32_is_more_precise_than_eager); the float64 oracle itself loses up to ~1e-16 / cdf_delta in
# log(sigmoid(a) - sigmoid(b)), 1e-9 relative in some gradients, where the kernel's cancellation-free form
# matches an exact (mpmath) value to 1e-12 (test_dmol_float64_matches_exact_arithmetic): float64 at 1e-7.
DMOL_TOLERANCES = {torch.float64: dict(rtol=1e-7, atol=1e-7), torch.float32: dict(rtol=5e-5, atol=5e-5)}


def close(actual, expected, dtype, msg, tolerances=None):
    if tolerances and dtype in tolerances:
        torch.testing.assert_close(actual.double(), expected.double(), **tolerances[dtype], equal_nan=True,
                                   msg=lambda m: f"{msg}: {m}")
    else:
        assert_close(actual, expected, dtype, msg)


def check_against_reference(fn, ref_fn, inputs, dtype, tolerances=None):
    """Loss (float32, float64 for float64 inputs) and input gradients of ``fn`` against ``ref_fn`` in float64 on
    the same values, with an upstream gradient != 1."""
    out = fn(*inputs)
    acc = op.compute_dtype(dtype)
    inputs64 = [t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in inputs]
    expected = ref_fn(*inputs64)
    assert out.dtype == acc and out.shape == expected.shape
    close(out, expected, acc, "loss", tolerances)
    grad_out = random_grad_like(out)
    leaves = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected_grads = torch.autograd.grad(expected, [t for t in inputs64 if t.requires_grad], grad_out.double())
    for grad, exp, x in zip(grads, expected_grads, leaves):
        assert grad.dtype == x.dtype and grad.shape == x.shape
        close(grad, exp, x.dtype, "gradient", tolerances)


# ---------------------------------------------------------------------------------------------- cross-entropy
def make_logits(shape, dtype, device, key=""):
    return (2 * torch.randn(shape, dtype=torch.float64, generator=generator(shape, key))).to(device, dtype)


def make_targets(shape, levels, device, dtype=torch.int64):
    return torch.randint(0, levels, shape, generator=generator(shape, levels)).to(device, dtype)


# (logits shape, targets shape): RGB 4-D (C groups of 20 levels: two level steps), 5-D, grayscale 4-D
CE_LAYOUTS = [((2, 60, 3, 4), (2, 3, 3, 4)), ((2, 20, 3, 3, 4), (2, 3, 3, 4)), ((3, 20, 4, 5), (3, 1, 4, 5))]


@pytest.mark.parametrize("dtype, reduction", DTYPE_REDUCTIONS, ids=str)
@pytest.mark.parametrize("shapes", CE_LAYOUTS, ids=str)
def test_cross_entropy_matches_reference(shapes, dtype, reduction, device):
    logits = make_logits(shapes[0], dtype, device).requires_grad_()
    targets = make_targets(shapes[1], 20, device)
    check_against_reference(lambda x, t: pixel_ce(x, t, reduction=reduction),
                            lambda x, t: reference.pixel_cross_entropy(x, t, reduction=reduction),
                            [logits, targets], dtype)


def test_cross_entropy_256_levels_is_f_cross_entropy(device):
    """van den Oord's 256-way softmax on grayscale: the same as F.cross_entropy on [B, 256, H, W]."""
    logits = make_logits((2, 256, 3, 3), torch.float32, device).requires_grad_()
    targets = make_targets((2, 1, 3, 3), 256, device, torch.uint8)
    loss = pixel_ce(logits, targets)
    expected = F.cross_entropy(logits.double(), targets[:, 0].long())
    assert_close(loss, expected, torch.float32)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert_close(grad, expected_grad, torch.float32)


def test_cross_entropy_layout_is_channel_groups(device):
    """4-D logits [B, C * L, H, W] are C groups of L levels: the loss of channel c reads channels c*L:(c+1)*L."""
    logits = make_logits((2, 3 * 5, 2, 2), torch.float64, device)
    targets = make_targets((2, 3, 2, 2), 5, device)
    terms = pixel_ce(logits, targets, reduction="none")
    for c in range(3):
        expected = F.cross_entropy(logits[:, 5 * c:5 * (c + 1)], targets[:, c], reduction="none")
        torch.testing.assert_close(terms[:, c], expected)


def test_cross_entropy_non_contiguous(device):
    base = make_logits((2, 3 * 17, 5, 6), torch.float32, device)
    channels_last = base.contiguous(memory_format=torch.channels_last).requires_grad_()
    sliced = base[:, :, 1:, ::2].detach().requires_grad_()  # no single stride over (H, W)
    five_d = base.view(2, 3, 17, 5, 6).transpose(1, 2).detach().requires_grad_()  # [B, L, C, H, W] view
    targets = make_targets((2, 3, 6, 5), 17, device).transpose(2, 3)  # transposed targets [2, 3, 5, 6]
    for logits in (channels_last, five_d):
        check_against_reference(lambda x, t: pixel_ce(x, t, reduction="none"),
                                lambda x, t: reference.pixel_cross_entropy(x, t, reduction="none"),
                                [logits, targets], torch.float32)
    check_against_reference(lambda x, t: pixel_ce(x, t),
                            lambda x, t: reference.pixel_cross_entropy(x, t),
                            [sliced, targets[:, :, 1:, ::2]], torch.float32)
    (grad,) = torch.autograd.grad(pixel_ce(channels_last, targets), channels_last)
    assert grad.is_contiguous(memory_format=torch.channels_last)  # the gradient keeps the logits' layout
    with torch.no_grad():
        assert_close(pixel_ce(five_d, targets), reference.pixel_cross_entropy(five_d.double(),
                                                                                               targets), torch.float32)


def test_cross_entropy_bits_per_dim(device):
    logits = make_logits((2, 3 * 8, 3, 3), torch.float64, device)
    targets = make_targets((2, 3, 3, 3), 8, device)
    mean = pixel_ce(logits, targets)
    total = pixel_ce(logits, targets, reduction="sum")
    torch.testing.assert_close(fastgen.bits_per_dim(mean), mean / math.log(2))
    torch.testing.assert_close(fastgen.bits_per_dim(total, targets), mean / math.log(2))
    torch.testing.assert_close(fastgen.bits_per_dim(total, targets.shape), mean / math.log(2))
    uniform = torch.zeros_like(logits)  # uniform over 8 levels: 3 bits/dim
    torch.testing.assert_close(fastgen.bits_per_dim(pixel_ce(uniform, targets)).item(), 3.0)
    with pytest.raises(ValueError, match="dims"):
        fastgen.bits_per_dim(total, 0)
    with pytest.raises(TypeError, match="dims"):
        fastgen.bits_per_dim(total, 2.5)


@pytest.mark.parametrize("value", [1e4, -1e4])
def test_cross_entropy_extreme_logits(value, device):
    logits = make_logits((1, 2 * 6, 2, 2), torch.float32, device)
    logits[:, ::3] = value
    logits.requires_grad_()
    targets = make_targets((1, 2, 2, 2), 6, device)
    out = pixel_ce(logits, targets, reduction="none")
    expected = reference.pixel_cross_entropy(logits.double(), targets, reduction="none")
    assert torch.isfinite(out).all()
    assert_close(out, expected, torch.float32)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    assert torch.isfinite(grad).all()


def test_cross_entropy_targets_are_checked(device):
    logits = make_logits((2, 3 * 4, 2, 2), torch.float32, device)
    targets = make_targets((2, 3, 2, 2), 4, device)
    for bad in (4, -1):
        wrong = targets.clone()
        wrong[1, 2, 0, 1] = bad
        with pytest.raises(ValueError, match=r"targets must be in \[0, levels\)"):
            pixel_ce(logits, wrong)
        # unchecked (no device sync): a nan loss where the target is out of range, the others intact
        terms = pixel_ce(logits, wrong, reduction="none", check_targets=False)
        assert torch.isnan(terms[1, 2, 0, 1]) and torch.isnan(terms).sum() == 1
    with pytest.raises(TypeError, match="targets"):
        pixel_ce(logits, targets.float())
    with pytest.raises(TypeError, match="targets"):
        pixel_ce(logits, targets.bool())
    with pytest.raises(ValueError, match="targets"):
        pixel_ce(logits, targets[0])
    with pytest.raises(ValueError, match="logits"):
        pixel_ce(logits[:, :11], targets)  # 11 is not 3 * levels
    with pytest.raises(ValueError, match="logits"):
        pixel_ce(logits, targets, levels=5)
    with pytest.raises(ValueError, match="logits"):
        pixel_ce(logits[0], targets)
    with pytest.raises(ValueError, match="logits"):
        pixel_ce(logits[:, :, :1], targets)
    with pytest.raises(TypeError, match="logits"):
        pixel_ce(targets, targets)
    with pytest.raises(TypeError, match="levels"):
        pixel_ce(logits, targets, levels=4.0)
    with pytest.raises(ValueError, match="reduction"):
        pixel_ce(logits, targets, reduction="avg")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_empty_batch(reduction, device):
    logits = make_logits((0, 3 * 4, 2, 2), torch.float32, device).requires_grad_()
    targets = make_targets((0, 3, 2, 2), 4, device)
    out = pixel_ce(logits, targets, reduction=reduction)
    expected = reference.pixel_cross_entropy(logits.double(), targets, reduction=reduction)
    assert out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, equal_nan=True)
    (grad,) = torch.autograd.grad(out, logits, torch.ones_like(out))
    assert grad.shape == logits.shape and not grad.any()


def test_cross_entropy_gradcheck(device):
    logits = make_logits((2, 2 * 3, 1, 2), torch.float64, device).requires_grad_()
    targets = make_targets((2, 2, 1, 2), 3, device)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(lambda x: pixel_ce(x, targets, reduction=reduction),
                                        [logits], eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=reduction != "none")


# ---------------------------------------------------------------------------------------------- DMOL
def make_params(batch, n_mixtures, channels, height, width, dtype, device, log_scales=(-4.5, 0.0), key=""):
    """Mixture params as a network emits them: logits ~ N(0, 1), means in [-1.1, 1.1], log-scales uniform in
    ``log_scales`` (some below the -7 clamp if it reaches there), coefficients ~ N(0, 1)."""
    g = generator(batch, n_mixtures, channels, height, width, str(dtype), key)
    k = n_mixtures
    shape = (batch, k, height, width)
    blocks = [torch.randn(shape, generator=g, dtype=torch.float64)]
    for _ in range(channels):
        blocks.append(2.2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1.1)
        low, high = log_scales
        blocks.append(low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64))
        if channels == 3:
            blocks.append(torch.randn(shape, generator=g, dtype=torch.float64))
    return torch.cat(blocks, dim=1).to(device, dtype)


def make_images(batch, channels, height, width, device, dtype=torch.float32, bits=8, key=""):
    """Images in [-1, 1] on the grid of 2**bits values, with both edge values present."""
    top = 2**bits - 1
    values = torch.randint(0, top + 1, (batch, channels, height, width), generator=generator(batch, key))
    values.view(-1)[0], values.view(-1)[-1] = 0, top
    return (values.double() * (2.0 / top) - 1.0).to(device, dtype)


def dmol_case(fn_kwargs=None):
    kwargs = fn_kwargs or {}
    return (lambda p, x, k: fastgen.dmol_nll(p, x, k, **kwargs)), (lambda p, x, k: reference.dmol_nll(p, x, k,
                                                                                                       **kwargs))


# (K, C, H, W): RGB with 3 components, grayscale with 2
DMOL_SHAPES = [(3, 3, 3, 4), (2, 1, 4, 5)]


@pytest.mark.parametrize("dtype, reduction", DTYPE_REDUCTIONS, ids=str)
@pytest.mark.parametrize("k, channels, height, width", DMOL_SHAPES, ids=str)
def test_dmol_matches_reference(k, channels, height, width, dtype, reduction, device):
    params = make_params(2, k, channels, height, width, dtype, device).requires_grad_()
    x = make_images(2, channels, height, width, device).requires_grad_()
    fn, ref_fn = dmol_case(dict(reduction=reduction))
    # 16-bit params: math in float32 on float32 x, so x's gradient (float32) has float32's tolerance
    check_against_reference(lambda p, x: fn(p, x, k), lambda p, x: ref_fn(p, x, k), [params, x], dtype,
                            DMOL_TOLERANCES)


def test_dmol_float32_is_more_precise_than_eager(device):
    """float32 values and gradients: the kernel's error against float64 is a fraction of the eager float32
    formula's (openai's, on the same float32 inputs)."""
    params = make_params(2, 3, 3, 3, 4, torch.float32, device).requires_grad_()
    x = make_images(2, 3, 3, 4, device)
    grad_out = random_grad_like(torch.empty(2, 3, 4, device=device))
    results = []
    for fn, p, xx in ((fastgen.dmol_nll, params, x), (reference.dmol_nll, params, x),
                      (reference.dmol_nll, params.detach().double().requires_grad_(), x.double())):
        out = fn(p, xx, 3, reduction="none")
        results.append((out.double(), torch.autograd.grad(out, p, grad_out.to(out.dtype))[0].double()))
    (nll, grad), (eager_nll, eager_grad), (exact_nll, exact_grad) = results
    for ours, eager, exact in ((nll, eager_nll, exact_nll), (grad, eager_grad, exact_grad)):
        error = ((ours - exact).abs() / (exact.abs() + 1)).max()
        eager_error = ((eager - exact).abs() / (exact.abs() + 1)).max()
        assert error < 0.2 * eager_error and error < 5e-5, (error, eager_error)


def test_dmol_float64_matches_exact_arithmetic(device):
    """50-digit mpmath evaluation of openai's formula for a few pixels (values and one gradient per parameter
    block, by mpmath's numerical differentiation): the float64 kernel agrees to 1e-11."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    k = 2
    params = make_params(1, k, 3, 1, 3, torch.float64, device, log_scales=(-6.0, 0.0), key="exact")
    x = make_images(1, 3, 1, 3, device, torch.float64, key="exact")
    params.requires_grad_()
    nll = fastgen.dmol_nll(params, x, k, reduction="none")
    (grad,) = torch.autograd.grad(nll.sum(), params)

    def exact_nll(p, xs):
        def log_bin(value, mean, log_scale):
            inv = mpmath.exp(-max(log_scale, -7))
            plus, minus = inv * (value - mean + mpmath.mpf(1) / 255), inv * (value - mean - mpmath.mpf(1) / 255)
            if value < -0.999:
                return -mpmath.log1p(mpmath.exp(-plus))
            if value > 0.999:
                return -mpmath.log1p(mpmath.exp(minus))
            delta = 1 / (1 + mpmath.exp(-plus)) - 1 / (1 + mpmath.exp(-minus))
            if delta > 1e-5:
                return mpmath.log(delta)
            mid = inv * (value - mean)
            return mid - max(log_scale, -7) - 2 * mpmath.log1p(mpmath.exp(mid)) - mpmath.log(127.5)

        terms = []
        for j in range(k):
            means = [p[k + 3 * k * c + j] for c in range(3)]
            log_scales = [p[2 * k + 3 * k * c + j] for c in range(3)]
            coef = [mpmath.tanh(p[3 * k + 3 * k * c + j]) for c in range(3)]
            means[1] += coef[0] * xs[0]
            means[2] += coef[1] * xs[0] + coef[2] * xs[1]
            log_mix = p[j] - mpmath.log(sum(mpmath.exp(v) for v in p[:k]))
            terms.append(log_mix + sum(log_bin(xs[c], means[c], log_scales[c]) for c in range(3)))
        return -mpmath.log(sum(mpmath.exp(t) for t in terms))

    for w in range(3):
        p = [mpmath.mpf(v) for v in params.detach()[0, :, 0, w].tolist()]
        xs = [mpmath.mpf(v) for v in x[0, :, 0, w].tolist()]
        assert abs(float(exact_nll(p, xs)) - nll[0, 0, w].item()) < 1e-11
        for j in range(0, 10 * k, k + 1):  # a logit, means, log-scales and coefficients of both components
            exact = mpmath.diff(lambda t: exact_nll(p[:j] + [t] + p[j + 1:], xs), p[j])
            assert abs(float(exact) - grad[0, j, 0, w].item()) < 1e-11 * (1 + abs(float(exact))), (w, j)


def test_dmol_ten_components_with_clamped_scales(device):
    """PixelCNN++'s K = 10 on RGB, with log-scales down to -9 (clamped at -7: no gradient there)."""
    params = make_params(1, 10, 3, 2, 3, torch.float64, device, log_scales=(-9.0, 0.0)).requires_grad_()
    x = make_images(1, 3, 2, 3, device, torch.float64)
    check_against_reference(lambda p: fastgen.dmol_nll(p, x, 10), lambda p: reference.dmol_nll(p, x, 10), [params],
                            torch.float64, DMOL_TOLERANCES)
    (grad,) = torch.autograd.grad(fastgen.dmol_nll(params, x, 10), params)
    _, _, log_scales, _ = split_mixture_params(params.detach(), 10, 3)
    _, _, grad_log_scales, _ = split_mixture_params(grad, 10, 3)
    assert (log_scales < -7).any() and not grad_log_scales[log_scales < -7].any()


@pytest.mark.parametrize("bits", [1, 5, 12])
def test_dmol_bit_depths(bits, device):
    params = make_params(2, 2, 3, 2, 3, torch.float64, device, log_scales=(-6.0, 0.0)).requires_grad_()
    x = make_images(2, 3, 2, 3, device, torch.float64, bits=bits, key=bits)
    fn, ref_fn = dmol_case(dict(bits=bits, reduction="none"))
    check_against_reference(lambda p: fn(p, x, 2), lambda p: ref_fn(p, x, 2), [params], torch.float64,
                            DMOL_TOLERANCES)


@pytest.mark.parametrize("levels", [17, 256])
def test_dmol_levels_sum_to_one(levels, device):
    """levels= (17 for the digits data, not a power of 2): the probabilities of every value sum to 1, and
    levels=256 is bits=8."""
    params = make_params(1, 2, 1, 1, 1, torch.float64, device, log_scales=(-3.0, 0.5)).expand(levels, -1, -1, -1)
    x = torch.linspace(-1.0, 1.0, levels, dtype=torch.float64, device=device).view(levels, 1, 1, 1)
    nll = fastgen.dmol_nll(params, x, 2, levels=levels, reduction="none")
    torch.testing.assert_close(nll, reference.dmol_nll(params, x, 2, levels=levels, reduction="none"))
    torch.testing.assert_close(torch.exp(-nll).sum().item(), 1.0, rtol=0, atol=1e-9)
    if levels == 256:
        torch.testing.assert_close(nll, fastgen.dmol_nll(params, x, 2, bits=8, reduction="none"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="levels"):
        fastgen.dmol_nll(params, x, 2, levels=1)


def scalar(value):
    return torch.tensor(value, dtype=torch.float64)


def logistic_log_cdf(z):
    return -F.softplus(-z)


def single_component(mean, log_scale, device, dtype=torch.float64):
    """Grayscale, one component: params [1, 3, 1, 1] = (logit, mean, log-scale)."""
    return torch.tensor([0.0, mean, log_scale], dtype=dtype, device=device).view(1, 3, 1, 1)


@pytest.mark.parametrize("mean, log_scale", [(-0.9, -3.0), (0.3, -1.0), (-1.0, -7.0), (0.8, 2.0)])
def test_dmol_pixel_edges_against_the_closed_form(mean, log_scale, device):
    """Pixel 0: log CDF at -1 + 1/255; pixel 255: log(1 - CDF) at 1 - 1/255; an inner bin: the CDF difference."""
    params = single_component(mean, log_scale, device)
    s = math.exp(log_scale)
    half = 1.0 / 255
    inner = round((mean + 1) * 127.5 + 0.5) / 127.5 - 1  # a grid value next to the mean: cdf_delta > 1e-5
    inner = min(max(inner, -1 + 2 / 255), 1 - 2 / 255)
    for value, expected in [
        (-1.0, logistic_log_cdf(scalar((-1.0 + half - mean) / s))),
        (1.0, logistic_log_cdf(-scalar((1.0 - half - mean) / s))),
        (inner, torch.log(torch.sigmoid(scalar((inner + half - mean) / s)) - torch.sigmoid(scalar((inner - half - mean)
                                                                                              / s)))),
    ]:
        x = torch.full((1, 1, 1, 1), value, dtype=torch.float64, device=device)
        nll = fastgen.dmol_nll(params, x, 1, reduction="sum")
        torch.testing.assert_close(nll.cpu(), -expected.double(), rtol=1e-10, atol=1e-10)


def test_dmol_mid_bin_fallback(device):
    """A tiny scale (log-scale -7) and a bin far from the mean: CDF differences under 1e-5 use the log density
    at the bin centre + log(2/255), as openai's code; there the eager float32 formula gives log(1e-12)."""
    log_scale = -7.0
    s = math.exp(log_scale)
    x_value = 2 * 140 / 255 - 1
    for mean in (x_value - 0.02, x_value + 0.03, x_value - 0.015):
        params = single_component(mean, log_scale, device).requires_grad_()
        x = torch.full((1, 1, 1, 1), x_value, dtype=torch.float64, device=device)
        z = (x_value - mean) / s
        delta = torch.sigmoid(scalar(z + (1 / 255) / s)) - torch.sigmoid(scalar(z - (1 / 255) / s))
        assert delta < 1e-5  # the fallback region
        log_pdf = z - log_scale - 2 * F.softplus(scalar(z))
        nll = fastgen.dmol_nll(params, x, 1, reduction="sum")
        torch.testing.assert_close(nll.detach().cpu(), -(log_pdf - math.log(127.5)), rtol=1e-10, atol=1e-10)
        (grad,) = torch.autograd.grad(nll, params)
        (expected,) = torch.autograd.grad(reference.dmol_nll(params, x, 1, reduction="sum"), params)
        torch.testing.assert_close(grad, expected)
        # float32 and float16: the same branch, finite, to float32's precision of the float64 value
        for dtype in (torch.float32, torch.float16):
            nll32 = fastgen.dmol_nll(params.detach().to(dtype), x.float(), 1, reduction="sum")
            assert torch.isfinite(nll32)
            assert_close(nll32, reference.dmol_nll(params.detach().to(dtype).double(), x, 1, reduction="sum"),
                         torch.float32)


def test_dmol_log_scale_clamp(device):
    """log-scales below -7 act as -7 and get no gradient (torch.clamp(min=-7))."""
    x = torch.full((1, 1, 1, 1), 2 * 90 / 255 - 1, dtype=torch.float64, device=device)
    at_clamp = fastgen.dmol_nll(single_component(2 * 90 / 255 - 1.001, -7.0, device), x, 1)
    below = single_component(2 * 90 / 255 - 1.001, -12.0, device).requires_grad_()
    nll = fastgen.dmol_nll(below, x, 1)
    torch.testing.assert_close(nll.detach(), at_clamp)
    (grad,) = torch.autograd.grad(nll, below)
    assert grad[0, 2].item() == 0.0 and grad[0, 1].item() != 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dmol_extreme_params_no_nan(dtype, device):
    """Huge logits, means, log-scales and coefficients: finite (and as precise as the eager float32 formula, or
    better) wherever the float64 reference is finite."""
    params = make_params(2, 3, 3, 2, 3, torch.float64, device, key="extreme")
    big = {torch.float32: 1e4, torch.float16: 6e4, torch.bfloat16: 1e30}[dtype]
    params[:, :3] *= 50.0  # confident logits
    params[0, 3:6] = 40.0  # means far outside [-1, 1]
    params[1, 3:6] = -big
    params[0, 6:9] = 60.0  # huge log-scales
    params[1, 6:9] = -big  # clamped
    params[:, 9:12] = big  # saturated tanh
    params = params.to(dtype)
    x = make_images(2, 3, 2, 3, device)
    out = fastgen.dmol_nll(params.requires_grad_(), x, 3, reduction="none")
    exact = reference.dmol_nll(params.detach().double(), x.double(), 3, reduction="none")
    assert torch.isfinite(exact).all()
    assert torch.isfinite(out).all()
    eager = reference.dmol_nll(params.detach().float(), x, 3, reduction="none")  # what users run today
    assert ((out.double() - exact).abs() <= (eager.double() - exact).abs() + 1e-4 * exact.abs() + 1e-4).all()
    (grad,) = torch.autograd.grad(out.sum(), params)
    assert torch.isfinite(grad).all()


def test_dmol_non_contiguous(device):
    params = make_params(2, 2, 3, 4, 6, torch.float32, device)
    x = make_images(2, 3, 4, 6, device)
    fn, ref_fn = dmol_case(dict(reduction="none"))
    cases = [
        (params.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)),
        (params[:, :, :, ::2], x[:, :, :, ::2]),  # not dense: copied
        (params.transpose(2, 3).contiguous().transpose(2, 3), x),  # W-major pixels
    ]
    for p, xx in cases:
        p = p.detach().requires_grad_()
        check_against_reference(lambda a, b: fn(a, b, 2), lambda a, b: ref_fn(a, b, 2),
                                [p, xx.detach().requires_grad_()], torch.float32, DMOL_TOLERANCES)
    p = cases[0][0].detach().requires_grad_()
    (grad,) = torch.autograd.grad(fastgen.dmol_nll(p, x, 2), p)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # no gradient written: strided inputs are read in place
        for p, xx in cases:
            close(fastgen.dmol_nll(p, xx, 2, reduction="none"), ref_fn(p.double(), xx.double(), 2), torch.float32,
                  "no-grad loss", DMOL_TOLERANCES)


def test_dmol_x_dtype_differs_from_params(device):
    """bfloat16 params with float32 data: x is read in float32 (never rounded to bfloat16)."""
    params = make_params(2, 2, 3, 2, 3, torch.bfloat16, device).requires_grad_()
    x = make_images(2, 3, 2, 3, device, torch.float64)
    check_against_reference(lambda p: fastgen.dmol_nll(p, x, 2), lambda p: reference.dmol_nll(p, x, 2), [params],
                            torch.bfloat16, DMOL_TOLERANCES)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 3, 2, 2), (2, 3, 0, 2)], ids=str)
def test_dmol_empty(shape, reduction, device):
    batch, channels, height, width = shape
    params = make_params(batch, 2, channels, height, width, torch.float32, device).requires_grad_()
    x = (make_images(batch, channels, height, width, device) if batch * height * width
         else torch.zeros(shape, device=device))
    x = x.requires_grad_()
    out = fastgen.dmol_nll(params, x, 2, reduction=reduction)
    expected = reference.dmol_nll(params.double(), x.double(), 2, reduction=reduction)
    assert out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, equal_nan=True)
    grads = torch.autograd.grad(out, [params, x], torch.ones_like(out))
    assert grads[0].shape == params.shape and grads[1].shape == x.shape and not grads[0].any()


@pytest.mark.parametrize("channels", [3, 1])
def test_dmol_gradcheck(channels, device):
    """float64 gradcheck of params and x (fast mode: 60 + 6 inputs), per-pixel and mean."""
    params = make_params(1, 2, channels, 1, 2, torch.float64, device, log_scales=(-3.0, 0.0)).requires_grad_()
    x = make_images(1, channels, 1, 2, device, torch.float64).requires_grad_()
    for reduction in ("none", "mean"):
        assert torch.autograd.gradcheck(lambda p, xx: fastgen.dmol_nll(p, xx, 2, reduction=reduction),
                                        [params, x], eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_dmol_bits_per_dim_and_openai_sum(device):
    params = make_params(2, 3, 3, 2, 2, torch.float64, device)
    x = make_images(2, 3, 2, 2, device, torch.float64)
    total = fastgen.dmol_nll(params, x, 3, reduction="sum")  # openai's loss
    mean = fastgen.dmol_nll(params, x, 3)
    per_pixel = fastgen.dmol_nll(params, x, 3, reduction="none")
    assert per_pixel.shape == (2, 2, 2)
    torch.testing.assert_close(total, per_pixel.sum())
    torch.testing.assert_close(fastgen.bits_per_dim(mean), fastgen.bits_per_dim(total, x))


def test_dmol_bad_arguments(device):
    params = make_params(1, 2, 3, 2, 2, torch.float32, device)
    x = make_images(1, 3, 2, 2, device)
    with pytest.raises(ValueError, match="params"):
        fastgen.dmol_nll(params[:, :19], x, 2)
    with pytest.raises(ValueError, match="params"):
        fastgen.dmol_nll(params[0], x, 2)
    with pytest.raises(TypeError, match="params"):
        fastgen.dmol_nll(params.long(), x, 2)
    with pytest.raises(ValueError, match="x"):
        fastgen.dmol_nll(params, x[:, :1], 2)
    with pytest.raises(TypeError, match="x"):
        fastgen.dmol_nll(params, x.long(), 2)
    with pytest.raises(ValueError, match="n_mixtures"):
        fastgen.dmol_nll(params, x, 0)
    with pytest.raises(TypeError, match="n_mixtures"):
        fastgen.dmol_nll(params, x, 2.0)
    with pytest.raises(ValueError, match="bits"):
        fastgen.dmol_nll(params, x, 2, bits=17)
    with pytest.raises(ValueError, match="reduction"):
        fastgen.dmol_nll(params, x, 2, reduction="batchmean")


# ---------------------------------------------------------------------------------------------- DMOL sampler
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k, channels", [(3, 3), (2, 1)], ids=str)
def test_sample_matches_reference_on_the_same_uniforms(k, channels, dtype, device):
    params = make_params(2, k, channels, 3, 4, dtype, device, log_scales=(-5.0, -1.0))
    uniforms = torch.rand((2, k + channels, 3, 4), generator=generator("u", k)).to(device, dtype)
    uniforms.view(-1)[:3] = torch.tensor([0.0, 1.0, 0.5], dtype=dtype)  # the ends of [0, 1]: mapped inside
    for temperature in (1.0, 0.5):
        sample = fastgen.dmol_sample(params, k, temperature=temperature, uniforms=uniforms)
        expected = reference.dmol_sample(params.double(), k, temperature=temperature, uniforms=uniforms.double())
        assert sample.dtype == dtype and sample.shape == (2, channels, 3, 4)
        assert_close(sample, expected, dtype, "sample")


def test_sample_is_in_range_and_deterministic_per_seed(device):
    params = make_params(2, 3, 3, 4, 4, torch.float32, device, log_scales=(-1.0, 1.0))
    first = fastgen.dmol_sample(params, 3, seed=7)
    assert torch.equal(first, fastgen.dmol_sample(params, 3, seed=7))
    assert not torch.equal(first, fastgen.dmol_sample(params, 3, seed=8))
    assert first.min() >= -1.0 and first.max() <= 1.0
    assert (first.abs() == 1.0).any()  # wide scales: clamped values occur
    torch.manual_seed(3)
    drawn = fastgen.dmol_sample(params, 3)
    torch.manual_seed(3)
    assert torch.equal(drawn, fastgen.dmol_sample(params, 3))  # seed=None follows torch's generator
    strided = params.contiguous(memory_format=torch.channels_last)
    assert torch.equal(fastgen.dmol_sample(strided, 3, seed=7), first)  # draws do not depend on the layout


def test_sample_distribution_of_one_logistic(device):
    """K = 1 grayscale: the samples' mean and standard deviation are the logistic's, s * pi / sqrt(3)."""
    mean, log_scale = 0.2, -3.0
    params = single_component(mean, log_scale, device, torch.float32).expand(1, 3, 64, 64).contiguous()
    samples = fastgen.dmol_sample(params, 1, seed=11).double().flatten()
    std = math.exp(log_scale) * math.pi / math.sqrt(3)
    assert abs(samples.mean().item() - mean) < 4 * std / math.sqrt(samples.numel())
    assert abs(samples.std().item() / std - 1) < 0.05
    cold = fastgen.dmol_sample(params, 1, seed=11, temperature=0.25).double().flatten()
    assert abs(cold.std().item() / (0.25 * std) - 1) < 0.05


def test_sample_mixture_weights_and_channel_conditioning(device):
    """Two components with weights 0.3/0.7 at means -0.5/0.5 and tiny scales; G = mean_G + tanh(c) * R."""
    k, n = 2, 48
    logits = torch.tensor([math.log(0.3), math.log(0.7)])
    blocks = [logits]
    # coefficient blocks of channels R, G, B: G given R (0.8), B given R (-0.4), B given G (0.3)
    for means, coefficient in ((torch.tensor([-0.5, 0.5]), 0.8), (torch.tensor([0.1, -0.2]), -0.4),
                               (torch.tensor([0.0, 0.05]), 0.3)):
        blocks += [means, torch.full((k,), -7.0), torch.full((k,), coefficient)]
    params = torch.cat(blocks).view(1, 10 * k, 1, 1).expand(1, 10 * k, n, n).contiguous().to(device)
    x = fastgen.dmol_sample(params, k, seed=5)
    red = x[:, 0].flatten()
    high = (red - 0.5).abs() < 0.02
    assert ((red + 0.5).abs() < 0.02).logical_or(high).all()
    assert abs(high.double().mean().item() - 0.7) < 4 * math.sqrt(0.21 / n**2)
    # the chosen component's G and B means, shifted by the preceding sub-pixels
    green, blue = x[:, 1].flatten(), x[:, 2].flatten()
    assert ((green - (torch.where(high, -0.2, 0.1) + math.tanh(0.8) * red)).abs() < 0.02).all()
    expected_blue = torch.where(high, 0.05, 0.0) + math.tanh(-0.4) * red + math.tanh(0.3) * green
    assert ((blue - expected_blue).abs() < 0.02).all()


def test_sample_bad_arguments(device):
    params = make_params(1, 2, 3, 2, 2, torch.float32, device)
    with pytest.raises(ValueError, match="uniforms"):
        fastgen.dmol_sample(params, 2, uniforms=torch.rand(1, 2, 2, 2, device=device))
    with pytest.raises(ValueError, match="seed"):
        fastgen.dmol_sample(params, 2, seed=1, uniforms=torch.rand(1, 5, 2, 2, device=device))
    with pytest.raises(ValueError, match="temperature"):
        fastgen.dmol_sample(params, 2, temperature=0.0)
    with pytest.raises(ValueError, match="params"):
        fastgen.dmol_sample(params, 3)
    with pytest.raises(ValueError, match="seed"):
        fastgen.dmol_sample(params, 2, seed=-1)
    empty = fastgen.dmol_sample(params[:0], 2, seed=1)
    assert empty.shape == (0, 3, 2, 2)


def test_reference_backend_runs_the_same_api(device):
    params = make_params(1, 2, 3, 2, 2, torch.float32, device)
    x = make_images(1, 3, 2, 2, device)
    logits = make_logits((1, 3 * 4, 2, 2), torch.float32, device)
    targets = make_targets((1, 3, 2, 2), 4, device)
    with fastgen.use_backend("reference"):
        loss = fastgen.dmol_nll(params, x, 2)
        ce = pixel_ce(logits, targets)
        sample = fastgen.dmol_sample(params, 2, seed=1)
    # the eager float32 formulas: to their own precision
    torch.testing.assert_close(loss.double(), fastgen.dmol_nll(params.double(), x.double(), 2), rtol=1e-4, atol=1e-4)
    assert_close(ce, pixel_ce(logits.double(), targets), torch.float32)
    assert sample.shape == (1, 3, 2, 2) and sample.abs().max() <= 1


@pytest.mark.parametrize("mean_offset", [0.001, 0.02], ids=["inner-bin", "mid-bin-fallback"])
def test_dmol_log_scale_gradient_at_the_clamp_bound(mean_offset, device):
    """At a log-scale of exactly -7 the gradient is passed (the derivative of the unclamped formula), by the
    kernel and by the reference alike, whatever torch.clamp does at its bound. Closed forms, with c = x - mean,
    s = e^-7 and h = 1/255 the half bin: an inner bin, nll = -log(sig((c+h)/s) - sig((c-h)/s)), gives
    d nll/d log_scale = (p sig'(p) - q sig'(q)) / (sig(p) - sig(q)), p = (c+h)/s, q = (c-h)/s; the mid-bin
    fallback, nll = -(z - log_scale - 2 softplus(z) - log(127.5)) with z = c/s, gives 1 - z tanh(z/2)."""
    log_scale = -7.0
    x_value = 2 * 140 / 255 - 1
    mean = x_value - mean_offset
    s = math.exp(log_scale)
    c, h = x_value - mean, 1 / 255
    p, q = scalar((c + h) / s), scalar((c - h) / s)
    delta = torch.sigmoid(p) - torch.sigmoid(q)
    if delta > 1e-5:
        dsig = lambda t: torch.sigmoid(t) * torch.sigmoid(-t)  # noqa: E731
        expected = ((p * dsig(p) - q * dsig(q)) / delta).item()
    else:
        z = scalar(c / s)
        expected = (1 - z * torch.tanh(z / 2)).item()
    assert abs(expected) > 0.1  # a gradient that a zero (torch 2.14's clamp at the bound) cannot pass for
    x = torch.full((1, 1, 1, 1), x_value, dtype=torch.float64, device=device)
    for name, loss in (("fastgen", fastgen.dmol_nll), ("reference", reference.dmol_nll)):
        params = single_component(mean, log_scale, device).requires_grad_()
        (grad,) = torch.autograd.grad(loss(params, x, 1, reduction="sum"), params)
        assert grad[0, 2].item() == pytest.approx(expected, rel=1e-9), name


# ---------------------------------------------------------------------------------------------- issue 16: edges
@pytest.mark.parametrize("as_int", [__import__("numpy").int64, __import__("numpy").int32], ids=str)
def test_numpy_integer_arguments_are_ints(as_int, device):
    """NumPy integers are accepted as ints (converted once, so none reaches a Triton launch)."""
    gen = generator("npint")
    logits = torch.randn(1, 2 * 5, 2, 3, generator=gen).to(device)
    targets = torch.randint(0, 5, (1, 2, 2, 3), generator=gen).to(device)
    assert torch.equal(pixel_ce(logits, targets, levels=as_int(5)),
                       pixel_ce(logits, targets, levels=5))
    params = torch.randn(1, 30, 2, 2, generator=gen).to(device)
    x = (torch.rand(1, 3, 2, 2, generator=gen) * 2 - 1).to(device)
    assert torch.equal(fastgen.dmol_nll(params, x, as_int(3), bits=as_int(5)), fastgen.dmol_nll(params, x, 3, bits=5))
    assert torch.equal(fastgen.dmol_nll(params, x, as_int(3), levels=as_int(17)),
                       fastgen.dmol_nll(params, x, 3, levels=17))
    assert torch.equal(fastgen.dmol_sample(params, as_int(3), seed=as_int(4)), fastgen.dmol_sample(params, 3, seed=4))
    assert fastgen.bits_per_dim(2.0, as_int(4)) == fastgen.bits_per_dim(2.0, 4)


def test_float_integer_arguments_raise_named_errors(device):
    """3.0 is not an int: a TypeError naming the argument (as torch's int arguments), never a Triton crash."""
    logits = torch.randn(1, 6, 2, 2, device=device)
    targets = torch.zeros(1, 2, 2, 2, dtype=torch.long, device=device)
    params = torch.randn(1, 30, 2, 2, device=device)
    x = torch.zeros(1, 3, 2, 2, device=device)
    cases = [
        (lambda: pixel_ce(logits, targets, levels=3.0), "levels"),
        (lambda: fastgen.dmol_nll(params, x, 3.0), "n_mixtures"),
        (lambda: fastgen.dmol_nll(params, x, 3, bits=8.0), "bits"),
        (lambda: fastgen.dmol_nll(params, x, 3, levels=256.0), "levels"),
        (lambda: fastgen.dmol_sample(params, 3.0), "n_mixtures"),
        (lambda: fastgen.dmol_sample(params, 3, seed=1.0), "seed"),
    ]
    for call, name in cases:
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            call()


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("bad", [2**32 + 2, 2**32, -(2**32) + 1, 2**31, 7, -1, -100], ids=str)
def test_unchecked_out_of_range_target_is_never_a_finite_loss(bad, backend, device):
    """check_targets=False: a target outside [0, levels) (compared as int64: 2**32 + 2 is not level 2, -100 is
    not F.cross_entropy's ignore_index) gives a nan loss and a nan gradient at every level of its sub-pixel;
    the other sub-pixels keep their exact terms and gradients, on both backends."""
    levels = 4
    logits = make_logits((2, 3 * levels, 2, 2), torch.float64, device).requires_grad_()
    targets = make_targets((2, 3, 2, 2), levels, device)
    wrong = targets.clone()
    wrong[1, 2, 0, 1] = bad
    with fastgen.use_backend(backend):
        terms = pixel_ce(logits, wrong, reduction="none", check_targets=False)
        (grad,) = torch.autograd.grad(terms.sum(), logits)
        for reduction in ("mean", "sum"):
            assert torch.isnan(pixel_ce(logits, wrong, reduction=reduction, check_targets=False))
        exact = pixel_ce(logits, targets, reduction="none")
        (exact_grad,) = torch.autograd.grad(exact.sum(), logits)
    bad_mask = torch.zeros_like(terms, dtype=torch.bool)
    bad_mask[1, 2, 0, 1] = True
    assert torch.isnan(terms[bad_mask]).all() and torch.equal(terms[~bad_mask], exact[~bad_mask])
    grad_5d, exact_5d = (g.view(2, 3, levels, 2, 2).transpose(1, 2) for g in (grad, exact_grad))  # [B, L, C, H, W]
    assert torch.isnan(grad_5d[1, :, 2, 0, 1]).all()
    keep = ~bad_mask.unsqueeze(1).expand_as(grad_5d)
    assert torch.equal(grad_5d[keep], exact_5d[keep])


def _dmol_mode_of_the_top_component(params, k, channels):
    """The limit temperature -> 0 of dmol_sample: the means of the argmax-logit component, RGB-shifted, clamped."""
    logits, means, _, coefficients = split_mixture_params(params.double().cpu(), k, channels)
    index = logits.argmax(1, keepdim=True).unsqueeze(1).expand(-1, channels, -1, -1, -1)  # [B, C, 1, H, W]
    pick = lambda t: t.gather(2, index).squeeze(2)  # noqa: E731
    mean = pick(means)
    x0 = mean[:, 0].clamp(-1, 1)
    if channels == 1:
        return x0.unsqueeze(1)
    coef = torch.tanh(pick(coefficients))
    x1 = (mean[:, 1] + coef[:, 0] * x0).clamp(-1, 1)
    x2 = (mean[:, 2] + coef[:, 1] * x0 + coef[:, 2] * x1).clamp(-1, 1)
    return torch.stack([x0, x1, x2], 1)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("temperature", [1e-20, 1e-39, 1e-45, 5e-324], ids=str)
@pytest.mark.parametrize("channels", [3, 1])
def test_dmol_sample_tiny_temperature_gives_the_mode(temperature, channels, backend, device):
    """A temperature below the smallest normal float32 samples the limit T -> 0: the mode of the component with
    the largest logit (logits / T overflowed to ties at +-inf before, picking the first positive one)."""
    k = 4
    gen = generator("tiny temperature", channels)
    params = (torch.randn(2, (10 if channels == 3 else 3) * k, 3, 3, generator=gen) * 0.5).to(device)
    params[:, :k] = torch.randn(2, k, 3, 3, generator=gen).abs().to(device) + 0.1  # positive logits: the old ties
    expected = _dmol_mode_of_the_top_component(params, k, channels)
    with fastgen.use_backend(backend):
        for dtype in (torch.float32, torch.float64):
            sample = fastgen.dmol_sample(params.to(dtype), k, seed=3, temperature=temperature)
            torch.testing.assert_close(sample.double().cpu(), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- custom ops
@pytest.mark.parametrize("logits_shape, targets_shape, reduction, needs_grad", [
    ((2, 3 * 4, 2, 3), (2, 3, 2, 3), "mean", True),  # RGB 4-D
    ((1, 4, 3, 2, 3), (1, 3, 2, 3), "none", True),  # 5-D
    ((2, 4, 3, 2), (2, 1, 3, 2), "sum", False),  # grayscale, no gradient: no logsumexp kept
], ids=str)
def test_cross_entropy_custom_ops_pass_opcheck(logits_shape, targets_shape, reduction, needs_grad, device):
    from library_checks import check_opcheck

    logits = make_logits(logits_shape, torch.float32, device).requires_grad_(needs_grad)
    targets = make_targets(targets_shape, 4, device)
    check_opcheck(torch.ops.fastgen.pixel_cross_entropy.default, logits, targets, 4, reduction, needs_grad, True)
    if needs_grad:  # the backward op on its own (a 0-d or a per-sub-pixel upstream gradient)
        _, lse = torch.ops.fastgen.pixel_cross_entropy(logits.detach(), targets, 4, reduction, True, False)
        grad_output = torch.full((), 2.5) if reduction != "none" else random_grad_like(targets.float())
        check_opcheck(torch.ops.fastgen.pixel_cross_entropy_backward.default, logits.detach(), targets, lse,
                      grad_output.to(device), 4, 0.5)


@pytest.mark.parametrize("k, channels, reduction, grad_params, grad_x, channels_last", [
    (2, 3, "mean", True, True, False),
    (2, 3, "none", True, False, True),  # channels-last params: their gradient keeps the layout
    (3, 1, "sum", False, True, False),
    (1, 1, "none", False, False, False),
], ids=str)
def test_dmol_custom_ops_pass_opcheck(k, channels, reduction, grad_params, grad_x, channels_last, device):
    from library_checks import check_opcheck

    params = make_params(2, k, channels, 2, 3, torch.float32, device)
    if channels_last:
        params = params.to(memory_format=torch.channels_last)
    params.requires_grad_(grad_params)
    x = make_images(2, channels, 2, 3, device).requires_grad_(grad_x)
    check_opcheck(torch.ops.fastgen.dmol_nll.default, params, x, k, 256, reduction, grad_params, grad_x)
    _, saved, saved_x = torch.ops.fastgen.dmol_nll(params.detach(), x.detach(), k, 256, reduction, True, True)
    grad_output = torch.full((), 2.5) if reduction != "none" else random_grad_like(x[:, 0].detach())
    check_opcheck(torch.ops.fastgen.dmol_nll_backward.default, saved, saved_x, grad_output.to(device), 0.25,
                  grad_params, grad_x)


@pytest.mark.parametrize("k, channels", [(2, 3), (3, 1)], ids=str)
def test_sample_custom_ops_pass_opcheck(k, channels, device):
    from library_checks import check_opcheck

    params = make_params(1, k, channels, 2, 3, torch.float32, device)
    uniforms = torch.rand((1, k + channels, 2, 3), generator=generator("u", k)).to(device)
    check_opcheck(torch.ops.fastgen.dmol_sample.default, params, None, torch.tensor(7), k, 1.0)
    check_opcheck(torch.ops.fastgen.dmol_sample.default, params, uniforms, torch.tensor(0), k, 0.5)
    check_opcheck(torch.ops.fastgen.dmol_reference_uniforms.default, params, k, 3)


def test_compiles_without_graph_breaks(device):
    from library_checks import check_fullgraph

    logits = make_logits((2, 3 * 4, 2, 3), torch.float32, device).requires_grad_()
    targets = make_targets((2, 3, 2, 3), 4, device)
    params = make_params(2, 2, 3, 2, 3, torch.float32, device).requires_grad_()
    x = make_images(2, 3, 2, 3, device).requires_grad_()

    def losses(logits, targets, params, x):
        return (fastgen.bits_per_dim(pixel_ce(logits, targets)),
                pixel_ce(logits.view(2, 3, 4, 2, 3).transpose(1, 2), targets, reduction="none"),
                fastgen.dmol_nll(params, x, 2), fastgen.dmol_nll(params, x.half(), 2, reduction="none"),
                fastgen.dmol_sample(params, 2, seed=3), fastgen.dmol_sample(params, 2, temperature=0.5,
                                                                            uniforms=torch.sigmoid(params[:, :5])))

    check_fullgraph(losses, logits, targets, params, x)


def test_compiled_sample_draws_its_seed_from_torch(device):
    """Without a seed the compiled op draws one from torch's generator, as eager: the same sample after the same
    torch.manual_seed, a new one on each call."""
    params = make_params(1, 2, 3, 2, 3, torch.float32, device)
    torch._dynamo.reset()
    sample = torch.compile(lambda p: fastgen.dmol_sample(p, 2), fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    first = sample(params)
    torch.manual_seed(1)
    assert torch.equal(first, fastgen.dmol_sample(params, 2))
    assert not torch.equal(sample(params), first)
    # read on the host at launch, the seed would be frozen by a CUDA-graph replay: Inductor keeps the op out
    assert torch.Tag.cudagraph_unsafe in torch.ops.fastgen.dmol_sample.default.tags


def test_compiled_cross_entropy_checks_targets(device):
    logits = make_logits((1, 3 * 4, 2, 2), torch.float32, device)
    targets = make_targets((1, 3, 2, 2), 4, device)
    targets[0, 1, 1, 0] = 4
    torch._dynamo.reset()
    loss = torch.compile(lambda l, t, check: pixel_ce(l, t, check_targets=check), fullgraph=True,
                         backend="aot_eager")
    with pytest.raises(ValueError, match="targets must be in"):
        loss(logits, targets, True)
    assert loss(logits, targets, False).isnan()


def test_reference_backend_compiles_without_graph_breaks(device):
    from library_checks import check_fullgraph

    logits = make_logits((1, 3 * 4, 2, 2), torch.float32, device).requires_grad_()
    targets = make_targets((1, 3, 2, 2), 4, device)
    params = make_params(1, 2, 3, 2, 2, torch.float32, device).requires_grad_()
    x = make_images(1, 3, 2, 2, device)
    with fastgen.use_backend("reference"):
        check_fullgraph(lambda logits, targets, params, x: (
            pixel_ce(logits, targets), fastgen.dmol_nll(params, x, 2),
            fastgen.dmol_sample(params, 2, seed=1)), logits, targets, params, x)


# ---------------------------------------------------------------------------------------------- 4-D layouts
def test_rgb_4d_logits_need_their_layout(device):
    """4-D logits of several channels are read two ways: without logits_layout the op raises, never guesses."""
    logits = make_logits((2, 3 * 5, 2, 3), torch.float64, device)
    targets = make_targets((2, 3, 2, 3), 5, device)
    with pytest.raises(ValueError, match="logits_layout"):
        fastgen.pixel_cross_entropy(logits, targets)
    with pytest.raises(ValueError, match="logits_layout must be one of"):
        fastgen.pixel_cross_entropy(logits, targets, logits_layout="levels-first")
    grey = make_logits((2, 5, 2, 3), torch.float64, device)  # one channel: unambiguous
    assert torch.equal(fastgen.pixel_cross_entropy(grey, targets[:, :1]),
                       fastgen.pixel_cross_entropy(grey.unsqueeze(2), targets[:, :1]))


@pytest.mark.parametrize("layout, view", [("channel-major", (3, 5)), ("level-major", (5, 3))])
def test_4d_layouts_read_as_their_views(layout, view, device):
    """Each layout equals the 5-D logits [B, levels, C, H, W] that its view gives, values and gradients."""
    logits = make_logits((2, 15, 2, 3), torch.float64, device).requires_grad_()
    targets = make_targets((2, 3, 2, 3), 5, device)
    five_d = logits.unflatten(1, view)
    five_d = five_d.transpose(1, 2) if layout == "channel-major" else five_d
    loss = fastgen.pixel_cross_entropy(logits, targets, reduction="sum", logits_layout=layout)
    expected = reference.pixel_cross_entropy(five_d, targets, reduction="sum")
    assert_close(loss, expected, torch.float64)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert_close(grad, expected_grad, torch.float64)
