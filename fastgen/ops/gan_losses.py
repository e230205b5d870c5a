"""Fused GAN losses and gradient penalties: launchers, the autograd Functions and the public ops."""

from __future__ import annotations

import dataclasses
import math

import torch
import triton
from torch.autograd.function import once_differentiable

from fastgen import library
from fastgen.autotune import configs_for
from fastgen.dispatch import backend_for
from fastgen.dtypes import FLOAT_DTYPES, compute_dtype, tl_compute_dtype
from fastgen.gan_kinds import D_KINDS, G_KINDS, PENALTY_KINDS
from fastgen.kernels import gan_losses as kernels
from fastgen.launch import cdiv, Kernel, plan_cache
from fastgen.reductions import REDUCTIONS
from fastgen.reference import gan_losses as reference
from fastgen.registry import register_family
from fastgen.validation import check_choice, check_float_tensor, check_nonnegative


# Logit losses. A loop step covers LOGIT_BLOCK elements of each segment (4 per thread at 4 warps: 72 registers on
# sm_80/sm_90, against 110-128 at 8 per thread; 2 for float64, whose exp, log and division are subroutine calls).
# Up to SINGLE_PROGRAM_BLOCKS steps run in one program, which then writes the loss itself (one launch in all);
# bigger inputs get up to MAX_LOGIT_PROGRAMS programs whose partial sums torch adds (a second launch:
# deterministic, unlike atomics, which would need a zeroed buffer, itself a launch).
LOGIT_BLOCK = 512
LOGIT_BLOCK_FP64 = 256
SINGLE_PROGRAM_BLOCKS = 8
MAX_LOGIT_PROGRAMS = 1024

# Gradient penalties: the [B, N] gradient view is read in [BLOCK_B, BLOCK_N] tiles of TILE_ELEMENTS elements;
# BLOCK_N is the smallest of COLUMN_BLOCKS that holds a row (capped by the tile), BLOCK_B fills the tile with
# rows. When a batch gives fewer than MIN_PROGRAMS programs (about four per SM of an H100/H200), long rows are
# split over several programs; the one-program finishing kernel adds the parts. FINISH_BLOCK rows per step there.
TILE_ELEMENTS = 1024
COLUMN_BLOCKS = (16, 64, 256, 1024)
MIN_PROGRAMS = 512
FINISH_BLOCK = 512
PENALTY_CODES = {"r1": kernels.R1.value, "wgan-gp": kernels.WGAN_GP.value}

# The family, registered once: its kernels' launch configurations (each kernel launches with its first on
# the interpreter, and is autotuned over them on a GPU when there are several) and its benchmark cases.
FAMILY = register_family(
    "gan_losses", __name__, benchmarks="fastgen.benchmarks.bench_gan_losses",
    configs={
        # GAN losses on logits (launch-bound at usual sizes; 512-element steps, 256 for float64) and gradient
        # penalties (memory-bound row sums of squares in 1024-element tiles): 4 warps, at most 72 registers.
        kernels.gan_logit_loss_forward_kernel: [triton.Config({}, num_warps=4)],
        kernels.gan_logit_loss_backward_kernel: [triton.Config({}, num_warps=4)],
        kernels.gan_gradient_penalty_sum_squares_kernel: [triton.Config({}, num_warps=4)],
        kernels.gan_gradient_penalty_finish_kernel: [triton.Config({}, num_warps=4)],
        kernels.gan_gradient_penalty_backward_kernel: [triton.Config({}, num_warps=4)],
    })

_logit_forward_kernel = Kernel(kernels.gan_logit_loss_forward_kernel, key=["n_real", "n_fake", "BLOCK"])
_logit_backward_kernel = Kernel(kernels.gan_logit_loss_backward_kernel, key=["n_real", "n_fake", "BLOCK"])
_sum_squares_kernel = Kernel(kernels.gan_gradient_penalty_sum_squares_kernel, key=["n_rows", "n_cols", "BLOCK_N"])
_finish_kernel = Kernel(kernels.gan_gradient_penalty_finish_kernel, key=["n_rows"])
_penalty_backward_kernel = Kernel(kernels.gan_gradient_penalty_backward_kernel, key=["n_rows", "n_cols", "BLOCK_N"])


# ---------------------------------------------------------------------------------------------- logit losses
@dataclasses.dataclass(frozen=True)
class TermRule:
    """One segment's loss: ``sign * term(x)`` with ``term`` of ``family`` (kernels.BCE, ...) and its ``target``
    (BCE/SQUARE target, HINGE/LINEAR coefficient)."""

    family: int
    target: float
    sign: int = 1


@plan_cache
def d_rules(kind: str, real_label: float) -> tuple[TermRule, TermRule]:
    """(real rule, fake rule) of a discriminator loss."""
    return {
        "minimax": (TermRule(kernels.BCE.value, real_label), TermRule(kernels.BCE.value, 0.0)),
        "hinge": (TermRule(kernels.HINGE.value, -1.0), TermRule(kernels.HINGE.value, 1.0)),
        "ls": (TermRule(kernels.SQUARE.value, real_label), TermRule(kernels.SQUARE.value, 0.0)),
        "wgan": (TermRule(kernels.LINEAR.value, -1.0), TermRule(kernels.LINEAR.value, 1.0)),
    }[kind]


