"""fastgen.gan_d_loss, gan_g_loss and gradient_penalty against the plain-PyTorch reference (float64 oracle)."""

import copy
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import reference
import fastgen.ops.gan_losses as op
from fastgen.gan_kinds import D_KINDS, G_KINDS, PENALTY_KINDS
from tolerances import assert_close

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
# "sum" only weighs the sums differently from "mean": checked in float32 and float64 (the interpreter is slow)
DTYPE_REDUCTIONS = [(d, r) for d in DTYPES for r in REDUCTIONS if r != "sum" or d in (torch.float32, torch.float64)]
# (real shape, fake shape): PatchGAN maps with different batch sizes; one logit per sample against a map
LOGIT_SHAPES = [((3, 1, 4, 5), (4, 1, 4, 5)), ((6, 1), (2, 1, 3, 3))]


def make(shape, dtype, device, key="", scale=3.0):
    g = torch.Generator().manual_seed(zlib.crc32(f"{shape} {dtype} {key}".encode()))
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device, dtype).requires_grad_()


def as_float64(*tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


def random_like(outputs):
    """Upstream gradients != 1, rounded to each output's dtype (the float64 reference gets the same values)."""
    return [torch.randn(o.shape, dtype=torch.float64).to(o.device, o.dtype) for o in outputs]


def check_against_reference(fn, ref_fn, inputs, dtype, reduction):
    """Outputs (float32, or float64 for float64 inputs; shapes as the reference's) and input gradients (input
    dtype) of ``fn`` against ``ref_fn`` in float64 on the same values, with random upstream gradients."""
    outputs = fn(*inputs)
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    inputs64 = as_float64(*inputs)
    expected = ref_fn(*inputs64)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    acc = op.compute_dtype(dtype)
    assert len(outputs) == len(expected)
    for out, exp in zip(outputs, expected):
        assert out.dtype == acc and out.shape == exp.shape
        assert_close(out, exp, acc, "loss")
    if reduction == "none":
        grad_outputs = random_like(outputs)
    else:  # loss * 2.5
        grad_outputs = [torch.full_like(outputs[0], 2.5)]
    grads = torch.autograd.grad(outputs, inputs, grad_outputs)
    expected_grads = torch.autograd.grad(expected, inputs64, [g.double() for g in grad_outputs])
    for grad, exp, x in zip(grads, expected_grads, inputs):
        assert grad.dtype == dtype and grad.shape == x.shape
        assert_close(grad, exp, dtype, "gradient")


# ---------------------------------------------------------------------------------------------- losses on logits
@pytest.mark.parametrize("dtype, reduction", DTYPE_REDUCTIONS, ids=str)
@pytest.mark.parametrize("kind", D_KINDS)
@pytest.mark.parametrize("shapes", LOGIT_SHAPES, ids=str)
def test_d_loss_matches_reference(shapes, kind, dtype, reduction, device):
    real, fake = make(shapes[0], dtype, device, "real"), make(shapes[1], dtype, device, "fake")
    check_against_reference(lambda r, f: fastgen.gan_d_loss(r, f, kind, reduction),
                            lambda r, f: reference.gan_d_loss(r, f, kind, reduction), [real, fake], dtype, reduction)


@pytest.mark.parametrize("dtype, reduction", DTYPE_REDUCTIONS, ids=str)
@pytest.mark.parametrize("kind", G_KINDS)
def test_g_loss_matches_reference(kind, dtype, reduction, device):
    fake = make((3, 1, 4, 5), dtype, device, "fake")
    check_against_reference(lambda f: fastgen.gan_g_loss(f, kind, reduction),
                            lambda f: reference.gan_g_loss(f, kind, reduction), [fake], dtype, reduction)


@pytest.mark.parametrize("real_label", [0.9, 0.75, 0.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["minimax", "ls"])
def test_label_smoothing(kind, dtype, real_label, device):
    """One-sided label smoothing: the reference is F.binary_cross_entropy_with_logits against real_label."""
    real, fake = make((4, 1, 3, 3), dtype, device, "real"), make((4, 1, 3, 3), dtype, device, "fake")
    for reduction in ("mean", "none"):
        check_against_reference(lambda r, f: fastgen.gan_d_loss(r, f, kind, reduction, real_label=real_label),
                                lambda r, f: reference.gan_d_loss(r, f, kind, reduction, real_label=real_label),
                                [real, fake], dtype, reduction)


def test_label_smoothing_is_bce_against_the_label(device):
    real = make((8,), torch.float64, device, "real")
    fake = make((8,), torch.float64, device, "fake")
    terms, _ = fastgen.gan_d_loss(real, fake, reduction="none", real_label=0.9)
    expected = 0.9 * F.softplus(-real) + 0.1 * F.softplus(real)
    torch.testing.assert_close(terms, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("sizes", [(5000, 300), (300, 5000)], ids=str)
def test_large_inputs_add_partial_sums(sizes, dtype, device):
    """Inputs of more than SINGLE_PROGRAM_BLOCKS steps: several programs, partial sums added by torch."""
    assert op.logit_grid(max(sizes), dtype)[0] > 1
    real, fake = make((sizes[0],), dtype, device, "real"), make((sizes[1],), dtype, device, "fake")
    for kind in ("minimax", "hinge"):
        check_against_reference(lambda r, f: fastgen.gan_d_loss(r, f, kind),
                                lambda r, f: reference.gan_d_loss(r, f, kind), [real, fake], dtype, "mean")


def test_non_contiguous_logits(device):
    base = make((6, 2, 5, 7), torch.float32, device, "base")
    real = base[::2, 1:, 1:, ::3]  # no single stride: copied
    fake = base[:, 0, 2, :]  # strided rows: read in place
    transposed = base[:, 0, :, 0].t()
    channels_last = make((3, 1, 4, 4), torch.float32, device).detach().to(memory_format=torch.channels_last)
    channels_last.requires_grad_()
    for r, f in ((real, fake), (transposed, channels_last), (fake, real)):
        for kind in ("minimax", "ls"):
            check_against_reference(lambda a, b: fastgen.gan_d_loss(a, b, kind, "none"),
                                    lambda a, b: reference.gan_d_loss(a, b, kind, "none"), [r, f], torch.float32,
                                    "none")
    check_against_reference(lambda f: fastgen.gan_g_loss(f, reduction="sum"),
                            lambda f: reference.gan_g_loss(f, reduction="sum"), [fake], torch.float32, "sum")


def test_expanded_grad_output(device):
    """The upstream gradient of terms.sum() arrives as an expanded (all-zero-stride) tensor."""
    real, fake = make((3, 1, 2, 2), torch.float32, device, "r"), make((2,), torch.float32, device, "f")
    real_terms, fake_terms = fastgen.gan_d_loss(real, fake, "wgan", "none")
    (real_terms.sum() + 3 * fake_terms.sum()).backward()
    torch.testing.assert_close(real.grad, torch.full_like(real, -1.0))
    torch.testing.assert_close(fake.grad, torch.full_like(fake, 3.0))


def test_only_one_input_needs_a_gradient(device):
    real = make((4, 3), torch.float32, device, "r").detach()
    fake = make((5,), torch.float32, device, "f")
    loss = fastgen.gan_d_loss(real, fake)
    (grad,) = torch.autograd.grad(loss, fake)
    torch.testing.assert_close(grad, torch.sigmoid(fake.detach()) / 5)
    with torch.no_grad():
        torch.testing.assert_close(fastgen.gan_d_loss(real, fake), loss.detach())


def test_double_backward_of_a_logit_loss_raises(device):
    fake = make((4,), torch.float64, device)
    (grad,) = torch.autograd.grad(fastgen.gan_g_loss(fake), fake, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


# ---------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("value", [1e4, -1e4, 88.0, -88.0])
def test_extreme_logits(value, device):
    """float32 logits of +-1e4 and +-88: finite wherever the eager reference is; the saturated limits exact."""
    real = torch.full((3,), value, device=device, requires_grad=True)
    fake = torch.full((2,), -value, device=device, requires_grad=True)
    cases = [(lambda r, f, k=k: fastgen.gan_d_loss(r, f, k, "none"), lambda r, f, k=k: reference.gan_d_loss(
        r, f, k, "none")) for k in D_KINDS]
    cases += [(lambda r, f, k=k: (fastgen.gan_g_loss(r, k, "none"),), lambda r, f, k=k: (reference.gan_g_loss(
        r, k, "none"),)) for k in G_KINDS]
    for fn, ref_fn in cases:
        outputs = fn(real, fake)
        eager = ref_fn(real, fake)  # float32: what users run today
        real64, fake64 = as_float64(real, fake)
        exact = ref_fn(real64, fake64)
        grads = torch.autograd.grad(outputs, [real, fake], [torch.ones_like(o) for o in outputs], allow_unused=True)
        exact_grads = torch.autograd.grad(exact, [real64, fake64], [torch.ones_like(o) for o in exact],
                                          allow_unused=True)
        for out, e, x in zip(outputs, eager, exact):
            assert torch.isfinite(out).all() >= torch.isfinite(e).all()
            if abs(value) == 1e4:  # saturated: the float64 values rounded to float32, exactly
                assert torch.equal(out, x.float()), (out, x)
            else:
                assert_close(out, x, torch.float32)
        for grad, x in zip(grads, exact_grads):
            if grad is not None:
                assert torch.isfinite(grad).all()
                if abs(value) == 1e4:
                    assert torch.equal(grad, x.float()), (grad, x)
                else:
                    assert_close(grad, x, torch.float32)


def test_saturated_bce_terms_keep_their_relative_precision(device):
    """softplus(-x) for a confident real logit is about exp(-x), not 0 (no cancellation in max(x,0) - x)."""
    x = torch.tensor([10.0, 20.0, 40.0, 80.0], device=device)
    terms = fastgen.gan_g_loss(x, "nonsaturating", "none")
    torch.testing.assert_close(terms, F.softplus(-x.double()).float(), rtol=1e-5, atol=0)
    x.requires_grad_()
    (grad,) = torch.autograd.grad(fastgen.gan_g_loss(x, "nonsaturating", "sum"), x)
    torch.testing.assert_close(grad, -torch.sigmoid(-x.detach().double()).float(), rtol=1e-5, atol=0)


def test_nan_propagates_like_the_reference(device):
    real = torch.tensor([0.5, float("nan"), -1.0], device=device)
    fake = torch.tensor([float("nan"), 2.0], device=device)
    for kind in D_KINDS:
        for out, exp in zip(fastgen.gan_d_loss(real, fake, kind, "none"), reference.gan_d_loss(real, fake, kind,
                                                                                             "none")):
            assert torch.equal(torch.isnan(out), torch.isnan(exp)), kind


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", [((0,), (3,)), ((2, 0), (0, 1)), ((4,), (0, 2))], ids=str)
def test_empty_logits(shapes, reduction, device):
    """Empty tensors behave like the reference: the mean of an empty set is nan, its sum 0."""
    real, fake = make(shapes[0], torch.float32, device, "r"), make(shapes[1], torch.float32, device, "f")
    for kind in D_KINDS:
        out = fastgen.gan_d_loss(real, fake, kind, reduction)
        exp = reference.gan_d_loss(*as_float64(real, fake), kind, reduction)
        outs, exps = (out, exp) if reduction == "none" else ((out,), (exp,))
        for o, e in zip(outs, exps):
            assert o.shape == e.shape
            torch.testing.assert_close(o.double(), e, equal_nan=True)
        grads = torch.autograd.grad(outs, [real, fake], [torch.ones_like(o) for o in outs])
        assert [g.shape for g in grads] == [real.shape, fake.shape]
    out = fastgen.gan_g_loss(real, reduction=reduction)
    torch.testing.assert_close(out.double(), reference.gan_g_loss(real.double(), reduction=reduction), equal_nan=True)


# ---------------------------------------------------------------------------------------------- gradcheck
def _gradcheck(fn, inputs, fast_mode=False):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast_mode)


@pytest.mark.parametrize("kind", D_KINDS)
def test_gradcheck_d_loss(kind, device):
    real, fake = make((2, 1, 1, 2), torch.float64, device, "r"), make((3,), torch.float64, device, "f")
    label = 0.9 if kind in ("minimax", "ls") else 1.0
    for reduction in REDUCTIONS:
        _gradcheck(lambda r, f: fastgen.gan_d_loss(r, f, kind, reduction, real_label=label), [real, fake])


@pytest.mark.parametrize("kind", G_KINDS)
def test_gradcheck_g_loss(kind, device):
    fake = make((2, 1, 1, 2), torch.float64, device)
    for reduction in REDUCTIONS:
        _gradcheck(lambda f: fastgen.gan_g_loss(f, kind, reduction), [fake])


# ---------------------------------------------------------------------------------------------- gradient penalty
PENALTY_SHAPES = [(4, 3, 5, 5), (3,), (1, 3000)]


@pytest.mark.parametrize("dtype, reduction", DTYPE_REDUCTIONS, ids=str)
@pytest.mark.parametrize("kind", PENALTY_KINDS)
@pytest.mark.parametrize("shape", PENALTY_SHAPES, ids=str)
def test_penalty_matches_reference(shape, kind, dtype, reduction, device):
    grads = make(shape, dtype, device, "g", scale=0.3)
    check_against_reference(lambda g: fastgen.gradient_penalty(g, kind, 2.5, reduction),
                            lambda g: reference.gradient_penalty(g, kind, 2.5, reduction), [grads], dtype, reduction)


def test_penalty_rows_split_over_programs(device):
    n_rows, n_cols = 2, 3 * op.COLUMN_BLOCKS[-1] + 5
    assert op.row_split(n_rows, n_cols, *op.tile_for(n_cols, torch.float32))[0] > 1
    grads = make((n_rows, n_cols), torch.float32, device, scale=0.05)
    for kind in PENALTY_KINDS:
        check_against_reference(lambda g: fastgen.gradient_penalty(g, kind, reduction="none"),
                                lambda g: reference.gradient_penalty(g, kind, reduction="none"), [grads],
                                torch.float32, "none")


def test_penalty_norm_is_per_sample(device):
    grads = torch.zeros(3, 2, 2, device=device, dtype=torch.float64)
    grads[0, 0, 0], grads[1, 1, 1], grads[2] = 3.0, 0.5, 1.0  # norms 3, 0.5, 2
    penalty = fastgen.gradient_penalty(grads, "wgan-gp", gamma=1.0, reduction="none")
    torch.testing.assert_close(penalty, torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64, device=device))
    r1 = fastgen.gradient_penalty(grads, "r1", gamma=2.0, reduction="none")
    torch.testing.assert_close(r1, torch.tensor([9.0, 0.25, 4.0], dtype=torch.float64, device=device))


def test_penalty_non_contiguous_and_channels_last(device):
    base = make((4, 3, 6, 5), torch.float32, device, scale=0.2)
    channels_last = base.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert op._row_view(channels_last)[0].data_ptr() == channels_last.data_ptr()  # a view, not a copy
    for grads in (base[::2, :, 1:, ::2], base.transpose(1, 3), channels_last):
        for kind in PENALTY_KINDS:
            check_against_reference(lambda g: fastgen.gradient_penalty(g, kind, reduction="none"),
                                    lambda g: reference.gradient_penalty(g, kind, reduction="none"), [grads],
                                    torch.float32, "none")
    (grad,) = torch.autograd.grad(fastgen.gradient_penalty(channels_last), channels_last)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_wgan_gp_at_zero_gradient_is_finite(device):
    grads = torch.zeros(3, 4, dtype=torch.float64, device=device)
    grads[1] = 0.5
    grads.requires_grad_()
    penalty = fastgen.gradient_penalty(grads, "wgan-gp", gamma=10.0, reduction="none")
    torch.testing.assert_close(penalty[0], torch.tensor(10.0, dtype=torch.float64, device=device))
    (grad,) = torch.autograd.grad(penalty.sum(), grads, retain_graph=True)
    assert torch.equal(grad[0], torch.zeros(4, dtype=torch.float64, device=device))
    (grad2,) = torch.autograd.grad(penalty.sum(), grads, create_graph=True)  # the differentiable backward
    assert torch.isfinite(grad2).all() and torch.equal(grad2[0], grad[0])
    (second,) = torch.autograd.grad(grad2.sum(), grads)
    assert torch.isfinite(second).all()


@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_gradcheck_and_gradgradcheck_penalty(kind, device):
    grads = make((2, 2, 2), torch.float64, device, scale=0.5)
    for reduction in REDUCTIONS:
        fn = lambda g: fastgen.gradient_penalty(g, kind, 1.5, reduction)  # noqa: E731
        _gradcheck(fn, [grads])
        assert torch.autograd.gradgradcheck(fn, [grads], eps=1e-6, atol=1e-5, rtol=1e-4)


def test_both_backward_paths_agree(device):
    """The kernel backward (plain backward) and the torch-op backward (create_graph=True) give one gradient."""
    grads = make((5, 3, 4), torch.float32, device, scale=0.4)
    for kind in PENALTY_KINDS:
        for reduction in REDUCTIONS:
            out = fastgen.gradient_penalty(grads, kind, 3.0, reduction)
            weight = torch.randn(out.shape, device=device)
            (kernel_grad,) = torch.autograd.grad(out, grads, weight, retain_graph=True)
            (torch_grad,) = torch.autograd.grad(out, grads, weight, create_graph=True)
            torch.testing.assert_close(kernel_grad, torch_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 3, 2), (0,), (3, 0), (2, 0, 4)], ids=str)
