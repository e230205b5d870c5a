"""One sub-pixel step of the cached PixelCNN samplers in one launch (see :mod:`fastgen.kernels.pixel_step`).

The models' incremental samplers (``model.incremental_sampler``) pack their weights once with
:func:`pack_window` / :func:`stack` and call the launchers here once per sub-pixel (per pixel for the DMOL
model): every layer at the new pixel from its row cache (live taps only), bias and activation fused, the output
head and the draw, the drawn value written to the pixels and fed back into the image cache. The row-level work
(the Gated PixelCNN's vertical stack, PixelCNN++'s up stream) stays with the model, once per row.

These are in-place launchers on tensors the sampler owns (caches, scratch), not differentiable ops: no
autograd Function, no custom op. They run where Triton runs (:func:`fastgen.backend_for` says "triton": CUDA, or
CPU under ``TRITON_INTERPRET=1``); elsewhere the models step in plain PyTorch.
"""

from __future__ import annotations

import dataclasses

import torch
import triton

from fastgen.dtypes import FLOAT_DTYPES, tl_compute_dtype
from fastgen.kernels import pixel_step as kernels
from fastgen.launch import Kernel
from fastgen.registry import register_family

# Tiles of every stage: [BLOCK_O outputs, BLOCK_K inputs] (512 products, 4 per thread at 4 warps); the categorical
# draw's [BLOCK_L levels, BLOCK_KL] (at most 1024 products: 256 x 4).
BLOCK_O = 32
BLOCK_K = 16
MAX_LEVELS = 256  # categorical models with more levels step in plain PyTorch
MIN_BLOCK_L = 16
MAX_MIXTURES = 16  # DMOL models with more mixture components step in plain PyTorch
DRAW_TILE = 1024

FAMILY = register_family(
    "pixel_step", __name__,
    configs={
        # One program (CTA) per image runs every layer of a sub-pixel step, 4 warps. Add configs once a GPU
        # measurement shows they pay.
        kernels.pixelcnn_step_kernel: [triton.Config({}, num_warps=4)],
        kernels.gated_step_kernel: [triton.Config({}, num_warps=4)],
        kernels.pixelcnnpp_step_kernel: [triton.Config({}, num_warps=4)],
    })

_pixelcnn_kernel = Kernel(kernels.pixelcnn_step_kernel)
_gated_kernel = Kernel(kernels.gated_step_kernel)
_pixelcnnpp_kernel = Kernel(kernels.pixelcnnpp_step_kernel)


@dataclasses.dataclass(frozen=True)
class WindowGeometry:
    """A causal convolution's live taps as the step kernels read them from a row cache: ``taps`` (raster order
    from the window's top-left), the window width ``kw``, and its (top, left) padding."""

    taps: int
    kw: int
    top: int
    left: int


def pack_window(weight: torch.Tensor, taps) -> tuple[torch.Tensor, WindowGeometry]:
    """``weight * mask`` [C_out, C_in, kh, kw] of a tap convolution (a :class:`fastgen.taps.TapSet`) -> its live
    taps [C_out, C_in * n_taps] (contiguous) and their geometry."""
    (_, kw), (top, left) = taps.kernel_size, taps.padding
    packed = weight.flatten(2)[:, :, :taps.n_taps].reshape(weight.shape[0], -1).contiguous()
    return packed, WindowGeometry(taps.n_taps, kw, top, left)


