"""Fused VAE reparameterization + KL: launchers, the autograd Function and the public op."""

from __future__ import annotations

import functools
import math

import torch
import triton

from fastgen import library, reference, seeds
from fastgen.autotune import configs_for
from fastgen.dispatch import backend_for
from fastgen.dtypes import FLOAT_DTYPES, compute_dtype, tl_compute_dtype
from fastgen.kernels import reparameterize_kl as kernels
from fastgen.launch import cdiv, Kernel, plan_cache
from fastgen.reductions import REDUCTIONS, reduce_batch
from fastgen.registry import register_family
from fastgen.validation import (check_choice, check_float_tensor, check_like, check_nonnegative,
                                check_seed)


# Launch space. Each program works on [BLOCK_B, BLOCK_N] tiles of tile_elements(dtype) elements: 512 (4 per
# thread at 4 warps: one 16-byte load per fp32 tensor), or 256 for float64, whose exp calls a slow-path
# subroutine that made ptxas spill with 4 elements per thread. BLOCK_N is the smallest of LATENT_BLOCKS
# that holds a sample's latent dims (so at least a quarter of each tile is live), capped by the tile; BLOCK_B
# fills the rest of the tile with samples. When a batch gives fewer than MIN_PROGRAMS programs (about four
# per SM of an H100/H200), long rows are split over several programs whose partial sums are added after.
LATENT_BLOCKS = (16, 64, 256, 512)
MIN_PROGRAMS = 512

# The family, registered once: its kernels' launch configurations (each kernel launches with its first on
# the interpreter, and is autotuned over them on a GPU when there are several) and its benchmark cases.
FAMILY = register_family(
    "reparameterize_kl", __name__, benchmarks="fastgen.benchmarks.bench_reparameterize_kl",
    configs={
        # Memory-bound tiles of 512 elements, 4 per thread. 1024-element tiles at 4 and 8 warps were tried
        # first: the Philox variants then took up to 255 registers with small spills on sm_90/sm_80, and every
        # extra config doubles the compile check. Add a config here once a GPU measurement shows it pays.
        kernels.reparameterize_kl_forward_kernel: [triton.Config({}, num_warps=4)],
        kernels.reparameterize_kl_backward_kernel: [triton.Config({}, num_warps=4)],
        kernels.reparameterize_kl_column_kernel: [triton.Config({}, num_warps=4)],
    })

_forward_kernel = Kernel(kernels.reparameterize_kl_forward_kernel,
                         key=["n_rows", "n_cols", "BLOCK_N", "HAS_EPS", "HAS_PRIOR"])
_backward_kernel = Kernel(kernels.reparameterize_kl_backward_kernel,
                          key=["n_rows", "n_cols", "BLOCK_N", "HAS_EPS", "GRAD_OF_EPS", "HAS_PRIOR"])
_column_kernel = Kernel(kernels.reparameterize_kl_column_kernel, key=["n_rows", "n_cols", "HAS_PRIOR"])


def tile_elements(dtype: torch.dtype) -> int:
    return 256 if dtype == torch.float64 else 512


