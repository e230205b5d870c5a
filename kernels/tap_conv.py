"""Implicit-GEMM 2-D convolution over a causal tap set (PixelCNN masked, shifted and stack convolutions).

Shapes: input X [B, C_in, H, W] and output Y [B, C_out, H, W], any strides (NCHW, channels-last, views); the
output pixel m = (b, y, x) reads input pixel (y + i - pad_top, x + j - pad_left) through tap (i, j) of a
window ``kernel_w`` wide. The live taps are the first ``n_taps`` taps of the window in raster order, so each
kernel loops over exactly those: a dead tap is never loaded, multiplied or differentiated.

The weight reaches the GEMM kernels *packed*: P [n_taps, C_in, C_out] contiguous, written by
``tap_conv_pack_weight_kernel`` from the dense [C_out, C_in, kh, kw] parameter with the centre tap's channel
groups already masked (RGB PixelCNN), so the forward and input-gradient loops carry no mask logic at all.
The weight gradient is reduced over pixels, split over ``split`` ranges of them when there are too few tiles
to fill the GPU, and its epilogue writes the dense [C_out, C_in, kh, kw] layout itself (the masked centre pairs
0): with one range it stores the tile in the gradient's dtype, and programs of the same launch write the zeros of
the dead taps; with several it adds with ``tl.atomic_add`` into the zero-filled gradient (float32/float64) or,
for 16-bit, into a zero-filled fp32 sum of the live taps [1, n_taps, C_in, C_out], or (deterministic mode) stores
partial sums [split, n_taps, C_in, C_out] in ACC; ``tap_conv_unpack_grad_kernel`` adds those sums, masks, casts
and scatters them into the dense layout (zeros at dead taps).

GEMM view (M = B*H*W pixels):
* forward      Y[m, o]  = sum_t sum_c X[m + shift_t, c] * P[t, c, o]       (tap_conv_gemm_kernel)
* input grad   dX[m, c] = sum_t sum_o dY[m - shift_t, o] * P[t, c, o]      (tap_conv_gemm_kernel, BACKWARD)
* weight grad  dP[t, c, o] = sum_m X[m + shift_t, c] * dY[m, o]            (tap_conv_weight_grad_kernel)
Each GEMM loop runs over (tap, channel block) pairs flattened into one loop, so the software pipeliner sees a
single loop however many taps are live. Accumulation is in ACC (float32, or float64 for float64 inputs).
FOLD (a constexpr of the forward and the weight gradient, for small C_in such as a PixelCNN's 1- or 3-channel
input layer): a channel block is at least 16 wide (tl.dot's minimum), so at C_in = 3 each (tap, block) step
would multiply 13 padding channels. The FOLD variants reduce instead over the flattened k = t * C_in + c in
[0, n_taps * C_in), BLOCK_K (BLOCK_C) at a time, each column of the forward's X tile (each row of the weight
gradient's) gathering its own tap's shift: P [n_taps, C_in, C_out] is the contiguous [n_taps * C_in, C_out], and
the weight gradient's tile rows k address the dense gradient at tap k // C_in, channel k % C_in:
* forward      Y[m, o]  = sum_k X[m + shift_(k // C_in), k % C_in] * P[k, o]
* weight grad  dP[k, o] = sum_m X[m + shift_(k // C_in), k % C_in] * dY[m, o]
The input gradient of such a layer (C_in outputs) is not folded: an input layer's pixels need no gradient.
PRECISION is ``tl.dot``'s input precision: "tf32" (float32 on TF32 tensor cores, chosen by the host when PyTorch
would use TF32 for a convolution) or "ieee" (exact float32 products on FMA units; 16-bit and float64 tiles
ignore it). The bias is a runtime flag (``has_bias``), not a constexpr: one compiled forward serves both.
INPUT_ACT (a constexpr: its own compiled variants; 0 is the plain convolution) convolves an activation of x
without storing it:
* 1, relu: the forward and the weight gradient apply relu to each loaded X tile (``tl.where(x < 0, 0, x)``, nan
  stays nan as in torch.relu), and the input gradient zeroes dX where the forward input x <= 0 (read in its
  epilogue through GATE): torch.relu's backward, which passes the gradient where x is nan.
* 2, concat_elu (PixelCNN++): the convolution of elu(cat([x, -x], 1)), whose weight has 2 * C_x input channels:
  P [n_taps, 2 C_x, C_out], rows c (x's channel c) and C_x + c (-x's). With W1 = P[:, :C_x], W2 = P[:, C_x:]:
  forward      Y[m, o]  = sum_t sum_c elu(X[m + shift_t, c]) W1[t, c, o] + elu(-X[m + shift_t, c]) W2[t, c, o]
               (each X tile loaded once, two tl.dot against the two weight halves; FOLD alike)
  input grad   dX[m, c] = elu'(x) G1[m, c] - elu'(-x) G2[m, c],  G1/G2 = sum_t sum_o dY[m - shift_t, o] W1/W2[t, c, o]
               (two accumulators, combined in the epilogue with the GATE tile x; elu'(z) = exp(z) for z <= 0,
               else 1: torch's elu_backward as CUDA defines it, where a nan x passes the gradient (torch's
               vectorized CPU kernel gives nan there), and exp(-inf) = 0)
  weight grad  the tile's rows c < C_x reduce elu(X[., c]) tiles, rows C_x + c reduce elu(-X[., c]) tiles.
  elu(z) = z for z > 0, else exp(z) - 1 (F.elu with alpha 1; nan stays nan), computed in ACC, rounded to x's dtype
  before the tl.dot as F.elu's output would be.
GATE_KIND (a constexpr of the forward) gates the convolution c (C_out = 2F channels) in the epilogue, writing
F channels to OUT:
* 1, PixelCNN++'s gated residual: y = r + a * sigmoid(b), r = ADDEND [B, F, H, W];
* 2, the Gated PixelCNN's gate: y = tanh(a) * sigmoid(b) of c + other (ADDEND [B, 2F, H, W], optional: the
  vertical stack's link into the horizontal one).
Each program keeps two accumulators, a and b, for its output channels j. c's channels form G groups of
2 m = 2F / G (``gate_group`` = m; G = 3 for an RGB Gated PixelCNN, 1 otherwise): a of channel j = g m + i is
c's channel 2 g m + i, b the channel m after it (with one group a = c[:, :F], b = c[:, F:]). SAVED (the
backward's input) gets c (+ other); then a per-image SAMPLE_BIAS [B, 2F] (a class embedding, optional) is
added to both before the gate, and not saved.
Pixel indices are int32 (fewer than 2**31 pixels); the batch offset b * stride_b is int64, so a tensor may
hold more than 2**31 elements.
"""

