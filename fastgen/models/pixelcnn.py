"""PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks", section 3.4 and figure 5).

    x [B, C, H, W] -> k x k mask A (C -> 2h) -> n_layers residual blocks (2h) -> ReLU -> 1x1 (2h -> head)
    -> ReLU -> 1x1 (head -> C * levels) -> logits [B, levels, C, H, W]

Residual block (the paper's figure 5): ReLU -> 1x1 (2h -> h) -> ReLU -> k' x k' mask B (h -> h) [+ class
embedding] -> ReLU -> 1x1 (h -> 2h), added to the block's input.

Every convolution is a :class:`fastgen.nn.MaskedConv2d` (the 1x1s are 1x1 mask B), so with
``data_channels=3`` every layer splits its channels into 3 groups (R, G, B: channel c of C is in group c*3//C)
and output group g sees input groups < g (mask A, the input layer) or <= g (mask B) at the current pixel:
the logits of channel c at pixel p depend on the pixels before p and on channels < c of p only. Like the
paper's PixelCNN it has a blind spot (a k x k masked stack misses pixels up and to the right); the Gated
PixelCNN does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.base import (IncrementalSampler, Linear1x1, PixelModel, bias_of, check_divisible,
                                 check_positive_int, conv1x1, embedding_of, masked_weight)
from fastgen.nn import MaskedConv2d
from fastgen.ops import pixel_step


class ResidualBlock(nn.Module):
    """ReLU, 1x1 (2h -> h), ReLU, k x k mask B (h -> h) plus the class embedding, ReLU, 1x1 (h -> 2h), + x."""

    def __init__(self, hidden_channels: int, kernel_size: int, data_channels: int, n_classes: int | None):
        super().__init__()
        h = hidden_channels
        self.reduce = conv1x1(2 * h, h, data_channels)
        self.conv = MaskedConv2d(h, h, kernel_size, "B", data_channels)
        self.expand = conv1x1(h, 2 * h, data_channels)
        self.class_embedding = nn.Embedding(n_classes, h) if n_classes is not None else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, 2h, H, W], y [B] or None -> [B, 2h, H, W]. Each ReLU runs inside the convolution it feeds
        (``input_activation="relu"``: relu(x) is never stored)."""
        t = self.conv(self.reduce(x, input_activation="relu"), input_activation="relu")
        if self.class_embedding is not None:
            t = t + self.class_embedding(y)[:, :, None, None]
        return x + self.expand(t, input_activation="relu")


class PixelCNN(PixelModel):
    """PixelCNN with a ``levels``-way softmax per sub-pixel.

    Args:
        data_channels: 1 (grey) or 3 (RGB, with the PixelRNN channel groups in every layer).
        levels: number of pixel values (256 for 8-bit images).
        hidden_channels: the paper's h: residual blocks carry 2h channels and work on h inside.
            With ``data_channels=3`` it must be divisible by 3.
        n_layers: number of residual blocks.
        kernel_size: the input layer's mask-A kernel (7 in the paper).
        hidden_kernel_size: the residual blocks' mask-B kernel (3 in the paper).
        head_channels: width of the hidden 1x1 output layer (default 2h; divisible by 3 for RGB).
        n_classes: build a class-conditional model: each block adds a learnt embedding of the label.

    ``forward(x, y=None)``: x [B, C, H, W] (integer pixels 0..levels-1 or floats in [-1, 1]), y [B] labels ->
    logits [B, levels, C, H, W] (a view of the [B, C * levels, H, W] output: channel c's logits are its
    output channels c*levels..(c+1)*levels-1), the layout of ``F.cross_entropy(logits, pixels)`` with
    integer targets ``pixels`` [B, C, H, W].
    """

    def __init__(self, data_channels: int = 1, levels: int = 256, hidden_channels: int = 64, n_layers: int = 7,
                 kernel_size: int = 7, hidden_kernel_size: int = 3, head_channels: int | None = None,
                 n_classes: int | None = None):
        super().__init__(data_channels, levels, n_classes)
        h = check_positive_int("hidden_channels", hidden_channels)
        head = 2 * h if head_channels is None else check_positive_int("head_channels", head_channels)
        check_divisible("hidden_channels", h, data_channels)
        check_divisible("head_channels", head, data_channels)
        n_layers = check_positive_int("n_layers", n_layers, 0)
        self.config = dict(data_channels=data_channels, levels=self.levels, hidden_channels=h, n_layers=n_layers,
                           kernel_size=kernel_size, hidden_kernel_size=hidden_kernel_size, head_channels=head,
                           n_classes=self.n_classes)
        self.input_conv = MaskedConv2d(data_channels, 2 * h, kernel_size, "A", data_channels)
        self.blocks = nn.ModuleList(ResidualBlock(h, hidden_kernel_size, data_channels, self.n_classes)
                                    for _ in range(n_layers))
        self.head = conv1x1(2 * h, head, data_channels)
        self.output_conv = conv1x1(head, data_channels * self.levels, data_channels)

    def _features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        t = self.input_conv(x)
        for block in self.blocks:
            t = block(t, y)
        return F.relu(self.head(t, input_activation="relu"))

    _forward = PixelModel._logits

    def incremental_sampler(self, n: int, width: int, labels: torch.Tensor | None = None,
                            temperature: float = 1.0) -> IncrementalSampler:
        """The cached per-pixel evaluation (see :class:`PixelCNNSteps`): one fused kernel per sub-pixel where
        fastgen's kernels run (:class:`PixelCNNKernelSteps`), else plain PyTorch."""
        fused = self._kernel_steps() and pixel_step.supports(next(self.parameters()).dtype, self.levels)
        return (PixelCNNKernelSteps if fused else PixelCNNSteps)(self, n, width, labels, temperature)