@plan_cache
def g_rule(kind: str) -> TermRule:
    """The rule of a generator loss on fake logits."""
    return {
        "nonsaturating": TermRule(kernels.BCE.value, 1.0),
        "saturating": TermRule(kernels.BCE.value, 0.0, sign=-1),
        "hinge": TermRule(kernels.LINEAR.value, -1.0),
        "wgan": TermRule(kernels.LINEAR.value, -1.0),
        "ls": TermRule(kernels.SQUARE.value, 1.0),
    }[kind]


def logit_block(dtype: torch.dtype) -> int:
    return LOGIT_BLOCK_FP64 if dtype == torch.float64 else LOGIT_BLOCK


def logit_grid(n_max: int, dtype: torch.dtype) -> tuple[int, int]:
    """(programs, elements of each segment per program) for segments of at most ``n_max`` elements."""
    block = logit_block(dtype)
    blocks = cdiv(n_max, block)
    if blocks <= SINGLE_PROGRAM_BLOCKS:
        return 1, max(blocks, 1) * block
    elements_per_program = cdiv(blocks, min(blocks, MAX_LOGIT_PROGRAMS)) * block
    return cdiv(n_max, elements_per_program), elements_per_program


def _flat_with_stride(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(a tensor whose elements are read as ``ptr + i * stride``, that stride): ``x`` itself when contiguous (no
    view to build on the hot path), else a 1-D view, or a copy when its elements are not evenly spaced."""
    if x.is_contiguous():
        return x, 1
    flat = _flat(x)
    return flat, flat.stride(0)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 1-D view read through one stride; a copy only when its elements are not evenly spaced."""
    try:
        return x.view(-1)
    except RuntimeError:
        return x.reshape(-1)


def _segment_weight(n: int, reduction: str) -> float:
    """What a segment's sum is multiplied by: 1 / n for a mean (nan for an empty one, as torch's mean), else 1."""
    if reduction == "mean":
        return 1.0 / n if n else math.nan
    return 1.0


@plan_cache
def _logit_plan(n_first: int, n_second: int, dtype: torch.dtype, rules: tuple, reduction: str,
                needs_grad: tuple) -> tuple:
    """Everything of one forward launch that sizes, dtype and flags decide: (programs, elements per program,
    weights, the scalar arguments after the strides, the constexprs). ``n_second`` is -1 without a second
    segment (the generator loss)."""
    weights = [_segment_weight(n, reduction) for n in (n_first, n_second) if n >= 0]
    programs, elements_per_program = logit_grid(max(n_first, n_second), dtype)
    rules = tuple(rules) + (rules[0],) * (2 - len(rules))
    flags = [int(bool(need)) for need in needs_grad] + [0] * (2 - len(needs_grad))
    scalars = (*(r.family for r in rules), *(r.sign for r in rules), *flags, int(reduction == "none"),
               *(float(r.target) for r in rules), *weights, *[0.0] * (2 - len(weights)))
    return programs, elements_per_program, weights, scalars, dict(COMPUTE=tl_compute_dtype(dtype), BLOCK=logit_block(dtype))


def _logit_loss_forward(first, second, rules, reduction, needs_grad):
    """One launch (two for large inputs with a reduction): the per-element terms, or their reduction, and the
    gradients ``sign * d term / dx`` (input dtype) of each segment that ``needs_grad``.

    ``second`` is None for the generator loss (the kernel then sees an empty second segment). Returns
    (loss or None, [terms per segment], [saved gradient or None per segment], [weight per segment]).
    """
    acc = compute_dtype(first.dtype)
    n_first, n_second = first.numel(), (-1 if second is None else second.numel())
    programs, elements_per_program, weights, scalars, constexprs = _logit_plan(
        n_first, n_second, first.dtype, rules, reduction, tuple(needs_grad))
    segments = (first,) if second is None else (first, second)
    # contiguous (the kernel writes element i at offset i); new_empty/empty_like build no torch.device
    saved = [torch.empty_like(x, memory_format=torch.contiguous_format) if need else None
             for x, need in zip(segments, needs_grad)]
    terms = [x.new_empty(x.shape, dtype=acc) for x in segments] if reduction == "none" else []
    if max(n_first, n_second) == 0:
        loss = None
        if reduction != "none":  # nan for a mean (of an empty tensor), else 0
            loss = torch.full((), sum(weights) * 0.0, dtype=acc, device=first.device)
        return loss, terms, saved, weights

    # one program writes the loss itself (0-d); more write partial sums that torch adds
    partial = first.new_empty(() if programs == 1 else programs, dtype=acc)
    # the kernel takes two segments: the generator loss's missing one is empty, its pointers never touched
    flat_first, stride_first = _flat_with_stride(first)
    # without a second segment (n_second = 0) the kernel never reads its pointers
    flat_second, stride_second = (flat_first, 1) if second is None else _flat_with_stride(second)
    saved_first = flat_first if saved[0] is None else saved[0]
    saved_second = flat_first if second is None or saved[1] is None else saved[1]
    terms_first = terms[0] if terms else partial
    terms_second = terms[1] if len(terms) == 2 else partial
    _logit_forward_kernel[(programs,)](
        flat_first, flat_second, saved_first, saved_second, terms_first, terms_second, partial,
        n_first, max(n_second, 0), elements_per_program, stride_first, stride_second, *scalars,
        **constexprs,
    )
    loss = None
    if reduction != "none":
        loss = partial if programs == 1 else partial.sum()
    return loss, terms, saved, weights


def _logit_loss_backward(saved, grad_outputs, weights):
    """``saved * grad_output * weight`` for each segment with a saved gradient (None: no gradient wanted), in
    one launch; ``grad_outputs`` are 0-d (a reduced loss) or shaped like the segments (reduction "none")."""
    grads = [None if s is None else torch.empty_like(s) for s in saved]
    wanted = [i for i, s in enumerate(saved) if s is not None and s.numel() > 0]
    if not wanted:
        return grads
    dtype = saved[wanted[0]].dtype
    any_flat = saved[wanted[0]].view(-1)[:0]  # the pointer of a segment the kernel skips (0 elements)
    flats, outs, grad_outs, counts, strides, segment_weights = [], [], [], [], [], []
    for i in (0, 1):
        if i in wanted:
            grad_out = grad_outputs[i].to(compute_dtype(dtype))
            grad_out = grad_out if grad_out.dim() == 0 else _flat(grad_out)
            flats.append(saved[i].view(-1))
            outs.append(grads[i].view(-1))
            grad_outs.append(grad_out)
            counts.append(saved[i].numel())
            strides.append(0 if grad_out.dim() == 0 else grad_out.stride(0))
            segment_weights.append(weights[i])
        else:
            flats.append(any_flat)
            outs.append(any_flat)
            grad_outs.append(any_flat.new_empty(0, dtype=compute_dtype(dtype)))
            counts.append(0)
            strides.append(0)
            segment_weights.append(1.0)
    block = logit_block(dtype)
    _logit_backward_kernel[(cdiv(max(counts), block),)](
        *flats, *grad_outs, *outs, *counts, *strides, *segment_weights, COMPUTE=tl_compute_dtype(dtype), BLOCK=block,
    )
    return grads


class GANDiscriminatorLoss(torch.autograd.Function):
    """(real_logits, fake_logits, kind, reduction, real_label) -> loss (0-d), or (real terms, fake terms) for
    reduction "none"; float32 (float64 for float64 logits). The forward writes the gradients, the backward scales
    them. Prefer :func:`fastgen.gan_d_loss`, which validates arguments and picks the backend."""

    @staticmethod
    def forward(ctx, real_logits, fake_logits, kind, reduction, real_label):
        loss, terms, saved, weights = _logit_loss_forward(
            real_logits, fake_logits, d_rules(kind, real_label), reduction, ctx.needs_input_grad[:2])
        ctx.save_for_backward(*saved)
        ctx.weights, ctx.reduction = weights, reduction
        return tuple(terms) if reduction == "none" else loss

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs):
        grad_outputs = grad_outputs if ctx.reduction == "none" else grad_outputs * 2
        grad_real, grad_fake = _logit_loss_backward(list(ctx.saved_tensors), grad_outputs, ctx.weights)
        return grad_real, grad_fake, None, None, None


