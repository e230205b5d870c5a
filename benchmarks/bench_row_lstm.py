"""Benchmark cases of fastgen.row_lstm (PixelRNN's Row LSTM recurrence) against the eager reference loop over the
rows (and torch.compile of it); under pytest-benchmark: `pytest benchmarks/ --benchmark-only`.

Shapes of one Row LSTM layer of the paper's models: 32x32 images, h = 64 and 128 hidden units (gates_in
[B, 4h, 32, 32], the output of the 1 x 3 input-to-state convolution), B = 16 and 64, bf16 and fp32. FLOPs are
those of the state-to-state convolution (the GEMMs of the recurrence). No GPU timing of these cases exists yet.

The op picks its launch form by :func:`fastgen.ops.row_lstm.persistent_rows`; the "per-row" and "persistent"
cases force each form on the same shape (H = 32 rows), so their ``launches`` column shows what the persistent
form saves (32 launches each way against 1) and, on a GPU, their times what it costs.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastgen
from fastgen import reference
from fastgen.benchmarks.harness import MODES, PROVIDERS, Case, nbytes, run_pytest_benchmark

KERNEL_SIZE = 3


def _inputs(spec, device, batch=None, check=False):
    full_batch, n, size, dtype = spec
    shapes = dict(gates_in=(batch or full_batch, 4 * n, size, size), weight=(4 * n, n, 1, KERNEL_SIZE))
    if device == "meta":  # shapes only
        return {name: torch.empty(shape, dtype=dtype, device="meta") for name, shape in shapes.items()}
    gen = torch.Generator().manual_seed(0)
    scale = dict(gates_in=1.0, weight=(n * KERNEL_SIZE) ** -0.5)
    return {name: (scale[name] * torch.randn(shape, generator=gen)).to(device, dtype).requires_grad_()
            for name, shape in shapes.items()}


def _sizes(inputs):
    g = inputs["gates_in"]
    hidden = g.numel() // 4 * g.element_size()
    cell = g.numel() // 4 * (8 if g.dtype == torch.float64 else 4)
    return nbytes(g), hidden, cell


def _bytes_forward(inputs):
    # read gates_in and the weight, write h, c and the pre-activations; read h and c of the row above again
    gates, hidden, cell = _sizes(inputs)
    return gates + nbytes(inputs["weight"]) + 2 * (hidden + cell) + gates


def _bytes_backward(inputs):
    # per row: read z, c (twice: this row and the one above), grad_h, dz of the row below; write dz; the carried
    # dc is read and written; then the weight gradient reads dz and h once more
    gates, hidden, cell = _sizes(inputs)
    return 3 * gates + 4 * cell + 2 * hidden + nbytes(inputs["weight"])


def _flops(inputs, mode):
    g, w = inputs["gates_in"], inputs["weight"]
    batch, _, height, width = g.shape
    forward = 2 * batch * (height - 1) * width * w.numel()
    total = forward if mode == "forward" else 3 * forward  # backward: the recurrence's dh and the weight grad
    return total, total


def _fastgen(gates_in, weight, persistent=None):
    return fastgen.row_lstm(gates_in, weight, persistent=persistent)


def _reference(gates_in, weight):
    return reference.row_lstm(gates_in, weight)


def _case(name, batch, n, size=32, dtype=torch.bfloat16, quick=False, persistent=None):
    """``persistent``: the launch form forced (None: the op's rule)."""
    return Case(op="row_lstm", name=name, make_inputs=functools.partial(_inputs, (batch, n, size, dtype)),
                fastgen=functools.partial(_fastgen, persistent=persistent), reference=_reference,
                bytes_forward=_bytes_forward, bytes_backward=_bytes_backward, quick=quick, flops=_flops)


CASES = [
    _case("B=16 h=64 32x32 bf16", 16, 64, quick=True),
    _case("B=16 h=64 32x32 fp32", 16, 64, dtype=torch.float32),
    _case("B=16 h=128 32x32 bf16", 16, 128),
    _case("B=16 h=128 32x32 fp32", 16, 128, dtype=torch.float32),
    _case("B=64 h=64 32x32 bf16", 64, 64),
    _case("B=64 h=64 32x32 fp32", 64, 64, dtype=torch.float32),
    _case("B=64 h=128 32x32 bf16", 64, 128),
    _case("B=64 h=128 32x32 fp32", 64, 128, dtype=torch.float32),
    # the two launch forms forced on one shape (32 rows)
    _case("B=16 h=64 32x32 bf16 per-row", 16, 64, persistent=False),
    _case("B=16 h=64 32x32 bf16 persistent", 16, 64, persistent=True),
    _case("B=16 h=128 32x32 fp32 per-row", 16, 128, dtype=torch.float32, persistent=False),
    _case("B=16 h=128 32x32 fp32 persistent", 16, 128, dtype=torch.float32, persistent=True),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.quick], ids=lambda c: c.name)
def test_row_lstm(benchmark, case, provider, mode, device):
    run_pytest_benchmark(benchmark, case, provider, mode, device)
