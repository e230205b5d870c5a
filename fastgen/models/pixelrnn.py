"""PixelRNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"): the Row LSTM and Diagonal BiLSTM
models.

    x [B, C, H, W] -> k x k mask A (C -> 2h) -> n_layers LSTM layers with residual connections (2h)
    -> ReLU -> 1x1 (2h -> head) -> ReLU -> 1x1 (head -> C * levels) -> logits [B, levels, C, H, W]

One residual layer (the paper's figure 4 and section 3.4): t + 1x1(LSTM(t)), the LSTM reading the 2h-channel
input with a mask-B input-to-state convolution and producing h channels, the 1x1 mapping them back to 2h.
``kind="row"``: a Row LSTM (:class:`fastgen.nn.RowLSTM`, 1 x k input-to-state and state-to-state convolutions,
k = 3); ``kind="diagonal"``: a Diagonal BiLSTM (:class:`fastgen.nn.DiagonalBiLSTM`, 1x1 input-to-state, 2 x 1
state-to-state on the skewed map, both directions). As in the paper's table 4, the first layer is a 7 x 7
mask-A convolution and the LSTM layers are mask B. With ``data_channels=3`` every layer splits its channels into the R, G, B groups (the LSTM's
gates per group, see :class:`fastgen.nn.RowLSTM`), so the logits of channel c at pixel p depend on the pixels
before p and on channels < c of p only.

The Row LSTM's recurrence runs on :func:`fastgen.row_lstm` (fused kernels, one launch per row or one persistent
launch for all rows; the reference's Python loop on CPU),
the Diagonal BiLSTM's on the same kernels (:func:`fastgen.diagonal_bilstm`: the skewed map transposed), the
convolutions on fastgen's tap-conv kernels. :meth:`PixelRNN.sample_cached` samples both kinds with the LSTM states
of the previous row and of the current row's prefix cached: one column step per sub-pixel instead of a full
forward (the Diagonal BiLSTM's right-to-left pass runs once per row, when the row is sampled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.base import PixelModel, check_divisible, check_positive_int, conv1x1, masked_weight
from fastgen.nn import DiagonalBiLSTM, MaskedConv2d, RowLSTM
from fastgen.nn.tap_conv import TapConv2d
from fastgen.reference.row_lstm import lstm_cell
from fastgen.validation import check_choice

KINDS = ("row", "diagonal")


class PixelRNNLayer(nn.Module):
    """t [B, 2h, H, W] -> t + 1x1(LSTM(t)) (+ a class embedding added to the LSTM's gates); the LSTM a
    :class:`fastgen.nn.RowLSTM` (``kind="row"``) or a :class:`fastgen.nn.DiagonalBiLSTM` (``"diagonal"``)."""

    def __init__(self, hidden_channels: int, kernel_size: int, data_channels: int, n_classes: int | None,
                 kind: str = "row"):
        super().__init__()
        h = hidden_channels
        if kind == "row":
            self.lstm = RowLSTM(2 * h, h, kernel_size, "B", data_channels)
        else:
            self.lstm = DiagonalBiLSTM(2 * h, h, "B", data_channels)
        self.out = conv1x1(h, 2 * h, data_channels)
        self.class_embedding = nn.Embedding(n_classes, 4 * h) if n_classes is not None else None

    def forward(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        bias = self.class_embedding(y) if self.class_embedding is not None else None
        return t + self.out(self.lstm(t, bias))


class PixelRNN(PixelModel):
    """PixelRNN with a ``levels``-way softmax per sub-pixel.

    Args:
        kind: "row" (Row LSTM) or "diagonal" (Diagonal BiLSTM).
        data_channels: 1 (grey) or 3 (RGB, channel groups in every layer).
        levels: number of pixel values (256 for 8-bit images).
        hidden_channels: the paper's h: the residual stream carries 2h channels, each LSTM h (divisible by 3
            for RGB).
        n_layers: Row LSTM layers.
        kernel_size: the input layer's mask-A kernel (7 in the paper).
        hidden_kernel_size: k of the Row LSTM's 1 x k input-to-state and state-to-state convolutions (3; unused
            by the Diagonal BiLSTM, whose windows are fixed).
        head_channels: width of the hidden 1x1 output layer (default 2h; divisible by 3 for RGB).
        n_classes: class-conditional: each layer adds a learnt embedding of the label to its LSTM's gates.

    ``forward(x, y=None)``: x [B, C, H, W] (integer pixels 0..levels-1 or floats in [-1, 1]), y [B] -> logits
    [B, levels, C, H, W], as :class:`fastgen.models.PixelCNN`.
    """

    def __init__(self, kind: str = "row", data_channels: int = 1, levels: int = 256, hidden_channels: int = 64,
                 n_layers: int = 7, kernel_size: int = 7, hidden_kernel_size: int = 3,
                 head_channels: int | None = None, n_classes: int | None = None):
        super().__init__(data_channels, levels, n_classes)
        check_choice("kind", kind, KINDS)
        h = check_positive_int("hidden_channels", hidden_channels)
        head = 2 * h if head_channels is None else check_positive_int("head_channels", head_channels)
        check_divisible("hidden_channels", h, data_channels)
        check_divisible("head_channels", head, data_channels)
        n_layers = check_positive_int("n_layers", n_layers, 0)
        self.kind = kind
        self.config = dict(kind=kind, data_channels=data_channels, levels=self.levels, hidden_channels=h,
                           n_layers=n_layers, kernel_size=kernel_size, hidden_kernel_size=hidden_kernel_size,
                           head_channels=head, n_classes=self.n_classes)
        self.input_conv = MaskedConv2d(data_channels, 2 * h, kernel_size, "A", data_channels)
        self.layers = nn.ModuleList(PixelRNNLayer(h, hidden_kernel_size, data_channels, self.n_classes, kind)
                                    for _ in range(n_layers))
        self.head = conv1x1(2 * h, head, data_channels)
        self.output_conv = conv1x1(head, data_channels * self.levels, data_channels)

    def _features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        t = self.input_conv(x)
        for layer in self.layers:
            t = layer(t, y)
        return F.relu(self.head(t, input_activation="relu"))

    _forward = PixelModel._logits

    # ------------------------------------------------------------------------------------------- sampling
    @property
    def has_cached_sampler(self) -> bool:
        """True: both kinds sample with :meth:`sample_cached`."""
        return True

    def cached_steps(self, n: int, height: int, width: int, y: torch.Tensor | None = None):
        """The caches of :meth:`sample_cached` for ``n`` images of ``height`` x ``width`` (labels ``y`` [n] on the
        model's device, already checked) and its steps: ``column(row, col)`` -> logits [n, C, levels] (updating
        the caches of that column), ``put_pixel(row, col, channel, value)``, ``end_row()``. For
        :meth:`sample_cached` and for counting what one step launches (the sampling benchmark)."""
        parameter = next(self.parameters())
        kind = _RowLSTMSteps if self.kind == "row" else _DiagonalSteps
        return kind(self, n, height, width, y, parameter.device, parameter.dtype)

    @torch.no_grad()
    def sample_cached(self, n: int | None = None, *, size=None, y=None, temperature: float = 1.0, uniforms=None,
                      generator=None, progress: bool = False) -> torch.Tensor:
        """Samples [n, C, H, W] pixel values (long) in raster order with cached state, in plain PyTorch over the
        model's parameters; one column step through every layer per sub-pixel (and one more per pixel to cache it
        with all its channels). The same draws as :func:`fastgen.sampling.sample_naive` (``uniforms`` [n, C, H, W]
        in [0, 1), or from ``generator``) give the same pixels: exactly in float64.

        Row LSTM: per row the LSTM states of the row above (h, c of every layer), per column the current row's
        layer inputs to the left. Diagonal BiLSTM: the left-to-right LSTM state at (r, c) reads the states at
        (r - 1, c) and (r, c - 1), kept per row; the right-to-left one, which reaches (r, c) shifted down from
        row r - 1, runs over a whole row once that row is sampled (from its right end, reading the row above).
        """
        from fastgen.sampling import draw_categorical, sampling_uniforms  # the samplers import the models

        parameter = next(self.parameters())
        device = parameter.device
        if uniforms is None:
            if n is None or size is None:
                raise ValueError("sample_cached: give n and size (H, W), or uniforms [n, C, H, W]")
            uniforms = sampling_uniforms(self, n, tuple(size), generator)
        n, channels, height, width = uniforms.shape
        if channels != self.data_channels:
            raise ValueError(f"uniforms must have shape [n, {self.data_channels}, H, W], got {tuple(uniforms.shape)}")
        if y is not None:
            y = self.check_labels(y.to(device), uniforms)
        elif self.n_classes is not None:
            raise ValueError(f"y (class labels [n]) is required: the model was built with n_classes={self.n_classes}")
        uniforms = uniforms.to(device)
        training = self.training
        self.eval()
        try:
            steps = self.cached_steps(n, height, width, y)
            pixels = torch.zeros((n, channels, height, width), dtype=torch.long, device=device)
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=height * width, desc="sample_cached", unit="px")
            for row in range(height):
                for col in range(width):
                    for channel in range(channels):
                        logits = steps.column(row, col)  # [n, C, levels]
                        value = draw_categorical(logits[:, channel], uniforms[:, channel, row, col], temperature)
                        pixels[:, channel, row, col] = value
                        steps.put_pixel(row, col, channel, value)
                    steps.column(row, col)  # the caches of this column, from the whole pixel
                    if bar is not None:
                        bar.update(1)
                steps.end_row()
            if bar is not None:
                bar.close()
        finally:
            self.train(training)
        return pixels


def _at(conv: TapConv2d, window: torch.Tensor) -> torch.Tensor:
    """The convolution's output at one position from the input ``window`` [n, C_in, kh, kw] around it."""
    return F.conv2d(window, masked_weight(conv), conv.bias)[:, :, 0, 0]


