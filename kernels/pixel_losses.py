"""PixelCNN output losses: the per-sub-pixel softmax cross-entropy and the discretized logistic mixture (DMOL).

Cross-entropy. Logits are read as [B, L, C, H, W] through five strides (L = levels; 4-D [B, C * L, H, W]
logits are that view of C groups of L channels), targets as [B, C, H, W] through four. A sub-pixel is
n = ((b * C + c) * H + h) * W + w, split by integer division, so no layout needs a copy. A program takes
BLOCK_N sub-pixels (one per thread: the level reductions stay in registers) and steps over the levels
BLOCK_L at a time with an online max/sum. The forward writes the loss ``(max - logit[target]) + log(sum)`` and the
logsumexp (for the backward); the backward reads the logits again and writes
``(softmax - onehot) * grad_output * weight``. That moves 3 logits-sized tensors in a training step (read,
read, write) where writing the gradient in the forward and scaling it in the backward would move 4.

DMOL (Salimans et al. 2017). Per pixel and mixture component k, per channel c, with x_c in [-1, 1], the mean
m_c (RGB: shifted by tanh coefficients times the preceding sub-pixels), s = max(log_scale, -7), a = (x_c - m_c
+ h) e^-s and b = (x_c - m_c - h) e^-s (h = bin half-width), the log-probability of x_c's bin is

* pixel 0 (x < -edge):      log sigmoid(a);
* top value (x > edge):     log sigmoid(-b);
* inner bins:               log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - e^-(a-b)),
                            a form with no cancellation (a - b = 2h e^-s > 0), while it is > log(1e-5);
* else (tiny scale, the mid-bin fallback): the log density at the centre plus log(2h).

log p(pixel) = logsumexp_k(log_softmax(logits)_k + sum_c lp_ck). A program takes BLOCK_P pixels and loops over
the components twice: first for the logsumexps, then, with the posterior w_k = p(k | x) known, for the gradient
of the pixel's NLL w.r.t. all 10K (3K) parameters (softmax - w for the logits, -w * d lp / d param for the
others) and, when x needs it, w.r.t. x. The backward multiplies the saved gradient by grad_output (one launch).

The sampler draws K + C uniforms per pixel from Philox (at offsets pixel * (K + C) + i) or reads them, picks a
component by Gumbel-max and samples the logistics as openai's ``sample_from_discretized_mix_logistic``.

Arithmetic runs in COMPUTE (float32 for 16/32-bit inputs, float64 for float64). Float arguments are annotated
"fp64" (passed as doubles) and converted to COMPUTE once with ``tl.full``.
"""

import triton
import triton.language as tl

from .numerics import one_minus_exp_neg, sigmoids, tanh_and_slope

LOG_SCALE_MIN = tl.constexpr(-7.0)  # openai: log_scales = max(l[...], -7.)
LOG_MIN_CDF_DELTA = tl.constexpr(-11.512925464970229)  # log(1e-5): below it the mid-bin fallback
UNIFORM_MIN = tl.constexpr(1e-5)  # openai's sampler: u ~ U(1e-5, 1 - 1e-5)


