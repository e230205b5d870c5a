"""Measuring one benchmark case: fastgen vs eager PyTorch vs torch.compile, forward and forward+backward.

What is measured, per (case, provider, mode):
* time: ``triton.testing.do_bench`` quantiles (p20, p50, p80) on CUDA; a wall-clock median of repeated
  runs on CPU. Interpreted Triton kernels are never timed: their time says nothing about a GPU.
* launches per call: kernels a call starts, counted while it runs (every Triton launch, and every ATen op
  that would start a kernel on a GPU: views and allocations do not). Not counted for torch.compile, whose
  generated kernels are neither (left empty rather than guessed).
* bytes: for fastgen the bytes the op must move, counted from the shapes (each input read once, each output
  written once); for the eager reference the sum over its ATen ops of the bytes each one reads and writes.
* saved KB per sample: activations kept for the backward (``saved_tensors_hooks``); peak MB on CUDA.
* GFLOP and TFLOP/s (matmul-shaped ops): the multiply-adds the fastgen kernels do ("live", e.g. unmasked
  taps only) and those of the dense eager computation, with TFLOP/s of each provider's time counted both ways.
* Interpreted runs (CPU) count launches and saved memory on a shrunken batch (``count_batch``); the bytes
  of the fused op are still those of the full shapes.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

PROVIDERS = ("fastgen", "eager", "torch.compile")
MODES = ("forward", "forward+backward")
H200_COPY_GBPS = 4300.0  # measured ceiling of a device-to-device copy on the H200 (project notes)
H200_BF16_TFLOPS = 790.0  # measured ceiling of a bf16 matmul on the H200 (project notes)


@dataclasses.dataclass
class Case:
    """One benchmark shape of one op."""

    op: str
    name: str
    # (device, batch=None, check=False) -> keyword arguments (floating tensors require grad); batch shrinks
    # the batch for the interpreter, check=True adds what makes both sides deterministic (e.g. the noise)
    make_inputs: Callable[..., dict]
    fastgen: Callable[..., tuple]  # the fastgen op
    reference: Callable[..., tuple]  # the eager PyTorch reference with the same arguments
    bytes_forward: Callable[[dict], int]  # bytes the fused forward must move, from the inputs' shapes
    bytes_backward: Callable[[dict], int]  # the same for the fused backward
    quick: bool = True  # part of `fastgen bench --quick` (the default)
    # (inputs, mode) -> (FLOPs the fastgen kernels do, FLOPs of the dense eager computation), for matmul-shaped
    # ops; TFLOP/s is then shown counted both ways
    flops: Callable[[dict, str], tuple[int, int]] | None = None
    modes: tuple[str, ...] = MODES  # ("forward",) for an op without a backward (a sampler)

    @property
    def label(self) -> str:
        return f"{self.op} {self.name}"


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    return []


def nbytes(*values) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_in(list(values)))


_compiled: dict[str, Callable[..., tuple]] = {}  # case label -> torch.compile of its reference (the latest case)


def compiled_reference(case: Case) -> Callable[..., tuple]:
    """``torch.compile`` of the case's reference, built once per case: its forward and forward+backward rows
    reuse the same compiled function (and graphs). A new case drops the previous one's graphs first
    (``torch._dynamo.reset()``): several cases share one reference function, whose recompiles for each new
    shape would otherwise pile up against dynamo's recompile limit (past it, dynamo silently runs eager)."""
    if case.label not in _compiled:
        torch._dynamo.reset()
        _compiled.clear()
        _compiled[case.label] = torch.compile(case.reference, dynamic=False)
    return _compiled[case.label]


def provider_function(case: Case, provider: str) -> Callable[..., tuple]:
    if provider == "fastgen":
        return case.fastgen
    if provider == "eager":
        return case.reference
    if provider == "torch.compile":
        return compiled_reference(case)
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


def step(fn: Callable[..., tuple], inputs: dict, mode: str) -> Callable[[], None]:
    """A no-argument callable running ``fn`` once in ``mode`` (the backward gets fixed output gradients)."""
    if mode == "forward":
        return lambda: fn(**inputs)
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    outputs = [t for t in tensors_in(fn(**inputs)) if t.requires_grad]
    grads = [torch.randn_like(t) for t in outputs]

    def forward_backward():
        outs = [t for t in tensors_in(fn(**inputs)) if t.requires_grad]
        torch.autograd.grad(outs, leaves, grads)

    return forward_backward


# ATen ops that start no kernel on a GPU: allocations, views and metadata.
_FREE_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
             "alias", "set_", "resize_"}


class _KernelCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.launches = 0
        self.bytes = 0
        self.inside_triton = 0  # the interpreter's own tensor copies are not the op's launches

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not (self.inside_triton or getattr(func, "is_view", False) or name in _FREE_OPS):
            self.launches += 1
            self.bytes += nbytes(args, kwargs or {}, out)
        return out