@plan_cache
def tile_for(n_cols: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_N) for rows of ``n_cols`` latent dims of ``dtype``."""
    tile = tile_elements(dtype)
    block_n = min(tile, next((b for b in LATENT_BLOCKS if b >= n_cols), LATENT_BLOCKS[-1]))
    return tile // block_n, block_n


@plan_cache
def row_split(n_rows: int, n_cols: int, block_b: int, block_n: int) -> tuple[int, int]:
    """(programs per row block, latent dims per program) so that small batches of long rows fill the GPU."""
    col_blocks = cdiv(n_cols, block_n)
    wanted = max(1, cdiv(MIN_PROGRAMS, cdiv(n_rows, block_b)))
    blocks_per_program = cdiv(col_blocks, min(col_blocks, wanted))
    cols_per_program = blocks_per_program * block_n
    return cdiv(n_cols, cols_per_program), cols_per_program


def _row_views(mu, logvar, eps, prior_mu, prior_logvar):
    """The inputs as [B, N] views (a copy only when a tensor's strides cannot be flattened); an absent
    tensor is replaced by mu's view, a pointer of the right dtype that the kernel never reads."""
    n_rows = mu.shape[0]
    n_cols = math.prod(mu.shape[1:])
    mu2 = mu.reshape(n_rows, n_cols)
    return [mu2] + [mu2 if t is None else t.reshape(n_rows, n_cols) for t in (logvar, eps, prior_mu, prior_logvar)]


def _rkl_forward(mu, logvar, eps, prior_mu, prior_logvar, seed, beta, free_bits):
    """(z, beta * KL per sample [B], the [N] column sums of the KL that free bits needs, or None)."""
    n_rows = mu.shape[0]
    n_cols = math.prod(mu.shape[1:])
    acc_dtype = compute_dtype(mu.dtype)
    z = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    has_eps, has_prior = eps is not None, prior_mu is not None
    if n_rows * n_cols == 0:
        return z, torch.zeros(n_rows, dtype=acc_dtype, device=mu.device), None

    mu2, logvar2, eps2, prior_mu2, prior_logvar2 = _row_views(mu, logvar, eps, prior_mu, prior_logvar)
    column_kl = None
    if free_bits > 0:
        column_kl = _column_kl(mu2, logvar2, prior_mu2, prior_logvar2, has_prior)
    block_b, block_n = tile_for(n_cols, mu.dtype)
    split, cols_per_program = row_split(n_rows, n_cols, block_b, block_n)
    kl = torch.empty((n_rows, split), dtype=acc_dtype, device=mu.device)
    grid = (cdiv(n_rows, block_b), split)
    _forward_kernel[grid](
        mu2, logvar2, eps2, prior_mu2, prior_logvar2,
        column_kl if column_kl is not None else kl, z, kl,
        n_rows, n_cols, cols_per_program, seed if seed is not None else 0, beta, free_bits,
        *mu2.stride(), *logvar2.stride(), *eps2.stride(), *prior_mu2.stride(), *prior_logvar2.stride(),
        HAS_EPS=has_eps, HAS_PRIOR=has_prior, COMPUTE=tl_compute_dtype(mu.dtype), BLOCK_B=block_b, BLOCK_N=block_n,
    )
    return z, (kl.view(n_rows) if split == 1 else kl.sum(1)), column_kl


def _rkl_backward(mu, logvar, eps, prior_mu, prior_logvar, column_kl, grad_z, grad_kl, seed, beta, free_bits,
                  grad_of_eps):
    """(grad_mu, grad_logvar, grad_eps, grad_prior_mu, grad_prior_logvar), each of mu's shape (contiguous);
    grad_eps None unless ``grad_of_eps``, the prior's None without a prior."""
    n_rows = mu.shape[0]
    n_cols = math.prod(mu.shape[1:])
    has_eps, has_prior = eps is not None, prior_mu is not None
    new = lambda: torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)  # noqa: E731
    grad_mu, grad_logvar = new(), new()
    grad_eps = new() if grad_of_eps else None
    grad_prior_mu, grad_prior_logvar = (new(), new()) if has_prior else (None, None)
    if n_rows * n_cols == 0:
        return tuple(g if g is None else g.zero_() for g in
                     (grad_mu, grad_logvar, grad_eps, grad_prior_mu, grad_prior_logvar))

    mu2, logvar2, eps2, prior_mu2, prior_logvar2 = _row_views(mu, logvar, eps, prior_mu, prior_logvar)
    grad_z2 = grad_z.reshape(n_rows, n_cols)
    block_b, block_n = tile_for(n_cols, mu.dtype)
    grid = (cdiv(n_rows, block_b), cdiv(n_cols, block_n))
    _backward_kernel[grid](
        mu2, logvar2, eps2, prior_mu2, prior_logvar2,
        column_kl if column_kl is not None else grad_kl, grad_z2, grad_kl,
        grad_mu, grad_logvar,
        grad_eps if grad_of_eps else grad_mu,
        grad_prior_mu if has_prior else grad_mu,
        grad_prior_logvar if has_prior else grad_mu,
        n_rows, n_cols, seed if seed is not None else 0, beta, free_bits,
        *mu2.stride(), *logvar2.stride(), *eps2.stride(), *prior_mu2.stride(), *prior_logvar2.stride(),
        *grad_z2.stride(), grad_kl.stride(0),
        HAS_EPS=has_eps, GRAD_OF_EPS=grad_of_eps, HAS_PRIOR=has_prior,
        COMPUTE=tl_compute_dtype(mu.dtype), BLOCK_B=block_b, BLOCK_N=block_n,
    )
    return grad_mu, grad_logvar, grad_eps, grad_prior_mu, grad_prior_logvar


