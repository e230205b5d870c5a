"""PixelRNN's Row LSTM layer (van den Oord et al. 2016, section 3.1) on fastgen's kernels.

    gates_in = input_to_state(x)      a 1 x k masked convolution along the row (columns x - k//2 .. x; mask A
                                      leaves out column x), for all rows at once, on fastgen's tap-conv kernels
    h = row_lstm(gates_in, W_ss)      row by row: + the 1 x k state-to-state convolution over row i - 1's h,
                                      the four gates, c and h: :func:`fastgen.row_lstm` (fused; per row or persistent)

Row i, column x sees the layer input at rows < i within a triangle widening by k//2 columns per row, and at row i
the columns left of x (and x itself with mask B): causal, and with ``data_channels=3`` the channel groups of the
PixelRNN paper (gate group g reads input groups < g (A) or <= g (B) at the current pixel).
"""

from __future__ import annotations

import torch
from torch import nn

from fastgen.nn.tap_conv import HorizontalStackConv2d
from fastgen.ops.row_lstm import row_lstm
from fastgen.validation import check_int


class RowLSTM(nn.Module):
    """x [B, in_channels, H, W] -> h [B, hidden_channels, H, W].

    Args:
        in_channels, hidden_channels: channels of the input and of the hidden state (n); with ``data_channels=3``
            both divisible by 3.
        kernel_size: k, odd: the input-to-state window (columns x - k//2 .. x) and the state-to-state window
            (columns x - k//2 .. x + k//2 of the row above). 3 in the paper.
        mask_type: "A" (the first layer, reading the image) or "B".
        data_channels: 1, or 3 for RGB channel groups.

    Parameters: ``input_to_state`` (a :class:`fastgen.nn.HorizontalStackConv2d`, in_channels -> 4n, with bias)
    and ``state_to_state`` (an ``nn.Conv2d(n, 4n, (1, k), bias=False)``: only its weight is used). The 4n gate
    channels form ``data_channels`` groups, each the gates o, f, i, g of its hidden units.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3, mask_type: str = "B",
                 data_channels: int = 1, device=None, dtype=None):
        super().__init__()
        n = check_int("hidden_channels", hidden_channels, low=1)
        k = check_int("kernel_size", kernel_size, low=1)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {k}")
        if n % data_channels:
            raise ValueError(f"hidden_channels ({n}) must be divisible by data_channels ({data_channels})")
        self.hidden_channels, self.kernel_size = n, k
        self.mask_type, self.data_channels = mask_type, data_channels
        self.input_to_state = HorizontalStackConv2d(in_channels, 4 * n, k, mask_type, data_channels, device=device,
                                                    dtype=dtype)
        self.state_to_state = nn.Conv2d(n, 4 * n, (1, k), padding=(0, k // 2), bias=False, device=device,
                                        dtype=dtype)

    def forward(self, x: torch.Tensor, gate_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, in_channels, H, W], gate_bias [B, 4n] (e.g. a class embedding) or None -> h [B, n, H, W]."""
        gates_in = self.input_to_state(x)
        if gate_bias is not None:
            gates_in = gates_in + gate_bias[:, :, None, None]
        return row_lstm(gates_in, self.state_to_state.weight, groups=self.data_channels)

    def extra_repr(self) -> str:
        return f"hidden_channels={self.hidden_channels}, kernel_size={self.kernel_size}, " \
               f"mask_type={self.mask_type!r}, data_channels={self.data_channels}"