class PixelCNNSteps(IncrementalSampler):
    """PixelCNN: every layer depends on raster-earlier positions (and lower channel groups) only, so each
    sub-pixel step evaluates every layer at that pixel. Caches: the scaled image, and each block's masked-conv
    input."""

    def __init__(self, model: PixelCNN, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, temperature)
        self.input_conv = self.window(model.input_conv)
        self.block_cache, caches = self.stacked_caches(len(model.blocks), model.config["hidden_channels"])
        self.blocks = [(Linear1x1(b.reduce), self.window(b.conv), Linear1x1(b.expand), embedding_of(b, labels),
                        cache) for b, cache in zip(model.blocks, caches)]
        self.head, self.output_conv = Linear1x1(model.head), Linear1x1(model.output_conv)

    def output(self, x: int) -> torch.Tensor:
        t = self.input_conv.at(self.image, x)
        for reduce, conv, expand, embedding, cache in self.blocks:
            cache.put(x, torch.relu_(reduce(torch.relu(t))))
            s = conv.at(cache, x)
            if embedding is not None:
                s += embedding
            t = t + expand(torch.relu_(s))
        return self.output_conv(torch.relu_(self.head(torch.relu(t))))


class PixelCNNKernelSteps(PixelCNNSteps):
    """:class:`PixelCNNSteps` with one launch per sub-pixel: :func:`fastgen.ops.pixel_step.pixelcnn_step` runs
    the input convolution, every residual block, the head, the output layer and the draw at the new pixel, and
    writes the drawn value to the pixels and the image cache."""

    def __init__(self, model: PixelCNN, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, labels, temperature)
        h, blocks = model.config["hidden_channels"], list(model.blocks)
        w_in, self.input_window = pixel_step.pack_window(masked_weight(model.input_conv), model.input_conv.taps)
        convs = [pixel_step.pack_window(masked_weight(b.conv), b.conv.taps) for b in blocks]
        self.conv_window = convs[0][1] if convs else pixel_step.WindowGeometry(0, 1, 0, 0)
        like = self.like

        def matrix(conv):  # a 1x1 as [C_out, C_in]
            return masked_weight(conv)[:, :, 0, 0].contiguous()

        embeddings = [e for *_, e, _ in self.blocks if e is not None]
        self.weights = dict(
            w_in=w_in, b_in=bias_of(model.input_conv),
            w_red=pixel_step.stack([matrix(b.reduce) for b in blocks], like, (h, 2 * h)),
            b_red=pixel_step.stack([bias_of(b.reduce) for b in blocks], like, (h,)),
            w_conv=pixel_step.stack([w for w, _ in convs], like, (h, h)),
            b_conv=pixel_step.stack([bias_of(b.conv) for b in blocks], like, (h,)),
            emb=pixel_step.stack(embeddings, like, ()) if embeddings else None,
            w_exp=pixel_step.stack([matrix(b.expand) for b in blocks], like, (2 * h, h)),
            b_exp=pixel_step.stack([bias_of(b.expand) for b in blocks], like, (2 * h,)),
            w_head=matrix(model.head), b_head=bias_of(model.head),
            w_out=matrix(model.output_conv), b_out=bias_of(model.output_conv))
        self.t = like.new_zeros((2, n, 2 * h))
        self.s = like.new_zeros((n, h))
        self.head_out = like.new_zeros((n, model.head.out_channels))
        self.no_draw = (like.new_zeros(n), torch.zeros((n, model.data_channels), dtype=torch.long,
                                                        device=like.device))

    def _launch(self, x: int, channel: int, draw: bool, u, out) -> None:
        pixel_step.pixelcnn_step(
            self.image.data, self.block_cache, self.t, self.s, self.head_out, self.weights, u, out, x=x,
            channel=channel, draw=draw, n_layers=len(self.blocks), input_window=self.input_window,
            conv_window=self.conv_window, pad=self.pad, levels=self.model.levels, temperature=self.temperature)

    def fill(self, x: int, pixels: torch.Tensor) -> None:
        self.image.put(x, self.scaled(pixels))
        self._launch(x, 0, False, *self.no_draw)

    def sample(self, x: int, channel: int | None, u: torch.Tensor, out: torch.Tensor) -> None:
        self._launch(x, channel, True, u, out)
