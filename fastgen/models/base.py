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
from torch import nn

from fastgen.dispatch import use_backend
from fastgen.nn import MaskedConv2d
from fastgen.taps import DATA_CHANNELS
from fastgen.validation import check_choice


def scale_pixels(pixels: torch.Tensor, levels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer pixel values 0..levels-1 -> ``2 * v / (levels - 1) - 1`` in [-1, 1], as ``dtype``."""
    return pixels.to(dtype) * (2.0 / (levels - 1)) - 1.0


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
