"""PixelCNN++'s resampling convolutions: strided down-shifted / down-right-shifted convolutions (down-sampling)
and their transposed counterparts (up-sampling), on the stride-1 tap-set op :func:`fastgen.tap_conv2d`.

openai/pixel-cnn (``pixel_cnn_pp/nn.py``) defines them as, with s the stride (2 in the model) and a kh x kw kernel
(c0 = (kw-1)//2 for the down-shifted pair, 0 for the down-right-shifted pair):

    strided:     conv2d(pad(x, top=kh-1, left=c0, right=kw-1-c0), W, stride=s)     [B, C_out, ceil(H/s), ceil(W/s)]
    transposed:  conv_transpose2d(x, W, stride=s) to H*s + kh - 1 rows, W*s + kw - 1 columns (TF's VALID; torch's
                 output_padding=s-1), then rows [0, H*s) and columns [c0, c0 + W*s)          [B, C_out, H*s, W*s]

Both are computed here as a stride-1 tap-set convolution between a pixel (un)shuffle, so no strided or
transposed kernel is needed and nothing is cropped after the kernel (except the strided form's last row /
column when the padded input overhangs the image):

* strided = ``tap_conv2d(pixel_unshuffle(x, s), W_phase)``: the input's s x s phases become s*s channel blocks
  (channel ``c * s*s + p*s + q`` holds x[c, s*a + p, s*b + q]); each original tap (i, j) reads phase
  ((i - top) mod s, (j - c0) mod s) at the coarse offset (floor((i - top)/s), floor((j - c0)/s)).
* transposed = ``pixel_shuffle(tap_conv2d(x, W_phase), s)``: output phase (p, q) of coarse pixel (a, b) is
  out[s*a + p, s*b + q]; it receives original tap (i, j) from coarse input (a + (p - i)/s, b + (q + c0 - j)/s)
  where both are integers (the sub-pixel form of a transposed convolution).

``W_phase`` is the module's weight gathered into the phases (a differentiable index of the small weight tensor;
a (phase, tap) pair that no original tap reaches is a zero, and gets no gradient). The coarse tap window is
the bounding box of the reached offsets, every tap live: for the model's 2x3 / 2x2 kernels at stride 2 the
strided convolutions read a 2x2 window of 4*C_in channels (6 resp. 4 of its 16 (tap, phase) blocks nonzero),
the transposed ones a 1x2 (down-shifted: 6 of 8 blocks nonzero) resp. 1x1 window (4 of 4) producing 4*C_out
channels. The strided form thus multiplies 16/6 (2x3) resp. 4 (2x2) times the multiply-adds of a direct
stride-2 convolution; unmeasured on a GPU against one. Parameters, initialization and ``state_dict`` are their
torch twins' (``nn.Conv2d`` with ``stride``, ``nn.ConvTranspose2d`` with ``stride`` and
``output_padding=stride-1``, as pclucas14/pixel-cnn-pp builds them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.nn import masks
from fastgen.nn.tap_conv import _pair
from fastgen.ops.tap_conv import tap_conv2d
from fastgen.validation import check_int


def _phase_map(cells: list[tuple[int, int, int, int, int]], stride: int, n_taps: int):
    """(phase, coarse row offset, coarse column offset, raster index of the original tap) entries -> the coarse
    TapSet (the bounding box of the offsets and of (0, 0), every tap live) and the index [s*s, kh', kw'] of
    each (phase, coarse tap)'s original tap (``n_taps``, the appended zero, where none reaches it)."""
    rows = [r for _, r, _, _ in cells] + [0]
    cols = [c for _, _, c, _ in cells] + [0]
    r0, c0 = min(rows), min(cols)
    kh, kw = max(rows) - r0 + 1, max(cols) - c0 + 1
    index = torch.full((stride * stride, kh, kw), n_taps, dtype=torch.long)
    for phase, r, c, tap in cells:
        index[phase, r - r0, c - c0] = tap
    return masks.TapSet((kh, kw), (-r0, -c0), kh * kw), index


