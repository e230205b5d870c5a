"""PixelCNN convolutions over causal tap sets: launchers, the autograd Function and the public ops.

``tap_conv2d(x, weight, bias, taps)`` equals ``F.conv2d`` of the causally padded input with
``weight * taps.mask(...)``, but the kernels visit the live taps only (see :mod:`fastgen.kernels.tap_conv`).
``masked_conv2d`` is its PixelCNN mask 'A'/'B' form.
"""

from __future__ import annotations

import functools
import itertools
import typing

import torch
import triton

from fastgen import library
from fastgen.autotune import configs_for
from fastgen.dispatch import backend_for, interpreting
from fastgen.dtypes import FLOAT_DTYPES, compute_dtype, tl_compute_dtype
from fastgen.kernels import tap_conv as kernels
from fastgen.launch import cdiv, Kernel, plan_cache
from fastgen.layout import memory_format_of
from fastgen.ops import gated_activation as gated_ops
from fastgen.reference import tap_conv as reference
from fastgen.reference.gated_activation import gated_activation as reference_gated_activation
from fastgen.registry import register_family
from fastgen.taps import DATA_CHANNELS, MASK_TYPES, TapSet, masked
from fastgen.validation import check_choice, check_float_tensor, check_int, check_int_choice, check_like


# Launch space. A GEMM program computes a [BLOCK_M pixels, BLOCK_N channels] tile and steps over the reduced
# channels BLOCK_K at a time, for every live tap; the weight gradient tiles [BLOCK_C, BLOCK_O] and reduces
# over pixels (BLOCK_M per step), split over programs until there are about MIN_PROGRAMS of them (four per SM
# of an H100/H200; how the split sums reach the dense gradient: see the paths above MIN_PROGRAMS). The tiles,
# warps and stages are triton.Configs, a small list per *class*: the math (16-bit
# tensor cores "mma", float32 on TF32 tensor cores "tf32", exact float32 and float64 on FMA units "fma"), the
# layout of the reduced channels ("nhwc": contiguous, the fast path; "nchw": anything else) and the shape
# class of the channel counts. Each class is one autotuned launcher (fastgen.launch.Kernel: timed once per
# key on the GPU, its first config under the interpreter), so a 3-channel layer is never timed on 128-wide
# reductions. The channels-last tensor-core lists add Hopper-sized tiles (128 pixels x up to 128 channels x
# 32/64 reduced channels, 8 warps = two warpgroups sharing the accumulator, 3-4 stages) to the 64x64 tiles
# of the first version; every config is compiled for sm_90 and sm_80 by the compile check, which shows 0
# spill bytes and HGMMA for each (see kernel_launches()). UNMEASURED on a GPU: chosen from what is known to
# be fast for Hopper GEMMs; benchmarks/tune_tap_conv.py sweeps them. FMA tiles stop at 32 channels: 64x64
# float32 weight-gradient tiles reached 255 registers and spilled (float64 steps of 32 channels spilled too).
#
# GEMM shape classes, from the produced (n_out) and reduced (n_red) channel counts:
#   fold     n_red < 16, forward only    (the forward of a 1- or 3-channel input layer: FOLD, see below)
#   narrow   n_out <= 16                 (the input gradient of a 1- or 3-channel input layer)
#   shallow  n_red <= 16                 (a 16-channel forward; the input gradient of a <= 16-channel output)
#   mid      n_out <= 64 or n_red <= 32
#   wide     the rest                    (PixelCNN hidden layers: 128..384 channels)
# The fold class launches the FOLD variant: it reduces over k = tap * C_in + c (BLOCK_K of those per step, each
# column of the A tile its own tap's shift) instead of (tap, block of BLOCK_K >= 16 channels), which multiplied
# 13 padding channels of 16 per tap at C_in = 3 (15 at C_in = 1): a 7x7 mask-A input layer (25 taps x 3
# channels) takes 3 steps of 32 instead of 25 of 16. Its tiles: BLOCK_K 32 over k (16 on FMA units), 64x64 and
# (16-bit channels-last) 128x128 pixels x output channels (2h = 64..256 in PixelCNNs). UNMEASURED on a GPU like
# the rest. Compiled: 34 launches x (sm_90, sm_80), 0 spill bytes, at most 234 registers (sm_80 TF32 forward,
# channels-last, relu input; 210 on sm_90), HGMMA on sm_90 / HMMA on sm_80 in 16-bit and TF32; +20% of the
# compile check's variants (106 s of compile time on 2 cores: ~53 s of wall time).
def _tiles(m, n, k, warps, stages, names=("BLOCK_M", "BLOCK_N", "BLOCK_K")) -> triton.Config:
    return triton.Config(dict(zip(names, (m, n, k))), num_warps=warps, num_stages=stages)


_NCHW_GEMM = {"fold": [_tiles(64, 64, 32, 4, 3)], "narrow": [_tiles(64, 16, 32, 4, 3)],
              "shallow": [_tiles(64, 64, 16, 4, 3)], "mid": [_tiles(64, 64, 32, 4, 3)], "wide": [_tiles(64, 64, 32, 4, 3)]}
_FMA_GEMM = {"fold": [_tiles(64, 32, 16, 4, 3)], "narrow": [_tiles(64, 16, 16, 4, 3)],
             "shallow": [_tiles(64, 32, 16, 4, 3)], "mid": [_tiles(64, 32, 16, 4, 3)], "wide": [_tiles(64, 32, 16, 4, 3)]}
GEMM_CONFIGS = {  # (math, layout) -> shape class -> configs (the first: the interpreter's)
    ("mma", "nhwc"): {
        "fold": [_tiles(64, 64, 32, 4, 3), _tiles(128, 128, 32, 8, 3)],
        "narrow": [_tiles(64, 16, 32, 4, 3), _tiles(128, 16, 64, 4, 3)],
        "shallow": [_tiles(64, 64, 16, 4, 3), _tiles(128, 128, 16, 8, 3)],
        # (128, 64, 32) with 4 warps and 4 stages spilled 4 bytes in the sm_80 input gradient: dropped
        "mid": [_tiles(64, 64, 32, 4, 3), _tiles(128, 64, 64, 4, 3)],
        "wide": [_tiles(128, 128, 64, 8, 3), _tiles(128, 128, 32, 8, 4), _tiles(128, 64, 64, 4, 4),
                 _tiles(64, 128, 64, 4, 4)],
    },
    # float32 tiles take twice the shared memory per element: reduction steps of 32 (3 stages of 128x128x32
    # are 96 KiB; steps of 64 would not fit an A100's 164 KiB)
    ("tf32", "nhwc"): {
        # fold: (128, 128, 32) with 8 warps reached 255 registers and spilled 8 bytes on sm_80 (the gathered
        # X tile's per-column addresses): dropped
        "fold": [_tiles(64, 64, 32, 4, 3)],
        "narrow": [_tiles(64, 16, 32, 4, 3), _tiles(128, 16, 32, 4, 3)],
        "shallow": [_tiles(64, 64, 16, 4, 3), _tiles(128, 128, 16, 8, 3)],
        "mid": [_tiles(64, 64, 32, 4, 3), _tiles(128, 64, 32, 4, 3)],
        "wide": [_tiles(128, 128, 32, 8, 3), _tiles(128, 64, 32, 4, 4), _tiles(64, 128, 32, 4, 4)],
    },
    ("mma", "nchw"): _NCHW_GEMM, ("tf32", "nchw"): _NCHW_GEMM,
    ("fma", "nhwc"): _FMA_GEMM, ("fma", "nchw"): _FMA_GEMM,
}


# Weight-gradient shape classes: the channel tiles of today's single config ("16x64": C_in <= 16 < C_out, ...),
# "wide" (C_in and C_out both above 64) with Hopper tiles on channels-last tensor cores, and "fold" (C_in < 16):
# the FOLD variant, whose tile rows are k = tap * C_in + c (BLOCK_C of them, each row its own shift), so a
# 3-channel 7x7 mask-A layer reduces 2 tiles of 64 rows instead of 25 of 16 rows (13 of them padding).
def _wtiles(c, o, m, warps=4, stages=3) -> triton.Config:
    return _tiles(c, o, m, warps, stages, names=("BLOCK_C", "BLOCK_O", "BLOCK_M"))


def _small_weight_grad(blocks, block_m):
    return {f"{c}x{o}": [_wtiles(c, o, block_m)] for c in blocks for o in blocks}


