"""fastgen.reparameterize_kl against the plain-PyTorch reference (run in float64 as the oracle)."""

import math
import zlib

import pytest
import torch

import fastgen
from fastgen import reference
import fastgen.ops.reparameterize_kl as op
from tolerances import TOLERANCES, assert_close

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(3, 37), (2, 4, 5, 7), (1, 5), (5,), (2, 3000), (70, 3)]


def make_inputs(shape, dtype, device, prior=False, eps=True, scale=1.0):
    g = torch.Generator().manual_seed(zlib.crc32(f"{shape} {dtype} {prior}".encode()))
    rand = lambda: (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device, dtype)  # noqa: E731
    inputs = dict(mu=rand(), logvar=rand())
    if eps:
        inputs["eps"] = rand()
    if prior:
        inputs["prior_mu"], inputs["prior_logvar"] = rand(), rand()
    return inputs


def as_float64(inputs):
    return {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in inputs.items()}


def grads_of(z, kl, inputs, grad_z, grad_kl):
    """Gradients of sum(z * grad_z) + sum(kl * grad_kl) w.r.t. every input that requires grad."""
    names = [k for k, v in inputs.items() if v.requires_grad]
    grads = torch.autograd.grad([z, kl], [inputs[k] for k in names], [grad_z, grad_kl])
    return dict(zip(names, grads))


def check_against_reference(inputs, dtype, **kwargs):
    for v in inputs.values():
        v.requires_grad_(True)
    z, kl = fastgen.reparameterize_kl(**inputs, **kwargs)
    ref_inputs = as_float64(inputs)
    z_ref, kl_ref = reference.reparameterize_kl(**ref_inputs, **kwargs)
    assert z.dtype == dtype and z.shape == inputs["mu"].shape
    assert kl.dtype == op.compute_dtype(dtype)
    assert_close(z, z_ref, dtype, "z")
    assert_close(kl, kl_ref, kl.dtype, "kl")
    # grad_output != 1: random weights on both outputs
    grad_z = torch.randn(z.shape, dtype=torch.float64).to(z.device)
    grad_kl = torch.randn(kl.shape, dtype=torch.float64).to(kl.device)
    grads = grads_of(z, kl, inputs, grad_z.to(z.dtype), grad_kl.to(kl.dtype))
    grads_ref = grads_of(z_ref, kl_ref, ref_inputs, grad_z, grad_kl)
    for name, grad in grads.items():
        assert grad.dtype == dtype
        assert_close(grad, grads_ref[name], dtype, f"grad of {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_standard_prior(shape, dtype, device):
    check_against_reference(make_inputs(shape, dtype, device), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 37), (2, 4, 5, 7), (2, 3000)], ids=str)
def test_matches_reference_gaussian_prior(shape, dtype, device):
    check_against_reference(make_inputs(shape, dtype, device, prior=True), dtype, beta=0.7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("prior", [False, True])
def test_matches_reference_free_bits(prior, dtype, device):
    inputs = make_inputs((6, 40), dtype, device, prior=prior)
    with torch.no_grad():  # half of the dims carry almost no KL, so the rule clamps them
        inputs["mu"][:, ::2] *= 0.01
        inputs["logvar"][:, ::2] *= 0.01
        if prior:
            inputs["prior_mu"][:, ::2] = inputs["mu"][:, ::2]
            inputs["prior_logvar"][:, ::2] = inputs["logvar"][:, ::2]
    check_against_reference(inputs, dtype, free_bits=0.25, beta=2.0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions(reduction, device):
    inputs = make_inputs((4, 9), torch.float32, device)
    _, kl = fastgen.reparameterize_kl(**inputs, reduction=reduction)
    _, kl_ref = reference.reparameterize_kl(**as_float64(inputs), reduction=reduction)
    assert kl.shape == kl_ref.shape
    assert_close(kl, kl_ref, torch.float32)


def test_free_bits_rule_is_iaf_objective(device):
    """The batch mean of the per-sample values is IAF's sum_j max(free_bits, mean_b KL_bj)."""
    inputs = make_inputs((8, 12), torch.float64, device)
    _, kl = fastgen.reparameterize_kl(**inputs, free_bits=0.6)
    elementwise = reference.gaussian_kl(inputs["mu"], inputs["logvar"])
    iaf = torch.clamp(elementwise.mean(0), min=0.6).sum()
    assert 0 < (elementwise.mean(0) < 0.6).sum() < 12  # the rule does clamp some dims, not all
    torch.testing.assert_close(kl.mean(), iaf)


# ---------------------------------------------------------------------------------------------- gradcheck
def _gradcheck(fn, inputs, fast_mode=False):
    """float64 gradcheck; fast_mode checks a random projection of the Jacobian, for inputs too large to
    check one element at a time under the interpreter."""
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast_mode)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)], ids=str)
def test_gradcheck_standard_prior_given_noise(shape, device):
    x = make_inputs(shape, torch.float64, device)
    args = [x["mu"].requires_grad_(), x["logvar"].requires_grad_(), x["eps"].requires_grad_()]
    _gradcheck(lambda mu, lv, eps: fastgen.reparameterize_kl(mu, lv, eps, beta=0.5), args)