class GANGeneratorLoss(torch.autograd.Function):
    """(fake_logits, kind, reduction) -> loss (0-d), or the per-element terms for reduction "none"; float32
    (float64 for float64 logits). Prefer :func:`fastgen.gan_g_loss`."""

    @staticmethod
    def forward(ctx, fake_logits, kind, reduction):
        loss, terms, saved, weights = _logit_loss_forward(
            fake_logits, None, (g_rule(kind),), reduction, ctx.needs_input_grad[:1])
        ctx.save_for_backward(*saved)
        ctx.weights = weights
        return terms[0] if reduction == "none" else loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad_fake,) = _logit_loss_backward(list(ctx.saved_tensors), [grad_output], ctx.weights)
        return grad_fake, None, None


# ---------------------------------------------------------------------------------------------- custom ops
# The same launches as torch.ops.fastgen.* for torch.compile (see fastgen.library). The forward ops also return
# the gradients they wrote (placeholders where none is wanted), which their backward op scales.
@library.custom_op("gan_d_loss", "(Tensor real_logits, Tensor fake_logits, str kind, str reduction, "
                   "float real_label, bool grad_real, bool grad_fake) -> (Tensor, Tensor, Tensor, Tensor)")
def _d_loss_op(real_logits, fake_logits, kind, reduction, real_label, grad_real, grad_fake):
    """(loss, placeholder) or (real terms, fake terms) for "none"; then the saved gradients of real and fake."""
    loss, terms, saved, _ = _logit_loss_forward(real_logits, fake_logits, d_rules(kind, real_label), reduction,
                                                (grad_real, grad_fake))
    outputs = terms if reduction == "none" else [loss, library.nothing(loss)]
    return (*outputs, *(library.nothing(x) if s is None else s for x, s in zip((real_logits, fake_logits), saved)))


