"""What the PixelCNN models share: the input convention, class labels, and the fastgen/reference switch.

Every model takes images ``x`` [B, C, H, W] (C = ``data_channels``, 1 or 3) as

* integer pixel values 0..levels-1 (any integer dtype), which the model maps to ``2 * v / (levels - 1) - 1``
  in its parameters' dtype (:func:`scale_pixels`), or
* floating values already on that [-1, 1] scale (the DMOL convention of PixelCNN++),

and optional class labels ``y`` [B] (long, 0..n_classes-1) when built with ``n_classes``.

The convolutions are :mod:`fastgen.nn` modules, so a model runs wherever :mod:`fastgen.dispatch` sends them
(compiled Triton on CUDA, interpreted Triton under ``TRITON_INTERPRET=1``, else the reference);
``model.use_reference(True)`` runs every forward inside ``fastgen.use_backend("reference")``: the plain
``F.conv2d(x, weight * mask)`` layers with the same parameters, for side-by-side runs. The switch is not part
of the ``state_dict``.
"""

from __future__ import annotations

import contextlib
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.dispatch import backend_for, use_backend
from fastgen.dtypes import compute_dtype
from fastgen.nn import MaskedConv2d
from fastgen.nn.tap_conv import TapConv2d
from fastgen.taps import DATA_CHANNELS
from fastgen.validation import check_choice


def scale_pixels(pixels: torch.Tensor, levels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer pixel values 0..levels-1 -> ``2 * v / (levels - 1) - 1`` in [-1, 1], as ``dtype``."""
    return pixels.to(dtype) * (2.0 / (levels - 1)) - 1.0


def dmol_targets(pixels: torch.Tensor, levels: int, params_dtype: torch.dtype) -> torch.Tensor:
    """Integer pixels 0..levels-1 as the DMOL loss's targets x for parameters of ``params_dtype``: scaled in the
    loss's compute dtype (:func:`fastgen.dtypes.compute_dtype`: float32 for 16-bit parameters, float64 for
    float64), not in ``params_dtype``. In bfloat16 (the parameters' dtype under autocast) 2 v / 255 - 1 is off
    by up to 0.99 of the half bin width 1/255 (158 of the 256 values by more than a quarter of it), so the loss
    would score a bin centred elsewhere."""
    return scale_pixels(pixels, levels, compute_dtype(params_dtype))


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_divisible(name: str, value: int, data_channels: int) -> None:
    if value % data_channels:
        raise ValueError(f"{name} ({value}) must be divisible by data_channels ({data_channels}): with RGB "
                         f"inputs every layer's channels are split into {data_channels} causal groups")


def conv1x1(in_channels: int, out_channels: int, data_channels: int = 1) -> MaskedConv2d:
    """A 1x1 convolution on fastgen's kernel: a 1x1 mask-B MaskedConv2d. With ``data_channels=1`` it is a
    plain 1x1 convolution; with 3 it connects output channel group g to input groups <= g only."""
    return MaskedConv2d(in_channels, out_channels, 1, "B", data_channels)


class ReferenceSwitch(nn.Module):
    """What every fastgen model shares: ``use_reference(flag)`` runs its fastgen ops on the plain-PyTorch
    reference (``fastgen.use_backend("reference")``) with the same parameters, for side-by-side runs; subclasses
    set ``self.config`` (their constructor arguments: ``type(model)(**model.config)`` rebuilds the model)."""

    reference = False

    def use_reference(self, flag: bool = True):
        """Run the model on the plain-PyTorch reference (``flag=True``) or wherever fastgen's dispatch sends
        its ops (``False``). Not part of the ``state_dict``. Returns the model."""
        self.reference = bool(flag)
        return self

    def _backend(self):
        """The context a forward runs its ops in: the reference backend when switched to it."""
        return use_backend("reference") if self.reference else contextlib.nullcontext()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items()) + (", reference" if self.reference else "")


class PixelModel(ReferenceSwitch):
    """Base class: validates and scales the input, checks labels, runs ``_forward`` on the chosen backend.

    Subclasses set ``self.config`` (their constructor arguments, enough to rebuild the model from a
    checkpoint: ``type(model)(**model.config)``) and implement ``_forward(x, y)`` with x scaled to [-1, 1].
    """

    #: what ``forward`` returns: "logits" ([B, levels, C, H, W]) or "dmol" (mixture parameters [B, P, H, W])
    output_kind = "logits"

    def __init__(self, data_channels: int, levels: int, n_classes: int | None):
        super().__init__()
        check_choice("data_channels", data_channels, DATA_CHANNELS)
        self.data_channels = data_channels
        self.levels = check_positive_int("levels", levels, 2)
        self.n_classes = None if n_classes is None else check_positive_int("n_classes", n_classes)
        self.reference = False

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Checks ``x`` [B, C, H, W] and maps integer pixels to [-1, 1] in the parameters' dtype."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.data_channels:
            raise ValueError(f"x must have shape [B, {self.data_channels}, H, W] (data_channels="
                             f"{self.data_channels}), got {tuple(x.shape)}")
        if x.is_floating_point():
            return x
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"x must hold integer pixel values or floats in [-1, 1], got {x.dtype}")
        return scale_pixels(x, self.levels, next(self.parameters()).dtype)

    def check_labels(self, y, x: torch.Tensor) -> torch.Tensor | None:
        if self.n_classes is None:
            if y is not None:
                raise ValueError("y was given but the model was built without n_classes (unconditional)")
            return None
        if y is None:
            raise ValueError(f"y (class labels [B]) is required: the model was built with n_classes="
                             f"{self.n_classes}")
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer tensor of class labels, got "
                            f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
        if tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"y must have shape [B] = ({x.shape[0]},), got {tuple(y.shape)}")
        return y

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prepare_input(x)
        y = self.check_labels(y, x)
        with self._backend():
            return self._forward(x, y)

    def _forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def nll(self, pixels: torch.Tensor, y: torch.Tensor | None = None, *, reduction: str = "mean",
            pixels_checked: bool = False) -> torch.Tensor:
        """The negative log-likelihood in nats of integer ``pixels`` [B, C, H, W] (0..levels-1) under the model:
        "mean" per sub-pixel (``fastgen.bits_per_dim`` of it is bits/dim), "sum", or "none" (per sub-pixel
        [B, C, H, W] for a softmax head; per pixel [B, H, W] for PixelCNN++, its channels' joint NLL).

        The training loss. Models with a softmax head (``output_kind == "logits"``) run their last 1x1
        convolution fused with the cross-entropy (:meth:`fastgen.nn.TapConv2d.cross_entropy`: the
        [B, C * levels, H, W] logits are never stored); PixelCNN++ takes :func:`fastgen.dmol_nll` of its output.
        ``pixels_checked``: the pixels are known to be in range (checked once per data set), so no per-call range
        check (a reduction and a device sync)."""
        from fastgen.ops.pixel_losses import dmol_nll  # the op module imports nothing of the models

        if not isinstance(pixels, torch.Tensor) or pixels.is_floating_point():
            raise TypeError(f"pixels must be an integer tensor [B, C, H, W], got "
                            f"{pixels.dtype if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
        x = self.prepare_input(pixels)
        y = self.check_labels(y, x)
        with self._backend():
            if self.output_kind == "logits":
                return self.output_conv.cross_entropy(self._features(x, y), pixels, reduction,
                                                      check_targets=not pixels_checked)
            params = self._forward(x, y)
            return dmol_nll(params, dmol_targets(pixels, self.levels, params.dtype), self.n_mixtures,
                            levels=self.levels, reduction=reduction)

    def _features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """A softmax-head model's input to its output layer ``self.output_conv`` (the 1x1 convolution to
        C * levels logits)."""
        raise NotImplementedError

    def _logits(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """A softmax-head model's forward: logits [B, levels, C, H, W], a view of the output layer's
        [B, C * levels, H, W]."""
        out = self.output_conv(self._features(x, y))
        return out.unflatten(1, (self.data_channels, self.levels)).transpose(1, 2)

    def incremental_sampler(self, n: int, width: int, labels: torch.Tensor | None = None,
                            temperature: float = 1.0) -> "IncrementalSampler":
        """The model's cached per-pixel evaluation for :func:`fastgen.sampling.sample`: an
        :class:`IncrementalSampler` over ``n`` images of ``width`` columns (``labels`` [n] for a conditional
        model, already checked), drawing at ``temperature``. A model without one cannot be sampled with the cached
        sampler (``fastgen.sampling.sample_naive`` still works)."""
        raise NotImplementedError(f"{type(self).__name__} has no incremental sampler; use sample_naive")

    def _kernel_steps(self) -> bool:
        """Whether an incremental sampler runs fastgen's step kernels (compiled on CUDA, interpreted under
        ``TRITON_INTERPRET=1``) or plain PyTorch: the model's backend, as its forward."""
        return not self.reference and backend_for(next(self.parameters())) == "triton"


