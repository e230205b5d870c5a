"""The `fastgen` command: `fastgen bench` (the benchmark suite), `fastgen verify` (the sm_90/sm_80 compile
check of every kernel configuration), `fastgen train` (a PixelCNN, VAE or DCGAN on digits or the user's images)
and `fastgen sample` (a PNG or JPEG grid of samples from a checkpoint).

`train` and `sample` run fastgen's compiled kernels on CUDA and the plain-PyTorch reference layers on CPU
(``model.use_reference(True)``, even where TRITON_INTERPRET=1 is set: the interpreter is far too slow to train
or sample with). On CPU they use one PyTorch thread unless ``--threads`` or OMP_NUM_THREADS says otherwise.
`train` passes ``--precision``, ``--channels-last``/``--no-channels-last`` and ``--compile`` (``--cuda-graph``:
``--compile reduce-overhead``) to the training loops (:func:`fastgen.training.step_options`).

Bad arguments and input files are reported on one line, ``fastgen <command>: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys


def _version() -> str:
    from importlib import metadata

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"fastgen {version('fastgen')} (torch {version('torch')}, triton {version('triton')}, "
            f"Python {sys.version.split()[0]})")


def _no_cuda(flag: str) -> UsageError:
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return UsageError(f"{flag}: no CUDA device is available (torch {torch.__version__} is {build})")


def _bench_case_labels(device: str, suites, quick: bool) -> list[str]:
    """The labels of the cases ``runner.run_suites`` would consider, before the ``--only`` filter."""
    from fastgen.benchmarks import bench_host, bench_sampling, bench_training, runner

    labels = []
    if "ops" in suites:
        labels += [c.label for c in runner.all_cases() if c.quick or not quick]
    if "host" in suites:
        labels += [c.label for c in bench_host.CASES] + (["launch"] if device == "cuda" else [])
    if "train" in suites:
        labels += [c.label for c in bench_training.cases(quick)]
    if "sample" in suites:
        labels += [c.label for c in bench_sampling.cases(device, quick)]
    return labels


def _bench(args) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise _no_cuda("--device cuda")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # the kernels must be decorated under the interpreter: start again with it on
        env = dict(os.environ, TRITON_INTERPRET="1")
        os.execve(sys.executable, [sys.executable, "-m", "fastgen", *sys.argv[1:]], env)
    from fastgen.benchmarks import runner

    suites = runner.SUITES if args.suite == "all" else (args.suite,)
    if args.only:
        labels = _bench_case_labels(device, suites, quick=not args.all)
        if not any(args.only in label for label in labels):
            examples = ", ".join(repr(label) for label in labels[:2])
            raise UsageError(f"--only {args.only!r} matches no {'' if args.all else 'quick '}case of the "
                             f"{'/'.join(suites)} suite{'s' if len(suites) > 1 else ''} (names are like "
                             f"{examples}{'' if args.all else '; --all adds the slower cases'})")
    if device == "cpu":
        print("No CUDA device: timing the eager PyTorch reference on CPU and running fastgen's Triton kernels "
              "under the interpreter (a correctness pass and launch counts). GPU timings need a GPU.",
              flush=True)
    runner.run_suites(device, suites, quick=not args.all, full=args.full, only=args.only, out_dir=args.out)
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read())
    written = {"ops": "results.csv (appended), results.png", "host": "host.csv (appended)",
               "train": "training.csv (appended)",
               "sample": "sampling.csv (appended), sampling.png"}
    print(f"Wrote {args.out}/results.md, results.jsonl (every row, appended), "
          + ", ".join(written[s] for s in suites))
    return 0


def _verify(args) -> int:
    from fastgen import compile_check

    if args.only and not any(args.only in launch.label() for launch in compile_check.registered_launches()):
        raise UsageError(f"--only {args.only!r} matches no kernel launch (`fastgen verify --list` prints them)")
    argv = [f"--arch={a}" for a in args.arch or ()] + (["--only", args.only] if args.only else [])
    argv += ["--json", args.json] if args.json else []
    return compile_check.main(argv + (["--list"] if args.list else []))


# model -> default (hidden channels, layers): each trains below log2(17) = 4.09 bits/dim on digits in seconds on
# a CPU (README: "Training on digits and sampling")
TRAIN_DEFAULTS = {"pixelcnn": (32, 4), "gated": (32, 4), "pixelcnnpp": (32, 3), "pixelrnn": (32, 2)}
PIXELCNNPP_MIXTURES = 5
# model -> default (hidden channels, latent dim, epochs, Adam's lr); each trains in under a minute on digits on a
# 2-core CPU (README: "VAE and DCGAN")
LATENT_DEFAULTS = {"vae": (32, 16, 50, 3e-3), "dcgan": (32, 32, 30, 2e-4)}
PIXEL_EPOCHS, PIXEL_LR = 5, 3e-3
# PyTorch threads of `train` and `sample` on CPU unless --threads or OMP_NUM_THREADS is given: the models here are
# small and run many small ops, which more threads slow down when other jobs share the cores (one epoch of
# `fastgen train pixelcnn` on a 2-core machine at load 5-6: 1.9-2.4 s on 1 thread, 17-25 s on 2; README:
# "Training on digits and sampling")
CPU_THREADS = 1


class UsageError(Exception):
    """A bad argument or input file: reported as ``fastgen <command>: error: ...`` with exit status 2."""


def _device(name, threads=None):
    """The device of ``--device`` (default: cuda when present), after setting PyTorch's CPU threads: ``threads``,
    else on CPU ``CPU_THREADS`` unless OMP_NUM_THREADS is set (then PyTorch's own choice, which follows it)."""
    import torch

    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if name == "cuda" and not torch.cuda.is_available():
        raise _no_cuda("--device cuda")
    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads is not None:
        torch.set_num_threads(threads)
    elif device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(CPU_THREADS)
    return device


def _build_latent_model(args, data):
    from fastgen.models import DCGAN, VAE

    if args.conditional:
        raise UsageError(f"--conditional: {args.model} is unconditional")
    if args.layers is not None:
        raise UsageError(f"--layers: {args.model} has a fixed depth (use --hidden-channels, --latent-dim)")
    hidden, latent, _, _ = LATENT_DEFAULTS[args.model]
    kwargs = dict(data_channels=data.pixels.shape[1], latent_dim=args.latent_dim or latent,
                  hidden_channels=args.hidden_channels or hidden, levels=data.levels)
    try:
        if args.model == "vae":
            return VAE(image_size=data.image_size, decoder=args.decoder, hierarchical=args.hierarchical, **kwargs)
        height, width = data.image_size
        if height != width:
            raise ValueError(f"image_size must be square for the DCGAN, got {data.image_size}")
        return DCGAN(image_size=height, loss=args.gan_loss, r1_gamma=args.r1_gamma, **kwargs)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--data/--hidden-channels/--latent-dim/--r1-gamma: {error}") from error


def _build_model(args, data):
    from fastgen.training import MODELS

    if args.model in LATENT_DEFAULTS:
        return _build_latent_model(args, data)
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
        kwargs["architecture"] = args.architecture
    elif args.architecture != "lite":
        raise UsageError(f"--architecture: only pixelcnnpp has architectures, not {args.model}")
    if args.model == "pixelrnn":
        kwargs["kind"] = args.kind
    elif args.kind != "row":
        raise UsageError(f"--kind: only pixelrnn has kinds, not {args.model}")
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
    from fastgen.models import DCGAN, VAE
    from fastgen.training import save_image_grid, to_pixels

    if isinstance(model, (VAE, DCGAN)):
        if naive or temperature != 1.0 or label is not None:
            raise UsageError("--naive/--temperature/--label: only for the PixelCNN models")
        generator = torch.Generator(device=device).manual_seed(seed)
        images = model.to(device).sample(n, generator=generator)  # the DCGAN's batch norm: batch statistics
        save_image_grid(to_pixels(images, model.levels).cpu(), model.levels, path)
        return
    y = _sample_labels(model, n, label)
    generator = torch.Generator(device=device).manual_seed(seed)
    draw = sampling.sample_naive if naive else sampling.sample
    if not naive and getattr(model, "has_cached_sampler", False):  # a model with its own (PixelRNN)
        draw = _own_sampler
    with torch.no_grad():
        pixels = draw(model.to(device).eval(), n, size=tuple(meta["image_size"]),
                      y=None if y is None else y.to(device), temperature=temperature, generator=generator,
                      progress=progress)
    nrow = model.n_classes if model.n_classes is not None and label is None and n >= model.n_classes else None
    save_image_grid(pixels.cpu(), model.levels, path, nrow=nrow)


def _own_sampler(model, n, *, size, y, temperature, generator, progress):
    return model.sample_cached(n, size=size, y=y, temperature=temperature, generator=generator, progress=progress)


def _write_reconstructions(model, pixels, path, *, device, n=32):
    """A grid of up to ``n`` test images (odd rows) over their VAE reconstructions (even rows), 8 per row."""
    import torch

    from fastgen.training import save_image_grid, to_pixels

    originals = pixels[:n].to(device)
    reconstructions = to_pixels(model.reconstruct(originals), model.levels)
    rows = [t for i in range(0, len(originals), 8) for t in (originals[i:i + 8], reconstructions[i:i + 8])]
    save_image_grid(torch.cat(rows).cpu(), model.levels, path, nrow=min(8, len(originals)))


def _train(args) -> int:
    import time

    import torch
    from tqdm.auto import tqdm

    from fastgen.data import load_dataset
    from fastgen.training import save_checkpoint, step_options, train, train_gan, train_vae

    device = _device(args.device, args.threads)
    if args.compile == "reduce-overhead" and device != "cuda":
        raise UsageError(f"--compile reduce-overhead (--cuda-graph) replays CUDA graphs, which need a CUDA device; "
                         f"the device is {device} (use --compile default there)")
    latent_model = args.model in LATENT_DEFAULTS
    if args.epochs is None:
        args.epochs = LATENT_DEFAULTS[args.model][2] if latent_model else PIXEL_EPOCHS
    if args.lr is None:
        args.lr = LATENT_DEFAULTS[args.model][3] if latent_model else PIXEL_LR
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--samples", args.samples, 0)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    path = os.path.join(args.out, f"{args.model}.pt")
    if os.path.exists(path) and not args.force:
        raise UsageError(f"{path} exists: pass --force to overwrite it (and its sample grids), or --out DIR to "
                         f"write the new run elsewhere")
    try:
        data = load_dataset(args.data)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--data: {error}") from error
    torch.manual_seed(args.seed)
    model = _build_model(args, data).use_reference(device == "cpu")
    speed = dict(precision=args.precision, channels_last="auto" if args.channels_last is None else args.channels_last,
                 compile=args.compile)
    options = step_options(device, **speed)
    train_set, test_set = data.split(test_fraction=0.1, seed=args.seed)
    if getattr(model, "architecture", None) == "full":  # openai's data-dependent init on a first batch
        first = slice(0, args.batch_size)
        model.data_dependent_init(train_set.pixels[first],
                                  None if model.n_classes is None else train_set.labels[first])
    n_params = sum(p.numel() for p in model.parameters())
    images = f"{data.pixels.shape[1]}x{data.image_size[0]}x{data.image_size[1]}"
    if args.model == "dcgan":  # no held-out set: every image trains the GAN
        print(f"dcgan: {n_params:,} parameters, {data.name}: {len(data.pixels)} images of {images}, device {device}"
              f" ({options.describe()})", flush=True)
    else:
        print(f"{args.model}: {n_params:,} parameters, {data.name}: {len(train_set.pixels)} train / "
              f"{len(test_set.pixels)} test images of {images}, {data.levels} levels"
              + ("" if latent_model else f" (uniform: {math.log2(data.levels):.2f} bits/dim)") + f", device {device}"
              f" ({options.describe()})", flush=True)

    def report(record):
        if args.model == "vae":
            tqdm.write(f"epoch {record['epoch']:3d}  train -ELBO {record['train_nelbo']:.2f} nats/image (rec "
                       f"{record['train_reconstruction']:.2f} + KL {record['train_kl']:.2f})  test -ELBO "
                       f"{record['test_nelbo']:.2f} (rec {record['test_reconstruction']:.2f} + KL "
                       f"{record['test_kl']:.2f})  ({record['seconds']:.1f} s)")
        elif args.model == "dcgan":
            tqdm.write(f"epoch {record['epoch']:3d}  D loss {record['d_loss']:.3f} (R1 {record['r1']:.3f})  G loss "
                       f"{record['g_loss']:.3f}  ({record['seconds']:.1f} s)")
        else:
            tqdm.write(f"epoch {record['epoch']:3d}  train {record['train_bpd']:.3f} bits/dim  test "
                       f"{record['test_bpd']:.3f} bits/dim  ({record['seconds']:.1f} s)")

    start = time.perf_counter()
    common = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=device, seed=args.seed,
                  progress=not args.no_progress, on_epoch=report, **speed)
    if args.model == "vae":
        history = train_vae(model, train_set.pixels, test_pixels=test_set.pixels, **common)
    elif args.model == "dcgan":
        history = train_gan(model, data.pixels, **common)
    else:
        history = train(model, train_set.pixels, train_set.labels, test_pixels=test_set.pixels,
                        test_labels=test_set.labels, **common)
    seconds = time.perf_counter() - start
    meta = dict(image_size=data.image_size, data=args.data, classes=data.classes, history=history,
                seed=args.seed, train_seconds=seconds)
    save_checkpoint(path, model, **meta)
    print(f"trained in {seconds:.1f} s; wrote {path}", flush=True)
    if args.samples:
        grid = os.path.join(args.out, f"{args.model}-samples.png")
        _write_samples(model, meta, args.samples, grid, device=device, seed=args.seed)
        print(f"wrote {grid} ({args.samples} samples)")
    if args.model == "vae" and len(test_set.pixels):
        grid = os.path.join(args.out, "vae-reconstructions.png")
        _write_reconstructions(model, test_set.pixels, grid, device=device)
        print(f"wrote {grid} (test images over their reconstructions)")
    return 0


