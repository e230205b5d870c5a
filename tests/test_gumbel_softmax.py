"""fastgen.gumbel_softmax against the plain-PyTorch reference (run in float64 as the oracle).

The kernels draw their noise with Philox, a stream torch does not have: ``gumbel_noise`` returns the noise the
kernel adds for a seed, and the reference takes it as ``noise``, so values and gradients are compared exactly;
statistics tests check the sampled distribution itself.
"""

import math
import zlib

import pytest
import torch
import triton
import triton.language as tl

import fastgen
from fastgen import reference
import fastgen.kernels.gumbel_softmax as kernels
import fastgen.ops.gumbel_softmax as op
from fastgen.ops.gumbel_softmax import gumbel_noise
from tolerances import assert_close

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (shape, dim): one row block, classes on a middle dim (two row groups, no copy; in the second, programs' rows
# cross a group boundary), a single row, classes on the first dim, rows longer than one block (two passes)
CASES = [((3, 37), -1), ((2, 4, 5, 7), 1), ((3, 5, 37), 1), ((5,), 0), ((70, 3), 0), ((2, 1500), -1)]


def make_logits(shape, dtype, device, scale=2.0):
    g = torch.Generator().manual_seed(zlib.crc32(f"{shape} {dtype}".encode()))
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device, dtype)


def check_against_reference(logits, dtype, *, dim=-1, tau=0.7, hard=False, seed=None, noise=None):
    """fastgen (in-kernel noise from ``seed``, or the given ``noise``) against the float64 reference with the
    same noise: values, and gradients for a random grad_output (rounded to ``dtype`` for both sides)."""
    logits = logits.detach().requires_grad_()
    y = fastgen.gumbel_softmax(logits, tau, hard, dim=dim, seed=seed, noise=noise)
    g = gumbel_noise(logits, dim=dim, seed=seed) if noise is None else noise
    logits64 = logits.detach().double().requires_grad_()
    y_ref = reference.gumbel_softmax(logits64, tau, hard, dim=dim, noise=g.double())
    assert y.dtype == dtype and y.shape == logits.shape
    assert_close(y, y_ref, dtype, "y")
    grad_y = torch.randn(y.shape, dtype=torch.float64).to(y.device, dtype)
    (grad,) = torch.autograd.grad(y, logits, grad_y)
    (grad_ref,) = torch.autograd.grad(y_ref, logits64, grad_y.double())
    assert grad.dtype == dtype
    assert_close(grad, grad_ref, dtype, "grad of logits")
    return y


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, dim", CASES, ids=str)
def test_matches_reference_with_the_kernels_noise(shape, dim, dtype, device):
    logits = make_logits(shape, dtype, device)
    check_against_reference(logits, dtype, dim=dim, seed=17)
    check_against_reference(logits, dtype, dim=dim, seed=17, hard=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, dim", [((3, 37), -1), ((2, 1500), -1)], ids=str)
def test_matches_reference_given_noise(shape, dim, dtype, device):
    logits = make_logits(shape, dtype, device)
    noise = reference.sample_gumbel(logits.double()).to(dtype)
    check_against_reference(logits, dtype, dim=dim, noise=noise, tau=1.3)
    check_against_reference(logits, dtype, dim=dim, noise=noise, tau=1.3, hard=True)


def test_given_noise_gets_the_logits_gradient(device):
    logits = make_logits((4, 6), torch.float32, device).requires_grad_()
    noise = gumbel_noise(logits, seed=3).requires_grad_()
    y = fastgen.gumbel_softmax(logits, 0.5, noise=noise)
    assert torch.equal(y, fastgen.gumbel_softmax(logits, 0.5, seed=3))  # the same noise, in or out of the kernel
    y.backward(torch.randn_like(y))
    assert torch.equal(noise.grad, logits.grad) and noise.grad.data_ptr() != logits.grad.data_ptr()


# ---------------------------------------------------------------------------------------------- hard samples
@pytest.mark.parametrize("shape", [(6, 10), (3, 1500)], ids=str)
def test_hard_is_one_hot_with_the_soft_gradient(shape, device):
    logits = make_logits(shape, torch.float32, device).requires_grad_()
    y_hard = fastgen.gumbel_softmax(logits, 0.5, True, seed=8)
    y_soft = fastgen.gumbel_softmax(logits, 0.5, False, seed=8)
    assert set(y_hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y_hard.sum(-1), torch.ones(shape[0], device=device))
    assert torch.equal(y_hard.argmax(-1), y_soft.argmax(-1))
    grad_y = torch.randn_like(y_hard)
    assert torch.equal(torch.autograd.grad(y_hard, logits, grad_y)[0], torch.autograd.grad(y_soft, logits, grad_y)[0])


def test_hard_without_gradient_gives_the_same_sample(device):
    logits = make_logits((5, 7), torch.float32, device).requires_grad_()
    with torch.no_grad():
        y_no_grad = fastgen.gumbel_softmax(logits, hard=True, seed=4)
    assert torch.equal(y_no_grad, fastgen.gumbel_softmax(logits, hard=True, seed=4))
    assert torch.equal(y_no_grad, fastgen.gumbel_softmax(logits.detach(), hard=True, seed=4))


# ---------------------------------------------------------------------------------------------- gradcheck
def _gradcheck(fn, inputs, fast_mode=False):
    """float64 gradcheck: the op is deterministic for a fixed seed (or fixed noise)."""
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast_mode)


