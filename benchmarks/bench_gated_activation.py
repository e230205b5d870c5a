"""Benchmark cases of fastgen.gated_activation; under pytest-benchmark: `pytest benchmarks/ --benchmark-only`.

Shapes of one Gated PixelCNN layer's horizontal-stack gate: t = horizontal(h), other = vertical_to_horizontal(v_pre)
[B, 2n, H, W] and the class embedding bias [B, 2n].
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastgen
from fastgen import reference
from fastgen.benchmarks.harness import MODES, PROVIDERS, Case, nbytes, run_pytest_benchmark


def _inputs(shape, dtype, with_bias, device, batch=None, check=False):
    batch_size, channels, height, width = (batch or shape[0], *shape[1:])
    shapes = {"t": (batch_size, channels, height, width), "other": (batch_size, channels, height, width)}
    if with_bias:
        shapes["bias"] = (batch_size, channels)
    if device == "meta":  # shapes only
        return {k: torch.empty(s, dtype=dtype, device="meta") for k, s in shapes.items()}
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=gen).to(device, dtype).requires_grad_() for k, s in shapes.items()}


def _fastgen(groups, **inputs):
    return fastgen.gated_activation(**inputs, groups=groups)


def _reference(groups, **inputs):
    # the model's eager gate: add (t + other), add (bias), tanh, sigmoid, mul (and their backward ops)
    return reference.gated_activation(**inputs, groups=groups)


def _out_bytes(inputs):
    return nbytes(inputs["t"]) // 2  # [B, n, H, W]


def _bytes_forward(inputs):
    # read t, other and bias, write y and (every case's inputs require grad) s = t + other + bias for the backward
    return nbytes(inputs["t"], inputs["other"], inputs.get("bias")) + _out_bytes(inputs) + nbytes(inputs["t"])


def _bytes_backward(inputs):
    # one kernel: read s and grad_y, write grad_s (shared by t and other); then grad_bias: the sum of grad_s over
    # the pixels (read grad_s, write [B, 2n])
    moved = 2 * nbytes(inputs["t"]) + _out_bytes(inputs)
    if "bias" in inputs:
        moved += nbytes(inputs["t"], inputs["bias"])
    return moved


def _case(name, shape, dtype=torch.float32, groups=1, with_bias=True, quick=False):
    return Case(
        op="gated_activation", name=name,
        make_inputs=functools.partial(_inputs, shape, dtype, with_bias),
        fastgen=functools.partial(_fastgen, groups), reference=functools.partial(_reference, groups),
        bytes_forward=_bytes_forward, bytes_backward=_bytes_backward, quick=quick,
    )


CASES = [
    # the digits model of `fastgen train gated` (32 channels, 8x8 images), class-conditional: launch-bound
    _case("B=64 2n=64 8x8 fp32", (64, 64, 8, 8), quick=True),
    # MNIST-sized layers (64 channels, 28x28) and CIFAR RGB (3 channel groups, 32x32): bandwidth-bound
    _case("B=64 2n=128 28x28 fp32", (64, 128, 28, 28)),
    _case("B=64 2n=128 28x28 bf16", (64, 128, 28, 28), torch.bfloat16),
    _case("B=32 2n=384 32x32 RGB bf16", (32, 384, 32, 32), torch.bfloat16, groups=3),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.quick], ids=lambda c: c.name)
def test_gated_activation(benchmark, case, provider, mode, device):
    run_pytest_benchmark(benchmark, case, provider, mode, device)
