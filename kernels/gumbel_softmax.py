"""Gumbel-softmax: y = softmax((logits + g) / tau) over each row, g ~ Gumbel(0, 1) drawn in the kernel.

The launcher moves the softmax dim last and sees every tensor as [R, N]: R = n_rows rows (all other dims) of
N = n_cols classes. A row index r splits into (outer, inner) = (r // n_inner, r % n_inner), each with its own
stride per tensor, so permuted and strided layouts (e.g. the channel dim of an NCHW tensor) need no copy.
Row indices are int32 (R < 2**31 - 1024, checked by the launcher), element offsets int64.
Arithmetic runs in COMPUTE (float32 for 16/32-bit inputs, float64 for float64); results are stored in the
output pointer's dtype.

The noise of element (r, n) is drawn from Philox at offset r * N + n (`_gumbel_noise`), whatever the memory
layout, so a row that takes several passes regenerates identical noise in each pass, and
`gumbel_noise_kernel` writes exactly the noise that the softmax kernel adds (a test hook and a utility).

A row of at most BLOCK_N classes is done in one pass from registers; a longer row takes two: an online
max/sum pass (rescaling the running sum when the maximum grows), then a pass that writes exp(z - max) / sum.
"""

import triton
import triton.language as tl


@triton.jit
def _gumbel_from_bits(bits, COMPUTE: tl.constexpr):
    """Gumbel(0, 1) noise -log(-log(u)) from 32 random bits, finite for every input.

    u = (2k + 1) * 2**-24 with k the top 23 bits: an odd multiple of 2**-24, exact in float32, so u is never 0
    or 1 (u = (k + 0.5) * 2**-24 from 24 bits would round to 1.0 at the top: float32 steps by 2**-24 below 1).
    The exponential variate e = -log(u) is clamped below by 1 - u (exact too, and -log(u) >= 1 - u for every u),
    so a log that rounds badly next to u = 1 can never return e <= 0: e lies in [2**-24, 16.7] and
    g = -log(e) in [-2.82, 16.7]. torch's F.gumbel_softmax can draw e = 0 (an inf, then a NaN in the softmax).
    """
    u = ((bits >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08  # * 2**-24
    u = u.to(COMPUTE)
    e = tl.maximum(-tl.log(u), 1.0 - u)
    return -tl.log(e)


@triton.jit
def _gumbel_noise(seed, offsets, COMPUTE: tl.constexpr):
    """Gumbel(0, 1) noise (COMPUTE dtype), one value per (int64) Philox offset."""
    return _gumbel_from_bits(tl.randint(seed, offsets), COMPUTE)


@triton.jit
def _perturbed_logits(LOGITS, NOISE, x_rows, g_rows, noise_rows, row_mask, cols, n_cols, seed,
                      stride_x_n, stride_g_n, has_noise, COMPUTE: tl.constexpr):
    """z = logits + g on a [BLOCK_R, BLOCK_N] tile (not yet divided by tau: see `_over_tau`); -inf outside the
    row (so it adds nothing)."""
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    cols64 = cols.to(tl.int64)
    x = tl.load(LOGITS + x_rows[:, None] + cols64[None, :] * stride_x_n, mask=mask, other=0.0).to(COMPUTE)
    if has_noise:  # a uniform runtime branch: one compiled variant less, and the Philox path sets the registers
        g = tl.load(NOISE + g_rows[:, None] + cols64[None, :] * stride_g_n, mask=mask, other=0.0).to(COMPUTE)
    else:
        g = _gumbel_noise(seed, noise_rows[:, None] + cols64[None, :], COMPUTE)
    return tl.where(col_mask[None, :], x + g, float("-inf"))


@triton.jit
def _over_tau(d, inv_tau):
    """d / tau for d = z - max(z) <= 0 (or a rescaling step m_old - m_new), as d * (1 / tau), and exactly 0 where
    d = 0: with tau below the smallest normal float 1 / tau is inf, and 0 * inf must not be nan. exp of it is
    then the limit tau -> 0: 1 at the row's maximum, 0 elsewhere. Dividing the difference rather than the
    logits keeps (logits + g) / tau from overflowing for any tau > 0."""
    return tl.where(d == 0.0, 0.0, d * inv_tau)


@triton.jit
def _store_rows(Y, Y_SOFT, y_rows, row_mask, cols, n_cols, stride_y_n, y_soft, argmax, write_soft,
                HARD: tl.constexpr):
    """Stores a [BLOCK_R, BLOCK_N] tile: the soft sample, or (HARD) the one-hot of ``argmax`` and, when
    ``write_soft``, the soft sample to Y_SOFT for the backward. A row whose soft sample is nan (a nan or +inf
    logit, or every logit -inf) stays nan in the one-hot too, as torch's y_hard - y_soft.detach() + y_soft."""
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    offsets = y_rows[:, None] + cols.to(tl.int64)[None, :] * stride_y_n
    if HARD:
        one_hot = tl.where(cols[None, :] == argmax[:, None], 1.0, 0.0)
        one_hot = tl.where(y_soft != y_soft, y_soft, one_hot)
        tl.store(Y + offsets, one_hot.to(Y.dtype.element_ty), mask=mask)
        if write_soft:
            tl.store(Y_SOFT + offsets, y_soft.to(Y_SOFT.dtype.element_ty), mask=mask)
    else:
        tl.store(Y + offsets, y_soft.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _row_offsets(first_row, n_inner, stride_outer, stride_inner, BLOCK_R: tl.constexpr):
    """Offsets (int64) of the first elements of rows first_row + [0, BLOCK_R): row = outer * n_inner + inner.

    One scalar division per program: the launcher guarantees n_inner >= BLOCK_R when there are two row groups,
    so the rows of a program cross at most one group boundary (with one group, n_inner = R and any row past
    the boundary is masked). A division per row took up to 180 registers (int64) or spilled (int32).
    """
    outer = first_row // n_inner
    inner = first_row - outer * n_inner + tl.arange(0, BLOCK_R)
    wrapped = inner >= n_inner
    outer = outer + wrapped.to(tl.int32)
    inner = tl.where(wrapped, inner - n_inner, inner)
    return outer.to(tl.int64) * stride_outer + inner.to(tl.int64) * stride_inner


@triton.jit
def gumbel_softmax_forward_kernel(
    LOGITS,  # [R, N] logits (any strides, through (outer, inner, n) strides)
    NOISE,  # [R, N] Gumbel noise (read only if has_noise)
    Y,  # [R, N] output: the soft sample, or (HARD) the one-hot of its argmax
    Y_SOFT,  # [R, N] output (HARD and write_soft only): the soft sample, kept for the backward; Y's strides
    n_rows,  # R: rows (product of the dims other than the softmax dim)
    n_cols,  # N: classes per row (the softmax dim)
    n_inner,  # rows of the inner row group: row r = (r // n_inner, r % n_inner); >= BLOCK_R or R
    seed,  # Philox seed (used only without has_noise)
    tau: "fp64",  # temperature (a double: exact in float64 kernels)
    write_soft,  # HARD: also store the soft sample to Y_SOFT (0 when no gradient is needed)
    has_noise,  # 1: the noise is given in NOISE; 0: drawn in the kernel from seed
    stride_x_outer, stride_x_inner, stride_x_n,  # strides of LOGITS
    stride_g_outer, stride_g_inner, stride_g_n,  # strides of NOISE
    stride_y_outer, stride_y_inner, stride_y_n,  # strides of Y and Y_SOFT
    HARD: tl.constexpr,  # straight-through: Y gets the one-hot of the argmax
    COMPUTE: tl.constexpr,  # arithmetic dtype (tl.float32 or tl.float64)
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # classes per step along a row
):
    """Y[r, :] = softmax((LOGITS[r, :] + g[r, :]) / tau), or its one-hot argmax (HARD)."""
    first_row = tl.program_id(0) * BLOCK_R  # int32: the launcher keeps R + BLOCK_R < 2**31
    rows = first_row + tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    x_rows = _row_offsets(first_row, n_inner, stride_x_outer, stride_x_inner, BLOCK_R)
    g_rows = _row_offsets(first_row, n_inner, stride_g_outer, stride_g_inner, BLOCK_R)
    y_rows = _row_offsets(first_row, n_inner, stride_y_outer, stride_y_inner, BLOCK_R)
    noise_rows = rows.to(tl.int64) * n_cols  # Philox offsets: the element's index in the dim-last [R, N] order
    inv_tau = 1.0 / tl.full([], tau, COMPUTE)
    if n_cols <= BLOCK_N:  # the whole row in registers: one pass, logits read once
        cols = tl.arange(0, BLOCK_N)
        z = _perturbed_logits(LOGITS, NOISE, x_rows, g_rows, noise_rows, row_mask, cols, n_cols, seed,
                              stride_x_n, stride_g_n, has_noise, COMPUTE)
        row_max = tl.max(z, axis=1)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # a row of -inf: 0 / 0 = nan, as torch
        p = tl.exp(_over_tau(z - row_max[:, None], inv_tau))
        y_soft = p * (1.0 / tl.sum(p, axis=1))[:, None]
        if HARD:
            argmax = tl.argmax(z, axis=1, tie_break_left=True)
        else:
            argmax = tl.zeros([BLOCK_R], tl.int32)  # unused
        _store_rows(Y, Y_SOFT, y_rows, row_mask, cols, n_cols, stride_y_n, y_soft, argmax, write_soft, HARD)
    else:
        # pass 1: running max m and running sum s of exp(z - m) (rescaled when m grows), and the argmax
        m = tl.full([BLOCK_R], float("-inf"), COMPUTE)
        s = tl.zeros([BLOCK_R], COMPUTE)
        argmax = tl.zeros([BLOCK_R], tl.int32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            z = _perturbed_logits(LOGITS, NOISE, x_rows, g_rows, noise_rows, row_mask, cols, n_cols, seed,
                                  stride_x_n, stride_g_n, has_noise, COMPUTE)
            block_max = tl.max(z, axis=1)
            if HARD:  # strictly greater: the first maximum of the row wins, as in one block
                # the first column holding the block's maximum (tl.argmax here made ptxas spill on sm_80)
                block_argmax = tl.min(tl.where(z == block_max[:, None], cols[None, :], n_cols), axis=1)
                argmax = tl.where(block_max > m, block_argmax, argmax)
            m_new = tl.maximum(m, block_max)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf) while the row is all -inf
            s = s * tl.exp(_over_tau(m - m_safe, inv_tau)) + tl.sum(tl.exp(_over_tau(z - m_safe[:, None], inv_tau)),
                                                                    axis=1)
            m = m_new
        # pass 2: the same noise again (same Philox offsets), normalized
        m = tl.where(m == float("-inf"), 0.0, m)
        inv_s = 1.0 / s
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            z = _perturbed_logits(LOGITS, NOISE, x_rows, g_rows, noise_rows, row_mask, cols, n_cols, seed,
                                  stride_x_n, stride_g_n, has_noise, COMPUTE)
            y_soft = tl.exp(_over_tau(z - m[:, None], inv_tau)) * inv_s[:, None]
            _store_rows(Y, Y_SOFT, y_rows, row_mask, cols, n_cols, stride_y_n, y_soft, argmax, write_soft, HARD)


@triton.jit
def gumbel_softmax_backward_kernel(
    Y_SOFT,  # [R, N] the soft sample of the forward
    GRAD_Y,  # [R, N] gradient of the loss w.r.t. the output (any strides, 0 included)
    GRAD_LOGITS,  # [R, N] output
    n_rows,  # R
    n_cols,  # N
    n_inner,  # rows of the inner row group
    tau: "fp64",  # temperature
    stride_y_outer, stride_y_inner, stride_y_n,  # strides of Y_SOFT
    stride_gy_outer, stride_gy_inner, stride_gy_n,  # strides of GRAD_Y
    stride_gx_outer, stride_gx_inner, stride_gx_n,  # strides of GRAD_LOGITS
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # classes per step along a row
):
    """GRAD_LOGITS = y * (grad_y - sum(grad_y * y)) / tau: the softmax backward needs only y (no noise); exactly
    0 where y * (grad_y - sum) is 0, also for a tau whose 1 / tau is inf (the limit tau -> 0 of a one-hot y).

    The straight-through (hard) gradient is that of the soft sample, so both modes share this kernel.
    """
    first_row = tl.program_id(0) * BLOCK_R
    row_mask = first_row + tl.arange(0, BLOCK_R) < n_rows
    y_rows = _row_offsets(first_row, n_inner, stride_y_outer, stride_y_inner, BLOCK_R)
    gy_rows = _row_offsets(first_row, n_inner, stride_gy_outer, stride_gy_inner, BLOCK_R)
    gx_rows = _row_offsets(first_row, n_inner, stride_gx_outer, stride_gx_inner, BLOCK_R)
    inv_tau = 1.0 / tl.full([], tau, COMPUTE)
    if n_cols <= BLOCK_N:
        cols = tl.arange(0, BLOCK_N).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        y = tl.load(Y_SOFT + y_rows[:, None] + cols[None, :] * stride_y_n, mask=mask, other=0.0).to(COMPUTE)
        gy = tl.load(GRAD_Y + gy_rows[:, None] + cols[None, :] * stride_gy_n, mask=mask, other=0.0).to(COMPUTE)
        dot = tl.sum(y * gy, axis=1)
        grad = _over_tau(y * (gy - dot[:, None]), inv_tau)
        tl.store(GRAD_LOGITS + gx_rows[:, None] + cols[None, :] * stride_gx_n,
                 grad.to(GRAD_LOGITS.dtype.element_ty), mask=mask)
    else:
        dot = tl.zeros([BLOCK_R], COMPUTE)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
            mask = row_mask[:, None] & (cols < n_cols)[None, :]
            y = tl.load(Y_SOFT + y_rows[:, None] + cols[None, :] * stride_y_n, mask=mask, other=0.0).to(COMPUTE)
            gy = tl.load(GRAD_Y + gy_rows[:, None] + cols[None, :] * stride_gy_n, mask=mask,
                         other=0.0).to(COMPUTE)
            dot += tl.sum(y * gy, axis=1)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
            mask = row_mask[:, None] & (cols < n_cols)[None, :]
            y = tl.load(Y_SOFT + y_rows[:, None] + cols[None, :] * stride_y_n, mask=mask, other=0.0).to(COMPUTE)
            gy = tl.load(GRAD_Y + gy_rows[:, None] + cols[None, :] * stride_gy_n, mask=mask,
                         other=0.0).to(COMPUTE)
            grad = _over_tau(y * (gy - dot[:, None]), inv_tau)  # 0, not 0 * inf, where y or the rest is 0
            tl.store(GRAD_LOGITS + gx_rows[:, None] + cols[None, :] * stride_gx_n,
                     grad.to(GRAD_LOGITS.dtype.element_ty), mask=mask)


@triton.jit
def gumbel_noise_kernel(
    NOISE,  # [R * N] output, contiguous: the noise of element (r, n) of the dim-last view at r * N + n
    n_elements,  # R * N
    seed,  # Philox seed
    COMPUTE: tl.constexpr,  # arithmetic dtype (the softmax kernel's)
    BLOCK: tl.constexpr,  # elements per program
):
    """The Gumbel noise gumbel_softmax_forward_kernel adds for ``seed``, bit for bit."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(NOISE + offsets, _gumbel_noise(seed, offsets, COMPUTE).to(NOISE.dtype.element_ty),
             mask=offsets < n_elements)