@pytest.mark.parametrize("shape, dim, fast_mode", [((3, 5), -1, False), ((2, 3, 4), 1, True)], ids=str)
def test_gradcheck_in_kernel_noise(shape, dim, fast_mode, device):
    logits = make_logits(shape, torch.float64, device, scale=1.0).requires_grad_()
    _gradcheck(lambda x: fastgen.gumbel_softmax(x, 0.6, dim=dim, seed=21), [logits], fast_mode=fast_mode)


def test_gradcheck_given_noise(device):
    logits = make_logits((3, 6), torch.float64, device, scale=1.0).requires_grad_()
    noise = reference.sample_gumbel(logits.detach()).requires_grad_()
    _gradcheck(lambda x, g: fastgen.gumbel_softmax(x, 1.7, noise=g), [logits, noise], fast_mode=True)


def test_gradcheck_long_rows(device):
    """Rows longer than one float64 block: the backward's two passes."""
    n_cols = op.max_block_n(torch.float64) + 37
    assert op.tile_for(n_cols, torch.float64)[1] < n_cols
    logits = make_logits((2, n_cols), torch.float64, device, scale=1.0).requires_grad_()
    _gradcheck(lambda x: fastgen.gumbel_softmax(x, 0.9, seed=2), [logits], fast_mode=True)


# ---------------------------------------------------------------------------------------------- layouts
def test_non_contiguous_logits(device):
    base = make_logits((6, 2, 40), torch.float32, device)
    logits = base[::2, 1, 1::3]  # strided rows and classes, no copy possible
    assert not logits.is_contiguous()
    check_against_reference(logits, torch.float32, seed=6)
    check_against_reference(logits, torch.float32, seed=6, hard=True)


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_every_dim_of_channels_last_and_permuted_tensors(dim, device):
    x = make_logits((2, 3, 4, 5), torch.float32, device)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    check_against_reference(channels_last, torch.float32, dim=dim, seed=9)
    y = fastgen.gumbel_softmax(channels_last, seed=9, dim=dim)
    block_r = op.tile_for(x.shape[dim], torch.float32)[0]
    if op.row_layout([channels_last, y], dim, block_r) is not None:  # no copy
        assert y.stride() == channels_last.stride()  # the output keeps a dense input's layout
    # three row groups whatever the dim: the op copies the logits to rows contiguous along dim first
    scrambled = x.permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2)
    check_against_reference(scrambled, torch.float32, dim=dim, seed=9)


