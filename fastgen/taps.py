"""The tap sets of PixelCNN convolutions: which taps of the window a causal convolution reads.

Every PixelCNN convolution (masked 'A'/'B', PixelCNN++'s down- and down-right-shifted convolutions, Gated
PixelCNN's vertical and horizontal stacks) is a stride-1 2-D convolution with 'same' output size, a causal
padding, and a set of live taps. In all of them the live taps are a *prefix of the kernel window in raster
order* (the rows above the centre, then the columns left of the centre), and at most one tap, the last of the
prefix, is live only for some channel pairs (RGB PixelCNN's channel groups). :class:`TapSet` states exactly
that: the Triton kernels loop over its ``n_taps`` live taps only, and the reference
(:mod:`fastgen.reference.tap_conv`) convolves with its 0/1 mask.
"""

from __future__ import annotations

import dataclasses

import torch

from fastgen.validation import check_int

MASK_TYPES = ("A", "B")
DATA_CHANNELS = (1, 3)


@dataclasses.dataclass(frozen=True)
class TapSet:
    """The live taps of a causal convolution with a ``kernel_size`` window.

    Output pixel (y, x) reads input pixel (y + i - padding[0], x + j - padding[1]) through tap (i, j); the
    output has the input's height and width. The live taps are the first ``n_taps`` of the window in raster
    order. When ``groups > 1`` the last live tap is the *centre* tap of RGB PixelCNN: input and output
    channels are split into ``groups`` groups, contiguous (channel c of C is in group ``c * groups // C``, the
    PixelRNN paper's and fastgen's) or ``interleaved`` (group ``c % groups``, as some public code builds its
    masks), and output group g reads input groups < g (``strict``, mask A) or <= g (mask B) through it. The
    grouping is applied when the live taps are packed, so it costs the convolution nothing.
    """

    kernel_size: tuple[int, int]
    padding: tuple[int, int]  # (top, left); bottom and right padding make the output size the input's
    n_taps: int
    groups: int = 1
    strict: bool = False
    interleaved: bool = False

    def __post_init__(self):
        # plain ints (NumPy integers converted, floats refused): the Triton launches take these as arguments
        for name in ("kernel_size", "padding"):
            pair = getattr(self, name)
            if not isinstance(pair, (tuple, list, torch.Size)) or len(pair) != 2:
                raise ValueError(f"{name} must be a pair of ints, got {pair!r}")
            object.__setattr__(self, name, tuple(check_int(name, v, low=0) for v in pair))
        object.__setattr__(self, "n_taps", check_int("n_taps", self.n_taps))
        object.__setattr__(self, "groups", check_int("groups", self.groups, low=1))
        object.__setattr__(self, "strict", bool(self.strict))
        object.__setattr__(self, "interleaved", bool(self.interleaved) and self.groups > 1)
        kh, kw = self.kernel_size
        if not 0 <= self.n_taps <= kh * kw:
            raise ValueError(f"n_taps must be in [0, {kh * kw}] for a {kh}x{kw} window, got {self.n_taps}")
        if self.groups > 1 and self.n_taps == 0:
            raise ValueError("a channel-group masked tap needs n_taps >= 1")

    @property
    def centre(self) -> int | None:
        """Raster index of the channel-group masked tap, or None when every live tap is fully live."""
        return self.n_taps - 1 if self.groups > 1 else None

    @property
    def taps(self) -> list[tuple[int, int]]:
        """The live taps (row, column) of the window, in the order the kernels visit them."""
        kw = self.kernel_size[1]
        return [(t // kw, t % kw) for t in range(self.n_taps)]

    def group_of(self, channel: torch.Tensor, channels: int) -> torch.Tensor:
        """The channel group of each of ``channel`` (indices into ``channels`` channels)."""
        return channel % self.groups if self.interleaved else channel * self.groups // channels

    def channel_mask(self, out_channels: int, in_channels: int, device=None) -> torch.Tensor:
        """[C_out, C_in] bool: the channel pairs that the centre tap connects (all True without groups)."""
        if self.groups == 1:
            return torch.ones(out_channels, in_channels, dtype=torch.bool, device=device)
        out_group, in_group = (self.group_of(torch.arange(n, device=device), n) for n in (out_channels, in_channels))
        if self.strict:
            return in_group[None, :] < out_group[:, None]
        return in_group[None, :] <= out_group[:, None]

    def mask(self, out_channels: int, in_channels: int, dtype=torch.float32, device=None) -> torch.Tensor:
        """The dense 0/1 mask [C_out, C_in, kh, kw] that ``weight * mask`` applies."""
        kh, kw = self.kernel_size
        live = torch.arange(kh * kw, device=device) < self.n_taps
        mask = live.view(1, 1, kh, kw).expand(out_channels, in_channels, kh, kw).clone()
        if self.centre is not None:
            mask[:, :, self.centre // kw, self.centre % kw] = self.channel_mask(out_channels, in_channels, device)
        return mask.to(dtype)

    def live_fraction(self, out_channels: int, in_channels: int) -> float:
        """Share of the dense weight's multiply-adds that touch a live weight (FLOPs the kernels do)."""
        kh, kw = self.kernel_size
        full = self.n_taps - (self.centre is not None)
        centre = self.channel_mask(out_channels, in_channels).float().mean().item() if self.centre is not None else 0
        return (full + centre) / (kh * kw)

    def diagram(self) -> str:
        """The window as text: ``x`` live, ``c`` the channel-group masked centre, ``.`` dead; ``o`` marks the
        input pixel at the output's own position."""
        (kh, kw), (top, left) = self.kernel_size, self.padding
        rows = []
        for i in range(kh):
            row = ""
            for j in range(kw):
                t = i * kw + j
                row += "c" if t == self.centre else "x" if t < self.n_taps else "o" if (i, j) == (top, left) else "."
            rows.append(row)
        return "\n".join(rows)

    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding of the input, in F.pad's order."""
        (kh, kw), (top, left) = self.kernel_size, self.padding
        return left, kw - 1 - left, top, kh - 1 - top


CHANNEL_GROUPS = ("contiguous", "interleaved")


def masked(kernel_size: int, mask_type: str = "B", data_channels: int = 1,
           channel_groups: str = "contiguous") -> TapSet:
    """PixelCNN's k x k masked convolution (van den Oord et al. 2016, PixelRNN paper's channel groups).

    Live: the rows above the centre, and on the centre row the columns left of the centre (A) or left of and
    at the centre (B); with ``data_channels=3`` the centre tap connects channel groups (A: <, B: <=), contiguous
    (channel c of C in group c * 3 // C) or interleaved (group c % 3).
    """
    k = kernel_size
    before = k * k // 2  # taps before the centre in raster order
    if data_channels == 1:
        return TapSet((k, k), (k // 2, k // 2), before + (mask_type == "B"))
    return TapSet((k, k), (k // 2, k // 2), before + 1, groups=data_channels, strict=mask_type == "A",
                  interleaved=channel_groups == "interleaved")


def down_shifted(kernel_size: tuple[int, int] = (2, 3)) -> TapSet:
    """PixelCNN++'s down-shifted convolution: output (y, x) sees rows y-kh+1..y, columns centred on x."""
    kh, kw = kernel_size
    return TapSet((kh, kw), (kh - 1, (kw - 1) // 2), kh * kw)


def down_right_shifted(kernel_size: tuple[int, int] = (2, 2)) -> TapSet:
    """PixelCNN++'s down-right-shifted convolution: output (y, x) sees rows y-kh+1..y, columns x-kw+1..x."""
    kh, kw = kernel_size
    return TapSet((kh, kw), (kh - 1, kw - 1), kh * kw)


def vertical_stack(kernel_size: int, mask_type: str = "B") -> TapSet:
    """Gated PixelCNN's vertical stack: a (k//2+1) x k window over rows y-k//2..y (mask A: ..y-1)."""
    k = kernel_size
    rows = k // 2 + 1
    return TapSet((rows, k), (k // 2, k // 2), (rows - (mask_type == "A")) * k)


def horizontal_stack(kernel_size: int, mask_type: str = "B", data_channels: int = 1) -> TapSet:
    """Gated PixelCNN's horizontal stack: a 1 x (k//2+1) window over columns x-k//2..x of row y.

    Mask A leaves out column x (or, with ``data_channels=3``, lets it connect lower channel groups only).
    """
    cols = kernel_size // 2 + 1
    if data_channels == 1:
        return TapSet((1, cols), (0, cols - 1), cols - (mask_type == "A"))
    return TapSet((1, cols), (0, cols - 1), cols, groups=data_channels, strict=mask_type == "A")
