"""PixelCNN output losses: per-sub-pixel cross-entropy, the discretized logistic mixture NLL and its sampler.

Launchers, the autograd Functions and the public ops ``pixel_cross_entropy``, ``dmol_nll``, ``dmol_sample``
and ``bits_per_dim``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch
import triton
from torch.autograd.function import once_differentiable

from fastgen import library, seeds
from fastgen.autotune import configs_for
from fastgen.dispatch import backend_for
from fastgen.dtypes import FLOAT_DTYPES, compute_dtype, tl_compute_dtype
from fastgen.kernels import pixel_losses as kernels
from fastgen.launch import cdiv, Kernel
from fastgen.levels import bin_half_width, edge_threshold, logits_as_5d
from fastgen.reductions import REDUCTIONS
from fastgen.reference import pixel_losses as reference
from fastgen.registry import register_family
from fastgen.validation import check_choice, check_float_tensor, check_int, check_like, check_seed

MAX_INDEX = 2**31 - 1024  # sub-pixels, pixels and Philox offsets are int32 in the kernels (one tile of slack)

# Cross-entropy: a program takes CE_BLOCK_N sub-pixels, one per thread at 4 warps, so the max/sum over the levels
# stays in each thread's registers; it steps over the levels CE_BLOCK_L at a time: 16 independent loads per
# thread in flight, at most 210 registers (224 float64 at 8 levels). At 8 levels ptxas capped itself at 96
# registers and spilled 4-8 bytes on sm_90 in some layouts.
CE_BLOCK_N = 128
CE_BLOCK_L = 16
CE_BLOCK_L_FP64 = 8

# DMOL: a program takes DMOL_BLOCK_P pixels, one per thread at 4 warps, and loops over the components twice
# (see the kernel), so any K runs with no padding of K to a power of 2 and no spills: at most 142 registers
# (RGB, float32 math; 212 for float64). [K, pixels] tiles that keep every component's derivatives until the
# posterior is known spilled 2 KB on sm_90 even at 8 elements per thread; 2 pixels per thread took 201.
DMOL_BLOCK_P = 128
SCALE_BLOCK_J = 8  # the backward's channels per step; SCALE_BLOCK_P pixels per program
SCALE_BLOCK_P = 128

# The family, registered once: its kernels' launch configurations (each kernel launches with its first on
# the interpreter, and is autotuned over them on a GPU when there are several) and its benchmark cases.
FAMILY = register_family(
    "pixel_losses", __name__, benchmarks="fastgen.benchmarks.bench_pixel_losses",
    configs={
        # PixelCNN losses: one sub-pixel (cross-entropy) or pixel (DMOL: [16 components, 64 pixels] tiles) per
        # thread at 4 warps, so that reductions over the levels/components stay in registers or within a warp.
        kernels.pixel_cross_entropy_forward_kernel: [triton.Config({}, num_warps=4)],
        kernels.pixel_cross_entropy_backward_kernel: [triton.Config({}, num_warps=4)],
        kernels.dmol_nll_forward_kernel: [triton.Config({}, num_warps=4)],
        kernels.pixel_losses_scale_kernel: [triton.Config({}, num_warps=4)],
        kernels.dmol_sample_kernel: [triton.Config({}, num_warps=4)],
    })

_ce_forward_kernel = Kernel(kernels.pixel_cross_entropy_forward_kernel, key=["n_levels", "BLOCK_L"])
_ce_backward_kernel = Kernel(kernels.pixel_cross_entropy_backward_kernel, key=["n_levels", "BLOCK_L"])
_dmol_forward_kernel = Kernel(kernels.dmol_nll_forward_kernel, key=["n_mixtures", "CHANNELS"])
_scale_kernel = Kernel(kernels.pixel_losses_scale_kernel, key=["n_channels"])
_sample_kernel = Kernel(kernels.dmol_sample_kernel, key=["n_mixtures", "CHANNELS"])


def ce_block_l(dtype: torch.dtype) -> int:
    return CE_BLOCK_L_FP64 if dtype == torch.float64 else CE_BLOCK_L


def _like(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, an empty tensor with t's strides), t copied contiguous first when empty_like cannot keep them."""
    out = torch.empty_like(t)
    if out.stride() != t.stride():
        t = t.contiguous()
        out = torch.empty_like(t)
    return t, out


def _check_index_range(name: str, count: int, what: str) -> None:
    if count > MAX_INDEX:
        raise ValueError(f"{name}: at most {MAX_INDEX} {what} are supported, got {count}")