# ---------------------------------------------------------------------------------------------- helpers
@triton.jit
def _bin_log_prob(x, mean, log_scale_raw, half_bin, log_bin_width, edge):
    """log P(x's bin) under logistic(mean, e^s), s = max(log_scale_raw, -7), and its derivatives w.r.t. the
    centred value x - mean and w.r.t. log_scale_raw (0 where clamped); all [BLOCK_P] vectors."""
    clamped = log_scale_raw < LOG_SCALE_MIN
    log_scale = tl.where(clamped, LOG_SCALE_MIN, log_scale_raw)
    inv_scale = tl.exp(-log_scale)
    centered = x - mean
    a = inv_scale * (centered + half_bin)  # plus_in
    b = inv_scale * (centered - half_bin)  # min_in
    sig_a, sig_neg_a, log_sig_a = sigmoids(a)
    sig_neg_b, sig_b, log_sig_neg_b = sigmoids(-b)
    one_minus_u, u = one_minus_exp_neg(2.0 * half_bin * inv_scale)  # 1 - e^-(a - b)
    inner = log_sig_a + log_sig_neg_b + tl.log(one_minus_u)  # log(sigmoid(a) - sigmoid(b))
    ratio = u / one_minus_u  # 1 / expm1(a - b): d inner / da = sigmoid(-a) + ratio, d / db = -sigmoid(b) - ratio
    d_inner = (a - b) * ratio
    mid = inv_scale * centered
    sig_mid, sig_neg_mid, log_sig_mid = sigmoids(mid)
    # log pdf(mid) = mid - s - 2 softplus(mid) = log sigmoid(mid) + log sigmoid(-mid) - s
    fallback = log_sig_mid + (log_sig_mid - mid) - log_scale + log_bin_width
    low = x < -edge
    high = x > edge
    use_inner = inner > LOG_MIN_CDF_DELTA
    lp = tl.where(low, log_sig_a, tl.where(high, log_sig_neg_b, tl.where(use_inner, inner, fallback)))
    # d lp / d centred, and d lp / d s = -(a d lp/da + b d lp/db) (a, b, mid scale with e^-s)
    grad_centered = tl.where(low, sig_neg_a, tl.where(high, -sig_b, tl.where(
        use_inner, sig_neg_a - sig_b, sig_neg_mid - sig_mid))) * inv_scale
    grad_log_scale = tl.where(low, -a * sig_neg_a, tl.where(high, b * sig_b, tl.where(
        use_inner, b * sig_b - a * sig_neg_a - d_inner, -1.0 - mid * (sig_neg_mid - sig_mid))))
    grad_log_scale = tl.where(clamped, 0.0, grad_log_scale)  # torch.clamp(min=-7) passes the gradient at >= -7
    return lp, grad_centered, grad_log_scale


@triton.jit
def _pixel_offsets(pixels, height, width, stride_b, stride_h, stride_w):
    """int64 offsets of pixels p = (b * H + h) * W + w (int32) through (b, h, w) strides."""
    w = pixels % width
    rest = pixels // width
    h = rest % height
    b = rest // height
    return b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + w.to(tl.int64) * stride_w


# ---------------------------------------------------------------------------------------------- cross-entropy
@triton.jit
def _subpixel_offsets(n, channels, height, width, stride_b, stride_c, stride_h, stride_w):
    """int64 offsets of sub-pixels n = ((b * C + c) * H + h) * W + w (int32) through (b, c, h, w) strides."""
    w = n % width
    rest = n // width
    h = rest % height
    rest = rest // height
    c = rest % channels
    b = rest // channels
    return (b.to(tl.int64) * stride_b + c.to(tl.int64) * stride_c + h.to(tl.int64) * stride_h
            + w.to(tl.int64) * stride_w)