class _RowLSTMSteps:
    """The caches of :meth:`PixelRNN.sample_cached` and one column step through the model."""

    def __init__(self, model: PixelRNN, n: int, height: int, width: int, y, device, dtype):
        self.model, self.width = model, width
        k0 = model.input_conv.kernel_size[0]
        self.pad0 = k0 // 2
        # the image as the model sees it ([-1, 1]), zero padded for the k0 x k0 input window
        self.image = torch.zeros((n, model.data_channels, height + 2 * self.pad0, width + 2 * self.pad0),
                                 dtype=dtype, device=device)
        self.image[:, :, self.pad0:self.pad0 + height, self.pad0:self.pad0 + width] = -1.0  # pixel value 0

        def zeros(*shape):
            return torch.zeros((n, *shape), dtype=dtype, device=device)

        self.layers = [dict(self._layer_cache(layer.lstm, width, zeros), layer=layer,
                            bias=layer.class_embedding(y) if layer.class_embedding is not None else None)
                       for layer in model.layers]

    @staticmethod
    def _layer_cache(lstm, width: int, zeros) -> dict:
        """One layer's caches (``zeros(*shape)`` makes an [n, *shape] tensor)."""
        k, h = lstm.kernel_size, lstm.hidden_channels
        return dict(k=k,
                    inputs=zeros(lstm.input_to_state.in_channels, 1, width + k // 2),  # this row's, left-padded
                    h_prev=zeros(h, 1, width + 2 * (k // 2)),
                    c_prev=None,  # [n, h, W] after the first row
                    h_row=zeros(h, width), c_row=zeros(h, width))

    def put_pixel(self, row: int, col: int, channel: int, value: torch.Tensor) -> None:
        scaled = value.to(self.image.dtype) * (2.0 / (self.model.levels - 1)) - 1.0
        self.image[:, channel, row + self.pad0, col + self.pad0] = scaled

    def column(self, row: int, col: int) -> torch.Tensor:
        """Logits [n, C, levels] at (row, col); updates the caches of this column."""
        model, k0 = self.model, 2 * self.pad0 + 1
        t = _at(model.input_conv, self.image[:, :, row:row + k0, col:col + k0])  # [n, 2h]
        for cache in self.layers:
            layer, k = cache["layer"], cache["k"]
            lstm = layer.lstm
            cache["inputs"][:, :, 0, col + k // 2] = t
            z = _at(lstm.input_to_state, cache["inputs"][:, :, :, col:col + k // 2 + 1])
            if cache["bias"] is not None:
                z = z + cache["bias"]
            if cache["c_prev"] is not None:  # row > 0: the state-to-state convolution over the row above
                z = z + F.conv2d(cache["h_prev"][:, :, :, col:col + k], lstm.state_to_state.weight)[:, :, 0, 0]
            h, c = lstm_cell(z, None if cache["c_prev"] is None else cache["c_prev"][:, :, col], lstm.data_channels)
            cache["h_row"][:, :, col], cache["c_row"][:, :, col] = h, c
            t = t + _at(layer.out, h[:, :, None, None])
        head = _at(model.head, F.relu(t)[:, :, None, None])
        out = _at(model.output_conv, F.relu(head)[:, :, None, None])
        return out.unflatten(1, (model.data_channels, model.levels))

    def end_row(self) -> None:
        for cache in self.layers:
            k = cache["k"]
            cache["h_prev"][:, :, 0, k // 2:k // 2 + self.width] = cache["h_row"]
            cache["c_prev"] = cache["c_row"].clone()


class _DiagonalSteps(_RowLSTMSteps):
    """The caches of :meth:`PixelRNN.sample_cached` for the Diagonal BiLSTM and one column step through it.

    In image coordinates (what :func:`fastgen.reference.diagonal_lstm` computes on the skewed map) the
    left-to-right LSTM at (r, c) is z = gates(r, c) + W_above h(r - 1, c) + W_left h(r, c - 1) with the cell of
    (r, c - 1), zero outside the image; the right-to-left one mirrors it (W_right h(r, c + 1), the cell of
    (r, c + 1)) and reaches (r, c) as its state at (r - 1, c). Per layer: the left-to-right h of the row above
    and of this row, this row's cells, this row's layer inputs (for the right-to-left pass when the row ends),
    the right-to-left h of the row above."""

    @staticmethod
    def _layer_cache(lstm, width: int, zeros) -> dict:
        h = lstm.hidden_channels
        return dict(inputs=zeros(lstm.input_to_state.in_channels, width),
                    left_above=zeros(h, width), left_row=zeros(h, width), left_cells=zeros(h, width),
                    right_above=zeros(h, width))  # the right-to-left h of the row above: this row's shifted input

    def column(self, row: int, col: int) -> torch.Tensor:
        """Logits [n, C, levels] at (row, col); updates the caches of this column."""
        model, k0 = self.model, 2 * self.pad0 + 1
        t = _at(model.input_conv, self.image[:, :, row:row + k0, col:col + k0])  # [n, 2h]
        for cache in self.layers:
            layer = cache["layer"]
            lstm = layer.lstm
            cache["inputs"][:, :, col] = t
            z = _at(lstm.input_to_state, t[:, :, None, None])
            if cache["bias"] is not None:
                z = z + cache["bias"]
            w_above, w_left = lstm.state_to_state.weight[:, :, 0, 0], lstm.state_to_state.weight[:, :, 1, 0]
            z = z + cache["left_above"][:, :, col] @ w_above.t()
            cell = None
            if col > 0:
                z = z + cache["left_row"][:, :, col - 1] @ w_left.t()
                cell = cache["left_cells"][:, :, col - 1]
            h, c = lstm_cell(z, cell, lstm.data_channels)
            cache["left_row"][:, :, col], cache["left_cells"][:, :, col] = h, c
            t = t + _at(layer.out, (h + cache["right_above"][:, :, col])[:, :, None, None])
        head = _at(model.head, F.relu(t)[:, :, None, None])
        out = _at(model.output_conv, F.relu(head)[:, :, None, None])
        return out.unflatten(1, (model.data_channels, model.levels))

    def end_row(self) -> None:
        """The row is sampled: each layer's right-to-left pass over it (from its right end), whose states the
        next row reads shifted down; the left-to-right states become the row above."""
        for cache in self.layers:
            lstm = cache["layer"].lstm
            gates = F.conv2d(cache["inputs"][:, :, None, :], masked_weight(lstm.input_to_state_right),
                             lstm.input_to_state_right.bias)[:, :, 0]  # [n, 4h, W]
            if cache["bias"] is not None:
                gates = gates + cache["bias"][:, :, None]
            w_above, w_right = (lstm.state_to_state_right.weight[:, :, i, 0] for i in (0, 1))
            above, right = cache["right_above"], torch.zeros_like(cache["right_above"])
            h_next = c_next = None
            for col in range(self.width - 1, -1, -1):
                z = gates[:, :, col] + above[:, :, col] @ w_above.t()
                if h_next is not None:
                    z = z + h_next @ w_right.t()
                h_next, c_next = lstm_cell(z, c_next, lstm.data_channels)
                right[:, :, col] = h_next
            cache["right_above"] = right
            cache["left_above"] = cache["left_row"].clone()