def count_launches(run: Callable[[], None]) -> tuple[int, int]:
    """(kernels started, bytes the ATen ops among them read and write) by one call of ``run``."""
    counter = _KernelCounter()
    triton_launches = [0]
    patched = []
    kinds = [triton.runtime.jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        kinds.append(InterpretedFunction)
    except ImportError:
        pass
    for kind in kinds:
        original = kind.run

        def counted(self, *args, _original=original, **kwargs):
            triton_launches[0] += 1
            counter.inside_triton += 1
            try:
                return _original(self, *args, **kwargs)
            finally:
                counter.inside_triton -= 1

        kind.run = counted
        patched.append((kind, original))
    try:
        with counter:
            run()
    finally:
        for kind, original in patched:
            kind.run = original
    return counter.launches + triton_launches[0], counter.bytes


def saved_bytes(fn: Callable[..., tuple], inputs: dict) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of one forward call."""
    seen: dict[tuple, int] = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(**inputs)
    return sum(seen.values())


def time_ms(run: Callable[[], None], device: str, budget_s: float = 0.3) -> tuple[float, float, float]:
    """(p20, p50, p80) milliseconds of one call."""
    if device == "cuda":
        return tuple(triton.testing.do_bench(run, quantiles=[0.2, 0.5, 0.8]))
    run()  # warm-up
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=10)
    return q[1], statistics.median(times), q[7]


def peak_memory_mb(run: Callable[[], None], device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def max_error(case: Case, device: str, batch: int | None = None) -> float:
    """Largest error of fastgen against the float64 reference, relative to the size of the value: over every
    output and input gradient, max |fastgen - reference| / max |reference|. Both sides get the same inputs,
    noise and output gradients (rounded to fastgen's dtypes, then used in float64 by the reference)."""
    inputs = case.make_inputs(device, batch=batch, check=True)
    as64 = {k: v.detach().double().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) and
            v.is_floating_point() else v for k, v in inputs.items()}
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]

    def outputs(value):  # the differentiable outputs; every floating output of an op without a backward
        return [t for t in tensors_in(value) if (t.requires_grad if leaves else t.is_floating_point())]

    outs = outputs(case.fastgen(**inputs))
    outs64 = outputs(case.reference(**as64))
    results, expected = [o.detach().double() for o in outs], list(outs64)
    if leaves:
        gen = torch.Generator(device=device).manual_seed(0)
        grads = [torch.randn(t.shape, generator=gen, device=device).to(t.dtype) for t in outs]
        results += [g.double() for g in torch.autograd.grad(outs, leaves, grads)]
        leaves64 = [t for t in as64.values() if isinstance(t, torch.Tensor) and t.requires_grad]
        expected += list(torch.autograd.grad(outs64, leaves64, [g.double() for g in grads]))
    return max(((a - b.detach()).abs().max().item() / max(b.detach().abs().max().item(), 1e-30)
                for a, b in zip(results, expected) if a.numel()), default=0.0)


def measure(case: Case, provider: str, mode: str, device: str, *, timed: bool, batch: int | None = None) -> dict:
    """One result row; ``batch`` shrinks the batch (the interpreter's launch count, untimed)."""
    inputs = case.make_inputs(device, batch=batch)
    fn = provider_function(case, provider)
    run = step(fn, inputs, mode)
    if batch is None:
        run()  # compile / autotune outside of every count (nothing to warm up under the interpreter)
    # torch.compile's generated kernels are neither ATen ops nor @triton.jit launches: not counted (None)
    launches, eager_bytes = count_launches(run) if provider != "torch.compile" else (None, None)
    full = inputs if batch is None else case.make_inputs("meta")  # bytes of the real shapes
    fused_bytes = case.bytes_forward(full) + (case.bytes_backward(full) if mode != "forward" else 0)
    count_batch = next(iter(tensors_in(inputs))).shape[0]
    row = dict(op=case.op, case=case.name, provider=provider, mode=mode, launches=launches,
               bytes_moved=fused_bytes if provider == "fastgen" else eager_bytes,
               saved_kb_per_sample=round(saved_bytes(fn, inputs) / 1024 / max(count_batch, 1), 3),
               count_batch=count_batch, p20_ms=None, p50_ms=None, p80_ms=None, gbps=None, peak_mb=None)
    live = dense = None
    if case.flops is not None:
        live, dense = case.flops(full, mode)
        row.update(gflop_live=round(live / 1e9, 3), gflop_dense=round(dense / 1e9, 3))
    if timed:
        p20, p50, p80 = time_ms(run, device)
        peak = peak_memory_mb(run, device)
        row.update(p20_ms=round(p20, 4), p50_ms=round(p50, 4), p80_ms=round(p80, 4),
                   gbps=round(fused_bytes / (p50 * 1e-3) / 1e9, 1),
                   peak_mb=None if peak is None else round(peak, 2))
        if live is not None:
            row.update(tflops_live=round(live / (p50 * 1e-3) / 1e12, 3),
                       tflops_dense=round(dense / (p50 * 1e-3) / 1e12, 3))
    return row


def run_pytest_benchmark(benchmark, case: Case, provider: str, mode: str, device: str) -> None:
    """One case under pytest-benchmark (``pytest benchmarks/ --benchmark-only``); on CPU only eager is timed."""
    import pytest

    if mode not in case.modes:
        pytest.skip(f"{case.op} has no {mode} mode")
    if device == "cpu" and provider == "fastgen":
        pytest.skip("fastgen's kernels run interpreted on CPU: not a speed figure (fastgen bench counts them)")
    if device == "cpu" and provider == "torch.compile":
        pytest.skip("torch.compile is timed on GPU runs, or with `fastgen bench --full` (CPU builds are slow)")
    run = step(provider_function(case, provider), case.make_inputs(device), mode)
    run()
    benchmark.group = f"{case.label} {mode}"
    benchmark(run)
