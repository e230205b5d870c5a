"""Accurate elementwise helpers shared by the kernels (plain @triton.jit functions, no launch of their own)."""

import triton
import triton.language as tl


@triton.jit
def log1p(y):
    """log(1 + y) for y >= 0, accurate near 0 (Goldberg: log(u) * y / (u - 1) with u = 1 + y rounded)."""
    u = 1.0 + y
    exact = u == 1.0
    return tl.where(exact, y, tl.log(u) * (y / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def one_minus_exp_neg(d):
    """(1 - e^-d, e^-d) for d >= 0, the first accurate near 0 (Kahan: (1 - u) d / -log(u), u = e^-d rounded)."""
    u = tl.exp(-d)
    near = u > 0.5  # 1 - u is exact there (Sterbenz), the ratio restores the rounding of u
    exact = u == 1.0
    log_u = tl.log(tl.where(exact | (u <= 0.5), 0.5, u))
    kahan = tl.where(exact, d, (1.0 - u) * (d / -log_u))
    return tl.where(near, kahan, 1.0 - u), u


@triton.jit
def sigmoids(z):
    """(sigmoid(z), sigmoid(-z), log sigmoid(z)) from e^-|z|: no overflow, no cancellation."""
    e = tl.exp(-tl.abs(z))
    r = 1.0 / (1.0 + e)
    positive = z >= 0
    log_sig = tl.where(positive, 0.0, z) - log1p(e)
    return tl.where(positive, r, e * r), tl.where(positive, e * r, r), log_sig


@triton.jit
def tanh_and_slope(z):
    """(tanh(z), 1 - tanh(z)^2), accurate for small |z| and near |tanh| = 1."""
    one_minus_u, u = one_minus_exp_neg(2.0 * tl.abs(z))  # u = e^-2|z|
    t = one_minus_u / (1.0 + u)
    one_plus_u = 1.0 + u
    return tl.where(z < 0, -t, t), 4.0 * u / (one_plus_u * one_plus_u)
