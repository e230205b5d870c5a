"""Host cost per call: what a fastgen op costs the CPU that launches it, against the eager op, at small sizes.

At the sizes of small models a training step is bound by the host: every call of an op spends Python time
(argument checks, launch planning, autograd) before its kernels start. Each row is the mean over ``CALLS``
back-to-back calls, with one device sync at the end, of

* on CUDA: the real call, fastgen (compiled kernels) and eager PyTorch side by side;
* on CPU: fastgen's own Python with every kernel launch replaced by a no-op (:func:`fastgen.launch.dry_run`;
  an interpreted launch is not a GPU launch), beside the eager op on the same CPU tensors. The inputs are
  tiny, so the eager time is mostly its own host cost too.

Modes: ``forward`` (inputs require grad, so autograd records the call) and ``forward+backward``.
A ``launch`` row compares one bare ``@triton.jit`` launch through Triton's own dispatch with the same
launch through :class:`fastgen.launch.Kernel` (CUDA only: on CPU there is no launch to time).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import fastgen
from fastgen import reference
from fastgen.launch import Kernel, dry_run
from fastgen.nn import masks

CALLS = 2000
ROUNDS = 5  # the calls are timed in rounds; the median round is reported (robust to a busy machine)
WARMUP = 50
MODES = ("forward", "forward+backward")
COLUMNS = ["op", "case", "mode", "fastgen_us", "eager_us", "ratio", "calls", "how", "device", "torch",
           "triton", "date"]


@dataclasses.dataclass
class HostCase:
    op: str
    name: str
    make_inputs: Callable[[str], dict]  # device -> keyword arguments (floating inputs require grad)
    fastgen: Callable[..., object]
    eager: Callable[..., object]

    @property
    def label(self) -> str:
        return f"{self.op} {self.name}"


def _randn(device, *shape, grad=True, dtype=torch.float32):
    t = torch.randn(*shape, device=device, dtype=dtype)
    return t.requires_grad_(grad)


def _masked_conv(device):
    return dict(x=_randn(device, 2, 16, 8, 8), weight=_randn(device, 16, 16, 3, 3), bias=_randn(device, 16))


def _pixel_ce(device):
    return dict(logits=_randn(device, 2, 256, 8, 8), targets=torch.randint(0, 256, (2, 1, 8, 8), device=device))


def _dmol(device):
    x = torch.randint(0, 256, (2, 1, 8, 8), device=device) / 127.5 - 1.0  # images in [-1, 1]
    return dict(params=_randn(device, 2, 10 * 3, 8, 8), x=x, n_mixtures=10)


_MASK_3X3_B = masks.masked(3, "B").mask(16, 16)  # the eager side multiplies by a mask made once, as models do

CASES = [
    HostCase("gan_g_loss", "nonsaturating B=64", lambda d: dict(fake_logits=_randn(d, 64, 1)),
             fastgen.gan_g_loss, reference.gan_g_loss),
    HostCase("gan_d_loss", "minimax B=64", lambda d: dict(real_logits=_randn(d, 64, 1), fake_logits=_randn(d, 64, 1)),
             fastgen.gan_d_loss, reference.gan_d_loss),
    HostCase("gradient_penalty", "r1 B=64 2-d", lambda d: dict(grads=_randn(d, 64, 2)),
             fastgen.gradient_penalty, reference.gradient_penalty),
    HostCase("reparameterize_kl", "B=128 z=32", lambda d: dict(mu=_randn(d, 128, 32), logvar=_randn(d, 128, 32)),
             fastgen.reparameterize_kl, reference.reparameterize_kl),
    HostCase("gumbel_softmax", "B=64 C=10", lambda d: dict(logits=_randn(d, 64, 10)),
             fastgen.gumbel_softmax, reference.gumbel_softmax),
    HostCase("pixel_cross_entropy", "B=2 256 levels 8x8x1", _pixel_ce,
             fastgen.pixel_cross_entropy, reference.pixel_cross_entropy),
    HostCase("dmol_nll", "K=10 B=2 8x8x1", _dmol, fastgen.dmol_nll, reference.dmol_nll),
    HostCase("gated_activation", "B=2 2n=32 8x8", lambda d: dict(t=_randn(d, 2, 32, 8, 8)),
             fastgen.gated_activation, reference.gated_activation),
    HostCase("masked_conv2d", "B=2 C=16 8x8 3x3 B", _masked_conv, fastgen.masked_conv2d,
             lambda x, weight, bias: F.conv2d(x, weight * _MASK_3X3_B.to(x.device), bias, padding=1)),
]


def _step(fn, inputs: dict, mode: str) -> Callable[[], None]:
    if mode == "forward":
        return lambda: fn(**inputs)
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]

    def forward_backward():
        out = fn(**inputs)
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if o.requires_grad]
        torch.autograd.backward([o.sum() for o in outs])
        for leaf in leaves:
            leaf.grad = None

    return forward_backward


def per_call_us(run: Callable[[], None], device: str, calls: int = CALLS) -> float:
    """Microseconds per call: ``calls`` back-to-back calls in ``ROUNDS`` rounds, each round ended by one device
    sync; the median round's mean."""
    for _ in range(WARMUP):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    per_round = max(1, calls // ROUNDS)
    means = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(per_round):
            run()
        if device == "cuda":
            torch.cuda.synchronize()
        means.append((time.perf_counter() - start) / per_round * 1e6)
    return statistics.median(means)


@triton.jit
def _bare_kernel(X,  # pointer to one float32
                 ):
    tl.store(X, 1.0)


def _launch_rows(device: str, calls: int) -> list[dict]:
    """One bare launch: Triton's own ``kernel[grid](x)`` against fastgen's Kernel path (CUDA only)."""
    if device != "cuda":
        return []
    kernel = Kernel(_bare_kernel, configs=[triton.Config({}, num_warps=1)])
    x = torch.empty(1, device=device)
    triton_us = per_call_us(lambda: _bare_kernel[(1,)](x, num_warps=1), device, calls)
    fastgen_us = per_call_us(lambda: kernel[(1,)](x), device, calls)
    return [dict(op="launch", case="bare @triton.jit launch", mode="forward", fastgen_us=round(fastgen_us, 2),
                 eager_us=round(triton_us, 2), ratio=round(fastgen_us / triton_us, 3), calls=calls,
                 how="fastgen.launch.Kernel vs Triton's kernel[grid](...)")]


def run(device: str, only: str = "", calls: int = CALLS, progress: bool = True,
        on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """The host-cost rows; each handed to ``on_row`` as it is measured, and printed when ``progress``."""
    rows = _launch_rows(device, calls) if only in "launch" else []
    for row in rows:
        if on_row is not None:
            on_row(row)
    for case in CASES:
        if only and only not in case.label:
            continue
        for mode in MODES:
            inputs = case.make_inputs(device)
            eager_us = per_call_us(_step(case.eager, inputs, mode), device, calls)
            if device == "cuda":
                fastgen_us = per_call_us(_step(case.fastgen, inputs, mode), device, calls)
                how = "real calls, compiled kernels"
            else:
                with dry_run():
                    fastgen_us = per_call_us(_step(case.fastgen, inputs, mode), device, calls)
                how = "CPU: fastgen's Python, launches replaced by no-ops; eager on the same CPU tensors"
            row = dict(op=case.op, case=case.name, mode=mode, fastgen_us=round(fastgen_us, 2),
                       eager_us=round(eager_us, 2), ratio=round(fastgen_us / eager_us, 3), calls=calls, how=how)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            if progress:
                print(f"host {case.op:20s} {case.name:22s} {mode:17s} fastgen {fastgen_us:8.2f} us  "
                      f"eager {eager_us:8.2f} us  ratio {fastgen_us / eager_us:5.2f}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| op | case | mode | fastgen us/call | eager us/call | fastgen / eager |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['case']} | {r['mode']} | {r['fastgen_us']:.1f} | {r['eager_us']:.1f} | "
                     f"{r['ratio']:.2f} |")
    how = sorted({r["how"] for r in rows})
    return "\n".join(lines + [""] + [f"- {h}" for h in how])
