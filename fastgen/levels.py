"""Pixel levels: how PixelCNN outputs and targets are laid out, and the bins of pixels scaled to [-1, 1].

Shared by the pixel-loss ops and their reference (openai/pixel-cnn's conventions).
"""

from __future__ import annotations

import torch

EDGE = 0.999  # openai: x < -0.999 is pixel 0, x > 0.999 pixel 255


def logits_as_5d(logits: torch.Tensor, channels: int, levels: int | None = None) -> torch.Tensor:
    """[B, levels, C, H, W] view of PixelCNN logits: 5-D logits as they are; 4-D [B, C * levels, H, W] logits
    are C groups of ``levels`` channels, R's first (the channel groups of a masked convolution's output)."""
    if logits.dim() == 5:
        return logits
    levels = levels or logits.shape[1] // max(channels, 1)
    return logits.unflatten(1, (channels, levels)).transpose(1, 2)


def bin_half_width(levels: int) -> float:
    """Half the width of a bin of x in [-1, 1] with ``levels`` values: 1/255 at 256 levels (8 bits)."""
    return 1.0 / (levels - 1)


def edge_threshold(levels: int) -> float:
    """|x| above it is an edge bin (pixel 0 or the top value): 0.999 up to 1024 levels (openai), halfway
    between the edge value and its neighbour beyond."""
    return max(EDGE, 1.0 - bin_half_width(levels))
