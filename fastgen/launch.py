"""The one launch path of every fastgen kernel.

Each op module wraps its ``@triton.jit`` kernels once, at import, in a :class:`Kernel`, and launches them with
the usual Triton syntax, ``kernel[grid](*args, **constexprs)``. What a launch costs on the host, and why:

* a kernel with one configuration (every kernel until a GPU measurement shows that a second one pays) is
  launched straight through Triton's JIT dispatch with that configuration's ``num_warps``/``num_stages``: no
  ``triton.autotune`` wrapper, whose per-call work (a dict of every argument, a key tuple, config merging)
  costs as much as the launch itself; a kernel with several configurations is wrapped in ``triton.autotune``
  and tuned once per key on the GPU (the first configuration under the interpreter, which cannot time);
* the launch geometry (grid, tiles, splits) is a pure function of sizes and dtypes, so the ops compute it in
  :func:`plan_cache`-decorated functions: after the first call with a signature it is one dict lookup;
* nothing on the path synchronises the device.

``dry_run()`` turns every launch into a no-op and lets CPU tensors take the kernel path: the host-cost
benchmark measures fastgen's own Python per call that way on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import triton

from fastgen import dispatch
from fastgen.autotune import configs_for, kernel_name

PLAN_CACHE_SIZE = 4096  # launch plans kept per planning function (one per distinct size/dtype signature)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of positive ints on the host (``triton.cdiv`` is a constexpr function: slower per call)."""
    return -(-a // b)


def plan_cache(fn: Callable) -> Callable:
    """Caches a launch-planning function of sizes, dtypes and flags: one lookup per call. Symbolic sizes (a
    fake implementation traced with dynamic shapes) are not hashable: those calls are computed, not cached."""
    cached = functools.lru_cache(maxsize=PLAN_CACHE_SIZE)(fn)

    @functools.wraps(fn)
    def plan(*args):
        try:
            return cached(*args)
        except TypeError:  # unhashable (symbolic) arguments
            return fn(*args)

    plan.cache_info, plan.cache_clear = cached.cache_info, cached.cache_clear
    return plan


class Kernel:
    """A ``@triton.jit`` kernel as the ops launch it: ``kernel[grid](*args, **constexprs)``.

    ``key``: the argument names that select a configuration when the kernel has several (``triton.autotune``'s
    key); unused with one configuration. ``configs``: only for kernels outside the ops (benchmark probes); an
    op's kernels take theirs from their family's registration (:mod:`fastgen.registry`). ``reset_to_zero``:
    tensor arguments the kernel accumulates into (atomics), which tuning zeroes before each timed run and after
    the last one, so the launch that follows adds into zeros (``triton.autotune``'s reset_to_zero); unused with
    one configuration.
    """

    def __init__(self, fn, key: list[str] | tuple[str, ...] = (), configs: list[triton.Config] | None = None,
                 reset_to_zero: list[str] | tuple[str, ...] = ()):
        self.fn = fn
        self.name = kernel_name(fn)
        configs = configs_for(fn) if configs is None else configs
        if len(configs) == 1:
            config = configs[0]
            self._runner = fn
            self._options = dict(config.all_kwargs())
        else:
            self._runner = triton.autotune(configs=configs, key=list(key),
                                           reset_to_zero=list(reset_to_zero) or None)(fn)
            self._options = {}
        self._options["warmup"] = False

    def __getitem__(self, grid) -> Callable:
        if _dry_run:
            return _no_launch
        # ``run`` is looked up per launch (not bound once), so that launch counters can wrap it
        return functools.partial(self._runner.run, grid=grid, **self._options)

    def __repr__(self) -> str:
        return f"Kernel({self.name}, options={self._options or 'autotuned'})"


def _no_launch(*args, **kwargs) -> None:
    return None


_dry_run = False


@contextlib.contextmanager
def dry_run() -> Iterator[None]:
    """Inside the block every kernel launch is a no-op and CPU tensors take the kernel path (outputs are left
    unwritten): for measuring the host cost of the ops, never for results."""
    global _dry_run
    previous = _dry_run
    _dry_run = True
    try:
        with dispatch.kernels_on_cpu():
            yield
    finally:
        _dry_run = previous
