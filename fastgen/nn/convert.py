"""``fastgen.nn.convert(model)``: swap the PixelCNN-style masked convolutions of an existing model for fastgen's.

The public PixelCNN implementations write a masked convolution as an ``nn.Conv2d`` subclass holding a fixed 0/1
mask as a buffer (or attribute) whose name contains "mask", and convolve with ``weight * mask`` (or multiply
the weight by it in place before ``F.conv2d``). :func:`convert` finds such modules, reads the tap set and the
channel grouping off the mask itself, and replaces each by a :class:`fastgen.nn.TapConv2d` that computes the
same function: the same ``weight`` and ``bias`` parameters (the same objects, so an optimizer built before
keeps working), the mask kept as a buffer of the same name, so ``state_dict`` keys and checkpoints are
unchanged.

A mask is converted when its live taps are a prefix of the window in raster order (every PixelCNN mask: A/B,
vertical and horizontal stacks, shifted convolutions, square or not), every live tap but the last is live for
every channel pair, and the last one is live for all pairs or follows the RGB channel groups, contiguous
(channel c of C in group ``c * 3 // C``) or interleaved (group ``c % 3``) (output group g sees input groups
< g or <= g), with stride 1,
dilation 1, groups 1 and the padding of a same-size output. Anything else is left alone and reported with
the reason.

The one intended difference: the masked weights get exactly zero gradient (models that mask the weight in
place give them a gradient that the next forward masks away; with gradient clipping that changes training).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from fastgen.nn.tap_conv import TapConv2d
from fastgen.taps import TapSet


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did: ``converted`` [(module name, tap set)], ``left_alone`` [(module name, why)]."""

    converted: list[tuple[str, TapSet]] = dataclasses.field(default_factory=list)
    left_alone: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fastgen.nn.convert: {len(self.converted)} masked convolution(s) converted, "
                 f"{len(self.left_alone)} left alone"]
        lines += [f"  converted  {name}: {taps.kernel_size[0]}x{taps.kernel_size[1]}, {taps.n_taps} live taps"
                  + (f", {taps.groups} {'interleaved' if taps.interleaved else 'contiguous'} channel groups "
                     f"({'strict' if taps.strict else 'inclusive'})"
                     if taps.groups > 1 else "") for name, taps in self.converted]
        lines += [f"  left alone {name}: {why}" for name, why in self.left_alone]
        return "\n".join(lines)


def _mask_of(module: nn.Conv2d) -> tuple[str, torch.Tensor] | None:
    """(name, tensor) of the module's own mask buffer or tensor attribute, if it has one."""
    for name, buffer in module.named_buffers(recurse=False):
        if "mask" in name.lower() and buffer is not None:
            return name, buffer
    for name, value in vars(module).items():
        if "mask" in name.lower() and isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            return name, value
    return None


def tap_set_of(mask: torch.Tensor, out_channels: int, in_channels: int, padding) -> TapSet:
    """The tap set whose mask is ``mask`` (any shape that broadcasts to [C_out, C_in, kh, kw]) for a stride-1
    convolution with ``padding`` ((top, left), the output as large as the input). Raises ValueError, saying
    why, when no tap set expresses it."""
    if mask.dim() < 2:
        raise ValueError(f"its mask of shape {tuple(mask.shape)} is not a [.., kh, kw] window")
    kh, kw = mask.shape[-2:]
    try:
        live = (mask.detach().to("cpu") != 0).expand(out_channels, in_channels, kh, kw)
    except RuntimeError:
        raise ValueError(f"its mask of shape {tuple(mask.shape)} does not broadcast to the weight's "
                         f"[{out_channels}, {in_channels}, {kh}, {kw}]") from None
    live = live.reshape(out_channels, in_channels, kh * kw)
    top, left = padding
    if 2 * top != kh - 1 or 2 * left != kw - 1:
        raise ValueError(f"padding {tuple(padding)} does not keep the output size of a {kh}x{kw} window")
    any_pair, every_pair = live.any(0).any(0), live.all(0).all(0)
    n_taps = int(any_pair.sum())
    if not bool(any_pair[:n_taps].all()):
        raise ValueError("its live taps are not a prefix of the window in raster order")
    if not bool(every_pair[:max(n_taps - 1, 0)].all()):
        raise ValueError("a live tap other than the last is masked for some channel pairs")
    if n_taps == 0 or bool(every_pair[n_taps - 1]):
        return TapSet((kh, kw), (top, left), n_taps)
    for interleaved in (False, True):
        for strict in (False, True):
            if not interleaved and (out_channels % 3 or in_channels % 3):
                break
            taps = TapSet((kh, kw), (top, left), n_taps, groups=3, strict=strict, interleaved=interleaved)
            if torch.equal(taps.channel_mask(out_channels, in_channels), live[:, :, n_taps - 1]):
                return taps
    raise ValueError("its last live tap connects channels in a pattern other than the RGB channel groups, "
                     "contiguous (c * 3 // C) or interleaved (c % 3)")


def _converted(module: nn.Conv2d, mask_name: str, mask: torch.Tensor) -> tuple[TapConv2d, TapSet]:
    for option, value, default in (("stride", module.stride, (1, 1)), ("dilation", module.dilation, (1, 1)),
                                   ("groups", module.groups, 1)):
        if value != default:
            raise ValueError(f"{option}={value} (fastgen's tap-set convolutions have stride 1, dilation 1, "
                             "groups 1)")
    if module.padding_mode != "zeros":
        raise ValueError(f"padding_mode={module.padding_mode!r} (the causal padding is zeros)")
    padding = module.padding
    if isinstance(padding, str):
        padding = tuple((k - 1) // 2 for k in module.kernel_size) if padding == "same" else (0, 0)
    if tuple(mask.shape[-2:]) != tuple(module.kernel_size):
        raise ValueError(f"its mask's window {tuple(mask.shape[-2:])} is not the kernel's {module.kernel_size}")
    taps = tap_set_of(mask, module.out_channels, module.in_channels, padding)
    with torch.device("meta"):  # the parameters are the module's own: nothing to allocate
        new = TapConv2d(module.in_channels, module.out_channels, taps, bias=module.bias is not None)
    new.weight, new.bias = module.weight, module.bias
    persistent = mask_name not in module._non_persistent_buffers_set
    new.register_buffer(mask_name, mask, persistent=persistent)
    new.train(module.training)
    return new, taps


def convert(model: nn.Module) -> ConversionReport:
    """Replaces, in place, every masked ``nn.Conv2d`` of ``model`` that fastgen's tap-set convolution computes
    exactly (see the module docstring); returns what was converted and what was left alone, and why."""
    report = ConversionReport()
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d) or isinstance(module, TapConv2d):
            continue
        found = _mask_of(module)
        if found is None:
            continue  # a plain convolution
        try:
            new, taps = _converted(module, *found)
        except ValueError as why:
            report.left_alone.append((name, str(why)))
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not parent_name and not child:  # the model itself is the masked convolution
            report.left_alone.append((name, "the model itself is the convolution: convert its parent"))
            continue
        setattr(parent, child, new)
        report.converted.append((name, taps))
    return report
