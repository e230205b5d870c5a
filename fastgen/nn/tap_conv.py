"""PixelCNN convolution modules: ``nn.Conv2d`` subclasses whose forward runs :func:`fastgen.tap_conv2d`.

Parameters, initialization and ``state_dict`` are ``nn.Conv2d``'s (``weight`` [C_out, C_in, kh, kw], ``bias``);
weights outside the tap set are zeroed at construction, ignored by the forward and get zero gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from fastgen.nn import masks
from fastgen.ops.conv1x1_cross_entropy import conv1x1_cross_entropy
from fastgen.ops.tap_conv import check_mask_args, tap_conv2d
from fastgen.validation import check_choice, check_int


def _check_conv_options(cls: str, stride=1, dilation=1, groups=1, padding_mode="zeros") -> None:
    for name, value, default in (("stride", stride, 1), ("dilation", dilation, 1), ("groups", groups, 1)):
        if value not in (default, (default, default)):
            raise ValueError(f"{cls}: {name}={value!r} is not supported (PixelCNN convolutions have stride 1, "
                             f"dilation 1 and groups 1)")
    if padding_mode != "zeros":
        raise ValueError(f"{cls}: padding_mode={padding_mode!r} is not supported (the causal padding is zeros)")


class TapConv2d(nn.Conv2d):
    """A stride-1 ``nn.Conv2d`` over the live taps of ``taps``: the output has the input's height and width."""

    def __init__(self, in_channels: int, out_channels: int, taps: masks.TapSet, bias: bool = True, device=None,
                 dtype=None):
        if not isinstance(taps, masks.TapSet):
            raise TypeError(f"taps must be a fastgen.nn.masks.TapSet, got {type(taps).__name__}")
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % taps.groups and not taps.interleaved:
                raise ValueError(f"{name} ({channels}) must be divisible by data_channels ({taps.groups})")
        super().__init__(in_channels, out_channels, taps.kernel_size, bias=bias, device=device, dtype=dtype)
        self.taps = taps
        with torch.no_grad():
            self.weight.mul_(self.taps.mask(out_channels, in_channels, self.weight.dtype, self.weight.device))

    def forward(self, x: torch.Tensor, input_activation: str | None = None) -> torch.Tensor:
        """``input_activation="relu"``: the convolution of ``F.relu(x)``; ``"concat_elu"``: of
        ``F.elu(torch.cat([x, -x], 1))`` (x has in_channels / 2 channels); neither is ever stored (see
        :func:`fastgen.tap_conv2d`)."""
        return tap_conv2d(x, self.weight, self.bias, self.taps, input_activation=input_activation)

    def cross_entropy(self, x: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", *,
                      check_targets: bool = True) -> torch.Tensor:
        """The cross-entropy of this 1x1 layer's output, without storing it: ``pixel_cross_entropy(self(x),
        targets, logits_layout="channel-major")`` (C = targets.shape[1] groups of out_channels / C levels) as
        :func:`fastgen.conv1x1_cross_entropy`, PixelCNN's fused output head."""
        if self.kernel_size != (1, 1):
            raise ValueError(f"cross_entropy fuses a 1x1 convolution with the loss; this layer is "
                             f"{self.kernel_size[0]}x{self.kernel_size[1]}")
        weight = self.weight
        if self.taps.groups > 1 or self.taps.n_taps == 0:  # weight * mask: dead weights get no gradient
            mask = getattr(self, "mask", None)
            if mask is None:
                mask = self.taps.mask(self.out_channels, self.in_channels, weight.dtype, weight.device)
            weight = weight * mask.to(weight.dtype)
        return conv1x1_cross_entropy(x, weight, self.bias, targets, reduction,
                                     check_targets=check_targets)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"causal_padding={self.taps.padding}, live_taps={self.taps.n_taps}, bias={self.bias is not None}")


