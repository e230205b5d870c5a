"""PixelCNN convolutions as every public implementation writes them: ``F.conv2d(x, weight * mask)``, with the
mask of a :class:`fastgen.taps.TapSet`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.reference.gated_activation import gated_activation
from fastgen.taps import TapSet, masked


def tap_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, taps: TapSet,
               mask: torch.Tensor | None = None, *, input_activation: str | None = None) -> torch.Tensor:
    """``F.conv2d`` of the zero-padded input with the masked weight (``mask`` from ``taps`` when not given);
    of ``F.relu(x)`` with ``input_activation="relu"``, of ``F.elu(torch.cat([x, -x], 1))`` with
    ``"concat_elu"``.

    The masked weight is ``torch.where(mask != 0, weight, 0)``, ``weight * mask`` for finite weights: a nan or
    inf in a masked-out tap is dropped, not turned into nan (0 * nan), as the kernels never read those taps.
    Its gradient is ``weight * mask``'s: 0 at the masked taps.
    """
    if mask is None:
        mask = taps.mask(weight.shape[0], weight.shape[1], weight.dtype, weight.device)
    if input_activation == "relu":
        x = F.relu(x)
    elif input_activation == "concat_elu":
        x = F.elu(torch.cat([x, -x], 1))
    elif input_activation is not None:
        raise ValueError(f"input_activation must be None, 'relu' or 'concat_elu', got {input_activation!r}")
    masked_weight = torch.where(mask != 0, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    left, right, top, bottom = taps.pads()
    if left == right and top == bottom:
        return F.conv2d(x, masked_weight, bias, padding=(top, left))
    return F.conv2d(F.pad(x, (left, right, top, bottom)), masked_weight, bias)


def masked_conv2d(x, weight, bias=None, mask_type="B", data_channels=1, mask=None, *, input_activation=None):
    """``F.conv2d(x, weight * mask, bias, padding=k // 2)``: the PixelCNN masked convolution (of ``F.relu(x)``
    or concat_elu(x) with ``input_activation``, see :func:`tap_conv2d`)."""
    return tap_conv2d(x, weight, bias, masked(weight.shape[-1], mask_type, data_channels), mask,
                      input_activation=input_activation)


def tap_conv2d_gated_residual(x, weight, bias, taps: TapSet, residual, mask=None, *, input_activation=None,
                              sample_bias=None):
    """``residual + a * torch.sigmoid(b)``, ``a, b = (tap_conv2d(x, weight, bias, taps, mask,
    input_activation=input_activation) + sample_bias[:, :, None, None]).chunk(2, 1)``: PixelCNN++'s gated
    residual, as openai's gated_resnet (``sample_bias`` [B, C_out], e.g. its class embedding, or None)."""
    return gated_residual(tap_conv2d(x, weight, bias, taps, mask, input_activation=input_activation), residual,
                          sample_bias)


def gated_residual(c, residual, sample_bias=None):
    """``residual + a * torch.sigmoid(b)``, ``a, b = (c + sample_bias[:, :, None, None]).chunk(2, 1)``: the gate
    ending PixelCNN++'s gated resnet, of its convolution c [B, 2F, H, W] (``sample_bias`` [B, 2F] or None)."""
    if sample_bias is not None:
        c = c + sample_bias[:, :, None, None]
    value, gate = c.chunk(2, 1)
    return residual + value * torch.sigmoid(gate)


def tap_conv2d_gated(x, weight, bias, taps: TapSet, mask=None, *, other=None, sample_bias=None, groups=1,
                     return_conv=False):
    """``gated_activation(t, other, sample_bias, groups=groups)`` (tanh(a) * sigmoid(b) of t + other +
    sample_bias, see :func:`fastgen.reference.gated_activation`) of ``t = tap_conv2d(x, weight, bias, taps,
    mask)``: the Gated PixelCNN's stack convolution and gate; with ``return_conv`` also t."""
    t = tap_conv2d(x, weight, bias, taps, mask)
    y = gated_activation(t, other, sample_bias, groups=groups)
    return (y, t) if return_conv else y
