"""The Row LSTM recurrence of PixelRNN (van den Oord et al. 2016, section 3.1) as eager PyTorch writes it: a
Python loop over the rows.

The input-to-state part (a 1 x k masked convolution along the row) is computed for all rows at once before the
loop and arrives here as ``gates_in``; each row then adds the state-to-state part, a 1 x k convolution over the
previous row's hidden state, and applies the LSTM cell:

    z_i = gates_in[:, :, i] + conv1d(h_{i-1}, weight)       [o, f, i, g] = [sigma, sigma, sigma, tanh](z_i)
    c_i = f * c_{i-1} + i * g                                h_i = o * tanh(c_i)         (h_{-1} = c_{-1} = 0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GATES = ("o", "f", "i", "g")  # the paper's order of the four gates in each channel group


def split_gates(z: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, ...]:
    """z [B, 4n, ...] -> (o, f, i, g), each [B, n, ...]. The 4n channels form ``groups`` groups of 4m (m = n /
    groups), each holding the four gates of its m hidden units in the order o, f, i, g: gate q of hidden unit
    c = g * m + j is channel g * 4m + q * m + j (with one group: ``z.chunk(4, 1)``)."""
    m = z.shape[1] // (4 * groups)
    parts = z.unflatten(1, (groups, 4, m)).unbind(2)
    return tuple(p.flatten(1, 2) for p in parts)


def lstm_cell(z: torch.Tensor, c_prev: torch.Tensor | None, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c) of one step from the pre-activations z [B, 4n, ...] and the previous cell state (None: zeros)."""
    o, f, i, g = split_gates(z, groups)
    c = torch.sigmoid(i) * torch.tanh(g)
    if c_prev is not None:
        c = torch.sigmoid(f) * c_prev + c
    return torch.sigmoid(o) * torch.tanh(c), c


def row_lstm(gates_in: torch.Tensor, weight: torch.Tensor, *, groups: int = 1) -> torch.Tensor:
    """Hidden states [B, n, H, W] of the Row LSTM over the rows of ``gates_in``.

    Args:
        gates_in: [B, 4n, H, W], the input-to-state pre-activations of every row (bias included), gate channels
            laid out as :func:`split_gates` says.
        weight: [4n, n, 1, k] (k odd), the state-to-state convolution over the previous row's hidden state
            (centred: column x reads columns x - k//2 .. x + k//2 of row i - 1, zero padded).
        groups: the channel groups of the gate layout (3 for RGB PixelRNN).
    """
    height, width = gates_in.shape[2:]
    n = weight.shape[1]
    if height == 0 or width == 0 or n == 0:  # an empty h that autograd connects to gates_in
        return gates_in[:, :n].clone()
    k = weight.shape[-1]
    w1d = weight[:, :, 0]  # [4n, n, k]
    h = c = None
    rows = []
    for row in range(height):
        z = gates_in[:, :, row]
        if h is not None:
            z = z + F.conv1d(h, w1d, padding=k // 2)
        h, c = lstm_cell(z, c, groups)
        rows.append(h)
    return torch.stack(rows, 2)