@_d_loss_op.register_fake
def _(real_logits, fake_logits, kind, reduction, real_label, grad_real, grad_fake):
    acc = compute_dtype(real_logits.dtype)
    if reduction == "none":
        outputs = [x.new_empty(x.shape, dtype=acc) for x in (real_logits, fake_logits)]
    else:
        outputs = [real_logits.new_empty((), dtype=acc), real_logits.new_empty(0, dtype=acc)]
    return (*outputs, *(x.new_empty(x.shape) if need else library.nothing(x)
                        for x, need in ((real_logits, grad_real), (fake_logits, grad_fake))))


@library.custom_op("gan_g_loss", "(Tensor fake_logits, str kind, str reduction, bool grad_fake) -> (Tensor, Tensor)")
def _g_loss_op(fake_logits, kind, reduction, grad_fake):
    """(loss or terms, the saved gradient)."""
    loss, terms, saved, _ = _logit_loss_forward(fake_logits, None, (g_rule(kind),), reduction, (grad_fake,))
    return terms[0] if reduction == "none" else loss, library.nothing(fake_logits) if saved[0] is None else saved[0]


@_g_loss_op.register_fake
def _(fake_logits, kind, reduction, grad_fake):
    acc = compute_dtype(fake_logits.dtype)
    out = fake_logits.new_empty(fake_logits.shape if reduction == "none" else (), dtype=acc)
    return out, fake_logits.new_empty(fake_logits.shape) if grad_fake else library.nothing(fake_logits)


@library.custom_op("gan_logit_loss_backward", "(Tensor saved_first, Tensor saved_second, Tensor grad_first, "
                   "Tensor grad_second, float weight_first, float weight_second, bool want_first, "
                   "bool want_second) -> (Tensor, Tensor)")
def _logit_loss_backward_op(saved_first, saved_second, grad_first, grad_second, weight_first, weight_second,
                            want_first, want_second):
    saved = [s if want else None for s, want in ((saved_first, want_first), (saved_second, want_second))]
    grads = _logit_loss_backward(saved, [grad_first, grad_second], [weight_first, weight_second])
    return tuple(library.nothing(s) if g is None else g for s, g in zip((saved_first, saved_second), grads))


@_logit_loss_backward_op.register_fake
def _(saved_first, saved_second, grad_first, grad_second, weight_first, weight_second, want_first, want_second):
    return tuple(s.new_empty(s.shape) if want else library.nothing(s)
                 for s, want in ((saved_first, want_first), (saved_second, want_second)))


def _setup_d_loss(ctx, inputs, output):
    real_logits, fake_logits, _, reduction, _, grad_real, grad_fake = inputs
    ctx.save_for_backward(*output[2:])
    ctx.reduction, ctx.wanted = reduction, (grad_real, grad_fake)
    ctx.weights = [_segment_weight(x.numel(), reduction) for x in (real_logits, fake_logits)]


def _d_loss_backward(ctx, grad_out_real, grad_out_fake, _saved_real, _saved_fake):
    grads = (grad_out_real, grad_out_fake) if ctx.reduction == "none" else (grad_out_real, grad_out_real)
    grad_real, grad_fake = torch.ops.fastgen.gan_logit_loss_backward(*ctx.saved_tensors, *grads, *ctx.weights,
                                                                       *ctx.wanted)
    return (grad_real if ctx.wanted[0] else None), (grad_fake if ctx.wanted[1] else None), None, None, None, None, None


def _setup_g_loss(ctx, inputs, output):
    fake_logits, _, reduction, grad_fake = inputs
    ctx.save_for_backward(output[1])
    ctx.wanted, ctx.weight = grad_fake, _segment_weight(fake_logits.numel(), reduction)


def _g_loss_backward(ctx, grad_out, _saved):
    (saved,) = ctx.saved_tensors
    grad_fake, _ = torch.ops.fastgen.gan_logit_loss_backward(saved, saved, grad_out, grad_out, ctx.weight, 1.0,
                                                             ctx.wanted, False)
    return (grad_fake if ctx.wanted else None), None, None, None


_d_loss_op.register_autograd(_d_loss_backward, setup_context=_setup_d_loss)
_g_loss_op.register_autograd(_g_loss_backward, setup_context=_setup_g_loss)


def _check_logits(name: str, logits, other_name: str = "", other=None) -> torch.Tensor:
    check_float_tensor(name, logits)
    if other is not None:
        if logits.device != other.device:
            raise ValueError(f"{name} is on {logits.device} but {other_name} is on {other.device}")
        if logits.dtype != other.dtype:
            raise TypeError(f"{name} has dtype {logits.dtype} but {other_name} has dtype {other.dtype}")
    return logits