def test_empty_penalty(shape, reduction, device):
    grads = make(shape, torch.float32, device)
    for kind in PENALTY_KINDS:
        out = fastgen.gradient_penalty(grads, kind, reduction=reduction)
        exp = reference.gradient_penalty(grads.double(), kind, reduction=reduction)
        assert out.shape == exp.shape
        torch.testing.assert_close(out.double(), exp, equal_nan=True)
        (grad,) = torch.autograd.grad(out, grads, torch.ones_like(out))
        assert grad.shape == grads.shape


class TinyDiscriminator(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 1, 2, stride=2)  # PatchGAN-style [B, 1, 2, 2] logits

    def forward(self, x):
        return self.head(F.leaky_relu(self.conv(x), 0.2))


@pytest.mark.parametrize("penalty_kind", PENALTY_KINDS)
def test_discriminator_step_with_penalty_matches_reference(penalty_kind, device):
    """A D step as StyleGAN2-ADA / WGAN-GP write it: the penalty's grads come from autograd.grad(create_graph=
    True), loss.backward() goes through the penalty's backward and PyTorch's double backward of D."""
    torch.manual_seed(0)
    d = TinyDiscriminator().double().to(device)
    real = torch.randn(3, 3, 4, 4, dtype=torch.float64, device=device)
    fake = torch.randn(2, 3, 4, 4, dtype=torch.float64, device=device)

    def step(module, losses):
        module.zero_grad()
        if penalty_kind == "r1":  # R1 on real samples
            x = real.clone().requires_grad_()
        else:  # WGAN-GP on interpolates
            alpha = torch.linspace(0.2, 0.8, 2, dtype=torch.float64, device=device).view(2, 1, 1, 1)
            x = (alpha * real[:2] + (1 - alpha) * fake).requires_grad_()
        logits = module(x)
        (grads,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        d_kind = "minimax" if penalty_kind == "r1" else "wgan"
        loss = losses.gan_d_loss(module(real), module(fake), d_kind) + losses.gradient_penalty(grads, penalty_kind,
                                                                                               gamma=1.5)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.parameters()]

    loss, grads = step(d, fastgen)
    loss_ref, grads_ref = step(copy.deepcopy(d), reference)
    torch.testing.assert_close(loss, loss_ref)
    assert all(g.abs().max() > 0 for g in grads[:3])  # (the head's bias gets none from a WGAN loss)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


