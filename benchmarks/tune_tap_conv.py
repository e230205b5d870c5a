"""Sweep masked_conv2d's kernel configs over issue 12's cases on a GPU and print a table.

For every case of ``bench_tap_conv.ISSUE_SHAPES`` (bf16 and float32 on TF32, channels-last), every pass
(forward, input gradient, weight gradient) and every config of the shape class that pass launches
(``fastgen.ops.tap_conv.GEMM_CONFIGS`` / ``WEIGHT_GRAD_CONFIGS``), the pass runs with that config alone
(autotuning off) and is timed with ``triton.testing.do_bench``; the table shows ms, TFLOP/s of the live taps,
and marks the fastest config of each row group, which is what the launch path's autotuner should pick. A
cuDNN row (``F.conv2d(x, weight * mask)``: forward, and its input/weight gradients) sits beside each group.

    python benchmarks/tune_tap_conv.py            # the sweep (CUDA only; about 2 minutes on an H200)
    python benchmarks/tune_tap_conv.py --list     # the cases, classes and configs it would run (any machine)
    python benchmarks/tune_tap_conv.py --json out.jsonl --rep 50

Budget: each config compiles once per (dtype, pass) (~1-2 s) and is timed for ``--rep`` ms; with the default
20 ms, the 12 cases x 3 passes x <= 4 configs stay under 3 minutes. The numbers are only meaningful on a GPU;
none have been measured yet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

import fastgen
import fastgen.ops.tap_conv as op
from fastgen.benchmarks.bench_tap_conv import ISSUE_SHAPES
from fastgen.nn import masks

DTYPES = {"bf16": torch.bfloat16, "fp32-tf32": torch.float32}
PASSES = ("forward", "input_grad", "weight_grad")


def _describe(config) -> str:
    tiles = "x".join(str(v) for v in config.kwargs.values())
    return f"{tiles} w{config.num_warps} s{config.num_stages}"


def plan(dtype: torch.dtype, c_in: int, c_out: int, input_grad: bool):
    """[(pass, table name, (math, layout), shape class, configs)] for a channels-last layer (TF32 on)."""
    math = op.math_of(dtype, tf32=True)
    rows = [("forward", "GEMM_CONFIGS", (math, "nhwc"), op.gemm_class(c_in, c_out))]
    if input_grad:
        rows.append(("input_grad", "GEMM_CONFIGS", (math, "nhwc"), op.gemm_class(c_out, c_in, backward=True)))
    wmath = op._weight_grad_math(dtype, True)
    rows.append(("weight_grad", "WEIGHT_GRAD_CONFIGS", (wmath, "nhwc"), op.weight_grad_class(c_in, c_out, wmath)))
    return [(p, table, key, cls, getattr(op, table)[key][cls]) for p, table, key, cls in rows]


@contextlib.contextmanager
def forced(table: str, config):
    """Every class of ``table`` launches ``config`` alone (no autotuning) inside the block."""
    saved = getattr(op, table)
    setattr(op, table, {key: {name: [config] for name in classes} for key, classes in saved.items()})
    op._launcher.cache_clear()
    op._weight_grad_plan.cache_clear()
    try:
        yield
    finally:
        setattr(op, table, saved)
        op._launcher.cache_clear()
        op._weight_grad_plan.cache_clear()


def _inputs(batch, c_in, c_out, size, k, mask_type, groups, dtype):
    taps = masks.masked(k, mask_type, groups)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c_in, size, size, generator=gen).to("cuda", dtype).to(memory_format=torch.channels_last)
    w = ((c_in * k * k) ** -0.5 * torch.randn(c_out, c_in, k, k, generator=gen)).to("cuda", dtype)
    b = torch.randn(c_out, generator=gen).to("cuda", dtype)
    grad_y = torch.randn(batch, c_out, size, size, generator=gen).to("cuda", dtype)
    return taps, x, w, b, grad_y.to(memory_format=torch.channels_last)


def _pass_fn(name, taps, x, w, b, grad_y):
    packed = op.pack_weight(w, taps)
    if name == "forward":
        return lambda: op.forward(x, packed, b, taps)
    if name == "input_grad":
        return lambda: op.input_grad(grad_y, packed, taps, x)
    grad_w = torch.empty_like(w)
    return lambda: op.weight_grad(x, grad_y, taps, grad_w, True)


def _cudnn_fn(name, taps, x, w, b, grad_y):
    import torch.nn.functional as F

    mask = taps.mask(w.shape[0], w.shape[1], w.dtype, w.device)
    pad = w.shape[-1] // 2
    if name == "forward":
        return lambda: F.conv2d(x, w * mask, b, padding=pad)
    if name == "input_grad":
        return lambda: torch.ops.aten.convolution_backward(grad_y, x, w * mask, None, [1, 1], [pad, pad], [1, 1],
                                                           False, [0, 0], 1, [True, False, False])
    return lambda: torch.ops.aten.convolution_backward(grad_y, x, w * mask, [w.shape[0]], [1, 1], [pad, pad],
                                                       [1, 1], False, [0, 0], 1, [False, True, True])


def sweep(rep: int, out=None) -> list[dict]:
    import triton

    rows = []
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default: float32 convolutions on TF32, both sides
    for dtype_name, dtype in DTYPES.items():
        for case, batch, c_in, c_out, size, k, mask_type, groups, input_grad in ISSUE_SHAPES:
            taps, x, w, b, grad_y = _inputs(batch, c_in, c_out, size, k, mask_type, groups, dtype)
            live = 2 * batch * size * size * c_in * c_out * k * k * taps.live_fraction(c_out, c_in)
            for name, table, key, cls, configs in plan(dtype, c_in, c_out, input_grad):
                group = []
                for config in configs:
                    with forced(table, config):
                        ms = triton.testing.do_bench(_pass_fn(name, taps, x, w, b, grad_y), warmup=5, rep=rep)
                    group.append(dict(case=case, dtype=dtype_name, pass_=name, cls=cls, config=_describe(config),
                                      ms=ms, tflops_live=live / ms / 1e9))
                ms = triton.testing.do_bench(_cudnn_fn(name, taps, x, w, b, grad_y), warmup=5, rep=rep)
                best = min(r["ms"] for r in group)
                for r in group:
                    r["best"] = r["ms"] == best
                    r["vs_cudnn"] = ms / r["ms"]
                group.append(dict(case=case, dtype=dtype_name, pass_=name, cls="cuDNN dense", config="-", ms=ms,
                                  tflops_live=live / ms / 1e9, best=False, vs_cudnn=1.0))
                for r in group:
                    print(f"| {r['case']} | {r['dtype']} | {r['pass_']} | {r['cls']} | {r['config']} | "
                          f"{r['ms']:.4f} | {r['tflops_live']:.0f} | {r['vs_cudnn']:.2f}x | "
                          f"{'*' if r['best'] else ''} |", flush=True)
                    if out is not None:
                        out.write(json.dumps(dict(r, device=torch.cuda.get_device_name(),
                                                  torch=torch.__version__, triton=triton.__version__)) + "\n")
                rows.extend(group)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the cases, classes and configs, run nothing")
    parser.add_argument("--rep", type=int, default=20, help="ms of timed repetitions per measurement")
    parser.add_argument("--json", metavar="PATH", help="append one JSON line per measurement to PATH")
    args = parser.parse_args(argv)
    if args.list:
        n = 0
        for dtype_name, dtype in DTYPES.items():
            for case, batch, c_in, c_out, size, k, mask_type, groups, input_grad in ISSUE_SHAPES:
                for name, table, key, cls, configs in plan(dtype, c_in, c_out, input_grad):
                    n += len(configs)
                    print(f"{case} {dtype_name} {name}: {'/'.join(key)} {cls}: "
                          + ", ".join(_describe(c) for c in configs))
        print(f"{n} measurements (+ a cuDNN row per case and pass)")
        return 0
    if not torch.cuda.is_available() or fastgen.interpreting():
        print("tune_tap_conv needs a CUDA GPU (and TRITON_INTERPRET unset); --list runs anywhere", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print("| case | dtype | pass | class | config (tiles, warps, stages) | ms | live TFLOP/s | vs cuDNN | best |")
    print("|---|---|---|---|---|---|---|---|---|")
    with open(args.json, "a") if args.json else contextlib.nullcontext() as out:
        sweep(args.rep, out)
    print(f"swept in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
