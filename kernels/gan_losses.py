"""GAN losses on discriminator logits, and gradient penalties on the discriminator's input gradients.

Logit losses: every loss of ``fastgen.gan_d_loss`` / ``fastgen.gan_g_loss`` is, per logit tensor ("segment"),
``sign * term(x)`` summed over its elements, with ``term`` one of four families:

* BCE (0):    ``t * softplus(-x) + (1 - t) * softplus(x) = max(x, 0) - t * x + log1p(exp(-|x|))``, the binary
  cross-entropy with logits against target t (t = 1: softplus(-x), t = 0: softplus(x));
  d/dx = ``(1 - t) * sigmoid(x) - t * sigmoid(-x)`` (each sigmoid from exp(-|x|): no overflow, no cancellation);
* HINGE (1):  ``relu(1 + c * x)`` (c = -1 for real logits, +1 for fake ones), d/dx = ``c`` where ``1 + c * x > 0``;
* LINEAR (2): ``c * x``, d/dx = ``c``;
* SQUARE (3): ``0.5 * (x - t)^2``, d/dx = ``x - t``.

Two segments (real and fake logits of the discriminator loss; the generator loss passes an empty second one)
are handled by one launch: program p covers elements [p * E, (p + 1) * E) of each segment (E =
``elements_per_program``), writes ``sign * d term / dx`` for them (the forward computes the gradient; the backward
multiplies it by grad_output times the reduction's weight 1/N, so that a saved float16 gradient stays a normal
number, not a subnormal 1/N-scaled one) and the weighted sum of its terms to PARTIAL[p]. Logits are flat [N]
views read through one stride.

Gradient penalties: ``gan_gradient_penalty_sum_squares_kernel`` sums g^2 over a share of each row of the [B, N]
gradient view (rows split over several programs when the batch is small), ``gan_gradient_penalty_finish_kernel``
(one program) turns the row sums into per-sample penalties, the coefficient c_b with d penalty_b / d g_b =
c_b * g_b, and their batch reduction; ``gan_gradient_penalty_backward_kernel`` writes c_b * w_b * g_b.

Arithmetic runs in COMPUTE (float32 for 16/32-bit inputs, float64 for float64 inputs). Float arguments are
annotated "fp64" (a launch passes them as doubles: 0.9 is 0.9 to float64 precision in a float64 kernel) and
converted to COMPUTE once with ``tl.full`` (which works compiled and interpreted alike).
"""

import triton
import triton.language as tl

from .numerics import log1p

BCE = tl.constexpr(0)
HINGE = tl.constexpr(1)
LINEAR = tl.constexpr(2)
SQUARE = tl.constexpr(3)


@triton.jit
def _logit_term(x, family, target):
    """(term, d term / dx) of one family (see the module docstring) for logits x in COMPUTE."""
    if family == BCE:
        e = tl.exp(-tl.abs(x))  # in (0, 1]: exp never overflows
        r = 1.0 / (1.0 + e)
        positive = x >= 0
        sig = tl.where(positive, r, e * r)  # sigmoid(x)
        sig_neg = tl.where(positive, e * r, r)  # sigmoid(-x), not 1 - sigmoid(x)
        log1p_e = log1p(e)
        # t softplus(-x) + (1 - t) softplus(x), a coefficient of 0 dropping its term: softplus(+-inf) = inf must
        # not meet a 0 (max(x, 0) - t x is inf - inf at x = +inf, t = 1, and 0 * -inf at x = -inf, t = 0)
        value = (tl.where(target == 1.0, 0.0, (1.0 - target) * (tl.where(positive, x, 0.0) + log1p_e))
                 + tl.where(target == 0.0, 0.0, target * (tl.where(positive, 0.0, -x) + log1p_e)))
        grad = (1.0 - target) * sig - target * sig_neg  # sigmoids in [0, 1]: 0 at the saturated side
    elif family == HINGE:
        y = 1.0 + target * x
        value = tl.where(y < 0, 0.0, y)  # relu that keeps NaN, like torch.relu
        grad = tl.where(y > 0, target, 0.0)
    elif family == LINEAR:
        value = target * x
        grad = tl.zeros_like(x) + target  # as torch: the slope, also where x is NaN
    else:
        value = 0.5 * (x - target) * (x - target)
        grad = x - target
    return value, grad


