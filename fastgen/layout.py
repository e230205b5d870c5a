"""Memory layouts: which layout an op's outputs and gradients keep."""

from __future__ import annotations

import torch


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a channels-last (and not also contiguous) 4-d tensor, else contiguous: the
    layout an op's output or gradient is allocated in for an input like ``t``."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