def _sample(args) -> int:
    from fastgen.training import IMAGE_FORMATS, load_checkpoint

    if args.output is None:  # beside the checkpoint: runs/gated.pt -> runs/gated-sample-seed0.png
        stem = os.path.splitext(args.checkpoint)[0]
        args.output = f"{stem}-sample-seed{args.seed}.png"
    extension = os.path.splitext(args.output)[1].lower()
    if extension not in IMAGE_FORMATS:
        raise UsageError(f"-o {args.output}: writes PNG (.png) or JPEG (.jpg, .jpeg) files, got "
                         f"{repr(extension) if extension else 'no extension'}")
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


THREADS_HELP = (f"PyTorch's CPU threads (default on CPU: {CPU_THREADS}, or what OMP_NUM_THREADS says when set; "
                "small models run fastest on few threads, above all on a machine busy with other jobs)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastgen", description="Triton kernels for generative image models.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark fastgen against eager PyTorch and torch.compile")
    bench.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when present, else cpu")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick cases (the default)")
    size.add_argument("--all", action="store_true", help="every case, not only the quick ones")
    bench.add_argument("--full", action="store_true", help="also time torch.compile on CPU (slow to build)")
    bench.add_argument("--only", default="", metavar="TEXT", help="only cases whose name contains TEXT")
    bench.add_argument("--suite", choices=["ops", "host", "train", "sample", "all"], default="all",
                       help="ops: the op cases; host: host cost per call of each op; train: a training step per "
                            "model; sample: naive vs cached sampling (default: all)")
    bench.add_argument("--out", default="bench-out", metavar="DIR", help="output folder (default: bench-out)")
    bench.set_defaults(func=_bench)
    verify = sub.add_parser("verify", help="compile every kernel configuration for sm_90/sm_80 and check spills")
    verify.add_argument("--arch", type=int, action="append", help="compute capability x10 (default 90 and 80)")
    verify.add_argument("--only", default="", metavar="TEXT", help="only launches whose label contains TEXT")
    verify.add_argument("--json", metavar="PATH", help="write every variant's report to PATH")
    verify.add_argument("--list", action="store_true", help="only list the launch configurations (with --only: "
                        "those whose label contains TEXT)")
    verify.set_defaults(func=_verify)

    train = sub.add_parser("train", help="train a PixelCNN, PixelRNN, VAE or DCGAN on digits or your images; save a "
                           "checkpoint and samples")
    train.add_argument("model", choices=[*TRAIN_DEFAULTS, *LATENT_DEFAULTS],
                       help="PixelCNN, Gated PixelCNN, PixelCNN++ (lite or full: --architecture), PixelRNN (Row "
                       "LSTM), VAE or DCGAN (digits at 8x8 as they are)")
    train.add_argument("--data", default="digits", metavar="digits|PATH.npy|FOLDER",
                       help="scikit-learn's 8x8 digits (default), a .npy array of integer images ([N, H, W], "
                            "[N, H, W, C] or [N, C, H, W]) or a folder of PNG/JPEG images (one sub-folder per class "
                            "for labels)")
    train.add_argument("--epochs", type=int, help=f"default: {PIXEL_EPOCHS}; " + ", ".join(
        f"{m} {e}" for m, (_, _, e, _) in LATENT_DEFAULTS.items()))
    train.add_argument("--batch-size", type=int, default=64, help="default: 64")
    train.add_argument("--lr", type=float, help=f"Adam's learning rate (default: {PIXEL_LR}; " + ", ".join(
        f"{m} {lr}" for m, (_, _, _, lr) in LATENT_DEFAULTS.items()) + ")")
    train.add_argument("--hidden-channels", type=int, help="default: " + ", ".join(
        f"{m} {v[0]}" for m, v in [*TRAIN_DEFAULTS.items(), *LATENT_DEFAULTS.items()]) +
        " (48 for RGB PixelCNN/Gated)")
    train.add_argument("--layers", type=int, help="residual blocks / gated / LSTM layers, default: " + ", ".join(
        f"{m} {n}" for m, (_, n) in TRAIN_DEFAULTS.items()))
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    train.add_argument("--seed", type=int, default=0, help="initialisation, test split, batches, samples")
    train.add_argument("--out", default="runs", metavar="DIR", help="writes DIR/<model>.pt and "
                       "DIR/<model>-samples.png (vae: also DIR/vae-reconstructions.png; default: runs)")
    train.add_argument("--latent-dim", type=int, help="vae/dcgan: latent size (default: " + ", ".join(
        f"{m} {d}" for m, (_, d, _, _) in LATENT_DEFAULTS.items()) + ")")
    train.add_argument("--decoder", choices=["bernoulli", "gaussian"], default="bernoulli",
                       help="vae: p(x|z) (default: bernoulli; gaussian learns a variance per channel)")
    train.add_argument("--hierarchical", action="store_true", help="vae: two latent levels z2 -> z1 -> x")
    train.add_argument("--gan-loss", choices=["nonsaturating", "hinge", "ls", "wgan"], default="nonsaturating",
                       help="dcgan: the D/G loss pair (default: nonsaturating)")
    train.add_argument("--r1-gamma", type=float, default=1.0, help="dcgan: R1 penalty weight on real images "
                       "(default: 1.0; 0: none)")
    train.add_argument("--conditional", action="store_true", help="condition on the class labels")
    train.add_argument("--architecture", choices=["lite", "full"], default="lite",
                       help="pixelcnnpp: one resolution (lite, the default) or openai's three resolutions with "
                            "weight normalization and data-dependent init (full; H and W divisible by 4)")
    train.add_argument("--kind", choices=["row", "diagonal"], default="row",
                       help="pixelrnn: Row LSTM (the default) or Diagonal BiLSTM")
    train.add_argument("--samples", type=int, default=64, metavar="N", help="samples in the grid written after "
                       "training (default: 64; 0: none)")
    train.add_argument("--force", action="store_true", help="overwrite DIR/<model>.pt and its sample grids if they "
                       "exist (without it an existing checkpoint is an error)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    train.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                       help="auto (the default): bfloat16 autocast on CUDA (float32 weights), float32 on CPU; "
                            "bfloat16: autocast on CPU too")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="the model and its batches in channels-last (default: on CUDA only)")
    compiled = train.add_mutually_exclusive_group()
    compiled.add_argument("--compile", choices=["default", "reduce-overhead"],
                          help="torch.compile the step's forward + loss in this mode (default: eager); "
                               "reduce-overhead replays CUDA graphs (CUDA only)")
    compiled.add_argument("--cuda-graph", dest="compile", action="store_const", const="reduce-overhead",
                          help="the same as --compile reduce-overhead")
    train.set_defaults(func=_train)

    sample = sub.add_parser("sample", help="write a PNG or JPEG grid of samples from a checkpoint of `fastgen train`")
    sample.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file written by `fastgen train`")
    sample.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    sample.add_argument("-o", "--output", metavar="FILE", help=".png or .jpg/.jpeg (default: beside the checkpoint, "
                        "CHECKPOINT without .pt + -sample-seed<SEED>.png, e.g. runs/gated-sample-seed0.png)")
    sample.add_argument("--temperature", type=float, default=1.0, help="default: 1.0")
    sample.add_argument("--seed", type=int, default=0, help="default: 0")
    sample.add_argument("--label", type=int, help="conditional models: this class only (default: every class in "
                        "turn, one per column)")
    sample.add_argument("--naive", action="store_true", help="the uncached sampler (a full forward per sub-pixel)")
    sample.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")
    sample.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    sample.set_defaults(func=_sample)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"fastgen {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
