"""Ahead-of-time compile of every kernel configuration the ops launch, for real GPUs, with no GPU present.

Triton's interpreter accepts code that a GPU rejects (a non-power-of-2 ``tl.arange``, ``tl.dot`` tiles under
16, ...), so CI also compiles each launch configuration for sm_90 (H100/H200) and sm_80 (A100) with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` and reads the register and spill
report of the ptxas that ships in the triton wheel.

Each op module lists its launch space in a ``kernel_launches()`` generator; every family registered in
:mod:`fastgen.registry` is checked. Run it as ``fastgen verify`` or ``python -m fastgen.compile_check``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time

import torch


_TORCH_TO_TRITON = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """One compiled variant of a kernel: its signature, constexprs, specialization hints and launch options."""

    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int = 3
    tensor_cores: bool = False  # a matmul-shaped kernel: its 16-bit variants must use HGMMA/HMMA
    divisible: tuple[str, ...] = ()  # arguments Triton sees as multiples of 16 (aligned pointers, sizes)
    variant: str = ""  # a name for the specialization (e.g. the memory layout), shown in the label

    @classmethod
    def build(cls, kernel, dtype, pointer_dtypes=None, *, float_args=(), constexprs, num_warps, num_stages=3,
              tensor_cores=False, ones=(), divisible=(), variant=""):
        """Signature from the kernel's argument names: an argument annotated with a type string (``beta:
        "fp64"``) has that type, UPPERCASE arguments are pointers (to ``dtype`` unless ``pointer_dtypes`` says
        otherwise), ``float_args`` are fp32 scalars, the other scalars int32.

        As at a real launch, Triton specializes the integer arguments equal to 1 (``ones``: e.g. the stride of
        the contiguous dimension) into constants, and compiles pointers (16-byte aligned, as every torch
        allocation is) and the integers listed in ``divisible`` as multiples of 16.
        """
        fn = getattr(kernel, "fn", kernel)
        names = list(fn.__code__.co_varnames[:fn.__code__.co_argcount])
        annotations = {k: v for k, v in fn.__annotations__.items() if isinstance(v, str)}  # e.g. beta: "fp64"
        pointer_dtypes = pointer_dtypes or {}
        constexprs = dict(constexprs, **{name: 1 for name in ones})
        signature = []
        for name in names:
            if name in constexprs:
                kind = "constexpr"
            elif name in annotations:
                kind = annotations[name]
            elif name.isupper():
                kind = "*" + _TORCH_TO_TRITON[pointer_dtypes.get(name, dtype)]
            elif name in float_args:
                kind = "fp32"
            else:
                kind = "i32"
            signature.append((name, kind))
        divisible = tuple(n for n in names if n not in constexprs and (n.isupper() or n in divisible))
        return cls(fn.__module__, fn.__name__, tuple(signature), tuple(constexprs.items()), num_warps, num_stages,
                   tensor_cores, divisible, variant)

    def label(self) -> str:
        pointer = next((k for _, k in self.signature if k.startswith("*")), "")
        flags = ",".join(f"{k}={_short(v)}" for k, v in self.constexprs if not (v == 1 and "stride" in k))
        variant = f" {self.variant}" if self.variant else ""
        return f"{self.kernel}[{pointer[1:]}{variant} {flags} warps={self.num_warps}]"


def _short(value) -> str:
    return str(value).replace("triton.language.", "").replace("True", "1").replace("False", "0")


def registered_launches() -> list[KernelLaunch]:
    """Every launch configuration of every registered op."""
    from fastgen import registry

    return [launch for family in registry.families() for launch in family.kernel_launches()]


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_launch(launch: KernelLaunch, arch: int) -> dict:
    """Compiles one launch for ``sm_<arch>``; returns registers, spill bytes and tensor-core use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    report = {"label": launch.label(), "arch": arch, "ok": False}
    start = time.perf_counter()
    try:
        names = [name for name, _ in launch.signature]
        attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in launch.divisible}
        source = ASTSource(fn=fn, signature=dict(launch.signature), constexprs=dict(launch.constexprs), attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
        with tempfile.TemporaryDirectory() as tmp:
            ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
            with open(ptx, "w") as f:
                f.write(compiled.asm["ptx"])
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            log = subprocess.run([_nvidia_tool("ptxas"), "-v", f"--gpu-name={gpu}", ptx, "-o", cubin],
                                 capture_output=True, text=True, check=True).stderr
            report["registers"] = int(re.search(r"Used (\d+) registers", log).group(1))
            spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
            report["spill_stores"], report["spill_loads"] = int(spills.group(1)), int(spills.group(2))
            report["shared_bytes"] = compiled.metadata.shared
            if launch.tensor_cores:
                sass = subprocess.run([_nvidia_tool("cuobjdump"), "--dump-sass", cubin],
                                      capture_output=True, text=True, check=True).stdout
                report["hgmma"] = sass.count("HGMMA")
                report["hmma"] = sass.count("HMMA")
        report["ok"] = True
    except Exception as error:  # the report carries the compiler's message
        report["error"] = f"{type(error).__name__}: {error}"[:2000]
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def problems(report: dict) -> list[str]:
    """What is wrong with one compiled launch: a compile error, spills, or no tensor cores where required."""
    if not report["ok"]:
        return [report["error"]]
    found = []
    if report["spill_stores"] or report["spill_loads"]:
        found.append(f"spills {report['spill_stores']} B stores / {report['spill_loads']} B loads")
    if "hgmma" in report and report["hgmma"] + report["hmma"] == 0:
        found.append("no HGMMA/HMMA in a matmul-shaped kernel")
    return found


def _compile_index(args):
    index, arch = args
    return compile_launch(registered_launches()[index], arch)


def run_check(archs=(90, 80), workers=None, progress=True, only: str = "") -> list[dict]:
    """Compiles every registered launch (whose label contains ``only``) for every arch, in worker processes
    (Triton's interpreter off)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the compile check needs TRITON_INTERPRET unset (run it in a fresh process)")
    launches = registered_launches()
    jobs = [(i, arch) for arch in archs for i in range(len(launches)) if only in launches[i].label()]
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    reports = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        # by module path, so that it also pickles when this file runs as __main__ (python -m ...)
        worker = importlib.import_module("fastgen.compile_check")._compile_index
        iterator = pool.map(worker, jobs, chunksize=4)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(jobs), desc="compile check", unit="kernel", file=sys.stderr)
        reports.extend(iterator)
    return reports


def summarize(reports: list[dict]) -> str:
    """A markdown table: one row per kernel and arch, the worst registers/spills over its variants."""
    rows: dict[tuple[str, int], dict] = {}
    for r in reports:
        kernel = r["label"].split("[")[0]
        row = rows.setdefault((kernel, r["arch"]), {"variants": 0, "failed": 0, "max_registers": 0,
                                                    "spill_bytes": 0, "seconds": 0.0})
        row["variants"] += 1
        row["seconds"] += r["seconds"]
        if r["ok"]:
            row["max_registers"] = max(row["max_registers"], r["registers"])
            row["spill_bytes"] += r["spill_stores"] + r["spill_loads"]
        else:
            row["failed"] += 1
    lines = ["| kernel | arch | variants | failed | max registers | spill bytes | compile s |",
             "|---|---|---|---|---|---|---|"]
    for (kernel, arch), row in sorted(rows.items()):
        lines.append(f"| {kernel} | sm_{arch} | {row['variants']} | {row['failed']} | {row['max_registers']} | "
                     f"{row['spill_bytes']} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastgen verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (default: 90 and 80)")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: one per core)")
    parser.add_argument("--json", metavar="PATH", help="write every variant's report to PATH")
    parser.add_argument("--only", default="", metavar="TEXT", help="only the launches whose label contains TEXT")
    parser.add_argument("--list", action="store_true", help="only list the registered launch configurations")
    args = parser.parse_args(argv)
    if args.list:
        for launch in registered_launches():
            if args.only in launch.label():
                print(launch.label())
        return 0
    reports = run_check(tuple(args.arch or (90, 80)), workers=args.workers, only=args.only)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    print(summarize(reports))
    bad = [(r["label"], r["arch"], p) for r in reports for p in problems(r)]
    for label, arch, problem in bad:
        print(f"FAIL sm_{arch} {label}: {problem}")
    print(f"{len(reports) - len({(l, a) for l, a, _ in bad})} of {len(reports)} kernel variants compiled clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