def _check_real_label(real_label, kind: str) -> float:
    real_label = check_nonnegative("real_label", real_label)
    if real_label > 1.0:
        raise ValueError(f"real_label must be in [0, 1] (the target of real samples), got {real_label}")
    if kind in ("hinge", "wgan") and real_label != 1.0:
        raise ValueError(f"real_label: label smoothing applies to the 'minimax' and 'ls' losses, not {kind!r}")
    return real_label


def gan_d_loss(real_logits, fake_logits, kind="minimax", reduction="mean", real_label=1.0):
    """Discriminator loss on the logits of real and of generated samples.

    Per element, for real logits r and fake logits f:

    * ``"minimax"``: ``softplus(-r)`` and ``softplus(f)`` (StyleGAN2-ADA's D loss, the BCE with logits against
      targets 1 and 0); with ``real_label`` t < 1 (one-sided label smoothing, e.g. 0.9) the real term is the BCE
      against t: ``t * softplus(-r) + (1 - t) * softplus(r)``.
    * ``"hinge"``: ``relu(1 - r)`` and ``relu(1 + f)``.
    * ``"ls"``: ``0.5 * (r - t)^2`` and ``0.5 * f^2`` (t = ``real_label``, 1 by default).
    * ``"wgan"``: ``-r`` and ``f``.

    Infinite logits give the mathematical limits, terms and gradients alike: ``softplus(-inf) = 0`` with
    gradient 0 (a saturated logit), ``softplus(inf) = inf`` with gradient +-1 (so ``fake_logits = -inf`` adds
    0 to the minimax loss, never nan); hinge, ls and wgan terms are relu, square and linear in the logit, at
    +-inf too. A nan logit gives a nan term and gradient.

    Args:
        real_logits, fake_logits: D's outputs, any shapes (e.g. [B] or [B, 1], PatchGAN maps [B, 1, H, W]) and
            sizes (the two batches may differ), same dtype and device, any strides.
        kind: "minimax", "hinge", "ls" or "wgan".
        reduction: "mean" (default): ``mean(real terms) + mean(fake terms)``, each the mean over all of that
            tensor's elements (an empty tensor's mean is nan, as in torch); "sum": ``sum(real terms) +
            sum(fake terms)``; "none": the tuple ``(real terms, fake terms)`` in the logits' shapes.
        real_label: target of the real samples in [0, 1], for "minimax" and "ls" (1.0: no smoothing).

    Returns:
        A 0-d loss, or the two term tensors for "none": float32 (float64 for float64 logits). Gradients have
        the logits' dtype. pix2pix's ``0.5 * (loss_real + loss_fake)`` is ``0.5 * gan_d_loss(...)``.
    """
    _check_logits("real_logits", real_logits)
    _check_logits("fake_logits", fake_logits, "real_logits", real_logits)
    check_choice("kind", kind, D_KINDS)
    check_choice("reduction", reduction, REDUCTIONS)
    real_label = _check_real_label(real_label, kind)
    if backend_for(real_logits) == "reference":
        acc = compute_dtype(real_logits.dtype)
        return reference.gan_d_loss(real_logits.to(acc), fake_logits.to(acc), kind, reduction, real_label)
    if not torch.is_grad_enabled():  # no gradient is written in the forward
        real_logits, fake_logits = real_logits.detach(), fake_logits.detach()
    if library.traced():
        out_real, out_fake, _, _ = torch.ops.fastgen.gan_d_loss(real_logits, fake_logits, kind, reduction, real_label,
                                                                real_logits.requires_grad, fake_logits.requires_grad)
        return (out_real, out_fake) if reduction == "none" else out_real
    return GANDiscriminatorLoss.apply(real_logits, fake_logits, kind, reduction, real_label)


def gan_g_loss(fake_logits, kind="nonsaturating", reduction="mean"):
    """Generator loss on the discriminator's logits of generated samples.

    Per element, for fake logits f: ``"nonsaturating"`` ``softplus(-f)`` (StyleGAN2-ADA), ``"saturating"``
    ``-softplus(f)`` (the original minimax ``log(1 - D(G(z)))``), ``"hinge"`` and ``"wgan"`` ``-f``, ``"ls"``
    ``0.5 * (f - 1)^2``. At ``f = +-inf`` each term and its gradient is the limit (``softplus(-inf) = 0`` with
    gradient 0, ``softplus(inf) = inf``: nonsaturating 0 at ``+inf``, saturating 0 at ``-inf``, ``-inf`` at
    ``+inf``), as for :func:`gan_d_loss`.

    Args:
        fake_logits: D's outputs on generated samples, any shape and strides.
        kind: "nonsaturating", "saturating", "hinge", "wgan" or "ls".
        reduction: "mean" over every element (nan for an empty tensor), "sum", or "none" (the terms, shaped
            like ``fake_logits``).

    Returns:
        A 0-d loss, or the terms: float32 (float64 for float64 logits); the gradient has the logits' dtype.
    """
    _check_logits("fake_logits", fake_logits)
    check_choice("kind", kind, G_KINDS)
    check_choice("reduction", reduction, REDUCTIONS)
    if backend_for(fake_logits) == "reference":
        return reference.gan_g_loss(fake_logits.to(compute_dtype(fake_logits.dtype)), kind, reduction)
    if not torch.is_grad_enabled():
        fake_logits = fake_logits.detach()
    if library.traced():
        return torch.ops.fastgen.gan_g_loss(fake_logits, kind, reduction, fake_logits.requires_grad)[0]
    return GANGeneratorLoss.apply(fake_logits, kind, reduction)