class MaskedConv2d(TapConv2d):
    """PixelCNN's masked convolution (van den Oord et al. 2016): ``F.conv2d(x, weight * mask, padding=k//2)``.

    Args:
        kernel_size: odd, 1 to 7.
        mask_type: "A" (the input layer: the centre pixel is not seen) or "B".
        data_channels: 1, or 3 for RGB: channels split into 3 groups (channel c of C is in group c*3//C) and
            output group g sees input groups < g (A) or <= g (B) at the centre pixel.

    The module also keeps the mask as a ``mask`` buffer, like the common ``nn.Conv2d`` + mask-buffer
    implementations, so their checkpoints load into it and its checkpoints load into them; a checkpoint
    without a mask (a plain ``nn.Conv2d``) loads too, and one with a different mask raises.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, mask_type: str = "B",
                 data_channels: int = 1, bias: bool = True, *, stride=1, padding=None, dilation=1, groups=1,
                 padding_mode="zeros", channel_groups: str = "contiguous", device=None, dtype=None):
        k = check_mask_args(kernel_size, mask_type, data_channels)
        check_choice("channel_groups", channel_groups, masks.CHANNEL_GROUPS)
        _check_conv_options("MaskedConv2d", stride, dilation, groups, padding_mode)
        if padding not in (None, "same", k // 2, (k // 2, k // 2)):
            raise ValueError(f"MaskedConv2d: padding must be None, 'same' or {k // 2} (same-size causal "
                             f"output), got {padding!r}")
        super().__init__(in_channels, out_channels, masks.masked(k, mask_type, data_channels, channel_groups), bias,
                         device, dtype)
        self.padding = (k // 2, k // 2)
        self.mask_type, self.data_channels = mask_type, data_channels
        self.register_buffer("mask", self.taps.mask(out_channels, in_channels, self.weight.dtype,
                                                    self.weight.device))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "mask"
        if key in state_dict:
            loaded = state_dict[key]
            try:
                same = torch.equal(loaded.to(self.mask.device).expand_as(self.mask) != 0, self.mask != 0)
            except RuntimeError:  # not broadcastable to the weight's shape
                same = False
            if not same:
                error_msgs.append(f"{key}: the checkpoint's mask (shape {tuple(loaded.shape)}) is not this "
                                  f"module's mask_type={self.mask_type!r}, data_channels={self.data_channels} mask")
        state_dict[key] = self.mask.clone()  # also when absent: a plain nn.Conv2d checkpoint
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"mask_type={self.mask_type!r}, data_channels={self.data_channels}, bias={self.bias is not None}")


class DownShiftedConv2d(TapConv2d):
    """PixelCNN++'s down-shifted convolution (default 2x3): output (y, x) sees the rows y-kh+1..y, columns
    x-(kw-1)/2..x+(kw-1)/2. Equals ``conv2d(F.pad(x, ((kw-1)//2, (kw-1)//2, kh-1, 0)), weight)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 3), bias: bool = True, device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, masks.down_shifted(_pair(kernel_size)), bias, device, dtype)


class DownRightShiftedConv2d(TapConv2d):
    """PixelCNN++'s down-right-shifted convolution (default 2x2): output (y, x) sees rows y-kh+1..y, columns
    x-kw+1..x. Equals ``conv2d(F.pad(x, (kw-1, 0, kh-1, 0)), weight)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 2), bias: bool = True, device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, masks.down_right_shifted(_pair(kernel_size)), bias, device,
                         dtype)


class VerticalStackConv2d(TapConv2d):
    """Gated PixelCNN's vertical stack: a (k//2+1) x k convolution over rows y-k//2..y (mask "A": ..y-1), so
    stacking it never sees the current row's future and has no blind spot."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str = "B",
                 bias: bool = True, device=None, dtype=None):
        k = check_mask_args(kernel_size, mask_type, 1)
        super().__init__(in_channels, out_channels, masks.vertical_stack(k, mask_type), bias, device, dtype)
        self.mask_type = mask_type


class HorizontalStackConv2d(TapConv2d):
    """Gated PixelCNN's horizontal stack: a 1 x (k//2+1) convolution over columns x-k//2..x of row y; mask "A"
    leaves out column x (with ``data_channels=3`` it connects lower channel groups there only)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str = "B",
                 data_channels: int = 1, bias: bool = True, device=None, dtype=None):
        k = check_mask_args(kernel_size, mask_type, data_channels)
        super().__init__(in_channels, out_channels, masks.horizontal_stack(k, mask_type, data_channels), bias,
                         device, dtype)
        self.mask_type, self.data_channels = mask_type, data_channels


def _pair(kernel_size) -> tuple[int, int]:
    if not isinstance(kernel_size, (tuple, list, torch.Size)):
        kernel_size = check_int("kernel_size", kernel_size, low=1)
        return (kernel_size, kernel_size)
    if len(kernel_size) != 2:
        raise ValueError(f"kernel_size must be an int or a pair of positive ints, got {kernel_size!r}")
    return tuple(check_int("kernel_size", k, low=1) for k in kernel_size)
