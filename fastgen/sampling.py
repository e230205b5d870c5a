"""Sequential sampling from the PixelCNN models: the naive sampler and the cached incremental one.

>>> pixels = fastgen.sampling.sample(model, 16, size=(28, 28), progress=True)   # LongTensor [16, C, 28, 28]

A PixelCNN generates one sub-pixel at a time in raster order (rows, then columns, then R, G, B).

* :func:`sample_naive` runs the whole network on the whole image once per sub-pixel (once per pixel for the
  DMOL output of PixelCNN++, whose channels are drawn together), as every public implementation does:
  H * W * C full forward passes.
* :func:`sample` computes each layer only where the new pixel changes it, from cached activations (the idea
  of fast-pixel-cnn, Ramachandran et al. 2017, extended to every fastgen PixelCNN model): per pixel, each
  convolution is evaluated at that one position from a padded cache of its input (its live taps only: a
  raster prefix of its window); the parts of a model that only look at rows above (the Gated PixelCNN's
  vertical stack, PixelCNN++'s up stream) are computed once per row, as a 1-row convolution. The work per
  image falls from H * W full passes to about one.

Both take the same randomness: one U[0, 1) draw per sub-pixel (``[n, C, H, W]``; a sub-pixel's value is the
first level whose softmax CDF reaches it), or for DMOL models the ``[n, K + C, H, W]`` draws of
:func:`fastgen.dmol_sample` per pixel, whose sample is then rounded to the nearest of the ``levels`` values.
Given the same ``uniforms`` (or generators seeded alike) the two samplers return the same pixels: exactly in
float64, and up to rare last-bit ties at a CDF boundary in lower precision.

Both return integer pixel values 0..levels-1, feed each drawn value back as the model's input would see it
(:func:`fastgen.models.scale_pixels`), run the model in eval mode without gradients, and take:

* ``y`` [n] class labels for a class-conditional model;
* ``x`` [n, C, H, W] integer pixels and ``fixed_rows``: the first ``fixed_rows`` rows of x are kept (image
  completion) and the rest is sampled;
* ``temperature`` > 0: the logits are divided by it (DMOL: as in :func:`fastgen.dmol_sample`);
* ``progress=True``: a tqdm progress bar over the pixels.

The cached sampler is plain PyTorch over the model's own parameters (``weight * mask``); it runs wherever the
model lives. It does not launch the fastgen kernels: at one pixel per step each layer is a [n, taps * C_in] x
[taps * C_in, C_out] product, which ``torch.addmm`` does.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from fastgen.models.base import PixelModel, scale_pixels
from fastgen.models.gated_pixelcnn import GatedPixelCNN, gated_activation
from fastgen.models.pixelcnn import PixelCNN
from fastgen.models.pixelcnnpp import PixelCNNpp, concat_elu
from fastgen.nn.tap_conv import TapConv2d
from fastgen.ops.pixel_losses import dmol_sample

__all__ = ["sample", "sample_naive", "sampling_uniforms", "uniforms_shape"]


# ----------------------------------------------------------------------------------------------- the arguments


def uniforms_shape(model: PixelModel, n: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Shape of the U[0, 1) draws a sampler uses: [n, C, H, W] (one per sub-pixel), or [n, K + C, H, W] for a
    DMOL model (:func:`fastgen.dmol_sample`'s draws per pixel)."""
    draws = model.n_mixtures + model.data_channels if model.output_kind == "dmol" else model.data_channels
    return (n, draws, *size)