def test_gradcheck_in_kernel_noise(device):
    x = make_inputs((3, 5), torch.float64, device, eps=False)
    args = [x["mu"].requires_grad_(), x["logvar"].requires_grad_()]
    _gradcheck(lambda mu, lv: fastgen.reparameterize_kl(mu, lv, seed=1234), args)


@pytest.mark.parametrize("eps", [False, True])
def test_gradcheck_gaussian_prior(eps, device):
    x = make_inputs((3, 6), torch.float64, device, prior=True, eps=eps)
    names = list(x)
    _gradcheck(lambda *t: fastgen.reparameterize_kl(**dict(zip(names, t)), seed=None if eps else 7, beta=1.5),
               [x[k].requires_grad_() for k in names], fast_mode=True)


def test_gradcheck_broadcast_prior(device):
    """A prior shared by the batch ([N]) gets its gradient summed over the batch."""
    x = make_inputs((3, 4), torch.float64, device, prior=True)
    prior_mu, prior_logvar = x["prior_mu"][0].clone(), x["prior_logvar"][0].clone()
    args = [x["mu"], x["logvar"], prior_mu, prior_logvar]
    _gradcheck(lambda mu, lv, pm, pl: fastgen.reparameterize_kl(mu, lv, x["eps"], prior_mu=pm, prior_logvar=pl),
               [a.requires_grad_() for a in args])


@pytest.mark.parametrize("prior", [False, True])
def test_gradcheck_free_bits(prior, device):
    x = make_inputs((5, 8), torch.float64, device, prior=prior)
    with torch.no_grad():
        x["mu"][:, :4] *= 0.01
        x["logvar"][:, :4] *= 0.01
    names = list(x)
    _gradcheck(lambda *t: fastgen.reparameterize_kl(**dict(zip(names, t)), free_bits=0.3, reduction="mean"),
               [x[k].requires_grad_() for k in names], fast_mode=True)


def test_gradcheck_split_rows(device):
    """Rows long enough to be split over several programs (partial sums added after the kernel)."""
    n_rows, n_cols = 1, 2 * op.LATENT_BLOCKS[-1] + 5
    assert op.row_split(n_rows, n_cols, *op.tile_for(n_cols, torch.float64))[0] > 1
    x = make_inputs((n_rows, n_cols), torch.float64, device)
    _gradcheck(lambda mu, lv: fastgen.reparameterize_kl(mu, lv, x["eps"]),
               [x["mu"].requires_grad_(), x["logvar"].requires_grad_()], fast_mode=True)


# ---------------------------------------------------------------------------------------------- layouts
def test_non_contiguous_inputs(device):
    base = make_inputs((6, 2, 40), torch.float32, device, prior=True)
    inputs = {k: v[::2, 1, 1::3] for k, v in base.items()}  # strided rows and columns, no copy possible
    assert not inputs["mu"].is_contiguous()
    check_against_reference(inputs, torch.float32, beta=0.3)


