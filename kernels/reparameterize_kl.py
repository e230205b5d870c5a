"""Fused VAE reparameterization + Gaussian KL divergence.

Every tensor is seen as a 2-D [B, N] view: B = n_rows samples, N = n_cols latent dims per sample (all
non-batch dims flattened). Inputs are read through their (batch, latent) strides, so strided views need no copy;
outputs are contiguous [B, N]. Arithmetic runs in COMPUTE (float32 for 16/32-bit inputs, float64 for
float64 inputs); results are stored in the output pointer's dtype.

The standard-normal noise is drawn from Philox at offset b * N + n (`_standard_normal`): the backward
regenerates it from the same (seed, offset) instead of storing it.
"""

import triton
import triton.language as tl
from triton.language.random import uint_to_uniform_float


@triton.jit
def _standard_normal(seed, offsets):
    """N(0, 1) float32 noise, one value per offset: Box-Muller on two Philox uniforms.

    ``tl.randn`` does the same with libdevice's cosf, whose slow path for huge arguments (Payne-Hanek
    reduction, never taken here) keeps a local array and spills registers on sm_80/sm_90. The angle is
    2*pi*u with u in [0, 1), so a polynomial on a reduced range is exact to float32 rounding instead.
    """
    r0, r1, _, _ = tl.randint4x(seed, offsets)
    u1 = tl.maximum(uint_to_uniform_float(r0), 1.0e-7)  # log(0) guard, as tl.randn
    u2 = uint_to_uniform_float(r1)
    radius = tl.sqrt(-2.0 * tl.log(u1))
    # cos(2*pi*u2) = -sin(x) with x = 2*pi*|u2 - round(u2)| - pi/2 in [-pi/2, pi/2]
    x = 6.283185307179586 * tl.abs(u2 - tl.floor(u2 + 0.5)) - 1.5707963267948966
    x2 = x * x
    sin_x = x * (1.0 + x2 * (-1.6666667e-1 + x2 * (8.3333333e-3 + x2 * (-1.9841270e-4 + x2 * (
        2.7557319e-6 + x2 * -2.5052108e-8)))))
    return -radius * sin_x


@triton.jit
def _gaussian_kl(mu, logvar, prior_mu, prior_logvar, HAS_PRIOR: tl.constexpr):
    """Elementwise KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))); prior N(0, 1) without HAS_PRIOR."""
    if HAS_PRIOR:
        diff = mu - prior_mu
        return 0.5 * (prior_logvar - logvar + tl.exp(logvar - prior_logvar) + diff * diff * tl.exp(-prior_logvar) - 1.0)
    else:
        return 0.5 * (mu * mu + tl.exp(logvar) - 1.0 - logvar)


@triton.jit
def _load_tile(ptr, rows, cols, stride_b, stride_n, mask, COMPUTE: tl.constexpr):
    """Loads a [BLOCK_B, BLOCK_N] tile of a strided [B, N] tensor (int64 offsets) as COMPUTE."""
    offsets = rows[:, None] * stride_b + cols[None, :] * stride_n
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(COMPUTE)