# ---------------------------------------------------------------------------------------------- launches, backend
def test_launch_counts(device):
    from fastgen.benchmarks.harness import count_launches

    def forward_backward(fn, *inputs):
        grad_output = torch.tensor(1.5, device=device)
        return lambda: torch.autograd.grad(fn(*inputs), inputs, grad_output)

    real, fake = make((64,), torch.float32, device, "r"), make((64,), torch.float32, device, "f")
    assert count_launches(lambda: fastgen.gan_d_loss(real, fake))[0] == 1  # one program writes the loss
    assert count_launches(forward_backward(fastgen.gan_d_loss, real, fake))[0] == 2
    big = make((5000,), torch.float32, device)
    assert count_launches(lambda: fastgen.gan_g_loss(big))[0] == 2  # partial sums + torch's sum
    assert count_launches(forward_backward(fastgen.gan_g_loss, big))[0] == 3
    grads = make((4, 3, 8, 8), torch.float32, device)
    assert count_launches(lambda: fastgen.gradient_penalty(grads))[0] == 2  # row sums, finish
    assert count_launches(forward_backward(fastgen.gradient_penalty, grads))[0] == 3


def test_reference_backend_returns_the_same_dtypes(device):
    real, fake = make((4,), torch.float16, device, "r"), make((3,), torch.float16, device, "f")
    with fastgen.use_backend("reference"):
        loss = fastgen.gan_d_loss(real, fake)
        terms = fastgen.gan_g_loss(fake, reduction="none")
        penalty = fastgen.gradient_penalty(real.view(2, 2), reduction="none")
    assert loss.dtype == terms.dtype == penalty.dtype == torch.float32
    assert_close(loss, fastgen.gan_d_loss(real, fake).double(), torch.float32)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_raises_naming_the_argument(device):
    f = torch.zeros(2, 3, device=device)
    calls = [
        (lambda: fastgen.gan_d_loss(f.long(), f), TypeError, "real_logits"),
        (lambda: fastgen.gan_d_loss(f, f.long()), TypeError, "fake_logits"),
        (lambda: fastgen.gan_d_loss(f, f.double()), TypeError, "fake_logits"),
        (lambda: fastgen.gan_d_loss(f, f.to("meta")), ValueError, "fake_logits"),
        (lambda: fastgen.gan_d_loss(f, "f"), TypeError, "fake_logits"),
        (lambda: fastgen.gan_d_loss(f, f, kind="softplus"), ValueError, "kind"),
        (lambda: fastgen.gan_d_loss(f, f, reduction="avg"), ValueError, "reduction"),
        (lambda: fastgen.gan_d_loss(f, f, real_label=1.1), ValueError, "real_label"),
        (lambda: fastgen.gan_d_loss(f, f, real_label=-0.1), ValueError, "real_label"),
        (lambda: fastgen.gan_d_loss(f, f, real_label=float("nan")), ValueError, "real_label"),
        (lambda: fastgen.gan_d_loss(f, f, real_label="0.9"), TypeError, "real_label"),
        (lambda: fastgen.gan_d_loss(f, f, kind="hinge", real_label=0.9), ValueError, "real_label"),
        (lambda: fastgen.gan_g_loss(f.int()), TypeError, "fake_logits"),
        (lambda: fastgen.gan_g_loss(f, kind="minimax"), ValueError, "kind"),
        (lambda: fastgen.gan_g_loss(f, reduction=None), ValueError, "reduction"),
        (lambda: fastgen.gradient_penalty(f.long()), TypeError, "grads"),
        (lambda: fastgen.gradient_penalty(torch.zeros((), device=device)), ValueError, "grads"),
        (lambda: fastgen.gradient_penalty(f, kind="r2"), ValueError, "kind"),
        (lambda: fastgen.gradient_penalty(f, gamma=-1.0), ValueError, "gamma"),
        (lambda: fastgen.gradient_penalty(f, gamma=math.inf), ValueError, "gamma"),
        (lambda: fastgen.gradient_penalty(f, reduction="batchmean"), ValueError, "reduction"),
    ]
    for call, error, name in calls:
        with pytest.raises(error, match=name):
            call()