def sampling_uniforms(model: PixelModel, n: int, size: tuple[int, int], generator: torch.Generator | None = None):
    """The U[0, 1) draws of one call, from ``generator`` (torch's default when None), in float64 on the
    generator's device, so one seed gives the same draws to both samplers and to any model dtype."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(uniforms_shape(model, n, size), generator=generator, dtype=torch.float64, device=device)


class _Job:
    """The checked arguments of one sampling call."""

    def __init__(self, model, n, size, y, x, fixed_rows, temperature, uniforms, generator):
        if not isinstance(model, PixelModel):
            raise TypeError(f"model must be a fastgen.models PixelCNN model (PixelCNN, GatedPixelCNN, PixelCNNpp), "
                            f"got {type(model).__name__}")
        self.model = model
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.channels, self.levels = model.data_channels, model.levels
        self.n = self._count(n, y, x, uniforms)
        self.size = self._size(size, x, uniforms)
        self.labels = self._labels(y)
        self.fixed_rows = self._fixed_rows(fixed_rows, x)
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.pixels = torch.zeros((self.n, self.channels, *self.size), dtype=torch.long, device=self.device)
        if self.fixed_rows:
            self.pixels[:, :, :self.fixed_rows] = x[:, :, :self.fixed_rows].to(self.device, torch.long)
        shape = uniforms_shape(model, self.n, self.size)
        if uniforms is None:
            uniforms = sampling_uniforms(model, self.n, self.size, generator)
        else:
            if generator is not None:
                raise ValueError("generator: pass either uniforms or generator, not both")
            if not isinstance(uniforms, torch.Tensor) or not uniforms.is_floating_point():
                raise TypeError("uniforms must be a floating tensor of U[0, 1) draws")
            if tuple(uniforms.shape) != shape:
                raise ValueError(f"uniforms must have shape {shape} ([n, {shape[1]}, H, W]), got "
                                 f"{tuple(uniforms.shape)}")
            if uniforms.numel() and not bool(((uniforms >= 0) & (uniforms < 1)).all()):
                raise ValueError("uniforms must lie in [0, 1)")
        self.uniforms = uniforms.to(self.device, self.dtype)

    def _count(self, n, y, x, uniforms) -> int:
        for name, t in (("y", y), ("x", x), ("uniforms", uniforms)):
            if n is None and isinstance(t, torch.Tensor) and t.dim() >= 1:
                n = t.shape[0]
        if n is None:
            raise ValueError("n (the number of images) is required when neither y, x nor uniforms gives it")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        return int(n)

    def _size(self, size, x, uniforms) -> tuple[int, int]:
        if size is None:
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                size = tuple(x.shape[2:])
            elif isinstance(uniforms, torch.Tensor) and uniforms.dim() == 4:
                size = tuple(uniforms.shape[2:])
            else:
                raise ValueError("size (H, W) is required when neither x nor uniforms gives it")
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            size = (size, size)
        if (not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2
                or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in size)):
            raise ValueError(f"size must be (H, W) with H, W >= 1, got {size!r}")
        return int(size[0]), int(size[1])

    def _labels(self, y):
        fake = torch.empty((self.n, self.channels, 1, 1), device=self.device)
        y = self.model.check_labels(y, fake)
        return None if y is None else y.to(self.device)

    def _fixed_rows(self, fixed_rows, x) -> int:
        if isinstance(fixed_rows, bool) or not isinstance(fixed_rows, numbers.Integral):
            raise TypeError(f"fixed_rows must be an int, got {type(fixed_rows).__name__}")
        if not 0 <= fixed_rows <= self.size[0]:
            raise ValueError(f"fixed_rows must be in [0, H = {self.size[0]}], got {fixed_rows}")
        if x is None:
            if fixed_rows:
                raise ValueError("fixed_rows > 0 needs x, the images whose first rows are kept")
            return 0
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool:
            raise TypeError(f"x must be an integer tensor of pixel values 0..{self.levels - 1}")
        shape = (self.n, self.channels, *self.size)
        if tuple(x.shape) != shape:
            raise ValueError(f"x must have shape {shape}, got {tuple(x.shape)}")
        kept = x[:, :, :fixed_rows]
        if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= self.levels):
            raise ValueError(f"x's kept rows must hold pixel values in [0, {self.levels - 1}]")
        return int(fixed_rows)

    def draw(self, out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The drawn value(s) at one pixel from the model's output there and its draws ``u``: logits [n, levels]
        with u [n] -> [n]; or DMOL parameters [n, P] with u [n, K + C] -> [n, C]."""
        if u.dim() == 2:
            params = out.reshape(self.n, -1, 1, 1)
            values = dmol_sample(params, self.model.n_mixtures, temperature=self.temperature,
                                 uniforms=u.reshape(self.n, -1, 1, 1))
            return torch.round((values.view(self.n, -1) + 1.0) * (0.5 * (self.levels - 1))).long()
        return draw_categorical(out, u, self.temperature)

    def progress_bar(self, progress: bool, name: str):
        from tqdm import tqdm

        return tqdm(total=self.size[0] * self.size[1], desc=name, unit="px", disable=not progress)


