"""Checks shared by every op family's tests: its custom ops pass ``torch.library.opcheck``, and a function
calling the public op compiles whole (``torch.compile(fullgraph=True)``, no graph break) with the same values
and gradients as the eager call."""

from __future__ import annotations

import torch

from tolerances import assert_close


def check_opcheck(op, *args, **kwargs) -> None:
    """Every check of ``torch.library.opcheck`` (schema, fake tensor, autograd registration, AOT dispatch)."""
    results = torch.library.opcheck(op, args, kwargs)
    failed = {name: result for name, result in results.items() if result != "SUCCESS"}
    assert not failed, failed


def check_fullgraph(fn, *inputs: torch.Tensor, dtype=torch.float32) -> None:
    """``fn(*inputs)`` (a tensor or tuple of tensors) compiled with ``fullgraph=True`` against its eager call:
    outputs and, where inputs require grad, the gradients of the sum of the outputs."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")

    def run(f):
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        outs = f(*leaves)
        outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
        wanted = [t for t in leaves if t.requires_grad]
        grads = torch.autograd.grad(sum(o.float().sum() for o in outs), wanted) if wanted else ()
        return [o.detach() for o in outs], list(grads)

    eager_outs, eager_grads = run(fn)
    compiled_outs, compiled_grads = run(compiled)
    for got, expected in zip(compiled_outs + compiled_grads, eager_outs + eager_grads, strict=True):
        assert_close(got, expected, dtype)