def stack(tensors: list[torch.Tensor], like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensors stacked (contiguous), or a zero [1, *shape] placeholder when there are none."""
    return torch.stack(tensors).contiguous() if tensors else like.new_zeros((1, *shape))


def block_levels(levels: int) -> int:
    return max(MIN_BLOCK_L, triton.next_power_of_2(levels))


def draw_block(levels: int) -> int:
    """The input block of the categorical draw's [BLOCK_L, BLOCK_KL] tiles (at most 1024 products)."""
    return max(1, min(BLOCK_K, DRAW_TILE // block_levels(levels)))


def block_mixtures(n_mixtures: int) -> int:
    return max(2, triton.next_power_of_2(n_mixtures))


def supports(dtype: torch.dtype, levels: int | None = None, n_mixtures: int | None = None) -> bool:
    """Whether a model of ``dtype`` (with ``levels`` categorical levels, or ``n_mixtures`` DMOL components) can
    step with these kernels: exactly the tiles :func:`kernel_launches` compiles."""
    return (dtype in FLOAT_DTYPES and (levels is None or levels <= MAX_LEVELS)
            and (n_mixtures is None or n_mixtures <= MAX_MIXTURES))


def _geometry(image: torch.Tensor) -> tuple[int, int]:
    """(rows, width_p) of the row caches."""
    return image.shape[2], image.shape[3]


def pixelcnn_step(image, cache, t, s, head, weights: dict, u, pixels, *, x: int, channel: int, draw: bool,
                  n_layers: int, input_window: WindowGeometry, conv_window: WindowGeometry, pad: int, levels: int,
                  temperature: float) -> None:
    """The PixelCNN at pixel x and, with ``draw``, the draw of sub-pixel ``channel`` (see the kernel).

    image [n, C, R, Wp]; cache [L, n, h, R, Wp]; scratch t [2, n, 2h], s [n, h], head [n, head]; ``weights``:
    w_in, b_in, w_red, b_red, w_conv, b_conv, emb (or None), w_exp, b_exp, w_head, b_head, w_out, b_out (packed,
    contiguous); u [n] the draws; pixels [n, C] int64 (strided views both)."""
    n, data_channels = image.shape[:2]
    rows, width_p = _geometry(image)
    hidden = s.shape[1]
    w = weights
    emb = w["emb"]
    _pixelcnn_kernel[(n,)](
        image, cache, t, s, head, w["w_in"], w["b_in"], w["w_red"], w["b_red"], w["w_conv"], w["b_conv"],
        w["b_red"] if emb is None else emb, w["w_exp"], w["b_exp"], w["w_head"], w["b_head"], w["w_out"],
        w["b_out"], u, pixels,
        x, channel, int(draw), data_channels, hidden, n_layers, head.shape[1], levels,
        input_window.taps, input_window.kw, input_window.top, input_window.left,
        conv_window.taps, conv_window.kw, conv_window.top, conv_window.left, rows, pad, width_p,
        u.stride(0), pixels.stride(0), pixels.stride(1), int(emb is not None), 1.0 / float(temperature),
        2.0 / (levels - 1),
        COMPUTE=tl_compute_dtype(image.dtype), BLOCK_O=BLOCK_O, BLOCK_K=BLOCK_K, BLOCK_L=block_levels(levels),
        BLOCK_KL=draw_block(levels),
    )


def gated_step(image, cache, gate, head, v2h, weights: dict, u, pixels, *, x: int, channel: int, draw: bool,
               first_window: WindowGeometry, window: WindowGeometry, pad: int, levels: int,
               temperature: float) -> None:
    """The Gated PixelCNN's horizontal stack at pixel x and, with ``draw``, the draw of sub-pixel ``channel``.

    image [n, C, R, Wp]; cache [L, n, hid, R, Wp]; scratch gate [n, hid], head [n, head]; v2h [L, n, W, 2 hid];
    ``weights``: w_h0, b_h0, w_h, b_h (layers 1..), w_ho, b_ho, w_head, b_head, w_out, b_out."""
    n, data_channels = image.shape[:2]
    rows, width_p = _geometry(image)
    n_layers, _, hidden = cache.shape[:3]
    w = weights
    _gated_kernel[(n,)](
        image, cache, gate, head, v2h, w["w_h0"], w["b_h0"], w["w_h"], w["b_h"], w["w_ho"], w["b_ho"],
        w["w_head"], w["b_head"], w["w_out"], w["b_out"], u, pixels,
        x, channel, int(draw), data_channels, hidden, n_layers, head.shape[1], levels, v2h.shape[2],
        first_window.taps, first_window.kw, first_window.left, window.taps, window.kw, window.left, rows, pad,
        width_p, u.stride(0), pixels.stride(0), pixels.stride(1), 1.0 / float(temperature), 2.0 / (levels - 1),
        COMPUTE=tl_compute_dtype(image.dtype), BLOCK_O=BLOCK_O, BLOCK_K=BLOCK_K, BLOCK_L=block_levels(levels),
        BLOCK_KL=draw_block(levels),
    )


def pixelcnnpp_step(image, a, c, ul, params, ul_up, skip, weights: dict, u, pixels, *, x: int, draw: bool,
                    left_window: WindowGeometry, window: WindowGeometry, pad: int, n_layers: int, n_mixtures: int,
                    levels: int, temperature: float) -> None:
    """PixelCNN++-lite's up-left stream at pixel x and, with ``draw``, the DMOL draw of the whole pixel.

    image [n, C + 1, R, Wp]; a, c [L, n, 2F, R, Wp]; scratch ul [2, n, F], params [n, P]; ul_up [n, W, F];
    skip [L, n, W, F]; ``weights``: w_left, b_left, w_ci, b_ci, w_co, b_co, emb (or None), w_out, b_out;
    u [n, K + C]; pixels [n, C] int64."""
    n, image_channels = image.shape[:2]
    rows, width_p = _geometry(image)
    filters = ul.shape[2]
    w = weights
    emb = w["emb"]
    data_channels = image_channels - 1
    _pixelcnnpp_kernel[(n,)](
        image, a, c, ul, params, ul_up, skip, w["w_left"], w["b_left"], w["w_ci"], w["b_ci"], w["w_co"],
        w["b_co"], w["b_co"] if emb is None else emb, w["w_out"], w["b_out"], u, pixels,
        x, int(draw), data_channels, filters, n_layers, n_mixtures, params.shape[1], levels, ul_up.shape[1],
        left_window.taps, left_window.kw, left_window.top, left_window.left, window.taps, window.kw, window.top,
        window.left, rows, pad, width_p, u.stride(0), u.stride(1), pixels.stride(0), pixels.stride(1),
        int(emb is not None), float(temperature), 1.0 / float(temperature), 2.0 / (levels - 1),
        COMPUTE=tl_compute_dtype(image.dtype), CHANNELS=data_channels, BLOCK_O=BLOCK_O, BLOCK_K=BLOCK_K,
        BLOCK_MIX=block_mixtures(n_mixtures),
    )


def _powers_of_two(low: int, high: int) -> list[int]:
    return [1 << e for e in range(low.bit_length() - 1, high.bit_length())]


def kernel_launches():
    """Every kernel configuration the launchers can start, for the sm_90/sm_80 compile check: each float dtype,
    every categorical tile (16 to 256 levels), grey and RGB DMOL with every mixture block (2 to 16 slots)."""
    from fastgen.autotune import configs_for
    from fastgen.compile_check import KernelLaunch

    for dtype in FLOAT_DTYPES:
        compute = tl_compute_dtype(dtype)
        base = dict(COMPUTE=compute, BLOCK_O=BLOCK_O, BLOCK_K=BLOCK_K)
        for kernel in (kernels.pixelcnn_step_kernel, kernels.gated_step_kernel):
            for block_l in _powers_of_two(MIN_BLOCK_L, MAX_LEVELS):
                for config in configs_for(kernel):
                    constexprs = dict(base, BLOCK_L=block_levels(block_l), BLOCK_KL=draw_block(block_l))
                    yield KernelLaunch.build(kernel, dtype, constexprs=constexprs, num_warps=config.num_warps)
        for channels in (1, 3):
            for block_mix in _powers_of_two(block_mixtures(1), MAX_MIXTURES):
                for config in configs_for(kernels.pixelcnnpp_step_kernel):
                    yield KernelLaunch.build(kernels.pixelcnnpp_step_kernel, dtype,
                                             constexprs=dict(base, CHANNELS=channels, BLOCK_MIX=block_mix),
                                             num_warps=config.num_warps)