# ---------------------------------------------------------------------------------------------- custom ops
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_custom_ops_pass_opcheck(device, reduction):
    from library_checks import check_opcheck

    real, fake = make((6,), torch.float32, device, "r"), make((3, 2), torch.float32, device, "f")
    check_opcheck(torch.ops.fastgen.gan_d_loss.default, real, fake, "minimax", reduction, 0.9, True, True)
    check_opcheck(torch.ops.fastgen.gan_d_loss.default, real, fake, "hinge", reduction, 1.0, False, True)
    check_opcheck(torch.ops.fastgen.gan_g_loss.default, fake, "nonsaturating", reduction, True)
    check_opcheck(torch.ops.fastgen.gradient_penalty.default, fake, "wgan-gp", 10.0, reduction)


def test_compiles_without_graph_breaks(device):
    from library_checks import check_fullgraph

    real, fake = make((6,), torch.float32, device, "r"), make((3, 2), torch.float32, device, "f")

    def losses(real, fake):
        d_terms = fastgen.gan_d_loss(real, fake, "ls", reduction="none", real_label=0.9)
        return (fastgen.gan_d_loss(real, fake), fastgen.gan_g_loss(fake, "hinge", "sum"), *d_terms,
                fastgen.gradient_penalty(fake, "r1", 2.0))

    check_fullgraph(losses, real, fake)