def draw_categorical(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Inverse-CDF draw from softmax(logits / temperature): logits [n, L], u [n] in [0, 1) -> [n] long, the
    first level whose CDF exceeds u (softmax in float32 for 16-bit logits)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
    below = cdf < (u.to(cdf.dtype) * cdf[:, -1])[:, None]
    return below.sum(-1).clamp_(max=logits.shape[-1] - 1)


def _run(model: PixelModel, job_args: tuple, body):
    job = _Job(model, *job_args)
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            body(job)
    finally:
        model.train(training)
    return job.pixels


# ------------------------------------------------------------------------------------------- the naive sampler


def sample_naive(model: PixelModel, n: int | None = None, *, size=None, y=None, x=None, fixed_rows: int = 0,
                 temperature: float = 1.0, uniforms=None, generator=None, progress: bool = False) -> torch.Tensor:
    """Samples by running ``model`` on the whole image once per sub-pixel (per pixel for DMOL models).

    Returns pixel values [n, C, H, W] (long, 0..levels-1) on the model's device. Arguments as
    :func:`sample`; the model runs on its own backend (``model.use_reference`` and :mod:`fastgen.dispatch`).
    """

    def body(job: _Job):
        dmol = model.output_kind == "dmol"
        height, width = job.size
        with job.progress_bar(progress, "sample_naive") as bar:
            for row in range(job.fixed_rows, height):
                for col in range(width):
                    for channel in [None] if dmol else range(job.channels):
                        out = model(job.pixels, job.labels)
                        if dmol:
                            job.pixels[:, :, row, col] = job.draw(out[:, :, row, col], job.uniforms[:, :, row, col])
                        else:
                            job.pixels[:, channel, row, col] = job.draw(out[:, :, channel, row, col],
                                                                        job.uniforms[:, channel, row, col])
                bar.update(width)

    return _run(model, (n, size, y, x, fixed_rows, temperature, uniforms, generator), body)


# ------------------------------------------------------------------------------------------ the cached sampler
#
# Every cache keeps the last ROWS rows of one activation map, the current row last; ``advance`` moves them up by
# one when a row starts. The step code then never depends on the row index: the same sequence of operations
# samples every row (after the first), which is what lets CUDA replay a row as one graph.


class _Cache:
    """The last ``rows`` rows of an activation map, zero-padded: data [n, C, rows, pad + W + pad], the current
    row at index rows - 1, pixel x of a row at column pad + x. Zeros stand for the convolutions' zero padding
    (above the image and beside it) and for pixels not computed yet, which every live tap skips."""

    def __init__(self, n: int, channels: int, width: int, rows: int, pad: int, like: torch.Tensor):
        self.pad, self.width = pad, width
        self.data = like.new_zeros((n, channels, rows, pad + width + pad))

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


class _Window:
    """One causal convolution (a :class:`fastgen.nn.TapConv2d`) evaluated at one pixel, or on one row, from a
    :class:`_Cache` of its input: the rows of its window that hold live taps, with ``weight * mask``."""

    def __init__(self, conv: TapConv2d, pad: int):
        taps = conv.taps
        (_, kw), (top, left) = taps.kernel_size, taps.padding
        self.rows = -(-taps.n_taps // kw)  # the window rows with a live tap: causal sets never pass the centre row
        self.kw, self.top, self.col0 = kw, top, pad - left
        weight = conv.weight * taps.mask(conv.out_channels, conv.in_channels, conv.weight.dtype, conv.weight.device)
        self.weight = weight[:, :, :self.rows].contiguous()  # [C_out, C_in, rows, kw]
        self.matrix = self.weight.flatten(1).t().contiguous()  # [C_in * rows * kw, C_out]
        self.bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)

    def _row_slice(self, cache: _Cache, rows_back: int) -> slice:
        first = cache.data.shape[2] - 1 - rows_back - self.top
        return slice(first, first + self.rows)

    def at(self, cache: _Cache, x: int) -> torch.Tensor:
        """The convolution's output at pixel x of the current row: [n, C_out]."""
        n = cache.data.shape[0]
        if self.rows == 0:
            return self.bias.expand(n, -1).clone()
        window = cache.data[:, :, self._row_slice(cache, 0), x + self.col0:x + self.col0 + self.kw]
        return torch.addmm(self.bias, window.reshape(n, self.matrix.shape[0]), self.matrix)

    def row(self, cache: _Cache, rows_back: int = 0) -> torch.Tensor:
        """The convolution's output on the current row (``rows_back=1``: the row above): [n, C_out, W]."""
        n, width = cache.data.shape[0], cache.width
        if self.rows == 0:
            return self.bias[None, :, None].expand(n, -1, width).clone()
        window = cache.data[:, :, self._row_slice(cache, rows_back), self.col0:self.col0 + width + self.kw - 1]
        return F.conv2d(window, self.weight, self.bias)[:, :, 0]


def _linear(conv: TapConv2d):
    """A 1x1 convolution (``fastgen.models.base.conv1x1``, channel groups masked) as (matrix [C_in, C_out],
    bias)."""
    weight = conv.weight * conv.taps.mask(conv.out_channels, conv.in_channels, conv.weight.dtype,
                                          conv.weight.device)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)
    return weight[:, :, 0, 0].t().contiguous(), bias


