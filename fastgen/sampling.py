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

Each model owns its incremental step: ``model.incremental_sampler(n, width, labels, temperature)`` returns a
:class:`fastgen.models.base.IncrementalSampler` holding the model's caches and per-pixel program. This module
only drives it: the raster loop, the randomness, the temperature, the labels, completion (``fixed_rows``),
progress and CUDA-graph capture. A new model needs no change here.
"""

from __future__ import annotations

import numbers

import torch

from fastgen.models.base import IncrementalSampler, PixelModel, draw_categorical, draw_dmol

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
            return draw_dmol(out.reshape(self.n, -1), u, self.model.n_mixtures, self.levels, self.temperature)
        return draw_categorical(out, u, self.temperature)

    def progress_bar(self, progress: bool, name: str):
        from tqdm import tqdm

        return tqdm(total=self.size[0] * self.size[1], desc=name, unit="px", disable=not progress)


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
# The model owns its incremental step (``model.incremental_sampler``: its layers, its caches, its fused kernels);
# the sampler drives the raster loop over it.


class _RowSampler:
    """Samples one row with the model's incremental sampler: draws from ``uniforms_row`` [n, D, W], writes
    ``pixels_row`` [n, C, W]. Both are fixed buffers and the calls never depend on the row index, so on CUDA one
    captured graph replays every row after the first two."""

    def __init__(self, steps: IncrementalSampler, job: _Job):
        self.steps, self.job = steps, job
        self.channels = [None] if job.model.output_kind == "dmol" else list(range(job.channels))
        width = job.size[1]
        self.uniforms_row = job.uniforms.new_zeros(job.uniforms.shape[:2] + (width,))
        self.pixels_row = job.pixels.new_zeros((job.n, job.channels, width))

    def fixed(self, pixels_row: torch.Tensor, first: bool) -> None:
        """A given row (completion): fills the caches at it."""
        self.steps.start_row(first)
        for col in range(self.job.size[1]):
            self.steps.fill(col, pixels_row[:, :, col])

    def __call__(self, first: bool) -> None:
        steps = self.steps
        steps.start_row(first)
        for col in range(self.job.size[1]):
            out = self.pixels_row[:, :, col]
            for channel in self.channels:  # DMOL: the channels of a pixel are drawn together
                u = self.uniforms_row[:, :, col] if channel is None else self.uniforms_row[:, channel, col]
                steps.sample(col, channel, u, out)


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

    def body(job: _Job):
        use_graph = job.device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        if use_graph and job.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a model on a CUDA device")
        height, width = job.size
        if job.n == 0:
            return
        steps = model.incremental_sampler(job.n, width, job.labels, job.temperature)
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
