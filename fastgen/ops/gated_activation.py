"""The Gated PixelCNN's gated activation tanh(a) * sigmoid(b) of t + other + bias: launchers, the autograd
Function and the public op."""

from __future__ import annotations

import itertools

import torch
import triton

from fastgen import library, reference
from fastgen.autotune import configs_for
from fastgen.dispatch import backend_for
from fastgen.dtypes import FLOAT_DTYPES, tl_compute_dtype
from fastgen.kernels import gated_activation as kernels
from fastgen.launch import cdiv, Kernel, plan_cache
from fastgen.layout import memory_format_of
from fastgen.registry import register_family
from fastgen.validation import check_float_tensor, check_int, check_like


# Launch space. A program takes [BLOCK_C output channels, BLOCK_P pixels] of one image row: BLOCK_C is 8 for at
# most 8 output channels, else 32 (two programs per 64 channels); BLOCK_P fills a tile of tile_elements(dtype):
# 1024 outputs (8 per thread at 4 warps, each reading 2 elements of t and 2 of other), 512 for float64. With
# 32 channels a channels-last tile reads 32 contiguous channels per pixel (128 bytes in float32) and an NCHW
# tile 32 contiguous pixels per channel, so both layouts load whole cache lines.
CHANNEL_BLOCKS = (8, 32)
MAX_PROGRAMS = 2**31 - 1  # programs on grid axis 0 (rows * pixel blocks), numbered in int32 by the kernels

# The family, registered once: its kernels' launch configurations (each kernel launches with its first on
# the interpreter, and is autotuned over them on a GPU when there are several) and its benchmark cases.
FAMILY = register_family(
    "gated_activation", __name__, benchmarks="fastgen.benchmarks.bench_gated_activation",
    configs={
        # Gated activation: elementwise on [32 channels, 32 pixels] tiles (1024 outputs, 512 in float64), 8 outputs
        # per thread at 4 warps. Add configs once a GPU measurement shows they pay.
        kernels.gated_activation_forward_kernel: [triton.Config({}, num_warps=4)],
        kernels.gated_activation_backward_kernel: [triton.Config({}, num_warps=4)],
    })

_forward_kernel = Kernel(kernels.gated_activation_forward_kernel, key=["n_out", "BLOCK_C", "BLOCK_P"])
_backward_kernel = Kernel(kernels.gated_activation_backward_kernel, key=["n_out", "BLOCK_C", "BLOCK_P"])


def tile_elements(dtype: torch.dtype) -> int:
    return 512 if dtype == torch.float64 else 1024


