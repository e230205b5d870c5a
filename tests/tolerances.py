"""Tolerances of the fastgen ops against their float64 reference, one table for every test.

Each value is compared against the reference evaluated in float64 on the same (already rounded) inputs,
so the tolerance covers the op's own rounding: float32 arithmetic, and the final rounding of outputs that
are stored in the input dtype (2-3 ulp of that dtype).
"""

import torch

TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def assert_close(actual, expected, dtype, msg=""):
    """``actual`` (any dtype) against ``expected`` (float64) within ``dtype``'s tolerance."""
    torch.testing.assert_close(actual.double(), expected.double(), **TOLERANCES[dtype], equal_nan=True,
                               msg=lambda m: f"{msg}: {m}" if msg else m)