class ReparameterizeKL(torch.autograd.Function):
    """(mu, logvar, eps, prior_mu, prior_logvar, seed, beta, free_bits) -> (z, beta * KL per sample).

    ``eps``, ``prior_mu`` and ``prior_logvar`` may be None; the two prior tensors come together, with
    mu's shape (expanded views are fine). The KL is returned in float32 (float64 for float64 inputs).
    Prefer :func:`fastgen.reparameterize_kl`, which validates arguments and picks the backend.
    """

    @staticmethod
    def forward(ctx, mu, logvar, eps, prior_mu, prior_logvar, seed, beta, free_bits):
        z, kl, column_kl = _rkl_forward(mu, logvar, eps, prior_mu, prior_logvar, seed, beta, free_bits)
        ctx.seed, ctx.beta, ctx.free_bits = seed, beta, free_bits
        ctx.save_for_backward(mu, logvar, eps, prior_mu, prior_logvar, column_kl)
        return z, kl

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        mu, logvar, eps, prior_mu, prior_logvar, column_kl = ctx.saved_tensors
        grad_of_eps = eps is not None and ctx.needs_input_grad[2]
        grads = _rkl_backward(mu, logvar, eps, prior_mu, prior_logvar, column_kl, grad_z, grad_kl, ctx.seed,
                              ctx.beta, ctx.free_bits, grad_of_eps)
        return (*grads, None, None, None)


# ---------------------------------------------------------------------------------------------- custom ops
# The same launches as torch.ops.fastgen.* for torch.compile (see fastgen.library). A seed the caller did not
# give is drawn in the graph as a 0-d int64 CPU tensor (``drawn_seed``, from torch's default generator, the
# stream eager's draw reads: under torch.compile's aot_eager backend the same seeds as eager); an explicit
# ``seed`` is an int. The forward op also returns the KL's column sums (free bits; a placeholder otherwise).
@library.custom_op("reparameterize_kl", "(Tensor mu, Tensor logvar, Tensor? eps, Tensor? prior_mu, "
                   "Tensor? prior_logvar, SymInt seed, Tensor? drawn_seed, float beta, float free_bits) "
                   "-> (Tensor, Tensor, Tensor)")
def _rkl_op(mu, logvar, eps, prior_mu, prior_logvar, seed, drawn_seed, beta, free_bits):
    """(z, beta * KL per sample, the KL's column sums or a placeholder)."""
    seed = seeds.seed_value(seed, drawn_seed)
    z, kl, column_kl = _rkl_forward(mu, logvar, eps, prior_mu, prior_logvar, seed, beta,
                                    free_bits)
    return z, kl, library.nothing(mu) if column_kl is None else column_kl


@_rkl_op.register_fake
def _(mu, logvar, eps, prior_mu, prior_logvar, seed, drawn_seed, beta, free_bits):
    n_rows, n_cols = mu.shape[0], math.prod(mu.shape[1:])
    acc = compute_dtype(mu.dtype)
    column_kl = mu.new_empty(n_cols, dtype=acc) if free_bits > 0 and n_rows * n_cols != 0 else library.nothing(mu)
    return mu.new_empty(mu.shape), mu.new_empty(n_rows, dtype=acc), column_kl


