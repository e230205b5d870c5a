"""Gated activation of the Gated PixelCNN: y = tanh(a) * sigmoid(b) of s = t + other + bias, in one pass.

t and other are [B, 2n, H, W], bias [B, 2n] (broadcast over the pixels), y [B, n, H, W]. The channels of s form
G groups of 2m (m = n / G): output channel c = g * m + j (group g, j < m) reads a = s[:, c + g * m] and
b = s[:, c + (g + 1) * m], the first and second half of group g.

The launcher sees each image as n_rows_h rows of P pixels: P = H * W (one row) when the strides of H and W merge
in every tensor (contiguous, channels-last, most slices), else P = W and H rows. A program takes one row's
[BLOCK_C channels, BLOCK_P pixels] tile; program (axis 0) r * n_pixel_blocks + k takes row r = b * n_rows_h + h,
pixel block k, and axis 1 the channel block. Every tensor is addressed through its own strides with int64
offsets; the pixel and channel strides equal to 1 are specialized by Triton (a contiguous axis is vectorized).

``other`` and ``bias`` are optional (runtime-uniform flags: one compiled variant for every combination).
Arithmetic runs in COMPUTE (float32 for 16/32-bit inputs, float64 for float64); results are stored in the
output pointer's dtype. The backward recomputes tanh(a) and sigmoid(b) from s: from the inputs t (+ bias), or
from s itself, which the forward stores (``write_sum``) when there is an ``other`` (one saved tensor instead of
two, for the same bytes moved); it writes grad_s, the gradient of t and of other alike.
"""

import triton
import triton.language as tl

from .numerics import sigmoids, tanh_and_slope