def strided_phase_map(kernel_size: tuple[int, int], padding: tuple[int, int], stride: int):
    """The coarse tap set and phase index of a stride-``stride`` convolution with causal ``padding`` (top, left)
    on the space-to-depth input (see the module doc)."""
    (kh, kw), (top, left), s = kernel_size, padding, stride
    cells = [(((i - top) % s) * s + (j - left) % s, (i - top) // s, (j - left) // s, i * kw + j)
             for i in range(kh) for j in range(kw)]
    return _phase_map(cells, s, kh * kw)


def transposed_phase_map(kernel_size: tuple[int, int], col_crop: int, stride: int):
    """The coarse tap set and phase index of a stride-``stride`` transposed convolution whose output columns are
    cropped from ``col_crop`` on (rows from 0), in the sub-pixel form (see the module doc)."""
    (kh, kw), s = kernel_size, stride
    cells = [(p * s + q, (p - i) // s, (q + col_crop - j) // s, i * kw + j)
             for p in range(s) for q in range(s) for i in range(kh) for j in range(kw)
             if (p - i) % s == 0 and (q + col_crop - j) % s == 0]
    return _phase_map(cells, s, kh * kw)


def _gather_taps(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """weight [A, B, kh, kw] -> [A, B, s*s, kh', kw']: entry (phase, tap) of ``index`` picks an original tap, or
    zero for the index kh*kw."""
    flat = weight.flatten(2)
    flat = torch.cat([flat, flat.new_zeros(flat.shape[:2] + (1,))], 2)
    return flat[:, :, index.to(weight.device)]


class StridedShiftedConv2d(nn.Conv2d):
    """A strided causal convolution: ``conv2d(F.pad(x, (left, kw-1-left, kh-1, 0)), weight, stride=s)`` computed
    as a stride-1 tap-set convolution of the space-to-depth input (see the module doc)."""

    def __init__(self, in_channels: int, out_channels: int, taps: masks.TapSet, stride: int, bias: bool,
                 device, dtype):
        stride = check_int("stride", stride, low=1)
        super().__init__(in_channels, out_channels, taps.kernel_size, stride=stride, bias=bias, device=device,
                         dtype=dtype)
        self.shift_taps = taps
        self.phase_taps, index = strided_phase_map(taps.kernel_size, taps.padding, stride)
        self.register_buffer("phase_index", index, persistent=False)

    def phase_weight(self) -> torch.Tensor:
        """The weight of the stride-1 convolution over the s*s phases: [C_out, C_in * s*s, kh', kw']."""
        w = _gather_taps(self.weight, self.phase_index)  # [C_out, C_in, s*s, kh', kw']
        return w.flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x must have shape [B, C, H, W], got {tuple(x.shape)}")
        s = self.stride[0]
        (_, kw), (_, left) = self.kernel_size, self.shift_taps.padding
        height, width = x.shape[2:]
        out_h, out_w = -(-height // s), -(-width // s)
        # the padded input covers every pixel a tap reads (openai's right zero padding included)
        pad_w = s * -(-max(width, s * (out_w - 1) + kw - left) // s)
        x = F.pad(x, (0, pad_w - width, 0, s * out_h - height))
        out = tap_conv2d(F.pixel_unshuffle(x, s), self.phase_weight(), self.bias, self.phase_taps)
        return out if out.shape[3] == out_w else out[:, :, :, :out_w]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride[0]}, "
                f"causal_padding={self.shift_taps.padding}, bias={self.bias is not None}")


class StridedDownShiftedConv2d(StridedShiftedConv2d):
    """openai/pixel-cnn's ``down_shifted_conv2d`` with ``stride`` (default 2x3, stride 2: the down-sampling of the
    up stream u): ``conv2d(F.pad(x, ((kw-1)//2, kw-1-(kw-1)//2, kh-1, 0)), weight, stride=stride)``, output
    [B, C_out, ceil(H/stride), ceil(W/stride)]. Output (a, b) sees input rows <= stride*a."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 3), stride: int = 2, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, masks.down_shifted(_pair(kernel_size)), stride, bias, device,
                         dtype)


class StridedDownRightShiftedConv2d(StridedShiftedConv2d):
    """openai/pixel-cnn's ``down_right_shifted_conv2d`` with ``stride`` (default 2x2, stride 2: the down-sampling
    of the up-left stream ul): ``conv2d(F.pad(x, (kw-1, 0, kh-1, 0)), weight, stride=stride)``, output
    [B, C_out, ceil(H/stride), ceil(W/stride)]. Output (a, b) sees input rows <= stride*a, columns <= stride*b."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 2), stride: int = 2, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, masks.down_right_shifted(_pair(kernel_size)), stride, bias,
                         device, dtype)


class ShiftedConvTranspose2d(nn.ConvTranspose2d):
    """A transposed causal convolution: ``conv_transpose2d(x, weight, stride=s, output_padding=s-1)`` cropped to
    rows [0, H*s), columns [col_crop, col_crop + W*s), computed in the sub-pixel form (see the module doc)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, col_crop: int, stride: int, bias: bool,
                 device, dtype):
        stride = check_int("stride", stride, low=1)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, output_padding=stride - 1,
                         bias=bias, device=device, dtype=dtype)
        self.col_crop = col_crop
        self.phase_taps, index = transposed_phase_map(self.kernel_size, col_crop, stride)
        self.register_buffer("phase_index", index, persistent=False)

    def phase_weight(self) -> torch.Tensor:
        """The weight of the stride-1 convolution producing the s*s output phases: [C_out * s*s, C_in, kh', kw']
        (output channel c * s*s + p*s + q is channel c at phase (p, q), pixel_shuffle's order)."""
        w = _gather_taps(self.weight, self.phase_index)  # [C_in, C_out, s*s, kh', kw']
        return w.permute(1, 2, 0, 3, 4).flatten(0, 1)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None:
            raise ValueError("output_size is not supported: the output is [B, C_out, H*stride, W*stride]")
        if x.dim() != 4:
            raise ValueError(f"x must have shape [B, C, H, W], got {tuple(x.shape)}")
        s = self.stride[0]
        bias = None if self.bias is None else self.bias.repeat_interleave(s * s)
        return F.pixel_shuffle(tap_conv2d(x, self.phase_weight(), bias, self.phase_taps), s)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride[0]}, "
                f"col_crop={self.col_crop}, bias={self.bias is not None}")


