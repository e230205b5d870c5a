"""PixelCNN's output head as eager PyTorch writes it: the last 1x1 convolution, then the per-sub-pixel
cross-entropy of its logits ([B, C * levels, H, W], channel c's levels at c*levels..(c+1)*levels-1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.reference.pixel_losses import pixel_cross_entropy


def conv1x1_cross_entropy(hidden, weight, bias, targets, reduction="mean"):
    """hidden [B, K, H, W], weight [C * levels, K] (or [C * levels, K, 1, 1]), bias [C * levels] or None,
    integer targets [B, C, H, W] -> the cross-entropy in nats (float32 for 16-bit inputs) of ``F.conv2d(hidden, weight, bias)`` read as C
    groups of levels channels: "mean" over the sub-pixels, "sum", or "none" [B, C, H, W]."""
    logits = F.conv2d(hidden, weight.reshape(weight.shape[0], -1, 1, 1), bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # the softmax of 16-bit logits in float32
    return pixel_cross_entropy(logits, targets, weight.shape[0] // targets.shape[1], reduction)
