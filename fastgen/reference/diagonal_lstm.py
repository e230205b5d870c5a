"""The Diagonal (Bi)LSTM of PixelRNN (van den Oord et al. 2016, section 3.2) as eager PyTorch writes it: skew the
map, run a column LSTM over the skewed columns in a Python loop, unskew.

Skewing shifts row i right by i, so that every diagonal of the image becomes a column of a [H, W + H - 1] map;
the state-to-state part is then a 2 x 1 convolution down each column (skewed row i reads rows i - 1 and i of the
previous column), which in image coordinates reads the states of the pixel above and of the pixel to the left:

    z[r, c] = gates_in[r, c] + W_above h[r - 1, c] + W_left h[r, c - 1]     (zero outside the image)
    [o, f, i, g] = [sigma, sigma, sigma, tanh](z),  c = f c_{left} ... as the Row LSTM's cell (lstm_cell)

The cell carried along the skewed columns is the left neighbour's. The fused op (:func:`fastgen.diagonal_lstm`)
runs the same recurrence on the Row LSTM's kernels, transposed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.reference.row_lstm import lstm_cell


def skew(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H, W + H - 1]: row i shifted right by i, zeros elsewhere."""
    batch, channels, height, width = x.shape
    out = x.new_zeros((batch, channels, height, width + height - 1))
    for i in range(height):
        out[:, :, i, i:i + width] = x[:, :, i]
    return out


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """The inverse of :func:`skew`: [B, C, H, W + H - 1] -> [B, C, H, W]."""
    return torch.stack([x[:, :, i, i:i + width] for i in range(x.shape[2])], 2)


def diagonal_lstm(gates_in: torch.Tensor, weight: torch.Tensor, *, groups: int = 1) -> torch.Tensor:
    """Hidden states [B, n, H, W] of the left-to-right diagonal LSTM.

    Args:
        gates_in: [B, 4n, H, W], the input-to-state pre-activations (bias included), the gate layout of
            :func:`fastgen.reference.row_lstm.split_gates`.
        weight: [4n, n, 2, 1], the 2 x 1 state-to-state convolution down a skewed column: tap 0 reads the row
            above (the pixel above in the image), tap 1 the same row (the pixel to the left).
        groups: channel groups of the gate layout (3 for RGB).
    """
    batch, _, height, width = gates_in.shape
    n = weight.shape[1]
    if height == 0 or width == 0 or n == 0 or batch == 0:  # an empty h that autograd connects to gates_in
        return gates_in[:, :n].clone()
    skewed = skew(gates_in)  # [B, 4n, H, W + H - 1]
    w1d = weight[:, :, :, 0]  # [4n, n, 2]
    h = c = None
    columns = []
    for col in range(skewed.shape[3]):
        z = skewed[:, :, :, col]  # [B, 4n, H]
        if h is not None:
            z = z + F.conv1d(F.pad(h, (1, 0)), w1d)  # out[i] = W_0 h[i - 1] + W_1 h[i]
        h, c = lstm_cell(z, c, groups)
        columns.append(h)
    return unskew(torch.stack(columns, 3), width)


def diagonal_bilstm(gates_left: torch.Tensor, gates_right: torch.Tensor, weight_left: torch.Tensor,
                    weight_right: torch.Tensor, *, groups: int = 1) -> torch.Tensor:
    """Both directions of the Diagonal BiLSTM, summed: [B, n, H, W].

    The left-to-right LSTM runs on ``gates_left``; the right-to-left one is the same LSTM on the mirrored map
    (``gates_right`` flipped along W, its output flipped back), so that pixel (r, c) reads the pixels to its
    right; its output is then shifted down one row (row r gets row r - 1's state, row 0 zeros), so that no
    output sees the current row's future.
    """
    left = diagonal_lstm(gates_left, weight_left, groups=groups)
    right = diagonal_lstm(gates_right.flip(3), weight_right, groups=groups).flip(3)
    right = F.pad(right, (0, 0, 1, 0))[:, :, :-1]
    return left + right
