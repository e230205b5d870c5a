"""Reductions over the batch or the elements, the values of every op's ``reduction`` argument."""

from __future__ import annotations

import torch

REDUCTIONS = ("none", "sum", "mean")


def reduce_batch(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample values [B] -> "none" [B], "sum" or "mean" (a scalar; the mean of an empty batch is nan)."""
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    return values