# ---------------------------------------------------------------------------------------------- gradient penalty
def tile_for(n_cols: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_N) for rows of ``n_cols`` elements."""
    block_n = min(TILE_ELEMENTS, next((b for b in COLUMN_BLOCKS if b >= n_cols), COLUMN_BLOCKS[-1]))
    return TILE_ELEMENTS // block_n, block_n


def row_split(n_rows: int, n_cols: int, block_b: int, block_n: int) -> tuple[int, int]:
    """(programs per row block, columns per program) so that small batches of long rows fill the GPU."""
    col_blocks = cdiv(n_cols, block_n)
    wanted = max(1, cdiv(MIN_PROGRAMS, cdiv(n_rows, block_b)))
    cols_per_program = cdiv(col_blocks, min(col_blocks, wanted)) * block_n
    return cdiv(n_cols, cols_per_program), cols_per_program


def _row_view(grads: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """([B, N] view of ``grads``, the permutation of its dims that the view flattens). The non-batch dims are
    taken in memory order (largest stride first), so any dense layout (channels-last too) is a view, not a
    copy: a sum of squares does not care about the order of a row."""
    perm = _memory_order(grads)
    if grads.is_contiguous():
        return grads.view(grads.shape[0], -1), perm
    return grads.permute(perm).reshape(grads.shape[0], math.prod(grads.shape[1:])), perm


def _memory_order(grads: torch.Tensor) -> tuple[int, ...]:
    """The dims of ``grads``, batch first, then the others from the largest stride to the smallest."""
    return (0, *sorted(range(1, grads.dim()), key=lambda d: -grads.stride(d)))


def _empty_in_memory_order(grads: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(an uninitialised [B, N] tensor, a view of it shaped and laid out like ``grads``' dense memory order)."""
    perm = _memory_order(grads)
    rows = torch.empty((grads.shape[0], math.prod(grads.shape[1:])), dtype=grads.dtype, device=grads.device)
    return rows, rows.view([grads.shape[d] for d in perm]).permute(tuple(perm.index(d) for d in range(grads.dim())))


def _penalty_weight(n_rows: int, reduction: str) -> float:
    return (1.0 / n_rows if n_rows else math.nan) if reduction == "mean" else 1.0


@plan_cache
def _penalty_plan(n_rows: int, n_cols: int, dtype: torch.dtype) -> tuple:
    """(grid, columns per program, splits per row, constexprs) of the row sums of squares."""
    block_b, block_n = tile_for(n_cols, dtype)
    n_split, cols_per_program = row_split(n_rows, n_cols, block_b, block_n)
    return ((cdiv(n_rows, block_b), n_split), cols_per_program, n_split,
            dict(COMPUTE=tl_compute_dtype(dtype), BLOCK_B=block_b, BLOCK_N=block_n))


def _penalty_forward(grads, kind, gamma, reduction):
    """(penalty: 0-d, or [B] for "none"; coef [B], what the backward multiplies each row by)."""
    n_rows, n_cols = grads.shape[0], math.prod(grads.shape[1:])
    acc = compute_dtype(grads.dtype)
    weight = _penalty_weight(n_rows, reduction)
    penalty = torch.empty(n_rows, dtype=acc, device=grads.device)
    coef = torch.empty(n_rows, dtype=acc, device=grads.device)
    if n_rows == 0:
        return (penalty if reduction == "none" else torch.full((), 0.0 * weight, dtype=acc, device=grads.device)), coef
    loss = torch.empty((), dtype=acc, device=grads.device)
    partial, n_split = penalty, 0  # zero-size rows: no sum to take, every row's sum of squares is 0
    if n_cols > 0:
        rows = grads if grads.dim() == 2 else _row_view(grads)[0]  # a [B, N] matrix is read through its strides
        grid, cols_per_program, n_split, constexprs = _penalty_plan(n_rows, n_cols, grads.dtype)
        partial = torch.empty((n_rows, n_split), dtype=acc, device=grads.device)
        _sum_squares_kernel[grid](rows, partial, n_rows, n_cols, cols_per_program, *rows.stride(), **constexprs)
    _finish_kernel[(1,)](
        partial, penalty, coef, loss, n_rows, n_split, PENALTY_CODES[kind], gamma, weight,
        COMPUTE=tl_compute_dtype(grads.dtype), BLOCK_B=FINISH_BLOCK,
    )
    return (penalty if reduction == "none" else loss), coef