# ---------------------------------------------------------------------------------------------- issue 16: edges
INF = float("inf")
LIMIT_LOGITS = [-INF, -1e4, 0.0, 1e4, INF]


def _softplus_limit(x: float) -> float:
    return x if x == INF else 0.0 if x == -INF else math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _sigmoid_limit(x: float) -> float:
    return math.exp(-math.log1p(math.exp(-x))) if x >= 0 else math.exp(x - math.log1p(math.exp(x)))


def _limits(kind: str, role: str, t: float = 1.0):
    """(term, d term / dx) of one element as the mathematics gives them, at every x of LIMIT_LOGITS."""
    def term(x):
        if kind in ("minimax", "nonsaturating", "saturating"):
            if role == "real":  # t softplus(-x) + (1 - t) softplus(x), a zero coefficient dropping its term
                value = (t * _softplus_limit(-x) if t else 0.0) + ((1 - t) * _softplus_limit(x) if t != 1 else 0.0)
                return value, (1 - t) * _sigmoid_limit(x) - t * _sigmoid_limit(-x)
            if kind == "nonsaturating":
                return _softplus_limit(-x), -_sigmoid_limit(-x)
            sign = -1.0 if kind == "saturating" else 1.0
            return sign * _softplus_limit(x), sign * _sigmoid_limit(x)
        if kind == "hinge":
            if role == "real":
                return max(1.0 - x, 0.0), -1.0 if 1.0 - x > 0 else 0.0
            if role == "fake":
                return max(1.0 + x, 0.0), 1.0 if 1.0 + x > 0 else 0.0
            return -x, -1.0
        if kind == "wgan":
            return (-x, -1.0) if role != "fake" else (x, 1.0)
        target = t if role == "real" else 1.0 if role == "g" else 0.0  # ls
        return 0.5 * (x - target) ** 2, x - target
    values, grads = zip(*(term(x) for x in LIMIT_LOGITS))
    return torch.tensor(values, dtype=torch.float64), torch.tensor(grads, dtype=torch.float64)