def test_row_layouts_without_copies():
    x = torch.empty(2, 3, 4, 5)
    assert op.row_layout([x], 1) == (40, 3, 20, [(60, 1, 20)])  # NCHW channels: rows (batch, pixel)
    assert op.row_layout([x], 3) == (24, 5, 24, [(0, 5, 1)])
    assert op.row_layout([x.transpose(0, 1)], 0) == (40, 3, 20, [(60, 1, 20)])
    assert op.row_layout([x.permute(2, 0, 3, 1)], 3) is None  # rows over (c, n, w): three groups
    assert op.row_layout([x], 1, block_r=32) is None  # 20 inner rows: a program of 32 would cross two groups
    assert op.row_layout([x], 3, block_r=32) is not None  # one group


def test_short_inner_row_groups_are_copied(device):
    logits = make_logits((4, 5, 3), torch.float32, device)  # classes on dim 1: 3 inner rows per batch element
    assert op.row_layout([logits], 1, op.tile_for(5, torch.float32)[0]) is None
    check_against_reference(logits, torch.float32, dim=1, seed=5)


def test_noise_follows_the_element_not_the_memory_layout(device):
    """Philox offsets are element indices in the dim-last order: the sample does not depend on strides."""
    x = make_logits((7, 5), torch.float32, device)
    y = fastgen.gumbel_softmax(x, seed=12)
    assert torch.equal(fastgen.gumbel_softmax(x.t().contiguous().t(), seed=12), y)
    assert torch.equal(fastgen.gumbel_softmax(x.t(), dim=0, seed=12), y.t())


def test_expanded_grad_output(device):
    """A loss (y * w).sum() with w of shape [C] sends an expanded (row stride 0) gradient."""
    logits = make_logits((4, 9), torch.float64, device).requires_grad_()
    w = torch.randn(9, dtype=torch.float64, device=device)
    y = fastgen.gumbel_softmax(logits, seed=1)
    (y * w).sum().backward()
    y_ref = reference.gumbel_softmax(logits, noise=gumbel_noise(logits, seed=1))
    (expected,) = torch.autograd.grad((y_ref * w).sum(), logits)
    assert_close(logits.grad, expected, torch.float64)


@pytest.mark.parametrize("shape, dim", [((0, 5), -1), ((3, 0), -1), ((2, 0, 4), 0), ((0,), 0)], ids=str)
@pytest.mark.parametrize("hard", [False, True])
def test_empty_like_torch(shape, dim, hard, device):
    logits = torch.zeros(shape, device=device, requires_grad=True)
    try:
        expected = torch.nn.functional.gumbel_softmax(logits, hard=hard, dim=dim)
    except IndexError:  # torch's max over an empty dim: fastgen's own IndexError, on every backend
        for backend in ("triton", "reference"):
            with fastgen.use_backend(backend), pytest.raises(IndexError, match="hard=True needs at least one class"):
                fastgen.gumbel_softmax(logits, hard=hard, dim=dim)
        return
    y = fastgen.gumbel_softmax(logits, hard=hard, dim=dim)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    y.sum().backward()
    assert logits.grad.shape == logits.shape


@pytest.mark.parametrize("hard", [False, True])
def test_zero_dim_logits(hard, device):
    logits = torch.tensor(3.0, device=device, requires_grad=True)
    y = fastgen.gumbel_softmax(logits, hard=hard, seed=0)
    assert y.shape == () and y.item() == 1.0
    y.backward()
    assert logits.grad.item() == 0.0


# ---------------------------------------------------------------------------------------------- noise
def test_same_seed_same_sample(device):
    logits = make_logits((4, 33), torch.float32, device)
    y = fastgen.gumbel_softmax(logits, seed=11)
    assert torch.equal(y, fastgen.gumbel_softmax(logits, seed=11))
    assert not torch.equal(y, fastgen.gumbel_softmax(logits, seed=12))