# Pixels per step of the small tiles, by layout: 16-bit NCHW 64x64 tiles took 254 registers at 32 pixels (119
# at 16), channels-last ones 68 (pipelined, 3 stages); float64 steps of 32 spilled.
WEIGHT_GRAD_CONFIGS = {
    ("mma", "nhwc"): dict(_small_weight_grad((16, 64), 32), fold=[_wtiles(64, 64, 32)],
                          wide=[_wtiles(128, 128, 64, 8, 3), _wtiles(128, 128, 32, 8, 4), _wtiles(64, 128, 64, 4, 3),
                                _wtiles(64, 64, 32, 4, 3)]),
    ("mma", "nchw"): dict(_small_weight_grad((16, 64), 16), fold=[_wtiles(64, 64, 16)], wide=[_wtiles(64, 64, 16)]),
    # fold: TF32 channels-last steps of 32 pixels took 254 registers on sm_80 with the relu input (no spill, no margin)
    ("tf32", "nhwc"): dict(_small_weight_grad((16, 64), 32), fold=[_wtiles(64, 64, 16)],
                           wide=[_wtiles(128, 128, 32, 8, 3), _wtiles(64, 128, 32, 4, 3), _wtiles(64, 64, 32, 4, 3)]),
    ("tf32", "nchw"): dict(_small_weight_grad((16, 64), 16), fold=[_wtiles(64, 64, 16)], wide=[_wtiles(64, 64, 16)]),
    ("fma32", "nhwc"): dict(_small_weight_grad((16, 32), 32), fold=[_wtiles(32, 32, 32)],
                            wide=[_wtiles(32, 32, 32)]),
    ("fma32", "nchw"): dict(_small_weight_grad((16, 32), 32), fold=[_wtiles(32, 32, 32)],
                            wide=[_wtiles(32, 32, 32)]),
    ("fma64", "nhwc"): dict(_small_weight_grad((16, 32), 16), fold=[_wtiles(32, 32, 16)],
                            wide=[_wtiles(32, 32, 16)]),
    ("fma64", "nchw"): dict(_small_weight_grad((16, 32), 16), fold=[_wtiles(32, 32, 16)],
                            wide=[_wtiles(32, 32, 16)]),
}
# Input activations (``input_activation``: the kernels' INPUT_ACT) are compiled variants of their own: to keep the
# compile check short they are not autotuned but take one config per class.
# * "relu" (PixelCNN's ReLU fused into the hidden layers' loads): the first of "wide" for the wide classes and of
#   "mid" ("64x64" / "32x32" for the weight gradient) for every other class, so the check builds two tiles per
#   (math, layout) and pass (one on NCHW and FMA), not every list (the fold class, another kernel variant, takes
#   its own first config). Hidden PixelCNN layers are mid or wide; a relu'd layer of <= 16 output channels runs on
#   the mid tile (BLOCK_N 64: some lanes idle). Compiled (before the fold class): 33 launches x 2 archs, 0 spill
#   bytes, at most 195 registers (sm_90 TF32 input gradient, 128x128: the gate tile), HGMMA/HMMA throughout;
#   +29% of the check's compile time.
# * "concat_elu" (PixelCNN++): the "mid" tile ("64x64" / "32x32") for every class but fold, the wide ones
#   included: its input gradient keeps two [BLOCK_M, BLOCK_N] accumulators and its forward two weight tiles per
#   step, which the 128x128 8-warp tiles would hold in twice the registers (UNMEASURED on a GPU: chosen to keep
#   clear of spills and the compile check short; one tile per (math, layout) and pass, plus fold's). Compiled:
#   40 launches x (sm_90, sm_80), 0 spill bytes, at most 212 registers (sm_90 TF32 FOLD forward, NCHW: the two
#   gathered activation tiles), weight gradient at most 184 (sm_80), HGMMA on sm_90 / HMMA on sm_80 in 16-bit
#   and TF32; 246 s of compile time on 2 cores (~2.3 minutes of wall time).
INPUT_ACTIVATIONS = (None, "relu", "concat_elu")  # the kernels' INPUT_ACT is the index


# The gate epilogues' fold launches (GATE_KIND and FOLD: two accumulators beside the gathered activation tiles) on
# float32: the fold class's tile spilled with concat_elu (sm_80 TF32 channels-last 64x64x32: 16 bytes; sm_90
# exact-FP32 NCHW 64x32x16: 4 bytes), and 64x64x16 on TF32 spilled 68-108 bytes on sm_80 once the epilogue took
# the link and the class embedding, so they run these (16 reduced steps; FMA units take 32 pixels). UNMEASURED on
# a GPU.
GATED_FOLD_CONFIGS = {"tf32": _tiles(64, 32, 16, 4, 3), "fma": _tiles(32, 32, 16, 4, 3)}
# Every other gated launch (GATE_KIND 1 and 2) takes 64 x 32 tiles: two accumulators (a and b) make it the
# registers of a 64 x 64 tile, and the epilogue's loads (residual or link, class embedding) and stores (c, y)
# and, with GATE_KIND 2, tanh and sigmoid come on top: 64 x 64 gated tiles spilled 16-84 bytes (sm_90 16-bit
# tanh gate; sm_80 TF32 and 16-bit concat_elu residual gate). The 16-bit fold launch of the tanh gate too (the
# RGB Gated PixelCNN's input layer). UNMEASURED on a GPU.
GATED_CONFIGS = {"mma": _tiles(64, 32, 32, 4, 3), "tf32": _tiles(64, 32, 32, 4, 3), "fma": _tiles(64, 32, 16, 4, 3)}


def activation_configs(kind: str, math: str, layout: str, shape_class: str, input_activation: str | None,
                       gated: bool = False) -> list[triton.Config]:
    """The one config a launch with ``input_activation`` or ``gated`` takes: the first of
    :func:`activation_class`'s list; a gated launch GATED_CONFIGS' (GATED_FOLD_CONFIGS' for a float32 fold
    launch)."""
    if gated and shape_class == "fold" and math in GATED_FOLD_CONFIGS:
        return [GATED_FOLD_CONFIGS[math]]
    if gated:
        return [GATED_CONFIGS[math]]
    table = GEMM_CONFIGS if kind == "gemm" else WEIGHT_GRAD_CONFIGS
    return table[math, layout][activation_class(kind, shape_class, math, input_activation, gated)][:1]


def activation_class(kind: str, shape_class: str, math: str, input_activation: str | None,
                     gated: bool = False) -> str:
    """The shape class whose first config a launch of ``shape_class`` with ``input_activation`` ("relu" or
    "concat_elu") or ``gated`` (the gated residual epilogue: two accumulators, as concat_elu's input gradient)
    takes (the fold class keeps its own: it is another kernel variant)."""
    if shape_class == "fold" or (shape_class == "wide" and input_activation == "relu" and not gated):
        return shape_class
    if kind == "gemm":
        return "mid"
    top = 32 if math.startswith("fma") else 64
    return f"{top}x{top}"


# The weight gradient's paths (weight_grad_path). Its kernel reduces a [BLOCK_C, BLOCK_O] tile over a range of
# pixels and writes the dense [C_out, C_in, kh, kw] gradient itself (tap t at (t // kw, t % kw), the masked
# centre channel pairs 0), so fp32 partial sums and a reduction pass remain only where they are needed:
#   direct          one range (enough tiles to fill the GPU): stored in the gradient's dtype; programs of the same
#                   launch write the bias gradient and the zeros of the dead taps: 1 launch
#   atomic          several ranges, float32/float64: tl.atomic_add (relaxed) into the zero-filled gradients:
#                   2 fills (weight, bias) + 1 launch
#   atomic+unpack   several ranges, 16-bit (no 16-bit atomics): fp32 atomics into one zero-filled sum of the live
#                   taps [n_taps, C_in, C_out] (+ [C_out]), which the unpack kernel casts and scatters: 3 launches
#   partial+unpack  several ranges under torch.use_deterministic_algorithms (atomics add in a varying order, as
#                   PyTorch's own nondeterministic kernels): the per-range partial sums [split, n_taps, C_in, C_out]
#                   that the unpack kernel adds in a fixed order: 2 launches (the only path before)
# Counted on CPU for the bench_tap_conv cases at their full shapes (launches made no-ops by fastgen.launch.dry_run
# and counted; bytes from the buffer sizes): every case splits (3 to 128 ranges), so a backward now takes one
# launch more (a zero fill: 4 with the input gradient, 3 without), and the partial sums, 0.3-44 MB written and
# read back per call before, are gone in float32 and shrink to one fp32 sum of the live taps in 16-bit (0.01-15
# MB; 3x3 B 128->128 at B=64: 33.8 MB -> 0 / 0.33 MB); the atomics add split x live taps x 4 B in L2 as
# read-modify-writes. UNMEASURED on a GPU. Compiled (sm_90, sm_80): 103 weight-gradient variants (the 16-bit
# ones twice: into the 16-bit gradient and into the fp32 sums), 0 spill bytes; the atomic epilogue costs registers:
# at most 254 (sm_80 16-bit 128x128 into fp32, 165 before; sm_90 TF32 128x128 relu input), 16-bit direct stores
# at most 201 (sm_90), float64 119. Adding the tile's even and odd columns one after the other (tl.split) took 224
# on sm_80, but the interpreter's tl.atomic_add of split halves adds wrong values (a 4x16 check; tl.store of the
# same halves is right), so that form could not be checked on CPU and is not used.
MIN_PROGRAMS = 528
MIN_STEPS_PER_SPLIT = 8  # pixel blocks each weight-gradient program reduces at least
PACK_BLOCK = 32  # [32, 32] tiles of the weight pack/unpack kernels


def _unique(configs):
    seen = {}
    for config in configs:
        seen.setdefault(str(config), config)
    return list(seen.values())


# The family, registered once: every config its kernels can launch with (the per-class lists above, for
# the compile check and the autotune table; each class's launcher takes its own list) and its benchmark cases.
FAMILY = register_family(
    "tap_conv", __name__, benchmarks="fastgen.benchmarks.bench_tap_conv",
    configs={
        kernels.tap_conv_gemm_kernel: _unique([*(c for classes in GEMM_CONFIGS.values() for cs in classes.values()
                                                 for c in cs), *GATED_FOLD_CONFIGS.values(), *GATED_CONFIGS.values()]),
        kernels.tap_conv_weight_grad_kernel: _unique(c for classes in WEIGHT_GRAD_CONFIGS.values()
                                                     for cs in classes.values() for c in cs),
        kernels.tap_conv_pack_weight_kernel: [triton.Config({}, num_warps=4)],
        kernels.tap_conv_unpack_grad_kernel: [triton.Config({}, num_warps=4)],
    })

_pack_kernel = Kernel(kernels.tap_conv_pack_weight_kernel, key=[])
_unpack_kernel = Kernel(kernels.tap_conv_unpack_grad_kernel, key=[])
# autotune keys: the exact channel counts (and the pass); the tensors' dtypes are part of every key
_KEYS = {"gemm": ["n_red", "n_out", "BACKWARD", "INPUT_ACT", "GATE_KIND"], "weight_grad": ["c_in", "c_out", "INPUT_ACT"]}
# the weight gradient's atomic paths add into their targets: zeroed again around each timed run of a tuning
_RESET_TO_ZERO = {"weight_grad": ["GRAD_W", "GRAD_B"]}