class DownShiftedConvTranspose2d(ShiftedConvTranspose2d):
    """openai/pixel-cnn's ``down_shifted_deconv2d`` (default 2x3, stride 2: the up-sampling of the down-pass
    stream u): ``conv_transpose2d(x, weight, stride=stride, output_padding=stride-1)`` cropped to rows
    [0, H*stride) and columns [(kw-1)//2, (kw-1)//2 + W*stride). Output row r sees input rows <= r // stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 3), stride: int = 2, bias: bool = True,
                 device=None, dtype=None):
        kernel_size = _pair(kernel_size)
        super().__init__(in_channels, out_channels, kernel_size, (kernel_size[1] - 1) // 2, stride, bias, device,
                         dtype)


class DownRightShiftedConvTranspose2d(ShiftedConvTranspose2d):
    """openai/pixel-cnn's ``down_right_shifted_deconv2d`` (default 2x2, stride 2: the up-sampling of the down-pass
    stream ul): ``conv_transpose2d(x, weight, stride=stride, output_padding=stride-1)`` cropped to rows
    [0, H*stride) and columns [0, W*stride). Output (r, c) sees input rows <= r // stride, columns
    <= c // stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 2), stride: int = 2, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, _pair(kernel_size), 0, stride, bias, device, dtype)

