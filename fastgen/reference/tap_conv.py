"""PixelCNN convolutions as every public implementation writes them: ``F.conv2d(x, weight * mask)``, with the
mask of a :class:`fastgen.taps.TapSet`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.taps import TapSet, masked


def tap_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, taps: TapSet,
               mask: torch.Tensor | None = None, *, relu_input: bool = False) -> torch.Tensor:
    """``F.conv2d`` of the zero-padded input with the masked weight (``mask`` from ``taps`` when not given);
    of ``F.relu(x)`` with ``relu_input``.

    The masked weight is ``torch.where(mask != 0, weight, 0)``, ``weight * mask`` for finite weights: a nan or
    inf in a masked-out tap is dropped, not turned into nan (0 * nan), as the kernels never read those taps.
    Its gradient is ``weight * mask``'s: 0 at the masked taps.
    """
    if mask is None:
        mask = taps.mask(weight.shape[0], weight.shape[1], weight.dtype, weight.device)
    if relu_input:
        x = F.relu(x)
    masked_weight = torch.where(mask != 0, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    left, right, top, bottom = taps.pads()
    if left == right and top == bottom:
        return F.conv2d(x, masked_weight, bias, padding=(top, left))
    return F.conv2d(F.pad(x, (left, right, top, bottom)), masked_weight, bias)


def masked_conv2d(x, weight, bias=None, mask_type="B", data_channels=1, mask=None, *, relu_input=False):
    """``F.conv2d(x, weight * mask, bias, padding=k // 2)``: the PixelCNN masked convolution (of ``F.relu(x)``
    with ``relu_input``)."""
    return tap_conv2d(x, weight, bias, masked(weight.shape[-1], mask_type, data_channels), mask,
                      relu_input=relu_input)
