"""PixelCNN++-lite (Salimans et al. 2017): openai/pixel-cnn's two shifted streams at one resolution, DMOL output.

    x_pad = concat(x, ones)                                     [B, C + 1, H, W] (ones tell image from padding)
    u  = down_shift(down_shifted 2x3 (x_pad))                   [B, F, H, W]  u(y, x): rows < y
    ul = down_shift(down_shifted 1x3 (x_pad)) + right_shift(down_right_shifted 2x1 (x_pad))
                                                                ul(y, x): rows < y, and row y left of x
    n_layers times:  u  = gated_resnet(u, conv=down_shifted 2x3)
                     ul = gated_resnet(ul, a=u, conv=down_right_shifted 2x2)
    out = 1x1(elu(ul))                                          [B, n_params, H, W]

    gated_resnet(x, a): c = conv(concat_elu(x)) [+ 1x1(concat_elu(a))]; c = conv'(dropout(concat_elu(c)))
                        [+ class embedding]; a, b = c.chunk(2); return x + a * sigmoid(b)

The output at pixel p depends on the pixels before p only (every channel of p is left out: the DMOL couples
the channels of p through its coefficients). Its channels are the DMOL parameters in openai/pixel-cnn's
order, with K = n_mixtures:

* RGB (10K): [K mixture logits | for c in R, G, B: K means, K log-scales, K coefficients] (the coefficients
  of channel c: c=0 -> (G on R), c=1 -> (B on R), c=2 -> (B on G), used through tanh);
* grey (3K): [K mixture logits | K means | K log-scales].

Left out of the paper's model: the two down-sampling and up-sampling stages and the up/down-pass skip
connections (``n_layers`` blocks at full resolution instead), weight normalization with data-dependent init
(plain init; the second convolution of each block starts at 0.1 scale, as openai's ``init_scale=0.1``), and
Polyak averaging. Dropout is there (``dropout``, default 0, openai's 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.base import (IncrementalSampler, Linear1x1, PixelModel, bias_of, check_positive_int, conv1x1,
                                 embedding_of, masked_weight)
from fastgen.nn import DownRightShiftedConv2d, DownShiftedConv2d, TapConv2d
from fastgen.ops import pixel_step
from fastgen.ops.tap_conv import tap_conv2d_gated_residual


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """elu(concat(x, -x)) over the channels: [B, C, H, W] -> [B, 2C, H, W]."""
    return F.elu(torch.cat([x, -x], 1))


def conv_concat_elu(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(concat_elu(x))``; fused when ``conv`` is a :class:`fastgen.nn.TapConv2d` without channel groups
    (``input_activation="concat_elu"``: the kernels read x and apply elu(+-x) to their tiles, so the
    [B, 2C, H, W] concat_elu(x) is neither written nor kept for the backward), else as written."""
    if _fusable(conv):
        return conv(x, input_activation="concat_elu")
    return conv(concat_elu(x))


def _fusable(conv: nn.Module) -> bool:
    """Whether ``conv`` runs on fastgen's tap-set kernels with concat_elu fused: a TapConv2d without channel
    groups."""
    return isinstance(conv, TapConv2d) and conv.taps.groups == 1


