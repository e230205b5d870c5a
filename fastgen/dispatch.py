"""Which implementation runs a call: the Triton kernels (compiled or interpreted) or the PyTorch reference.

The rule, the same for every op:

* a CUDA tensor runs the compiled Triton kernels;
* a CPU tensor runs the same Triton kernels under Triton's interpreter when ``TRITON_INTERPRET=1`` was set
  before ``triton`` (and so ``fastgen``) was imported: slow, but it executes the real kernel code;
* any other CPU call runs the plain-PyTorch reference in :mod:`fastgen.reference`.

``fastgen.use_backend("reference")`` (or ``"triton"``) forces one side inside a ``with`` block, for A/B runs;
``fastgen.backend_for(tensor)`` says which side a call on that tensor would take.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import triton

BACKENDS = ("triton", "reference")

# triton reads TRITON_INTERPRET once, when @triton.jit decorates a kernel; our kernels are decorated when
# fastgen is imported, so the value at that moment is the one that counts.
_INTERPRETED = bool(triton.knobs.runtime.interpret)

# The backend forced by ``use_backend`` (None: the rule above). A module global rather than a ContextVar, so
# that torch.compile traces ``backend_for`` (dynamo guards on the value; it cannot trace ``ContextVar.get``).
_forced: str | None = None
_kernels_on_cpu = False  # set only by fastgen.launch.dry_run (host-cost measurements, launches are no-ops)


def interpreting() -> bool:
    """True when fastgen's Triton kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return _INTERPRETED


def _triton_can_run_on(device: torch.device) -> bool:
    if device.type == "cuda":
        return not _INTERPRETED
    return device.type == "cpu" and (_INTERPRETED or _kernels_on_cpu)


@contextlib.contextmanager
def kernels_on_cpu() -> Iterator[None]:
    """CPU tensors take the kernel path inside the block; only for :func:`fastgen.launch.dry_run`."""
    global _kernels_on_cpu
    previous = _kernels_on_cpu
    _kernels_on_cpu = True
    try:
        yield
    finally:
        _kernels_on_cpu = previous


def backend_for(tensor: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"``: the implementation a fastgen op called on ``tensor`` runs now."""
    forced = _forced
    if forced is None:  # the common cases, without building a torch.device
        if tensor.is_cuda and not _INTERPRETED:
            return "triton"
        if tensor.is_cpu and (_INTERPRETED or _kernels_on_cpu):
            return "triton"
    if forced == "reference":
        return "reference"
    if _triton_can_run_on(tensor.device):
        return "triton"
    if forced == "triton":
        why = ("set TRITON_INTERPRET=1 before importing fastgen to run the kernels on CPU"
               if tensor.device.type == "cpu" else
               "a process with TRITON_INTERPRET=1 runs the kernels on CPU tensors only"
               if tensor.device.type == "cuda" else "the kernels run on CUDA and (interpreted) CPU tensors")
        raise RuntimeError(f"use_backend('triton'): cannot run Triton kernels on a {tensor.device} tensor: {why}")
    return "reference"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force every fastgen op inside the block onto ``"triton"`` or ``"reference"``."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {BACKENDS}, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous
