"""One sub-pixel step of the cached PixelCNN samplers in one launch: every layer at the new pixel, the output head
and the draw.

A program takes one image b (grid = (n,)): the images of a batch are independent chains, so the layers of one
image only ever wait for each other, inside one CTA. The program runs the model's layers one after another as
*stages*; each stage is a set of matrix-vector products over [BLOCK_O outputs, BLOCK_K inputs] tiles (looping
over both), reads its input from global memory (a row cache or a small scratch vector, both L1/L2-resident) and
writes its output there; ``tl.debug_barrier()`` (``bar.sync``, which also orders the CTA's global memory
accesses) separates the stages. Nothing is kept in registers across stages, so any channel count compiles to
the same tiles.

Row caches (the sampler's ``RowCache``) are contiguous [n, C, R, Wp]: the last R rows of an activation map, the
current row last (index R - 1), pixel x of a row at column pad + x, zeros for padding and pixels not computed
yet. A causal convolution at pixel x is then a product of its packed weight [C_out, C_in * n_taps] (its live
taps only, in raster order from the top-left of its window: tap t at window row t // kw, column t % kw) with the
cache values at those taps: window row r is cache row R - 1 - top + r, column c is pad - left + x + c.

Arithmetic runs in COMPUTE (float32 for 16/32-bit models, float64 for float64). The draws:

* categorical (PixelCNN, Gated PixelCNN): the logits of channel ``channel`` (output rows channel * L ..
  (channel + 1) * L - 1) times 1 / temperature, their softmax CDF (unnormalised), and the first level whose
  CDF reaches u * CDF[-1], as ``fastgen.models.base.draw_categorical`` up to last-bit rounding;
* DMOL (PixelCNN++): openai's sample_from_discretized_mix_logistic with given draws, as
  ``fastgen.dmol_sample`` (Gumbel-max component, the first maximum winning; logistic samples; channel
  coupling; clamp to [-1, 1]), rounded half to even to the nearest of the L levels, as ``torch.round``.

The drawn value v is stored in PIXELS (int64) and, as the model sees it (v * pixel_scale - 1), in the image
cache at pixel x, where the next sub-pixel step reads it. ``draw`` = 0 (image completion) only fills the caches.
"""

import triton
import triton.language as tl

from .pixel_losses import LOG_SCALE_MIN, UNIFORM_MIN


