"""Accurate elementwise helpers shared by the kernels (plain @triton.jit functions, no launch of their own)."""

import triton
import triton.language as tl


@triton.jit
def log1p(y):
    """log(1 + y) for y >= 0, accurate near 0 (Goldberg: log(u) * y / (u - 1) with u = 1 + y rounded)."""
    u = 1.0 + y
    exact = u == 1.0
    return tl.where(exact, y, tl.log(u) * (y / tl.where(exact, 1.0, u - 1.0)))
