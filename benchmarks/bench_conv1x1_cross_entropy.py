"""Benchmark cases of fastgen.conv1x1_cross_entropy (PixelCNN's fused output head) against the eager head:
``F.conv2d`` of the last 1x1 layer, then ``F.cross_entropy`` of its [B, levels, C, H, W] logits.

Shapes of the heads of the models of ``bench_training`` (hidden = the 2h = 128 channels of the last hidden 1x1
layer) at 32x32x3 with 256 levels, B=64 (the issue's size: eager keeps 201 MB of float32 logits, their
log-softmax and their gradient), and the digits head (8x8 grey, 17 levels, K = 64, B = 64). The "peak MB" column
(CUDA) is the memory the head needs above its inputs; the "saved KB per sample" column what autograd keeps for
the backward. Under pytest-benchmark: `pytest benchmarks/ --benchmark-only`.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastgen
from fastgen import reference
from fastgen.benchmarks.harness import MODES, PROVIDERS, Case, nbytes, run_pytest_benchmark


def _inputs(batch_size, hidden_channels, channels, levels, size, dtype, device, batch=None, check=False):
    batch = batch or batch_size
    shapes = {"hidden": (batch, hidden_channels, size, size), "weight": (channels * levels, hidden_channels),
              "bias": (channels * levels,)}
    target_shape = (batch, channels, size, size)
    if device == "meta":  # shapes only
        return dict({k: torch.empty(s, dtype=dtype, device="meta") for k, s in shapes.items()},
                    targets=torch.empty(target_shape, dtype=torch.int64, device="meta"))
    gen = torch.Generator().manual_seed(0)
    hidden = torch.relu(torch.randn(shapes["hidden"], generator=gen))
    weight = torch.randn(shapes["weight"], generator=gen) / hidden_channels**0.5
    bias = 0.1 * torch.randn(shapes["bias"], generator=gen)
    tensors = {"hidden": hidden, "weight": weight, "bias": bias}
    inputs = {k: t.to(device, dtype).requires_grad_() for k, t in tensors.items()}
    inputs["targets"] = torch.randint(0, levels, target_shape, generator=gen).to(device)
    return inputs


def _fastgen(**inputs):
    # no host-side range check of the targets (one aminmax + a sync), as F.cross_entropy, which asserts on device
    return fastgen.conv1x1_cross_entropy(**inputs, check_targets=False)


def _logits_bytes(inputs):
    hidden, weight = inputs["hidden"], inputs["weight"]
    return hidden.numel() // hidden.shape[1] * weight.shape[0] * hidden.element_size()


def _bytes_forward(inputs):
    # with a gradient wanted, the forward does the whole head: read hidden (twice: the logits and the weight
    # gradient), weight, targets; each chunk's logits written by the convolution, read and overwritten by the
    # kernel, read by the convolution backward; write the gradient of hidden and the loss per sub-pixel
    hidden, targets = inputs["hidden"], inputs["targets"]
    return 3 * nbytes(hidden) + nbytes(inputs["weight"], targets) + 4 * _logits_bytes(inputs) + 4 * targets.numel()


def _bytes_backward(inputs):  # scale the saved gradients by grad_output: read and write them
    return 2 * nbytes(inputs["hidden"], inputs["weight"], inputs["bias"])


def _flops(inputs, mode):
    """(fastgen's, eager's): with a gradient wanted fastgen's forward already runs all three GEMMs of the head
    (logits, then the gradients of hidden and weight); eager's forward runs the first only."""
    hidden, weight = inputs["hidden"], inputs["weight"]
    gemm = 2 * hidden.numel() * weight.shape[0]  # one [pixels, K] x [K, C * levels] product
    return 3 * gemm, (gemm if mode == "forward" else 3 * gemm)


def _case(name, batch, hidden_channels, channels, levels, size, dtype=torch.float32, quick=False):
    return Case(op="conv1x1_cross_entropy", name=name,
                make_inputs=functools.partial(_inputs, batch, hidden_channels, channels, levels, size, dtype),
                fastgen=_fastgen, reference=reference.conv1x1_cross_entropy,
                bytes_forward=_bytes_forward, bytes_backward=_bytes_backward, flops=_flops, quick=quick)


CASES = [
    _case("B=64 K=64 17 levels 8x8x1 fp32", 64, 64, 1, 17, 8, quick=True),
    _case("B=64 K=128 256 levels 32x32x3 fp32", 64, 128, 3, 256, 32),
    _case("B=64 K=128 256 levels 32x32x3 bf16", 64, 128, 3, 256, 32, torch.bfloat16),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.quick], ids=lambda c: c.name)
def test_conv1x1_cross_entropy(benchmark, case, provider, mode, device):
    run_pytest_benchmark(benchmark, case, provider, mode, device)