@library.custom_op("reparameterize_kl_backward", "(Tensor mu, Tensor logvar, Tensor? eps, Tensor? prior_mu, "
                   "Tensor? prior_logvar, Tensor? column_kl, Tensor grad_z, Tensor grad_kl, SymInt seed, "
                   "Tensor? drawn_seed, float beta, float free_bits, bool grad_of_eps) "
                   "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
def _rkl_backward_op(mu, logvar, eps, prior_mu, prior_logvar, column_kl, grad_z, grad_kl, seed, drawn_seed, beta,
                     free_bits, grad_of_eps):
    """(grad_mu, grad_logvar, grad_eps, grad_prior_mu, grad_prior_logvar), placeholders for those not computed."""
    grads = _rkl_backward(mu, logvar, eps, prior_mu, prior_logvar, column_kl, grad_z, grad_kl,
                          seeds.seed_value(seed, drawn_seed), beta, free_bits, grad_of_eps)
    return tuple(library.nothing(mu) if g is None else g for g in grads)


@_rkl_backward_op.register_fake
def _(mu, logvar, eps, prior_mu, prior_logvar, column_kl, grad_z, grad_kl, seed, drawn_seed, beta, free_bits,
      grad_of_eps):
    computed = (True, True, grad_of_eps, prior_mu is not None, prior_mu is not None)
    return tuple(mu.new_empty(mu.shape) if c else library.nothing(mu) for c in computed)


def _setup_rkl(ctx, inputs, output):
    mu, logvar, eps, prior_mu, prior_logvar, seed, drawn_seed, beta, free_bits = inputs
    ctx.seed, ctx.beta, ctx.free_bits = seed, beta, free_bits
    ctx.save_for_backward(mu, logvar, eps, prior_mu, prior_logvar, output[2] if free_bits > 0 else None, drawn_seed)


def _rkl_op_backward(ctx, grad_z, grad_kl, _grad_column_kl):
    mu, logvar, eps, prior_mu, prior_logvar, column_kl, drawn_seed = ctx.saved_tensors
    grad_of_eps = eps is not None and ctx.needs_input_grad[2]
    grads = torch.ops.fastgen.reparameterize_kl_backward(
        mu, logvar, eps, prior_mu, prior_logvar, column_kl, grad_z, grad_kl, ctx.seed, drawn_seed, ctx.beta,
        ctx.free_bits, grad_of_eps)
    computed = (True, True, grad_of_eps, prior_mu is not None, prior_mu is not None)
    return (*(g if c else None for g, c in zip(grads, computed)), None, None, None, None)


_rkl_op.register_autograd(_rkl_op_backward, setup_context=_setup_rkl)


def _column_kl(mu2, logvar2, prior_mu2, prior_logvar2, has_prior: bool) -> torch.Tensor:
    """[N] batch sums of the elementwise KL (the free-bits rule needs each dim's batch mean)."""
    n_rows, n_cols = mu2.shape
    column_kl = torch.empty(n_cols, dtype=compute_dtype(mu2.dtype), device=mu2.device)
    block_b, block_n = tile_for(n_cols, mu2.dtype)
    _column_kernel[(cdiv(n_cols, block_n),)](
        mu2, logvar2, prior_mu2, prior_logvar2, column_kl, n_rows, n_cols,
        *mu2.stride(), *logvar2.stride(), *prior_mu2.stride(), *prior_logvar2.stride(),
        HAS_PRIOR=has_prior, COMPUTE=tl_compute_dtype(mu2.dtype), BLOCK_B=block_b, BLOCK_N=block_n,
    )
    return column_kl


def _promoted(*tensors):
    """The floating tensors among ``tensors`` cast to their promoted dtype (others, and None, unchanged)."""
    floating = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in floating))
    return [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors]