def test_manual_seed_makes_runs_repeatable(device):
    logits = make_logits((4, 33), torch.float32, device)
    torch.manual_seed(5)
    y1 = fastgen.gumbel_softmax(logits)
    y2 = fastgen.gumbel_softmax(logits)
    torch.manual_seed(5)
    y3 = fastgen.gumbel_softmax(logits)
    assert torch.equal(y1, y3) and not torch.equal(y1, y2)


@pytest.mark.parametrize("hard", [False, True])
def test_no_noise_or_logits_saved_for_backward(hard, device):
    """The backward reads the soft sample only: the op's own output, or (hard) one extra tensor."""
    logits = make_logits((4, 64), torch.float32, device).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fastgen.gumbel_softmax(logits, hard=hard)
    assert len(saved) == 1 and saved[0].shape == logits.shape
    assert (saved[0].data_ptr() == y.data_ptr()) == (not hard)
    assert saved[0].data_ptr() != logits.data_ptr()


def test_argmax_frequencies_match_softmax_probabilities(device):
    """P(argmax of a sample = k) = softmax(logits)[k] for every tau: a chi-square test over 2048 rows."""
    probs = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4], dtype=torch.float64)
    n = 2048
    logits = probs.log().float().to(device).expand(n, 5)  # one row, expanded: row stride 0
    for tau, seed in ((1.0, 101), (0.3, 102)):
        counts = fastgen.gumbel_softmax(logits, tau, hard=True, seed=seed).sum(0).double().cpu()
        expected = n * probs
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < 18.5, f"tau={tau}: counts {counts.tolist()}, expected {expected.tolist()}"  # p = 0.001, 4 dof


