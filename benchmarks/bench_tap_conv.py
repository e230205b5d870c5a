"""Benchmark cases of fastgen.masked_conv2d against F.conv2d(x, weight * mask) (cuDNN on a GPU), and of
fastgen.tap_conv2d_gated (the Gated PixelCNN's stack convolution and gate) against the eager convolution + gate.

PixelCNN shapes: the 7x7 mask-A input layer and the mask-B hidden layers, 28x28 (MNIST) and 32x32 (CIFAR),
channels-last bf16 activations (the layout both cuDNN and fastgen's kernels are fastest in). FLOPs are
counted on the live taps (what fastgen's kernels multiply) and on the dense window (what the reference
multiplies). Under pytest-benchmark: `pytest benchmarks/ --benchmark-only`.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastgen
from fastgen.benchmarks.harness import MODES, PROVIDERS, Case, nbytes, run_pytest_benchmark
from fastgen.nn import masks
from fastgen.reference import tap_conv as reference


def _inputs(spec, device, batch=None, check=False):
    """x (channels-last), weight, bias and the reference's mask buffer; the noise-free op needs no ``check``."""
    full_batch, c_in, c_out, size, k, mask_type, data_channels, dtype, input_grad = spec
    shapes = dict(x=(batch or full_batch, c_in, size, size), weight=(c_out, c_in, k, k), bias=(c_out,))
    if device == "meta":  # shapes only
        return {name: torch.empty(shape, dtype=dtype, device="meta") for name, shape in shapes.items()}
    gen = torch.Generator().manual_seed(0)
    scale = dict(x=1.0, weight=(c_in * k * k) ** -0.5, bias=1.0)
    inputs = {name: (scale[name] * torch.randn(shape, generator=gen)).to(device, dtype)
              for name, shape in shapes.items()}
    inputs["x"] = inputs["x"].to(memory_format=torch.channels_last)
    for name in ("weight", "bias") + (("x",) if input_grad else ()):
        inputs[name].requires_grad_()
    # the mask buffer of the usual nn.Conv2d + mask implementation, built once
    inputs["mask"] = masks.masked(k, mask_type, data_channels).mask(c_out, c_in, dtype, device)
    return inputs


def _output_bytes(inputs):
    x, w = inputs["x"], inputs["weight"]
    return x.numel() // x.shape[1] * w.shape[0] * x.element_size()


def _case(name, batch, c_in, c_out, size, k, mask_type, data_channels=1, dtype=torch.bfloat16, input_grad=True,
          quick=False):
    if c_in % data_channels or c_out % data_channels:  # masked_conv2d's own rule, checked when the case is built
        raise ValueError(f"bench case {name!r}: {c_in} -> {c_out} channels do not split into {data_channels} "
                         f"channel groups (use multiples of {data_channels})")
    spec = (batch, c_in, c_out, size, k, mask_type, data_channels, dtype, input_grad)
    taps = masks.masked(k, mask_type, data_channels)

    def bytes_forward(inputs):  # read x, weight, bias once; write y
        return nbytes(inputs["x"], inputs["weight"], inputs["bias"]) + _output_bytes(inputs)

    def bytes_backward(inputs):  # read grad_y twice (input and weight gradients), x, weight; write the grads
        grad_x = nbytes(inputs["x"]) if input_grad else 0
        return 2 * _output_bytes(inputs) + 2 * nbytes(inputs["weight"], inputs["bias"]) + nbytes(inputs["x"]) \
            + grad_x

    def flops(inputs, mode):
        x, w = inputs["x"], inputs["weight"]
        dense = 2 * x.shape[0] * x.shape[2] * x.shape[3] * w.numel()
        live = round(dense * taps.live_fraction(w.shape[0], w.shape[1]))
        passes = 1 if mode == "forward" else 2 + input_grad  # backward: weight grad (+ input grad)
        return live * passes, dense * passes

    def run_fastgen(x, weight, bias, mask):
        return fastgen.masked_conv2d(x, weight, bias, mask_type, data_channels)

    def run_reference(x, weight, bias, mask):
        return reference.masked_conv2d(x, weight, bias, mask_type, data_channels, mask=mask)

    return Case(op="masked_conv2d", name=name, make_inputs=functools.partial(_inputs, spec),
                fastgen=run_fastgen, reference=run_reference, bytes_forward=bytes_forward,
                bytes_backward=bytes_backward, quick=quick, flops=flops)


CASES = [
    _case("B=16 C=64 28x28 3x3 B bf16", 16, 64, 64, 28, 3, "B", quick=True),
    _case("input B=16 1->64 28x28 7x7 A bf16", 16, 1, 64, 28, 7, "A", input_grad=False),
    _case("B=64 C=128 28x28 7x7 B bf16", 64, 128, 128, 28, 7, "B"),
    _case("B=128 C=64 28x28 5x5 A bf16", 128, 64, 64, 28, 5, "A"),
    _case("rgb B=32 C=192 32x32 3x3 B bf16", 32, 192, 192, 32, 3, "B", data_channels=3),
    # a wide RGB hidden layer with the 7x7 window: 384 = 3 x 128 channels (the groups need multiples of 3)
    _case("rgb B=16 C=384 32x32 7x7 B bf16", 16, 384, 384, 32, 7, "B", data_channels=3),
    _case("rgb input B=32 3->192 32x32 7x7 A bf16", 32, 3, 192, 32, 7, "A", data_channels=3, input_grad=False),
    _case("B=64 C=128 28x28 7x7 B fp32", 64, 128, 128, 28, 7, "B", dtype=torch.float32),
]