def _penalty_backward(grads, coef, grad_output, weight):
    """d loss / d grads in one kernel, laid out like ``grads``."""
    if grads.numel() == 0:
        return torch.zeros_like(grads)
    n_rows, n_cols = grads.shape[0], math.prod(grads.shape[1:])
    rows, _ = _row_view(grads)
    grad_rows, grad = _empty_in_memory_order(grads)
    block_b, block_n = tile_for(n_cols, grads.dtype)
    _penalty_backward_kernel[(cdiv(n_rows, block_b), cdiv(n_cols, block_n))](
        rows, coef, grad_output, grad_rows, n_rows, n_cols, *rows.stride(),
        0 if grad_output.dim() == 0 else grad_output.stride(0), weight,
        COMPUTE=tl_compute_dtype(grads.dtype), BLOCK_B=block_b, BLOCK_N=block_n,
    )
    return grad


class GradientPenalty(torch.autograd.Function):
    """(grads [B, ...], kind, gamma, reduction) -> penalty: 0-d, or [B] for reduction "none" (float32; float64
    for float64 grads). The backward is differentiable (torch ops) when autograd records it (``create_graph``),
    else one kernel. Prefer :func:`fastgen.gradient_penalty`."""

    @staticmethod
    def forward(ctx, grads, kind, gamma, reduction):
        penalty, coef = _penalty_forward(grads, kind, gamma, reduction)
        ctx.kind, ctx.gamma, ctx.weight = kind, gamma, _penalty_weight(grads.shape[0], reduction)
        ctx.save_for_backward(grads, coef)
        return penalty

    @staticmethod
    def backward(ctx, grad_output):
        grads, coef = ctx.saved_tensors
        if torch.is_grad_enabled() and grads.numel():  # create_graph=True: a backward autograd can differentiate
            return _penalty_backward_differentiable(grads, grad_output, ctx.kind, ctx.gamma, ctx.weight), \
                None, None, None
        return _penalty_backward(grads, coef, grad_output, ctx.weight), None, None, None


@library.custom_op("gradient_penalty", "(Tensor grads, str kind, float gamma, str reduction) -> (Tensor, Tensor)")
def _penalty_op(grads, kind, gamma, reduction):
    """(penalty, coef): the public op's value and what the backward multiplies each row by."""
    return _penalty_forward(grads, kind, gamma, reduction)


@_penalty_op.register_fake
def _(grads, kind, gamma, reduction):
    acc = compute_dtype(grads.dtype)
    n_rows = grads.shape[0]
    return grads.new_empty((n_rows,) if reduction == "none" else (), dtype=acc), grads.new_empty(n_rows, dtype=acc)


@library.custom_op("gradient_penalty_backward",
                   "(Tensor grads, Tensor coef, Tensor grad_output, float weight) -> Tensor")
def _penalty_backward_op(grads, coef, grad_output, weight):
    return _penalty_backward(grads, coef, grad_output, weight)


@_penalty_backward_op.register_fake
def _(grads, coef, grad_output, weight):
    return _empty_in_memory_order(grads)[1]


def _setup_penalty(ctx, inputs, output):
    grads, kind, gamma, reduction = inputs
    ctx.save_for_backward(grads, output[1])
    ctx.kind, ctx.gamma, ctx.weight = kind, gamma, _penalty_weight(grads.shape[0], reduction)


def _penalty_op_backward(ctx, grad_output, _grad_coef):
    grads, coef = ctx.saved_tensors
    if torch.is_grad_enabled() and grads.numel():  # create_graph=True
        return _penalty_backward_differentiable(grads, grad_output, ctx.kind, ctx.gamma, ctx.weight), None, None, None
    return torch.ops.fastgen.gradient_penalty_backward(grads, coef, grad_output, ctx.weight), None, None, None


_penalty_op.register_autograd(_penalty_op_backward, setup_context=_setup_penalty)


def _penalty_backward_differentiable(grads, grad_output, kind, gamma, weight):
    """d loss / d grads with torch ops, so that autograd can differentiate the backward itself."""
    n_rows = grads.shape[0]
    acc = compute_dtype(grads.dtype)
    g = grads.to(acc)
    per_sample = grad_output.to(acc).expand(n_rows) * weight
    if kind == "r1":
        scale = gamma * per_sample
    else:
        norm = torch.linalg.vector_norm(g.reshape(n_rows, -1), dim=1)
        positive = norm != 0  # a nan norm (a nan in the row) keeps the nan: nan in, nan out
        safe_norm = torch.where(positive, norm, torch.ones_like(norm))  # no 0/0 in the unselected branch
        scale = torch.where(positive, 2.0 * gamma * (safe_norm - 1.0) / safe_norm, torch.zeros_like(norm)) * per_sample
    return (g * scale.view((n_rows,) + (1,) * (g.dim() - 1))).to(grads.dtype)