def bits_per_dim(nats, dims=1):
    """``nats / (ln 2 * dims)``: a loss in nats as bits per dimension (sub-pixel).

    ``dims`` is the number of sub-pixels the loss sums over: an int, a shape, or a tensor (its numel), e.g. the
    targets of ``pixel_cross_entropy(..., reduction="sum")`` or the x of ``dmol_nll(..., reduction="sum")``.
    The ``"mean"`` reductions of both losses are already per sub-pixel: ``bits_per_dim(loss)``.
    """
    if isinstance(dims, torch.Tensor):
        dims = dims.numel()
    elif isinstance(dims, (tuple, list, torch.Size)):
        dims = math.prod(dims)
    elif isinstance(dims, bool) or not isinstance(dims, numbers.Integral):
        raise TypeError(f"dims must be an int, a shape or a tensor, got {type(dims).__name__}")
    else:
        dims = check_int("dims", dims)
    if dims <= 0:
        raise ValueError(f"dims must be > 0, got {dims}")
    return nats / (math.log(2.0) * dims)


# ---------------------------------------------------------------------------------------------- cross-entropy
def _ce_weight(n_subpixels: int, reduction: str) -> float:
    return (1.0 / n_subpixels if n_subpixels else math.nan) if reduction == "mean" else 1.0


def _ce_forward(logits, targets, levels, reduction, needs_grad):
    """(loss: 0-d, or [B, C, H, W] for "none"; the logsumexp per sub-pixel the backward reads, or None)."""
    acc = compute_dtype(logits.dtype)
    batch, channels, height, width = targets.shape
    n_subpixels = targets.numel()
    weight = _ce_weight(n_subpixels, reduction)
    terms = torch.empty(targets.shape, dtype=acc, device=logits.device) if reduction == "none" else None
    lse = torch.empty(n_subpixels, dtype=acc, device=logits.device) if needs_grad else None
    if n_subpixels == 0:
        return (terms if reduction == "none" else torch.full((), 0.0 * weight, dtype=acc, device=logits.device)), lse
    view = logits_as_5d(logits, channels, levels)
    programs = cdiv(n_subpixels, CE_BLOCK_N)
    partial = torch.empty(programs, dtype=acc, device=logits.device)
    _ce_forward_kernel[(programs,)](
        view, targets, partial if terms is None else terms, partial if lse is None else lse, partial,
        n_subpixels, levels, channels, height, width, *view.stride(), *targets.stride(),
        int(terms is not None), int(needs_grad), weight,
        COMPUTE=tl_compute_dtype(logits.dtype), BLOCK_L=ce_block_l(logits.dtype), BLOCK_N=CE_BLOCK_N,
    )
    if terms is not None:
        return terms, lse
    return (partial.view(()) if programs == 1 else partial.sum()), lse


def _ce_backward(logits, targets, lse, grad_output, levels, weight):
    """d loss / d logits, laid out like ``logits`` (``torch.empty_like``)."""
    grad = torch.empty_like(logits)
    n_subpixels = targets.numel()
    if n_subpixels == 0 or levels == 0:
        return grad.zero_()
    batch, channels, height, width = targets.shape
    view = logits_as_5d(logits, channels, levels)
    grad_view = logits_as_5d(grad, channels, levels)
    grad_out_strides = grad_output.stride() if grad_output.dim() else (0, 0, 0, 0)
    _ce_backward_kernel[(cdiv(n_subpixels, CE_BLOCK_N),)](
        view, targets, lse, grad_output, grad_view, n_subpixels, levels, channels, height, width,
        *view.stride(), *targets.stride(), *grad_out_strides, *grad_view.stride(), weight,
        COMPUTE=tl_compute_dtype(logits.dtype), BLOCK_L=ce_block_l(logits.dtype), BLOCK_N=CE_BLOCK_N,
    )
    return grad


class PixelCrossEntropy(torch.autograd.Function):
    """(logits, targets [B, C, H, W] int64, levels, reduction) -> loss: 0-d, or [B, C, H, W] for "none"
    (float32; float64 for float64 logits). The forward keeps the logsumexp per sub-pixel, the backward reads
    the logits again. Prefer :func:`fastgen.pixel_cross_entropy`, which validates arguments."""

    @staticmethod
    def forward(ctx, logits, targets, levels, reduction):
        needs_grad = ctx.needs_input_grad[0]
        ctx.levels, ctx.weight = levels, _ce_weight(targets.numel(), reduction)
        loss, lse = _ce_forward(logits, targets, levels, reduction, needs_grad)
        ctx.save_for_backward(*((logits, targets, lse) if needs_grad else (None, None, None)))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        logits, targets, lse = ctx.saved_tensors
        if logits is None:
            return None, None, None, None
        return _ce_backward(logits, targets, lse, grad_output, ctx.levels, ctx.weight), None, None, None


