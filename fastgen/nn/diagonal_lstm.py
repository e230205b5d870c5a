"""PixelRNN's Diagonal BiLSTM layer (van den Oord et al. 2016, section 3.2).

    gates_l = 1x1(x), gates_r = 1x1'(x)                 masked 1x1 input-to-state convolutions (fastgen kernels)
    h = diagonal_bilstm(gates_l, gates_r, W_l, W_r)     skew, a column LSTM with a 2 x 1 state-to-state convolution
                                                        in each direction, unskew; the right-to-left output shifted
                                                        down one row (:func:`fastgen.diagonal_bilstm`)

The recurrence runs on the Row LSTM's fused kernels (:func:`fastgen.diagonal_lstm`: the skewed map transposed, one
launch per skewed column and direction, forward and backward) where fastgen's kernels run, else as the
plain-PyTorch loop over the skewed columns (:mod:`fastgen.reference.diagonal_lstm`).
"""

from __future__ import annotations

import torch
from torch import nn

from fastgen.nn.tap_conv import MaskedConv2d
from fastgen.ops.row_lstm import diagonal_bilstm
from fastgen.validation import check_int


class DiagonalBiLSTM(nn.Module):
    """x [B, in_channels, H, W] -> h [B, hidden_channels, H, W], the sum of both directions.

    Args:
        in_channels, hidden_channels: channels of the input and of each direction's hidden state (n); with
            ``data_channels=3`` both divisible by 3.
        mask_type: "A" or "B" of the 1x1 input-to-state convolutions (the current pixel's channel groups).
        data_channels: 1, or 3 for RGB channel groups.

    Parameters: ``input_to_state`` / ``input_to_state_right`` (1x1 :class:`fastgen.nn.MaskedConv2d`, in_channels
    -> 4n) and ``state_to_state`` / ``state_to_state_right`` (``nn.Conv2d(n, 4n, (2, 1), bias=False)``: tap 0
    reads the pixel above, tap 1 the previous pixel along the direction).
    """

    def __init__(self, in_channels: int, hidden_channels: int, mask_type: str = "B", data_channels: int = 1,
                 device=None, dtype=None):
        super().__init__()
        n = check_int("hidden_channels", hidden_channels, low=1)
        if n % data_channels:
            raise ValueError(f"hidden_channels ({n}) must be divisible by data_channels ({data_channels})")
        self.hidden_channels, self.mask_type, self.data_channels = n, mask_type, data_channels
        kw = dict(device=device, dtype=dtype)
        self.input_to_state = MaskedConv2d(in_channels, 4 * n, 1, mask_type, data_channels, **kw)
        self.input_to_state_right = MaskedConv2d(in_channels, 4 * n, 1, mask_type, data_channels, **kw)
        self.state_to_state = nn.Conv2d(n, 4 * n, (2, 1), bias=False, **kw)
        self.state_to_state_right = nn.Conv2d(n, 4 * n, (2, 1), bias=False, **kw)

    def forward(self, x: torch.Tensor, gate_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, in_channels, H, W], gate_bias [B, 4n] (added to both directions' gates) or None."""
        left, right = self.input_to_state(x), self.input_to_state_right(x)
        if gate_bias is not None:
            left, right = left + gate_bias[:, :, None, None], right + gate_bias[:, :, None, None]
        return diagonal_bilstm(left, right, self.state_to_state.weight, self.state_to_state_right.weight,
                               groups=self.data_channels)

    def extra_repr(self) -> str:
        return f"hidden_channels={self.hidden_channels}, mask_type={self.mask_type!r}, " \
               f"data_channels={self.data_channels}"
