"""Benchmark cases of fastgen.gan_d_loss, gan_g_loss and gradient_penalty against the eager PyTorch losses.

Launch-bound shapes (one logit per sample, B = 64; a toy 2-D GAN's input gradients) and large ones (PatchGAN
logits 64x1x30x30; penalties on [64, 3, 64, 64] image gradients). Under pytest-benchmark:
`pytest benchmarks/ --benchmark-only`.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastgen
from fastgen import reference
from fastgen.benchmarks.harness import MODES, PROVIDERS, Case, nbytes, run_pytest_benchmark


def _inputs(shapes, dtype, scale, device, batch=None, check=False):
    """One floating tensor per name in ``shapes`` (requiring grad), the batch dim shrunk to ``batch``."""
    shapes = {name: (batch or shape[0], *shape[1:]) for name, shape in shapes.items()}
    if device == "meta":  # shapes only
        return {name: torch.empty(shape, dtype=dtype, device="meta") for name, shape in shapes.items()}
    gen = torch.Generator().manual_seed(0)
    return {name: (scale * torch.randn(shape, generator=gen)).to(device, dtype).requires_grad_()
            for name, shape in shapes.items()}


def _logit_bytes_forward(inputs):  # read the logits, write their gradients (the forward computes them), the loss
    return 2 * nbytes(inputs) + 4


def _logit_bytes_backward(inputs):  # read the saved gradients, write the scaled ones
    return 2 * nbytes(inputs)


def _penalty_bytes_forward(inputs):  # read the gradients; write per-sample penalties and coefficients
    grads = inputs["grads"]
    return nbytes(grads) + 2 * 4 * grads.shape[0]


def _penalty_bytes_backward(inputs):  # read the gradients and coefficients, write d loss / d grads
    grads = inputs["grads"]
    return 2 * nbytes(grads) + 4 * grads.shape[0]


def _d_case(name, shape, kind="minimax", dtype=torch.float32, real_label=1.0, quick=True):
    options = dict(kind=kind, real_label=real_label)
    return Case(op="gan_d_loss", name=name,
                make_inputs=functools.partial(_inputs, dict(real_logits=shape, fake_logits=shape), dtype, 2.0),
                fastgen=functools.partial(fastgen.gan_d_loss, **options),
                reference=functools.partial(reference.gan_d_loss, **options),
                bytes_forward=_logit_bytes_forward, bytes_backward=_logit_bytes_backward, quick=quick)


def _g_case(name, shape, kind="nonsaturating", dtype=torch.float32, quick=True):
    return Case(op="gan_g_loss", name=name,
                make_inputs=functools.partial(_inputs, dict(fake_logits=shape), dtype, 2.0),
                fastgen=functools.partial(fastgen.gan_g_loss, kind=kind),
                reference=functools.partial(reference.gan_g_loss, kind=kind),
                bytes_forward=_logit_bytes_forward, bytes_backward=_logit_bytes_backward, quick=quick)


def _penalty_case(name, shape, kind="r1", dtype=torch.float32, quick=True):
    return Case(op="gradient_penalty", name=name,
                make_inputs=functools.partial(_inputs, dict(grads=shape), dtype, 0.05),
                fastgen=functools.partial(fastgen.gradient_penalty, kind=kind),
                reference=functools.partial(reference.gradient_penalty, kind=kind),
                bytes_forward=_penalty_bytes_forward, bytes_backward=_penalty_bytes_backward, quick=quick)


CASES = [
    _d_case("minimax B=64 fp32", (64, 1)),  # launch-bound: one logit per sample
    _d_case("hinge patchgan 64x1x30x30 fp32", (64, 1, 30, 30), kind="hinge"),
    _d_case("minimax label 0.9 patchgan 64x1x30x30 bf16", (64, 1, 30, 30), dtype=torch.bfloat16, real_label=0.9,
            quick=False),
    _g_case("nonsaturating B=64 fp32", (64, 1)),
    _g_case("ls patchgan 64x1x30x30 bf16", (64, 1, 30, 30), kind="ls", dtype=torch.bfloat16, quick=False),
    _penalty_case("r1 toy B=64 2-d fp32", (64, 2)),  # launch-bound: a 2-D toy GAN's input gradients
    _penalty_case("r1 64x3x64x64 fp32", (64, 3, 64, 64)),
    _penalty_case("wgan-gp 64x3x64x64 bf16", (64, 3, 64, 64), kind="wgan-gp", dtype=torch.bfloat16, quick=False),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.quick], ids=lambda c: c.label)
def test_gan_losses(benchmark, case, provider, mode, device):
    run_pytest_benchmark(benchmark, case, provider, mode, device)