# ------------------------------------------------------------------------------------------------ sampling draws


def draw_categorical(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Inverse-CDF draw from softmax(logits / temperature): logits [n, L], u [n] in [0, 1) -> [n] long, the
    first level whose CDF exceeds u (softmax in float32 for 16-bit logits)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
    below = cdf < (u.to(cdf.dtype) * cdf[:, -1])[:, None]
    return below.sum(-1).clamp_(max=logits.shape[-1] - 1)


def draw_dmol(params: torch.Tensor, u: torch.Tensor, n_mixtures: int, levels: int,
              temperature: float = 1.0) -> torch.Tensor:
    """A DMOL draw at one pixel: params [n, P], u [n, K + C] (:func:`fastgen.dmol_sample`'s draws) -> [n, C]
    long, the sample rounded to the nearest of the ``levels`` values."""
    from fastgen.ops.pixel_losses import dmol_sample  # the op module imports nothing of the models

    n = params.shape[0]
    values = dmol_sample(params.reshape(n, -1, 1, 1), n_mixtures, temperature=temperature,
                         uniforms=u.reshape(n, -1, 1, 1))
    return torch.round((values.view(n, -1) + 1.0) * (0.5 * (levels - 1))).long()


# ------------------------------------------------------------------------------------- incremental evaluation
#
# Every cache keeps the last ROWS rows of one activation map, the current row last; ``advance`` moves them up by
# one when a row starts. The step code then never depends on the row index: the same sequence of operations
# samples every row (after the first), which is what lets CUDA replay a row as one graph.


class RowCache:
    """The last ``rows`` rows of an activation map, zero-padded: data [n, C, rows, pad + W + pad], the current
    row at index rows - 1, pixel x of a row at column pad + x. Zeros stand for the convolutions' zero padding
    (above the image and beside it) and for pixels not computed yet, which every live tap skips. ``data`` may be
    a view into a larger buffer (the step kernels keep a model's caches of one shape stacked)."""

    def __init__(self, n: int, channels: int, width: int, rows: int, pad: int, like: torch.Tensor,
                 data: torch.Tensor | None = None):
        self.pad, self.width = pad, width
        self.data = like.new_zeros((n, channels, rows, pad + width + pad)) if data is None else data

    def advance(self) -> None:
        """Starts a new row: rows move up by one, the new current row is zeros."""
        self.data[:, :, :-1] = self.data[:, :, 1:].clone()
        self.data[:, :, -1] = 0

    def put(self, x: int, value: torch.Tensor) -> None:
        """value [n, C'] into the first C' channels of pixel x of the current row."""
        self.data[:, :value.shape[1], -1, self.pad + x] = value

    def put_row(self, value: torch.Tensor) -> None:
        """value [n, C, W] as the current row."""
        self.data[:, :, -1, self.pad:self.pad + self.width] = value


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether a call of ``module`` runs forward hooks (its own or the global ones)."""
    hooks = nn.modules.module
    return bool(module._forward_pre_hooks or module._forward_hooks or hooks._global_forward_pre_hooks
                or hooks._global_forward_hooks)


def fusable_tap_conv(conv: nn.Module) -> bool:
    """Whether a fused op may take ``conv``'s place (:func:`fastgen.tap_conv2d_gated` and the like): a
    :class:`fastgen.nn.TapConv2d` without forward hooks (the fused op would bypass them)."""
    return isinstance(conv, TapConv2d) and not has_forward_hooks(conv)


def masked_weight(conv: TapConv2d) -> torch.Tensor:
    """``weight * mask`` of a tap convolution (its dead taps exactly zero)."""
    return conv.weight * conv.taps.mask(conv.out_channels, conv.in_channels, conv.weight.dtype, conv.weight.device)


def bias_of(conv: TapConv2d) -> torch.Tensor:
    """A convolution's bias, zeros without one."""
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def live_rows(conv: TapConv2d) -> int:
    """The window rows of a causal convolution that hold a live tap (causal sets never pass the centre row)."""
    return -(-conv.taps.n_taps // conv.taps.kernel_size[1])


class CausalWindow:
    """One causal convolution (a :class:`fastgen.nn.TapConv2d`) evaluated at one pixel, or on one row, from a
    :class:`RowCache` of its input: the rows of its window that hold live taps, with ``weight * mask``."""

    def __init__(self, conv: TapConv2d, pad: int):
        taps = conv.taps
        (_, kw), (top, left) = taps.kernel_size, taps.padding
        self.rows = live_rows(conv)
        self.kw, self.top, self.col0 = kw, top, pad - left
        weight = masked_weight(conv)
        self.weight = weight[:, :, :self.rows].contiguous()  # [C_out, C_in, rows, kw]
        self.matrix = self.weight.flatten(1).t().contiguous()  # [C_in * rows * kw, C_out]
        self.bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)

    def _row_slice(self, cache: RowCache, rows_back: int) -> slice:
        first = cache.data.shape[2] - 1 - rows_back - self.top
        return slice(first, first + self.rows)

    def at(self, cache: RowCache, x: int) -> torch.Tensor:
        """The convolution's output at pixel x of the current row: [n, C_out]."""
        n = cache.data.shape[0]
        if self.rows == 0:
            return self.bias.expand(n, -1).clone()
        window = cache.data[:, :, self._row_slice(cache, 0), x + self.col0:x + self.col0 + self.kw]
        return torch.addmm(self.bias, window.reshape(n, self.matrix.shape[0]), self.matrix)

    def row(self, cache: RowCache, rows_back: int = 0) -> torch.Tensor:
        """The convolution's output on the current row (``rows_back=1``: the row above): [n, C_out, W]."""
        n, width = cache.data.shape[0], cache.width
        if self.rows == 0:
            return self.bias[None, :, None].expand(n, -1, width).clone()
        window = cache.data[:, :, self._row_slice(cache, rows_back), self.col0:self.col0 + width + self.kw - 1]
        return F.conv2d(window, self.weight, self.bias)[:, :, 0]


class Linear1x1:
    """A 1x1 convolution (:func:`conv1x1`, channel groups masked) as matrix [C_in, C_out] and bias [C_out]."""

    def __init__(self, conv: TapConv2d):
        weight = masked_weight(conv)
        self.matrix = weight[:, :, 0, 0].t().contiguous()
        self.bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """At one pixel: v [n, C_in] -> [n, C_out]."""
        return torch.addmm(self.bias, v, self.matrix)

    def row(self, v: torch.Tensor) -> torch.Tensor:
        """On a row: v [n, C_in, W] -> [n, W, C_out] (one pixel's outputs contiguous)."""
        return torch.matmul(v.transpose(1, 2), self.matrix) + self.bias


def cache_shape(model: nn.Module) -> tuple[int, int]:
    """(rows, pad) that hold every convolution's window: the rows above the current one that a window reaches,
    plus the current row, plus one more for PixelCNN++'s first convolutions, which read the row above's window;
    and the columns a window reaches left or right."""
    tops, pads = [0], [0]
    for module in model.modules():
        if isinstance(module, TapConv2d):
            (_, kw), (top, left) = module.taps.kernel_size, module.taps.padding
            tops.append(top)
            pads += [left, kw - 1 - left]
    return max(tops) + 2, max(pads)


def embedding_of(module: nn.Module, labels: torch.Tensor | None) -> torch.Tensor | None:
    """A layer's class embedding of the labels [n, D], or None."""
    return None if module.class_embedding is None else module.class_embedding(labels)


class IncrementalSampler:
    """A model's cached evaluation for sequential sampling, one pixel (or sub-pixel) at a time.

    The sampler (:func:`fastgen.sampling.sample`) drives it in raster order: ``start_row(first)`` when a row
    starts (every cache moves up one row; the work that depends on the rows above only runs here, batched over
    the row; ``first``: row 0), then per column x either ``fill(x, pixels)`` (a given pixel, image completion)
    or ``sample(x, channel, u, out)`` per sub-pixel (``channel`` None for a DMOL model, whose channels are drawn
    together). The randomness comes from the sampler (``u``), the temperature is fixed at construction.

    A subclass creates its caches with :meth:`cache` (``self.image`` caches the model's input) and implements
    ``start_row`` and ``output(x)``: the model's output at pixel x of the current row ([n, C * levels] logits or
    [n, P] DMOL parameters), filling its caches at x. This base class draws from that output in plain PyTorch;
    a subclass running fused step kernels overrides ``sample`` and ``fill``. No method may depend on the row
    index: on CUDA the sampler captures one row's calls as a graph and replays it.
    """

    def __init__(self, model: PixelModel, n: int, width: int, temperature: float = 1.0,
                 image_channels: int | None = None):
        self.model, self.n, self.width, self.temperature = model, n, width, float(temperature)
        self.rows, self.pad = cache_shape(model)
        self.like = next(model.parameters())
        self.dtype = self.like.dtype
        self.caches: list[RowCache] = []
        self.image = self.cache(model.data_channels if image_channels is None else image_channels)

    def cache(self, channels: int) -> RowCache:
        cache = RowCache(self.n, channels, self.width, self.rows, self.pad, self.like)
        self.caches.append(cache)
        return cache

    def stacked_caches(self, count: int, channels: int) -> tuple[torch.Tensor, list[RowCache]]:
        """``count`` caches of ``channels`` in one contiguous tensor [count, n, C, R, Wp] (as the step kernels
        read them; at least one entry), advanced together; and a :class:`RowCache` view of each."""
        data = self.like.new_zeros((max(count, 1), self.n, channels, self.rows, self.pad + self.width + self.pad))
        self.caches.append(RowCache(self.n, channels, self.width, self.rows, self.pad, self.like,
                                    data=data.flatten(0, 1)))
        views = [RowCache(self.n, channels, self.width, self.rows, self.pad, self.like, data=data[i])
                 for i in range(count)]
        return data, views

    def window(self, conv: TapConv2d) -> CausalWindow:
        return CausalWindow(conv, self.pad)

    def advance(self) -> None:
        for cache in self.caches:
            cache.advance()

    def start_row(self, first: bool) -> None:
        self.advance()

    def output(self, x: int) -> torch.Tensor:
        raise NotImplementedError

    def scaled(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values as the model sees them: in [-1, 1], the model's dtype."""
        return scale_pixels(pixels, self.model.levels, self.dtype)

    def fill(self, x: int, pixels: torch.Tensor) -> None:
        """A given pixel [n, C] (long) at column x: fills every cache there."""
        self.image.put(x, self.scaled(pixels))
        self.output(x)

    def sample(self, x: int, channel: int | None, u: torch.Tensor, out: torch.Tensor) -> None:
        """Draws sub-pixel ``channel`` of pixel x (every channel when None: DMOL) from the draws ``u`` ([n], or
        [n, K + C]) into ``out`` [n, C] (long) and feeds the drawn value(s) back into the image cache."""
        model, out_x = self.model, self.output(x)
        if channel is None:
            with model._backend():  # the draw on the model's backend too (use_reference: the reference draw)
                values = draw_dmol(out_x, u, model.n_mixtures, model.levels, self.temperature)
            out.copy_(values)
            self.image.put(x, self.scaled(values))
            return
        levels = model.levels
        value = draw_categorical(out_x[:, channel * levels:(channel + 1) * levels], u, self.temperature)
        out[:, channel] = value
        self.image.data[:, channel, -1, self.image.pad + x] = self.scaled(value)
