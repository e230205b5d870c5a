"""Gumbel-softmax with in-kernel Philox noise: launchers, the autograd Function and the public op."""

from __future__ import annotations

import itertools
import math
import numbers

import torch
import triton

from fastgen import library, reference, seeds
from fastgen.autotune import configs_for
from fastgen.dispatch import backend_for
from fastgen.dtypes import FLOAT_DTYPES, compute_dtype, tl_compute_dtype
from fastgen.kernels import gumbel_softmax as kernels
from fastgen.launch import cdiv, Kernel, plan_cache
from fastgen.registry import register_family
from fastgen.validation import check_float_tensor, check_int, check_like, check_seed


# Launch space. A program works on [BLOCK_R, BLOCK_N] tiles: BLOCK_N is the smallest of COLUMN_BLOCKS that holds
# a row (capped at MAX_BLOCK_N), BLOCK_R fills a tile of tile_elements(dtype) with rows: 512 elements (4 per
# thread at 4 warps), 256 for float64, a single row when BLOCK_N is larger. A row of at most BLOCK_N classes is
# one pass from registers; a longer one takes two passes over BLOCK_N steps (online max/sum, then the
# normalized write), its noise regenerated from the same Philox offsets. The compile check's register report
# chose the tiles: with contiguous rows (stride 1 along the classes) 1024-element tiles of many short rows took
# up to 140 registers and spilled, 512-element tiles stay under 70; Philox and two logs per element make the
# masked lanes of a half-empty block cost compute, hence the factor-2 step 256 -> 512 -> 1024.
COLUMN_BLOCKS = (16, 64, 256, 512, 1024)
MAX_ROWS = 2**31 - 1024  # the kernels number rows (not elements) in int32, one tile past the last row included
NOISE_BLOCK = 1024  # elements per program of gumbel_noise_kernel

# The family, registered once: its kernels' launch configurations (each kernel launches with its first on
# the interpreter, and is autotuned over them on a GPU when there are several) and its benchmark cases.
FAMILY = register_family(
    "gumbel_softmax", __name__, benchmarks="fastgen.benchmarks.bench_gumbel_softmax",
    configs={
        # Gumbel-softmax rows: 512-element tiles (256 in float64; one row of up to 1024), 4 elements per thread;
        # Philox and two logs per element, then a row softmax. Add configs once a GPU measurement shows they pay.
        kernels.gumbel_softmax_forward_kernel: [triton.Config({}, num_warps=4)],
        kernels.gumbel_softmax_backward_kernel: [triton.Config({}, num_warps=4)],
        kernels.gumbel_noise_kernel: [triton.Config({}, num_warps=4)],
    })

_forward_kernel = Kernel(kernels.gumbel_softmax_forward_kernel, key=["n_cols", "BLOCK_N", "HARD"])
_backward_kernel = Kernel(kernels.gumbel_softmax_backward_kernel, key=["n_cols", "BLOCK_N"])
_noise_kernel = Kernel(kernels.gumbel_noise_kernel, key=[])


def tile_elements(dtype: torch.dtype) -> int:
    return 256 if dtype == torch.float64 else 512


def max_block_n(dtype: torch.dtype) -> int:
    return 512 if dtype == torch.float64 else 1024