@functools.lru_cache(maxsize=None)
def _launcher(kind: str, math: str, layout: str, shape_class: str, input_activation: str | None = None,
              gated: bool = False) -> Kernel:
    """The autotuned launcher of one class (its first config alone under the interpreter, which cannot time);
    with an ``input_activation`` or ``gated`` (the gated residual epilogue) the one config of
    :func:`activation_class`."""
    fn, table = ((kernels.tap_conv_gemm_kernel, GEMM_CONFIGS) if kind == "gemm"
                 else (kernels.tap_conv_weight_grad_kernel, WEIGHT_GRAD_CONFIGS))
    reset = _RESET_TO_ZERO.get(kind, ())
    if input_activation is not None or gated:
        return Kernel(fn, key=_KEYS[kind], configs=activation_configs(kind, math, layout, shape_class,
                                                                      input_activation, gated),
                      reset_to_zero=reset)
    configs = table[math, layout][shape_class]
    return Kernel(fn, key=_KEYS[kind], configs=configs[:1] if interpreting() else configs, reset_to_zero=reset)


FOLD_BELOW = 16  # reduced channels below which the forward and the weight gradient fold the taps into k


def gemm_class(n_red: int, n_out: int, backward: bool = False) -> str:
    """The GEMM shape class of ``n_red`` reduced and ``n_out`` produced channels (see GEMM_CONFIGS); "fold"
    (the FOLD variant) for a forward of fewer than FOLD_BELOW reduced channels."""
    if n_red < FOLD_BELOW and not backward:
        return "fold"
    if n_out <= 16:
        return "narrow"
    if n_red <= 16:
        return "shallow"
    return "mid" if n_out <= 64 or n_red <= 32 else "wide"


def weight_grad_class(c_in: int, c_out: int, math: str) -> str:
    """The weight-gradient shape class (see WEIGHT_GRAD_CONFIGS); "fold" (the FOLD variant) below FOLD_BELOW
    input channels."""
    if c_in < FOLD_BELOW:
        return "fold"
    if c_in > 64 and c_out > 64:
        return "wide"
    top = 32 if math.startswith("fma") else 64
    return f"{16 if c_in <= 16 else top}x{16 if c_out <= 16 else top}"


_FP32_PRECISION = getattr(torch._C, "_get_fp32_precision_getter", None)  # torch >= 2.9


def conv_uses_tf32() -> bool:
    """Whether PyTorch multiplies a float32 convolution on TF32 tensor cores now: cuDNN's convolution precision
    (``torch.backends.cudnn.conv.fp32_precision``, inherited from ``torch.backends.cudnn.fp32_precision`` and
    ``torch.backends.fp32_precision`` when "none"; ``torch.backends.cudnn.allow_tf32`` sets it, default True).
    Read on every call (one C++ getter, ~0.2 us), so a change of the flag applies to the next call."""
    if _FP32_PRECISION is None:
        return bool(torch.backends.cudnn.allow_tf32)
    for backend, op in (("cuda", "conv"), ("cuda", "all"), ("generic", "all")):
        precision = _FP32_PRECISION(backend, op)
        if precision != "none":
            return precision == "tf32"
    return False


def math_of(dtype: torch.dtype, tf32: bool) -> str:
    """"mma" (16-bit tensor cores), "tf32" (float32 on TF32 tensor cores) or "fma" (exact float32, float64)."""
    if dtype.itemsize == 2:
        return "mma"
    return "tf32" if dtype == torch.float32 and tf32 else "fma"


def _weight_grad_math(dtype: torch.dtype, tf32: bool) -> str:
    math = math_of(dtype, tf32)
    return math if math != "fma" else f"fma{dtype.itemsize * 8}"


def _layout(t: torch.Tensor) -> str:
    """"nhwc" when the channels are contiguous (channels-last), else "nchw"."""
    return "nhwc" if t.stride(1) == 1 else "nchw"