def reparameterize_kl(mu, logvar, eps=None, *, seed=None, prior_mu=None, prior_logvar=None, beta=1.0,
                      free_bits=0.0, reduction="none"):
    """Sample ``z = mu + exp(logvar / 2) * eps`` and return it with ``beta * KL(q || prior)`` per sample.

    Args:
        mu, logvar: the posterior's mean and log-variance, shape [B, ...] (any float dtype, any strides).
        eps: standard-normal noise of mu's shape. When None it is drawn inside the kernel (Philox) from
            ``seed``, or from a seed taken from torch's default generator (so ``torch.manual_seed`` makes runs
            repeatable); the backward regenerates it instead of storing it.
        seed: Philox seed in [0, 2**31), only without ``eps``.
        prior_mu, prior_logvar: a diagonal Gaussian prior, each broadcastable to mu's shape (a missing one is
            0); default N(0, I). Both receive gradients.
        beta: weight of the KL (>= 0).
        free_bits: IAF free bits (Kingma et al. 2016). With m_j the batch mean of latent dim j's KL, a dim
            with m_j < free_bits counts as exactly free_bits for every sample and passes no gradient:
            ``kl_b = beta * sum_j (free_bits if m_j < free_bits else kl_bj)``, whose batch mean is IAF's
            objective ``beta * sum_j max(free_bits, m_j)``. Each non-batch element is one latent dim.
        reduction: "none" (shape [B]), "sum" or "mean" over the batch.

    Returns:
        ``(z, kl)``: z has mu's shape and dtype; kl is float32 (float64 for float64 inputs), so sums over
        many latent dims do not overflow half precision.

    Under ``torch.autocast`` the tensors may differ in dtype (mu and logvar from a bf16 layer, eps or a prior
    in float32): they are computed in their promoted dtype, as the eager formula's type promotion does, so z
    has that dtype (float32 in that example). Outside autocast the dtypes must match.
    """
    check_float_tensor("mu", mu)
    if torch.is_autocast_enabled(mu.device.type):
        mu, logvar, eps, prior_mu, prior_logvar = _promoted(mu, logvar, eps, prior_mu, prior_logvar)
    if mu.dim() == 0:
        raise ValueError("mu must have a batch dimension: shape [B, ...], got a 0-d tensor")
    check_like("logvar", logvar, "mu", mu)
    if eps is not None:
        check_like("eps", eps, "mu", mu)
    if prior_mu is not None:
        check_like("prior_mu", prior_mu, "mu", mu, broadcast=True)
    if prior_logvar is not None:
        check_like("prior_logvar", prior_logvar, "mu", mu, broadcast=True)
    beta = check_nonnegative("beta", beta)
    free_bits = check_nonnegative("free_bits", free_bits)
    check_choice("reduction", reduction, REDUCTIONS)
    seed = check_seed("seed", seed)
    if eps is not None and seed is not None:
        raise ValueError("seed: pass either eps or seed, not both (seed only seeds the in-kernel noise)")

    if backend_for(mu) == "reference":
        z, kl = reference.reparameterize_kl(mu, logvar, eps, seed=seed, prior_mu=prior_mu,
                                            prior_logvar=prior_logvar, beta=beta, free_bits=free_bits)
        return z, reduce_batch(kl.to(compute_dtype(mu.dtype)), reduction)

    if prior_mu is not None or prior_logvar is not None:  # a missing one is 0: a zero-stride view
        prior_mu = (mu.new_zeros(()) if prior_mu is None else prior_mu).expand(mu.shape)
        prior_logvar = (mu.new_zeros(()) if prior_logvar is None else prior_logvar).expand(mu.shape)
    if library.traced():
        z, kl, _ = torch.ops.fastgen.reparameterize_kl(mu, logvar, eps, prior_mu, prior_logvar,
                                                       *seeds.traced_seed(seed, eps is not None), beta, free_bits)
        return z, reduce_batch(kl, reduction)
    if eps is None and seed is None:
        seed = seeds.draw_seed()
    z, kl = ReparameterizeKL.apply(mu, logvar, eps, prior_mu, prior_logvar, seed, beta, free_bits)
    return z, reduce_batch(kl, reduction)


def kernel_launches():
    """Every kernel configuration the op can launch, for the sm_90/sm_80 compile check."""
    # imported here: `python -m fastgen.compile_check` must not find that module imported by fastgen
    from fastgen.compile_check import KernelLaunch

    flags = {
        kernels.reparameterize_kl_forward_kernel: [
            dict(HAS_EPS=e, HAS_PRIOR=p) for e in (False, True) for p in (False, True)],
        kernels.reparameterize_kl_backward_kernel: [
            dict(HAS_EPS=e, GRAD_OF_EPS=g, HAS_PRIOR=p)
            for e, g in ((False, False), (True, False), (True, True)) for p in (False, True)],
        kernels.reparameterize_kl_column_kernel: [dict(HAS_PRIOR=p) for p in (False, True)],
    }
    for kernel, flag_sets in flags.items():
        for dtype in FLOAT_DTYPES:
            acc = compute_dtype(dtype)
            pointers = {"COLUMN_KL": acc, "KL": acc, "GRAD_KL": acc}
            tiles = sorted({tile_for(n, dtype) for n in LATENT_BLOCKS})
            for (block_b, block_n), config, flag_set in (
                    (t, c, f) for t in tiles for c in configs_for(kernel) for f in flag_sets):
                yield KernelLaunch.build(
                    kernel, dtype, pointers,
                    constexprs=dict(flag_set, COMPUTE=tl_compute_dtype(dtype), BLOCK_B=block_b, BLOCK_N=block_n),
                    num_warps=config.num_warps,
                )
