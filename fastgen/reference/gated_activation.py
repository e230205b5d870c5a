"""The gated activation of the Gated PixelCNN as eager PyTorch writes it (pytorch-vqvae's ``GatedActivation``)."""

from __future__ import annotations

import torch


def gated_activation(t: torch.Tensor, other: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
                     groups: int = 1) -> torch.Tensor:
    """tanh(a) * sigmoid(b) of s = t + other + bias: t, other [B, 2n, ...] (e.g. [B, 2n, H, W], or [B, 2n]),
    bias [B, 2n] broadcast over the trailing dims -> [B, n, ...].

    s's channels form ``groups`` equal groups; a is the first half of each group, b the second half (with one
    group: ``a, b = s.chunk(2, 1)``), so output channel group g is computed from input group g alone.
    """
    s = t if other is None else t + other
    if bias is not None:
        s = s + bias.reshape(bias.shape + (1,) * (s.dim() - 2))
    half = s.shape[1] // (2 * groups)
    a, b = s.unflatten(1, (groups, 2, half)).unbind(2)
    return (torch.tanh(a) * torch.sigmoid(b)).flatten(1, 2)