def _apply(linear, v: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution at one pixel: v [n, C_in] -> [n, C_out]."""
    matrix, bias = linear
    return torch.addmm(bias, v, matrix)


def _apply_row(linear, v: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution on a row: v [n, C_in, W] -> [n, W, C_out] (one pixel's outputs contiguous)."""
    matrix, bias = linear
    return torch.matmul(v.transpose(1, 2), matrix) + bias


def _cache_shape(model: PixelModel) -> tuple[int, int]:
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


def _embedding(module, labels):
    """A layer's class embedding of the labels [n, D], or None."""
    return None if module.class_embedding is None else module.class_embedding(labels)


class _Steps:
    """The cached evaluation of one model. ``image`` caches the model's input; ``start_row(first)`` advances
    every cache and computes what depends on the rows above only (``first``: row 0); ``step(x)`` evaluates the
    model at pixel x of the current row and returns its output there ([n, C * levels] logits or [n, P] DMOL
    parameters), or only fills the caches with ``output=False``."""

    def __init__(self, model: PixelModel, job: _Job, image_channels: int | None = None):
        self.rows, self.pad = _cache_shape(model)
        self.n, self.width, self.like = job.n, job.size[1], next(model.parameters())
        self.caches: list[_Cache] = []
        self.image = self.cache(model.data_channels if image_channels is None else image_channels)

    def cache(self, channels: int) -> _Cache:
        cache = _Cache(self.n, channels, self.width, self.rows, self.pad, self.like)
        self.caches.append(cache)
        return cache

    def window(self, conv: TapConv2d) -> _Window:
        return _Window(conv, self.pad)

    def advance(self) -> None:
        for cache in self.caches:
            cache.advance()


class _PixelCNNSteps(_Steps):
    """PixelCNN: every layer depends on raster-earlier positions (and lower channel groups) only, so each pixel
    step evaluates every layer at that pixel. Caches: the scaled image, and each block's masked-conv input."""

    def __init__(self, model: PixelCNN, job: _Job):
        super().__init__(model, job)
        self.input_conv = self.window(model.input_conv)
        self.blocks = [(_linear(b.reduce), self.window(b.conv), _linear(b.expand), _embedding(b, job.labels),
                        self.cache(b.conv.in_channels)) for b in model.blocks]
        self.head, self.output = _linear(model.head), _linear(model.output_conv)

    def start_row(self, first: bool) -> None:
        self.advance()

    def step(self, x: int, output: bool = True):
        t = self.input_conv.at(self.image, x)
        for reduce, conv, expand, embedding, cache in self.blocks:
            cache.put(x, torch.relu_(_apply(reduce, torch.relu(t))))
            s = conv.at(cache, x)
            if embedding is not None:
                s += embedding
            t = t + _apply(expand, torch.relu_(s))
        if output:
            return _apply(self.output, torch.relu_(_apply(self.head, torch.relu(t))))
        return None


class _GatedSteps(_Steps):
    """Gated PixelCNN: the vertical stack (and its 1x1 into the horizontal stack) depends on the rows above
    only: computed for a whole row when the row starts; the horizontal stack per pixel."""

    def __init__(self, model: GatedPixelCNN, job: _Job):
        super().__init__(model, job)
        self.groups = model.data_channels
        self.layers = []
        for layer in model.layers:
            hidden = layer.horizontal_out.out_channels
            self.layers.append(dict(
                vertical=self.window(layer.vertical), horizontal=self.window(layer.horizontal),
                vertical_to_horizontal=_linear(layer.vertical_to_horizontal),
                horizontal_out=_linear(layer.horizontal_out), embedding=_embedding(layer, job.labels),
                residual=layer.residual, v=self.cache(hidden), h=self.cache(hidden), v_to_h=None))
        self.head, self.output = _linear(model.head), _linear(model.output_conv)

    def start_row(self, first: bool) -> None:
        self.advance()
        v = self.image
        for layer in self.layers:
            v_pre = layer["vertical"].row(v)  # [n, 2h, W]
            v_to_h = _apply_row(layer["vertical_to_horizontal"], v_pre)  # [n, W, 2h]
            if layer["embedding"] is not None:
                v_pre = v_pre + layer["embedding"][:, :, None]
                v_to_h += layer["embedding"][:, None, :]
            layer["v"].put_row(gated_activation(v_pre, self.groups))
            layer["v_to_h"] = v_to_h
            v = layer["v"]

    def step(self, x: int, output: bool = True):
        h_cache, h = self.image, None
        for layer in self.layers:
            h_pre = layer["horizontal"].at(h_cache, x) + layer["v_to_h"][:, x]
            h_out = _apply(layer["horizontal_out"], gated_activation(h_pre, self.groups))
            h = h_out + h if layer["residual"] else h_out
            layer["h"].put(x, h)
            h_cache = layer["h"]
        if output:
            return _apply(self.output, torch.relu_(_apply(self.head, h)))
        return None


class _PixelCNNppSteps(_Steps):
    """PixelCNN++-lite: the up stream u depends on the rows above only (computed per row); the up-left stream
    ul per pixel. Caches: the image with its ones channel (x_pad), and each block's two concat_elu inputs."""

    def __init__(self, model: PixelCNNpp, job: _Job):
        super().__init__(model, job, image_channels=model.data_channels + 1)  # x_pad: the image + ones
        self.channels = model.data_channels
        self.u_input, self.ul_input_up = self.window(model.u_input), self.window(model.ul_input_up)
        self.ul_input_left = self.window(model.ul_input_left)
        f = model.u_input.out_channels

        def block(b):
            return dict(conv_input=self.window(b.conv_input), conv_out=self.window(b.conv_out),
                        skip=None if b.skip is None else _linear(b.skip), embedding=_embedding(b, job.labels),
                        a=self.cache(2 * f), c=self.cache(2 * f))

        self.u_blocks = [block(b) for b in model.u_blocks]
        self.ul_blocks = [block(b) for b in model.ul_blocks]
        self.output = _linear(model.output_conv)

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
            self.skips.append(_apply_row(ul_block["skip"], concat_elu(u)))  # [n, W, F]

    def step(self, x: int, output: bool = True):
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
        if output:
            return _apply(self.output, F.elu(ul))
        return None


_STEPS = {PixelCNN: _PixelCNNSteps, GatedPixelCNN: _GatedSteps, PixelCNNpp: _PixelCNNppSteps}


class _RowSampler:
    """Samples one row from the caches: draws from ``uniforms_row`` [n, D, W], writes ``pixels_row`` [n, C, W].
    Both are fixed buffers and the operations never depend on the row index, so on CUDA one captured graph
    replays every row after the first two."""

    def __init__(self, steps: _Steps, job: _Job):
        self.steps, self.job = steps, job
        self.dmol = job.model.output_kind == "dmol"
        width = job.size[1]
        self.uniforms_row = job.uniforms.new_zeros(job.uniforms.shape[:2] + (width,))
        self.pixels_row = job.pixels.new_zeros((job.n, job.channels, width))

    def fixed(self, pixels_row: torch.Tensor, first: bool) -> None:
        """A given row (completion): fills the caches at it."""
        steps, job = self.steps, self.job
        steps.start_row(first)
        for col in range(job.size[1]):
            steps.image.put(col, _scaled(job, pixels_row[:, :, col]))
            steps.step(col, output=False)

    def __call__(self, first: bool) -> None:
        steps, job, levels = self.steps, self.job, self.job.levels
        steps.start_row(first)
        for col in range(job.size[1]):
            if self.dmol:  # the channels of a pixel are drawn together
                self.pixels_row[:, :, col] = job.draw(steps.step(col), self.uniforms_row[:, :, col])
            else:  # channel by channel: each step sees the channels drawn before it
                for channel in range(job.channels):
                    if channel:
                        steps.image.put(col, _scaled(job, self.pixels_row[:, :, col]))
                    logits = steps.step(col)[:, channel * levels:(channel + 1) * levels]
                    self.pixels_row[:, channel, col] = job.draw(logits, self.uniforms_row[:, channel, col])
            steps.image.put(col, _scaled(job, self.pixels_row[:, :, col]))


def sample(model: PixelModel, n: int | None = None, *, size=None, y=None, x=None, fixed_rows: int = 0,
           temperature: float = 1.0, uniforms=None, generator=None, progress: bool = False,
           cuda_graph: bool | None = None) -> torch.Tensor:
    """Samples images from a PixelCNN model with cached incremental evaluation (see the module doc).

    Args:
        model: a :class:`fastgen.models.PixelCNN`, :class:`~fastgen.models.GatedPixelCNN` or
            :class:`~fastgen.models.PixelCNNpp` (any depth, kernel sizes, grey or RGB, conditional or not).
        n: number of images (default: from y, x or uniforms).
        size: (H, W) (default: from x or uniforms).
        y: class labels [n] (long) for a model built with ``n_classes``.
        x, fixed_rows: integer images [n, C, H, W] whose first ``fixed_rows`` rows are kept.
        temperature: > 0, divides the logits (DMOL: as :func:`fastgen.dmol_sample`).
        uniforms: the U[0, 1) draws to use, of shape :func:`uniforms_shape`; else drawn from ``generator``.
        progress: show a tqdm progress bar.
        cuda_graph: on CUDA (the default there), capture one row of steps as a CUDA graph after two eager rows
            and replay it for the others: one launch per row instead of hundreds per pixel.

    Returns:
        pixel values [n, C, H, W] (long, 0..levels-1) on the model's device, equal to :func:`sample_naive`'s
        for the same draws.
    """
    steps_class = next((s for cls, s in _STEPS.items() if isinstance(model, cls)), None)

    def body(job: _Job):
        if steps_class is None:
            raise TypeError(f"sample: no cached evaluation for {type(model).__name__}; use sample_naive")
        use_graph = job.device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        if use_graph and job.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a model on a CUDA device")
        height, width = job.size
        if job.n == 0:
            return
        steps = steps_class(model, job)
        row_sampler = _RowSampler(steps, job)
        graph = None
        with job.progress_bar(progress, "sample") as bar:
            for row in range(height):
                if row < job.fixed_rows:
                    row_sampler.fixed(job.pixels[:, :, row], first=row == 0)
                    bar.update(width)
                    continue
                row_sampler.uniforms_row.copy_(job.uniforms[:, :, row])
                if graph is not None:
                    graph.replay()
                elif use_graph and row >= max(job.fixed_rows, 1) + 1:
                    graph = _capture(lambda: row_sampler(first=False))
                    graph.replay()
                else:
                    row_sampler(first=row == 0)
                job.pixels[:, :, row] = row_sampler.pixels_row
                bar.update(width)

    return _run(model, (n, size, y, x, fixed_rows, temperature, uniforms, generator), body)


def _capture(row_program) -> "torch.cuda.CUDAGraph":
    """Captures ``row_program`` (without running it) as a CUDA graph; the eager rows before it were the
    warm-up (cuBLAS/cuDNN handles, Triton compilation)."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        row_program()
    return graph


def _scaled(job: _Job, pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values [n, C] as the model sees them: in [-1, 1], the model's dtype."""
    return scale_pixels(pixels, job.levels, job.dtype)