@triton.jit
def _tile(n_pixel_blocks, n_rows_h, n_half, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """(b, h, pixels, out_channels, a_channels) of this program's tile: b, h int64 scalars, the others int64
    vectors; a_channels[i] = c + g * m, the input channel of output channel c's first half (b's: + m)."""
    program = tl.program_id(0)  # int32: the launcher keeps rows * n_pixel_blocks < 2**31
    row = program // n_pixel_blocks
    pixel_block = program - row * n_pixel_blocks
    b = row // n_rows_h
    h = row - b * n_rows_h
    pixels = pixel_block * BLOCK_P + tl.arange(0, BLOCK_P)
    out_channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    a_channels = out_channels + (out_channels // n_half) * n_half  # c + g * m
    return b.to(tl.int64), h.to(tl.int64), pixels.to(tl.int64), out_channels.to(tl.int64), a_channels.to(tl.int64)


@triton.jit
def _load_gate_inputs(T, OTHER, BIAS, b, h, pixels, a_channels, b_channels, c_mask, mask, has_other, has_bias,
                      stride_t_b, stride_t_c, stride_t_h, stride_t_p,
                      stride_o_b, stride_o_c, stride_o_h, stride_o_p,
                      stride_bias_b, stride_bias_c, COMPUTE: tl.constexpr):
    """(a, b) halves of s = t + other + bias on a [BLOCK_C, BLOCK_P] tile (COMPUTE dtype)."""
    t = T + b * stride_t_b + h * stride_t_h + pixels[None, :] * stride_t_p
    s_a = tl.load(t + a_channels[:, None] * stride_t_c, mask=mask, other=0.0).to(COMPUTE)
    s_b = tl.load(t + b_channels[:, None] * stride_t_c, mask=mask, other=0.0).to(COMPUTE)
    if has_other:
        o = OTHER + b * stride_o_b + h * stride_o_h + pixels[None, :] * stride_o_p
        s_a += tl.load(o + a_channels[:, None] * stride_o_c, mask=mask, other=0.0).to(COMPUTE)
        s_b += tl.load(o + b_channels[:, None] * stride_o_c, mask=mask, other=0.0).to(COMPUTE)
    if has_bias:  # one [BLOCK_C] vector per half, broadcast over the pixels
        bias = BIAS + b * stride_bias_b
        s_a += tl.load(bias + a_channels * stride_bias_c, mask=c_mask, other=0.0).to(COMPUTE)[:, None]
        s_b += tl.load(bias + b_channels * stride_bias_c, mask=c_mask, other=0.0).to(COMPUTE)[:, None]
    return s_a, s_b


@triton.jit
def gated_activation_forward_kernel(
    T,  # [B, 2n, H, W] input (any strides)
    OTHER,  # [B, 2n, H, W] second input added to T (read only if has_other)
    BIAS,  # [B, 2n] bias broadcast over the pixels (read only if has_bias)
    OUT,  # [B, n, H, W] output
    S,  # [B, 2n, H, W] output (write_sum only): s = T + OTHER + BIAS, kept for the backward
    n_pixels,  # P: pixels per row (H * W when H and W merge, else W)
    n_rows_h,  # rows per image (1 when H and W merge, else H)
    n_pixel_blocks,  # cdiv(P, BLOCK_P)
    n_out,  # n: output channels
    n_half,  # m = n / G: channels of each half of a group
    has_other,  # 1: s includes OTHER
    has_bias,  # 1: s includes BIAS
    write_sum,  # 1: store s to S
    stride_t_b, stride_t_c, stride_t_h, stride_t_p,  # strides of T (stride_t_h unused with one row)
    stride_o_b, stride_o_c, stride_o_h, stride_o_p,  # strides of OTHER
    stride_bias_b, stride_bias_c,  # strides of BIAS
    stride_y_b, stride_y_c, stride_y_h, stride_y_p,  # strides of OUT
    stride_s_b, stride_s_c, stride_s_h, stride_s_p,  # strides of S
    COMPUTE: tl.constexpr,  # arithmetic dtype (tl.float32 or tl.float64)
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # pixels per program
):
    """OUT[b, c, pixel] = tanh(s[b, c + g m, pixel]) * sigmoid(s[b, c + (g + 1) m, pixel]), g = c // m."""
    b, h, pixels, out_channels, a_channels = _tile(n_pixel_blocks, n_rows_h, n_half, BLOCK_C, BLOCK_P)
    c_mask = out_channels < n_out
    mask = c_mask[:, None] & (pixels < n_pixels)[None, :]
    b_channels = a_channels + n_half
    s_a, s_b = _load_gate_inputs(T, OTHER, BIAS, b, h, pixels, a_channels, b_channels, c_mask, mask, has_other,
                                 has_bias, stride_t_b, stride_t_c, stride_t_h, stride_t_p,
                                 stride_o_b, stride_o_c, stride_o_h, stride_o_p, stride_bias_b, stride_bias_c,
                                 COMPUTE)
    if write_sum:
        s = S + b * stride_s_b + h * stride_s_h + pixels[None, :] * stride_s_p
        tl.store(s + a_channels[:, None] * stride_s_c, s_a.to(S.dtype.element_ty), mask=mask)
        tl.store(s + b_channels[:, None] * stride_s_c, s_b.to(S.dtype.element_ty), mask=mask)
    tanh_a, _ = tanh_and_slope(s_a)
    sig_b, _, _ = sigmoids(s_b)
    y = OUT + b * stride_y_b + h * stride_y_h + out_channels[:, None] * stride_y_c + pixels[None, :] * stride_y_p
    tl.store(y, (tanh_a * sig_b).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def gated_activation_backward_kernel(
    T,  # [B, 2n, H, W] input of the forward
    OTHER,  # [B, 2n, H, W] second input of the forward (read only if has_other)
    BIAS,  # [B, 2n] bias of the forward (read only if has_bias)
    GRAD_OUT,  # [B, n, H, W] gradient of the loss w.r.t. the output (any strides, 0 included)
    GRAD_S,  # [B, 2n, H, W] output: the gradient w.r.t. s (so w.r.t. T and OTHER)
    n_pixels,  # P
    n_rows_h,  # rows per image
    n_pixel_blocks,  # cdiv(P, BLOCK_P)
    n_out,  # n
    n_half,  # m
    has_other,  # 1: s includes OTHER
    has_bias,  # 1: s includes BIAS
    stride_t_b, stride_t_c, stride_t_h, stride_t_p,  # strides of T
    stride_o_b, stride_o_c, stride_o_h, stride_o_p,  # strides of OTHER
    stride_bias_b, stride_bias_c,  # strides of BIAS
    stride_gy_b, stride_gy_c, stride_gy_h, stride_gy_p,  # strides of GRAD_OUT
    stride_gs_b, stride_gs_c, stride_gs_h, stride_gs_p,  # strides of GRAD_S
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_C: tl.constexpr,  # output channels per program (each writes the a and the b channel)
    BLOCK_P: tl.constexpr,  # pixels per program
):
    """GRAD_S[a] = grad_y * sigmoid(b) * (1 - tanh(a)^2), GRAD_S[b] = grad_y * tanh(a) * sigmoid(b) * sigmoid(-b)."""
    b, h, pixels, out_channels, a_channels = _tile(n_pixel_blocks, n_rows_h, n_half, BLOCK_C, BLOCK_P)
    c_mask = out_channels < n_out
    mask = c_mask[:, None] & (pixels < n_pixels)[None, :]
    b_channels = a_channels + n_half
    s_a, s_b = _load_gate_inputs(T, OTHER, BIAS, b, h, pixels, a_channels, b_channels, c_mask, mask, has_other,
                                 has_bias, stride_t_b, stride_t_c, stride_t_h, stride_t_p,
                                 stride_o_b, stride_o_c, stride_o_h, stride_o_p, stride_bias_b, stride_bias_c,
                                 COMPUTE)
    tanh_a, tanh_slope = tanh_and_slope(s_a)
    sig_b, sig_neg_b, _ = sigmoids(s_b)
    gy = GRAD_OUT + b * stride_gy_b + h * stride_gy_h + out_channels[:, None] * stride_gy_c
    grad_y = tl.load(gy + pixels[None, :] * stride_gy_p, mask=mask, other=0.0).to(COMPUTE)
    grad_a = grad_y * sig_b * tanh_slope
    grad_b = grad_y * tanh_a * sig_b * sig_neg_b
    gs = GRAD_S + b * stride_gs_b + h * stride_gs_h + pixels[None, :] * stride_gs_p
    tl.store(gs + a_channels[:, None] * stride_gs_c, grad_a.to(GRAD_S.dtype.element_ty), mask=mask)
    tl.store(gs + b_channels[:, None] * stride_gs_c, grad_b.to(GRAD_S.dtype.element_ty), mask=mask)
