"""The dtypes of fastgen's ops: what they take, and what they compute and reduce in.

Every op takes float16, bfloat16, float32 and float64 tensors, computes in float32 (float64 for float64 inputs:
the reference precision) and returns its losses and KLs in that dtype.
"""

from __future__ import annotations

import torch
import triton.language as tl

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic, accumulation and loss dtype for inputs of ``dtype``: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_compute_dtype(dtype: torch.dtype):
    """:func:`compute_dtype` as a Triton dtype (a kernel's COMPUTE/ACC constexpr)."""
    return tl.float64 if dtype == torch.float64 else tl.float32