def test_noise_is_standard_gumbel(device):
    g = gumbel_noise(torch.zeros(2**16, device=device), seed=3).double().cpu()
    n = g.numel()
    assert abs(g.mean().item() - 0.5772156649) < 5 * math.sqrt(math.pi**2 / 6 / n)  # Euler's constant
    assert abs(g.var().item() - math.pi**2 / 6) < 0.05
    cdf = torch.exp(-torch.exp(-g.sort().values))
    ks = (cdf - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov, p = 0.01
    assert -2.83 < g.min().item() and g.max().item() < 16.7


@triton.jit
def _noise_from_bits_kernel(BITS, NOISE, n, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    bits = tl.load(BITS + offsets, mask=offsets < n, other=0).to(tl.uint32, bitcast=True)
    tl.store(NOISE + offsets, kernels._gumbel_from_bits(bits, COMPUTE), mask=offsets < n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_noise_is_finite_for_every_random_integer(dtype, device):
    """The extreme 32-bit draws (u = 2**-24 and 1 - 2**-24) give finite noise, -log(-log(u)) to rounding."""
    words = [0, 1, 255, 256, 511, 2**23, 2**31 - 1, 2**31, 2**32 - 512, 2**32 - 257, 2**32 - 256, 2**32 - 1]
    bits = torch.tensor([w - 2**32 if w >= 2**31 else w for w in words], dtype=torch.int32, device=device)
    noise = torch.empty(len(words), dtype=dtype, device=device)
    _noise_from_bits_kernel[(1,)](bits, noise, len(words), COMPUTE=tl.float64 if dtype == torch.float64 else
                                  tl.float32, BLOCK=16)
    u = torch.tensor([((w >> 8) | 1) * 2.0**-24 for w in words], dtype=torch.float64)
    assert 0 < u.min() and u.max() < 1
    expected = -torch.log(-torch.log(u))
    assert torch.isfinite(noise).all()
    torch.testing.assert_close(noise.double().cpu(), expected, rtol=2e-6 if dtype == torch.float32 else 1e-12,
                               atol=0)


# ---------------------------------------------------------------------------------------------- numerics
def test_no_nan_or_inf_over_many_draws(device):
    """131072 draws (two calls of 64 rows of 1024 classes, one block each) on extreme logits (±1e4, ±88, 0) at
    a low temperature: every row a finite distribution."""
    values = torch.tensor([1e4, -1e4, 88.0, -88.0, 0.0, 1e4, -88.0, 3.0], device=device)
    logits = values.repeat(64, 128)
    y = fastgen.gumbel_softmax(logits, 0.05, seed=77)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(64, device=device))
    hard = fastgen.gumbel_softmax(logits, 0.05, True, seed=78)
    assert torch.isfinite(hard).all() and torch.equal(hard.sum(-1), torch.ones(64, device=device))
    assert (logits[hard.bool()] == 1e4).all()  # the winner is one of the 1e4 logits


@pytest.mark.parametrize("value", [1e4, 88.0, -88.0, -1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_extreme_logits(value, dtype, device):
    logits = make_logits((3, 20), torch.float32, device)
    logits[:, ::3] = value
    logits = logits.to(dtype)
    y = fastgen.gumbel_softmax(logits, 0.5, seed=31)
    assert torch.isfinite(y).all()
    y_ref = reference.gumbel_softmax(logits.double(), 0.5, noise=gumbel_noise(logits, seed=31).double())
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=5e-3)  # |logits| * ulp moves y in fp32


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_masked_classes(device):
    """-inf logits (classes ruled out) get probability 0 and are never sampled; an all -inf row is nan, as torch."""
    logits = make_logits((4, 1100), torch.float32, device)  # two blocks
    logits[:, 1::2] = float("-inf")
    logits[3] = float("-inf")
    y = check_against_reference(logits[:3], torch.float32, seed=4)
    assert (y[:, 1::2] == 0).all()
    hard = fastgen.gumbel_softmax(logits, hard=True, seed=4)
    assert (hard[:3, 1::2] == 0).all() and torch.equal(hard[:3].sum(-1), torch.ones(3, device=device))
    assert torch.isnan(fastgen.gumbel_softmax(logits, seed=4)[3]).all() and torch.isnan(hard[3]).all()


def test_float64_temperature_is_not_rounded_to_float32(device):
    logits = make_logits((2, 8), torch.float64, device)
    check_against_reference(logits, torch.float64, tau=0.1 + 1e-9, seed=3)


# ---------------------------------------------------------------------------------------------- dispatch
def test_reference_backend_draws_torch_noise(device):
    logits = make_logits((3, 8), torch.float32, device)
    with fastgen.use_backend("reference"):
        y = fastgen.gumbel_softmax(logits, 0.5, seed=3)
        noise = gumbel_noise(logits, seed=3)
    expected = reference.gumbel_softmax(logits, 0.5, noise=reference.sample_gumbel(logits, seed=3))
    assert torch.equal(y, expected) and torch.equal(noise, reference.sample_gumbel(logits, seed=3))


# ---------------------------------------------------------------------------------------------- errors
def _bad_calls(device):
    f = torch.zeros(2, 3, device=device)
    return [
        (dict(logits=f.long()), TypeError, "logits"),
        (dict(logits=[1.0, 2.0]), TypeError, "logits"),
        (dict(logits=f, tau=0.0), ValueError, "tau"),
        (dict(logits=f, tau=-1.0), ValueError, "tau"),
        (dict(logits=f, tau=float("nan")), ValueError, "tau"),
        (dict(logits=f, tau=float("inf")), ValueError, "tau"),
        (dict(logits=f, tau="1"), TypeError, "tau"),
        (dict(logits=f, tau=True), TypeError, "tau"),
        (dict(logits=f, hard=1), TypeError, "hard"),
        (dict(logits=f, dim=2), ValueError, "dim"),
        (dict(logits=f, dim=-3), ValueError, "dim"),
        (dict(logits=f, dim=1.0), TypeError, "dim"),
        (dict(logits=f, dim=True), TypeError, "dim"),
        (dict(logits=torch.zeros((), device=device), dim=1), ValueError, "dim"),
        (dict(logits=f, noise=f[:1]), ValueError, "noise"),
        (dict(logits=f, noise=f.double()), TypeError, "noise"),
        (dict(logits=f, noise=f.to("meta")), ValueError, "noise"),
        (dict(logits=f, seed=1.5), TypeError, "seed"),
        (dict(logits=f, seed=-1), ValueError, "seed"),
        (dict(logits=f, seed=2**31), ValueError, "seed"),
        (dict(logits=f, noise=f, seed=3), ValueError, "seed"),
    ]


def test_bad_input_raises_naming_the_argument(device):
    for kwargs, error, name in _bad_calls(device):
        with pytest.raises(error, match=name):
            fastgen.gumbel_softmax(**kwargs)


def test_dim_is_keyword_only(device):
    """torch's fourth positional argument is eps: a positional dim would be a silent mistake."""
    with pytest.raises(TypeError):
        fastgen.gumbel_softmax(torch.zeros(2, 3, device=device), 1.0, False, 1e-10)


def test_nan_logit_makes_its_row_nan_as_torch(device):
    logits = make_logits((3, 6), torch.float32, device)
    logits[1, 2] = float("nan")
    for hard in (False, True):
        y = fastgen.gumbel_softmax(logits, hard=hard, seed=2)
        expected = reference.gumbel_softmax(logits, hard=hard, noise=gumbel_noise(logits, seed=2))
        assert torch.equal(torch.isnan(y), torch.isnan(expected))
        assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


# ---------------------------------------------------------------------------------------------- custom ops
@pytest.mark.parametrize("shape, dim, layout", [((3, 37), 1, "rows"), ((2, 3, 4, 5), 1, "channels_last"),
                                                ((4, 5, 3), 1, "copied"), ((6, 40), 1, "strided")], ids=str)
@pytest.mark.parametrize("hard", [False, True])
def test_custom_ops_pass_opcheck(shape, dim, layout, hard, device):
    from library_checks import check_opcheck

    logits = make_logits(shape, torch.float32, device)
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        logits = make_logits((12, 80), torch.float32, device)[::2, 1::2]
    assert (layout == "copied") == (op.row_layout([logits], dim, op.tile_for(shape[dim], torch.float32)[0]) is None)
    noise = gumbel_noise(logits, dim=dim, seed=3).to(logits.dtype)
    logits.requires_grad_()
    gumbel = torch.ops.fastgen.gumbel_softmax.default
    check_opcheck(gumbel, logits, None, 5, None, 0.7, hard, dim, True)
    check_opcheck(gumbel, logits, noise.requires_grad_(), 0, None, 1.3, hard, dim, True)
    check_opcheck(gumbel, logits, None, 0, torch.tensor(9), 0.7, hard, dim, True)  # a seed drawn in the graph
    check_opcheck(gumbel, logits.detach(), None, 5, None, 0.7, hard, dim, False)  # no soft sample kept
    y_soft = fastgen.gumbel_softmax(logits.detach(), 0.7, dim=dim, seed=5)
    check_opcheck(torch.ops.fastgen.gumbel_softmax_backward.default, y_soft, torch.randn_like(y_soft), 0.7, dim)
    check_opcheck(torch.ops.fastgen.gumbel_noise.default, logits.detach(), dim, 5, None)


def test_gumbel_noise_op_passes_opcheck_on_0d_and_float64(device):
    from library_checks import check_opcheck

    check_opcheck(torch.ops.fastgen.gumbel_noise.default, torch.tensor(1.0, device=device), 0, 2, None)
    check_opcheck(torch.ops.fastgen.gumbel_noise.default, make_logits((3, 4), torch.float64, device), 0, 0,
                  torch.tensor(4))


@pytest.mark.parametrize("layout", ["rows", "channels_last"])
def test_compiles_without_graph_breaks(layout, device):
    from library_checks import check_fullgraph

    logits = make_logits((2, 3, 4, 5), torch.float32, device)
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    noise = gumbel_noise(logits, dim=1, seed=3).requires_grad_()

    def samples(logits, noise):
        return (fastgen.gumbel_softmax(logits, 0.7, seed=4), fastgen.gumbel_softmax(logits, 0.5, True, dim=1, seed=4),
                fastgen.gumbel_softmax(logits, 1.3, dim=1, noise=noise), gumbel_noise(logits, dim=2, seed=8))

    check_fullgraph(samples, logits.requires_grad_(), noise)


def test_compiled_draws_the_seeds_eager_draws(device):
    """Without a seed the compiled op draws it from torch's default generator, as eager: with the same
    torch.manual_seed, the same samples; an explicit seed gives eager's sample."""
    logits = make_logits((3, 7), torch.float32, device)
    sample = lambda x, seed=None: (fastgen.gumbel_softmax(x, 0.8, seed=seed), gumbel_noise(x))  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(sample, fullgraph=True, backend="aot_eager")
    for fn in (sample, compiled):
        torch.manual_seed(7)
        first, second = fn(logits), fn(logits)
        if fn is sample:
            expected = first, second
        for got, want in zip(first + second, expected[0] + expected[1]):
            assert torch.equal(got, want)
    assert not torch.equal(expected[0][0], expected[1][0])
    for seed in (1, 2, 3):
        assert torch.equal(compiled(logits, seed)[0], fastgen.gumbel_softmax(logits, 0.8, seed=seed))


# ---------------------------------------------------------------------------------------------- issue 16: edges
@pytest.mark.parametrize("as_int", [__import__("numpy").int64, __import__("numpy").int32], ids=str)
def test_numpy_integer_arguments_are_ints(as_int, device):
    logits = make_logits((2, 3, 5), torch.float32, device)
    assert torch.equal(fastgen.gumbel_softmax(logits, dim=as_int(1), seed=as_int(3)),
                       fastgen.gumbel_softmax(logits, dim=1, seed=3))
    assert torch.equal(gumbel_noise(logits, dim=as_int(1), seed=as_int(3)), gumbel_noise(logits, dim=1, seed=3))


def test_float_integer_arguments_raise_named_errors(device):
    logits = make_logits((2, 3), torch.float32, device)
    for kwargs, name in ((dict(dim=1.0), "dim"), (dict(seed=3.0), "seed")):
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            fastgen.gumbel_softmax(logits, **kwargs)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("tau", [1e-30, 1e-39, 1e-45, 5e-324], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tiny_tau_gives_the_argmax_limit(tau, dtype, backend, device):
    """tau below the smallest normal float32 (and logits whose (logits + g) / tau overflows): the sample is the
    limit tau -> 0, the one-hot of argmax(logits + g), with a finite (zero) gradient, in one- and two-pass
    rows, soft and hard, on both backends."""
    for n in (7, 1100):  # one block; two passes
        logits = make_logits((3, n), dtype, device, scale=30.0).requires_grad_()
        noise = gumbel_noise(logits, seed=5).to(dtype)
        expected = torch.nn.functional.one_hot((logits.detach() + noise).argmax(-1), n).to(dtype)
        with fastgen.use_backend(backend):
            for hard in (False, True):
                y = fastgen.gumbel_softmax(logits, tau, hard, noise=noise)
                assert torch.equal(y.detach(), expected), (n, hard)
                (grad,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), logits)
                assert torch.equal(grad, torch.zeros_like(grad)), (n, hard)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_empty_rows_hard_raise_an_index_error_naming_the_dim(backend, device):
    """An empty row has no argmax: hard=True raises fastgen's own IndexError (F.gumbel_softmax raises an
    IndexError from torch's max); soft samples of empty rows, and hard samples of no rows, are empty."""
    with fastgen.use_backend(backend):
        with pytest.raises(IndexError, match=r"hard=True needs at least one class along dim 1, got logits of "
                                             r"shape \(3, 0\)"):
            fastgen.gumbel_softmax(torch.zeros(3, 0, device=device), hard=True)
        assert fastgen.gumbel_softmax(torch.zeros(3, 0, device=device)).shape == (3, 0)
        assert fastgen.gumbel_softmax(torch.zeros(0, 4, device=device), hard=True).shape == (0, 4)