def gated_residual_concat_elu(conv: nn.Module, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x + a * sigmoid(b)``, ``a, b = conv(concat_elu(c)).chunk(2, 1)``; with a fusable ``conv`` (see
    :func:`conv_concat_elu`) one launch: concat_elu on the loaded tiles, the gate and the residual add in the
    epilogue (:func:`fastgen.ops.tap_conv.tap_conv2d_gated_residual`), else as written."""
    if _fusable(conv):
        return tap_conv2d_gated_residual(c, conv.weight, conv.bias, conv.taps, x, input_activation="concat_elu")
    value, gate = conv(concat_elu(c)).chunk(2, 1)
    return x + value * torch.sigmoid(gate)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Moves x [B, C, H, W] one row down (row 0 becomes zeros, the last row is dropped)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Moves x [B, C, H, W] one column right (column 0 becomes zeros, the last column is dropped)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def dmol_channels(n_mixtures: int, data_channels: int) -> int:
    """Channels of the DMOL parameters: 10K for RGB, 3K for grey."""
    return n_mixtures * (10 if data_channels == 3 else 3)


class GatedResnet(nn.Module):
    """openai/pixel-cnn's ``gated_resnet`` with the concat_elu nonlinearity: x [B, F, H, W], a (the skip input,
    [B, skip_channels, H, W]) -> [B, F, H, W]. ``conv`` is the stream's shifted convolution class."""

    def __init__(self, channels: int, conv: type, skip_channels: int = 0, dropout: float = 0.0,
                 n_classes: int | None = None):
        super().__init__()
        self.conv_input = conv(2 * channels, channels)
        self.skip = conv1x1(2 * skip_channels, channels) if skip_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * channels, 2 * channels)
        with torch.no_grad():
            self.conv_out.weight.mul_(0.1)
        self.class_embedding = nn.Embedding(n_classes, 2 * channels) if n_classes is not None else None

    def forward(self, x: torch.Tensor, a: torch.Tensor | None = None, y: torch.Tensor | None = None):
        c = conv_concat_elu(self.conv_input, x)
        if self.skip is not None:
            c = c + conv_concat_elu(self.skip, a)
        dropout = self.training and self.dropout.p > 0  # dropout between concat_elu and conv_out: not fused
        if not dropout and self.class_embedding is None:  # conv_out, its gate and the residual add in one
            return gated_residual_concat_elu(self.conv_out, c, x)
        c = self.conv_out(self.dropout(concat_elu(c))) if dropout else conv_concat_elu(self.conv_out, c)
        if self.class_embedding is not None:
            c = c + self.class_embedding(y)[:, :, None, None]
        value, gate = c.chunk(2, 1)
        return x + value * torch.sigmoid(gate)


class PixelCNNpp(PixelModel):
    """PixelCNN++-lite with a discretized logistic mixture output.

    Args:
        data_channels: 1 or 3.
        levels: number of pixel values (the DMOL's bins; integer inputs are scaled with it).
        hidden_channels: F, the channels of both streams (openai's nr_filters, 160).
        n_layers: gated resnet blocks per stream (openai's nr_resnet per resolution, 5).
        n_mixtures: K, logistic mixture components (openai's nr_logistic_mix, 10).
        dropout: dropout inside the blocks (openai: 0.5).
        n_classes: class-conditional: every block adds a learnt embedding of the label before its gate.

    ``forward(x, y=None)``: x [B, C, H, W] (integer pixels or floats in [-1, 1]), y [B] -> DMOL parameters
    [B, 10K, H, W] (RGB) or [B, 3K, H, W] (grey) in openai/pixel-cnn's channel order (see the module doc).
    """

    output_kind = "dmol"

    def __init__(self, data_channels: int = 3, levels: int = 256, hidden_channels: int = 160, n_layers: int = 5,
                 n_mixtures: int = 10, dropout: float = 0.0, n_classes: int | None = None):
        super().__init__(data_channels, levels, n_classes)
        f = check_positive_int("hidden_channels", hidden_channels)
        n_layers = check_positive_int("n_layers", n_layers, 0)
        self.n_mixtures = check_positive_int("n_mixtures", n_mixtures)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.config = dict(data_channels=data_channels, levels=self.levels, hidden_channels=f, n_layers=n_layers,
                           n_mixtures=self.n_mixtures, dropout=dropout, n_classes=self.n_classes)
        c_in = data_channels + 1
        self.u_input = DownShiftedConv2d(c_in, f, (2, 3))
        self.ul_input_up = DownShiftedConv2d(c_in, f, (1, 3))
        self.ul_input_left = DownRightShiftedConv2d(c_in, f, (2, 1))
        self.u_blocks = nn.ModuleList(GatedResnet(f, DownShiftedConv2d, 0, dropout, self.n_classes)
                                      for _ in range(n_layers))
        self.ul_blocks = nn.ModuleList(GatedResnet(f, DownRightShiftedConv2d, f, dropout, self.n_classes)
                                       for _ in range(n_layers))
        self.output_conv = conv1x1(f, dmol_channels(self.n_mixtures, data_channels))

    def _forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x_pad = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        u = down_shift(self.u_input(x_pad))
        ul = down_shift(self.ul_input_up(x_pad)) + right_shift(self.ul_input_left(x_pad))
        for u_block, ul_block in zip(self.u_blocks, self.ul_blocks):
            u = u_block(u, y=y)
            ul = ul_block(ul, u, y)
        return self.output_conv(F.elu(ul))

    def incremental_sampler(self, n: int, width: int, labels: torch.Tensor | None = None,
                            temperature: float = 1.0) -> IncrementalSampler:
        """The cached per-pixel evaluation (see :class:`PixelCNNppSteps`): one fused kernel per pixel where
        fastgen's kernels run (:class:`PixelCNNppKernelSteps`), else plain PyTorch."""
        fused = self._kernel_steps() and pixel_step.supports(next(self.parameters()).dtype, n_mixtures=self.n_mixtures)
        return (PixelCNNppKernelSteps if fused else PixelCNNppSteps)(self, n, width, labels, temperature)