def weight_grad_split(n_pixels: int, n_tiles: int, block_m: int) -> tuple[int, int]:
    """(splits, pixels per split) of the weight gradient's reduction over ``n_pixels`` pixels; ``block_m``: a
    multiple of the pixel step of every config that may run (pixels per split is a multiple of it)."""
    pixel_blocks = cdiv(n_pixels, block_m)
    wanted = max(1, min(cdiv(MIN_PROGRAMS, n_tiles), pixel_blocks // MIN_STEPS_PER_SPLIT))
    per_split = cdiv(pixel_blocks, wanted) * block_m
    return cdiv(n_pixels, per_split), per_split


def _upcast(dtype: torch.dtype) -> bool:
    """Under the interpreter bf16 tl.dot multiplies bit patterns: multiply the bf16 operands in fp32 there."""
    return interpreting() and dtype == torch.bfloat16


def _like_input(x: torch.Tensor, channels: int) -> torch.Tensor:
    """An empty [B, channels, H, W] tensor in x's memory format (channels-last stays channels-last)."""
    return torch.empty((x.shape[0], channels, *x.shape[2:]), dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


def _tap_args(taps: TapSet) -> tuple[int, int, int, int]:
    return taps.n_taps, taps.kernel_size[1], taps.padding[0], taps.padding[1]


def _group_args(taps: TapSet) -> tuple[int, int, int, int]:
    centre = taps.centre
    return (-1 if centre is None else centre), taps.groups, int(taps.strict), int(taps.interleaved)


def pack_weight(weight: torch.Tensor, taps: TapSet) -> torch.Tensor:
    """The live taps of ``weight`` as [n_taps, C_in, C_out] (the centre tap's channel groups masked)."""
    c_out, c_in = weight.shape[:2]
    packed = torch.empty((taps.n_taps, c_in, c_out), dtype=weight.dtype, device=weight.device)
    grid = (cdiv(c_out, PACK_BLOCK), cdiv(c_in, PACK_BLOCK), taps.n_taps)
    _pack_kernel[grid](weight, packed, c_in, c_out, taps.kernel_size[1], *_group_args(taps), *weight.stride(),
                       BLOCK_C=PACK_BLOCK, BLOCK_O=PACK_BLOCK)
    return packed


GATE_KINDS = (None, "residual", "tanh")  # the kernels' GATE_KIND: none, r + a * sigmoid(b), tanh(a) * sigmoid(b)


class GateEpilogue(typing.NamedTuple):
    """A gate in the forward GEMM's epilogue (see the kernel's GATE_KIND): ``kind`` "residual" (y = addend +
    a * sigmoid(b), addend [B, F, H, W]) or "tanh" (y = tanh(a) * sigmoid(b) of c + addend, addend
    [B, 2F, H, W] or None); ``sample_bias`` [B, 2F] or None is added to a and b (not to the saved c);
    ``groups``: c's channels form that many groups of [a, b] halves."""
    kind: str
    addend: torch.Tensor | None
    sample_bias: torch.Tensor | None
    groups: int = 1


def _gemm(source: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, taps: TapSet,
          backward: bool, like: torch.Tensor, input_activation: str | None = None,
          gate: GateEpilogue | None = None):
    """The forward (``source`` = x) or, with ``backward``, the input gradient (``source`` = grad of y).
    ``like``: x (the output's memory format; with an ``input_activation`` and ``backward`` also its gate);
    ``input_activation``: the convolution of relu(x) or concat_elu(x) (``packed`` then has 2 C_x input channels);
    ``gate`` (the forward only): the gate epilogue, returns (y, c = the convolution + bias (+ the "tanh" gate's
    addend))."""
    batch, n_red, height, width = source.shape
    c_out = packed.shape[2]
    gated = gate is not None
    # x's channels (half the weight's with concat_elu), or the output's (half the weight's with a gate)
    n_out = like.shape[1] if backward else (c_out // 2 if gated else c_out)
    out = _like_input(like, n_out)
    saved = _like_input(like, c_out) if gated else out
    addend = gate.addend if gated and gate.addend is not None else out
    sample_bias = gate.sample_bias if gated else None
    n_pixels = batch * height * width
    tf32 = source.dtype == torch.float32 and conv_uses_tf32()
    shape_class = gemm_class(n_red, n_out, backward)
    kernel = _launcher("gemm", math_of(source.dtype, tf32), _layout(source), shape_class, input_activation, gated)
    gate_read = input_activation is not None and backward  # else GATE is never read: placeholders
    kernel[lambda meta: (cdiv(n_pixels, meta["BLOCK_M"]), cdiv(n_out, meta["BLOCK_N"]))](
        source, packed, bias if bias is not None else packed, like if gate_read else out, out,
        addend, saved, sample_bias if sample_bias is not None else packed,
        n_pixels, height, width, n_red, n_out, *_tap_args(taps), int(bias is not None),
        int(gated and gate.addend is not None), int(sample_bias is not None),
        n_out // gate.groups if gated else n_out,
        *source.stride(), *out.stride(), *(like.stride() if gate_read else (0, 0, 0, 0)),
        *(saved.stride() if gated else (0, 0, 0, 0)), *(addend.stride() if gated else (0, 0, 0, 0)),
        *(sample_bias.stride() if sample_bias is not None else (0, 0)),
        *((1, c_out) if backward else (c_out, 1)),
        BACKWARD=backward, INPUT_ACT=INPUT_ACTIVATIONS.index(input_activation), UPCAST=_upcast(source.dtype),
        PRECISION="tf32" if tf32 else "ieee",
        ACC=tl_compute_dtype(source.dtype), FOLD=shape_class == "fold",
        GATE_KIND=GATE_KINDS.index(gate.kind) if gated else 0,
    )
    return (out, saved) if gated else out


def forward(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, taps: TapSet,
            input_activation: str | None = None) -> torch.Tensor:
    return _gemm(x, packed, bias, taps, backward=False, like=x, input_activation=input_activation)


def input_grad(grad_y: torch.Tensor, packed: torch.Tensor, taps: TapSet, like: torch.Tensor,
               input_activation: str | None = None) -> torch.Tensor:
    """The input gradient; ``like``: the forward's input x (the activation's gate with an ``input_activation``:
    relu's gradient is 0 where x <= 0)."""
    return _gemm(grad_y, packed, None, taps, backward=True, like=like, input_activation=input_activation)


@plan_cache
def _weight_grad_plan(n_pixels: int, c_in: int, c_out: int, n_taps: int, math: str, layout: str,
                      input_activation: str | None = None):
    """(shape class, splits, pixels per split): the split is fixed before autotuning picks a tile, from the
    class's first config, in multiples of every config's pixel step (with an input activation: the one config
    it launches)."""
    shape_class = weight_grad_class(c_in, c_out, math)
    configs = WEIGHT_GRAD_CONFIGS[math, layout][shape_class]
    if input_activation is not None:
        configs = WEIGHT_GRAD_CONFIGS[math, layout][activation_class("weight_grad", shape_class, math,
                                                                     input_activation)][:1]
    first = configs[0].kwargs
    step = max(c.kwargs["BLOCK_M"] for c in configs)
    rows = cdiv(n_taps * c_in, first["BLOCK_C"]) if shape_class == "fold" else n_taps * cdiv(c_in, first["BLOCK_C"])
    n_tiles = rows * cdiv(c_out, first["BLOCK_O"])
    return (shape_class, *weight_grad_split(n_pixels, n_tiles, step))


def weight_grad_path(split: int, dtype: torch.dtype) -> str:
    """How the weight gradient's reduction over ``split`` pixel ranges reaches the dense gradient of ``dtype``:
    "direct" (one range: the kernel stores the tiles and the zeros of the dead taps, one launch), "atomic"
    (float32/float64: atomics in that dtype straight into the zeroed gradient), "atomic+unpack" (16-bit: fp32 atomics
    into a zeroed [n_taps, C_in, C_out] sum, which the unpack kernel casts and scatters) or "partial+unpack"
    (under ``torch.use_deterministic_algorithms``: per-range partial sums added in a fixed order by the unpack
    kernel; atomics add in a varying order, as PyTorch's own nondeterministic kernels do)."""
    if split == 1:
        return "direct"
    if torch.are_deterministic_algorithms_enabled():
        return "partial+unpack"
    return "atomic" if compute_dtype(dtype) == dtype else "atomic+unpack"


def _aligned(n: int) -> int:
    """``n`` elements rounded up to 16 (so that a view starting there is 16-byte aligned, as Triton compiles)."""
    return cdiv(n, 16) * 16


def _unpack(partial: torch.Tensor, bias_partial: torch.Tensor, taps: TapSet, grad_weight: torch.Tensor,
            has_bias: bool) -> torch.Tensor | None:
    """Adds the partial sums [split, n_taps, C_in, C_out] (and [split, C_out]) into ``grad_weight`` (masked,
    zeros at the dead taps); returns the bias gradient (or None)."""
    split, _, c_in, c_out = partial.shape
    grad_bias = torch.empty(c_out, dtype=grad_weight.dtype, device=grad_weight.device) if has_bias else None
    kw = taps.kernel_size[1]
    grid = (cdiv(c_out, PACK_BLOCK), cdiv(c_in, PACK_BLOCK), taps.kernel_size[0] * kw)
    _unpack_kernel[grid](
        partial, bias_partial, grad_weight, grad_bias if has_bias else grad_weight,
        split, taps.n_taps, c_in, c_out, kw, *_group_args(taps), *grad_weight.stride(),
        HAS_BIAS=has_bias, ACC=tl_compute_dtype(grad_weight.dtype), BLOCK_C=PACK_BLOCK, BLOCK_O=PACK_BLOCK,
    )
    return grad_bias


def _partial_strides(n_taps: int, c_in: int, c_out: int, kernel_w: int) -> tuple[int, ...]:
    """(stride_ws, stride_wo, stride_wc, stride_wh, stride_ww) of partial sums [split, n_taps, C_in, C_out] as
    the kernel addresses them (tap t at (t // kernel_w, t % kernel_w))."""
    per_tap = c_in * c_out
    return n_taps * per_tap, 1, c_out, kernel_w * per_tap, per_tap


def weight_grad(x: torch.Tensor, grad_y: torch.Tensor, taps: TapSet, grad_weight: torch.Tensor,
                has_bias: bool, input_activation: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Writes the dense weight's gradient into ``grad_weight`` (zero at dead taps and masked channel pairs);
    returns it with the bias gradient (or None). ``input_activation``: the forward convolved relu(x) or
    concat_elu(x) (the weight's C_in is then 2 C_x). The path (:func:`weight_grad_path`) follows the split of the
    plan: 1 launch (direct), 2-3 (atomic: zero fills of the gradients, then the kernel), 3 (16-bit atomic: one
    zero fill, the kernel, the unpack) or 2 (deterministic: the kernel, the unpack)."""
    batch, c_x, height, width = x.shape
    c_in = 2 * c_x if input_activation == "concat_elu" else c_x  # the weight's input channels
    c_out = grad_y.shape[1]
    n_pixels = batch * height * width
    acc_dtype = compute_dtype(x.dtype)
    tf32 = x.dtype == torch.float32 and conv_uses_tf32()
    math, layout = _weight_grad_math(x.dtype, tf32), _layout(x)
    shape_class, split, per_split = _weight_grad_plan(n_pixels, c_in, c_out, taps.n_taps, math, layout,
                                                      input_activation)
    kernel = _launcher("weight_grad", math, layout, shape_class, input_activation)
    n_taps, fold = taps.n_taps, shape_class == "fold"
    kh, kw = taps.kernel_size
    if grad_weight.numel() >= 2 ** 31:  # the kernel's offsets into the gradient are int32
        raise ValueError(f"weight must have fewer than 2**31 elements, got shape {tuple(grad_weight.shape)}")
    path = weight_grad_path(split, x.dtype)
    grad_bias = partial = bias_partial = None
    zero_rows = path == "direct"  # programs writing the dead taps' zeros (the other paths' targets hold them)
    if path in ("direct", "atomic"):  # the kernel writes the dense gradients
        if path == "atomic":
            grad_weight.zero_()
        grad_bias = (torch.empty if path == "direct" else torch.zeros)(c_out, dtype=x.dtype, device=x.device) \
            if has_bias else None
        target, target_bias = grad_weight, grad_bias if has_bias else grad_weight
        strides = (0, *grad_weight.stride())
    else:  # partial sums in ACC: one (atomic: zeroed, bias and weight in one fill) or one per split
        n_sums = 1 if path == "atomic+unpack" else split
        offset = _aligned(n_sums * c_out)
        sums = (torch.zeros if path == "atomic+unpack" else torch.empty)(
            offset + n_sums * n_taps * c_in * c_out, dtype=acc_dtype, device=x.device)
        bias_partial = sums[:n_sums * c_out].view(n_sums, c_out)
        partial = sums[offset:].view(n_sums, n_taps, c_in, c_out)
        target, target_bias = partial, bias_partial
        strides = _partial_strides(n_taps, c_in, c_out, kw)
        if path == "atomic+unpack":
            strides = (0, *strides[1:])
    atomic = path.startswith("atomic")

    def grid(meta):  # (output channel blocks, (tap, channel) blocks or with FOLD blocks of k (+1: bias) (+ the
        # dead taps' zero rows), split)
        rows = cdiv(n_taps * c_in, meta["BLOCK_C"]) if fold else n_taps * cdiv(c_in, meta["BLOCK_C"])
        zeros = cdiv((kh * kw - n_taps) * c_in, meta["BLOCK_C"]) if zero_rows else 0
        return cdiv(c_out, meta["BLOCK_O"]), rows + has_bias + zeros, split

    kernel[grid](
        x, grad_y, target, target_bias,
        n_pixels, height, width, c_in, c_out, *_tap_args(taps), per_split, int(has_bias),
        *x.stride(), *grad_y.stride(),
        kh * kw, *_group_args(taps), int(atomic), strides[0], 0 if atomic else c_out, *strides[1:],
        UPCAST=_upcast(x.dtype), PRECISION="tf32" if tf32 else "ieee", ACC=tl_compute_dtype(x.dtype),
        INPUT_ACT=INPUT_ACTIVATIONS.index(input_activation), FOLD=fold,
    )
    if partial is not None:
        grad_bias = _unpack(partial, bias_partial, taps, grad_weight, has_bias)
    return grad_weight, grad_bias


def _tap_conv_forward(x, weight, bias, taps: TapSet, input_activation: str | None = None):
    """(y, the packed live taps the backward reads; None without work: y is then the bias, no kernel runs).
    ``input_activation``: y is the convolution of relu(x) or concat_elu(x)."""
    if x.numel() == 0 or weight.numel() == 0 or taps.n_taps == 0:
        y = _like_input(x, weight.shape[0])
        return (y.zero_() if bias is None else y.copy_(bias.view(1, -1, 1, 1).expand(y.shape))), None
    packed = pack_weight(weight, taps)
    return forward(x, packed, bias, taps, input_activation), packed


def _tap_conv_backward(grad_y, x, packed, taps: TapSet, weight_like, has_bias, want_x, want_params,
                       input_activation: str | None = None):
    """(grad of x, grad of weight, grad of bias), None where not wanted. ``packed``: the forward's, None
    without work; ``weight_like``: (shape, empty's keywords) of the weight gradient; ``want_params``: the weight
    and bias gradients (one kernel computes both); ``input_activation``: the forward convolved relu(x) or
    concat_elu(x) (``x`` is the input before the activation)."""
    grad_x = grad_weight = grad_bias = None
    if packed is None:
        if want_x:
            grad_x = torch.zeros_like(x)
        if want_params:
            grad_weight = torch.empty(weight_like[0], **weight_like[1]).zero_()
            grad_bias = grad_y.sum((0, 2, 3)) if has_bias else None
        return grad_x, grad_weight, grad_bias
    if want_x:
        grad_x = input_grad(grad_y, packed, taps, x, input_activation)
    if want_params:
        grad_weight, grad_bias = weight_grad(x, grad_y, taps, torch.empty(weight_like[0], **weight_like[1]),
                                             has_bias, input_activation)
    return grad_x, grad_weight, grad_bias


class TapConv(torch.autograd.Function):
    """(x, weight, bias, taps, input_activation=None) -> the causal convolution of x (of relu(x) or
    concat_elu(x) with ``input_activation`` "relu" or "concat_elu", which is never stored: the kernels apply it
    to the tiles they load) with the live taps of weight.

    Forward: one kernel packs the live taps of the weight (masking the centre tap's channel groups), one
    computes the output (bias included). Backward: one kernel for the input gradient and one for the weight and
    bias gradients, which writes the dense weight gradient itself when its reduction over pixels is not split; a
    split reduction adds with atomics into zero-filled float32/float64 gradients (16-bit: into an fp32 sum that a
    third kernel casts), or, under ``torch.use_deterministic_algorithms``, stores partial sums that a third kernel
    adds in a fixed order (see :func:`weight_grad_path`). Without work to
    do (an empty tensor, no live tap as in a 1x1 mask A) the output is the bias and no kernel runs.
    Prefer :func:`fastgen.tap_conv2d`, which validates arguments and picks the backend.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, taps, input_activation=None):
        ctx.taps, ctx.has_bias, ctx.input_activation = taps, bias is not None, input_activation
        # the backward needs the packed live taps, not the dense weight: keep only how to allocate its gradient
        ctx.weight_like = (weight.shape, dict(dtype=weight.dtype, device=weight.device,
                                              memory_format=memory_format_of(weight)))
        y, packed = _tap_conv_forward(x, weight, bias, taps, input_activation)
        ctx.save_for_backward(x, packed)  # x before the activation: the backward recomputes it and its gate
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, packed = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = _tap_conv_backward(
            grad_y, x, packed, ctx.taps, ctx.weight_like, ctx.has_bias, ctx.needs_input_grad[0],
            ctx.needs_input_grad[1] or ctx.needs_input_grad[2], ctx.input_activation)
        return grad_x, grad_weight, grad_bias, None, None


# ---------------------------------------------------------------------------------------------- gated
# PixelCNN++'s gated resnet ends in y = r + a * sigmoid(b), [a, b] = c = conv(...) (2F channels): eagerly c is
# written (2F), b read and sigmoid(b) written (F + F), a and sigmoid(b) read and their product written (3F), r and
# the product read and y written (3F): 10F values per pixel, and autograd keeps c (a is a view) and sigmoid(b)
# (3F). The GATE_KIND 1 epilogue computes a and b in two accumulators of one program (P's columns j and F + j) and
# writes c (2F, for the backward) and y (F) after reading r (F): 4F values, and c alone kept (2F). The
# backward forms dc = [dy * s, dy * a * s * (1 - s)] (s = sigmoid(b), from the saved c) and runs the
# convolution's backward on it; dr = dy.
# The Gated PixelCNN's stacks end in y = tanh(a) * sigmoid(b) of c + other + e (other: the vertical stack's
# link into the horizontal one, e: a class embedding [B, 2F]): unfused the convolution writes c (2F) and the
# gate kernel (fastgen.gated_activation) reads c and other (4F) and writes the sum s (2F, for the backward)
# and y (F): 9F values per pixel. The GATE_KIND 2 epilogue reads other (2F) and writes s and y: 5F (the vertical
# stack, without other: 3F of 5F, c saved as the link's input). Its backward is gated_activation's (one
# kernel from s to ds), then the convolution's.
def _gate_value(gate: GateEpilogue, c: torch.Tensor) -> torch.Tensor:
    """The gate of the saved ``c`` in plain PyTorch (the no-work path; nothing is launched there)."""
    if gate.kind == "tanh":
        return reference_gated_activation(c, None, gate.sample_bias, groups=gate.groups)
    return reference.gated_residual(c, gate.addend, gate.sample_bias)


def _gated_forward(x, weight, bias, taps: TapSet, gate: GateEpilogue, input_activation: str | None = None):
    """(y, c = the convolution + bias (+ the "tanh" gate's addend): what the backward reads, the packed live
    taps; None without work: no kernel runs)."""
    if x.numel() == 0 or weight.numel() == 0 or taps.n_taps == 0:
        c = _like_input(x, weight.shape[0])
        c = c.zero_() if bias is None else c.copy_(bias.view(1, -1, 1, 1).expand(c.shape))
        if gate.kind == "tanh" and gate.addend is not None:
            c += gate.addend
        return _like_input(x, weight.shape[0] // 2).copy_(_gate_value(gate, c)), c, None
    packed = pack_weight(weight, taps)
    y, c = _gemm(x, packed, bias, taps, backward=False, like=x, input_activation=input_activation, gate=gate)
    return y, c, packed


def _gate_grad(kind: str, grad_y: torch.Tensor, c: torch.Tensor, sample_bias: torch.Tensor | None,
               groups: int, tanh_backward) -> torch.Tensor:
    """The gradient of the saved c from that of y. "residual" (y = r + a * sigmoid(b)): computed in float32 for
    16-bit inputs (rounded once, as the kernels' epilogues round); "tanh": ``tanh_backward(c, sample_bias, grad_y,
    groups)``, gated_activation's backward kernel (its eager launcher, or its custom op when traced)."""
    if kind == "tanh":
        return tanh_backward(c, sample_bias, grad_y, groups) if c.numel() else torch.zeros_like(c)
    dtype = c.dtype
    compute = torch.float32 if dtype.itemsize == 2 else dtype
    c = c.to(compute)
    if sample_bias is not None:
        c = c + sample_bias.to(compute)[:, :, None, None]
    value, gate = c.chunk(2, 1)
    s = torch.sigmoid(gate)
    grad_value = grad_y.to(compute) * s
    return torch.cat([grad_value, grad_value * value * (1 - s)], 1).to(dtype)


def _gated_grads(ctx, grad_y, grad_c, c, sample_bias, tanh_backward):
    """(the gradient reaching the convolution's output, that of the addend, that of the sample bias), None
    where not wanted: ``ctx.needs_input_grad``'s addend and sample bias entries are at ``ctx.gate_inputs``."""
    grad_s = None if grad_y is None else _gate_grad(ctx.gate_kind, grad_y, c, sample_bias, ctx.gate_groups,
                                                    tanh_backward)
    grad_conv = grad_s if grad_c is None else grad_c if grad_s is None else grad_s + grad_c
    want_addend, want_sample_bias = (ctx.needs_input_grad[i] for i in ctx.gate_inputs)
    grad_addend = grad_sample_bias = None
    if want_addend and grad_y is not None:
        grad_addend = grad_y if ctx.gate_kind == "residual" else grad_s
    if want_sample_bias and grad_s is not None:
        grad_sample_bias = grad_s.sum((2, 3))
    return grad_conv, grad_addend, grad_sample_bias


class GatedTapConv(torch.autograd.Function):
    """(x, weight, bias, taps, gate_kind, addend, sample_bias, gate_groups, input_activation) -> (y, c): the
    causal convolution of x (or of its ``input_activation``) with the live taps of weight, gated in the GEMM's
    epilogue (see :class:`GateEpilogue`): "residual", y = addend + a * sigmoid(b); "tanh", y = tanh(a) *
    sigmoid(b) of c + addend; ``sample_bias`` added to a and b. c is the convolution (+ bias, + the "tanh" gate's
    addend), which the backward reads. The backward forms the gate's gradient, then runs the convolution's.
    Prefer :func:`fastgen.ops.tap_conv.tap_conv2d_gated_residual` and :func:`fastgen.tap_conv2d_gated`."""

    @staticmethod
    def forward(ctx, x, weight, bias, taps, gate_kind, addend, sample_bias, gate_groups, input_activation=None):
        ctx.taps, ctx.has_bias, ctx.input_activation = taps, bias is not None, input_activation
        ctx.gate_kind, ctx.gate_groups, ctx.gate_inputs = gate_kind, gate_groups, (5, 6)
        ctx.weight_like = (weight.shape, dict(dtype=weight.dtype, device=weight.device,
                                              memory_format=memory_format_of(weight)))
        gate = GateEpilogue(gate_kind, addend, sample_bias, gate_groups)
        y, c, packed = _gated_forward(x, weight, bias, taps, gate, input_activation)
        ctx.save_for_backward(x, c, packed, sample_bias)
        ctx.set_materialize_grads(False)
        return y, c

    @staticmethod
    def backward(ctx, grad_y, grad_c):
        x, c, packed, sample_bias = ctx.saved_tensors
        grad_conv, grad_addend, grad_sample_bias = _gated_grads(ctx, grad_y, grad_c, c, sample_bias,
                                                                gated_ops.gated_backward)
        grad_x = grad_weight = grad_bias = None
        if grad_conv is not None:
            grad_x, grad_weight, grad_bias = _tap_conv_backward(
                grad_conv, x, packed, ctx.taps, ctx.weight_like, ctx.has_bias, ctx.needs_input_grad[0],
                ctx.needs_input_grad[1] or ctx.needs_input_grad[2], ctx.input_activation)
        return grad_x, grad_weight, grad_bias, None, None, grad_addend, grad_sample_bias, None, None


# ---------------------------------------------------------------------------------------------- custom ops
# The same launches as torch.ops.fastgen.* for torch.compile (see fastgen.library). A TapSet is no schema type:
# the ops take its fields and rebuild it (cached). The forward op also returns the packed live taps, which its
# backward op reads as the Function's backward does (no repack: the same launches as eager; a placeholder
# without work); the public function drops them.
_TAPS_SCHEMA = "int[] kernel_size, int[] padding, int n_taps, int groups, bool strict, bool interleaved"


@functools.lru_cache(maxsize=None)
def _tap_set(kernel_size: tuple[int, ...], padding: tuple[int, ...], n_taps: int, groups: int,
             strict: bool, interleaved: bool) -> TapSet:
    return TapSet(kernel_size, padding, n_taps, groups, strict, interleaved)


def _taps_of(kernel_size, padding, n_taps, groups, strict, interleaved) -> TapSet:
    return _tap_set(tuple(kernel_size), tuple(padding), n_taps, groups, strict, interleaved)


def _tap_fields(taps: TapSet) -> tuple:
    """``taps`` as the custom ops' arguments (see ``_TAPS_SCHEMA``)."""
    return list(taps.kernel_size), list(taps.padding), taps.n_taps, taps.groups, taps.strict, taps.interleaved


@library.custom_op("tap_conv2d", f"(Tensor x, Tensor weight, Tensor? bias, {_TAPS_SCHEMA}, str? input_activation) "
                   "-> (Tensor, Tensor)")
def _tap_conv_op(x, weight, bias, kernel_size, padding, n_taps, groups, strict, interleaved, input_activation):
    """(y, the packed live taps [n_taps, C_in, C_out] or a placeholder without work)."""
    taps = _taps_of(kernel_size, padding, n_taps, groups, strict, interleaved)
    y, packed = _tap_conv_forward(x, weight, bias, taps, input_activation)
    return y, library.nothing(weight) if packed is None else packed


@_tap_conv_op.register_fake
def _(x, weight, bias, kernel_size, padding, n_taps, groups, strict, interleaved, input_activation):
    c_out, c_in = weight.shape[:2]
    no_work = x.numel() == 0 or weight.numel() == 0 or n_taps == 0
    return (_like_input(x, c_out),
            library.nothing(weight) if no_work else weight.new_empty((n_taps, c_in, c_out)))


@library.custom_op("tap_conv2d_backward", "(Tensor grad_y, Tensor x, Tensor packed, SymInt[] weight_shape, "
                   f"bool weight_channels_last, {_TAPS_SCHEMA}, bool has_bias, bool grad_x, bool grad_params, "
                   "str? input_activation) "
                   "-> (Tensor, Tensor, Tensor)")
def _tap_conv_backward_op(grad_y, x, packed, weight_shape, weight_channels_last, kernel_size, padding, n_taps,
                          groups, strict, interleaved, has_bias, grad_x, grad_params, input_activation):
    """(grad of x, grad of weight, grad of bias), placeholders where not wanted; an empty ``packed``: no work."""
    grads = _tap_conv_backward(
        grad_y, x, packed if packed.numel() else None,
        _taps_of(kernel_size, padding, n_taps, groups, strict, interleaved),
        _weight_like(weight_shape, weight_channels_last, x), has_bias, grad_x, grad_params, input_activation)
    return tuple(library.nothing(x) if g is None else g for g in grads)


@_tap_conv_backward_op.register_fake
def _(grad_y, x, packed, weight_shape, weight_channels_last, kernel_size, padding, n_taps, groups, strict,
      interleaved, has_bias, grad_x, grad_params, input_activation):
    shape, like = _weight_like(weight_shape, weight_channels_last, x)
    grad_input = library.nothing(x)
    if grad_x:  # as the launch: zeros_like without work, else an empty tensor in x's memory format
        grad_input = torch.empty_like(x) if packed.numel() == 0 else _like_input(x, x.shape[1])
    return (grad_input, torch.empty(shape, **like) if grad_params else library.nothing(x),
            x.new_empty(weight_shape[0]) if grad_params and has_bias else library.nothing(x))


def _weight_like(weight_shape, channels_last: bool, x: torch.Tensor):
    """(shape, empty's keywords) of the weight gradient: x's dtype and device (the weight's, as checked)."""
    return tuple(weight_shape), dict(dtype=x.dtype, device=x.device,
                                     memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _setup_tap_conv(ctx, inputs, output):
    x, weight, bias, kernel_size, padding, n_taps, groups, strict, interleaved, input_activation = inputs
    ctx.save_for_backward(x, output[1])  # x before the activation
    ctx.args = (list(weight.shape), memory_format_of(weight) == torch.channels_last, kernel_size, padding, n_taps,
                groups, strict, interleaved, bias is not None)
    ctx.input_activation = input_activation


def _tap_conv_op_backward(ctx, grad_y, _grad_packed):
    x, packed = ctx.saved_tensors
    want_x, want_weight, want_bias = ctx.needs_input_grad[:3]
    grad_x, grad_weight, grad_bias = torch.ops.fastgen.tap_conv2d_backward(
        grad_y, x, packed, *ctx.args, want_x, want_weight or want_bias, ctx.input_activation)
    return ((grad_x if want_x else None), (grad_weight if want_weight else None),
            (grad_bias if want_bias else None), None, None, None, None, None, None, None)


_tap_conv_op.register_autograd(_tap_conv_op_backward, setup_context=_setup_tap_conv)


@library.custom_op("tap_conv2d_gated", f"(Tensor x, Tensor weight, Tensor? bias, {_TAPS_SCHEMA}, str gate_kind, "
                   "Tensor? addend, Tensor? sample_bias, int gate_groups, str? input_activation) "
                   "-> (Tensor, Tensor, Tensor)")
def _gated_op(x, weight, bias, kernel_size, padding, n_taps, groups, strict, interleaved, gate_kind, addend,
              sample_bias, gate_groups, input_activation):
    """(y, c, the packed live taps or a placeholder without work): :class:`GatedTapConv`'s launches."""
    taps = _taps_of(kernel_size, padding, n_taps, groups, strict, interleaved)
    y, c, packed = _gated_forward(x, weight, bias, taps, GateEpilogue(gate_kind, addend, sample_bias, gate_groups),
                                  input_activation)
    return y, c, library.nothing(weight) if packed is None else packed


@_gated_op.register_fake
def _(x, weight, bias, kernel_size, padding, n_taps, groups, strict, interleaved, gate_kind, addend, sample_bias,
      gate_groups, input_activation):
    c_out, c_in = weight.shape[:2]
    no_work = x.numel() == 0 or weight.numel() == 0 or n_taps == 0
    return (_like_input(x, c_out // 2), _like_input(x, c_out),
            library.nothing(weight) if no_work else weight.new_empty((n_taps, c_in, c_out)))


def _setup_gated(ctx, inputs, output):
    (x, weight, bias, kernel_size, padding, n_taps, groups, strict, interleaved, gate_kind, addend, sample_bias,
     gate_groups, input_activation) = inputs
    ctx.save_for_backward(x, output[1], output[2], sample_bias)
    ctx.args = (list(weight.shape), memory_format_of(weight) == torch.channels_last, kernel_size, padding, n_taps,
                groups, strict, interleaved, bias is not None)
    ctx.input_activation = input_activation
    ctx.gate_kind, ctx.gate_groups, ctx.gate_inputs = gate_kind, gate_groups, (10, 11)


def _gated_op_backward(ctx, grad_y, grad_c, _grad_packed):
    x, c, packed, sample_bias = ctx.saved_tensors
    grad_conv, grad_addend, grad_sample_bias = _gated_grads(ctx, grad_y, grad_c, c, sample_bias,
                                                            torch.ops.fastgen.gated_activation_backward)
    want_x, want_weight, want_bias = ctx.needs_input_grad[:3]
    grad_x = grad_weight = grad_bias = None
    if grad_conv is not None:
        grad_x, grad_weight, grad_bias = torch.ops.fastgen.tap_conv2d_backward(
            grad_conv, x, packed, *ctx.args, want_x, want_weight or want_bias, ctx.input_activation)
    return ((grad_x if want_x else None), (grad_weight if want_weight else None),
            (grad_bias if want_bias else None), None, None, None, None, None, None, None,
            grad_addend, grad_sample_bias, None, None)


_gated_op.register_autograd(_gated_op_backward, setup_context=_setup_gated)


def _check_arguments(x, weight, bias, taps: TapSet, input_activation: str | None = None) -> None:
    check_choice("input_activation", input_activation, INPUT_ACTIVATIONS)
    check_float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-d tensor [B, C_in, H, W], got shape {tuple(x.shape)}")
    check_float_tensor("weight", weight)
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but x has dtype {x.dtype}")
    c_in = 2 * x.shape[1] if input_activation == "concat_elu" else x.shape[1]
    if weight.dim() != 4 or tuple(weight.shape[2:]) != tuple(taps.kernel_size) or weight.shape[1] != c_in:
        raise ValueError(f"weight must have shape [C_out, {c_in}, {taps.kernel_size[0]}, {taps.kernel_size[1]}] "
                         f"for x of shape {tuple(x.shape)}"
                         + (" with input_activation='concat_elu' (2 * C_x input channels)"
                            if input_activation == "concat_elu" else "") + f", got {tuple(weight.shape)}")
    if input_activation == "concat_elu" and taps.groups > 1:
        raise ValueError(f"input_activation='concat_elu' needs a tap set without channel groups (PixelCNN++'s "
                         f"shifted convolutions), got taps with data_channels={taps.groups}: the groups of the "
                         "2 C_x channels of concat_elu(x) are not those of x's channels")
    if bias is not None:
        check_like("bias", bias, "x", x, shape=(weight.shape[0],))
    if taps.groups > 1 and not taps.interleaved:  # interleaved groups (c % groups) take any channel count
        for name, channels in (("in_channels", weight.shape[1]), ("out_channels", weight.shape[0])):
            if channels % taps.groups:
                raise ValueError(f"{name} ({channels}) must be divisible by data_channels ({taps.groups}): "
                                 "the centre tap splits channels into data_channels equal groups")


def _in_autocast_dtype(x, *others):
    """x and the other tensors (None kept) in the autocast dtype when autocast is on for x's device, as F.conv2d
    convolves there (bf16/fp16 tensor-core kernels); else as given."""
    if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return tuple(None if t is None else t.to(dtype) for t in (x, *others))
    return (x, *others)


def tap_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, taps: TapSet, *,
               input_activation: str | None = None) -> torch.Tensor:
    """Causal convolution of ``x`` [B, C_in, H, W] with the live taps of ``weight`` [C_out, C_in, kh, kw].

    Equals ``F.conv2d(F.pad(x, taps.pads()), weight * taps.mask(C_out, C_in), bias)``: stride 1, output of
    x's height and width; entries of ``weight`` outside the tap set are ignored (never read: a nan or inf there
    changes nothing, as ``torch.where(mask, weight, 0)``, where ``weight * mask`` would give nan) and get zero
    gradient. Build
    ``taps`` with :mod:`fastgen.nn.masks` (masked, shifted and stack convolutions). Under ``torch.autocast``
    it runs in the autocast dtype, as ``F.conv2d`` does.

    Precision: float32 multiplies on TF32 tensor cores exactly when PyTorch would for a convolution
    (``torch.backends.cudnn.allow_tf32``, default True; ``torch.backends.cudnn.conv.fp32_precision`` on torch
    >= 2.9, see :func:`conv_uses_tf32`), read on every call; then each product keeps 10 mantissa bits of each
    operand (error up to about 2**-9 of |x| |w| per product), accumulated in float32. Otherwise float32 is
    exact FP32. float64 is always exact; float16/bfloat16 multiply on tensor cores with float32 accumulation.

    ``input_activation`` convolves an activation of ``x`` instead of ``x`` without storing it: the kernels apply
    it to the tiles they read and its gradient in their epilogues.

    * ``"relu"``: ``F.relu(x)`` (PixelCNN's ReLU before each convolution); the gradient of ``x`` is ``F.relu``'s:
      zero where ``x <= 0``, passed where ``x`` is nan (as ``torch.relu``, which keeps nan).
    * ``"concat_elu"``: ``F.elu(torch.cat([x, -x], 1))`` (PixelCNN++'s concat_elu, a [B, 2 C_x, H, W] tensor
      never written), so ``weight`` has ``2 * C_x`` input channels: ``W[:, :C_x]`` sees ``elu(x)``,
      ``W[:, C_x:]`` sees ``elu(-x)``. The gradient of ``x`` is ``F.elu``'s (alpha 1) through both halves (at a
      nan ``x`` as CUDA's elu backward: the gradient passes; torch's vectorized CPU kernel gives nan). Only
      for tap sets without channel groups (``taps.groups == 1``): RGB groups split the 2 C_x channels otherwise
      than x's, so a grouped tap set raises.
    """
    if not isinstance(taps, TapSet):
        raise TypeError(f"taps must be a fastgen.nn.masks.TapSet, got {type(taps).__name__}")
    x, weight, bias = _in_autocast_dtype(x, weight, bias)
    _check_arguments(x, weight, bias, taps, input_activation)
    if backend_for(x) == "reference":
        return reference.tap_conv2d(x, weight, bias, taps, input_activation=input_activation)
    if library.traced():
        return torch.ops.fastgen.tap_conv2d(x, weight, bias, *_tap_fields(taps), input_activation)[0]
    return TapConv.apply(x, weight, bias, taps, input_activation)


def _check_gated(x, weight, taps: TapSet, sample_bias, groups: int = 1) -> None:
    """The checks the gated convolutions add to :func:`_check_arguments`."""
    if weight.shape[0] % (2 * groups):
        raise ValueError(f"weight must have a multiple of 2 * groups = {2 * groups} output channels (the halves a "
                         f"and b of the gate in each of the groups={groups} channel groups), got {weight.shape[0]}")
    if sample_bias is not None:
        check_like("sample_bias", sample_bias, "x", x, shape=(x.shape[0], weight.shape[0]))


def tap_conv2d_gated_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, taps: TapSet,
                              residual: torch.Tensor, *, input_activation: str | None = None,
                              sample_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + a * torch.sigmoid(b)`` where ``a, b = (tap_conv2d(x, weight, bias, taps,
    input_activation=input_activation) + sample_bias[:, :, None, None]).chunk(2, 1)``: PixelCNN++'s gated
    residual (openai's gated_resnet output), the gate and the residual add in the convolution's epilogue (the
    gated [B, C_out / 2, H, W] output and the convolution, which the backward reads, are written; nothing else).

    ``weight`` has an even C_out; ``residual`` is [B, C_out / 2, H, W], x's dtype and device; ``sample_bias``
    (optional) [B, C_out], one bias per image (the class embedding of a class-conditional PixelCNN++). Precision
    and the rest as :func:`tap_conv2d`.
    """
    if not isinstance(taps, TapSet):
        raise TypeError(f"taps must be a fastgen.nn.masks.TapSet, got {type(taps).__name__}")
    x, weight, bias, residual, sample_bias = _in_autocast_dtype(x, weight, bias, residual, sample_bias)
    _check_arguments(x, weight, bias, taps, input_activation)
    _check_gated(x, weight, taps, sample_bias)
    check_like("residual", residual, "x", x, shape=(x.shape[0], weight.shape[0] // 2, *x.shape[2:]))
    if backend_for(x) == "reference":
        return reference.tap_conv2d_gated_residual(x, weight, bias, taps, residual, input_activation=input_activation,
                                                   sample_bias=sample_bias)
    if library.traced():
        return torch.ops.fastgen.tap_conv2d_gated(x, weight, bias, *_tap_fields(taps), "residual", residual,
                                                  sample_bias, 1, input_activation)[0]
    return GatedTapConv.apply(x, weight, bias, taps, "residual", residual, sample_bias, 1, input_activation)[0]


def tap_conv2d_gated(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, taps: TapSet, *,
                     other: torch.Tensor | None = None, sample_bias: torch.Tensor | None = None, groups: int = 1,
                     return_conv: bool = False):
    """``fastgen.gated_activation(t, other, sample_bias, groups=groups)``, i.e. tanh(a) * sigmoid(b) of
    ``t + other + sample_bias``, where ``t = tap_conv2d(x, weight, bias, taps)``: the Gated PixelCNN's stack
    convolution and gate in one kernel, the gate in the convolution's epilogue (t is never written alone).

    Args:
        x, weight, bias, taps: as :func:`tap_conv2d` (C_out = 2n, a multiple of 2 * groups).
        other: optional [B, 2n, H, W] added before the gate (the vertical stack's 1x1 link into the horizontal
            stack); x's dtype and device, any strides.
        sample_bias: optional [B, 2n], one bias per image added before the gate (a class embedding).
        groups: t's 2n channels form ``groups`` equal groups, a the first half of each, b the second (3 for an
            RGB Gated PixelCNN's horizontal stack: output group g reads input group g), as
            :func:`fastgen.gated_activation`.
        return_conv: also return t (bias included, ``sample_bias`` not): the vertical stack's pre-activation,
            which its link reads. Only without ``other`` (with it, only the sum is written).

    Returns:
        y [B, n, H, W] in x's dtype and memory format, or (y, t) with ``return_conv``. The backward is
        gated_activation's kernel, then the convolution's. Precision as :func:`tap_conv2d`; the gate runs in
        float32 (float64 for float64).
    """
    if not isinstance(taps, TapSet):
        raise TypeError(f"taps must be a fastgen.nn.masks.TapSet, got {type(taps).__name__}")
    x, weight, bias, other, sample_bias = _in_autocast_dtype(x, weight, bias, other, sample_bias)
    _check_arguments(x, weight, bias, taps)
    groups = check_int("groups", groups, low=1)
    _check_gated(x, weight, taps, sample_bias, groups)
    if other is not None:
        check_like("other", other, "x", x, shape=(x.shape[0], weight.shape[0], *x.shape[2:]))
    if not isinstance(return_conv, bool):
        raise TypeError(f"return_conv must be a bool, got {type(return_conv).__name__}")
    if return_conv and other is not None:
        raise ValueError("return_conv=True needs other=None: with other the kernel writes t + other, never t alone")
    if backend_for(x) == "reference":
        return reference.tap_conv2d_gated(x, weight, bias, taps, other=other, sample_bias=sample_bias, groups=groups,
                                          return_conv=return_conv)
    if library.traced():
        y, t, _ = torch.ops.fastgen.tap_conv2d_gated(x, weight, bias, *_tap_fields(taps), "tanh", other,
                                                     sample_bias, groups, None)
    else:
        y, t = GatedTapConv.apply(x, weight, bias, taps, "tanh", other, sample_bias, groups, None)
    return (y, t) if return_conv else y


# the tap set of a validated (kernel size, mask type, data channels): built once, not on every call
_masked_taps = functools.lru_cache(maxsize=64)(masked)


def check_mask_args(kernel_size, mask_type, data_channels) -> int:
    """Validates a masked convolution's arguments; returns the (odd, square) kernel size."""
    check_choice("mask_type", mask_type, MASK_TYPES)
    check_int_choice("data_channels", data_channels, DATA_CHANNELS)
    if isinstance(kernel_size, (tuple, list, torch.Size)):
        if len(kernel_size) != 2:
            raise ValueError(f"kernel_size must be an int or a square pair, got {tuple(kernel_size)}")
        pair = tuple(check_int("kernel_size", k) for k in kernel_size)
        if pair[0] != pair[1]:
            raise ValueError(f"kernel_size must be square for a masked convolution, got {pair}")
        kernel_size = pair[0]
    kernel_size = check_int("kernel_size", kernel_size)
    if kernel_size not in (1, 3, 5, 7):
        raise ValueError(f"kernel_size must be an odd size from 1 to 7 for a masked convolution, got "
                         f"{kernel_size!r} (even sizes have no centre pixel; use the shifted convolutions)")
    return kernel_size


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, mask_type: str = "B",
                  data_channels: int = 1, padding=None, *, input_activation: str | None = None) -> torch.Tensor:
    """PixelCNN masked convolution: ``F.conv2d(x, weight * mask, bias, padding=k // 2)``.

    Args:
        x: [B, C_in, H, W], any float dtype and strides (channels-last stays channels-last).
        weight: the dense [C_out, C_in, k, k] weight, k odd from 1 to 7; masked entries are ignored (never
            read: nan or inf there does not reach the output, as ``torch.where(mask, weight, 0)``, unlike
            ``weight * mask``; the reference backend matches) and get zero gradient.
        bias: [C_out] or None.
        mask_type: "A" (first layer: the centre pixel is not seen) or "B" (later layers).
        data_channels: 1, or 3 for RGB with the PixelRNN channel groups at the centre tap (channel c of C is
            in group c*3//C; output group g sees input groups < g under A, <= g under B).
        padding: None, "same" or k // 2 (the output keeps x's size; nothing else is supported).
        input_activation: None, "relu" (convolve ``F.relu(x)`` without storing it) or "concat_elu" (with
            ``data_channels=1``; ``weight`` has 2 C_in input channels), see :func:`tap_conv2d`.

    float32 inputs multiply on TF32 tensor cores when ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's
    default for convolutions, so this rounds as ``F.conv2d`` does), in exact FP32 when it is False; float64
    is exact. See :func:`tap_conv2d`.
    """
    check_float_tensor("weight", weight)
    if weight.dim() != 4:
        raise ValueError(f"weight must be a 4-d tensor [C_out, C_in, k, k], got shape {tuple(weight.shape)}")
    k = check_mask_args(tuple(weight.shape[2:]), mask_type, data_channels)
    if padding not in (None, "same", k // 2, (k // 2, k // 2)):
        raise ValueError(f"padding must be None, 'same' or {k // 2} (same-size causal output), got {padding!r}")
    taps = (masked if library.traced() else _masked_taps)(k, mask_type, int(data_channels))  # dynamo: no cache
    return tap_conv2d(x, weight, bias, taps, input_activation=input_activation)


# The layouts the compile check builds each GEMM kernel for: which stride Triton sees as the constant 1 (it
# specializes integer arguments equal to 1) and which see as multiples of 16 (channel counts of 16k).
# Channels-last puts the reduced channels contiguous, which is the layout the fast path is built for;
# float32/float64 are compiled for the default NCHW layout only.
LAYOUTS = {"nchw": ("w", ("b", "c")), "nhwc": ("c", ("b", "h", "w"))}


def _layout_hints(kernel, layout: str) -> dict:
    fn = getattr(kernel, "fn", kernel)
    names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    unit, divisible = LAYOUTS[layout]
    strides = [n for n in names if n.startswith("stride_") and n[-2] != "p"]  # activation strides
    channels = tuple(n for n in ("c_in", "c_out", "n_red", "n_out") if n in names)
    return dict(ones=tuple(n for n in strides if n[-1] == unit),
                divisible=tuple(n for n in strides if n[-1] in divisible) + channels, variant=layout)


def _class_configs(table, math: str, layout: str, input_activation: str | None = None,
                   fold: bool = False, gated: bool = False) -> list[triton.Config]:
    """Every config of every shape class of (math, layout), each once; with an ``input_activation`` or
    ``gated`` the ones its launches take (see :func:`activation_class`); with ``fold`` those of the fold class
    (the FOLD variant), else those of the other classes."""
    classes = [c for c in table[math, layout] if (c == "fold") == fold]
    if input_activation is not None or gated:
        kind = "gemm" if table is GEMM_CONFIGS else "weight_grad"
        return _unique(activation_configs(kind, math, layout, c, input_activation, gated)[0] for c in classes)
    return _unique(c for name in classes for c in table[math, layout][name])


def kernel_launches():
    """Every kernel configuration the op can launch, for the sm_90/sm_80 compile check: each config of each
    class (GEMM_CONFIGS, WEIGHT_GRAD_CONFIGS), with the math (16-bit, TF32 or exact FP32/FP64) and layout it
    serves, the input-activation variants (INPUT_ACT: the configs of :func:`activation_class`) and the fold
    class's FOLD
    variants (forward and weight gradient; C_in < 16 is never a multiple of 16). 16-bit and TF32 tiles must run
    on tensor cores (HGMMA on sm_90, HMMA on sm_80)."""
    from fastgen.compile_check import KernelLaunch

    for dtype in FLOAT_DTYPES:
        acc = compute_dtype(dtype)
        maths = {2: ("mma",), 4: ("tf32", "fma"), 8: ("fma",)}[dtype.itemsize]
        for math in maths:
            tensor_cores = math != "fma"
            common = dict(UPCAST=False, PRECISION="tf32" if math == "tf32" else "ieee", ACC=tl_compute_dtype(dtype))
            # channels-last puts the reduced channels contiguous: the layout the fast path is built for; exact
            # float32 and float64 are compiled for the default NCHW layout only
            layouts = ("nchw", "nhwc") if tensor_cores else ("nchw",)
            kernel = kernels.tap_conv_gemm_kernel
            for activation, backward, layout, fold, gate in itertools.product(
                    INPUT_ACTIVATIONS, (False, True), layouts, (False, True), GATE_KINDS):
                gated = gate is not None
                if (fold or gated) and backward:  # FOLD and GATE are forward variants
                    continue
                if gate == "tanh" and activation is not None:  # tap_conv2d_gated takes no input activation
                    continue
                hints = _layout_hints(kernel, layout)
                if fold:
                    hints["divisible"] = tuple(n for n in hints["divisible"] if n != "n_red")
                # P is contiguous: its other stride is C_out
                unit, other = ("stride_pk", "stride_pn") if backward else ("stride_pn", "stride_pk")
                hints["ones"] += (unit,)
                hints["divisible"] += (other,)
                # GATE's strides are never read unless INPUT_ACT and BACKWARD, SAVED's, ADDEND's and SAMPLE_BIAS's
                # unless GATE: placeholder zeros. SAMPLE_BIAS [B, C_out] is contiguous.
                if gated:
                    hints["ones"] = tuple(n for n in hints["ones"] if n != "stride_qc") + ("stride_qc",)
                    hints["divisible"] = tuple(n for n in hints["divisible"] if n != "stride_qc")
                for unread in ("g" if not (activation and backward) else "") + ("srq" if not gated else ""):
                    hints["ones"] = tuple(n for n in hints["ones"] if not n.startswith(f"stride_{unread}"))
                    hints["divisible"] = tuple(n for n in hints["divisible"] if not n.startswith(
                        f"stride_{unread}")) + tuple(f"stride_{unread}{d}" for d in ("bc" if unread == "q" else "bchw"))
                for config in _class_configs(GEMM_CONFIGS, math, layout, activation, fold, gated):
                    act = INPUT_ACTIVATIONS.index(activation)
                    yield KernelLaunch.build(kernel, dtype, constexprs=dict(BACKWARD=backward, INPUT_ACT=act, **common,
                                                                            **config.kwargs, FOLD=fold,
                                                                            GATE_KIND=GATE_KINDS.index(gate)),
                                             num_warps=config.num_warps, num_stages=config.num_stages,
                                             tensor_cores=tensor_cores, **hints)
            kernel = kernels.tap_conv_weight_grad_kernel
            wmath = math if tensor_cores else f"fma{dtype.itemsize * 8}"
            # the target's dtype: the gradient's (direct store; float32/float64 atomics too) and, for 16-bit,
            # the fp32 sums of the split paths (atomic and deterministic): two compiled variants
            targets = (dtype,) if acc == dtype else (dtype, acc)
            for activation, layout, fold, target in itertools.product(INPUT_ACTIVATIONS, layouts, (False, True),
                                                                      targets):
                hints = _layout_hints(kernel, layout)
                # the target's strides are not specialized (_WEIGHT_GRAD_TARGET_ARGS): only the activations'
                hints = dict(hints, **{key: tuple(n for n in hints[key] if n not in kernels._WEIGHT_GRAD_TARGET_ARGS)
                                       for key in ("ones", "divisible")})
                if fold:
                    hints["divisible"] = tuple(n for n in hints["divisible"] if n != "c_in")
                if target != dtype:
                    hints["variant"] += " into " + str(target).removeprefix("torch.")
                for config in _class_configs(WEIGHT_GRAD_CONFIGS, wmath, layout, activation, fold):
                    yield KernelLaunch.build(kernel, dtype, {"GRAD_W": target, "GRAD_B": target},
                                             constexprs=dict(common, INPUT_ACT=INPUT_ACTIVATIONS.index(activation),
                                                             **config.kwargs, FOLD=fold),
                                             num_warps=config.num_warps, num_stages=config.num_stages,
                                             tensor_cores=tensor_cores, **hints)
        # the dense weight and its gradient are contiguous [C_out, C_in, kh, kw] parameters
        for config in configs_for(kernels.tap_conv_pack_weight_kernel):
            yield KernelLaunch.build(kernels.tap_conv_pack_weight_kernel, dtype,
                                     constexprs=dict(BLOCK_C=PACK_BLOCK, BLOCK_O=PACK_BLOCK),
                                     num_warps=config.num_warps, ones=("stride_ww",))
        for has_bias in (False, True):
            for config in configs_for(kernels.tap_conv_unpack_grad_kernel):
                yield KernelLaunch.build(kernels.tap_conv_unpack_grad_kernel, dtype,
                                         {"PARTIAL": acc, "BIAS_PARTIAL": acc},
                                         constexprs=dict(HAS_BIAS=has_bias, ACC=tl_compute_dtype(dtype), BLOCK_C=PACK_BLOCK,
                                                         BLOCK_O=PACK_BLOCK),
                                         num_warps=config.num_warps, ones=("stride_ww",))
