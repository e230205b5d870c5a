"""Benchmark cases of fastgen.pixel_cross_entropy and dmol_nll against the eager PixelCNN losses.

PixelCNN's 256-way softmax at B = 16 on MNIST-sized 28x28x1 and CIFAR-sized 32x32x3 images (logits [16, 256 * C,
H, W]), and PixelCNN++'s discretized logistic mixture with K = 10 on 32x32x3 (params [16, 100, 32, 32]). The
"saved KB per sample" column is the memory autograd keeps for the backward. Under pytest-benchmark:
`pytest benchmarks/ --benchmark-only`.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastgen
from fastgen import reference
from fastgen.benchmarks.harness import MODES, PROVIDERS, Case, nbytes, run_pytest_benchmark

BATCH = 16
LEVELS = 256


def _ce_inputs(channels, size, dtype, device, batch=None, check=False):
    shape = (batch or BATCH, channels * LEVELS, size, size)
    target_shape = (shape[0], channels, size, size)
    if device == "meta":  # shapes only
        return {"logits": torch.empty(shape, dtype=dtype, device="meta"),
                "targets": torch.empty(target_shape, dtype=torch.int64, device="meta")}
    gen = torch.Generator().manual_seed(0)
    return {"logits": (2 * torch.randn(shape, generator=gen)).to(device, dtype).requires_grad_(),
            "targets": torch.randint(0, LEVELS, target_shape, generator=gen).to(device)}


def _ce_fastgen(**inputs):
    # no host-side range check of the targets (one aminmax + a sync), as F.cross_entropy, which asserts on device;
    # the RGB logits are a masked convolution's channel groups (channel-major), as the reference reads them
    return fastgen.pixel_cross_entropy(**inputs, check_targets=False, logits_layout="channel-major")


def _ce_bytes_forward(inputs):  # read the logits and targets, write the logsumexp per sub-pixel (kept for backward)
    targets = inputs["targets"]
    return nbytes(inputs["logits"], targets) + 4 * targets.numel()


def _ce_bytes_backward(inputs):  # read the logits, targets and logsumexp again, write the gradient
    targets = inputs["targets"]
    return 2 * nbytes(inputs["logits"]) + nbytes(targets) + 4 * targets.numel()


def _dmol_inputs(n_mixtures, channels, size, dtype, device, batch=None, check=False):
    batch = batch or BATCH
    shape = (batch, (10 if channels == 3 else 3) * n_mixtures, size, size)
    if device == "meta":
        return {"params": torch.empty(shape, dtype=dtype, device="meta"),
                "x": torch.empty((batch, channels, size, size), dtype=torch.float32, device="meta")}
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(shape, generator=gen)
    params[:, n_mixtures:] *= 0.5  # means around 0, log-scales around 0 (clamped at -7 only far below)
    x = torch.randint(0, 256, (batch, channels, size, size), generator=gen) / 127.5 - 1.0
    return {"params": params.to(device, dtype).requires_grad_(), "x": x.to(device)}


def _dmol_bytes_forward(inputs):  # read params and x, write the gradient w.r.t. params (the forward computes it)
    return 2 * nbytes(inputs["params"]) + nbytes(inputs["x"])


def _dmol_bytes_backward(inputs):  # read the saved gradient, write it scaled by grad_output
    return 2 * nbytes(inputs["params"])


def _dmol_sample_inputs(n_mixtures, channels, size, dtype, device, batch=None, check=False):
    inputs = _dmol_inputs(n_mixtures, channels, size, dtype, device, batch)
    params = inputs["params"].detach()
    shape = (params.shape[0], n_mixtures + channels, size, size)
    if device == "meta":
        return {"params": params, "uniforms": torch.empty(shape, dtype=dtype, device="meta")}
    uniforms = torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    return {"params": params, "uniforms": uniforms}


def _dmol_sample_bytes(channels, inputs):  # read params and the draws, write x [B, C, H, W]
    params = inputs["params"]
    batch, _, height, width = params.shape
    return nbytes(params, inputs["uniforms"]) + params.element_size() * batch * channels * height * width


def _ce_case(name, channels, size, dtype=torch.float32, quick=True):
    return Case(op="pixel_cross_entropy", name=name,
                make_inputs=functools.partial(_ce_inputs, channels, size, dtype),
                fastgen=_ce_fastgen, reference=reference.pixel_cross_entropy,
                bytes_forward=_ce_bytes_forward, bytes_backward=_ce_bytes_backward, quick=quick)


def _dmol_case(name, n_mixtures, channels, size, dtype=torch.float32, quick=True):
    return Case(op="dmol_nll", name=name,
                make_inputs=functools.partial(_dmol_inputs, n_mixtures, channels, size, dtype),
                fastgen=functools.partial(fastgen.dmol_nll, n_mixtures=n_mixtures),
                reference=functools.partial(reference.dmol_nll, n_mixtures=n_mixtures),
                bytes_forward=_dmol_bytes_forward, bytes_backward=_dmol_bytes_backward, quick=quick)


def _dmol_sample_case(name, n_mixtures, channels, size, dtype=torch.float32, quick=True):
    # the sampler has no gradient: forward only; given draws, fastgen and the reference compute the same sample
    return Case(op="dmol_sample", name=name,
                make_inputs=functools.partial(_dmol_sample_inputs, n_mixtures, channels, size, dtype),
                fastgen=functools.partial(fastgen.dmol_sample, n_mixtures=n_mixtures),
                reference=functools.partial(reference.dmol_sample, n_mixtures=n_mixtures),
                bytes_forward=functools.partial(_dmol_sample_bytes, channels), bytes_backward=lambda inputs: 0,
                quick=quick, modes=("forward",))


CASES = [
    _ce_case("B=16 256 levels 28x28x1 fp32", 1, 28),
    # the 32x32x3 cases run interpreted for a minute each on CPU: `--all` (the quick CPU run stays under 3 min)
    _ce_case("B=16 256 levels 32x32x3 fp32", 3, 32, quick=False),
    _ce_case("B=16 256 levels 32x32x3 bf16", 3, 32, torch.bfloat16, quick=False),
    _dmol_case("K=10 B=16 16x16x3 fp32", 10, 3, 16),
    _dmol_case("K=10 B=16 32x32x3 fp32", 10, 3, 32, quick=False),
    _dmol_case("K=10 B=16 32x32x3 bf16", 10, 3, 32, torch.bfloat16, quick=False),
    _dmol_case("K=5 B=16 28x28x1 fp32", 5, 1, 28, quick=False),
    _dmol_sample_case("K=10 B=16 16x16x3 fp32", 10, 3, 16),
    _dmol_sample_case("K=10 B=16 32x32x3 fp32", 10, 3, 32, quick=False),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.quick], ids=lambda c: c.label)
def test_pixel_losses(benchmark, case, provider, mode, device):
    run_pytest_benchmark(benchmark, case, provider, mode, device)