@plan_cache
def tile_for(n_out: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) for ``n_out`` output channels of ``dtype``."""
    block_c = CHANNEL_BLOCKS[0] if n_out <= CHANNEL_BLOCKS[0] else CHANNEL_BLOCKS[1]
    return block_c, tile_elements(dtype) // block_c


def pixel_layout(tensors: list[torch.Tensor]):
    """The pixels of [B, C, H, W] tensors (one H and W) as rows: (n_rows_h, n_pixels, strides) with
    ``strides[i] = (b, c, h, pixel)`` of tensor i. One row of H * W pixels when every tensor steps over H as over
    W pixels (stride(2) == stride(3) * W: contiguous, channels-last and most slices), else H rows of W."""
    _, _, height, width = tensors[0].shape
    if width == 1:
        return 1, height, [(x.stride(0), x.stride(1), 0, x.stride(2)) for x in tensors]
    if height == 1 or all(x.stride(2) == x.stride(3) * width for x in tensors):
        return 1, height * width, [(x.stride(0), x.stride(1), 0, x.stride(3)) for x in tensors]
    return height, width, [(x.stride(0), x.stride(1), x.stride(2), x.stride(3)) for x in tensors]


@plan_cache
def _grid(batch: int, n_rows_h: int, n_pixels: int, n_out: int, block_c: int, block_p: int):
    n_pixel_blocks = cdiv(n_pixels, block_p)
    programs = batch * n_rows_h * n_pixel_blocks
    if programs > MAX_PROGRAMS:
        raise ValueError(f"t: at most {MAX_PROGRAMS} tiles of {block_p} pixels are supported, got {programs}")
    return (programs, cdiv(n_out, block_c)), n_pixel_blocks


def _empty_output(t: torch.Tensor) -> torch.Tensor:
    """The uninitialised [B, n, H, W] output: t's dtype, channels-last when t is."""
    batch, channels, height, width = t.shape
    return torch.empty((batch, channels // 2, height, width), dtype=t.dtype, device=t.device,
                       memory_format=memory_format_of(t))


def _gated_forward(t, other, bias, groups, keep_sum):
    """(out, s = t + other + bias, or None when not written: without other, or without ``keep_sum``)."""
    batch, channels, height, width = t.shape
    n_out = channels // 2
    block_c, block_p = tile_for(n_out, t.dtype)
    out = _empty_output(t)
    # The backward recomputes tanh(a) and sigmoid(b) from s, never stores them. With other, the forward writes
    # s (when a gradient is needed) and the backward reads it: one tensor kept instead of t and other, the
    # same bytes moved (a write of s here, one read less there). Without other, t (+ bias) is kept: as large
    # as eager's saved tanh(a) and sigmoid(b), and in the Gated PixelCNN t = v_pre is kept by the next
    # convolution anyway.
    write_sum = other is not None and keep_sum
    s = torch.empty_like(t) if write_sum else out  # t's strides when t is dense
    n_rows_h, n_pixels, strides = pixel_layout([t, out, s] + ([other] if other is not None else []))
    grid, n_pixel_blocks = _grid(batch, n_rows_h, n_pixels, n_out, block_c, block_p)
    _forward_kernel[grid](
        t, t if other is None else other, t if bias is None else bias, out, s,
        n_pixels, n_rows_h, n_pixel_blocks, n_out, n_out // groups, int(other is not None), int(bias is not None),
        int(write_sum), *strides[0], *(strides[0] if other is None else strides[3]),
        *((0, 0) if bias is None else bias.stride()), *strides[1], *strides[2],
        COMPUTE=tl_compute_dtype(t.dtype), BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return out, (s if write_sum else None)


def gated_backward(t, bias, grad_out, groups):
    """The backward kernel's launch (also the Gated PixelCNN's gated convolution's, fastgen.ops.tap_conv):
    grad_s, laid out like ``t`` (dense) or contiguous. ``t`` is s = t + other + bias (``bias`` None) when the
    forward had other, else t itself with its bias."""
    batch, channels, height, width = t.shape
    n_out = channels // 2
    block_c, block_p = tile_for(n_out, t.dtype)
    grad_s = torch.empty_like(t)  # t's strides when t is dense, else contiguous
    n_rows_h, n_pixels, strides = pixel_layout([t, grad_out, grad_s])
    grid, n_pixel_blocks = _grid(batch, n_rows_h, n_pixels, n_out, block_c, block_p)
    _backward_kernel[grid](
        t, t, t if bias is None else bias, grad_out, grad_s,
        n_pixels, n_rows_h, n_pixel_blocks, n_out, n_out // groups, 0, int(bias is not None),
        *strides[0], *strides[0], *((0, 0) if bias is None else bias.stride()), *strides[1], *strides[2],
        COMPUTE=tl_compute_dtype(t.dtype), BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return grad_s


class GatedActivation(torch.autograd.Function):
    """(t, other, bias, groups, keep_sum) -> tanh(a) * sigmoid(b) of s = t + other + bias, [B, n, H, W].

    t, other [B, 2n, H, W] (other may be None), bias [B, 2n] or None, 2n divisible by 2 * groups, nothing empty.
    The backward returns the same grad_s for t and other (the gradient of a sum), and grad_s summed over the
    pixels for bias. The forward saves s = t + other + bias when other is given (written only if ``keep_sum``:
    without it there is no backward), else t and bias. Prefer :func:`fastgen.gated_activation`, which validates
    arguments, picks the backend and handles empty tensors.
    """

    @staticmethod
    def forward(ctx, t, other, bias, groups, keep_sum=True):
        out, s = _gated_forward(t, other, bias, groups, keep_sum)
        ctx.groups = groups
        ctx.save_for_backward(*((s, None) if s is not None else (t, bias) if other is None else (None, None)))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        t, bias = ctx.saved_tensors  # (s, None) or (t, bias)
        if t is None:
            raise RuntimeError("GatedActivation: a call with other and keep_sum=False has no gradient")
        grad_s = gated_backward(t, bias, grad_out, ctx.groups)
        grad_bias = grad_s.sum((2, 3)) if ctx.needs_input_grad[2] else None
        grad_other = grad_s if ctx.needs_input_grad[1] else None
        return grad_s if ctx.needs_input_grad[0] else None, grad_other, grad_bias, None, None


# ---------------------------------------------------------------------------------------------- custom ops
# The same launches as torch.ops.fastgen.* for torch.compile (see fastgen.library). The forward op also returns
# s = t + other + bias (a placeholder where it is not written), which its backward op reads.
@library.custom_op("gated_activation", "(Tensor t, Tensor? other, Tensor? bias, int groups, bool keep_sum) "
                   "-> (Tensor, Tensor)")
def _gated_op(t, other, bias, groups, keep_sum):
    """(out, s or a placeholder)."""
    out, s = _gated_forward(t, other, bias, groups, keep_sum)
    return out, library.nothing(t) if s is None else s


@_gated_op.register_fake
def _(t, other, bias, groups, keep_sum):
    return _empty_output(t), torch.empty_like(t) if other is not None and keep_sum else library.nothing(t)


@library.custom_op("gated_activation_backward", "(Tensor t, Tensor? bias, Tensor grad_out, int groups) -> Tensor")
def _gated_backward_op(t, bias, grad_out, groups):
    return gated_backward(t, bias, grad_out, groups)


@_gated_backward_op.register_fake
def _(t, bias, grad_out, groups):
    return torch.empty_like(t)


def _setup_gated(ctx, inputs, output):
    t, other, bias, groups, keep_sum = inputs
    ctx.groups, ctx.has_sum = groups, other is not None
    ctx.save_for_backward(*((output[1], None) if other is not None else (t, bias)))
    ctx.keep_sum = keep_sum


def _gated_op_backward(ctx, grad_out, _grad_s):
    t, bias = ctx.saved_tensors  # (s, None) or (t, bias)
    if ctx.has_sum and not ctx.keep_sum:
        raise RuntimeError("gated_activation: a call with other and keep_sum=False has no gradient")
    grad_s = torch.ops.fastgen.gated_activation_backward(t, bias, grad_out, ctx.groups)
    grad_bias = grad_s.sum((2, 3)) if ctx.needs_input_grad[2] else None
    grad_other = grad_s if ctx.needs_input_grad[1] else None
    return grad_s if ctx.needs_input_grad[0] else None, grad_other, grad_bias, None, None


_gated_op.register_autograd(_gated_op_backward, setup_context=_setup_gated)


def _check_groups(groups) -> int:
    return check_int("groups", groups, low=1)


def gated_activation(t, other=None, bias=None, *, groups=1):
    """The Gated PixelCNN's gate ``tanh(a) * sigmoid(b)`` of ``s = t + other + bias`` in one kernel.

    Args:
        t: [B, 2n, H, W], any strides (NCHW, channels-last, slices), float16/bfloat16/float32/float64.
        other: optional tensor of t's shape, dtype and device added to t (the Gated PixelCNN's
            ``horizontal(h) + vertical_to_horizontal(v_pre)``: the sum is never stored).
        bias: optional [B, 2n] (e.g. a class embedding) broadcast over H and W.
        groups: s's 2n channels form ``groups`` equal groups of 2n / groups; a is the first half of each group
            and b the second (with one group ``a, b = s.chunk(2, 1)``), so output group g reads input group g.

    Returns:
        [B, n, H, W] in t's dtype (channels-last when t is). Math runs in float32 (float64 for float64). The
        backward is one kernel writing grad_s (the gradient of t and of other) and, for bias, grad_s summed
        over H and W.
    """
    check_float_tensor("t", t)
    if t.dim() != 4:
        raise ValueError(f"t must have shape [B, 2n, H, W], got {tuple(t.shape)}")
    groups = _check_groups(groups)
    channels = t.shape[1]
    if channels % (2 * groups):
        raise ValueError(f"t has {channels} channels: each of the groups={groups} groups needs a tanh and a sigmoid "
                         f"half of equal size, so the channels must be a multiple of 2 * groups = {2 * groups}")
    if other is not None:
        check_like("other", other, "t", t)
    if bias is not None:
        check_like("bias", bias, "t", t, shape=(t.shape[0], channels))
    if backend_for(t) == "reference" or t.numel() == 0:  # empty: torch's result
        return reference.gated_activation(t, other, bias, groups=groups)
    keep_sum = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (t, other, bias))
    if library.traced():
        return torch.ops.fastgen.gated_activation(t, other, bias, groups, keep_sum)[0]
    return GatedActivation.apply(t, other, bias, groups, keep_sum)


def kernel_launches():
    """Every kernel configuration the op can launch, for the sm_90/sm_80 compile check."""
    # imported here: `python -m fastgen.compile_check` must not find that module imported by fastgen
    from fastgen.compile_check import KernelLaunch

    # Two layouts of each tile: "nchw", the pixels contiguous (Triton specializes their strides equal to 1), and
    # "channels_last", the channels contiguous. The bias (a class embedding [B, 2n]) is contiguous in both.
    layouts = {
        "nchw": dict(forward=("stride_t_p", "stride_o_p", "stride_y_p", "stride_s_p", "stride_bias_c"),
                     backward=("stride_t_p", "stride_o_p", "stride_gy_p", "stride_gs_p", "stride_bias_c")),
        "channels_last": dict(forward=("stride_t_c", "stride_o_c", "stride_y_c", "stride_s_c", "stride_bias_c"),
                              backward=("stride_t_c", "stride_o_c", "stride_gy_c", "stride_gs_c", "stride_bias_c")),
    }
    for dtype in FLOAT_DTYPES:
        tiles = sorted({tile_for(n, dtype) for n in CHANNEL_BLOCKS})
        for (block_c, block_p), (layout, ones) in itertools.product(tiles, layouts.items()):
            constexprs = dict(COMPUTE=tl_compute_dtype(dtype), BLOCK_C=block_c, BLOCK_P=block_p)
            for kernel, direction in ((kernels.gated_activation_forward_kernel, "forward"),
                                      (kernels.gated_activation_backward_kernel, "backward")):
                for config in configs_for(kernel):
                    yield KernelLaunch.build(kernel, dtype, constexprs=constexprs, num_warps=config.num_warps,
                                             variant=layout, ones=ones[direction])