def test_transposed_and_channels_last_inputs(device):
    x = make_inputs((7, 5), torch.float32, device)
    check_against_reference({k: v.t().contiguous().t() for k, v in x.items()}, torch.float32)
    y = make_inputs((2, 3, 4, 5), torch.float32, device)
    check_against_reference({k: v.contiguous(memory_format=torch.channels_last) for k, v in y.items()},
                            torch.float32)


def test_expanded_grad_output(device):
    """The gradient of z.sum() arrives as an expanded (all-zero-stride) tensor."""
    x = make_inputs((3, 10), torch.float32, device)
    mu = x["mu"].requires_grad_()
    z, kl = fastgen.reparameterize_kl(mu, x["logvar"], x["eps"])
    (z.sum() + kl.sum()).backward()
    torch.testing.assert_close(mu.grad, 1 + x["mu"].detach())


@pytest.mark.parametrize("shape", [(0, 5), (0,), (3, 0), (2, 0, 4)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_empty(shape, reduction, device):
    x = make_inputs(shape, torch.float32, device)
    mu = x["mu"].requires_grad_()
    z, kl = fastgen.reparameterize_kl(mu, x["logvar"], x["eps"], reduction=reduction)
    z_ref, kl_ref = reference.reparameterize_kl(**as_float64(x), reduction=reduction)
    assert z.shape == z_ref.shape and kl.shape == kl_ref.shape
    torch.testing.assert_close(kl.double(), kl_ref, equal_nan=True)
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == mu.shape


# ---------------------------------------------------------------------------------------------- noise
def test_same_seed_same_z(device):
    mu, logvar = make_inputs((4, 33), torch.float32, device, eps=False).values()
    z1, _ = fastgen.reparameterize_kl(mu, logvar, seed=11)
    z2, _ = fastgen.reparameterize_kl(mu, logvar, seed=11)
    z3, _ = fastgen.reparameterize_kl(mu, logvar, seed=12)
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, z3)


def test_manual_seed_makes_runs_repeatable(device):
    mu, logvar = make_inputs((4, 33), torch.float32, device, eps=False).values()
    torch.manual_seed(5)
    z1, _ = fastgen.reparameterize_kl(mu, logvar)
    z2, _ = fastgen.reparameterize_kl(mu, logvar)
    torch.manual_seed(5)
    z3, _ = fastgen.reparameterize_kl(mu, logvar)
    assert torch.equal(z1, z3) and not torch.equal(z1, z2)


def test_backward_regenerates_the_forward_noise(device):
    """With mu = 0, logvar = 0: z = eps, and d z / d logvar = eps / 2 must use the same eps."""
    zeros = torch.zeros(3, 1500, device=device)
    mu, logvar = zeros.clone().requires_grad_(), zeros.clone().requires_grad_()
    z, kl = fastgen.reparameterize_kl(mu, logvar, seed=99)
    torch.autograd.backward([z, kl], [torch.ones_like(z), torch.zeros_like(kl)])
    torch.testing.assert_close(logvar.grad, 0.5 * z.detach(), rtol=0, atol=0)


def test_no_noise_tensor_is_saved_for_backward(device):
    mu, logvar = (t.requires_grad_() for t in make_inputs((4, 64), torch.float32, device, eps=False).values())
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fastgen.reparameterize_kl(mu, logvar)
    assert sorted(t.data_ptr() for t in saved) == sorted([mu.data_ptr(), logvar.data_ptr()])


def test_noise_is_standard_normal(device):
    zeros = torch.zeros(64, 1024, device=device)
    z, _ = fastgen.reparameterize_kl(zeros, zeros, seed=3)
    z = z.double().flatten()
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())
    assert abs(z.std().item() - 1) < 0.01
    assert abs((z.abs() < 1).double().mean().item() - 0.6827) < 0.01


