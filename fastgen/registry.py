"""The op families, each registered once by its own ops module.

A family (``gan_losses``, ``tap_conv``, ...) declares, in one :func:`register_family` call at the top of
``fastgen/ops/<family>.py``: its kernels' launch configurations (the autotune table:
:func:`fastgen.autotune.configs_for` reads it), and the module of its benchmark cases. Its launch space for the
compile check is that ops module's ``kernel_launches()`` generator. The compile check
(:mod:`fastgen.compile_check`), the autotune table and the benchmark runner read this registry; nothing else
lists the families.
"""

from __future__ import annotations

import dataclasses
import importlib

import triton


@dataclasses.dataclass(frozen=True)
class Family:
    """One op family: ``fastgen.ops.<name>``, its kernels' configurations and its benchmark cases."""

    name: str
    module: str  # the ops module that registered it (launchers, Functions, ``kernel_launches()``)
    configs: dict[str, list[triton.Config]]  # kernel name -> configurations (the first is the interpreter's)
    benchmarks: str | None = None  # module with the benchmark CASES (``fastgen.benchmarks.bench_<name>``)

    def kernel_launches(self):
        """Every kernel configuration the family's ops can launch (for the sm_90/sm_80 compile check)."""
        return importlib.import_module(self.module).kernel_launches()

    def benchmark_cases(self) -> list:
        return [] if self.benchmarks is None else list(importlib.import_module(self.benchmarks).CASES)


_FAMILIES: dict[str, Family] = {}
_CONFIGS: dict[str, list[triton.Config]] = {}


def _kernel_name(kernel) -> str:
    return kernel if isinstance(kernel, str) else getattr(kernel, "fn", kernel).__name__


def register_family(name: str, module: str, configs: dict, benchmarks: str | None = None) -> Family:
    """Registers a family once; ``configs`` maps each of its kernels (the @triton.jit function or its name) to
    its launch configurations."""
    if name in _FAMILIES and _FAMILIES[name].module != module:
        raise ValueError(f"op family {name!r} is already registered (by {_FAMILIES[name].module})")
    table = {_kernel_name(k): list(v) for k, v in configs.items()}
    for kernel in table:
        owner = next((f.name for f in _FAMILIES.values() if kernel in f.configs), name)
        if owner != name:
            raise ValueError(f"kernel {kernel!r} of family {name!r} is already registered by {owner!r}")
    family = Family(name, module, table, benchmarks)
    _FAMILIES[name] = family
    _CONFIGS.update(table)
    return family


def families() -> list[Family]:
    """Every registered family, in registration order (importing :mod:`fastgen` registers them all)."""
    import fastgen  # noqa: F401  (the ops modules register their families when imported)

    return list(_FAMILIES.values())


def kernel_configs(kernel) -> list[triton.Config]:
    """The registered configurations of ``kernel`` (a @triton.jit function or its name)."""
    name = _kernel_name(kernel)
    if name not in _CONFIGS:
        raise KeyError(f"kernel {name!r} has no registered configurations: list it in its family's "
                       "register_family(configs=...)")
    return _CONFIGS[name]
