"""Which launch configurations a kernel runs with here.

Each op family lists its kernels' configurations once, in its ``register_family(configs=...)`` call
(:mod:`fastgen.registry`). :class:`fastgen.launch.Kernel` launches a kernel with one config directly and wraps a
kernel with several in ``triton.autotune`` (timed once per key on the GPU); under the interpreter there is no
driver to time with, so only the first config is used. The sm_90 compile check (:mod:`fastgen.compile_check`)
walks the same lists, so every config an op can launch is compiled in CI.
"""

from __future__ import annotations

import triton

from fastgen.dispatch import interpreting
from fastgen.registry import kernel_configs


def kernel_name(kernel) -> str:
    """The Python name of a @triton.jit kernel (also when wrapped by the interpreter)."""
    return getattr(kernel, "fn", kernel).__name__


def configs_for(kernel) -> list[triton.Config]:
    """The configs that ``kernel`` is launched with here: all of them on a GPU, the first under the interpreter."""
    configs = kernel_configs(kernel)
    return configs[:1] if interpreting() else list(configs)