@plan_cache
def tile_for(n_cols: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_N) for rows of ``n_cols`` classes of ``dtype``."""
    blocks = [b for b in COLUMN_BLOCKS if b <= max_block_n(dtype)]
    block_n = next((b for b in blocks if b >= n_cols), blocks[-1])
    return max(1, tile_elements(dtype) // block_n), block_n


def row_layout(tensors: list[torch.Tensor], dim: int, block_r: int = 1):
    """The tensors (of one shape) as [R, N] rows along ``dim``: (n_rows, n_cols, n_inner, strides), with
    ``strides[i] = (outer, inner, n)`` of tensor i and row r = (r // n_inner, r % n_inner), or None when the
    dims other than ``dim`` do not merge into two row groups in every tensor, or the inner group of two has
    fewer than ``block_r`` rows (a program's rows must cross at most one group boundary): then the caller copies.

    Adjacent dims merge when every tensor steps over them as over one dim (stride[a] == stride[b] * size[b]),
    so a contiguous tensor always fits (the dims before ``dim``, the dims after it) and so do most transposed,
    channels-last, sliced and expanded (stride 0) views; rows are numbered in the dims' order either way.
    """
    shape = tensors[0].shape
    groups: list[list[int]] = []
    for d in (d for d in range(len(shape)) if d != dim and shape[d] != 1):
        if groups and all(t.stride(groups[-1][-1]) == t.stride(d) * shape[d] for t in tensors):
            groups[-1].append(d)
        else:
            groups.append([d])
    if len(groups) > 2:
        return None
    groups = [[]] * (2 - len(groups)) + groups  # an empty group: one row, stride 0
    n_inner = math.prod(shape[d] for d in groups[1])
    if groups[0] and n_inner < block_r:
        return None
    n_rows = math.prod(shape[d] for d in groups[0]) * n_inner
    strides = [tuple(t.stride(g[-1]) if g else 0 for g in groups) + (t.stride(dim),) for t in tensors]
    return n_rows, shape[dim], n_inner, strides


def _rows_contiguous(t: torch.Tensor, dim: int) -> torch.Tensor:
    """A copy of ``t`` (same shape) whose rows along ``dim`` are contiguous in memory: one row group."""
    return t.movedim(dim, -1).contiguous().movedim(-1, dim)


def _forward_layout(x, g, dim, block_r):
    """(x, g, y, layout): the inputs and the uninitialised output y as the kernel reads them; copies of x and g
    with contiguous rows (one row group) and a y like them when their strides do not merge into two row groups."""
    y = torch.empty_like(x)
    layout = row_layout([x, y] + ([g] if g is not None else []), dim, block_r)
    if layout is None:  # copies with contiguous rows: one row group
        x = _rows_contiguous(x, dim)
        g = g if g is None else _rows_contiguous(g, dim)
        y = torch.empty_like(x)
        layout = row_layout([x, y] + ([g] if g is not None else []), dim, block_r)
    return x, g, y, layout


def _backward_layout(y_soft, grad_y, dim, block_r):
    """(y_soft, grad_y, grad_logits, layout) as the backward kernel reads them (copies as in _forward_layout)."""
    grad_logits = torch.empty_like(y_soft)
    layout = row_layout([y_soft, grad_y, grad_logits], dim, block_r)
    if layout is None:
        y_soft, grad_y = _rows_contiguous(y_soft, dim), _rows_contiguous(grad_y, dim)
        grad_logits = torch.empty_like(y_soft)
        layout = row_layout([y_soft, grad_y, grad_logits], dim, block_r)
    return y_soft, grad_y, grad_logits, layout


def _gumbel_forward(logits, noise, seed, tau, hard, dim, keep_soft):
    """(y, the soft sample written beside a hard y when ``keep_soft``, else None)."""
    block_r, block_n = tile_for(logits.shape[dim], logits.dtype)
    x, g, y, (n_rows, n_cols, n_inner, strides) = _forward_layout(logits, noise, dim, block_r)
    write_soft = hard and keep_soft
    y_soft = torch.empty_like(y) if write_soft else y  # Y's strides
    _forward_kernel[(cdiv(n_rows, block_r),)](
        x, x if g is None else g, y, y_soft,
        n_rows, n_cols, n_inner, seed if seed is not None else 0, tau, int(write_soft), int(g is not None),
        *strides[0], *(strides[0] if g is None else strides[2]), *strides[1],
        HARD=hard, COMPUTE=tl_compute_dtype(x.dtype), BLOCK_R=block_r, BLOCK_N=block_n,
    )
    return y, (y_soft if write_soft else None)


def _gumbel_backward(y_soft, grad_y, tau, dim):
    """grad_logits of a sample whose soft sample is ``y_soft``."""
    block_r, block_n = tile_for(y_soft.shape[dim], y_soft.dtype)
    y_soft, grad_y, grad_logits, (n_rows, n_cols, n_inner, strides) = _backward_layout(y_soft, grad_y, dim, block_r)
    _backward_kernel[(cdiv(n_rows, block_r),)](
        y_soft, grad_y, grad_logits, n_rows, n_cols, n_inner, tau,
        *strides[0], *strides[1], *strides[2],
        COMPUTE=tl_compute_dtype(y_soft.dtype), BLOCK_R=block_r, BLOCK_N=block_n,
    )
    return grad_logits


def _grad_noise(grad_logits, needs_input_grad):
    """y depends on logits + noise: both get the same gradient (a copy when both want it)."""
    if not needs_input_grad[1]:
        return None
    return grad_logits.clone() if needs_input_grad[0] else grad_logits


class GumbelSoftmax(torch.autograd.Function):
    """(logits, noise, seed, tau, hard, dim, keep_soft) -> y, the Gumbel-softmax sample along ``dim``.

    ``noise`` (Gumbel noise of logits' shape) may be None: it is then drawn in the kernel from ``seed``.
    ``dim`` must be in [0, logits.dim()) and logits not 0-d nor empty. With ``hard``, the soft sample is kept
    for the backward only if ``keep_soft``. Prefer :func:`fastgen.gumbel_softmax`, which validates arguments,
    picks the backend and handles 0-d and empty tensors.
    """

    @staticmethod
    def forward(ctx, logits, noise, seed, tau, hard, dim, keep_soft=True):
        y, y_soft = _gumbel_forward(logits, noise, seed, tau, hard, dim, keep_soft)
        ctx.tau, ctx.dim, ctx.hard = tau, dim, hard
        # The backward of a softmax needs only its output y: saving y (the op's own output when soft) is
        # cheaper than keeping the logits and regenerating the noise, which would mean re-reading the logits,
        # Philox and two logs per element and, for long rows, the two-pass max/sum again. For hard samples the
        # soft y is an extra write of one tensor in the forward (skipped when no gradient is needed).
        ctx.save_for_backward(y if not hard else y_soft)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (y_soft,) = ctx.saved_tensors
        if y_soft is None:
            raise RuntimeError("GumbelSoftmax: a hard sample taken with keep_soft=False has no gradient")
        grad_logits = _gumbel_backward(y_soft, grad_y, ctx.tau, ctx.dim)
        return grad_logits, _grad_noise(grad_logits, ctx.needs_input_grad), None, None, None, None, None


# ---------------------------------------------------------------------------------------------- custom ops
# The same launches as torch.ops.fastgen.* for torch.compile (see fastgen.library). A seed the caller did not
# give is drawn in the graph as a 0-d int64 CPU tensor (``drawn_seed``, from torch's default generator, the
# stream eager's draw reads: under torch.compile's aot_eager backend the same seeds as eager); an explicit
# ``seed`` is an int. The forward op returns the soft sample of a hard y (a placeholder otherwise) for the backward.
@library.custom_op("gumbel_softmax", "(Tensor logits, Tensor? noise, SymInt seed, Tensor? drawn_seed, float tau, "
                   "bool hard, int dim, bool keep_soft) -> (Tensor, Tensor)")
def _gumbel_op(logits, noise, seed, drawn_seed, tau, hard, dim, keep_soft):
    """(y, the soft sample of a hard y kept for the backward, or a placeholder)."""
    y, y_soft = _gumbel_forward(logits, noise, seeds.seed_value(seed, drawn_seed), tau, hard, dim, keep_soft)
    return y, library.nothing(y) if y_soft is None else y_soft


@_gumbel_op.register_fake
def _(logits, noise, seed, drawn_seed, tau, hard, dim, keep_soft):
    y = _forward_layout(logits, noise, dim, tile_for(logits.shape[dim], logits.dtype)[0])[2]
    return y, torch.empty_like(y) if hard and keep_soft else library.nothing(y)


@library.custom_op("gumbel_softmax_backward", "(Tensor y_soft, Tensor grad_y, float tau, int dim) -> Tensor")
def _gumbel_backward_op(y_soft, grad_y, tau, dim):
    return _gumbel_backward(y_soft, grad_y, tau, dim)


@_gumbel_backward_op.register_fake
def _(y_soft, grad_y, tau, dim):
    return _backward_layout(y_soft, grad_y, dim, tile_for(y_soft.shape[dim], y_soft.dtype)[0])[2]


def _setup_gumbel(ctx, inputs, output):
    logits, noise, seed, drawn_seed, tau, hard, dim, keep_soft = inputs
    ctx.tau, ctx.dim, ctx.has_soft = tau, dim, not hard or keep_soft
    ctx.save_for_backward(output[1] if hard else output[0])


def _gumbel_op_backward(ctx, grad_y, _grad_soft):
    (y_soft,) = ctx.saved_tensors
    if not ctx.has_soft:
        raise RuntimeError("gumbel_softmax: a hard sample taken with keep_soft=False has no gradient")
    grad_logits = torch.ops.fastgen.gumbel_softmax_backward(y_soft, grad_y, ctx.tau, ctx.dim)
    return grad_logits, _grad_noise(grad_logits, ctx.needs_input_grad), None, None, None, None, None, None


_gumbel_op.register_autograd(_gumbel_op_backward, setup_context=_setup_gumbel)


def _check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"tau must be a real number, got {type(tau).__name__}")
    tau = float(tau)
    if not (math.isfinite(tau) and tau > 0.0):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    return tau


def _check_dim(dim, ndim: int) -> int:
    size = max(ndim, 1)  # a 0-d tensor takes dim 0 or -1, as torch.softmax
    dim = check_int("dim", dim)
    if not -size <= dim < size:
        raise ValueError(f"dim must be in [{-size}, {size - 1}] for a {ndim}-d tensor, got {dim}")
    return dim % size


def gumbel_softmax(logits, tau=1.0, hard=False, *, dim=-1, seed=None, noise=None):
    """A Gumbel-softmax sample ``y = softmax((logits + g) / tau)`` over ``dim``, as ``F.gumbel_softmax``.

    Args:
        logits: unnormalized log-probabilities, any shape and strides, float16/bfloat16/float32/float64.
        tau: temperature, a finite number > 0. Any such tau works, however small: the kernel divides
            ``z - max(z)`` (z = logits + g) by tau, so nothing overflows, and below the smallest normal float
            the result is the limit tau -> 0, the one-hot of each row's argmax (its gradient 0).
        hard: return the one-hot of each row's argmax (exactly 0 and 1) with the gradient of the soft sample
            (straight through), as ``F.gumbel_softmax(hard=True)``.
        dim: the dimension of the classes (keyword-only: torch's fourth positional argument is ``eps``).
        seed: Philox seed in [0, 2**31) of the noise drawn in the kernel; when None one is taken from torch's
            default generator, so ``torch.manual_seed`` makes runs repeatable. The same seed gives the same
            sample (for a given shape and ``dim``); see :func:`gumbel_noise` for the noise itself.
        noise: Gumbel(0, 1) noise of logits' shape and dtype to use instead (as ``eps`` of
            :func:`fastgen.reparameterize_kl`); it receives the same gradient as logits.

    The noise is -log(-log(u)) with u an odd multiple of 2**-24 in (0, 1), so it is finite, in [-2.82, 16.7]:
    unlike torch's (pytorch issues #22442, #127749), no draw makes the result inf or NaN.

    Empty tensors behave as ``F.gumbel_softmax``: an empty result, except that ``hard=True`` with no class
    along ``dim`` (an empty row, e.g. shape [3, 0]) raises an IndexError (no argmax exists; torch raises one
    too); no rows (e.g. shape [0, 5]) gives an empty result.

    Returns:
        y of logits' shape and dtype (logits' strides when dense). Math runs in float32 (float64 for float64).
    """
    check_float_tensor("logits", logits)
    tau = _check_tau(tau)
    if not isinstance(hard, bool):
        raise TypeError(f"hard must be a bool, got {type(hard).__name__}")
    dim = _check_dim(dim, logits.dim())
    if hard and logits.dim() and logits.shape[dim] == 0:
        raise IndexError(f"gumbel_softmax: hard=True needs at least one class along dim {dim}, got logits of "
                         f"shape {tuple(logits.shape)}: an empty row has no argmax (F.gumbel_softmax raises an "
                         f"IndexError too)")
    if noise is not None:
        check_like("noise", noise, "logits", logits)
    seed = check_seed("seed", seed)
    if noise is not None and seed is not None:
        raise ValueError("seed: pass either noise or seed, not both (seed only seeds the in-kernel noise)")

    if backend_for(logits) == "reference" or logits.numel() == 0:  # empty: torch's result (and errors)
        return reference.gumbel_softmax(logits, tau, hard, dim=dim, seed=seed, noise=noise)
    if logits.dim() == 0:  # one class: a row of one
        return gumbel_softmax(logits.reshape(1), tau, hard, dim=0, seed=seed,
                              noise=None if noise is None else noise.reshape(1)).reshape(())

    n_rows = logits.numel() // logits.shape[dim]
    if n_rows > MAX_ROWS:
        raise ValueError(f"logits: at most {MAX_ROWS} rows (elements / logits.shape[dim]) are supported, "
                         f"got {n_rows}")
    keep_soft = hard and torch.is_grad_enabled() and (
        logits.requires_grad or (noise is not None and noise.requires_grad))
    if library.traced():
        seed_args = seeds.traced_seed(seed, noise is not None)
        return torch.ops.fastgen.gumbel_softmax(logits, noise, *seed_args, tau, hard, dim,
                                                keep_soft)[0]
    if noise is None and seed is None:
        seed = seeds.draw_seed()
    return GumbelSoftmax.apply(logits, noise, seed, tau, hard, dim, keep_soft)


def gumbel_noise(logits: torch.Tensor, *, dim: int = -1, seed: int | None = None) -> torch.Tensor:
    """The Gumbel noise g that ``gumbel_softmax(logits, dim=dim, seed=seed)`` adds to logits, bit for bit.

    Of logits' shape, in float32 (float64 for float64 logits), contiguous in the dim-last order. On the
    reference backend it is the noise the reference draws for ``seed`` (torch's stream, logits' dtype).
    """
    check_float_tensor("logits", logits)
    dim = _check_dim(dim, logits.dim())
    seed = check_seed("seed", seed)
    if backend_for(logits) == "reference":
        return reference.sample_gumbel(logits, seed)
    if library.traced():  # logits only give the shape, dtype and device: no gradient
        return torch.ops.fastgen.gumbel_noise(logits.detach(), dim, *seeds.traced_seed(seed, False))
    if seed is None:
        seed = seeds.draw_seed()
    return _gumbel_noise(logits, dim, seed)


def _noise_buffer(logits, dim):
    """(the uninitialised noise, dim-last contiguous; the view of it that gumbel_noise returns)."""
    shape = logits.reshape(1).shape if logits.dim() == 0 else logits.shape
    moved = [n for d, n in enumerate(shape) if d != dim] + [shape[dim]]
    noise = torch.empty(moved, dtype=compute_dtype(logits.dtype), device=logits.device)
    return noise, noise.movedim(-1, dim).reshape(logits.shape)


def _gumbel_noise(logits, dim, seed):
    noise, out = _noise_buffer(logits, dim)
    if noise.numel():
        _noise_kernel[(cdiv(noise.numel(), NOISE_BLOCK),)](
            noise, noise.numel(), seed, COMPUTE=tl_compute_dtype(logits.dtype), BLOCK=NOISE_BLOCK)
    return out


@library.custom_op("gumbel_noise", "(Tensor logits, int dim, SymInt seed, Tensor? drawn_seed) -> Tensor")
def _gumbel_noise_op(logits, dim, seed, drawn_seed):
    """The noise gumbel_softmax adds for ``seed``; logits give only its shape, dtype and device."""
    return _gumbel_noise(logits, dim, seeds.seed_value(seed, drawn_seed))


@_gumbel_noise_op.register_fake
def _(logits, dim, seed, drawn_seed):
    return _noise_buffer(logits, dim)[1]


def kernel_launches():
    """Every kernel configuration the op can launch, for the sm_90/sm_80 compile check."""
    # imported here: `python -m fastgen.compile_check` must not find that module imported by fastgen
    from fastgen.compile_check import KernelLaunch

    # Two layouts of each tile: "rows", contiguous along the classes (the usual dim=-1 case), where Triton
    # specializes the class strides equal to 1 (vectorized, and a different register count); "strided", none
    # of them 1 (e.g. the channel dim of an NCHW tensor).
    forward_ones = ("stride_x_n", "stride_g_n", "stride_y_n")
    backward_ones = ("stride_y_n", "stride_gy_n", "stride_gx_n")
    for dtype in FLOAT_DTYPES:
        tiles = sorted({tile_for(n, dtype) for n in COLUMN_BLOCKS})
        for (block_r, block_n), layout in itertools.product(tiles, ("rows", "strided")):
            constexprs = dict(COMPUTE=tl_compute_dtype(dtype), BLOCK_R=block_r, BLOCK_N=block_n)
            kernel = kernels.gumbel_softmax_forward_kernel
            for config, hard in itertools.product(configs_for(kernel), (False, True)):
                yield KernelLaunch.build(kernel, dtype, constexprs=dict(constexprs, HARD=hard),
                                         num_warps=config.num_warps, variant=layout,
                                         ones=forward_ones if layout == "rows" else ())
            kernel = kernels.gumbel_softmax_backward_kernel
            for config in configs_for(kernel):
                yield KernelLaunch.build(kernel, dtype, constexprs=constexprs,
                                         num_warps=config.num_warps, variant=layout,
                                         ones=backward_ones if layout == "rows" else ())
    for acc in (torch.float32, torch.float64):  # the noise is written in the compute dtype
        for config in configs_for(kernels.gumbel_noise_kernel):
            yield KernelLaunch.build(kernels.gumbel_noise_kernel, acc,
                                     constexprs=dict(COMPUTE=tl_compute_dtype(acc), BLOCK=NOISE_BLOCK),
                                     num_warps=config.num_warps)