@triton.jit
def _logit_segment(X, GRAD, TERMS, start, end, stride, family, target, sign, write_grad, write_terms,
                   COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    """Elements [start, end) of one segment: stores sign * d term / dx (and sign * term); returns sum of sign * term."""
    acc = tl.zeros([BLOCK], dtype=COMPUTE)
    for block_start in range(start, end, BLOCK):
        offsets = block_start + tl.arange(0, BLOCK)
        mask = offsets < end
        x = tl.load(X + offsets * stride, mask=mask, other=0.0).to(COMPUTE)
        value, grad = _logit_term(x, family, target)
        value = sign * value
        if write_grad != 0:
            tl.store(GRAD + offsets, (sign * grad).to(GRAD.dtype.element_ty), mask=mask)
        if write_terms != 0:
            tl.store(TERMS + offsets, value.to(TERMS.dtype.element_ty), mask=mask)
        acc += tl.where(mask, value, 0.0)
    return tl.sum(acc, axis=0)


@triton.jit(do_not_specialize=["family_real", "family_fake", "sign_real", "sign_fake", "write_grad_real",
                                "write_grad_fake", "write_terms"])
def gan_logit_loss_forward_kernel(
    REAL,  # [n_real] first segment's logits (the discriminator's real logits; the generator's fake ones)
    FAKE,  # [n_fake] second segment's logits (n_fake = 0 for the generator loss)
    GRAD_REAL,  # [n_real] output: sign * d term / dx (input dtype), written if write_grad_real
    GRAD_FAKE,  # [n_fake] output, written if write_grad_fake
    TERMS_REAL,  # [n_real] output: per-element loss (COMPUTE), written if write_terms
    TERMS_FAKE,  # [n_fake] output, written if write_terms
    PARTIAL,  # [programs] output (COMPUTE): weight_real * sum of real terms + weight_fake * sum of fake terms
    n_real,  # elements of REAL
    n_fake,  # elements of FAKE
    elements_per_program,  # elements of each segment a program covers (a multiple of BLOCK)
    stride_real,  # element stride of REAL
    stride_fake,  # element stride of FAKE
    family_real,  # BCE, HINGE, LINEAR or SQUARE
    family_fake,
    sign_real,  # +1 or -1: multiplies the term
    sign_fake,
    write_grad_real,  # 0/1
    write_grad_fake,  # 0/1
    write_terms,  # 0/1 (reduction "none")
    target_real: "fp64",  # BCE/SQUARE target, HINGE/LINEAR coefficient
    target_fake: "fp64",
    weight_real: "fp64",  # 1 / n_real for a mean (nan when n_real = 0, as torch's mean), 1 for a sum
    weight_fake: "fp64",
    COMPUTE: tl.constexpr,  # arithmetic dtype (tl.float32 or tl.float64)
    BLOCK: tl.constexpr,  # elements per loop step
):
    """Per-element terms and gradients of both segments; one weighted partial sum per program."""
    start = tl.program_id(0).to(tl.int64) * elements_per_program
    t_real = tl.full([], target_real, COMPUTE)
    t_fake = tl.full([], target_fake, COMPUTE)
    sum_real = _logit_segment(REAL, GRAD_REAL, TERMS_REAL, start, tl.minimum(start + elements_per_program, n_real),
                              stride_real, family_real, t_real, sign_real, write_grad_real, write_terms, COMPUTE,
                              BLOCK)
    sum_fake = _logit_segment(FAKE, GRAD_FAKE, TERMS_FAKE, start, tl.minimum(start + elements_per_program, n_fake),
                              stride_fake, family_fake, t_fake, sign_fake, write_grad_fake, write_terms, COMPUTE,
                              BLOCK)
    partial = tl.full([], weight_real, COMPUTE) * sum_real + tl.full([], weight_fake, COMPUTE) * sum_fake
    tl.store(PARTIAL + tl.program_id(0), partial)


@triton.jit
def _scale_segment(SAVED, GRAD_OUT, OUT, offsets, n, stride_grad_out, weight, COMPUTE: tl.constexpr):
    mask = offsets < n
    saved = tl.load(SAVED + offsets, mask=mask, other=0.0).to(COMPUTE)
    grad_out = tl.load(GRAD_OUT + offsets * stride_grad_out, mask=mask, other=0.0).to(COMPUTE)
    tl.store(OUT + offsets, (saved * (grad_out * weight)).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def gan_logit_loss_backward_kernel(
    SAVED_REAL,  # [n_real] sign * d term / dx saved by the forward (input dtype)
    SAVED_FAKE,  # [n_fake]
    GRAD_OUT_REAL,  # gradient of the loss (stride 0: the reduced loss's) or of the real terms (reduction "none")
    GRAD_OUT_FAKE,  # the same for the fake segment
    GRAD_REAL,  # [n_real] output: gradient w.r.t. the real logits (input dtype)
    GRAD_FAKE,  # [n_fake] output
    n_real,  # elements of the real segment (0: no gradient wanted)
    n_fake,  # elements of the fake segment (0: no gradient wanted)
    stride_grad_out_real,  # element stride of GRAD_OUT_REAL (0 for a reduced loss)
    stride_grad_out_fake,
    weight_real: "fp64",  # 1 / n_real for a mean, else 1
    weight_fake: "fp64",
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK: tl.constexpr,  # elements of each segment per program
):
    """GRAD = SAVED * GRAD_OUT * weight, for both segments in one launch."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _scale_segment(SAVED_REAL, GRAD_OUT_REAL, GRAD_REAL, offsets, n_real, stride_grad_out_real,
                   tl.full([], weight_real, COMPUTE), COMPUTE)
    _scale_segment(SAVED_FAKE, GRAD_OUT_FAKE, GRAD_FAKE, offsets, n_fake, stride_grad_out_fake,
                   tl.full([], weight_fake, COMPUTE), COMPUTE)


# ---------------------------------------------------------------------------------------------- gradient penalty
R1 = tl.constexpr(0)
WGAN_GP = tl.constexpr(1)


@triton.jit
def gan_gradient_penalty_sum_squares_kernel(
    G,  # [B, N] gradient of D w.r.t. its input, per sample flattened (any strides)
    PARTIAL,  # [B, SPLIT] output (COMPUTE): sum of g^2 over this program's share of each row
    n_rows,  # batch size B
    n_cols,  # elements per sample N
    cols_per_program,  # columns each program along axis 1 covers (a multiple of BLOCK_N)
    stride_g_b, stride_g_n,  # strides of G
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_B: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # columns per loop step
):
    """PARTIAL[b, split] = sum of g[b, n]^2 over this program's columns."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < n_rows
    col_start = tl.program_id(1).to(tl.int64) * cols_per_program
    col_end = tl.minimum(col_start + cols_per_program, n_cols)
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=COMPUTE)
    for start in range(col_start, col_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (cols < col_end)[None, :]
        g = tl.load(G + rows[:, None] * stride_g_b + cols[None, :] * stride_g_n, mask=mask, other=0.0).to(COMPUTE)
        acc += g * g
    n_split = tl.num_programs(1)
    tl.store(PARTIAL + rows * n_split + tl.program_id(1), tl.sum(acc, axis=1), mask=row_mask)


@triton.jit(do_not_specialize=["n_split", "kind"])
def gan_gradient_penalty_finish_kernel(
    PARTIAL,  # [B, n_split] row sums of g^2 (COMPUTE); not read when n_split = 0 (empty rows)
    PENALTY,  # [B] output (COMPUTE): per-sample penalty
    COEF,  # [B] output (COMPUTE): c_b with d penalty_b / d g_b = c_b * g_b
    LOSS,  # [1] output (COMPUTE): weight * sum of the penalties
    n_rows,  # batch size B
    n_split,  # partial sums per row
    kind,  # R1 or WGAN_GP
    gamma: "fp64",  # penalty weight
    weight: "fp64",  # 1 / B for a mean (nan for B = 0), 1 for a sum
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_B: tl.constexpr,  # rows per loop step
):
    """One program: R1 gamma / 2 * ||g_b||^2 (c_b = gamma) or WGAN-GP gamma * (||g_b|| - 1)^2
    (c_b = 2 gamma (||g_b|| - 1) / ||g_b||, 0 at ||g_b|| = 0), and their weighted sum."""
    gamma_c = tl.full([], gamma, COMPUTE)
    total = tl.zeros([BLOCK_B], dtype=COMPUTE)
    for row_start in range(0, n_rows, BLOCK_B):
        rows = row_start + tl.arange(0, BLOCK_B).to(tl.int64)
        row_mask = rows < n_rows
        squares = tl.zeros([BLOCK_B], dtype=COMPUTE)
        for s in range(0, n_split):
            squares += tl.load(PARTIAL + rows * n_split + s, mask=row_mask, other=0.0)
        if kind == R1:
            penalty = 0.5 * gamma_c * squares
            coef = tl.zeros([BLOCK_B], dtype=COMPUTE) + gamma_c
        else:
            norm = tl.sqrt(squares)
            excess = norm - 1.0
            penalty = gamma_c * excess * excess
            # 0 at norm = 0 (as torch's norm); a nan row (nan or inf entries) keeps a nan coefficient: nan out
            nonzero = norm != 0.0
            coef = tl.where(nonzero, 2.0 * gamma_c * excess / tl.where(nonzero, norm, 1.0), 0.0)
        tl.store(PENALTY + rows, penalty, mask=row_mask)
        tl.store(COEF + rows, coef, mask=row_mask)
        total += tl.where(row_mask, penalty, 0.0)
    tl.store(LOSS, tl.full([], weight, COMPUTE) * tl.sum(total, axis=0))


@triton.jit
def gan_gradient_penalty_backward_kernel(
    G,  # [B, N] gradient of D w.r.t. its input (the forward's input, any strides)
    COEF,  # [B] c_b from the forward (COMPUTE)
    GRAD_OUT,  # [B] gradient of the per-sample penalties, or of the reduced loss with stride 0
    GRAD_G,  # [B, N] output, contiguous (input dtype)
    n_rows,  # batch size B
    n_cols,  # elements per sample N
    stride_g_b, stride_g_n,  # strides of G
    stride_grad_out,  # stride of GRAD_OUT (0 for a reduced loss)
    weight: "fp64",  # 1 / B for a mean, 1 otherwise
    COMPUTE: tl.constexpr,  # arithmetic dtype
    BLOCK_B: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # columns per program
):
    """GRAD_G[b, n] = c_b * grad_out_b * weight * g[b, n]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    coef = tl.load(COEF + rows, mask=row_mask, other=0.0).to(COMPUTE)
    grad_out = tl.load(GRAD_OUT + rows * stride_grad_out, mask=row_mask, other=0.0).to(COMPUTE)
    scale = coef * grad_out * tl.full([], weight, COMPUTE)
    g = tl.load(G + rows[:, None] * stride_g_b + cols[None, :] * stride_g_n, mask=mask, other=0.0).to(COMPUTE)
    tl.store(GRAD_G + rows[:, None] * n_cols + cols[None, :], (scale[:, None] * g).to(GRAD_G.dtype.element_ty),
             mask=mask)