# Issue 12's cases (the targets against cuDNN on an H200), bf16 and float32, channels-last. float32 runs with
# PyTorch's default torch.backends.cudnn.allow_tf32 = True, so both sides multiply on TF32 tensor cores ("tf32"
# in the name); with the switch off both multiply in exact FP32. benchmarks/tune_tap_conv.py sweeps the kernel
# configs over the same shapes (ISSUE_SHAPES).
ISSUE_SHAPES = [  # (name, batch, c_in, c_out, size, k, mask type, data channels, input grad)
    ("3x3 B B=64 128->128 32x32", 64, 128, 128, 32, 3, "B", 1, True),
    ("3x3 B B=64 256->256 32x32", 64, 256, 256, 32, 3, "B", 1, True),
    ("rgb 3x3 B B=64 384->384 32x32", 64, 384, 384, 32, 3, "B", 3, True),
    ("7x7 B B=32 128->128 32x32", 32, 128, 128, 32, 7, "B", 1, True),
    ("rgb input 7x7 A B=64 3->192 32x32", 64, 3, 192, 32, 7, "A", 3, False),
    # the input layer of a PixelCNN with 2h = 128 on CIFAR-sized RGB images (no channel groups): the FOLD kernels
    ("input 7x7 A B=64 3->128 32x32", 64, 3, 128, 32, 7, "A", 1, False),
]
for _dtype, _suffix in ((torch.bfloat16, "bf16"), (torch.float32, "fp32 tf32")):
    for _name, _batch, _c_in, _c_out, _size, _k, _mask, _groups, _input_grad in ISSUE_SHAPES:
        CASES.append(_case(f"{_name} {_suffix}", _batch, _c_in, _c_out, _size, _k, _mask, data_channels=_groups,
                           dtype=_dtype, input_grad=_input_grad, quick=False))


# tap_conv2d_gated: one Gated PixelCNN layer's stack convolution with its gate in the epilogue, against the eager
# model's convolution then gate (reference.tap_conv2d_gated: F.conv2d, add, add, tanh, sigmoid, mul). The
# horizontal stack adds the vertical stack's link and a class embedding before the gate (RGB: 3 gate groups);
# the vertical stack also returns its convolution (the link's input).
def _gated_inputs(spec, device, batch=None, check=False):
    full_batch, n, size, taps, other, dtype = spec
    batch = batch or full_batch
    shapes = dict(x=(batch, n, size, size), weight=(2 * n, n, *taps.kernel_size), bias=(2 * n,),
                  sample_bias=(batch, 2 * n))
    if other:
        shapes["other"] = (batch, 2 * n, size, size)
    if device == "meta":
        return {name: torch.empty(shape, dtype=dtype, device="meta") for name, shape in shapes.items()}
    gen = torch.Generator().manual_seed(0)
    fan_in = n * taps.kernel_size[0] * taps.kernel_size[1]
    inputs = {name: ((fan_in ** -0.5 if name == "weight" else 1.0) * torch.randn(shape, generator=gen)).to(device, dtype)
              for name, shape in shapes.items()}
    for name in ("x", "other"):
        if name in inputs:
            inputs[name] = inputs[name].to(memory_format=torch.channels_last)
    return {name: t.requires_grad_() for name, t in inputs.items()}


def _gated_case(name, batch, n, size, stack, dtype, quick=False):
    groups = 3 if stack == "horizontal rgb" else 1
    taps = masks.horizontal_stack(3, "B", 3) if groups == 3 else masks.vertical_stack(3, "B")
    other, return_conv = groups == 3, groups == 1
    spec = (batch, n, size, taps, other, dtype)

    def run(fn, x, weight, bias, sample_bias, other=None):
        return fn(x, weight, bias, taps, other=other, sample_bias=sample_bias, groups=groups,
                  return_conv=return_conv)

    def pixels_bytes(inputs):  # one [B, n, H, W] tensor's bytes
        return nbytes(inputs["x"]) // inputs["x"].shape[1] * n

    def bytes_forward(inputs):  # read x, weight, (other), write y (n) and the saved conv / sum (2n)
        return nbytes(inputs["x"], inputs["weight"], inputs["bias"], inputs["sample_bias"], inputs.get("other")) \
            + 3 * pixels_bytes(inputs)

    def bytes_backward(inputs):  # gate: read s (2n), grad_y (n), write grad_s (2n); conv: as masked_conv2d's
        conv = 2 * 2 * pixels_bytes(inputs) + 2 * nbytes(inputs["weight"], inputs["bias"]) + 2 * nbytes(inputs["x"])
        return 5 * pixels_bytes(inputs) + conv

    def flops(inputs, mode):
        x, w = inputs["x"], inputs["weight"]
        dense = 2 * x.shape[0] * x.shape[2] * x.shape[3] * w.numel()
        live = round(dense * taps.live_fraction(w.shape[0], w.shape[1]))
        passes = 1 if mode == "forward" else 3
        return live * passes, dense * passes

    return Case(op="tap_conv2d_gated", name=name, make_inputs=functools.partial(_gated_inputs, spec),
                fastgen=functools.partial(run, fastgen.tap_conv2d_gated),
                reference=functools.partial(run, reference.tap_conv2d_gated), bytes_forward=bytes_forward,
                bytes_backward=bytes_backward, quick=quick, flops=flops)


CASES += [
    _gated_case("horizontal rgb B=32 n=192 32x32 bf16", 32, 192, 32, "horizontal rgb", torch.bfloat16),
    _gated_case("vertical B=64 n=64 28x28 bf16", 64, 64, 28, "vertical", torch.bfloat16),
    _gated_case("vertical B=64 n=64 28x28 fp32", 64, 64, 28, "vertical", torch.float32),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.quick], ids=lambda c: c.name)
def test_masked_conv2d(benchmark, case, provider, mode, device):
    run_pytest_benchmark(benchmark, case, provider, mode, device)