# ---------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("logvar_value", [-30.0, 30.0, -88.0, 88.0])
@pytest.mark.parametrize("prior", [False, True])
def test_extreme_logvar_finite_where_reference_is(logvar_value, prior, device):
    x = make_inputs((2, 3), torch.float32, device, prior=prior)
    x["logvar"] = torch.full_like(x["logvar"], logvar_value)
    z, kl = fastgen.reparameterize_kl(**x)
    z_ref, kl_ref = reference.reparameterize_kl(**x)  # eager float32: what users run today
    assert torch.isfinite(z).all() >= torch.isfinite(z_ref).all()
    assert torch.isfinite(kl).all() >= torch.isfinite(kl_ref).all()
    assert not torch.isnan(kl).any()
    if abs(logvar_value) <= 30:
        check_against_reference(x, torch.float32)


def test_nan_propagates_per_sample(device):
    x = make_inputs((3, 4), torch.float32, device)
    x["mu"][1, 2] = float("nan")
    z, kl = fastgen.reparameterize_kl(**x)
    z_ref, kl_ref = reference.reparameterize_kl(**x)
    assert torch.equal(torch.isnan(z), torch.isnan(z_ref))
    assert torch.equal(torch.isnan(kl), torch.isnan(kl_ref))
    assert torch.isnan(kl[1]) and torch.isfinite(kl[[0, 2]]).all()


# ---------------------------------------------------------------------------------------------- errors
def _bad_calls(device):
    f = torch.zeros(2, 3, device=device)
    return [
        (dict(mu=f.long(), logvar=f), TypeError, "mu"),
        (dict(mu=f, logvar=f.long()), TypeError, "logvar"),
        (dict(mu=f, logvar=f.double()), TypeError, "logvar"),
        (dict(mu=f, logvar=f[:, :2]), ValueError, "logvar"),
        (dict(mu=f, logvar=f, eps=f[:1]), ValueError, "eps"),
        (dict(mu=f, logvar=f, eps=f.half()), TypeError, "eps"),
        (dict(mu=f, logvar=f, prior_mu=torch.zeros(4, device=device)), ValueError, "prior_mu"),
        (dict(mu=f, logvar=f, prior_logvar=torch.zeros(3, 3, device=device)), ValueError, "prior_logvar"),
        (dict(mu=f, logvar="f"), TypeError, "logvar"),
        (dict(mu=torch.zeros((), device=device), logvar=torch.zeros((), device=device)), ValueError, "mu"),
        (dict(mu=f, logvar=f, beta=-1.0), ValueError, "beta"),
        (dict(mu=f, logvar=f, beta=float("nan")), ValueError, "beta"),
        (dict(mu=f, logvar=f, free_bits=-0.5), ValueError, "free_bits"),
        (dict(mu=f, logvar=f, reduction="avg"), ValueError, "reduction"),
        (dict(mu=f, logvar=f, seed=1.5), TypeError, "seed"),
        (dict(mu=f, logvar=f, seed=2**40), ValueError, "seed"),
        (dict(mu=f, logvar=f, eps=f, seed=3), ValueError, "seed"),
    ]


def test_bad_input_raises_naming_the_argument(device):
    for kwargs, error, name in _bad_calls(device):
        with pytest.raises(error, match=name):
            fastgen.reparameterize_kl(**kwargs)


def test_mismatched_devices_raise(device):
    f = torch.zeros(2, 3, device=device)
    with pytest.raises(ValueError, match="logvar"):
        fastgen.reparameterize_kl(f, f.to("meta"))
    with pytest.raises(ValueError, match="prior_mu"):
        fastgen.reparameterize_kl(f, f, prior_mu=f.to("meta"))


# ---------------------------------------------------------------------------------------------- custom ops
def _op_args(x, seed=0, drawn_seed=None, beta=0.7, free_bits=0.0):
    """The forward op's arguments from make_inputs' tensors (absent ones None)."""
    return (x["mu"], x["logvar"], x.get("eps"), x.get("prior_mu"), x.get("prior_logvar"), seed, drawn_seed, beta,
            free_bits)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("eps, prior", [(True, False), (False, False), (False, True), (True, True)])