class PixelCNNppSteps(IncrementalSampler):
    """PixelCNN++-lite: the up stream u depends on the rows above only (computed per row); the up-left stream
    ul per pixel. Caches: the image with its ones channel (x_pad), and each block's two concat_elu inputs."""

    def __init__(self, model: PixelCNNpp, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, temperature, image_channels=model.data_channels + 1)  # x_pad
        self.channels = model.data_channels
        self.u_input, self.ul_input_up = self.window(model.u_input), self.window(model.ul_input_up)
        self.ul_input_left = self.window(model.ul_input_left)
        f = model.u_input.out_channels

        def block(b, a, c):
            return dict(conv_input=self.window(b.conv_input), conv_out=self.window(b.conv_out),
                        skip=None if b.skip is None else Linear1x1(b.skip), embedding=embedding_of(b, labels),
                        a=a, c=c)

        self.u_blocks = [block(b, self.cache(2 * f), self.cache(2 * f)) for b in model.u_blocks]
        self.a_cache, a_caches = self.stacked_caches(len(model.ul_blocks), 2 * f)
        self.c_cache, c_caches = self.stacked_caches(len(model.ul_blocks), 2 * f)
        self.ul_blocks = [block(b, a, c) for b, a, c in zip(model.ul_blocks, a_caches, c_caches)]
        self.output_conv = Linear1x1(model.output_conv)

    def _gated_row(self, block, x_row: torch.Tensor) -> torch.Tensor:
        block["a"].put_row(concat_elu(x_row))
        c = block["conv_input"].row(block["a"])
        block["c"].put_row(concat_elu(c))
        c = block["conv_out"].row(block["c"])
        if block["embedding"] is not None:
            c = c + block["embedding"][:, :, None]
        value, gate = c.chunk(2, 1)
        return x_row + value * torch.sigmoid(gate)

    def start_row(self, first: bool) -> None:
        self.advance()
        pad = self.image.pad
        self.image.data[:, self.channels, -1, pad:pad + self.width] = 1.0  # x_pad's ones channel
        if first:  # down_shift: row 0 of u and of ul's up part is zeros
            u = self.image.data.new_zeros((self.n, self.u_input.bias.shape[0], self.width))
            self.ul_up = u.transpose(1, 2)
        else:
            u = self.u_input.row(self.image, rows_back=1)
            self.ul_up = self.ul_input_up.row(self.image, rows_back=1).transpose(1, 2).contiguous()
        self.skips = []
        for block, ul_block in zip(self.u_blocks, self.ul_blocks):
            u = self._gated_row(block, u)
            self.skips.append(ul_block["skip"].row(concat_elu(u)))  # [n, W, F]

    def output(self, x: int) -> torch.Tensor:
        ul = self.ul_up[:, x]
        if x > 0:  # right_shift of the down-right-shifted 2x1 input convolution
            ul = ul + self.ul_input_left.at(self.image, x - 1)
        for block, skip in zip(self.ul_blocks, self.skips):
            block["a"].put(x, concat_elu(ul))
            c = block["conv_input"].at(block["a"], x) + skip[:, x]
            block["c"].put(x, concat_elu(c))
            c = block["conv_out"].at(block["c"], x)
            if block["embedding"] is not None:
                c += block["embedding"]
            value, gate = c.chunk(2, 1)
            ul = ul + value * torch.sigmoid(gate)
        return self.output_conv(F.elu(ul))


