"""The `fastgen` command: `fastgen bench` (the benchmark suite), `fastgen verify` (the sm_90/sm_80 compile
check of every kernel configuration), `fastgen train` (a PixelCNN on digits or the user's images) and
`fastgen sample` (a PNG grid of samples from a checkpoint).

`train` and `sample` run fastgen's compiled kernels on CUDA and the plain-PyTorch reference layers on CPU
(``model.use_reference(True)``, even where TRITON_INTERPRET=1 is set: the interpreter is far too slow to train
or sample with)."""

from __future__ import annotations

import argparse
import math
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


# model -> default (hidden channels, layers): each trains below log2(17) = 4.09 bits/dim on digits in seconds on
# a CPU (README: "Training on digits and sampling")
TRAIN_DEFAULTS = {"pixelcnn": (32, 4), "gated": (32, 4), "pixelcnnpp": (32, 3)}
PIXELCNNPP_MIXTURES = 5


class UsageError(Exception):
    """A bad argument or input file: reported as ``fastgen <command>: error: ...`` with exit status 2."""


def _device(name, threads=None):
    import torch

    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return name


def _build_model(args, data):
    from fastgen.training import MODELS

    hidden, layers = TRAIN_DEFAULTS[args.model]
    if args.hidden_channels is None and data.pixels.shape[1] == 3 and args.model != "pixelcnnpp":
        hidden = 48  # RGB: every layer's channels split into 3 causal groups
    kwargs = dict(data_channels=data.pixels.shape[1], levels=data.levels,
                  hidden_channels=args.hidden_channels or hidden,
                  n_layers=layers if args.layers is None else args.layers)
    if args.conditional:
        if data.labels is None:
            raise UsageError(f"--conditional: --data {args.data} has no labels (use digits, or a folder with one "
                             f"sub-folder of images per class)")
        kwargs["n_classes"] = data.n_classes
    if args.model == "pixelcnnpp":
        kwargs["n_mixtures"] = PIXELCNNPP_MIXTURES
    try:
        return MODELS[args.model](**kwargs)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--hidden-channels/--layers: {error}") from error


def _sample_labels(model, n, label):
    import torch

    if model.n_classes is None:
        if label is not None:
            raise UsageError("--label: the model is not class-conditional")
        return None
    if label is not None:
        if not 0 <= label < model.n_classes:
            raise UsageError(f"--label must be in 0..{model.n_classes - 1}, got {label}")
        return torch.full((n,), label, dtype=torch.long)
    return torch.arange(n) % model.n_classes  # every class in turn: one class per column of a 10-wide grid


def _write_samples(model, meta, n, path, *, device, seed, temperature=1.0, naive=False, label=None,
                   progress=False):
    import torch

    from fastgen import sampling
    from fastgen.training import save_image_grid

    y = _sample_labels(model, n, label)
    generator = torch.Generator(device=device).manual_seed(seed)
    draw = sampling.sample_naive if naive else sampling.sample
    with torch.no_grad():
        pixels = draw(model.to(device).eval(), n, size=tuple(meta["image_size"]),
                      y=None if y is None else y.to(device), temperature=temperature, generator=generator,
                      progress=progress)
    nrow = model.n_classes if model.n_classes is not None and label is None and n >= model.n_classes else None
    save_image_grid(pixels.cpu(), model.levels, path, nrow=nrow)


def _train(args) -> int:
    import time

    import torch
    from tqdm.auto import tqdm

    from fastgen.data import load_dataset
    from fastgen.training import save_checkpoint, train

    device = _device(args.device, args.threads)
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--samples", args.samples, 0)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    try:
        data = load_dataset(args.data)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--data: {error}") from error
    torch.manual_seed(args.seed)
    model = _build_model(args, data).use_reference(device == "cpu")
    train_set, test_set = data.split(test_fraction=0.1, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params:,} parameters, {data.name}: {len(train_set.pixels)} train / "
          f"{len(test_set.pixels)} test images of {data.pixels.shape[1]}x{data.image_size[0]}x{data.image_size[1]}, "
          f"{data.levels} levels (uniform: {math.log2(data.levels):.2f} bits/dim), device {device}", flush=True)

    def report(record):
        tqdm.write(f"epoch {record['epoch']:3d}  train {record['train_bpd']:.3f} bits/dim  test "
                   f"{record['test_bpd']:.3f} bits/dim  ({record['seconds']:.1f} s)")

    start = time.perf_counter()
    history = train(model, train_set.pixels, train_set.labels, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, device=device, test_pixels=test_set.pixels, test_labels=test_set.labels,
                    seed=args.seed, progress=not args.no_progress, on_epoch=report)
    seconds = time.perf_counter() - start
    path = os.path.join(args.out, f"{args.model}.pt")
    meta = dict(image_size=data.image_size, data=args.data, classes=data.classes, history=history,
                seed=args.seed, train_seconds=seconds)
    save_checkpoint(path, model, **meta)
    print(f"trained in {seconds:.1f} s; wrote {path}", flush=True)
    if args.samples:
        grid = os.path.join(args.out, f"{args.model}-samples.png")
        _write_samples(model, meta, args.samples, grid, device=device, seed=args.seed)
        print(f"wrote {grid} ({args.samples} samples)")
    return 0


