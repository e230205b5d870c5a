"""The `fastgen` command: `fastgen bench` (the benchmark suite) and `fastgen verify` (the sm_90/sm_80 compile
check of every kernel configuration)."""

from __future__ import annotations

import argparse
import os
import sys


def _bench(args) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # the kernels must be decorated under the interpreter: start again with it on
        env = dict(os.environ, TRITON_INTERPRET="1")
        os.execve(sys.executable, [sys.executable, "-m", "fastgen", *sys.argv[1:]], env)
    from fastgen.benchmarks import runner

    if device == "cpu":
        print("No CUDA device: timing the eager PyTorch reference on CPU and running fastgen's Triton kernels "
              "under the interpreter (a correctness pass and launch counts). GPU timings need a GPU.",
              flush=True)
    suites = runner.SUITES if args.suite == "all" else (args.suite,)
    runner.run_suites(device, suites, quick=not args.all, full=args.full, only=args.only, out_dir=args.out)
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read())
    written = {"ops": "results.csv (appended), results.png", "train": "training.csv (appended)",
               "sample": "sampling.csv (appended), sampling.png"}
    print(f"Wrote {args.out}/results.md, " + ", ".join(written[s] for s in suites))
    return 0


def _verify(args) -> int:
    from fastgen import compile_check

    argv = [f"--arch={a}" for a in args.arch or ()] + (["--only", args.only] if args.only else [])
    return compile_check.main(argv + (["--json", args.json] if args.json else []))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastgen", description="Triton kernels for generative image models.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark fastgen against eager PyTorch and torch.compile")
    bench.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when present, else cpu")
    bench.add_argument("--all", action="store_true", help="every case, not only the quick ones")
    bench.add_argument("--full", action="store_true", help="also time torch.compile on CPU (slow to build)")
    bench.add_argument("--only", default="", metavar="TEXT", help="only cases whose name contains TEXT")
    bench.add_argument("--suite", choices=["ops", "train", "sample", "all"], default="all",
                       help="ops: the op cases; train: a training step per model; sample: naive vs cached sampling "
                            "(default: all)")
    bench.add_argument("--out", default="bench-out", metavar="DIR", help="output folder (default: bench-out)")
    bench.set_defaults(func=_bench)
    verify = sub.add_parser("verify", help="compile every kernel configuration for sm_90/sm_80 and check spills")
    verify.add_argument("--arch", type=int, action="append", help="compute capability x10 (default 90 and 80)")
    verify.add_argument("--only", default="", metavar="TEXT", help="only launches whose label contains TEXT")
    verify.add_argument("--json", metavar="PATH", help="write every variant's report to PATH")
    verify.set_defaults(func=_verify)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
