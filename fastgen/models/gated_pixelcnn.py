"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks without a blind spot, in the formulation of pytorch-vqvae's ``GatedMaskedConv2d``: the vertical
stack v sees the rows above the current pixel (a (k//2+1) x k window, mask A leaving out the current row in
the first layer, so v at row y always depends on rows < y only), the horizontal stack h sees the current row
to the left (a 1 x (k//2+1) window, mask A leaving out the current pixel in the first layer). One layer, with
n = hidden_channels:

    v_pre = vertical(v) [2n]                  v' = gate(v_pre + class embedding)
    h_pre = horizontal(h) + 1x1(v_pre) [2n]   h' = 1x1(gate(h_pre + class embedding)) (+ h from layer 2 on)
    gate(t) = tanh(t_a) * sigmoid(t_b)

then the head: 1x1 (n -> head) -> ReLU -> 1x1 (head -> C * levels) on h -> logits [B, levels, C, H, W].
The first layer (mask A, ``kernel_size``) reads the image in both stacks and has no residual; the other
``n_layers - 1`` layers are mask B with ``hidden_kernel_size``.

RGB (``data_channels=3``): v depends on rows above only, so it needs no channel groups; the horizontal stack
convolutions and every 1x1 on the horizontal path split channels into 3 groups (R, G, B: channel c of C in
group c*3//C; at the current pixel group g sees input groups < g in the first layer, <= g after), and the gate
pairs the tanh and sigmoid halves *within* each group (``gated_activation(t, groups=3)``), so the logits of
channel c at pixel p depend on the pixels before p and on channels < c of p only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.base import (IncrementalSampler, Linear1x1, PixelModel, bias_of, check_divisible,
                                 check_positive_int, conv1x1, embedding_of, fusable_tap_conv, masked_weight)
from fastgen.nn import HorizontalStackConv2d, VerticalStackConv2d
from fastgen.ops import pixel_step
from fastgen.ops.gated_activation import gated_activation as fused_gated_activation
from fastgen.ops.tap_conv import tap_conv2d_gated
from fastgen.reference.gated_activation import gated_activation as reference_gated_activation


def gated_activation(t: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """tanh(a) * sigmoid(b) for t [B, 2n, H, W] -> [B, n, H, W] (or [B, 2n] -> [B, n]), in plain PyTorch.

    t's channels form ``groups`` equal groups; a is the first half of each group, b the second half (with one
    group: ``a, b = t.chunk(2, 1)``), so output channel group g is computed from input group g alone. The
    layers use :func:`fastgen.gated_activation` (one kernel, with the stack sum and the class embedding fused).
    """
    return reference_gated_activation(t, groups=groups)


class GatedLayer(nn.Module):
    """One gated layer: (v, h) -> (v', h') with v, h [B, in_channels, H, W] and v', h' [B, n, H, W]."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, mask_type: str, residual: bool,
                 data_channels: int, n_classes: int | None):
        super().__init__()
        n = hidden_channels
        self.residual, self.data_channels = residual, data_channels
        self.vertical = VerticalStackConv2d(in_channels, 2 * n, kernel_size, mask_type)
        self.horizontal = HorizontalStackConv2d(in_channels, 2 * n, kernel_size, mask_type, data_channels)
        self.vertical_to_horizontal = conv1x1(2 * n, 2 * n)  # v depends on rows above: no groups needed
        self.horizontal_out = conv1x1(n, n, data_channels)
        self.class_embedding = nn.Embedding(n_classes, 2 * n) if n_classes is not None else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, y: torch.Tensor | None = None):
        c = self.class_embedding(y) if self.class_embedding is not None else None  # [B, 2n]
        groups = self.data_channels
        # gate(v_pre + c) and gate(horizontal(h) + 1x1(v_pre) + c): each stack's gate (the sums included) in its
        # convolution's epilogue (fastgen.tap_conv2d_gated; v_pre written for the link), or in one gate kernel
        # after a convolution that has forward hooks
        if fusable_tap_conv(self.vertical):
            v_out, v_pre = tap_conv2d_gated(v, self.vertical.weight, self.vertical.bias, self.vertical.taps,
                                            sample_bias=c, groups=groups, return_conv=True)
        else:
            v_pre = self.vertical(v)
            v_out = fused_gated_activation(v_pre, bias=c, groups=groups)
        link = self.vertical_to_horizontal(v_pre)
        if fusable_tap_conv(self.horizontal):
            h_gate = tap_conv2d_gated(h, self.horizontal.weight, self.horizontal.bias, self.horizontal.taps,
                                      other=link, sample_bias=c, groups=groups)
        else:
            h_gate = fused_gated_activation(self.horizontal(h), link, c, groups=groups)
        h_out = self.horizontal_out(h_gate)
        return v_out, (h_out + h if self.residual else h_out)


class GatedPixelCNN(PixelModel):
    """Gated PixelCNN with a ``levels``-way softmax per sub-pixel, optionally class-conditional.

    Args:
        data_channels: 1 (grey) or 3 (RGB, channel groups on the horizontal stack).
        levels: number of pixel values.
        hidden_channels: n, the channels of each stack (divisible by 3 for RGB).
        n_layers: gated layers (the first is the mask-A input layer).
        kernel_size: the first layer's k (7 in pytorch-vqvae); hidden_kernel_size: the others' (3).
        head_channels: width of the hidden 1x1 output layer (default 2n; divisible by 3 for RGB).
        n_classes: class-conditional: every layer adds a learnt embedding of the label to both stacks before
            the gate (the paper's V^T h with a one-hot h).

    ``forward(x, y=None)``: x [B, C, H, W] (integer pixels or floats in [-1, 1]), y [B] -> logits
    [B, levels, C, H, W], as :class:`fastgen.models.PixelCNN`.
    """

    def __init__(self, data_channels: int = 1, levels: int = 256, hidden_channels: int = 64, n_layers: int = 15,
                 kernel_size: int = 7, hidden_kernel_size: int = 3, head_channels: int | None = None,
                 n_classes: int | None = None):
        super().__init__(data_channels, levels, n_classes)
        n = check_positive_int("hidden_channels", hidden_channels)
        head = 2 * n if head_channels is None else check_positive_int("head_channels", head_channels)
        check_divisible("hidden_channels", n, data_channels)
        check_divisible("head_channels", head, data_channels)
        n_layers = check_positive_int("n_layers", n_layers)
        self.config = dict(data_channels=data_channels, levels=self.levels, hidden_channels=n, n_layers=n_layers,
                           kernel_size=kernel_size, hidden_kernel_size=hidden_kernel_size, head_channels=head,
                           n_classes=self.n_classes)
        self.layers = nn.ModuleList(
            GatedLayer(data_channels if i == 0 else n, n, kernel_size if i == 0 else hidden_kernel_size,
                       "A" if i == 0 else "B", i > 0, data_channels, self.n_classes)
            for i in range(n_layers))
        self.head = conv1x1(n, head, data_channels)
        self.output_conv = conv1x1(head, data_channels * self.levels, data_channels)

    def _features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, y)
        return F.relu(self.head(h))

    _forward = PixelModel._logits

    def incremental_sampler(self, n: int, width: int, labels: torch.Tensor | None = None,
                            temperature: float = 1.0) -> IncrementalSampler:
        """The cached per-pixel evaluation (see :class:`GatedSteps`): one fused kernel per sub-pixel where
        fastgen's kernels run (:class:`GatedKernelSteps`), else plain PyTorch."""
        fused = self._kernel_steps() and pixel_step.supports(next(self.parameters()).dtype, self.levels)
        return (GatedKernelSteps if fused else GatedSteps)(self, n, width, labels, temperature)


class GatedSteps(IncrementalSampler):
    """Gated PixelCNN: the vertical stack (and its 1x1 into the horizontal stack) depends on the rows above
    only: computed for a whole row when the row starts; the horizontal stack per sub-pixel."""

    def __init__(self, model: GatedPixelCNN, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, temperature)
        self.groups = model.data_channels
        hidden = model.config["hidden_channels"]
        self.h_cache, h_caches = self.stacked_caches(len(model.layers), hidden)
        self.layers = []
        for layer, h_cache in zip(model.layers, h_caches):
            self.layers.append(dict(
                vertical=self.window(layer.vertical), horizontal=self.window(layer.horizontal),
                vertical_to_horizontal=Linear1x1(layer.vertical_to_horizontal),
                horizontal_out=Linear1x1(layer.horizontal_out), embedding=embedding_of(layer, labels),
                residual=layer.residual, v=self.cache(hidden), h=h_cache, v_to_h=None))
        self.head, self.output_conv = Linear1x1(model.head), Linear1x1(model.output_conv)

    def start_row(self, first: bool) -> None:
        self.advance()
        v = self.image
        for layer in self.layers:
            v_pre = layer["vertical"].row(v)  # [n, 2h, W]
            v_to_h = layer["vertical_to_horizontal"].row(v_pre)  # [n, W, 2h]
            if layer["embedding"] is not None:
                v_pre = v_pre + layer["embedding"][:, :, None]
                v_to_h += layer["embedding"][:, None, :]
            layer["v"].put_row(gated_activation(v_pre, self.groups))
            layer["v_to_h"] = v_to_h
            v = layer["v"]

    def output(self, x: int) -> torch.Tensor:
        h_cache, h = self.image, None
        for layer in self.layers:
            h_pre = layer["horizontal"].at(h_cache, x) + layer["v_to_h"][:, x]
            h_out = layer["horizontal_out"](gated_activation(h_pre, self.groups))
            h = h_out + h if layer["residual"] else h_out
            layer["h"].put(x, h)
            h_cache = layer["h"]
        return self.output_conv(torch.relu_(self.head(h)))


class GatedKernelSteps(GatedSteps):
    """:class:`GatedSteps` with one launch per sub-pixel: :func:`fastgen.ops.pixel_step.gated_step` runs every
    layer's horizontal stack (convolution, + vertical_to_horizontal of the row, gate, 1x1, residual), the head,
    the output layer and the draw at the new pixel; the vertical stack stays per row (``start_row``)."""

    def __init__(self, model: GatedPixelCNN, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, labels, temperature)
        hidden, layers, like = model.config["hidden_channels"], list(model.layers), self.like
        w_h0, self.first_window = pixel_step.pack_window(masked_weight(layers[0].horizontal),
                                                         layers[0].horizontal.taps)
        rest = [pixel_step.pack_window(masked_weight(layer.horizontal), layer.horizontal.taps) for layer in layers[1:]]
        self.window_rest = rest[0][1] if rest else pixel_step.WindowGeometry(0, 1, 0, 0)

        def matrix(conv):  # a 1x1 as [C_out, C_in]
            return masked_weight(conv)[:, :, 0, 0].contiguous()

        self.weights = dict(
            w_h0=w_h0, b_h0=bias_of(layers[0].horizontal),
            w_h=pixel_step.stack([w for w, _ in rest], like, (2 * hidden, hidden)),
            b_h=pixel_step.stack([bias_of(layer.horizontal) for layer in layers[1:]], like, (2 * hidden,)),
            w_ho=torch.stack([matrix(layer.horizontal_out) for layer in layers]).contiguous(),
            b_ho=torch.stack([bias_of(layer.horizontal_out) for layer in layers]).contiguous(),
            w_head=matrix(model.head), b_head=bias_of(model.head),
            w_out=matrix(model.output_conv), b_out=bias_of(model.output_conv))
        self.v2h = like.new_zeros((len(layers), n, width, 2 * hidden))
        self.gate = like.new_zeros((n, hidden))
        self.head_out = like.new_zeros((n, model.head.out_channels))
        self.no_draw = (like.new_zeros(n), torch.zeros((n, model.data_channels), dtype=torch.long,
                                                        device=like.device))

    def start_row(self, first: bool) -> None:
        super().start_row(first)
        torch.stack([layer["v_to_h"] for layer in self.layers], out=self.v2h)

    def _launch(self, x: int, channel: int, draw: bool, u, out) -> None:
        pixel_step.gated_step(
            self.image.data, self.h_cache, self.gate, self.head_out, self.v2h, self.weights, u, out, x=x,
            channel=channel, draw=draw, first_window=self.first_window, window=self.window_rest, pad=self.pad,
            levels=self.model.levels, temperature=self.temperature)

    def fill(self, x: int, pixels: torch.Tensor) -> None:
        self.image.put(x, self.scaled(pixels))
        self._launch(x, 0, False, *self.no_draw)

    def sample(self, x: int, channel: int | None, u: torch.Tensor, out: torch.Tensor) -> None:
        self._launch(x, channel, True, u, out)