@triton.jit
def _matvec(acc, W, rows, row_mask, K, SRC, src_base, stride_c, stride_r, n_taps, kw,
            RELU_IN: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    """acc[i] += sum_k W[rows[i], k] * v[k] over K = C_in * n_taps inputs, v[k] = SRC[src_base + ci * stride_c
    + (t // kw) * stride_r + t % kw] with k = ci * n_taps + t (a window of a row cache; a vector with n_taps = 1,
    stride_c = 1); relu(v) with RELU_IN. W is [C_out, K] contiguous."""
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        ci = k // n_taps
        t = k - ci * n_taps
        r = t // kw
        v = tl.load(SRC + src_base + ci * stride_c + r * stride_r + (t - r * kw), mask=k_mask, other=0.0)
        v = v.to(COMPUTE)
        if RELU_IN:
            v = tl.maximum(v, 0.0)
        w = tl.load(W + rows[:, None] * K + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.sum(w.to(COMPUTE) * v[None, :], 1)
    return acc


@triton.jit
def _recip(x, COMPUTE: tl.constexpr):
    """1 / x for normal x within float32's range. In float64 with no division: div.rn.f64's slow path is a
    subroutine call, and ptxas spills the values live across it; an fp32 seed (div.full.f32, inline) and two
    Newton steps instead, within an ulp or two of 1 / x. In float32 the plain (inline) division."""
    if COMPUTE == tl.float64:
        r = (1.0 / x.to(tl.float32)).to(tl.float64)
        r = r + r * (1.0 - x * r)
        r = r + r * (1.0 - x * r)
    else:
        r = 1.0 / x
    return r


@triton.jit
def _sigmoid(z, COMPUTE: tl.constexpr):
    """sigmoid(z) from e^-|z| (no overflow), as ``numerics.sigmoids``, with no float64 division."""
    e = tl.exp(-tl.abs(z))
    r = _recip(1.0 + e, COMPUTE)
    return tl.where(z >= 0, r, e * r)


@triton.jit
def _tanh(z, COMPUTE: tl.constexpr):
    """tanh(z), as ``numerics.tanh_and_slope`` (Kahan's 1 - e^-d near 0), with no float64 division."""
    d = 2.0 * tl.abs(z)
    u = tl.exp(-d)  # e^-2|z|
    exact = u == 1.0
    log_u = tl.log(tl.where(exact | (u <= 0.5), 0.5, u))
    kahan = tl.where(exact, d, (1.0 - u) * (d * _recip(-log_u, COMPUTE)))
    one_minus_u = tl.where(u > 0.5, kahan, 1.0 - u)
    t = one_minus_u * _recip(1.0 + u, COMPUTE)
    return tl.where(z < 0, -t, t)


@triton.jit
def _elu(v):
    return tl.where(v > 0, v, tl.exp(tl.minimum(v, 0.0)) - 1.0)


@triton.jit
def _feed_back(IMAGE, image_base, plane, PIXELS, pixel_offset, value, channel, pixel_scale,
               COMPUTE: tl.constexpr):
    """Stores the drawn value (int64 scalar) of ``channel`` and its scaled value in the image cache."""
    tl.store(PIXELS + pixel_offset, value)
    scaled = value.to(COMPUTE) * tl.full([], pixel_scale, COMPUTE) - 1.0
    tl.store(IMAGE + image_base + channel * plane, scaled.to(IMAGE.dtype.element_ty))


@triton.jit
def _draw_categorical(W_OUT, B_OUT, SRC, src_base, n_in, channel, levels, u, inv_temperature,
                      RELU_IN: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr):
    # BLOCK_K here is the draw's own input block (BLOCK_KL: [BLOCK_L, BLOCK_KL] tiles of at most 1024 products)
    """The level drawn for ``channel`` from logits = W_OUT[channel * L + j] . v + B_OUT (v = SRC[src_base:...]),
    an int64 scalar: the number of levels whose CDF of softmax(logits / T) stays below u * CDF[-1]
    (``inv_temperature`` = 1 / T)."""
    j = tl.arange(0, BLOCK_L)
    j_mask = j < levels
    # the padding levels read the last level's row (in bounds, so the [BLOCK_L, BLOCK_K] weight tile loads
    # unmasked: a mask per element of a 256-level tile costs predicate registers that ptxas spills) and are
    # masked out of the softmax below
    rows = channel * levels + tl.minimum(j, levels - 1)
    logits = tl.load(B_OUT + rows).to(COMPUTE)
    for k0 in range(0, n_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < n_in
        k_in = tl.minimum(k, n_in - 1)
        v = tl.load(SRC + src_base + k_in).to(COMPUTE)
        v = tl.where(k_mask, v, 0.0)
        if RELU_IN:
            v = tl.maximum(v, 0.0)
        w = tl.load(W_OUT + rows[:, None] * n_in + k_in[None, :])
        logits += tl.sum(w.to(COMPUTE) * v[None, :], 1)
    # no division (its IEEE slow path is a call that spills): logits times 1 / T, and the CDF left unnormalised,
    # compared with u times its last value (softmax's normalisation cancels; rounding differs in the last bits)
    z = tl.where(j_mask, logits * tl.full([], inv_temperature, COMPUTE), float("-inf"))
    e = tl.where(j_mask, tl.exp(z - tl.max(z, 0)), 0.0)
    cdf = tl.cumsum(e, 0)
    total = tl.max(tl.where(j_mask, cdf, 0.0), 0)  # cdf[L - 1]: the CDF never decreases
    below = j_mask & (cdf < u * total)
    return tl.minimum(tl.sum(below.to(tl.int64), 0), levels - 1)


@triton.jit
def pixelcnn_step_kernel(
    IMAGE,  # [n, C, R, Wp] image cache (scaled pixels)
    CACHE,  # [L, n, h, R, Wp] each block's masked-conv input: relu(reduce(relu(t)))
    T,  # [2, n, 2h] scratch: t before and after each block (ping-pong)
    S,  # [n, h] scratch: relu(conv + embedding) of a block
    HEAD,  # [n, head] scratch: relu(head(relu(t)))
    W_IN, B_IN,  # [2h, C * in_taps], [2h]: the mask-A input convolution
    W_RED, B_RED,  # [L, h, 2h], [L, h]
    W_CONV, B_CONV,  # [L, h, h * conv_taps], [L, h]
    EMB,  # [L, n, h] class embeddings (read only if has_emb)
    W_EXP, B_EXP,  # [L, 2h, h], [L, 2h]
    W_HEAD, B_HEAD,  # [head, 2h], [head]
    W_OUT, B_OUT,  # [C * levels, head], [C * levels]
    U,  # [n] the draws of this sub-pixel (strided)
    PIXELS: "*i64",  # [n, C] the drawn pixels (strided)
    x, channel, draw, data_channels, hidden, n_layers, head_channels, levels,
    in_taps, in_kw, in_top, in_left, conv_taps, conv_kw, conv_top, conv_left, rows, pad, width_p,
    stride_u, stride_px_b, stride_px_c, has_emb,
    inv_temperature: "fp64", pixel_scale: "fp64",
    COMPUTE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_KL: tl.constexpr,
):
    """PixelCNN at pixel x: t = input_conv; per block t += expand(relu(conv(cache) + emb)) with the cache at x
    = relu(reduce(relu(t))); logits = output(relu(head(relu(t)))); draw."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.num_programs(0)
    h2 = 2 * hidden
    plane = rows * width_p
    x_col = pad + x  # column of pixel x in a cache row
    o = tl.arange(0, BLOCK_O)
    # t = input_conv(image) at x
    image_base = b * data_channels * plane
    src = image_base + (rows - 1 - in_top) * width_p + x_col - in_left
    for o0 in range(0, h2, BLOCK_O):
        out = o0 + o
        m = out < h2
        acc = tl.load(B_IN + out, mask=m, other=0.0).to(COMPUTE)
        acc = _matvec(acc, W_IN, out, m, data_channels * in_taps, IMAGE, src, plane, width_p, in_taps, in_kw,
                      False, BLOCK_K, COMPUTE)
        tl.store(T + b * h2 + out, acc.to(T.dtype.element_ty), mask=m)
    tl.debug_barrier()
    for layer in range(0, n_layers):
        t_in = ((layer % 2) * n + b) * h2
        t_out = (((layer + 1) % 2) * n + b) * h2
        cache_base = (layer * n + b) * hidden * plane
        # the block's cache at x: relu(reduce(relu(t)))
        for o0 in range(0, hidden, BLOCK_O):
            out = o0 + o
            m = out < hidden
            acc = tl.load(B_RED + layer * hidden + out, mask=m, other=0.0).to(COMPUTE)
            acc = _matvec(acc, W_RED + layer * hidden * h2, out, m, h2, T, t_in, 1, 0, 1, 1, True, BLOCK_K, COMPUTE)
            tl.store(CACHE + cache_base + out * plane + (rows - 1) * width_p + x_col,
                     tl.maximum(acc, 0.0).to(CACHE.dtype.element_ty), mask=m)
        tl.debug_barrier()
        # s = relu(conv(cache) + embedding) at x
        src = cache_base + (rows - 1 - conv_top) * width_p + x_col - conv_left
        for o0 in range(0, hidden, BLOCK_O):
            out = o0 + o
            m = out < hidden
            acc = tl.load(B_CONV + layer * hidden + out, mask=m, other=0.0).to(COMPUTE)
            if has_emb:
                acc += tl.load(EMB + (layer * n + b) * hidden + out, mask=m, other=0.0).to(COMPUTE)
            acc = _matvec(acc, W_CONV + layer * hidden * hidden * conv_taps, out, m, hidden * conv_taps, CACHE, src,
                          plane, width_p, conv_taps, conv_kw, False, BLOCK_K, COMPUTE)
            tl.store(S + b * hidden + out, tl.maximum(acc, 0.0).to(S.dtype.element_ty), mask=m)
        tl.debug_barrier()
        # t + expand(s), into the other half of T
        for o0 in range(0, h2, BLOCK_O):
            out = o0 + o
            m = out < h2
            acc = tl.load(B_EXP + layer * h2 + out, mask=m, other=0.0).to(COMPUTE)
            acc = _matvec(acc, W_EXP + layer * h2 * hidden, out, m, hidden, S, b * hidden, 1, 0, 1, 1, False,
                          BLOCK_K, COMPUTE)
            acc += tl.load(T + t_in + out, mask=m, other=0.0).to(COMPUTE)
            tl.store(T + t_out + out, acc.to(T.dtype.element_ty), mask=m)
        tl.debug_barrier()
    if draw:
        t_last = ((n_layers % 2) * n + b) * h2
        for o0 in range(0, head_channels, BLOCK_O):
            out = o0 + o
            m = out < head_channels
            acc = tl.load(B_HEAD + out, mask=m, other=0.0).to(COMPUTE)
            acc = _matvec(acc, W_HEAD, out, m, h2, T, t_last, 1, 0, 1, 1, True, BLOCK_K, COMPUTE)
            tl.store(HEAD + b * head_channels + out, tl.maximum(acc, 0.0).to(HEAD.dtype.element_ty), mask=m)
        tl.debug_barrier()
        u = tl.load(U + b * stride_u).to(COMPUTE)
        value = _draw_categorical(W_OUT, B_OUT, HEAD, b * head_channels, head_channels, channel, levels, u,
                                  inv_temperature, False, COMPUTE, BLOCK_KL, BLOCK_L)
        _feed_back(IMAGE, image_base + (rows - 1) * width_p + x_col, plane, PIXELS,
                   b * stride_px_b + channel * stride_px_c, value, channel, pixel_scale, COMPUTE)


@triton.jit
def _gated_layer(SRC, src_base, src_plane, src_channels, W_H, B_H, taps, kw, top, left, V2H, v2h_base,
                 W_HO, B_HO, GATE, gate_base, DST, dst_base, residual, RES, res_base, hidden, groups,
                 rows, width_p, x_col, COMPUTE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    """One gated layer's horizontal stack at x: gate(horizontal(src) + v_to_h) into GATE, then
    horizontal_out(gate) (+ the residual) into DST (a cache at x, channel stride src_plane)."""
    o = tl.arange(0, BLOCK_O)
    half = hidden // groups
    src = src_base + (rows - 1 - top) * width_p + x_col - left
    for o0 in range(0, hidden, BLOCK_O):
        out = o0 + o
        m = out < hidden
        a_rows = out + (out // half) * half  # c + g m: the tanh half of group g
        b_rows = a_rows + half
        acc_a = tl.load(B_H + a_rows, mask=m, other=0.0).to(COMPUTE)
        acc_a += tl.load(V2H + v2h_base + a_rows, mask=m, other=0.0).to(COMPUTE)
        acc_a = _matvec(acc_a, W_H, a_rows, m, src_channels * taps, SRC, src, src_plane, width_p, taps, kw, False,
                        BLOCK_K, COMPUTE)
        acc_b = tl.load(B_H + b_rows, mask=m, other=0.0).to(COMPUTE)
        acc_b += tl.load(V2H + v2h_base + b_rows, mask=m, other=0.0).to(COMPUTE)
        acc_b = _matvec(acc_b, W_H, b_rows, m, src_channels * taps, SRC, src, src_plane, width_p, taps, kw, False,
                        BLOCK_K, COMPUTE)
        gated = _tanh(acc_a, COMPUTE) * _sigmoid(acc_b, COMPUTE)
        tl.store(GATE + gate_base + out, gated.to(GATE.dtype.element_ty), mask=m)
    tl.debug_barrier()
    for o0 in range(0, hidden, BLOCK_O):
        out = o0 + o
        m = out < hidden
        acc = tl.load(B_HO + out, mask=m, other=0.0).to(COMPUTE)
        acc = _matvec(acc, W_HO, out, m, hidden, GATE, gate_base, 1, 0, 1, 1, False, BLOCK_K, COMPUTE)
        if residual:
            acc += tl.load(RES + res_base + out * src_plane, mask=m, other=0.0).to(COMPUTE)
        tl.store(DST + dst_base + out * src_plane, acc.to(DST.dtype.element_ty), mask=m)
    tl.debug_barrier()


@triton.jit
def gated_step_kernel(
    IMAGE,  # [n, C, R, Wp] image cache
    CACHE,  # [L, n, hid, R, Wp] each layer's horizontal-stack output h
    GATE,  # [n, hid] scratch: the gate of a layer
    HEAD,  # [n, head] scratch
    V2H,  # [L, n, W, 2 hid] vertical_to_horizontal(v_pre) + embedding of the current row (start_row)
    W_H0, B_H0,  # [2 hid, C * taps0], [2 hid]: layer 0's horizontal convolution (mask A, from the image)
    W_H, B_H,  # [L - 1, 2 hid, hid * taps], [L - 1, 2 hid]: the other layers' horizontal convolutions
    W_HO, B_HO,  # [L, hid, hid], [L, hid]: horizontal_out
    W_HEAD, B_HEAD,  # [head, hid], [head]
    W_OUT, B_OUT,  # [C * levels, head], [C * levels]
    U, PIXELS: "*i64",
    x, channel, draw, data_channels, hidden, n_layers, head_channels, levels, width,
    taps0, kw0, left0, taps, kw, left, rows, pad, width_p,
    stride_u, stride_px_b, stride_px_c,
    inv_temperature: "fp64", pixel_scale: "fp64",
    COMPUTE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_KL: tl.constexpr,
):
    """Gated PixelCNN's horizontal stack at pixel x (the vertical stack is per row, in V2H), the head
    relu(head(h)) and the draw. The horizontal windows have no rows above (top = 0)."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.num_programs(0)
    plane = rows * width_p
    x_col = pad + x
    image_base = b * data_channels * plane
    at_x = (rows - 1) * width_p + x_col  # pixel x of the current row within a channel plane
    h2 = 2 * hidden
    _gated_layer(IMAGE, image_base, plane, data_channels, W_H0, B_H0, taps0, kw0, 0, left0, V2H,
                 (b * width + x) * h2, W_HO, B_HO, GATE, b * hidden, CACHE, b * hidden * plane + at_x,
                 0, CACHE, 0, hidden, data_channels, rows, width_p, x_col, COMPUTE, BLOCK_O, BLOCK_K)
    for layer in range(1, n_layers):
        src_base = ((layer - 1) * n + b) * hidden * plane
        _gated_layer(CACHE, src_base, plane, hidden, W_H + (layer - 1) * h2 * hidden * taps,
                     B_H + (layer - 1) * h2, taps, kw, 0, left, V2H, ((layer * n + b) * width + x) * h2,
                     W_HO + layer * hidden * hidden, B_HO + layer * hidden, GATE, b * hidden,
                     CACHE, (layer * n + b) * hidden * plane + at_x, 1, CACHE, src_base + at_x, hidden,
                     data_channels, rows, width_p, x_col, COMPUTE, BLOCK_O, BLOCK_K)
    if draw:
        o = tl.arange(0, BLOCK_O)
        h_base = ((n_layers - 1) * n + b) * hidden * plane + at_x
        for o0 in range(0, head_channels, BLOCK_O):
            out = o0 + o
            m = out < head_channels
            acc = tl.load(B_HEAD + out, mask=m, other=0.0).to(COMPUTE)
            acc = _matvec(acc, W_HEAD, out, m, hidden, CACHE, h_base, plane, 0, 1, 1, False, BLOCK_K, COMPUTE)
            tl.store(HEAD + b * head_channels + out, tl.maximum(acc, 0.0).to(HEAD.dtype.element_ty), mask=m)
        tl.debug_barrier()
        u = tl.load(U + b * stride_u).to(COMPUTE)
        value = _draw_categorical(W_OUT, B_OUT, HEAD, b * head_channels, head_channels, channel, levels, u,
                                  inv_temperature, False, COMPUTE, BLOCK_KL, BLOCK_L)
        _feed_back(IMAGE, image_base + at_x, plane, PIXELS, b * stride_px_b + channel * stride_px_c, value,
                   channel, pixel_scale, COMPUTE)


@triton.jit
def _round_half_even(y):
    r = tl.floor(y + 0.5)
    tie = (r - y) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def pixelcnnpp_step_kernel(
    IMAGE,  # [n, C + 1, R, Wp] image cache (x_pad: the scaled image and its ones channel)
    A, C,  # [L, n, 2F, R, Wp] each ul block's two concat_elu inputs
    UL,  # [2, n, F] scratch: ul before and after each block (ping-pong)
    PARAMS,  # [n, P] scratch: the DMOL parameters
    UL_UP,  # [n, W, F] ul's up part of the current row (start_row)
    SKIP,  # [L, n, W, F] skip(concat_elu(u)) of the current row (start_row)
    W_LEFT, B_LEFT,  # [F, (C + 1) * taps_left], [F]: ul_input_left
    W_CI, B_CI,  # [L, F, 2F * taps], [L, F]: conv_input
    W_CO, B_CO,  # [L, 2F, 2F * taps], [L, 2F]: conv_out
    EMB,  # [L, n, 2F] class embeddings (read only if has_emb)
    W_OUT, B_OUT,  # [P, F], [P]
    U,  # [n, K + C] the draws of this pixel (strided)
    PIXELS: "*i64",  # [n, C] (strided)
    x, draw, data_channels, filters, n_layers, n_mixtures, n_params, levels, width,
    taps_left, kw_left, top_left, left_left, taps, kw, top, left, rows, pad, width_p,
    stride_u_b, stride_u_j, stride_px_b, stride_px_c, has_emb,
    temperature: "fp64", inv_temperature: "fp64", pixel_scale: "fp64",
    COMPUTE: tl.constexpr, CHANNELS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_MIX: tl.constexpr,
):
    """PixelCNN++-lite's up-left stream at pixel x (the up stream is per row, in UL_UP and SKIP), the output
    1x1 of elu(ul) and the DMOL draw of the whole pixel."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.num_programs(0)
    plane = rows * width_p
    x_col = pad + x
    at_x = (rows - 1) * width_p + x_col
    f2 = 2 * filters
    o = tl.arange(0, BLOCK_O)
    image_base = b * (data_channels + 1) * plane
    # ul = ul_up[x] + right_shift(ul_input_left)(x): the left convolution at x - 1, none at x = 0
    src = image_base + (rows - 1 - top_left) * width_p + x_col - 1 - left_left
    for o0 in range(0, filters, BLOCK_O):
        out = o0 + o
        m = out < filters
        acc = tl.load(B_LEFT + out, mask=m, other=0.0).to(COMPUTE)
        acc = _matvec(acc, W_LEFT, out, m, (data_channels + 1) * taps_left, IMAGE, src, plane, width_p, taps_left,
                      kw_left, False, BLOCK_K, COMPUTE)
        acc = tl.where(x > 0, acc, 0.0)
        acc += tl.load(UL_UP + (b * width + x) * filters + out, mask=m, other=0.0).to(COMPUTE)
        tl.store(UL + b * filters + out, acc.to(UL.dtype.element_ty), mask=m)
    tl.debug_barrier()
    for layer in range(0, n_layers):
        ul_in = ((layer % 2) * n + b) * filters
        ul_out = (((layer + 1) % 2) * n + b) * filters
        cache_base = (layer * n + b) * f2 * plane
        # A at x: concat_elu(ul)
        for o0 in range(0, filters, BLOCK_O):
            out = o0 + o
            m = out < filters
            v = tl.load(UL + ul_in + out, mask=m, other=0.0).to(COMPUTE)
            tl.store(A + cache_base + out * plane + at_x, _elu(v).to(A.dtype.element_ty), mask=m)
            tl.store(A + cache_base + (filters + out) * plane + at_x, _elu(-v).to(A.dtype.element_ty), mask=m)
        tl.debug_barrier()
        # C at x: concat_elu(conv_input(A) + skip)
        src = cache_base + (rows - 1 - top) * width_p + x_col - left
        for o0 in range(0, filters, BLOCK_O):
            out = o0 + o
            m = out < filters
            acc = tl.load(B_CI + layer * filters + out, mask=m, other=0.0).to(COMPUTE)
            acc += tl.load(SKIP + ((layer * n + b) * width + x) * filters + out, mask=m, other=0.0).to(COMPUTE)
            acc = _matvec(acc, W_CI + layer * filters * f2 * taps, out, m, f2 * taps, A, src, plane, width_p, taps,
                          kw, False, BLOCK_K, COMPUTE)
            tl.store(C + cache_base + out * plane + at_x, _elu(acc).to(C.dtype.element_ty), mask=m)
            tl.store(C + cache_base + (filters + out) * plane + at_x, _elu(-acc).to(C.dtype.element_ty), mask=m)
        tl.debug_barrier()
        # ul + value * sigmoid(gate) of conv_out(C) + embedding
        for o0 in range(0, filters, BLOCK_O):
            out = o0 + o
            m = out < filters
            w_co = W_CO + layer * f2 * f2 * taps
            value = tl.load(B_CO + layer * f2 + out, mask=m, other=0.0).to(COMPUTE)
            gate = tl.load(B_CO + layer * f2 + filters + out, mask=m, other=0.0).to(COMPUTE)
            if has_emb:
                value += tl.load(EMB + (layer * n + b) * f2 + out, mask=m, other=0.0).to(COMPUTE)
                gate += tl.load(EMB + (layer * n + b) * f2 + filters + out, mask=m, other=0.0).to(COMPUTE)
            value = _matvec(value, w_co, out, m, f2 * taps, C, src, plane, width_p, taps, kw, False, BLOCK_K,
                            COMPUTE)
            gate = _matvec(gate, w_co, filters + out, m, f2 * taps, C, src, plane, width_p, taps, kw, False,
                           BLOCK_K, COMPUTE)
            acc = tl.load(UL + ul_in + out, mask=m, other=0.0).to(COMPUTE) + value * _sigmoid(gate, COMPUTE)
            tl.store(UL + ul_out + out, acc.to(UL.dtype.element_ty), mask=m)
        tl.debug_barrier()
    if draw:
        ul_last = ((n_layers % 2) * n + b) * filters
        for o0 in range(0, n_params, BLOCK_O):
            out = o0 + o
            m = out < n_params
            acc = tl.load(B_OUT + out, mask=m, other=0.0).to(COMPUTE)
            for k0 in range(0, filters, BLOCK_K):  # elu(ul) as the input
                k = k0 + tl.arange(0, BLOCK_K)
                k_mask = k < filters
                v = _elu(tl.load(UL + ul_last + k, mask=k_mask, other=0.0).to(COMPUTE))
                w = tl.load(W_OUT + out[:, None] * filters + k[None, :], mask=m[:, None] & k_mask[None, :],
                            other=0.0)
                acc += tl.sum(w.to(COMPUTE) * v[None, :], 1)
            tl.store(PARAMS + b * n_params + out, acc.to(PARAMS.dtype.element_ty), mask=m)
        tl.debug_barrier()
        # the component: argmax of logit / T + g (below T = 1: logit + T g), the first maximum winning
        p_base = b * n_params
        u_base = b * stride_u_b
        temp = tl.full([], temperature, COMPUTE)
        u_lo = tl.full([], UNIFORM_MIN, COMPUTE)
        u_span = 1.0 - 2.0 * u_lo
        j = tl.arange(0, BLOCK_MIX)
        j_mask = j < n_mixtures
        r = tl.load(U + u_base + j * stride_u_j, mask=j_mask, other=0.5).to(COMPUTE)
        neg_gumbel = tl.log(-tl.log(u_lo + u_span * r))
        logit = tl.load(PARAMS + p_base + j, mask=j_mask, other=0.0).to(COMPUTE)
        inv_temp = tl.full([], inv_temperature, COMPUTE)  # 1 / T from the host: no division here
        score = tl.where(temp >= 1.0, logit * inv_temp - neg_gumbel, logit - temp * neg_gumbel)
        score = tl.where(j_mask, score, float("-inf"))
        best = tl.max(score, 0)
        choice = tl.min(tl.where(j_mask & (score == best), j, BLOCK_MIX), 0)
        # every channel's logistic sample at once (one vector of CHANNELS, padded to 4), then the coupling
        c = tl.arange(0, 4)
        c_mask = c < CHANNELS
        block = n_mixtures
        mean = tl.load(PARAMS + p_base + (1 + 3 * c) * block + choice, mask=c_mask, other=0.0).to(COMPUTE)
        log_scale = tl.load(PARAMS + p_base + (2 + 3 * c) * block + choice, mask=c_mask, other=0.0).to(COMPUTE)
        r = tl.load(U + u_base + (n_mixtures + c) * stride_u_j, mask=c_mask, other=0.5).to(COMPUTE)
        u = u_lo + u_span * r
        xs = mean + tl.exp(tl.maximum(log_scale, LOG_SCALE_MIN)) * temp * (tl.log(u) - tl.log(1.0 - u))
        x0 = tl.minimum(tl.maximum(tl.sum(tl.where(c == 0, xs, 0.0), 0), -1.0), 1.0)
        sampled = tl.where(c == 0, x0, 0.0)
        if CHANNELS == 3:
            # the coefficients (G on R), (B on R), (B on G) follow channel c's log-scales: at (3 + 3c) K
            coef = tl.load(PARAMS + p_base + (3 + 3 * c) * block + choice, mask=c_mask, other=0.0).to(COMPUTE)
            coef = _tanh(coef, COMPUTE)
            t_rg = tl.sum(tl.where(c == 0, coef, 0.0), 0)
            t_rb = tl.sum(tl.where(c == 1, coef, 0.0), 0)
            t_gb = tl.sum(tl.where(c == 2, coef, 0.0), 0)
            x1 = tl.sum(tl.where(c == 1, xs, 0.0), 0) + t_rg * x0
            x1 = tl.minimum(tl.maximum(x1, -1.0), 1.0)
            x2 = tl.sum(tl.where(c == 2, xs, 0.0), 0) + t_rb * x0 + t_gb * x1
            x2 = tl.minimum(tl.maximum(x2, -1.0), 1.0)
            sampled = tl.where(c == 1, x1, tl.where(c == 2, x2, sampled))
        value = _round_half_even((sampled + 1.0) * (0.5 * (levels - 1))).to(tl.int64)
        tl.store(PIXELS + b * stride_px_b + c * stride_px_c, value, mask=c_mask)
        scaled = value.to(COMPUTE) * tl.full([], pixel_scale, COMPUTE) - 1.0
        tl.store(IMAGE + image_base + at_x + c * plane, scaled.to(IMAGE.dtype.element_ty), mask=c_mask)