def _sample(args) -> int:
    from fastgen.training import load_checkpoint

    device = _device(args.device, args.threads)
    if args.n < 1:
        raise UsageError(f"-n must be >= 1, got {args.n}")
    if not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {args.temperature}")
    try:
        model, meta = load_checkpoint(args.checkpoint)
    except (OSError, ValueError) as error:
        raise UsageError(f"CHECKPOINT: {error}") from error
    model.use_reference(device == "cpu")
    _write_samples(model, meta, args.n, args.output, device=device, seed=args.seed, temperature=args.temperature,
                   naive=args.naive, label=args.label, progress=not args.no_progress)
    print(f"wrote {args.output} ({args.n} samples from {args.checkpoint})")
    return 0


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

    train = sub.add_parser("train", help="train a PixelCNN on digits or your images; save a checkpoint and samples")
    train.add_argument("model", choices=list(TRAIN_DEFAULTS), help="PixelCNN, Gated PixelCNN or PixelCNN++-lite")
    train.add_argument("--data", default="digits", metavar="digits|PATH.npy|FOLDER",
                       help="scikit-learn's 8x8 digits (default), a .npy array of integer images ([N, H, W], "
                            "[N, H, W, C] or [N, C, H, W]) or a folder of PNG/JPEG images (one sub-folder per class "
                            "for labels)")
    train.add_argument("--epochs", type=int, default=5, help="default: 5")
    train.add_argument("--batch-size", type=int, default=64, help="default: 64")
    train.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default: 3e-3)")
    train.add_argument("--hidden-channels", type=int, help="default: " + ", ".join(
        f"{m} {h}" for m, (h, _) in TRAIN_DEFAULTS.items()) + " (48 for RGB PixelCNN/Gated)")
    train.add_argument("--layers", type=int, help="residual blocks / gated layers, default: " + ", ".join(
        f"{m} {n}" for m, (_, n) in TRAIN_DEFAULTS.items()))
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    train.add_argument("--seed", type=int, default=0, help="initialisation, test split, batches, samples")
    train.add_argument("--out", default="runs", metavar="DIR", help="writes DIR/<model>.pt and "
                       "DIR/<model>-samples.png (default: runs)")
    train.add_argument("--conditional", action="store_true", help="condition on the class labels")
    train.add_argument("--samples", type=int, default=64, metavar="N", help="samples in the grid written after "
                       "training (default: 64; 0: none)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--threads", type=int, metavar="N", help="CPU threads for PyTorch (default: PyTorch's; 1 is "
                        "faster on a machine whose cores are busy with other jobs)")
    train.set_defaults(func=_train)

    sample = sub.add_parser("sample", help="write a PNG grid of samples from a checkpoint of `fastgen train`")
    sample.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file written by `fastgen train`")
    sample.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    sample.add_argument("-o", "--output", default="samples.png", metavar="PNG", help="default: samples.png")
    sample.add_argument("--temperature", type=float, default=1.0, help="default: 1.0")
    sample.add_argument("--seed", type=int, default=0, help="default: 0")
    sample.add_argument("--label", type=int, help="conditional models: this class only (default: every class in "
                        "turn, one per column)")
    sample.add_argument("--naive", action="store_true", help="the uncached sampler (a full forward per sub-pixel)")
    sample.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")
    sample.add_argument("--threads", type=int, metavar="N", help="CPU threads for PyTorch (default: PyTorch's; 1 is "
                        "faster on a machine whose cores are busy with other jobs)")
    sample.set_defaults(func=_sample)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"fastgen {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
