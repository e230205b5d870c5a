"""Benchmark cases of fastgen.reparameterize_kl; under pytest-benchmark: `pytest benchmarks/ --benchmark-only`."""

from __future__ import annotations

import functools

import pytest
import torch

import fastgen
from fastgen import reference
from fastgen.benchmarks.harness import MODES, PROVIDERS, Case, nbytes, run_pytest_benchmark


def _inputs(shape, dtype, prior, device, batch=None, check=False):
    shape = (batch or shape[0], *shape[1:])
    if device == "meta":  # shapes only
        return {k: torch.empty(shape, dtype=dtype, device="meta") for k in ("mu", "logvar")
                + (("prior_mu", "prior_logvar") if prior else ())}
    gen = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(shape, generator=gen).to(device, dtype)  # noqa: E731
    inputs = dict(mu=make().requires_grad_(), logvar=make().requires_grad_())
    if prior:
        inputs.update(prior_mu=make().requires_grad_(), prior_logvar=make().requires_grad_())
    if check:
        inputs["eps"] = make()  # the same noise on both sides
    return inputs


def _fastgen(**inputs):
    # in-kernel Philox noise (fixed seed) unless the noise is given
    return fastgen.reparameterize_kl(**inputs, seed=None if "eps" in inputs else 0)


def _bytes_forward(inputs):  # read every input once, write z and the float32 kl
    mu = inputs["mu"]
    return nbytes(inputs) + nbytes(mu) + 4 * mu.shape[0]


def _bytes_backward(inputs):  # read the inputs, grad_z and grad_kl once, write one gradient per input
    mu = inputs["mu"]
    return 2 * nbytes(inputs) + nbytes(mu) + 4 * mu.shape[0]


def _case(name, shape, dtype=torch.float32, prior=False, quick=True):
    return Case(
        op="reparameterize_kl", name=name,
        make_inputs=functools.partial(_inputs, shape, dtype, prior),
        # in-kernel Philox noise for fastgen; torch.randn_like noise in the reference, as VAEs write it
        fastgen=_fastgen,  # noise drawn in the kernel; the reference draws it with torch.randn as VAEs do
        reference=reference.reparameterize_kl,
        bytes_forward=_bytes_forward, bytes_backward=_bytes_backward, quick=quick,
    )


CASES = [
    _case("mlp-vae B=128 z=32 fp32", (128, 32)),  # launch-bound: the usual MNIST VAE
    _case("B=4096 z=512 fp32", (4096, 512)),
    _case("B=4096 z=512 bf16", (4096, 512), torch.bfloat16),
    _case("nvae-prior B=32 20x32x32 fp32", (32, 20, 32, 32), prior=True),  # hierarchical: learned prior
    _case("nvae-prior B=32 20x32x32 bf16", (32, 20, 32, 32), torch.bfloat16, prior=True, quick=False),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.quick], ids=lambda c: c.name)
def test_reparameterize_kl(benchmark, case, provider, mode, device):
    run_pytest_benchmark(benchmark, case, provider, mode, device)