def gradient_penalty(grads, kind="r1", gamma=10.0, reduction="mean"):
    """Gradient penalty on the gradients of D w.r.t. its input, per sample.

    * ``"r1"``: ``gamma / 2 * ||g_b||^2`` (StyleGAN2-ADA's R1, on real samples; gamma = r1_gamma);
    * ``"wgan-gp"``: ``gamma * (||g_b|| - 1)^2`` (WGAN-GP on interpolates; gamma = lambda, 10 in the paper).

    ``||g_b||`` is the L2 norm of sample b's gradient over all its non-batch dims (not over the whole batch).
    The gradient w.r.t. ``grads`` is ``gamma * g_b`` (R1) or ``2 gamma (||g_b|| - 1) g_b / ||g_b||`` (WGAN-GP;
    0 where ``||g_b|| = 0``, as torch's norm; a nan or inf entry in sample b makes WGAN-GP's whole row b of the
    gradient nan, as the reference's norm does, R1's only at that entry). Pass grads from ``torch.autograd.grad(..., create_graph=True)``
    and ``loss.backward()`` reaches D's parameters through PyTorch's double backward of D.

    Args:
        grads: [B, ...] float tensor, any strides (channels-last stays a view).
        kind: "r1" or "wgan-gp".
        gamma: weight >= 0.
        reduction: "mean" over the batch (nan for B = 0, as torch), "sum", or "none" ([B]).

    Returns:
        float32 (float64 for float64 grads): 0-d, or [B] for "none". The gradient has grads' dtype.
    """
    check_float_tensor("grads", grads)
    if grads.dim() == 0:
        raise ValueError("grads must have a batch dimension: shape [B, ...], got a 0-d tensor")
    check_choice("kind", kind, PENALTY_KINDS)
    gamma = check_nonnegative("gamma", gamma)
    check_choice("reduction", reduction, REDUCTIONS)
    if backend_for(grads) == "reference":
        return reference.gradient_penalty(grads.to(compute_dtype(grads.dtype)), kind, gamma, reduction)
    if library.traced():
        return torch.ops.fastgen.gradient_penalty(grads, kind, gamma, reduction)[0]
    return GradientPenalty.apply(grads, kind, gamma, reduction)


# ---------------------------------------------------------------------------------------------- compile check
def kernel_launches():
    """Every kernel configuration the ops can launch, for the sm_90/sm_80 compile check: per dtype (and tile), with
    any strides and sizes, and as Triton specializes a contiguous launch whose sizes are multiples of 16 (unit
    strides, divisible sizes: the vectorized build)."""
    # imported here: `python -m fastgen.compile_check` must not find that module imported by fastgen
    from fastgen.compile_check import KernelLaunch

    def build(kernel, dtype, pointers, constexprs, contiguous=None):
        """``contiguous``: (unit strides, integers divisible by 16) of the contiguous variant; None: any strides."""
        ones, divisible = contiguous or ((), ())
        for config in configs_for(kernel):
            yield KernelLaunch.build(kernel, dtype, pointers, ones=ones, divisible=divisible,
                                     num_warps=config.num_warps, variant="contiguous" if contiguous else "",
                                     constexprs=dict(constexprs, COMPUTE=tl_compute_dtype(dtype)))

    logit_forward = (("stride_real", "stride_fake"), ("n_real", "n_fake", "elements_per_program"))
    logit_backward = (("stride_grad_out_real", "stride_grad_out_fake"), ("n_real", "n_fake"))
    penalty = (("stride_g_n",), ("n_cols", "cols_per_program", "stride_g_b"))
    for dtype in FLOAT_DTYPES:
        acc = compute_dtype(dtype)
        block = logit_block(dtype)
        for contiguous in (None, logit_forward):
            yield from build(kernels.gan_logit_loss_forward_kernel, dtype,
                             {"TERMS_REAL": acc, "TERMS_FAKE": acc, "PARTIAL": acc}, dict(BLOCK=block), contiguous)
        for contiguous in (None, logit_backward):  # the gradient of a reduced loss has stride 0, of "none" 1
            yield from build(kernels.gan_logit_loss_backward_kernel, dtype,
                             {"GRAD_OUT_REAL": acc, "GRAD_OUT_FAKE": acc}, dict(BLOCK=block), contiguous)
        yield from build(kernels.gan_gradient_penalty_finish_kernel, dtype,
                         {"PARTIAL": acc, "PENALTY": acc, "COEF": acc, "LOSS": acc}, dict(BLOCK_B=FINISH_BLOCK))
        for block_b, block_n in sorted({tile_for(n, dtype) for n in COLUMN_BLOCKS}):
            tile = dict(BLOCK_B=block_b, BLOCK_N=block_n)
            for contiguous in (None, penalty):
                yield from build(kernels.gan_gradient_penalty_sum_squares_kernel, dtype, {"PARTIAL": acc}, tile,
                                 contiguous)
                yield from build(kernels.gan_gradient_penalty_backward_kernel, dtype,
                                 {"COEF": acc, "GRAD_OUT": acc}, tile, contiguous)
