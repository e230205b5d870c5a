"""fastgen's ops as PyTorch custom ops (``torch.ops.fastgen.*``), for torch.compile, CUDA graphs and export.

Every public op has two entry points that run the same launch code:

* called eagerly, it runs its ``torch.autograd.Function`` (``fastgen.GANGeneratorLoss``, ...): the lowest host
  cost, since a custom op's Python dispatch (autograd key, then the implementation) costs some 25-35 us more
  per call than ``Function.apply`` on the machines measured (``fastgen bench --suite host`` shows the rest);
* under ``torch.compile`` (``torch.compiler.is_compiling()``), it calls its custom op, which dynamo puts in the
  graph whole (no graph break, ``fullgraph=True`` works) and CUDA graphs replay (``mode="reduce-overhead"``).
  Each custom op has a fake implementation (shapes, dtypes and strides of its outputs, for tracing) and its
  autograd registered with ``register_autograd``; its backward is itself a custom op.

Ops whose backward needs what the forward computed (the gradients the fused losses write in their forward,
a soft sample) return it as extra outputs of the forward custom op; the public function drops them.
``torch.library.opcheck`` checks every op in its family's tests; ``tests/test_library.py`` checks that every
public op has its custom op and that the training loss of every model compiles whole.

On CPU without ``TRITON_INTERPRET=1`` the public functions run the plain-PyTorch reference before any op is
reached, eager or compiled (dynamo traces the reference); the custom ops themselves run the Triton kernels.
"""

from __future__ import annotations

from typing import Callable

import torch

NAMESPACE = "fastgen"


def custom_op(name: str, schema: str, tags: tuple = ()) -> Callable:
    """Decorator: registers ``fn`` as ``torch.ops.fastgen.<name>`` with ``schema`` (e.g. ``"(Tensor x, float
    beta) -> Tensor"``), a functional op (it mutates no input), with ``tags`` (e.g. ``torch.Tag.cudagraph_unsafe``
    for an op that a CUDA-graph replay would get wrong)."""
    return lambda fn: torch.library.custom_op(f"{NAMESPACE}::{name}", fn, mutates_args=(), schema=schema, tags=tags)


def traced() -> bool:
    """True while torch.compile traces the caller: the public ops then call their custom ops."""
    return torch.compiler.is_compiling()


def nothing(like: torch.Tensor) -> torch.Tensor:
    """The placeholder a custom op returns where its eager Function returns None (an output not computed)."""
    return like.new_empty(0)


def registered_ops() -> list[str]:
    """Names of every fastgen custom op (``torch.ops.fastgen.<name>``)."""
    return sorted(name for name in dir(torch.ops.fastgen) if not name.startswith("_")
                  and isinstance(getattr(torch.ops.fastgen, name), torch._ops.OpOverloadPacket))