class PixelCNNppKernelSteps(PixelCNNppSteps):
    """:class:`PixelCNNppSteps` with one launch per pixel: :func:`fastgen.ops.pixel_step.pixelcnnpp_step` runs
    the up-left stream's input and every gated resnet block, the output layer and the DMOL draw of the pixel;
    the up stream stays per row (``start_row``)."""

    def __init__(self, model: PixelCNNpp, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, labels, temperature)
        f, blocks, like = model.config["hidden_channels"], list(model.ul_blocks), self.like
        w_left, self.left_window = pixel_step.pack_window(masked_weight(model.ul_input_left),
                                                          model.ul_input_left.taps)
        ci = [pixel_step.pack_window(masked_weight(b.conv_input), b.conv_input.taps) for b in blocks]
        co = [pixel_step.pack_window(masked_weight(b.conv_out), b.conv_out.taps)[0] for b in blocks]
        self.block_window = ci[0][1] if ci else pixel_step.WindowGeometry(0, 1, 0, 0)
        embeddings = [b["embedding"] for b in self.ul_blocks if b["embedding"] is not None]
        self.weights = dict(
            w_left=w_left, b_left=bias_of(model.ul_input_left),
            w_ci=pixel_step.stack([w for w, _ in ci], like, (f, 2 * f)),
            b_ci=pixel_step.stack([bias_of(b.conv_input) for b in blocks], like, (f,)),
            w_co=pixel_step.stack(co, like, (2 * f, 2 * f)),
            b_co=pixel_step.stack([bias_of(b.conv_out) for b in blocks], like, (2 * f,)),
            emb=pixel_step.stack(embeddings, like, ()) if embeddings else None,
            w_out=masked_weight(model.output_conv)[:, :, 0, 0].contiguous(), b_out=bias_of(model.output_conv))
        self.ul = like.new_zeros((2, n, f))
        self.params = like.new_zeros((n, model.output_conv.out_channels))
        self.ul_up_row = like.new_zeros((n, width, f))
        self.skip_row = like.new_zeros((max(len(blocks), 1), n, width, f))
        self.no_draw = (like.new_zeros((n, model.n_mixtures + model.data_channels)),
                        torch.zeros((n, model.data_channels), dtype=torch.long, device=like.device))

    def start_row(self, first: bool) -> None:
        super().start_row(first)
        self.ul_up_row.copy_(self.ul_up)
        if self.skips:
            torch.stack(self.skips, out=self.skip_row)

    def _launch(self, x: int, draw: bool, u, out) -> None:
        model = self.model
        pixel_step.pixelcnnpp_step(
            self.image.data, self.a_cache, self.c_cache, self.ul, self.params, self.ul_up_row, self.skip_row,
            self.weights, u, out, x=x, draw=draw, left_window=self.left_window, window=self.block_window,
            pad=self.pad, n_layers=len(self.ul_blocks), n_mixtures=model.n_mixtures, levels=model.levels,
            temperature=self.temperature)

    def fill(self, x: int, pixels: torch.Tensor) -> None:
        self.image.put(x, self.scaled(pixels))
        self._launch(x, False, *self.no_draw)

    def sample(self, x: int, channel: int | None, u: torch.Tensor, out: torch.Tensor) -> None:
        self._launch(x, True, u, out)