import triton
import triton.language as tl

from .numerics import sigmoids, tanh_and_slope

# The tap set and split arguments are not specialized (Triton would compile a variant whenever one equals 1),
# so one compiled kernel per dtype, layout and tile serves every tap set.
_TAP_SET_ARGS = ["n_taps", "kernel_w", "pad_top", "pad_left"]


@triton.jit
def _pixel_coordinates(offs_m, height, width):
    """Flat pixel indices -> (batch, row, column)."""
    hw = height * width
    b = offs_m // hw
    rem = offs_m - b * hw
    y = rem // width
    return b, y, rem - y * width


@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b. UPCAST (bfloat16 under Triton's interpreter, whose bf16 tl.dot is wrong) multiplies in
    float32: bf16 x bf16 products are exact in float32, as in the tensor-core MMA, which accumulates in fp32.
    PRECISION: "tf32" or "ieee" for float32 operands (the interpreter multiplies exactly either way)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _elu(z, negate, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """F.elu(-z if negate else z) (alpha 1; ``negate`` a bool or a tile of them) in z's dtype, computed in ACC:
    the value for values > 0, else exp(value) - 1 (nan stays nan). The negation too is done in ACC (the
    interpreter negates bfloat16 as integers). With UPCAST (bfloat16 under the interpreter, whose float32 ->
    bfloat16 conversion truncates instead of rounding to nearest) the result stays in ACC: _mma multiplies in
    float32 there anyway."""
    zc = z.to(ACC)
    zc = tl.where(negate, -zc, zc)
    zc = tl.where(zc > 0, zc, tl.exp(zc) - 1.0)
    if UPCAST:
        return zc
    return zc.to(z.dtype)


@triton.jit
def _x_channel(offs_c, c_in, INPUT_ACT: tl.constexpr):
    """(x's channel, whether it is negated) of the weight's input channels ``offs_c``: themselves, unnegated,
    except with concat_elu (INPUT_ACT 2), whose c_in = 2 C_x channels are x's (c < C_x) then -x's (c - C_x)."""
    if INPUT_ACT == 2:
        half = c_in // 2
        negated = offs_c >= half
        return tl.where(negated, offs_c - half, offs_c), negated
    return offs_c, offs_c < 0


@triton.jit
def _input_activation(xt, negated, INPUT_ACT: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """The weight gradient's [BLOCK_C, BLOCK_M] tile of the forward's convolved input: x (INPUT_ACT 0),
    relu(x) (1: nan kept) or, with concat_elu (2), elu(x) on the rows of x's channels and elu(-x) on the
    ``negated`` rows of -x's."""
    if INPUT_ACT == 1:
        xt = tl.where(xt < 0, 0.0, xt)
    elif INPUT_ACT == 2:
        xt = _elu(xt, negated[:, None], ACC, UPCAST)
    return xt


@triton.jit
def _forward_step(a, w_ptrs, w_ok, acc, acc_gate, second_half, gate_columns, INPUT_ACT: tl.constexpr,
                  GATED: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """One reduction step of the forward GEMM (both loops): (acc, acc_gate) += act(a) @ P's tile at ``w_ptrs``
    (a's columns; b's ``gate_columns`` further with GATED, else acc_gate is returned as given). relu (INPUT_ACT
    1) is applied to a; concat_elu (2) multiplies elu(a) against the tile and elu(-a) against the one of -x's
    rows, ``second_half`` further."""
    w = tl.load(w_ptrs, mask=w_ok, other=0.0)
    if INPUT_ACT == 2:
        a_pos = _elu(a, False, ACC, UPCAST)
        acc = _mma(a_pos, w, acc, UPCAST, PRECISION)
        if GATED:
            acc_gate = _mma(a_pos, tl.load(w_ptrs + gate_columns, mask=w_ok, other=0.0), acc_gate, UPCAST, PRECISION)
        w_ptrs += second_half
        w = tl.load(w_ptrs, mask=w_ok, other=0.0)
        a = _elu(a, True, ACC, UPCAST)
    elif INPUT_ACT == 1:
        a = tl.where(a < 0, 0.0, a)  # relu(x), nan kept
    acc = _mma(a, w, acc, UPCAST, PRECISION)
    if GATED:
        acc_gate = _mma(a, tl.load(w_ptrs + gate_columns, mask=w_ok, other=0.0), acc_gate, UPCAST, PRECISION)
    return acc, acc_gate


@triton.jit
def _centre_live(offs_c, offs_o, c_in, c_out, groups, strict, interleaved):
    """[BLOCK_C, BLOCK_O] mask of the centre tap: input group < (strict) or <= output group; channel c of C is in
    group c * groups // C (contiguous groups) or, with ``interleaved``, c % groups."""
    in_group = tl.where(interleaved != 0, offs_c % groups, offs_c * groups // c_in)
    out_group = tl.where(interleaved != 0, offs_o % groups, offs_o * groups // c_out)
    return in_group[:, None] < out_group[None, :] + 1 - strict


@triton.jit(do_not_specialize=_TAP_SET_ARGS + ["has_bias", "has_addend", "has_sample_bias", "gate_group"])
def tap_conv_gemm_kernel(
    A,  # activations read: the input x [B, C_in, H, W] (forward) or the output gradient [B, C_out, H, W]
    P,  # packed weight [n_taps, C_in, C_out] ([n_taps, 2 C_x, C_out] with concat_elu), contiguous
    BIAS,  # bias [C_out] (read only when has_bias)
    GATE,  # the forward input x [B, C_x, H, W] (read only with INPUT_ACT and BACKWARD: the activation's gate)
    OUT,  # written: the output y [B, C_out, H, W] (forward; [B, C_out / 2, H, W] with GATE_KIND) or the input
    # gradient [B, C_x, H, W]
    ADDEND,  # with GATE_KIND 1: the residual r [B, C_out / 2, H, W]; 2: other [B, C_out, H, W] (if has_addend)
    SAVED,  # with GATE_KIND: written, the convolution c = [a, b] [B, C_out, H, W] (+ other) the backward reads
    SAMPLE_BIAS,  # with GATE_KIND: [B, C_out] added to c before the gate (read only when has_sample_bias)
    n_pixels, height, width, n_red, n_out,  # n_pixels = B * H * W; channels reduced (of A) and produced (of OUT)
    n_taps, kernel_w, pad_top, pad_left,  # the tap set
    has_bias,  # 1: add BIAS in the epilogue (a runtime flag: one compiled variant with and without)
    has_addend, has_sample_bias,  # with GATE_KIND: read ADDEND, SAMPLE_BIAS (runtime flags, as has_bias)
    gate_group,  # with GATE_KIND: m, the gated output channels per channel group (n_out without groups)
    stride_ab, stride_ac, stride_ah, stride_aw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    stride_gb, stride_gc, stride_gh, stride_gw,  # GATE's strides (placeholders unless INPUT_ACT and BACKWARD)
    stride_sb, stride_sc, stride_sh, stride_sw,  # SAVED's strides (placeholders unless GATE_KIND)
    stride_rb, stride_rc, stride_rh, stride_rw,  # ADDEND's strides (placeholders unless GATE_KIND)
    stride_qb, stride_qc,  # SAMPLE_BIAS's strides (placeholders unless GATE_KIND)
    stride_pk, stride_pn,  # P's strides over the reduced and the produced channels: (C_out, 1) or (1, C_out)
    BACKWARD: tl.constexpr,  # the input gradient: pixel m gathers A at m - shift instead of m + shift
    INPUT_ACT: tl.constexpr,  # 0: conv(x); 1: conv(relu(x)); 2: conv(elu(cat([x, -x]))) (see the module doc)
    UPCAST: tl.constexpr,  # multiply in float32 (bfloat16 under the interpreter)
    PRECISION: tl.constexpr,  # tl.dot input precision of float32 operands: "tf32" or "ieee"
    ACC: tl.constexpr,  # accumulator dtype
    BLOCK_M: tl.constexpr,  # pixels per program (the tiles and warps come from the autotuned configs)
    BLOCK_N: tl.constexpr,  # produced channels per program
    BLOCK_K: tl.constexpr,  # reduced channels per step (with FOLD: (tap, channel) pairs per step)
    FOLD: tl.constexpr = False,  # the forward of a small-C_in layer: reduce over k = tap * n_red + c (not BACKWARD)
    GATE_KIND: tl.constexpr = 0,  # the forward's gate (n_out = C_out / 2): 1, OUT = r + a * sigmoid(b); 2, tanh(a) * sigmoid(b)
):
    """The forward (OUT[m, o] = sum_t sum_c A[m + shift_t, c] P[t, c, o]) and, with BACKWARD, the input
    gradient (OUT[m, c] = sum_t sum_o A[m - shift_t, o] P[t, c, o]): the same GEMM over the live taps. With
    INPUT_ACT 1 the forward reads relu(A) and the input gradient is OUT[m, c] * (GATE[m, c] <= 0 ? 0 : 1); with
    INPUT_ACT 2 (concat_elu) the forward reduces elu(A) and elu(-A) against P's two row halves and the input
    gradient keeps one accumulator per half (see the module doc). With FOLD (the forward only) the reduction runs
    over the flattened k = tap * n_red + c, BLOCK_K at a time, each column of the A tile gathering its own tap's
    pixel shift: P's rows are k (tap * 2 n_red + c and + n_red with concat_elu). With GATE_KIND (the forward only)
    the program's output channels j are those of a = c[:, cols] and b = c[:, cols + m] (P's columns, one
    accumulator each; cols = j without groups): it writes c (+ ADDEND with GATE_KIND 2) to SAVED, then OUT =
    ADDEND + a * sigmoid(b) (GATE_KIND 1) or tanh(a) * sigmoid(b) (GATE_KIND 2), SAMPLE_BIAS added to a and b."""
    tl.static_assert(not (FOLD and BACKWARD), "FOLD is a forward variant")
    tl.static_assert(not (GATE_KIND != 0 and BACKWARD), "GATE_KIND is a forward variant")
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    b, y, x = _pixel_coordinates(offs_m, height, width)
    m_ok = offs_m < n_pixels
    n_ok = offs_n < n_out
    a_batch = A + b.to(tl.int64) * stride_ab
    # P's elements per tap, and the offset of the second row half (-x's channels) with concat_elu: P's input
    # channels are the reduced ones in the forward (stride_pk), the produced ones in the input gradient
    tap_size = n_red * n_out * (2 if INPUT_ACT == 2 else 1) * (2 if GATE_KIND != 0 else 1)
    second_half = n_out * stride_pn if BACKWARD else n_red * stride_pk
    if GATE_KIND != 0:  # channel j = g m + i of the output gates c's channels 2 g m + i (a) and 2 g m + m + i (b)
        cols = (offs_n // gate_group) * (2 * gate_group) + offs_n % gate_group
    else:
        cols = offs_n
    gate_columns = gate_group * stride_pn  # with GATE: from P's column of a to that of b

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    if INPUT_ACT == 2 and BACKWARD:
        acc_neg = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)  # dY W2^T: the gradient reaching elu(-x)
    if GATE_KIND != 0:
        acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)  # b = c[:, n_out + j]
    else:
        acc_gate = acc  # unused: _forward_step passes it through
    if FOLD:  # k = tap * n_red + c: no padded channels (C_in = 3 in steps of 16 would multiply 13 zeros)
        n_k = n_taps * n_red
        for k0 in range(0, n_k, BLOCK_K):
            ks = k0 + offs_k
            tap = ks // n_red
            cs = ks - tap * n_red
            ay = y[:, None] + (tap // kernel_w - pad_top)[None, :]  # [BLOCK_M, BLOCK_K]: each column its shift
            ax = x[:, None] + (tap % kernel_w - pad_left)[None, :]
            a_ok = m_ok[:, None] & (ks < n_k)[None, :] & (ay >= 0) & (ay < height) & (ax >= 0) & (ax < width)
            a = tl.load(a_batch[:, None] + ay * stride_ah + ax * stride_aw + cs[None, :] * stride_ac, mask=a_ok,
                        other=0.0)
            rows = ks + tap * n_red if INPUT_ACT == 2 else ks  # P as [n_taps * n_red (x2 with concat_elu), C_out]
            w_ptrs = P + rows[:, None] * stride_pk + cols[None, :] * stride_pn
            w_ok = (ks < n_k)[:, None] & n_ok[None, :]
            acc, acc_gate = _forward_step(a, w_ptrs, w_ok, acc, acc_gate, second_half, gate_columns, INPUT_ACT,
                                          GATE_KIND != 0, ACC, UPCAST, PRECISION)
    else:
        k_blocks = tl.cdiv(n_red, BLOCK_K)
        for step in range(0, n_taps * k_blocks):
            tap = step // k_blocks
            ks = (step - tap * k_blocks) * BLOCK_K + offs_k
            dy = tap // kernel_w - pad_top
            dx = tap % kernel_w - pad_left
            if BACKWARD:  # the output pixel that read (y, x) through this tap
                dy = -dy
                dx = -dx
            ay = y + dy
            ax = x + dx
            pixel_ok = m_ok & (ay >= 0) & (ay < height) & (ax >= 0) & (ax < width)
            k_ok = ks < n_red
            a = tl.load(a_batch[:, None] + (ay * stride_ah + ax * stride_aw)[:, None] + ks[None, :] * stride_ac,
                        mask=pixel_ok[:, None] & k_ok[None, :], other=0.0)
            w_ptrs = P + tap.to(tl.int64) * tap_size + ks[:, None] * stride_pk + cols[None, :] * stride_pn
            w_ok = k_ok[:, None] & n_ok[None, :]
            if BACKWARD:  # the activation's gradient is the epilogue's: dY W (W2 too with concat_elu)
                if INPUT_ACT == 2:
                    acc_neg = _mma(a, tl.load(w_ptrs + second_half, mask=w_ok, other=0.0), acc_neg, UPCAST, PRECISION)
                acc = _mma(a, tl.load(w_ptrs, mask=w_ok, other=0.0), acc, UPCAST, PRECISION)
            else:
                acc, acc_gate = _forward_step(a, w_ptrs, w_ok, acc, acc_gate, second_half, gate_columns, INPUT_ACT,
                                              GATE_KIND != 0, ACC, UPCAST, PRECISION)

    if has_bias != 0:
        acc += tl.load(BIAS + cols, mask=n_ok, other=0.0).to(ACC)[None, :]
        if GATE_KIND != 0:
            acc_gate += tl.load(BIAS + cols + gate_group, mask=n_ok, other=0.0).to(ACC)[None, :]
    if INPUT_ACT != 0 and BACKWARD:
        gate = tl.load(GATE + (b.to(tl.int64) * stride_gb + y * stride_gh + x * stride_gw)[:, None]
                       + offs_n[None, :] * stride_gc, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        if INPUT_ACT == 2:  # elu'(x) G1 - elu'(-x) G2, elu'(z) = exp(z) for z <= 0 else 1 (x nan: G1 - G2)
            gate = gate.to(ACC)
            acc = (tl.where(gate <= 0, acc * tl.exp(gate), acc)
                   - tl.where(gate >= 0, acc_neg * tl.exp(-gate), acc_neg))
        else:  # torch.relu's backward: 0 where x <= 0; x nan passes the gradient
            acc = tl.where(gate <= 0, 0.0, acc)
    out_ok = m_ok[:, None] & n_ok[None, :]
    if GATE_KIND != 0:  # each [BLOCK_M, BLOCK_N] pointer tile is formed where it is used (few live at once)
        if GATE_KIND == 2:  # c + other: the gate's input
            add_rows = b.to(tl.int64) * stride_rb + y * stride_rh + x * stride_rw
            add_ok = out_ok & (has_addend != 0)
            acc += tl.load(ADDEND + add_rows[:, None] + (cols * stride_rc)[None, :], mask=add_ok, other=0.0).to(ACC)
            acc_gate += tl.load(ADDEND + add_rows[:, None] + ((cols + gate_group) * stride_rc)[None, :], mask=add_ok,
                                other=0.0).to(ACC)
        # saved for the backward (rounded as it is stored), without the sample bias
        saved_rows = b.to(tl.int64) * stride_sb + y * stride_sh + x * stride_sw
        tl.store(SAVED + saved_rows[:, None] + (cols * stride_sc)[None, :], acc.to(SAVED.dtype.element_ty),
                 mask=out_ok)
        tl.store(SAVED + saved_rows[:, None] + ((cols + gate_group) * stride_sc)[None, :],
                 acc_gate.to(SAVED.dtype.element_ty), mask=out_ok)
        bias_rows = b.to(tl.int64) * stride_qb
        bias_ok = out_ok & (has_sample_bias != 0)
        acc_gate += tl.load(SAMPLE_BIAS + bias_rows[:, None] + ((cols + gate_group) * stride_qc)[None, :],
                            mask=bias_ok, other=0.0).to(ACC)
        acc += tl.load(SAMPLE_BIAS + bias_rows[:, None] + (cols * stride_qc)[None, :], mask=bias_ok,
                       other=0.0).to(ACC)
        if GATE_KIND == 1:  # r + a * sigmoid(b)
            acc = acc / (1.0 + tl.exp(-acc_gate))
            residual_rows = b.to(tl.int64) * stride_rb + y * stride_rh + x * stride_rw
            acc += tl.load(ADDEND + residual_rows[:, None] + (offs_n * stride_rc)[None, :], mask=out_ok,
                           other=0.0).to(ACC)
        else:  # tanh(a) * sigmoid(b), accurate at both ends (the gated_activation kernel's helpers)
            tanh_a, _ = tanh_and_slope(acc)
            sigmoid_b, _, _ = sigmoids(acc_gate)
            acc = tanh_a * sigmoid_b
    out_offsets = (b.to(tl.int64) * stride_ob + y * stride_oh + x * stride_ow)[:, None] + offs_n[None, :] * stride_oc
    tl.store(OUT + out_offsets, acc.to(OUT.dtype.element_ty), mask=out_ok)


# The weight gradient's target arguments are not specialized either: one compiled variant per target dtype
# serves the dense gradient (contiguous or channels-last), the partial sums and every split.
_WEIGHT_GRAD_TARGET_ARGS = ["window_taps", "centre", "groups", "strict", "interleaved", "atomic", "stride_ws",
                            "stride_bs", "stride_wo", "stride_wc", "stride_wh", "stride_ww"]


@triton.jit
def _write_weight_grad(GRAD_W, acc, tap, offs_c, offs_o, ok, kernel_w, atomic, split_offset, stride_wo, stride_wc,
                       stride_wh, stride_ww, ACC: tl.constexpr):
    """Writes the [BLOCK_C, BLOCK_O] tile ``acc`` of tap ``tap`` (a scalar, or [BLOCK_C, 1] with FOLD: each row
    its own tap) at GRAD_W[o, c, tap // kernel_w, tap % kernel_w] (+ ``split_offset``): stored in GRAD_W's dtype,
    or with ``atomic`` added (fp32/fp64 targets only: no 16-bit atomics) into a zeroed target. The offsets are
    int32 (one split of GRAD_W holds fewer than 2**31 elements): int64 ones made the 128x128 16-bit tile spill."""
    target = (GRAD_W + split_offset) + (offs_o[None, :] * stride_wo + offs_c[:, None] * stride_wc
                                        + (tap // kernel_w) * stride_wh + (tap % kernel_w) * stride_ww)
    value = acc.to(GRAD_W.dtype.element_ty)
    if GRAD_W.dtype.element_ty == ACC:  # compile-time: the atomic branch exists in accumulator-typed variants only
        if atomic != 0:
            tl.atomic_add(target, value, mask=ok, sem="relaxed")
        else:
            tl.store(target, value, mask=ok)
    else:
        tl.store(target, value, mask=ok)


@triton.jit(do_not_specialize=_TAP_SET_ARGS + ["pixels_per_split", "has_bias"] + _WEIGHT_GRAD_TARGET_ARGS)
def tap_conv_weight_grad_kernel(
    X,  # input [B, C_in, H, W] ([B, C_in / 2, H, W] with concat_elu)
    GRAD_Y,  # output gradient [B, C_out, H, W]
    GRAD_W,  # written: the dense weight gradient [C_out, C_in, kh, kw], or in ACC the partial sums (see the strides)
    GRAD_B,  # written when has_bias: the bias gradient [C_out], or in ACC the partial sums [split, C_out]
    n_pixels, height, width, c_in, c_out,
    n_taps, kernel_w, pad_top, pad_left,
    pixels_per_split,  # a multiple of BLOCK_M
    has_bias,  # 1: a row of programs after the GEMM ones sums the bias gradient (a runtime flag)
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_gb, stride_gc, stride_gh, stride_gw,
    window_taps,  # kh * kw: rows of programs after the bias row (if launched) write 0 at taps n_taps..window_taps-1
    centre, groups, strict, interleaved,  # the channel-group masked tap (-1: none) and its rule: written 0
    atomic,  # 1: tl.atomic_add into the zeroed ACC target (a split reduction); 0: store
    stride_ws, stride_bs,  # GRAD_W's and GRAD_B's offsets per split (0: one sum, or atomic)
    stride_wo, stride_wc, stride_wh, stride_ww,  # GRAD_W's strides (partial sums [split, n_taps, C_in, C_out]:
    # 1, C_out, kernel_w * C_in * C_out, C_in * C_out, so that tap t is at (t // kernel_w, t % kernel_w))
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    INPUT_ACT: tl.constexpr,  # the forward convolved X (0), relu(X) (1: relu(X) tiles) or concat_elu(X) (2:
    # c_in = 2 C_x weight channels; rows c < C_x reduce elu(X[c]) tiles, rows C_x + c elu(-X[c]) tiles)
    BLOCK_C: tl.constexpr,  # input channels per program (with FOLD: rows k = tap * c_in + c per program)
    BLOCK_O: tl.constexpr,  # output channels per program
    BLOCK_M: tl.constexpr,  # pixels per step
    FOLD: tl.constexpr = False,  # small C_in: the tile's rows are k = tap * c_in + c, each row its own shift
):
    """Grid (output channel blocks, n_taps * input channel blocks (+1 with has_bias) (+ zero rows), split); with
    FOLD (output channel blocks, cdiv(n_taps * c_in, BLOCK_C) (+1 with has_bias) (+ zero rows), split). Zero rows
    (launched with split 1 into the dense gradient): cdiv((window_taps - n_taps) * c_in, BLOCK_C) programs per
    output channel block, whose rows are the flattened k = tap * c_in + c of the dead taps."""
    pid_o = tl.program_id(0)
    pid_tc = tl.program_id(1)  # tap * c_blocks + input channel block (FOLD: k block); then the bias, the zero rows
    pid_s = tl.program_id(2)  # pixel split
    c_blocks = tl.cdiv(c_in, BLOCK_C)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < c_out
    start = pid_s * pixels_per_split
    end = tl.minimum(start + pixels_per_split, n_pixels)

    if FOLD:
        gemm_programs = tl.cdiv(n_taps * c_in, BLOCK_C)
    else:
        gemm_programs = n_taps * c_blocks
    if pid_tc < gemm_programs:
        if FOLD:
            n_k = n_taps * c_in
            ks = pid_tc * BLOCK_C + tl.arange(0, BLOCK_C)
            k_ok = ks < n_k
            tap = ks // c_in
            offs_c = ks - tap * c_in
            x_c, negated = _x_channel(offs_c, c_in, INPUT_ACT)
            dy = (tap // kernel_w - pad_top)[:, None]  # [BLOCK_C, 1]: each row its shift
            dx = (tap % kernel_w - pad_left)[:, None]
            acc = tl.zeros((BLOCK_C, BLOCK_O), dtype=ACC)
            for m0 in range(start, end, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                b, y, x = _pixel_coordinates(offs_m, height, width)
                m_ok = offs_m < end
                iy = y[None, :] + dy  # [BLOCK_C, BLOCK_M]
                ix = x[None, :] + dx
                x_ok = k_ok[:, None] & m_ok[None, :] & (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
                xt = tl.load(X + (b.to(tl.int64) * stride_xb)[None, :] + iy * stride_xh + ix * stride_xw
                             + x_c[:, None] * stride_xc, mask=x_ok, other=0.0)
                xt = _input_activation(xt, negated, INPUT_ACT, ACC, UPCAST)
                g = tl.load(GRAD_Y + (b.to(tl.int64) * stride_gb + y * stride_gh + x * stride_gw)[:, None]
                            + offs_o[None, :] * stride_gc, mask=m_ok[:, None] & o_ok[None, :], other=0.0)
                acc = _mma(xt, g, acc, UPCAST, PRECISION)
            # the masked channel pairs of the centre tap's rows: 0 (stored; added as 0 into the zeroed sums)
            live = (tap != centre)[:, None] | _centre_live(offs_c, offs_o, c_in, c_out, groups, strict, interleaved)
            _write_weight_grad(GRAD_W, tl.where(live, acc, 0.0), tap[:, None], offs_c, offs_o,
                               k_ok[:, None] & o_ok[None, :], kernel_w, atomic, pid_s.to(tl.int64) * stride_ws,
                               stride_wo, stride_wc, stride_wh, stride_ww, ACC)
        else:
            tap = pid_tc // c_blocks
            offs_c = (pid_tc - tap * c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
            c_ok = offs_c < c_in
            x_c, negated = _x_channel(offs_c, c_in, INPUT_ACT)
            dy = tap // kernel_w - pad_top
            dx = tap % kernel_w - pad_left
            acc = tl.zeros((BLOCK_C, BLOCK_O), dtype=ACC)
            for m0 in range(start, end, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                b, y, x = _pixel_coordinates(offs_m, height, width)
                m_ok = offs_m < end
                iy = y + dy
                ix = x + dx
                pixel_ok = m_ok & (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
                xt = tl.load(X + (b.to(tl.int64) * stride_xb + iy * stride_xh + ix * stride_xw)[None, :]
                             + x_c[:, None] * stride_xc, mask=c_ok[:, None] & pixel_ok[None, :], other=0.0)
                xt = _input_activation(xt, negated, INPUT_ACT, ACC, UPCAST)
                g = tl.load(GRAD_Y + (b.to(tl.int64) * stride_gb + y * stride_gh + x * stride_gw)[:, None]
                            + offs_o[None, :] * stride_gc, mask=m_ok[:, None] & o_ok[None, :], other=0.0)
                acc = _mma(xt, g, acc, UPCAST, PRECISION)
            if tap == centre:  # its masked channel pairs: 0 (a per-element test on every tap took ~90 registers)
                acc = tl.where(_centre_live(offs_c, offs_o, c_in, c_out, groups, strict, interleaved), acc, 0.0)
            _write_weight_grad(GRAD_W, acc, tap, offs_c, offs_o, c_ok[:, None] & o_ok[None, :], kernel_w, atomic,
                               pid_s.to(tl.int64) * stride_ws, stride_wo, stride_wc, stride_wh, stride_ww, ACC)
    elif pid_tc < gemm_programs + has_bias:
        # programs of their own: summing dY inside the GEMM loop pulled its tile into registers (+90 regs)
        bias = tl.zeros((BLOCK_O,), dtype=ACC)
        for m0 in range(start, end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            b, y, x = _pixel_coordinates(offs_m, height, width)
            m_ok = offs_m < end
            g = tl.load(GRAD_Y + (b.to(tl.int64) * stride_gb + y * stride_gh + x * stride_gw)[:, None]
                        + offs_o[None, :] * stride_gc, mask=m_ok[:, None] & o_ok[None, :], other=0.0)
            bias += tl.sum(g.to(ACC), axis=0)
        bias_target = GRAD_B + pid_s * stride_bs + offs_o
        if GRAD_B.dtype.element_ty == ACC:
            if atomic != 0:
                tl.atomic_add(bias_target, bias, mask=o_ok, sem="relaxed")
            else:
                tl.store(bias_target, bias, mask=o_ok)
        else:
            tl.store(bias_target, bias.to(GRAD_B.dtype.element_ty), mask=o_ok)
    else:  # the dead taps n_taps..window_taps-1 of the dense gradient, BLOCK_C of their (tap, channel) rows
        dead_k = n_taps * c_in + (pid_tc - gemm_programs - has_bias) * BLOCK_C + tl.arange(0, BLOCK_C)
        dead_tap = dead_k // c_in
        dead_c = dead_k - dead_tap * c_in
        dead_target = GRAD_W + (offs_o[None, :] * stride_wo + dead_c[:, None] * stride_wc
                                + (dead_tap // kernel_w)[:, None] * stride_wh + (dead_tap % kernel_w)[:, None] * stride_ww)
        tl.store(dead_target, tl.zeros((BLOCK_C, BLOCK_O), dtype=GRAD_W.dtype.element_ty),
                 mask=(dead_k < window_taps * c_in)[:, None] & o_ok[None, :])


@triton.jit(do_not_specialize=["kernel_w", "centre", "groups", "strict", "interleaved"])
def tap_conv_pack_weight_kernel(
    WEIGHT,  # dense weight [C_out, C_in, kh, kw]
    P,  # packed weight [n_taps, C_in, C_out] (written)
    c_in, c_out, kernel_w,
    centre, groups, strict, interleaved,  # the channel-group masked tap (-1: none) and its rule
    stride_wo, stride_wc, stride_wh, stride_ww,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_c = tl.program_id(1)
    tap = tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    ok = (offs_c < c_in)[:, None] & (offs_o < c_out)[None, :]
    w = tl.load(WEIGHT + offs_o[None, :].to(tl.int64) * stride_wo + offs_c[:, None] * stride_wc
                + (tap // kernel_w) * stride_wh + (tap % kernel_w) * stride_ww, mask=ok, other=0.0)
    if tap == centre:
        w = tl.where(_centre_live(offs_c, offs_o, c_in, c_out, groups, strict, interleaved), w, 0.0)
    tl.store(P + (tap * c_in + offs_c)[:, None].to(tl.int64) * c_out + offs_o[None, :], w, mask=ok)


@triton.jit(do_not_specialize=["split", "n_taps", "kernel_w", "centre", "groups", "strict", "interleaved"])
def tap_conv_unpack_grad_kernel(
    PARTIAL,  # partial weight gradients [split, n_taps, C_in, C_out] in ACC
    BIAS_PARTIAL,  # partial bias gradients [split, C_out] in ACC
    GRAD_WEIGHT,  # dense weight gradient [C_out, C_in, kh, kw] (written, zero at dead taps)
    GRAD_BIAS,  # bias gradient [C_out] (written when HAS_BIAS)
    split, n_taps, c_in, c_out, kernel_w,
    centre, groups, strict, interleaved,
    stride_wo, stride_wc, stride_wh, stride_ww,
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_c = tl.program_id(1)
    tap = tl.program_id(2)  # every tap of the window: the dead ones get zeros
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    ok = (offs_c < c_in)[:, None] & (offs_o < c_out)[None, :]
    total = tl.zeros((BLOCK_C, BLOCK_O), dtype=ACC)
    if tap < n_taps:
        tile = (tap * c_in + offs_c)[:, None].to(tl.int64) * c_out + offs_o[None, :]
        for s in range(0, split):
            total += tl.load(PARTIAL + s * n_taps * c_in * c_out + tile, mask=ok, other=0.0)
        if tap == centre:
            total = tl.where(_centre_live(offs_c, offs_o, c_in, c_out, groups, strict, interleaved), total, 0.0)
    tl.store(GRAD_WEIGHT + offs_o[None, :].to(tl.int64) * stride_wo + offs_c[:, None] * stride_wc
             + (tap // kernel_w) * stride_wh + (tap % kernel_w) * stride_ww,
             total.to(GRAD_WEIGHT.dtype.element_ty), mask=ok)
    if HAS_BIAS:
        if (tap == 0) & (pid_c == 0):
            o_ok = offs_o < c_out
            bias = tl.zeros((BLOCK_O,), dtype=ACC)
            for s in range(0, split):
                bias += tl.load(BIAS_PARTIAL + s * c_out + offs_o, mask=o_ok, other=0.0)
            tl.store(GRAD_BIAS + offs_o, bias.to(GRAD_BIAS.dtype.element_ty), mask=o_ok)