def test_custom_ops_pass_opcheck(eps, prior, layout, device):
    from library_checks import check_opcheck

    if layout == "strided":
        x = {k: v[::2, 1, 1::3] for k, v in make_inputs((6, 2, 40), torch.float32, device, prior, eps).items()}
    else:
        x = make_inputs((2, 3, 4, 5), torch.float32, device, prior, eps)
        if layout == "channels_last":
            x = {k: v.contiguous(memory_format=torch.channels_last) for k, v in x.items()}
    for v in x.values():
        v.requires_grad_()
    forward = torch.ops.fastgen.reparameterize_kl.default
    check_opcheck(forward, *_op_args(x, seed=0 if eps else 13))
    check_opcheck(forward, *_op_args(x, seed=0 if eps else 13, free_bits=0.3, beta=2.0))
    if not eps:  # a seed drawn in the graph
        check_opcheck(forward, *_op_args(x, drawn_seed=torch.tensor(21)))
    # the backward op on its own: every combination of the gradients it writes
    z, kl, column_kl = forward(*_op_args({k: v.detach() for k, v in x.items()}, seed=5, free_bits=0.3))
    mu = x["mu"].detach()
    detached = [None if t is None else t.detach() for t in _op_args(x)[:5]]
    check_opcheck(torch.ops.fastgen.reparameterize_kl_backward.default, *detached, column_kl, torch.randn_like(mu),
                  torch.randn_like(kl), 5, None, 0.7, 0.3, eps)


def test_custom_op_opcheck_float64_empty_and_broadcast_prior(device):
    from library_checks import check_opcheck

    forward = torch.ops.fastgen.reparameterize_kl.default
    x = {k: v.requires_grad_() for k, v in make_inputs((3, 6), torch.float64, device, prior=True).items()}
    prior_mu, prior_logvar = (x[k][0].detach().expand(3, 6).requires_grad_() for k in ("prior_mu", "prior_logvar"))
    check_opcheck(forward, x["mu"], x["logvar"], None, prior_mu, prior_logvar, 3, None, 1.0, 0.0)
    empty = {k: v.requires_grad_() for k, v in make_inputs((0, 5), torch.float32, device).items()}
    check_opcheck(forward, *_op_args(empty, free_bits=0.2))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compiles_without_graph_breaks(layout, device):
    from library_checks import check_fullgraph

    x = make_inputs((2, 3, 4, 5), torch.float32, device, prior=True)
    if layout == "channels_last":
        x = {k: v.contiguous(memory_format=torch.channels_last) for k, v in x.items()}
    x = {k: v.requires_grad_() for k, v in x.items()}
    prior_mu = x["prior_mu"][:1].detach().clone().requires_grad_()  # broadcast over the batch

    def sample(mu, logvar, eps, prior_mu, prior_logvar):
        return (*fastgen.reparameterize_kl(mu, logvar, eps, beta=0.5, reduction="mean"),
                *fastgen.reparameterize_kl(mu, logvar, seed=3, prior_mu=prior_mu, prior_logvar=prior_logvar,
                                           free_bits=0.2, reduction="sum"),
                *fastgen.reparameterize_kl(mu, logvar, seed=9, prior_mu=prior_mu))

    check_fullgraph(sample, x["mu"], x["logvar"], x["eps"], prior_mu, x["prior_logvar"])


def test_compiled_draws_the_seeds_eager_draws(device):
    """Without a seed the compiled op draws it from torch's default generator, as eager: with the same
    torch.manual_seed the same z, and the backward regenerates the forward's noise (z = eps for mu = logvar = 0);
    an explicit seed gives eager's z."""
    zeros = torch.zeros(3, 10, device=device)
    sample = lambda mu, logvar, seed=None: fastgen.reparameterize_kl(mu, logvar, seed=seed)[0]  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(sample, fullgraph=True, backend="aot_eager")
    torch.manual_seed(7)
    expected = sample(zeros, zeros), sample(zeros, zeros)
    assert not torch.equal(*expected)
    torch.manual_seed(7)
    for want in expected:
        mu, logvar = zeros.clone().requires_grad_(), zeros.clone().requires_grad_()
        z = compiled(mu, logvar)
        assert torch.equal(z, want)
        z.backward(torch.ones_like(z))
        torch.testing.assert_close(logvar.grad, 0.5 * want, rtol=0, atol=0)
    for seed in (1, 2, 3):
        assert torch.equal(compiled(zeros, zeros, seed), sample(zeros, zeros, seed))