def _assert_limits(out, grad, expected, expected_grad, what):
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-6, atol=0, equal_nan=False, msg=what)
    torch.testing.assert_close(grad.double().cpu(), expected_grad, rtol=1e-6, atol=0, equal_nan=False,
                               msg=lambda m: f"{what} gradient: {m}")


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_infinite_logits_give_the_limits(backend, dtype, device):
    """Every term and gradient at logits of +-inf (and +-1e4) is the mathematical limit: softplus(-inf) = 0,
    softplus(inf) = inf, gradient 0 on the saturated side, for every D and G kind, on both backends."""
    x = torch.tensor(LIMIT_LOGITS, dtype=dtype, device=device)
    with fastgen.use_backend(backend):
        for kind in D_KINDS:
            for label in ((1.0, 0.9, 0.0) if kind in ("minimax", "ls") else (1.0,)):
                real, fake = x.clone().requires_grad_(), x.clone().requires_grad_()
                real_terms, fake_terms = fastgen.gan_d_loss(real, fake, kind, "none", label)
                grad_real, grad_fake = torch.autograd.grad(real_terms.sum() + fake_terms.sum(), [real, fake])
                _assert_limits(real_terms, grad_real, *_limits(kind, "real", label), f"D {kind} real t={label}")
                _assert_limits(fake_terms, grad_fake, *_limits(kind, "fake"), f"D {kind} fake")
        for kind in G_KINDS:
            fake = x.clone().requires_grad_()
            terms = fastgen.gan_g_loss(fake, kind, "none")
            (grad,) = torch.autograd.grad(terms.sum(), fake)
            _assert_limits(terms, grad, *_limits(kind, "g"), f"G {kind}")


