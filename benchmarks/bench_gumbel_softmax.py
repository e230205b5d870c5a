"""Benchmark cases of fastgen.gumbel_softmax; under pytest-benchmark: `pytest benchmarks/ --benchmark-only`."""

from __future__ import annotations

import functools

import pytest
import torch

import fastgen
from fastgen import reference
from fastgen.benchmarks.harness import MODES, PROVIDERS, Case, nbytes, run_pytest_benchmark

TAU = 0.5


def _inputs(shape, dtype, device, batch=None, check=False):
    shape = (batch or shape[0], *shape[1:])
    if device == "meta":  # shapes only
        return {"logits": torch.empty(shape, dtype=dtype, device="meta")}
    gen = torch.Generator().manual_seed(0)
    inputs = {"logits": (2 * torch.randn(shape, generator=gen)).to(device, dtype).requires_grad_()}
    if check:  # the same noise on both sides
        inputs["noise"] = reference.sample_gumbel(torch.empty(shape, dtype=torch.float64), seed=0).to(device, dtype)
    return inputs


def _fastgen(hard, **inputs):
    # in-kernel Philox noise (fixed seed) unless the noise is given
    return fastgen.gumbel_softmax(**inputs, tau=TAU, hard=hard, seed=None if "noise" in inputs else 0)


def _reference(hard, **inputs):
    # F.gumbel_softmax's eager ops: exponential_, log, add, div, softmax (and max, scatter, sub, add when hard)
    return reference.gumbel_softmax(**inputs, tau=TAU, hard=hard)


def _bytes_forward(hard, inputs):
    # one pass over rows of at most 1024 classes: read the logits, write y (and, hard, the soft y kept for the
    # backward: every case's logits require grad)
    return (3 if hard else 2) * nbytes(inputs["logits"])


def _bytes_backward(inputs):  # read the soft y and grad_y, write grad_logits
    return 3 * nbytes(inputs["logits"])


def _case(name, shape, dtype=torch.float32, hard=False, quick=True):
    return Case(
        op="gumbel_softmax", name=name,
        make_inputs=functools.partial(_inputs, shape, dtype),
        fastgen=functools.partial(_fastgen, hard), reference=functools.partial(_reference, hard),
        bytes_forward=functools.partial(_bytes_forward, hard), bytes_backward=_bytes_backward, quick=quick,
    )


CASES = [
    _case("B=64 C=10 fp32", (64, 10)),  # launch-bound: a VQ/discrete-latent head or an RL policy
    _case("B=64 C=10 hard fp32", (64, 10), hard=True),
    _case("B=64 C=10 bf16", (64, 10), torch.bfloat16),
    _case("B=65536 C=512 fp32", (65536, 512), quick=False),  # bandwidth-bound: 128 MiB of logits
    _case("B=65536 C=512 hard fp32", (65536, 512), hard=True, quick=False),
    _case("B=65536 C=512 bf16", (65536, 512), torch.bfloat16, quick=False),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.quick], ids=lambda c: c.name)
def test_gumbel_softmax(benchmark, case, provider, mode, device):
    run_pytest_benchmark(benchmark, case, provider, mode, device)