@triton.jit
def pixel_cross_entropy_forward_kernel(
    LOGITS,  # [B, L, C, H, W] logits, through strides
    TARGETS,  # [B, C, H, W] integer targets in [0, L), through strides
    LOSS,  # [N] output (COMPUTE): loss of sub-pixel n (contiguous [B, C, H, W]), written if write_terms
    LSE,  # [N] output (COMPUTE): logsumexp of sub-pixel n's logits, written if write_lse
    PARTIAL,  # [programs] output (COMPUTE): weight * sum of the program's losses
    n_subpixels,  # N = B * C * H * W
    n_levels,  # L
    channels, height, width,  # C, H, W
    stride_x_b, stride_x_l, stride_x_c, stride_x_h, stride_x_w,  # strides of LOGITS
    stride_t_b, stride_t_c, stride_t_h, stride_t_w,  # strides of TARGETS
    write_terms,  # 0/1: reduction "none"
    write_lse,  # 0/1: a gradient is wanted
    weight: "fp64",  # 1 / N for a mean, else 1
    COMPUTE: tl.constexpr,  # arithmetic dtype (tl.float32 or tl.float64)
    BLOCK_L: tl.constexpr,  # levels per step
    BLOCK_N: tl.constexpr,  # sub-pixels per program
):
    """loss_n = logsumexp(logits[n, :]) - logits[n, target_n] (nan for a target outside [0, L), checked on the
    int64 value: no wrap-around)."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # int32: the launcher keeps N + BLOCK_N < 2**31
    n_mask = n < n_subpixels
    x_offsets = _subpixel_offsets(n, channels, height, width, stride_x_b, stride_x_c, stride_x_h, stride_x_w)
    t_offsets = _subpixel_offsets(n, channels, height, width, stride_t_b, stride_t_c, stride_t_h, stride_t_w)
    # checked in int64, then narrowed: an out-of-range target (2**32 + 2 included) becomes -1, no level's
    targets = tl.load(TARGETS + t_offsets, mask=n_mask, other=0)
    valid = (targets >= 0) & (targets < n_levels)
    targets = tl.where(valid, targets, -1).to(tl.int32)
    m = tl.full([BLOCK_N], float("-inf"), COMPUTE)
    s = tl.zeros([BLOCK_N], COMPUTE)
    target_logit = tl.zeros([BLOCK_N], COMPUTE)
    for start in range(0, n_levels, BLOCK_L):
        levels = start + tl.arange(0, BLOCK_L)
        level_mask = (levels < n_levels)[:, None]
        x = tl.load(LOGITS + x_offsets[None, :] + levels.to(tl.int64)[:, None] * stride_x_l,
                    mask=level_mask & n_mask[None, :], other=0.0).to(COMPUTE)
        x = tl.where(level_mask, x, float("-inf"))  # past the last level; sub-pixels past N read 0 (finite)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf) in masked columns
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[None, :]), axis=0)
        m = m_new
        target_logit += tl.sum(tl.where(levels[:, None] == targets[None, :], x, 0.0), axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    log_s = tl.log(s)
    # (max - target) + log(sum): no rounding of a large max + log(sum) before the difference (as log_softmax)
    loss = tl.where(valid, (m - target_logit) + log_s, float("nan"))
    lse = m + log_s
    if write_lse != 0:
        tl.store(LSE + n, lse, mask=n_mask)
    if write_terms != 0:
        tl.store(LOSS + n, loss, mask=n_mask)
    total = tl.sum(tl.where(n_mask, loss, 0.0), axis=0)
    tl.store(PARTIAL + tl.program_id(0), tl.full([], weight, COMPUTE) * total)


@triton.jit
def pixel_cross_entropy_backward_kernel(
    LOGITS,  # [B, L, C, H, W] logits of the forward, through strides
    TARGETS,  # [B, C, H, W] integer targets
    LSE,  # [N] logsumexp per sub-pixel (COMPUTE), from the forward
    GRAD_OUT,  # [B, C, H, W] gradient of the per-sub-pixel losses, or of the reduced loss (strides 0)
    GRAD_LOGITS,  # [B, L, C, H, W] output (logits dtype), through its own strides
    n_subpixels, n_levels, channels, height, width,
    stride_x_b, stride_x_l, stride_x_c, stride_x_h, stride_x_w,  # strides of LOGITS
    stride_t_b, stride_t_c, stride_t_h, stride_t_w,  # strides of TARGETS
    stride_go_b, stride_go_c, stride_go_h, stride_go_w,  # strides of GRAD_OUT
    stride_g_b, stride_g_l, stride_g_c, stride_g_h, stride_g_w,  # strides of GRAD_LOGITS
    weight: "fp64",  # 1 / N for a mean, else 1
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_L: tl.constexpr,  # levels per step
    BLOCK_N: tl.constexpr,  # sub-pixels per program
):
    """GRAD_LOGITS[n, l] = (exp(logits[n, l] - lse_n) - [l == target_n]) * grad_out_n * weight (nan for every
    level of a sub-pixel whose target is outside [0, L))."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < n_subpixels
    x_offsets = _subpixel_offsets(n, channels, height, width, stride_x_b, stride_x_c, stride_x_h, stride_x_w)
    t_offsets = _subpixel_offsets(n, channels, height, width, stride_t_b, stride_t_c, stride_t_h, stride_t_w)
    go_offsets = _subpixel_offsets(n, channels, height, width, stride_go_b, stride_go_c, stride_go_h, stride_go_w)
    g_offsets = _subpixel_offsets(n, channels, height, width, stride_g_b, stride_g_c, stride_g_h, stride_g_w)
    targets = tl.load(TARGETS + t_offsets, mask=n_mask, other=0)
    valid = (targets >= 0) & (targets < n_levels)
    targets = targets.to(tl.int32)  # out-of-range ones get a nan gradient (scale), whatever they narrow to
    lse = tl.load(LSE + n, mask=n_mask, other=0.0).to(COMPUTE)
    scale = tl.load(GRAD_OUT + go_offsets, mask=n_mask, other=0.0).to(COMPUTE) * tl.full([], weight, COMPUTE)
    scale = tl.where(valid, scale, float("nan"))
    for start in range(0, n_levels, BLOCK_L):
        levels = start + tl.arange(0, BLOCK_L)
        levels64 = levels.to(tl.int64)
        mask = (levels < n_levels)[:, None] & n_mask[None, :]
        x = tl.load(LOGITS + x_offsets[None, :] + levels64[:, None] * stride_x_l, mask=mask, other=0.0).to(COMPUTE)
        grad = tl.exp(x - lse[None, :]) - tl.where(levels[:, None] == targets[None, :], 1.0, 0.0)
        tl.store(GRAD_LOGITS + g_offsets[None, :] + levels64[:, None] * stride_g_l,
                 (grad * scale[None, :]).to(GRAD_LOGITS.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------- DMOL
@triton.jit
def _component(PARAMS, offsets, block, x0, x1, x2, half, log_width, edge, CHANNELS: tl.constexpr,
               COMPUTE: tl.constexpr, mask):
    """Component k of BLOCK_P pixels (``offsets``: its logit's offsets; ``block``: the step between parameter
    blocks): its logit, sum_c lp_ck, and per channel d lp_ck / d centred and d lp_ck / d log-scale (unused
    values are dropped by the compiler)."""
    logit = tl.load(PARAMS + offsets, mask=mask, other=0.0).to(COMPUTE)
    mean0 = tl.load(PARAMS + offsets + block, mask=mask, other=0.0).to(COMPUTE)
    scale0 = tl.load(PARAMS + offsets + 2 * block, mask=mask, other=0.0).to(COMPUTE)
    lp0, gc0, gs0 = _bin_log_prob(x0, mean0, scale0, half, log_width, edge)
    if CHANNELS == 3:
        # channel c's block: K means at 1 + 3c, K log-scales at 2 + 3c, K coefficients at 3 + 3c (x K channels)
        t0, _ = tanh_and_slope(tl.load(PARAMS + offsets + 3 * block, mask=mask, other=0.0).to(COMPUTE))
        mean1 = tl.load(PARAMS + offsets + 4 * block, mask=mask, other=0.0).to(COMPUTE) + t0 * x0
        scale1 = tl.load(PARAMS + offsets + 5 * block, mask=mask, other=0.0).to(COMPUTE)
        lp1, gc1, gs1 = _bin_log_prob(x1, mean1, scale1, half, log_width, edge)
        t1, _ = tanh_and_slope(tl.load(PARAMS + offsets + 6 * block, mask=mask, other=0.0).to(COMPUTE))
        t2, _ = tanh_and_slope(tl.load(PARAMS + offsets + 9 * block, mask=mask, other=0.0).to(COMPUTE))
        mean2 = tl.load(PARAMS + offsets + 7 * block, mask=mask, other=0.0).to(COMPUTE) + t1 * x0 + t2 * x1
        scale2 = tl.load(PARAMS + offsets + 8 * block, mask=mask, other=0.0).to(COMPUTE)
        lp2, gc2, gs2 = _bin_log_prob(x2, mean2, scale2, half, log_width, edge)
        lp = lp0 + lp1 + lp2
    else:
        lp = lp0
        gc1, gs1, gc2, gs2 = gc0, gs0, gc0, gs0  # unused
    return logit, lp, gc0, gs0, gc1, gs1, gc2, gs2


@triton.jit
def _online_logsumexp(m, s, value):
    """(max, sum of exp(v - max)) over the values seen so far, updated with ``value``."""
    m_new = tl.maximum(m, value)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf) while every value is -inf
    return m_new, s * tl.exp(m - m_safe) + tl.exp(value - m_safe)


@triton.jit
def dmol_nll_forward_kernel(
    PARAMS,  # [B, P, H, W] mixture parameters (P = 10K for RGB, 3K for grayscale), through strides
    X,  # [B, C, H, W] data in [-1, 1] (COMPUTE dtype), through strides
    GRAD_PARAMS,  # [B, P, H, W] output (params dtype, PARAMS' strides): d nll_pixel / d params, if write_grad
    GRAD_X,  # [B, C, H, W] output (COMPUTE, X's strides): d nll_pixel / d x, written if write_grad_x
    NLL,  # [B * H * W] output (COMPUTE): per-pixel NLL in nats, written if write_terms
    PARTIAL,  # [programs] output (COMPUTE): weight * sum of the program's NLLs
    n_pixels,  # B * H * W
    n_mixtures,  # K
    height, width,
    stride_p_b, stride_p_j, stride_p_h, stride_p_w,  # strides of PARAMS (and GRAD_PARAMS)
    stride_x_b, stride_x_c, stride_x_h, stride_x_w,  # strides of X (and GRAD_X)
    write_grad,  # 0/1
    write_grad_x,  # 0/1
    write_terms,  # 0/1: reduction "none"
    half_bin: "fp64",  # half the bin width, 1 / (2**bits - 1)
    log_bin_width: "fp64",  # log(2 * half_bin): -log(127.5) at 8 bits
    edge: "fp64",  # |x| > edge is an edge bin: 0.999 (openai)
    weight: "fp64",  # 1 / (B * C * H * W) for a mean, else 1
    CHANNELS: tl.constexpr,  # 1 (grayscale) or 3 (RGB)
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_P: tl.constexpr,  # pixels per program
):
    """NLL of each pixel under the discretized logistic mixture and its gradients, in two passes over the
    components: (1) online logsumexps of the logits and of q_k = logit_k + sum_c lp_ck, so that
    nll = logsumexp(logits) - logsumexp(q); (2) the same values again with their derivatives, weighted by the
    posterior w_k = exp(q_k - logsumexp(q)) and stored. Two passes of recomputation keep a handful of
    [BLOCK_P] vectors live (no spills, no padding of K to a power of 2) instead of ~14 [K, BLOCK_P] tiles."""
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # int32: the launcher keeps it in range
    mask = pixels < n_pixels
    p_offsets = _pixel_offsets(pixels, height, width, stride_p_b, stride_p_h, stride_p_w)
    x_offsets = _pixel_offsets(pixels, height, width, stride_x_b, stride_x_h, stride_x_w)
    block = tl.full([], n_mixtures, tl.int64) * stride_p_j  # the step between parameter blocks of K channels
    half = tl.full([], half_bin, COMPUTE)
    log_width = tl.full([], log_bin_width, COMPUTE)
    edge_c = tl.full([], edge, COMPUTE)
    x0 = tl.load(X + x_offsets, mask=mask, other=0.0).to(COMPUTE)
    x1 = x0
    x2 = x0
    if CHANNELS == 3:
        x1 = tl.load(X + x_offsets + stride_x_c, mask=mask, other=0.0).to(COMPUTE)
        x2 = tl.load(X + x_offsets + 2 * stride_x_c, mask=mask, other=0.0).to(COMPUTE)

    m_logit = tl.full([BLOCK_P], float("-inf"), COMPUTE)
    s_logit = tl.zeros([BLOCK_P], COMPUTE)
    m_q = tl.full([BLOCK_P], float("-inf"), COMPUTE)
    s_q = tl.zeros([BLOCK_P], COMPUTE)
    offsets = p_offsets  # component k's logit; int64, stepped by the channel stride
    for k in range(0, n_mixtures):
        logit, lp, _, _, _, _, _, _ = _component(PARAMS, offsets, block, x0, x1, x2, half, log_width, edge_c,
                                                 CHANNELS, COMPUTE, mask)
        m_logit, s_logit = _online_logsumexp(m_logit, s_logit, logit)
        m_q, s_q = _online_logsumexp(m_q, s_q, logit + lp)
        offsets += stride_p_j
    lse_logit = tl.where(m_logit == float("-inf"), 0.0, m_logit) + tl.log(s_logit)
    lse_q = tl.where(m_q == float("-inf"), 0.0, m_q) + tl.log(s_q)
    nll = lse_logit - lse_q
    if write_terms != 0:
        tl.store(NLL + pixels, nll, mask=mask)
    tl.store(PARTIAL + tl.program_id(0), tl.full([], weight, COMPUTE) * tl.sum(tl.where(mask, nll, 0.0), axis=0))

    if write_grad | write_grad_x:
        out_ty = GRAD_PARAMS.dtype.element_ty
        grad_x0 = tl.zeros([BLOCK_P], COMPUTE)
        grad_x1 = tl.zeros([BLOCK_P], COMPUTE)
        grad_x2 = tl.zeros([BLOCK_P], COMPUTE)
        offsets = p_offsets
        for k in range(0, n_mixtures):
            logit, lp, gc0, gs0, gc1, gs1, gc2, gs2 = _component(
                PARAMS, offsets, block, x0, x1, x2, half, log_width, edge_c, CHANNELS, COMPUTE, mask)
            posterior = tl.exp(logit + lp - lse_q)  # w_k = p(k | x); d nll / d lp_ck = -w_k
            wc0 = posterior * gc0  # d nll / d mean_0 (the mean is subtracted)
            if write_grad != 0:
                tl.store(GRAD_PARAMS + offsets, (tl.exp(logit - lse_logit) - posterior).to(out_ty), mask=mask)
                tl.store(GRAD_PARAMS + offsets + block, wc0.to(out_ty), mask=mask)
                tl.store(GRAD_PARAMS + offsets + 2 * block, (-posterior * gs0).to(out_ty), mask=mask)
            if CHANNELS == 3:
                wc1 = posterior * gc1
                wc2 = posterior * gc2
                # the coefficients' tanh again (short live ranges: the loads hit the cache)
                t0, dt0 = tanh_and_slope(tl.load(PARAMS + offsets + 3 * block, mask=mask, other=0.0).to(COMPUTE))
                t1, dt1 = tanh_and_slope(tl.load(PARAMS + offsets + 6 * block, mask=mask, other=0.0).to(COMPUTE))
                t2, dt2 = tanh_and_slope(tl.load(PARAMS + offsets + 9 * block, mask=mask, other=0.0).to(COMPUTE))
                if write_grad != 0:
                    tl.store(GRAD_PARAMS + offsets + 3 * block, (wc1 * x0 * dt0).to(out_ty), mask=mask)
                    tl.store(GRAD_PARAMS + offsets + 4 * block, wc1.to(out_ty), mask=mask)
                    tl.store(GRAD_PARAMS + offsets + 5 * block, (-posterior * gs1).to(out_ty), mask=mask)
                    tl.store(GRAD_PARAMS + offsets + 6 * block, (wc2 * x0 * dt1).to(out_ty), mask=mask)
                    tl.store(GRAD_PARAMS + offsets + 7 * block, wc2.to(out_ty), mask=mask)
                    tl.store(GRAD_PARAMS + offsets + 8 * block, (-posterior * gs2).to(out_ty), mask=mask)
                    tl.store(GRAD_PARAMS + offsets + 9 * block, (wc2 * x1 * dt2).to(out_ty), mask=mask)
                # x0 enters centred_0 (+1), m_G (tanh a) and m_B (tanh b); x1 centred_1 and m_B (tanh c)
                grad_x0 += t0 * wc1 + t1 * wc2 - wc0
                grad_x1 += t2 * wc2 - wc1
                grad_x2 -= wc2
            else:
                grad_x0 -= wc0
            offsets += stride_p_j
        if write_grad_x != 0:
            tl.store(GRAD_X + x_offsets, grad_x0, mask=mask)
            if CHANNELS == 3:
                tl.store(GRAD_X + x_offsets + stride_x_c, grad_x1, mask=mask)
                tl.store(GRAD_X + x_offsets + 2 * stride_x_c, grad_x2, mask=mask)


@triton.jit
def pixel_losses_scale_kernel(
    SAVED,  # [B, J, H, W] gradient saved by a forward, through strides
    GRAD_OUT,  # [B, H, W] gradient of the per-pixel losses, or of the reduced loss (strides 0)
    OUT,  # [B, J, H, W] output, SAVED's strides
    n_pixels, n_channels, height, width,  # B * H * W, J, H, W
    stride_s_b, stride_s_j, stride_s_h, stride_s_w,  # strides of SAVED and OUT
    stride_go_b, stride_go_h, stride_go_w,  # strides of GRAD_OUT
    weight: "fp64",  # 1 / (B * C * H * W) for a mean, else 1
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_J: tl.constexpr,  # channels per step
    BLOCK_P: tl.constexpr,  # pixels per program
):
    """OUT[b, j, h, w] = SAVED[b, j, h, w] * GRAD_OUT[b, h, w] * weight."""
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = pixels < n_pixels
    s_offsets = _pixel_offsets(pixels, height, width, stride_s_b, stride_s_h, stride_s_w)
    go_offsets = _pixel_offsets(pixels, height, width, stride_go_b, stride_go_h, stride_go_w)
    scale = tl.load(GRAD_OUT + go_offsets, mask=p_mask, other=0.0).to(COMPUTE) * tl.full([], weight, COMPUTE)
    for start in range(0, n_channels, BLOCK_J):
        j = start + tl.arange(0, BLOCK_J)
        mask = (j < n_channels)[:, None] & p_mask[None, :]
        offsets = s_offsets[None, :] + j.to(tl.int64)[:, None] * stride_s_j
        saved = tl.load(SAVED + offsets, mask=mask, other=0.0).to(COMPUTE)
        tl.store(OUT + offsets, (saved * scale[None, :]).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def dmol_sample_kernel(
    PARAMS,  # [B, P, H, W] mixture parameters, through strides
    UNIFORMS,  # [B, K + C, H, W] U[0, 1) draws (read only if has_uniforms), through strides
    OUT,  # [B, C, H, W] output sample in [-1, 1] (params dtype), through strides
    n_pixels, n_mixtures, height, width,
    stride_p_b, stride_p_j, stride_p_h, stride_p_w,  # strides of PARAMS
    stride_u_b, stride_u_j, stride_u_h, stride_u_w,  # strides of UNIFORMS
    stride_o_b, stride_o_c, stride_o_h, stride_o_w,  # strides of OUT
    seed,  # Philox seed (used only without has_uniforms)
    has_uniforms,  # 1: the draws are given in UNIFORMS; 0: drawn from seed
    temperature: "fp64",  # divides the mixture logits, multiplies the logistic scale
    CHANNELS: tl.constexpr,  # 1 or 3
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_P: tl.constexpr,  # pixels per program
):
    """openai's sample_from_discretized_mix_logistic: Gumbel-max component (a running argmax over the
    components, keeping the winner's parameters), logistic samples, channel conditioning, clamp to [-1, 1].
    Uniform i of pixel p is Philox's draw at offset p * (K + C) + i."""
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = pixels < n_pixels
    p_offsets = _pixel_offsets(pixels, height, width, stride_p_b, stride_p_h, stride_p_w)
    u_offsets = _pixel_offsets(pixels, height, width, stride_u_b, stride_u_h, stride_u_w)
    o_offsets = _pixel_offsets(pixels, height, width, stride_o_b, stride_o_h, stride_o_w)
    block = tl.full([], n_mixtures, tl.int64) * stride_p_j
    philox = pixels * (n_mixtures + CHANNELS)  # int32: the launcher keeps n_pixels * (K + C) < 2**31
    temp = tl.full([], temperature, COMPUTE)
    u_lo = tl.full([], UNIFORM_MIN, COMPUTE)
    u_span = 1.0 - 2.0 * u_lo

    best = tl.full([BLOCK_P], float("-inf"), COMPUTE)
    mean0 = tl.zeros([BLOCK_P], COMPUTE)
    scale0 = tl.zeros([BLOCK_P], COMPUTE)
    mean1, scale1, mean2, scale2 = mean0, scale0, mean0, scale0
    coef_rg, coef_rb, coef_gb = mean0, mean0, mean0
    offsets = p_offsets  # component k's logit
    draw_offsets = u_offsets  # component k's uniform
    for k in range(0, n_mixtures):
        if has_uniforms:
            r = tl.load(UNIFORMS + draw_offsets, mask=mask, other=0.5).to(COMPUTE)
        else:
            r = tl.rand(seed, philox + k).to(COMPUTE)
        u = u_lo + u_span * r
        logit = tl.load(PARAMS + offsets, mask=mask, other=0.0).to(COMPUTE)
        neg_gumbel = tl.log(-tl.log(u))
        # argmax of logit / T + g, as argmax of logit + T g below T = 1: the same choice, but logit / T cannot
        # overflow to +-inf (ties at inf, or nan) for a small T, and T -> 0 (T * g rounding to 0) is the argmax
        # of the logits, the limit
        score = tl.where(temp >= 1.0, logit / temp - neg_gumbel, logit - temp * neg_gumbel)
        better = score > best  # strictly: the first maximum wins, as torch.argmax
        best = tl.where(better, score, best)
        mean0 = tl.where(better, tl.load(PARAMS + offsets + block, mask=mask, other=0.0).to(COMPUTE), mean0)
        scale0 = tl.where(better, tl.load(PARAMS + offsets + 2 * block, mask=mask, other=0.0).to(COMPUTE), scale0)
        if CHANNELS == 3:
            coef_rg = tl.where(better, tl.load(PARAMS + offsets + 3 * block, mask=mask, other=0.0).to(COMPUTE),
                               coef_rg)
            mean1 = tl.where(better, tl.load(PARAMS + offsets + 4 * block, mask=mask, other=0.0).to(COMPUTE), mean1)
            scale1 = tl.where(better, tl.load(PARAMS + offsets + 5 * block, mask=mask, other=0.0).to(COMPUTE),
                              scale1)
            coef_rb = tl.where(better, tl.load(PARAMS + offsets + 6 * block, mask=mask, other=0.0).to(COMPUTE),
                               coef_rb)
            mean2 = tl.where(better, tl.load(PARAMS + offsets + 7 * block, mask=mask, other=0.0).to(COMPUTE), mean2)
            scale2 = tl.where(better, tl.load(PARAMS + offsets + 8 * block, mask=mask, other=0.0).to(COMPUTE),
                              scale2)
            coef_gb = tl.where(better, tl.load(PARAMS + offsets + 9 * block, mask=mask, other=0.0).to(COMPUTE),
                               coef_gb)
        offsets += stride_p_j
        draw_offsets += stride_u_j

    x0 = _logistic_sample(UNIFORMS, draw_offsets, stride_u_j, seed, philox, n_mixtures, has_uniforms, mean0,
                          scale0, temp, u_lo, u_span, mask, 0, COMPUTE)
    x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
    tl.store(OUT + o_offsets, x0.to(OUT.dtype.element_ty), mask=mask)
    if CHANNELS == 3:
        x1 = _logistic_sample(UNIFORMS, draw_offsets, stride_u_j, seed, philox, n_mixtures, has_uniforms, mean1,
                              scale1, temp, u_lo, u_span, mask, 1, COMPUTE)
        t_rg, _ = tanh_and_slope(coef_rg)
        x1 = tl.minimum(tl.maximum(x1 + t_rg * x0, -1.0), 1.0)
        tl.store(OUT + o_offsets + stride_o_c, x1.to(OUT.dtype.element_ty), mask=mask)
        x2 = _logistic_sample(UNIFORMS, draw_offsets, stride_u_j, seed, philox, n_mixtures, has_uniforms, mean2,
                              scale2, temp, u_lo, u_span, mask, 2, COMPUTE)
        t_rb, _ = tanh_and_slope(coef_rb)
        t_gb, _ = tanh_and_slope(coef_gb)
        x2 = tl.minimum(tl.maximum(x2 + t_rb * x0 + t_gb * x1, -1.0), 1.0)
        tl.store(OUT + o_offsets + 2 * stride_o_c, x2.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _logistic_sample(UNIFORMS, draw_offsets, stride_u_j, seed, philox, n_mixtures, has_uniforms, mean,
                     log_scale, temp, u_lo, u_span, mask, channel, COMPUTE: tl.constexpr):
    """mean + exp(max(log_scale, -7)) * T * logit(u) with uniform K + channel of each pixel (``draw_offsets``:
    the offsets of uniform K)."""
    if has_uniforms:
        r = tl.load(UNIFORMS + draw_offsets + channel * stride_u_j, mask=mask, other=0.5).to(COMPUTE)
    else:
        r = tl.rand(seed, philox + (n_mixtures + channel)).to(COMPUTE)
    u = u_lo + u_span * r
    return mean + tl.exp(tl.maximum(log_scale, LOG_SCALE_MIN)) * temp * (tl.log(u) - tl.log(1.0 - u))