@pytest.mark.parametrize("kind, fake, expected", [("minimax", -INF, 0.0), ("minimax", INF, INF)])
def test_infinite_fake_logit_in_a_reduced_d_loss(kind, fake, expected, device):
    """gan_d_loss(real, fake=-inf) is the real part alone (no nan), with fake=+inf it is inf; gradients finite."""
    real = torch.tensor([0.0, 2.0], device=device, requires_grad=True)
    fake_logits = torch.tensor([fake, fake], device=device, requires_grad=True)
    loss = fastgen.gan_d_loss(real, fake_logits, kind)
    real_part = F.softplus(-real.detach().double()).mean().item()
    assert loss.item() == pytest.approx(real_part + expected)
    grad_real, grad_fake = torch.autograd.grad(loss, [real, fake_logits])
    assert torch.isfinite(grad_real).all() and torch.isfinite(grad_fake).all()
    assert torch.equal(grad_fake, torch.full_like(grad_fake, 0.0 if fake < 0 else 0.5))


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_penalty_nan_row_gives_a_nan_row_gradient(kind, create_graph, device):
    """A nan in one sample's gradient: wgan-gp's norm is nan, so its whole row of the gradient is nan (nan in,
    nan out, not the finite entries zeroed); r1's gradient gamma * g is nan at the nan only. Other rows exact."""
    grads = torch.tensor([[1.0, float("nan"), 2.0], [3.0, 4.0, 0.0]], dtype=torch.float64, device=device)
    grads.requires_grad_()
    (grad,) = torch.autograd.grad(fastgen.gradient_penalty(grads, kind, 2.0, "sum"), grads,
                                  create_graph=create_graph)
    with fastgen.use_backend("reference"):
        ref = grads.detach().cpu().requires_grad_()
        (expected,) = torch.autograd.grad(fastgen.gradient_penalty(ref, kind, 2.0, "sum"), ref)
    torch.testing.assert_close(grad.detach().cpu(), expected, equal_nan=True)
    if kind == "wgan-gp":
        assert torch.isnan(grad[0]).all()
    else:
        assert torch.isnan(grad[0]).tolist() == [False, True, False]
    assert torch.isfinite(grad[1]).all()