def _check_targets(targets, logits, levels, check_range: bool) -> int:
    """Validates targets [B, C, H, W] against logits (4-D [B, C * levels, H, W] or 5-D [B, levels, C, H, W]);
    returns levels."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor (the level of each sub-pixel), got {targets.dtype}")
    if targets.device != logits.device:
        raise ValueError(f"targets is on {targets.device} but logits is on {logits.device}")
    if targets.dim() != 4:
        raise ValueError(f"targets must have shape [B, C, H, W], got {tuple(targets.shape)}")
    batch, channels, height, width = targets.shape
    if logits.dim() == 5:
        expected = (batch, logits.shape[1], channels, height, width)
        if levels is None:
            levels = logits.shape[1]
        if levels != logits.shape[1]:
            raise ValueError(f"levels ({levels}) must equal dim 1 of 5-D logits [B, levels, C, H, W], "
                             f"got logits of shape {tuple(logits.shape)}")
    else:
        if levels is None:
            if channels == 0 or logits.shape[1] % channels:
                raise ValueError(f"logits: dim 1 of 4-D logits must be C * levels with C = {channels} (from "
                                 f"targets), got logits of shape {tuple(logits.shape)}")
            levels = logits.shape[1] // channels
        expected = (batch, channels * levels, height, width)
    if tuple(logits.shape) != expected:
        raise ValueError(f"logits has shape {tuple(logits.shape)} but targets of shape {tuple(targets.shape)} "
                         f"and levels = {levels} need {expected}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if check_range and targets.numel():
        low, high = (int(v) for v in torch.aminmax(targets))
        if low < 0 or high >= levels:
            raise ValueError(f"targets must be in [0, levels) = [0, {levels}), got values in [{low}, {high}]")
    return levels


def pixel_cross_entropy(logits, targets, levels=None, reduction="mean", *, check_targets=True,
                        logits_layout=None):
    """Cross-entropy (nats) of PixelCNN's softmax over ``levels`` intensity levels per sub-pixel.

    Layouts (any strides, no copy):

    * 5-D logits [B, levels, C, H, W], the layout of ``F.cross_entropy(logits, targets)``: unambiguous.
    * 4-D logits [B, C * levels, H, W], the output of PixelCNN's last (masked 1x1) convolution. With C = 1 it is
      [B, levels, H, W]. With C > 1 dim 1 can be read two ways, so ``logits_layout`` must say which (a 4-D
      RGB input without it raises, rather than guessing):

      - ``"channel-major"``: C groups of ``levels`` channels, R's logits first, then G's, then B's (the channel
        groups of :class:`fastgen.nn.MaskedConv2d` with ``data_channels=3``), as ``logits.view(B, C, levels,
        H, W)`` reads them;
      - ``"level-major"``: ``levels`` groups of C channels, as ``logits.view(B, levels, C, H, W)`` reads them.

    van den Oord et al.'s 256-way softmax is levels = 256.

    Args:
        logits: float16/bfloat16/float32/float64 logits in one of those layouts.
        targets: integer [B, C, H, W] (uint8 images, int64, ...) in [0, levels): the level of each sub-pixel.
        levels: number of levels; None infers it from the shapes (4-D: dim 1 / C; 5-D: dim 1).
        reduction: "mean" over the B*C*H*W sub-pixels (nats/dim, as ``F.cross_entropy``), "sum", or "none"
            ([B, C, H, W]). ``bits_per_dim(loss)`` converts a mean to bits/dim.
        logits_layout: "channel-major" or "level-major", for 4-D logits of more than one channel (see above).
        check_targets: check that every target is in [0, levels) (one reduction and a device sync) and raise a
            ValueError if not (under torch.compile the custom op checks; on the reference backend
            ``F.cross_entropy``'s own index check). With False nothing is checked on the host and a target outside
            [0, levels) (any integer value: compared as int64, never wrapped, so 2**32 + 2 is out of range too)
            makes that sub-pixel's loss nan, hence a "mean" or "sum" loss nan, and that sub-pixel's gradient nan
            at every level; the other sub-pixels' terms ("none") and gradients are unaffected.

    Returns:
        float32 loss (float64 for float64 logits); the gradient has the logits' dtype and layout.
    """
    check_float_tensor("logits", logits)
    if logits.dim() not in (4, 5):
        raise ValueError(f"logits must be 4-D [B, C * levels, H, W] or 5-D [B, levels, C, H, W], got shape "
                         f"{tuple(logits.shape)}")
    levels = None if levels is None else check_int("levels", levels, low=1)
    check_choice("reduction", reduction, REDUCTIONS)
    logits = _unambiguous_logits(logits, targets, logits_layout)
    # traced code cannot read the targets: the custom op checks their range (the reference: F.cross_entropy)
    levels = _check_targets(targets, logits, levels, check_targets and not library.traced())
    if backend_for(logits) == "reference":
        return reference.pixel_cross_entropy(logits.to(compute_dtype(logits.dtype)), targets, levels, reduction)
    _check_index_range("targets", targets.numel() + CE_BLOCK_N, "sub-pixels")
    if not torch.is_grad_enabled():
        logits = logits.detach()
    if library.traced():
        return torch.ops.fastgen.pixel_cross_entropy(logits, targets.long(), levels, reduction,
                                                     logits.requires_grad, check_targets)[0]
    return PixelCrossEntropy.apply(logits, targets.long(), levels, reduction)


LOGITS_LAYOUTS = ("channel-major", "level-major")


def _unambiguous_logits(logits, targets, logits_layout):
    """The logits as the op reads them: 4-D channel-major (or one channel) or 5-D. 4-D logits of several channels
    need ``logits_layout``; level-major ones become their 5-D view [B, levels, C, H, W]."""
    if logits_layout is not None:
        check_choice("logits_layout", logits_layout, LOGITS_LAYOUTS)
    channels = targets.shape[1] if isinstance(targets, torch.Tensor) and targets.dim() == 4 else None
    if logits.dim() != 4 or channels is None or channels <= 1:
        return logits
    if logits_layout is None:
        raise ValueError(f"logits_layout: 4-D logits {tuple(logits.shape)} of {channels} channels can be read two "
                         "ways: pass logits_layout='channel-major' (C groups of levels channels, a masked "
                         "convolution's channel groups) or 'level-major' (levels groups of C channels, as "
                         "logits.view(B, levels, C, H, W) reads them), or pass 5-D logits [B, levels, C, H, W]")
    if logits_layout == "level-major" and logits.shape[1] % channels == 0:
        return logits.unflatten(1, (logits.shape[1] // channels, channels))
    return logits


# ---------------------------------------------------------------------------------------------- DMOL
def _dmol_weight(numel: int, reduction: str) -> float:
    return (1.0 / numel if numel else math.nan) if reduction == "mean" else 1.0


def _dmol_forward(params, x, n_mixtures, levels, reduction, write_grad, write_grad_x):
    """(NLL: 0-d, or [B, H, W] for "none"; the gradients of params and of x the kernel writes, or None)."""
    acc = compute_dtype(params.dtype)
    batch, channels, height, width = x.shape
    n_pixels = batch * height * width
    weight = _dmol_weight(x.numel(), reduction)
    # the kernel writes the gradients through the inputs' strides: dense inputs keep theirs, others are copied
    params, grad = _like(params) if write_grad else (params, None)
    x, grad_x = _like(x) if write_grad_x else (x, None)
    nll = torch.empty((batch, height, width), dtype=acc, device=params.device) if reduction == "none" else None
    if n_pixels == 0:
        grad, grad_x = (None if g is None else g.zero_() for g in (grad, grad_x))
        loss = nll if reduction == "none" else torch.full((), 0.0 * weight, dtype=acc, device=params.device)
        return loss, grad, grad_x
    programs = cdiv(n_pixels, DMOL_BLOCK_P)
    partial = torch.empty(programs, dtype=acc, device=params.device)
    half_bin = bin_half_width(levels)
    _dmol_forward_kernel[(programs,)](
        params, x, params if grad is None else grad, x if grad_x is None else grad_x,
        partial if nll is None else nll, partial,
        n_pixels, n_mixtures, height, width, *params.stride(), *x.stride(),
        int(write_grad), int(write_grad_x), int(nll is not None),
        half_bin, math.log(2.0 * half_bin), edge_threshold(levels), weight,
        CHANNELS=channels, COMPUTE=tl_compute_dtype(params.dtype), BLOCK_P=DMOL_BLOCK_P,
    )
    if nll is not None:
        return nll, grad, grad_x
    return (partial.view(()) if programs == 1 else partial.sum()), grad, grad_x


class DiscretizedLogisticMixtureNLL(torch.autograd.Function):
    """(params [B, P, H, W], x [B, C, H, W] in params' compute dtype, n_mixtures, levels, reduction) -> NLL:
    0-d, or per pixel [B, H, W] for "none" (float32; float64 for float64 params). The forward writes the
    gradients, the backward scales them. Prefer :func:`fastgen.dmol_nll`."""

    @staticmethod
    def forward(ctx, params, x, n_mixtures, levels, reduction):
        ctx.weight = _dmol_weight(x.numel(), reduction)
        loss, grad, grad_x = _dmol_forward(params, x, n_mixtures, levels, reduction, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(grad, grad_x)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        grads = [None if s is None else _scale_by_pixel(s, grad_output, ctx.weight) for s in saved]
        return grads[0], grads[1], None, None, None


def _scale_by_pixel(saved: torch.Tensor, grad_output: torch.Tensor, weight: float) -> torch.Tensor:
    """saved [B, J, H, W] * grad_output (0-d, or per pixel [B, H, W]) * weight, in one launch."""
    out = torch.empty_like(saved)  # saved was made by empty_like: dense, so out has its strides
    batch, n_channels, height, width = saved.shape
    n_pixels = batch * height * width
    if out.numel() == 0:
        return out
    grad_out_strides = grad_output.stride() if grad_output.dim() else (0, 0, 0)
    _scale_kernel[(cdiv(n_pixels, SCALE_BLOCK_P),)](
        saved, grad_output, out, n_pixels, n_channels, height, width, *saved.stride(), *grad_out_strides, weight,
        COMPUTE=tl_compute_dtype(saved.dtype), BLOCK_J=SCALE_BLOCK_J, BLOCK_P=SCALE_BLOCK_P,
    )
    return out


def _check_params(params, n_mixtures) -> tuple[int, int]:
    """Validates params [B, P, H, W] of a K-component mixture; returns (K as an int, C): C = 3 for P = 10K,
    1 for P = 3K."""
    check_float_tensor("params", params)
    n_mixtures = check_int("n_mixtures", n_mixtures, low=1)
    if params.dim() != 4:
        raise ValueError(f"params must have shape [B, P, H, W], got {tuple(params.shape)}")
    if params.shape[1] == 10 * n_mixtures:
        return n_mixtures, 3
    if params.shape[1] == 3 * n_mixtures:
        return n_mixtures, 1
    raise ValueError(f"params must have 10 * n_mixtures (RGB) or 3 * n_mixtures (grayscale) channels, got "
                     f"{params.shape[1]} for n_mixtures = {n_mixtures}")


def dmol_nll(params, x, n_mixtures, bits=8, reduction="mean", *, levels=None):
    """Negative log-likelihood (nats) of images under PixelCNN++'s discretized logistic mixture.

    The loss of openai/pixel-cnn's ``discretized_mix_logistic_loss`` (Salimans et al. 2017), NCHW: pixel 0
    (x < -0.999) takes the log CDF at the upper bin edge, the top value (x > 0.999) log(1 - CDF) at the lower
    edge, the other bins log(CDF(x + h) - CDF(x - h)) (h = 1 / (2**bits - 1), 1/255 at 8 bits) while that is
    above 1e-5, else the log density at the bin centre + log(2h) (the mid-bin fallback); log-scales are
    clamped at -7; RGB means are shifted by tanh coefficients times the preceding sub-pixels.

    Args:
        params: [B, P, H, W] float16/bfloat16/float32/float64, any strides: P = 10K for RGB, ordered as
            openai's last dim ``[K mixture logits | per channel c = R, G, B: K means, K log-scales, K
            coefficients]``; P = 3K for grayscale ``[K logits | K means | K log-scales]``. The R coefficients
            condition G on R, the G ones B on R, the B ones B on G.
        x: [B, C, H, W] images in [-1, 1] (C = 3 or 1), any float dtype (read in float32, float64 for float64
            params: never rounded to 16 bits, which would move values across bins).
        n_mixtures: K, the number of logistic components (any K >= 1).
        bits: bit depth of the data, 1 to 16 (8: 256 values per sub-pixel). Above 10 bits, the edge bins are
            |x| > 1 - h instead of 0.999.
        levels: values per sub-pixel when not a power of 2 (17 for scikit-learn's digits): overrides ``bits``;
            2 to 65536, h = 1 / (levels - 1).
        reduction: "mean" over the B*C*H*W sub-pixels (nats/dim: ``bits_per_dim(loss)`` is bits/dim), "sum"
            (openai's loss), or "none" (per pixel, [B, H, W], summed over the channels).

    Returns:
        float32 NLL (float64 for float64 params); gradients have params' (and x's) dtype and layout.
    """
    n_mixtures, channels = _check_params(params, n_mixtures)
    check_float_tensor("x", x)
    if x.device != params.device:
        raise ValueError(f"x is on {x.device} but params is on {params.device}")
    batch, _, height, width = params.shape
    if tuple(x.shape) != (batch, channels, height, width):
        raise ValueError(f"x has shape {tuple(x.shape)} but params of shape {tuple(params.shape)} with "
                         f"n_mixtures = {n_mixtures} need x of shape {(batch, channels, height, width)}")
    bits = check_int("bits", bits, low=1, high=16)
    levels = 2**bits if levels is None else check_int("levels", levels, low=2, high=2**16)
    check_choice("reduction", reduction, REDUCTIONS)
    acc = compute_dtype(params.dtype)
    if backend_for(params) == "reference":
        return reference.dmol_nll(params.to(acc), x.to(acc), n_mixtures, reduction=reduction, levels=levels)
    _check_index_range("params", batch * height * width + DMOL_BLOCK_P, "pixels")
    if not torch.is_grad_enabled():
        params, x = params.detach(), x.detach()
    # x is read in the compute dtype: a float32 copy of float16/bfloat16 data (a view for float32 data)
    if library.traced():
        x = x.to(acc)
        return torch.ops.fastgen.dmol_nll(params, x, n_mixtures, levels, reduction, params.requires_grad,
                                          x.requires_grad)[0]
    return DiscretizedLogisticMixtureNLL.apply(params, x.to(acc), n_mixtures, levels, reduction)


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def dmol_sample(params, n_mixtures, seed=None, temperature=1.0, *, uniforms=None):
    """A sample of PixelCNN++'s discretized logistic mixture, as openai's ``sample_from_discretized_mix_logistic``.

    Per pixel: a component k by Gumbel-max on ``logits / temperature``, logistic samples
    ``mean + exp(max(log_scale, -7)) * temperature * (log u - log(1 - u))`` of its channels, R clamped to [-1, 1]
    first, then G shifted by ``tanh(coef) * R`` and clamped, then B by the R and G terms (not rounded to the
    bins, as openai). temperature = 1 is openai's sampler.

    Args:
        params: [B, P, H, W] mixture parameters as for :func:`dmol_nll` (any dtype, any strides).
        n_mixtures: K >= 1.
        seed: Philox seed in [0, 2**31) of the in-kernel uniforms (None: one drawn from torch's default
            generator, so ``torch.manual_seed`` makes runs repeatable). Draw i of pixel p = (b * H + h) * W + w
            is Philox's uniform at offset p * (K + C) + i, whatever the strides. Under torch.compile the seed is
            drawn in the graph (``torch.randint`` on the CPU), and the op stays out of CUDA graphs (a replay
            would repeat the captured seed).
        temperature: > 0; scales the mixture logits (1 / T) and the logistic scales (T). Any finite T > 0
            works, however small: the component is picked as the argmax of ``logits + T * g`` (the same choice
            as ``logits / T + g``, with nothing to overflow), so as T -> 0 the sample tends to the mode of the
            most likely component (its means, shifted and clamped as above), which is what a T below the
            smallest normal float gives.
        uniforms: [B, K + C, H, W] U[0, 1) draws of params' dtype to use instead (K for the component choice,
            then C for the logistics); as openai, each u is mapped to 1e-5 + (1 - 2e-5) u.

    Returns:
        x [B, C, H, W] in [-1, 1], params' dtype, contiguous; no gradient.
    """
    n_mixtures, channels = _check_params(params, n_mixtures)
    temperature = _check_temperature(temperature)
    seed = check_seed("seed", seed)
    batch, _, height, width = params.shape
    if uniforms is not None:
        check_like("uniforms", uniforms, "params", params, shape=(batch, n_mixtures + channels, height, width))
        if seed is not None:
            raise ValueError("seed: pass either uniforms or seed, not both (seed only seeds the in-kernel draws)")
    params = params.detach()
    if backend_for(params) == "reference":
        acc = compute_dtype(params.dtype)
        if uniforms is None and seed is not None and library.traced():  # dynamo cannot build a torch.Generator
            uniforms = torch.ops.fastgen.dmol_reference_uniforms(params.to(acc), n_mixtures, seed)
        elif uniforms is None:
            uniforms = reference.dmol_uniforms(params.to(acc), n_mixtures, seed)
        return reference.dmol_sample(params.to(acc), n_mixtures, temperature=temperature,
                                     uniforms=uniforms.to(acc)).to(params.dtype)
    n_pixels = batch * height * width
    _check_index_range("params", (n_pixels + DMOL_BLOCK_P) * (n_mixtures + channels), "pixels x draws")
    uniforms = None if uniforms is None else uniforms.detach()
    if library.traced():  # the seed drawn in the graph, as a tensor: a Python int would be traced as a constant
        if uniforms is None and seed is None and n_pixels:
            seed = seeds.draw_seed_tensor()
        else:
            seed = torch.full((), 0 if seed is None else seed, dtype=torch.int64)
        return torch.ops.fastgen.dmol_sample(params, uniforms, seed, n_mixtures, temperature)
    if uniforms is None and seed is None and n_pixels:
        seed = seeds.draw_seed()
    return _dmol_sample(params, uniforms, n_mixtures, seed, temperature)


def _dmol_sample(params, uniforms, n_mixtures, seed, temperature):
    """x [B, C, H, W] (params' dtype, contiguous) in one launch; the kernel draws from Philox with ``seed`` (an
    int) when ``uniforms`` is None."""
    batch, _, height, width = params.shape
    channels = 3 if params.shape[1] == 10 * n_mixtures else 1
    n_pixels = batch * height * width
    out = torch.empty((batch, channels, height, width), dtype=params.dtype, device=params.device)
    if n_pixels == 0:
        return out
    u = params if uniforms is None else uniforms  # a pointer of params' dtype, never read without draws
    _sample_kernel[(cdiv(n_pixels, DMOL_BLOCK_P),)](
        params, u, out, n_pixels, n_mixtures, height, width, *params.stride(),
        *(u.stride() if uniforms is not None else (0, 0, 0, 0)), *out.stride(),
        seed if uniforms is None else 0, int(uniforms is not None), temperature,
        CHANNELS=channels, COMPUTE=tl_compute_dtype(params.dtype), BLOCK_P=DMOL_BLOCK_P,
    )
    return out


# ---------------------------------------------------------------------------------------------- custom ops
# The same launches as torch.ops.fastgen.* for torch.compile (see fastgen.library). The forward ops also return
# what their backward op reads (the logsumexp per sub-pixel; the gradients the DMOL forward writes), placeholders
# where no gradient is wanted; the public functions drop them.
@library.custom_op("pixel_cross_entropy", "(Tensor logits, Tensor targets, int levels, str reduction, "
                   "bool needs_grad, bool check_targets) -> (Tensor, Tensor)")
def _ce_op(logits, targets, levels, reduction, needs_grad, check_targets):
    """(loss or terms, the logsumexp per sub-pixel) for int64 ``targets``. ``check_targets``: the range check of
    the public op (a device sync), here where traced code cannot read the values."""
    if check_targets:
        _check_targets(targets, logits, levels, True)
    loss, lse = _ce_forward(logits, targets, levels, reduction, needs_grad)
    return loss, library.nothing(logits) if lse is None else lse


@_ce_op.register_fake
def _(logits, targets, levels, reduction, needs_grad, check_targets):
    acc = compute_dtype(logits.dtype)
    loss = logits.new_empty(targets.shape if reduction == "none" else (), dtype=acc)
    return loss, logits.new_empty(targets.numel(), dtype=acc) if needs_grad else library.nothing(logits)


@library.custom_op("pixel_cross_entropy_backward", "(Tensor logits, Tensor targets, Tensor lse, "
                   "Tensor grad_output, int levels, float weight) -> Tensor")
def _ce_backward_op(logits, targets, lse, grad_output, levels, weight):
    return _ce_backward(logits, targets, lse, grad_output, levels, weight)


@_ce_backward_op.register_fake
def _(logits, targets, lse, grad_output, levels, weight):
    return torch.empty_like(logits)


def _setup_ce(ctx, inputs, output):
    logits, targets, levels, reduction, needs_grad, _ = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.levels, ctx.weight, ctx.needs_grad = levels, _ce_weight(targets.numel(), reduction), needs_grad


def _ce_op_backward(ctx, grad_output, _grad_lse):
    if not ctx.needs_grad:
        return None, None, None, None, None, None
    logits, targets, lse = ctx.saved_tensors
    grad = torch.ops.fastgen.pixel_cross_entropy_backward(logits, targets, lse, grad_output, ctx.levels, ctx.weight)
    return grad, None, None, None, None, None


_ce_op.register_autograd(_ce_op_backward, setup_context=_setup_ce)


@library.custom_op("dmol_nll", "(Tensor params, Tensor x, int n_mixtures, int levels, str reduction, "
                   "bool grad_params, bool grad_x) -> (Tensor, Tensor, Tensor)")
def _dmol_op(params, x, n_mixtures, levels, reduction, grad_params, grad_x):
    """(NLL, the gradient of params, the gradient of x): the gradients the kernel wrote, placeholders if unwanted."""
    loss, grad, grad_x_saved = _dmol_forward(params, x, n_mixtures, levels, reduction, grad_params, grad_x)
    return (loss, library.nothing(params) if grad is None else grad,
            library.nothing(x) if grad_x_saved is None else grad_x_saved)


@_dmol_op.register_fake
def _(params, x, n_mixtures, levels, reduction, grad_params, grad_x):
    batch, _, height, width = x.shape
    loss = params.new_empty((batch, height, width) if reduction == "none" else (), dtype=compute_dtype(params.dtype))
    return (loss, _like(params)[1] if grad_params else library.nothing(params),
            _like(x)[1] if grad_x else library.nothing(x))


@library.custom_op("dmol_nll_backward", "(Tensor saved_params, Tensor saved_x, Tensor grad_output, float weight, "
                   "bool want_params, bool want_x) -> (Tensor, Tensor)")
def _dmol_backward_op(saved_params, saved_x, grad_output, weight, want_params, want_x):
    """The saved gradients scaled by ``grad_output * weight`` (one launch each); placeholders where unwanted."""
    return tuple(_scale_by_pixel(s, grad_output, weight) if want else library.nothing(s)
                 for s, want in ((saved_params, want_params), (saved_x, want_x)))


@_dmol_backward_op.register_fake
def _(saved_params, saved_x, grad_output, weight, want_params, want_x):
    return tuple(torch.empty_like(s) if want else library.nothing(s)
                 for s, want in ((saved_params, want_params), (saved_x, want_x)))


def _setup_dmol(ctx, inputs, output):
    params, x, _, _, reduction, grad_params, grad_x = inputs
    ctx.save_for_backward(output[1], output[2])
    ctx.weight, ctx.wanted = _dmol_weight(x.numel(), reduction), (grad_params, grad_x)


def _dmol_op_backward(ctx, grad_output, _grad_params_saved, _grad_x_saved):
    grad_params, grad_x = torch.ops.fastgen.dmol_nll_backward(*ctx.saved_tensors, grad_output, ctx.weight,
                                                               *ctx.wanted)
    return (grad_params if ctx.wanted[0] else None), (grad_x if ctx.wanted[1] else None), None, None, None, None, None


_dmol_op.register_autograd(_dmol_op_backward, setup_context=_setup_dmol)


def _dmol_sample_impl(params, uniforms, seed, n_mixtures, temperature):
    """``seed``: a 0-d int64 CPU tensor (read on the host: no device sync), unused when ``uniforms`` is given.
    No autograd: the sample has no gradient."""
    return _dmol_sample(params, uniforms, n_mixtures, int(seed), temperature)


# cudagraph_unsafe: the seed is read on the host when the kernel is launched, so a CUDA-graph replay would repeat
# the captured draws; Inductor runs the op outside its CUDA graphs (graph partition) instead.
_dmol_sample_op = library.custom_op(
    "dmol_sample", "(Tensor params, Tensor? uniforms, Tensor seed, int n_mixtures, float temperature) -> Tensor",
    tags=(torch.Tag.cudagraph_unsafe,))(_dmol_sample_impl)


@_dmol_sample_op.register_fake
def _(params, uniforms, seed, n_mixtures, temperature):
    batch, _, height, width = params.shape
    channels = 3 if params.shape[1] == 10 * n_mixtures else 1
    return params.new_empty((batch, channels, height, width))


@library.custom_op("dmol_reference_uniforms", "(Tensor params, int n_mixtures, int seed) -> Tensor")
def _reference_uniforms_op(params, n_mixtures, seed):
    """The reference sampler's seeded draws, opaque to dynamo (it seeds a ``torch.Generator``): what the public
    op on the reference backend calls under torch.compile when given a seed."""
    return reference.dmol_uniforms(params, n_mixtures, seed)


@_reference_uniforms_op.register_fake
def _(params, n_mixtures, seed):
    batch, _, height, width = params.shape
    channels = 3 if params.shape[1] == 10 * n_mixtures else 1
    return params.new_empty((batch, n_mixtures + channels, height, width))


# ---------------------------------------------------------------------------------------------- compile check
def kernel_launches():
    """Every kernel configuration the ops can launch, for the sm_90/sm_80 compile check: per dtype, tile and
    channel count, with any strides ("strided": e.g. channels-last params) and as Triton specializes contiguous
    NCHW tensors (unit strides along W, sizes and strides divisible by 16: "contiguous")."""
    # imported here: `python -m fastgen.compile_check` must not find that module imported by fastgen
    from fastgen.compile_check import KernelLaunch

    def build(kernel, dtype, pointers, constexprs, contiguous=None):
        """``contiguous``: (arguments equal to 1, integers divisible by 16) of that variant; None: any strides."""
        ones, divisible = contiguous or ((), ())
        for config in configs_for(kernel):
            launch = KernelLaunch.build(kernel, dtype, pointers, ones=ones, divisible=divisible,
                                        num_warps=config.num_warps, variant="contiguous" if contiguous else "",
                                        constexprs=dict(constexprs, COMPUTE=tl_compute_dtype(dtype)))
            if "TARGETS" in dict(launch.signature):  # int64 targets (KernelLaunch.build knows float pointers)
                launch = dataclasses.replace(launch, signature=tuple(
                    (n, "*i64" if n == "TARGETS" else k) for n, k in launch.signature))
            yield launch

    ce_forward = (("stride_x_w", "stride_t_w"),
                  ("n_subpixels", "stride_x_b", "stride_x_l", "stride_x_c", "stride_t_b", "stride_t_c"))
    ce_backward = (("stride_x_w", "stride_t_w", "stride_g_w"),
                   ("n_subpixels", "stride_x_b", "stride_x_l", "stride_x_c", "stride_t_b", "stride_t_c",
                    "stride_g_b", "stride_g_l", "stride_g_c"))
    dmol = (("stride_p_w", "stride_x_w"), ("n_pixels", "stride_p_b", "stride_p_j", "stride_x_b", "stride_x_c"))
    sample = (("stride_p_w", "stride_o_w"), ("n_pixels", "stride_p_b", "stride_p_j", "stride_o_b", "stride_o_c"))
    scale = (("stride_s_w",), ("n_pixels", "stride_s_b", "stride_s_j"))
    for dtype in FLOAT_DTYPES:
        acc = compute_dtype(dtype)
        ce = dict(BLOCK_L=ce_block_l(dtype), BLOCK_N=CE_BLOCK_N)
        for contiguous in (None, ce_forward):
            yield from build(kernels.pixel_cross_entropy_forward_kernel, dtype,
                             {"LOSS": acc, "LSE": acc, "PARTIAL": acc}, ce, contiguous)
        # the gradient of a reduced loss has strides 0, of "none" (contiguous) unit strides along W
        for contiguous in (None, (ce_backward[0] + ("stride_go_w",), ce_backward[1])):
            yield from build(kernels.pixel_cross_entropy_backward_kernel, dtype, {"LSE": acc, "GRAD_OUT": acc},
                             ce, contiguous)
        for contiguous in (None, scale):  # grad_x is saved in the compute dtype: float32/float64 cover it
            yield from build(kernels.pixel_losses_scale_kernel, dtype, {"GRAD_OUT": acc},
                             dict(BLOCK_J=SCALE_BLOCK_J, BLOCK_P=SCALE_BLOCK_P), contiguous)
        for channels in (1, 3):
            tile = dict(CHANNELS=channels, BLOCK_P=DMOL_BLOCK_P)
            for contiguous in (None, dmol):
                yield from build(kernels.dmol_nll_forward_kernel, dtype,
                                 {"X": acc, "GRAD_X": acc, "NLL": acc, "PARTIAL": acc}, tile, contiguous)
            for contiguous in (None, sample):
                yield from build(kernels.dmol_sample_kernel, dtype, {}, tile, contiguous)