@triton.jit
def reparameterize_kl_forward_kernel(
    MU,  # [B, N] posterior mean
    LOGVAR,  # [B, N] posterior log-variance
    EPS,  # [B, N] noise (read only if HAS_EPS)
    PRIOR_MU,  # [B, N] prior mean (read only if HAS_PRIOR; batch stride may be 0)
    PRIOR_LOGVAR,  # [B, N] prior log-variance (read only if HAS_PRIOR)
    COLUMN_KL,  # [N] batch sum of the elementwise KL (read only if free_bits > 0)
    Z,  # [B, N] output sample, contiguous
    KL,  # [B, SPLIT] output (COMPUTE dtype): beta * per-sample KL over this program's share of the dims
    n_rows,  # batch size
    n_cols,  # latent dims per sample
    cols_per_program,  # latent dims each program along axis 1 covers (a multiple of BLOCK_N)
    seed,  # Philox seed (used only without HAS_EPS)
    beta: "fp64",  # KL weight (a double: exact in float64 kernels, rounded once to COMPUTE)
    free_bits: "fp64",  # free-bits threshold on each dim's batch-mean KL; 0 turns the rule off
    stride_mu_b, stride_mu_n,  # strides of MU
    stride_lv_b, stride_lv_n,  # strides of LOGVAR
    stride_eps_b, stride_eps_n,  # strides of EPS
    stride_pmu_b, stride_pmu_n,  # strides of PRIOR_MU
    stride_plv_b, stride_plv_n,  # strides of PRIOR_LOGVAR
    HAS_EPS: tl.constexpr,  # noise given as a tensor (else drawn in-kernel)
    HAS_PRIOR: tl.constexpr,  # diagonal Gaussian prior given (else N(0, I))
    COMPUTE: tl.constexpr,  # arithmetic dtype (tl.float32 or tl.float64)
    BLOCK_B: tl.constexpr,  # samples per program
    BLOCK_N: tl.constexpr,  # latent dims per loop step
):
    """z = mu + exp(logvar / 2) * eps and KL[b, split] = beta * sum over this program's dims of KL."""
    pid_b = tl.program_id(0)
    pid_split = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < n_rows
    col_start = pid_split.to(tl.int64) * cols_per_program
    col_end = tl.minimum(col_start + cols_per_program, n_cols)
    acc = tl.zeros([BLOCK_B], dtype=COMPUTE)
    for start in range(col_start, col_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < col_end
        mask = row_mask[:, None] & col_mask[None, :]
        mu = _load_tile(MU, rows, cols, stride_mu_b, stride_mu_n, mask, COMPUTE)
        logvar = _load_tile(LOGVAR, rows, cols, stride_lv_b, stride_lv_n, mask, COMPUTE)
        out_offsets = rows[:, None] * n_cols + cols[None, :]
        if HAS_EPS:
            eps = _load_tile(EPS, rows, cols, stride_eps_b, stride_eps_n, mask, COMPUTE)
        else:
            eps = _standard_normal(seed, out_offsets).to(COMPUTE)
        z = mu + tl.exp(0.5 * logvar) * eps
        tl.store(Z + out_offsets, z.to(Z.dtype.element_ty), mask=mask)

        if HAS_PRIOR:
            prior_mu = _load_tile(PRIOR_MU, rows, cols, stride_pmu_b, stride_pmu_n, mask, COMPUTE)
            prior_logvar = _load_tile(PRIOR_LOGVAR, rows, cols, stride_plv_b, stride_plv_n, mask, COMPUTE)
        else:
            prior_mu = mu
            prior_logvar = logvar
        kl = _gaussian_kl(mu, logvar, prior_mu, prior_logvar, HAS_PRIOR)
        if free_bits > 0:  # a uniform runtime branch: free in a memory-bound loop, and one compiled variant less
            column_mean = tl.load(COLUMN_KL + cols, mask=col_mask, other=0.0).to(COMPUTE) / n_rows
            threshold = tl.full([], free_bits, COMPUTE)
            kl = tl.where((column_mean < threshold)[None, :], threshold, kl)
        acc += tl.sum(tl.where(mask, kl, 0.0), axis=1)
    n_split = tl.num_programs(1)
    tl.store(KL + rows * n_split + pid_split, (tl.full([], beta, COMPUTE) * acc).to(KL.dtype.element_ty),
             mask=row_mask)


@triton.jit
def reparameterize_kl_column_kernel(
    MU,  # [B, N] posterior mean
    LOGVAR,  # [B, N] posterior log-variance
    PRIOR_MU,  # [B, N] prior mean (read only if HAS_PRIOR)
    PRIOR_LOGVAR,  # [B, N] prior log-variance (read only if HAS_PRIOR)
    COLUMN_KL,  # [N] output: sum over the batch of the elementwise KL (COMPUTE dtype)
    n_rows,  # batch size
    n_cols,  # latent dims per sample
    stride_mu_b, stride_mu_n,  # strides of MU
    stride_lv_b, stride_lv_n,  # strides of LOGVAR
    stride_pmu_b, stride_pmu_n,  # strides of PRIOR_MU
    stride_plv_b, stride_plv_n,  # strides of PRIOR_LOGVAR
    HAS_PRIOR: tl.constexpr,  # diagonal Gaussian prior given (else N(0, I))
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_B: tl.constexpr,  # samples per loop step
    BLOCK_N: tl.constexpr,  # latent dims per program
):
    """COLUMN_KL[n] = sum_b KL[b, n]: the free-bits rule needs each dim's batch-mean KL first."""
    pid = tl.program_id(0)
    cols = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    acc = tl.zeros([BLOCK_N], dtype=COMPUTE)
    for start in range(0, n_rows, BLOCK_B):
        rows = start + tl.arange(0, BLOCK_B).to(tl.int64)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        mu = _load_tile(MU, rows, cols, stride_mu_b, stride_mu_n, mask, COMPUTE)
        logvar = _load_tile(LOGVAR, rows, cols, stride_lv_b, stride_lv_n, mask, COMPUTE)
        if HAS_PRIOR:
            prior_mu = _load_tile(PRIOR_MU, rows, cols, stride_pmu_b, stride_pmu_n, mask, COMPUTE)
            prior_logvar = _load_tile(PRIOR_LOGVAR, rows, cols, stride_plv_b, stride_plv_n, mask, COMPUTE)
        else:
            prior_mu = mu
            prior_logvar = logvar
        kl = _gaussian_kl(mu, logvar, prior_mu, prior_logvar, HAS_PRIOR)
        acc += tl.sum(tl.where(mask, kl, 0.0), axis=0)
    tl.store(COLUMN_KL + cols, acc, mask=col_mask)


@triton.jit
def reparameterize_kl_backward_kernel(
    MU,  # [B, N] posterior mean
    LOGVAR,  # [B, N] posterior log-variance
    EPS,  # [B, N] noise (read only if HAS_EPS)
    PRIOR_MU,  # [B, N] prior mean (read only if HAS_PRIOR)
    PRIOR_LOGVAR,  # [B, N] prior log-variance (read only if HAS_PRIOR)
    COLUMN_KL,  # [N] batch sum of the elementwise KL (read only if free_bits > 0)
    GRAD_Z,  # [B, N] gradient of the loss w.r.t. z (any strides, batch/latent stride may be 0)
    GRAD_KL,  # [B] gradient of the loss w.r.t. the per-sample KL
    GRAD_MU,  # [B, N] output, contiguous
    GRAD_LOGVAR,  # [B, N] output, contiguous
    GRAD_EPS,  # [B, N] output (written only if GRAD_OF_EPS)
    GRAD_PRIOR_MU,  # [B, N] output (written only if HAS_PRIOR)
    GRAD_PRIOR_LOGVAR,  # [B, N] output (written only if HAS_PRIOR)
    n_rows,  # batch size
    n_cols,  # latent dims per sample
    seed,  # Philox seed of the forward (used only without HAS_EPS)
    beta: "fp64",  # KL weight (a double: exact in float64 kernels, rounded once to COMPUTE)
    free_bits: "fp64",  # free-bits threshold; 0 turns the rule off
    stride_mu_b, stride_mu_n,  # strides of MU
    stride_lv_b, stride_lv_n,  # strides of LOGVAR
    stride_eps_b, stride_eps_n,  # strides of EPS
    stride_pmu_b, stride_pmu_n,  # strides of PRIOR_MU
    stride_plv_b, stride_plv_n,  # strides of PRIOR_LOGVAR
    stride_gz_b, stride_gz_n,  # strides of GRAD_Z
    stride_gkl,  # stride of GRAD_KL
    HAS_EPS: tl.constexpr,  # noise was given as a tensor (else regenerated from seed)
    GRAD_OF_EPS: tl.constexpr,  # write the gradient w.r.t. the given noise
    HAS_PRIOR: tl.constexpr,  # diagonal Gaussian prior given
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_B: tl.constexpr,  # samples per program
    BLOCK_N: tl.constexpr,  # latent dims per program
):
    """All input gradients in one pass; the noise is regenerated, never stored."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    out_offsets = rows[:, None] * n_cols + cols[None, :]

    mu = _load_tile(MU, rows, cols, stride_mu_b, stride_mu_n, mask, COMPUTE)
    logvar = _load_tile(LOGVAR, rows, cols, stride_lv_b, stride_lv_n, mask, COMPUTE)
    std = tl.exp(0.5 * logvar)  # before the other loads: fewer live registers across float64 exp's calls
    grad_z = _load_tile(GRAD_Z, rows, cols, stride_gz_b, stride_gz_n, mask, COMPUTE)
    grad_kl = tl.load(GRAD_KL + rows * stride_gkl, mask=row_mask, other=0.0).to(COMPUTE)
    grad_kl *= tl.full([], beta, COMPUTE)
    kl_scale = tl.broadcast_to(grad_kl[:, None], [BLOCK_B, BLOCK_N])
    if free_bits > 0:  # dims whose batch-mean KL is under free_bits get no KL gradient
        column_mean = tl.load(COLUMN_KL + cols, mask=col_mask, other=0.0).to(COMPUTE) / n_rows
        kl_scale = tl.where((column_mean < tl.full([], free_bits, COMPUTE))[None, :], 0.0, kl_scale)
    if HAS_EPS:
        eps = _load_tile(EPS, rows, cols, stride_eps_b, stride_eps_n, mask, COMPUTE)
    else:
        eps = _standard_normal(seed, out_offsets).to(COMPUTE)
    # z = mu + std * eps
    grad_mu = grad_z
    grad_logvar = 0.5 * grad_z * std * eps
    if GRAD_OF_EPS:
        tl.store(GRAD_EPS + out_offsets, (grad_z * std).to(GRAD_EPS.dtype.element_ty), mask=mask)
    if HAS_PRIOR:
        prior_mu = _load_tile(PRIOR_MU, rows, cols, stride_pmu_b, stride_pmu_n, mask, COMPUTE)
        prior_logvar = _load_tile(PRIOR_LOGVAR, rows, cols, stride_plv_b, stride_plv_n, mask, COMPUTE)
        scaled_diff = (mu - prior_mu) * tl.exp(-prior_logvar)  # d KL / d mu
        var_ratio = tl.exp(logvar - prior_logvar)
        grad_mu += kl_scale * scaled_diff
        grad_logvar += kl_scale * 0.5 * (var_ratio - 1.0)
        grad_prior_mu = -kl_scale * scaled_diff
        grad_prior_logvar = kl_scale * 0.5 * (1.0 - var_ratio - scaled_diff * (mu - prior_mu))
        tl.store(GRAD_PRIOR_MU + out_offsets, grad_prior_mu.to(GRAD_PRIOR_MU.dtype.element_ty), mask=mask)
        tl.store(GRAD_PRIOR_LOGVAR + out_offsets, grad_prior_logvar.to(GRAD_PRIOR_LOGVAR.dtype.element_ty), mask=mask)
    else:
        grad_mu += kl_scale * mu
        grad_logvar += kl_scale * 0.5 * (std * std - 1.0)
    tl.store(GRAD_MU + out_offsets, grad_mu.to(GRAD_MU.dtype.element_ty), mask=mask)
    tl.store(GRAD_LOGVAR + out_offsets, grad_logvar.to(GRAD_LOGVAR.dtype.element_ty), mask=mask)
