"""PixelCNN's fused output head: the last 1x1 convolution and the per-sub-pixel cross-entropy of its logits, with
no [B, C * levels, H, W] logits stored (launchers, the autograd Function, the custom ops and the public op).

The idea of Liger-Kernel's fused linear cross-entropy, on images: the batch is taken a chunk of images at a time;
a chunk's logits come from the same cuDNN 1x1 convolution eager PyTorch runs (its algorithms, its TF32 switch,
the hidden tensor's memory format); one Triton kernel turns them into the chunk's losses and, in place, into
d loss / d logits; ``aten.convolution_backward`` of the chunk then gives its share of the gradients of the hidden
tensor, the weight and the bias. With a "mean" or "sum" loss this happens in the forward (the gradients are
final up to the scalar grad_output: three GEMMs, as eager's head, and one pass over the logits instead of eager's
log-softmax, its backward and their saved copies); with "none" the backward recomputes each chunk's logits (the
per-sub-pixel grad_output is known only then). Only one chunk's logits live at a time: a chunk's logits are about
as large as the hidden tensor (the chunk rule below), so the head's peak memory is a few hidden tensors instead
of three to four [B, C * levels, H, W] ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
from torch.autograd.function import once_differentiable

from fastgen import library
from fastgen import reference
from fastgen.autotune import configs_for
from fastgen.dispatch import backend_for
from fastgen.dtypes import FLOAT_DTYPES, compute_dtype, tl_compute_dtype
from fastgen.kernels import conv1x1_cross_entropy as kernels
from fastgen.launch import cdiv, Kernel, plan_cache
from fastgen.levels import logits_as_5d
from fastgen.reductions import REDUCTIONS
from fastgen.registry import register_family
from fastgen.validation import check_choice, check_float_tensor, check_like

MAX_SUBPIXELS = 2**31 - 4096  # sub-pixels of one chunk are numbered in int32 by the kernel

# A program takes [BLOCK_N sub-pixels, BLOCK_L levels] of 1024 elements (8 per thread at 4 warps; 256 in float64):
# all of a sub-pixel's levels in one tile up to half of that (256 levels: 4 sub-pixels per program; 17 levels:
# 32), so its logits are read once and its gradient written from registers; more levels are looped over. The
# compile check drove the sizes: 2048-element tiles spilled 4-16 bytes on sm_80 (and float64 on sm_90), 512-element
# float64 tiles 4 bytes on sm_80; these take at most 110 registers, no spills.
TILE_ELEMENTS = 1024

# Chunks: as Liger-Kernel sizes them, a chunk's logits are about as large as the hidden tensor (images per chunk
# = B / ceil(C * levels / K)), and never smaller than MIN_CHUNK_ELEMENTS logits unless the batch is (small
# batches run as one chunk: one convolution, one kernel, one convolution backward).
MIN_CHUNK_ELEMENTS = 2**22

FAMILY = register_family(
    "conv1x1_cross_entropy", __name__, benchmarks="fastgen.benchmarks.bench_conv1x1_cross_entropy",
    configs={
        # one [BLOCK_N, BLOCK_L] tile of 2048 elements per program at 4 warps. Add configs once a GPU measurement
        # shows they pay.
        kernels.conv1x1_cross_entropy_kernel: [triton.Config({}, num_warps=4)],
    })

_kernel = Kernel(kernels.conv1x1_cross_entropy_kernel, key=["n_levels", "BLOCK_N", "BLOCK_L"])


@plan_cache
def tile_for(levels: int, dtype: torch.dtype) -> tuple[int, int, bool]:
    """(BLOCK_N, BLOCK_L, ONE_TILE) for ``levels`` levels of ``dtype`` logits."""
    elements = TILE_ELEMENTS // 4 if dtype == torch.float64 else TILE_ELEMENTS
    block_l = min(triton.next_power_of_2(max(levels, 1)), elements // 2)
    return elements // block_l, block_l, levels <= block_l


@plan_cache
def chunk_images(batch: int, n_out: int, hidden_channels: int, pixels: int, dtype: torch.dtype) -> int:
    """Images per chunk for a batch of ``batch`` images of ``pixels`` pixels, ``n_out`` logits per pixel."""
    per_image = max(n_out * pixels, 1)
    by_size = cdiv(batch, max(cdiv(n_out, max(hidden_channels, 1)), 1))
    images = max(by_size, cdiv(MIN_CHUNK_ELEMENTS, per_image))
    block_n = tile_for(max(n_out, 1), dtype)[0]
    most = max((MAX_SUBPIXELS - block_n) // per_image, 1)  # int32 sub-pixel numbers in the kernel
    return max(min(images, most, batch), 1)


def _mean_weight(n_subpixels: int, reduction: str) -> float:
    return (1.0 / n_subpixels if n_subpixels else math.nan) if reduction == "mean" else 1.0


def _launch(logits, targets, scale, terms, levels, weight, write_grad):
    """The kernel on one chunk: logits [B', C * L, H, W] (overwritten by the gradient if ``write_grad``),
    targets and ``scale`` (or None) [B', C, H, W] -> terms [B' * C * H * W] (compute dtype)."""
    channels = targets.shape[1]
    n_subpixels = targets.numel()
    view = logits_as_5d(logits, channels, levels)
    block_n, block_l, one_tile = tile_for(levels, logits.dtype)
    _kernel[(cdiv(n_subpixels, block_n),)](
        view, targets, targets if scale is None else scale, terms, n_subpixels, levels, channels,
        targets.shape[2], targets.shape[3], *view.stride(), *targets.stride(),
        *((0, 0, 0, 0) if scale is None else scale.stride()), weight,
        WRITE_GRAD=write_grad, HAS_SCALE=scale is not None, ONE_TILE=one_tile,
        COMPUTE=tl_compute_dtype(logits.dtype), BLOCK_N=block_n, BLOCK_L=block_l,
    )


def _head(hidden, weight, bias, targets, *, weight_factor, scale=None, needs=(False, False, False), terms=True):
    """One pass over the batch, a chunk of images at a time.

    hidden [B, K, H, W], weight [C * L, K, 1, 1], bias [C * L] or None, int64 targets [B, C, H, W]; ``scale``:
    the per-sub-pixel grad_output [B, C, H, W] (a backward of "none") or None; ``needs``: which of (hidden,
    weight, bias) get a gradient, written with factor ``weight_factor`` * scale. Returns (the per-sub-pixel
    losses [B, C, H, W] in the compute dtype, or None without ``terms``; grad_hidden, grad_weight, grad_bias, each
    None where not needed).
    """
    batch, hidden_channels, height, width = hidden.shape
    n_out, channels = weight.shape[0], targets.shape[1]
    levels = n_out // channels
    acc = compute_dtype(hidden.dtype)
    losses = torch.empty(targets.shape, dtype=acc, device=hidden.device)  # the kernel writes them anyway
    write_grad = any(needs)
    step = chunk_images(batch, n_out, hidden_channels, height * width, hidden.dtype)
    one_chunk = step >= batch
    # one chunk: the convolution backward's gradients as they are; several: hidden's written chunk by chunk,
    # weight's and bias's summed in the compute dtype
    grad_hidden = torch.empty_like(hidden) if needs[0] and not one_chunk else None
    grad_weight = grad_bias = None
    for first in range(0, batch, step):
        chunk = slice(first, min(first + step, batch))
        x = hidden[chunk]
        logits = F.conv2d(x, weight, bias)
        _launch(logits, targets[chunk], None if scale is None else scale[chunk], losses[chunk], levels,
                weight_factor, write_grad)
        if not write_grad:
            continue
        grads = torch.ops.aten.convolution_backward(
            logits, x, weight, None if bias is None else [n_out], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [needs[0], needs[1], needs[2] and bias is not None])
        if one_chunk:  # weight's and bias's gradients in the compute dtype, as with several chunks
            grad_hidden, grad_weight, grad_bias = (grads[0], *(None if g is None else g.to(acc) for g in grads[1:]))
            break
        if needs[0]:
            grad_hidden[chunk] = grads[0]
        if grads[1] is not None:
            grad_weight = grads[1].to(acc) if grad_weight is None else grad_weight.add_(grads[1])
        if grads[2] is not None:
            grad_bias = grads[2].to(acc) if grad_bias is None else grad_bias.add_(grads[2])
    return (losses if terms else None), grad_hidden, grad_weight, grad_bias


def _reduce(losses, reduction, weight_factor):
    if reduction == "none":
        return losses
    total = losses.sum()
    return total * weight_factor if reduction == "mean" else total


def _forward(hidden, weight, bias, targets, reduction, needs):
    """(loss, grad_hidden, grad_weight, grad_bias): the gradients of the loss itself (reduction "mean" or "sum",
    ``needs`` says which), else None."""
    factor = _mean_weight(targets.numel(), reduction)
    fused = reduction != "none" and any(needs)
    losses, *grads = _head(hidden, weight, bias, targets, weight_factor=factor,
                           needs=needs if fused else (False, False, False))
    return (_reduce(losses, reduction, factor), *grads)


def _backward_none(hidden, weight, bias, targets, grad_output, needs):
    """The gradients of the "none" losses, given their grad_output [B, C, H, W]: each chunk's logits again."""
    _, *grads = _head(hidden, weight, bias, targets, weight_factor=1.0, scale=grad_output, needs=needs, terms=False)
    return grads


class Conv1x1CrossEntropy(torch.autograd.Function):
    """(hidden, weight [C * L, K, 1, 1], bias or None, int64 targets, reduction) -> the cross-entropy of the 1x1
    convolution's logits. Prefer :func:`fastgen.conv1x1_cross_entropy`, which validates arguments, picks the
    backend and handles autocast and empty tensors."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, reduction):
        needs = tuple(ctx.needs_input_grad[:3])
        loss, *grads = _forward(hidden, weight, bias, targets, reduction, needs)
        ctx.reduction, ctx.needs = reduction, needs
        if reduction == "none":
            ctx.save_for_backward(*((hidden, weight, bias, targets) if any(needs) else ()))
        else:
            ctx.save_for_backward(*grads)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if not any(ctx.needs):
            return None, None, None, None, None
        if ctx.reduction == "none":
            hidden, weight, bias, targets = ctx.saved_tensors
            grads = _backward_none(hidden, weight, bias, targets, grad_output, ctx.needs)
        else:
            grads = ctx.saved_tensors
            grads = [None if g is None else g * grad_output for g in grads]
        grads = [None if g is None else g.to(d) for g, d in zip(grads, ctx.dtypes)]
        return *grads, None, None


# ---------------------------------------------------------------------------------------------- custom ops
# The same launches as torch.ops.fastgen.* for torch.compile (see fastgen.library). The forward op also returns
# the gradients it computes for "mean" and "sum" (placeholders where none is wanted), which its autograd scales.
@library.custom_op("conv1x1_cross_entropy", "(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, "
                   "str reduction, bool[] needs) -> (Tensor, Tensor, Tensor, Tensor)")
def _head_op(hidden, weight, bias, targets, reduction, needs):
    loss, *grads = _forward(hidden, weight, bias, targets, reduction, tuple(needs))
    return loss, *(library.nothing(hidden) if g is None else g for g in grads)


def _fake_grads(hidden, weight, reduction, needs):
    if reduction == "none":
        return tuple(library.nothing(hidden) for _ in range(3))
    acc = compute_dtype(hidden.dtype)
    shapes = (None, weight.shape, (weight.shape[0],))
    grads = [torch.empty_like(hidden) if needs[0] else library.nothing(hidden)]
    grads += [hidden.new_empty(shape, dtype=acc) if need else library.nothing(hidden)
              for need, shape in zip(needs[1:], shapes[1:])]
    return tuple(grads)


@_head_op.register_fake
def _(hidden, weight, bias, targets, reduction, needs):
    acc = compute_dtype(hidden.dtype)
    loss = hidden.new_empty(targets.shape if reduction == "none" else (), dtype=acc)
    return loss, *_fake_grads(hidden, weight, reduction, needs)


@library.custom_op("conv1x1_cross_entropy_backward", "(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, "
                   "Tensor grad_output, bool[] needs) -> (Tensor, Tensor, Tensor)")
def _backward_op(hidden, weight, bias, targets, grad_output, needs):
    grads = _backward_none(hidden, weight, bias, targets, grad_output, tuple(needs))
    return tuple(library.nothing(hidden) if g is None else g for g in grads)


@_backward_op.register_fake
def _(hidden, weight, bias, targets, grad_output, needs):
    acc = compute_dtype(hidden.dtype)
    return (torch.empty_like(hidden) if needs[0] else library.nothing(hidden),
            hidden.new_empty(weight.shape, dtype=acc) if needs[1] else library.nothing(hidden),
            hidden.new_empty((weight.shape[0],), dtype=acc) if needs[2] and bias is not None
            else library.nothing(hidden))


def _setup_head(ctx, inputs, output):
    hidden, weight, bias, targets, reduction, needs = inputs
    ctx.reduction, ctx.needs = reduction, tuple(needs)
    ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
    if reduction == "none":
        ctx.save_for_backward(hidden, weight, bias, targets)
    else:
        ctx.save_for_backward(*output[1:])


def _head_op_backward(ctx, grad_output, *_grads):
    if not any(ctx.needs):
        return None, None, None, None, None, None
    if ctx.reduction == "none":
        hidden, weight, bias, targets = ctx.saved_tensors
        grads = torch.ops.fastgen.conv1x1_cross_entropy_backward(hidden, weight, bias, targets, grad_output,
                                                                  list(ctx.needs))
        grads = [g.to(d) if need else None for g, d, need in zip(grads, ctx.dtypes, ctx.needs)]
    else:
        grads = [(g * grad_output).to(d) if need else None
                 for g, d, need in zip(ctx.saved_tensors, ctx.dtypes, ctx.needs)]
    if ctx.dtypes[2] is None:
        grads[2] = None
    return *grads, None, None, None


_head_op.register_autograd(_head_op_backward, setup_context=_setup_head)


# ---------------------------------------------------------------------------------------------- public op
def _check_targets(targets, hidden, channels_out, check_range):
    """Validates integer targets [B, C, H, W] against hidden [B, K, H, W] and weight's C * L rows; returns L."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor (the level of each sub-pixel), got {targets.dtype}")
    if targets.device != hidden.device:
        raise ValueError(f"targets is on {targets.device} but hidden is on {hidden.device}")
    batch, _, height, width = hidden.shape
    if targets.dim() != 4 or (targets.shape[0], targets.shape[2], targets.shape[3]) != (batch, height, width):
        raise ValueError(f"targets must have shape [B, C, H, W] = [{batch}, C, {height}, {width}] (B, H, W of "
                         f"hidden), got {tuple(targets.shape)}")
    channels = targets.shape[1]
    if channels < 1 or channels_out % channels or channels_out == 0:
        raise ValueError(f"weight: its {channels_out} output channels must be C * levels with C = {channels} (from "
                         f"targets) and levels >= 1")
    levels = channels_out // channels
    if check_range and targets.numel():
        low, high = (int(v) for v in torch.aminmax(targets))
        if low < 0 or high >= levels:
            raise ValueError(f"targets must be in [0, levels) = [0, {levels}), got values in [{low}, {high}]")
    return levels


def _autocast(hidden, weight, bias):
    """As ``F.conv2d`` under ``torch.autocast``: every floating input in the autocast dtype."""
    device = hidden.device.type
    if not torch.is_autocast_enabled(device):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def conv1x1_cross_entropy(hidden, weight, bias, targets, reduction="mean", *, check_targets=True):
    """The cross-entropy (nats) of the logits a 1x1 convolution makes of ``hidden``, without storing the logits:
    ``pixel_cross_entropy(F.conv2d(hidden, weight, bias), targets, logits_layout="channel-major")`` in one op.

    PixelCNN's output head (its last, masked 1x1 convolution and the 256-way softmax per sub-pixel) at a fraction
    of eager's memory: eager keeps the [B, C * levels, H, W] logits, their log-softmax and their gradient (three
    tensors of 201 MB each in float32 at B=64, 32x32 RGB, 256 levels); this op keeps one chunk of logits at a time
    (about the size of ``hidden``). The GEMMs are the cuDNN 1x1 convolution eager runs (its TF32 switch and
    memory format); the softmax, loss and gradient are one Triton kernel per chunk.

    Args:
        hidden: [B, K, H, W] float16/bfloat16/float32/float64 (NCHW or channels-last), e.g. ``relu(head(t))``.
        weight: [C * levels, K] or [C * levels, K, 1, 1] in hidden's dtype: channel c's logits are output channels
            c*levels .. (c+1)*levels - 1 (the channel groups of :class:`fastgen.nn.MaskedConv2d`; pass
            ``weight * mask`` for a masked layer, as :meth:`fastgen.nn.TapConv2d.cross_entropy` does).
        bias: [C * levels] or None.
        targets: integer [B, C, H, W] in [0, levels).
        reduction: "mean" over the B*C*H*W sub-pixels (nats/dim), "sum", or "none" ([B, C, H, W]).
        check_targets: as :func:`fastgen.pixel_cross_entropy`: check the range (a device sync) and raise; with
            False a target outside [0, levels) gives that sub-pixel a nan loss and nan gradients.

    Returns:
        float32 loss (float64 for float64 inputs). Under ``torch.autocast`` hidden, weight and bias are cast to the
        autocast dtype first, as the convolution would be.
    """
    check_float_tensor("hidden", hidden)
    if hidden.dim() != 4:
        raise ValueError(f"hidden must have shape [B, K, H, W], got {tuple(hidden.shape)}")
    check_float_tensor("weight", weight)
    hidden_channels = hidden.shape[1]
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    if weight.dim() != 4 or weight.shape[1:] != (hidden_channels, 1, 1):
        raise ValueError(f"weight must have shape [C * levels, K] or [C * levels, K, 1, 1] with K = "
                         f"{hidden_channels} (hidden's channels), got {tuple(weight.shape)}")
    if bias is not None:
        check_float_tensor("bias", bias)
    hidden, weight, bias = _autocast(hidden, weight, bias)  # autocast: one dtype, as F.conv2d's inputs
    check_like("weight", weight, "hidden", hidden, shape=tuple(weight.shape))
    if bias is not None:
        check_like("bias", bias, "hidden", hidden, shape=(weight.shape[0],))
    check_choice("reduction", reduction, REDUCTIONS)
    levels = _check_targets(targets, hidden, weight.shape[0], check_targets and not library.traced())
    if not torch.is_grad_enabled():
        hidden, weight, bias = (None if t is None else t.detach() for t in (hidden, weight, bias))
    if backend_for(hidden) == "reference" or targets.numel() == 0 or hidden_channels == 0:
        return reference.conv1x1_cross_entropy(hidden, weight, bias, targets, reduction)
    if levels > 2**31 // 2:
        raise ValueError(f"weight: at most {2**30} levels are supported, got {levels}")
    targets = targets.long()
    if library.traced():
        needs = [hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad]
        return torch.ops.fastgen.conv1x1_cross_entropy(hidden, weight, bias, targets, reduction, needs)[0]
    return Conv1x1CrossEntropy.apply(hidden, weight, bias, targets, reduction)


# ---------------------------------------------------------------------------------------------- compile check
def kernel_launches():
    """Every kernel configuration the op can launch, for the sm_90/sm_80 compile check: per dtype, the tiles of
    17 levels (digits), 256 (8-bit images) and 4096 (the looped tile), loss only and with the gradient, with any
    strides and as Triton specializes the logits of a channels-last chunk (levels contiguous) and of an NCHW one
    (pixels contiguous)."""
    # imported here: `python -m fastgen.compile_check` must not find that module imported by fastgen
    from fastgen.compile_check import KernelLaunch
    import dataclasses

    layouts = {"any": ((), ()), "channels_last": (("stride_x_l",), ("stride_x_b", "stride_x_h", "stride_x_w")),
               "nchw": (("stride_x_w", "stride_t_w"), ("stride_x_b", "stride_x_l", "stride_x_c"))}
    for dtype in FLOAT_DTYPES:
        acc = compute_dtype(dtype)
        for levels in sorted({tile_for(n, dtype) for n in (17, 256, 4096)}):
            block_n, block_l, one_tile = levels
            for (write_grad, has_scale), (variant, (ones, divisible)) in (
                    ((w, s), layout) for w, s in ((False, False), (True, False), (True, True))
                    for layout in layouts.items()):
                constexprs = dict(WRITE_GRAD=write_grad, HAS_SCALE=has_scale, ONE_TILE=one_tile,
                                  COMPUTE=tl_compute_dtype(dtype), BLOCK_N=block_n, BLOCK_L=block_l)
                for config in configs_for(kernels.conv1x1_cross_entropy_kernel):
                    launch = KernelLaunch.build(
                        kernels.conv1x1_cross_entropy_kernel, dtype, {"SCALE": acc, "LOSS": acc}, ones=ones,
                        divisible=divisible, num_warps=config.num_warps, constexprs=constexprs,
                        variant=f"{variant} grad={int(write_grad)} scale={int(has_scale)}")
                    yield dataclasses.replace(launch, signature=tuple(
                        (n, "*i64" if n == "TARGETS" else k) for n, k in launch.signature))
