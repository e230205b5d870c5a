"""Sampling benchmark: the naive sampler (one full forward per sub-pixel) vs the cached incremental one.

Per case (model family x image size x batch), both samplers draw a whole image batch from the same generator
seed in the same run; a row per sampler gives its wall time, pixels/s and (cached row) the speed-up over the
naive row beside it, and the fraction of sub-pixels on which the two agree (1.0 = identical images; float32
can differ on a rare last-bit tie at a CDF boundary). The naive sampler runs the model's plain-PyTorch
reference layers (``model.use_reference(True)``), the cached one :func:`fastgen.sampling.sample`: on CUDA with
the model's fused step kernels (one launch per sub-pixel), on CPU with its plain-PyTorch step (the interpreted
kernels are no speed figure). PixelRNN has its own cached sampler, :meth:`fastgen.models.PixelRNN.sample_cached`
(plain PyTorch on every device: one column step through every layer per sub-pixel from the cached LSTM states,
and for the Diagonal BiLSTM a right-to-left pass per row); its naive sampler is the same as the others'. The cached
row also gives the launches of one sub-pixel step (:func:`step_launches`), of the fused kernels (counted under
the interpreter on CPU; none for PixelRNN) and of the PyTorch step.

Models (float32, seeded init, unconditional), sizes like the literature's small configurations:

* PixelCNN: h = 64 (2h = 128 channels between blocks), 7 residual blocks, 7x7 mask-A input, 3x3 mask B
  (RGB: h = 66, the channel groups need multiples of 3);
* GatedPixelCNN: 64 channels per stack, 6 gated layers (RGB: 66);
* PixelCNN++-lite: 80 filters, 2 gated resnet blocks per stream, 10 logistic mixtures (RGB: 160 filters, 3
  blocks);
* PixelRNN (Row LSTM and Diagonal BiLSTM): h = 64 (RGB: 66) x 4 layers, as in the training benchmark.

Sizes: 8x8 grey with 17 levels (scikit-learn's digits), 28x28 grey with 256 levels (MNIST), 32x32x3 with 256
levels (CIFAR-10); batches 1, 16, 64, 256.

Timing: one whole-image call per sampler after a 2x2 warm-up (CUDA: synchronized wall time). On CPU both
samplers are plain PyTorch, so the time is a real CPU figure; they run with ``CPU_THREADS`` = 1 intra-op
thread (each cached step is a few small matmuls; on the shared 2-core CI machine two OpenMP threads made an
8x8 batch-16 cached run 10-25x slower, 2.8-7.3 s against 0.30 s). The naive run is skipped (its row absent,
never estimated) when one timed forward times the number of forwards passes ``NAIVE_CAP_S``.

``python -m fastgen.benchmarks.bench_sampling --only "28x28 grey B=16"`` runs chosen cases and prints the table;
``fastgen bench --suite sample`` runs the quick (``--all``: every) case of the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Callable

import pytest
import torch

from fastgen import sampling
from fastgen.models import GatedPixelCNN, PixelCNN, PixelCNNpp, PixelRNN

PROVIDERS = ("naive", "cached")
BATCHES = (1, 16, 64, 256)
NAIVE_CAP_S = 120.0  # longest naive run attempted (estimated from one timed forward before it starts)
CPU_THREADS = 1


@dataclasses.dataclass(frozen=True)
class Shape:
    """An image size: ``channels`` x ``height`` x ``width`` with ``levels`` values per sub-pixel."""

    name: str
    channels: int
    height: int
    width: int
    levels: int


SHAPES = {s.name: s for s in (Shape("8x8 grey", 1, 8, 8, 17), Shape("28x28 grey", 1, 28, 28, 256),
                              Shape("32x32x3", 3, 32, 32, 256))}


def build_model(family: str, shape: Shape, tiny: bool = False):
    """A float32 model of ``family`` for ``shape``, seeded; ``tiny`` = 8 channels, 2 layers (tests)."""
    torch.manual_seed(0)
    rgb = shape.channels == 3
    if family == "PixelCNN":
        h = 6 if tiny else (66 if rgb else 64)
        return PixelCNN(shape.channels, shape.levels, hidden_channels=h, n_layers=2 if tiny else 7)
    if family == "GatedPixelCNN":
        h = 6 if tiny else (66 if rgb else 64)
        return GatedPixelCNN(shape.channels, shape.levels, hidden_channels=h, n_layers=2 if tiny else 6)
    if family == "PixelCNNpp":
        f, layers = (8, 1) if tiny else ((160, 3) if rgb else (80, 2))
        return PixelCNNpp(shape.channels, shape.levels, hidden_channels=f, n_layers=layers, n_mixtures=10)
    if family in PIXELRNN_FAMILIES:
        h = 6 if tiny else (66 if rgb else 64)
        return PixelRNN(family.split()[1], shape.channels, shape.levels, hidden_channels=h, n_layers=2 if tiny else 4)
    raise ValueError(f"family must be one of {SAMPLING_FAMILIES}, got {family!r}")


FAMILIES = ("PixelCNN", "GatedPixelCNN", "PixelCNNpp")  # the PixelCNN family (sampled through sampling.sample)
PIXELRNN_FAMILIES = ("PixelRNN row", "PixelRNN diagonal")  # sampled through PixelRNN.sample_cached
SAMPLING_FAMILIES = FAMILIES + PIXELRNN_FAMILIES


@dataclasses.dataclass
class SamplingCase:
    """One (model family, image size, batch) of the sampling benchmark."""

    family: str
    shape: Shape
    batch: int
    quick: bool = False  # part of the quick suite
    tiny: bool = False  # a tiny model (tests)

    @property
    def label(self) -> str:
        return f"{self.family} {self.shape.name} B={self.batch}" + (" tiny" if self.tiny else "")

    def model(self, device: str):
        return build_model(self.family, self.shape, self.tiny).to(device).eval()

    @property
    def forwards(self) -> int:
        """Full forwards of the naive sampler: one per sub-pixel (per pixel for the DMOL output)."""
        per_pixel = 1 if self.family == "PixelCNNpp" else self.shape.channels
        return self.shape.height * self.shape.width * per_pixel


def own_cached_sampler(model) -> bool:
    """Whether ``model`` samples with its own cached sampler (PixelRNN's ``sample_cached``) rather than through
    :func:`fastgen.sampling.sample` and an incremental sampler."""
    return getattr(model, "has_cached_sampler", False)


@contextlib.contextmanager
def _counting_step(model, n: int):
    """(the model's first parameter, labels [n] or None) with the model in eval mode under inference mode, as
    the step counters run it; the model's training flag is restored after."""
    parameter = next(model.parameters())
    labels = None if model.n_classes is None else torch.zeros(n, dtype=torch.long, device=parameter.device)
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield parameter, labels
    finally:
        model.train(training)


def cached_step_launches(model, n: int = 1) -> int:
    """Kernels one sub-pixel step of a model's own cached sampler starts (:meth:`PixelRNN.sample_cached`, plain
    PyTorch), counted as :func:`step_launches` counts: the last sub-pixel of pixel 1 of row 1 of a 2 x 2 image,
    after the sub-pixels before it (row 1: the step reads the states of the row above; the per-row work of
    ``end_row``, the Diagonal BiLSTM's right-to-left pass, is not part of it)."""
    from fastgen.benchmarks.harness import count_launches

    with _counting_step(model, n) as (parameter, labels):
        steps = model.cached_steps(n, 2, 2, labels)
        value = torch.zeros(n, dtype=torch.long, device=parameter.device)
        for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)):
            for channel in range(model.data_channels):
                if (row, col, channel) == (1, 1, model.data_channels - 1):
                    return count_launches(lambda: steps.column(row, col))[0]
                steps.column(row, col)
                steps.put_pixel(row, col, channel, value)
            steps.column(row, col)  # the caches of this column, from the whole pixel
            if col == 1:
                steps.end_row()


def step_launches(model, n: int = 1) -> int:
    """Kernels that one sub-pixel step of the model's cached sampler starts (one pixel step for a DMOL model),
    counted with :func:`fastgen.benchmarks.harness.count_launches`: every Triton launch (compiled or
    interpreted) and every ATen op that would start a kernel on a GPU. The step counted is the last sub-pixel of
    pixel 1 of a 2-pixel row, after the sub-pixels before it (the row-level work of ``start_row`` is not part of
    it). The model runs on its own backend: on CPU the fused step kernels need ``TRITON_INTERPRET=1`` and
    ``model.use_reference(False)``, else the plain-PyTorch step is counted."""
    from fastgen.benchmarks.harness import count_launches

    with _counting_step(model, n) as (parameter, labels):
        steps = model.incremental_sampler(n, 2, labels)
        pixels = torch.zeros((n, model.data_channels, 2), dtype=torch.long, device=parameter.device)
        u = torch.full((n, sampling.uniforms_shape(model, n, (1, 2))[1]), 0.5, dtype=parameter.dtype,
                       device=parameter.device)
        channels = [None] if model.output_kind == "dmol" else list(range(model.data_channels))

        def sub_pixel(col, channel):
            steps.sample(col, channel, u if channel is None else u[:, channel], pixels[:, :, col])

        steps.start_row(True)
        for channel in channels:
            sub_pixel(0, channel)
        for channel in channels[:-1]:
            sub_pixel(1, channel)
        return count_launches(lambda: sub_pixel(1, channels[-1]))[0]


def cases(device: str, quick: bool = True) -> list[SamplingCase]:
    """The cases of a run (every family: the PixelCNNs and PixelRNN). CUDA: every family x size x batch. CPU:
    quick = PixelCNN 8x8 grey at batch 16 (~3 s); all = 8x8 grey at batch 1, 16, 64 and 28x28 grey at batch 16
    (the issue's >= 50x point)."""
    if device == "cuda":
        every = [SamplingCase(f, s, b, quick=(s.name == "8x8 grey" and b == 16)) for s in SHAPES.values()
                 for b in BATCHES for f in SAMPLING_FAMILIES]
    else:
        grey8, grey28 = SHAPES["8x8 grey"], SHAPES["28x28 grey"]
        every = [SamplingCase(f, grey8, b, quick=(b == 16 and f == "PixelCNN")) for b in (1, 16, 64)
                 for f in SAMPLING_FAMILIES]
        every += [SamplingCase(f, grey28, 16) for f in SAMPLING_FAMILIES]
    return [c for c in every if c.quick or not quick]


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _wall_s(run: Callable[[], torch.Tensor], device: str) -> tuple[float, torch.Tensor]:
    _synchronize(device)
    start = time.perf_counter()
    out = run()
    _synchronize(device)
    return time.perf_counter() - start, out


def _forward_s(model, case: SamplingCase, device: str) -> float:
    """Seconds of one full forward of the reference model on the case's batch (the naive sampler's step)."""
    x = torch.zeros((case.batch, case.shape.channels, case.shape.height, case.shape.width), dtype=torch.long,
                    device=device)
    with torch.inference_mode():
        model(x)
        return min(_wall_s(lambda: model(x), device)[0] for _ in range(2))


def cpu_name() -> str:
    """The CPU's model name and core count (Linux), e.g. "AMD EPYC 9R14 (2 cores)"."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        name = platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} cores)"


def load() -> str:
    """The 1/5/15-minute load averages (CPU runs share the machine)."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def measure(case: SamplingCase, device: str, naive_cap_s: float = NAIVE_CAP_S, seed: int = 0) -> list[dict]:
    """Rows for the naive and the cached sampler on ``case`` (the naive row is absent beyond the cap)."""
    model = case.model(device)
    size = (case.shape.height, case.shape.width)
    pixels = case.batch * case.shape.height * case.shape.width

    def sampler(provider):
        def run(n=case.batch, size=size):
            generator = torch.Generator(device=device).manual_seed(seed)
            if provider == "naive":
                model.use_reference(True)
                try:
                    return sampling.sample_naive(model, n, size=size, generator=generator)
                finally:
                    model.use_reference(False)
            if own_cached_sampler(model):  # PixelRNN: its own cached sampler, plain PyTorch on every device
                return model.sample_cached(n, size=size, generator=generator)
            model.use_reference(device == "cpu")  # CPU: the plain-PyTorch step (interpreted kernels are no time)
            try:
                return sampling.sample(model, n, size=size, generator=generator)
            finally:
                model.use_reference(False)
        return run

    base = dict(suite="sample", model=case.family, size=case.shape.name, levels=case.shape.levels,
                batch=case.batch, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                threads=torch.get_num_threads() if device == "cpu" else None)
    rows, images = {}, {}
    for provider in PROVIDERS:
        run = sampler(provider)
        if provider == "naive":
            model.use_reference(True)
            forward_s = _forward_s(model, case, device)
            model.use_reference(False)
            if forward_s * case.forwards > naive_cap_s:
                continue  # not measured: absent, not estimated
        run(case.batch, (2, 2))  # warm-up (kernels, allocator, CUDA graphs)
        load_before = load()
        seconds, images[provider] = _wall_s(run, device)
        rows[provider] = dict(base, provider=provider, seconds=round(seconds, 4),
                              pixels_per_s=round(pixels / seconds, 1),
                              forwards=case.forwards if provider == "naive" else None,
                              load=f"{load_before} -> {load()}")
    # launches of one sub-pixel step: the fused step kernels (compiled on CUDA, interpreted on CPU under
    # TRITON_INTERPRET=1, else not counted; PixelRNN's cached sampler has none) and the plain-PyTorch step
    if own_cached_sampler(model):
        fused = False
        rows["cached"]["launches_per_step_pytorch"] = cached_step_launches(model)
    else:
        fused = model.use_reference(False)._kernel_steps()
        rows["cached"]["launches_per_step_pytorch"] = step_launches(model.use_reference(True))
    rows["cached"]["launches_per_step"] = step_launches(model.use_reference(False)) if fused else None
    rows["cached"]["cached_step"] = "pytorch" if device == "cpu" or not fused else "fused kernels"
    model.use_reference(False)
    if "naive" in rows:
        rows["cached"]["speedup_vs_naive"] = round(rows["naive"]["seconds"] / rows["cached"]["seconds"], 1)
        same = (images["naive"] == images["cached"]).double().mean().item()
        for row in rows.values():
            row["same_pixels"] = round(same, 6)
    return list(rows.values())


def run(device: str, quick: bool = True, only: str = "", progress: bool = True, threads: int | None = None,
        case_list: list[SamplingCase] | None = None, on_row: Callable[[dict], None] | None = None,
        naive_cap_s: float = NAIVE_CAP_S, budget_s: float | None = None) -> list[dict]:
    """Every selected case; on CPU with ``threads`` (default ``CPU_THREADS``) intra-op threads, restored after.
    ``on_row`` gets each row as soon as its case is measured; with ``budget_s``, no case starts after that many
    seconds (skipped cases have no row and are named on stderr)."""
    import sys

    from tqdm import tqdm

    selected = [c for c in (case_list or cases(device, quick)) if only in c.label]
    previous = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads or CPU_THREADS)
    rows, skipped = [], []
    start = time.monotonic()
    try:
        for case in tqdm(selected, desc="sampling", unit="case", disable=not progress):
            if budget_s is not None and time.monotonic() - start > budget_s:
                skipped.append(case.label)
                continue
            for row in measure(case, device, naive_cap_s):
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    finally:
        torch.set_num_threads(previous)
    if skipped:
        print(f"sampling: budget of {budget_s:.0f} s spent, {len(skipped)} cases not run (no row): "
              + "; ".join(skipped), file=sys.stderr, flush=True)
    return rows


COLUMNS = ["suite", "model", "size", "levels", "batch", "provider", "seconds", "pixels_per_s", "speedup_vs_naive",
           "same_pixels", "cached_step", "launches_per_step", "launches_per_step_pytorch", "forwards", "params_m",
           "threads", "load", "device", "torch", "date"]


def markdown(rows: list[dict]) -> str:
    """Naive and cached side by side, one line per case."""
    lines = ["| model | size | batch | naive s | cached s | naive px/s | cached px/s | speed-up cached / naive "
             "| same pixels | launches / sub-pixel step: fused, PyTorch | threads | load (1/5/15 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_case: dict[tuple, dict] = {}
    for r in rows:
        by_case.setdefault((r["model"], r["size"], r["batch"]), {})[r["provider"]] = r
    for (model, size, batch), pair in by_case.items():
        naive, cached = pair.get("naive", {}), pair.get("cached", {})
        fmt = lambda v, spec="": "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {model} | {size} | {batch} | {fmt(naive.get('seconds'), '.3f')} | "
                     f"{fmt(cached.get('seconds'), '.3f')} | {fmt(naive.get('pixels_per_s'), '.0f')} | "
                     f"{fmt(cached.get('pixels_per_s'), '.0f')} | {fmt(cached.get('speedup_vs_naive'), '.1f')} | "
                     f"{fmt(cached.get('same_pixels'), '.4f')} | {fmt(cached.get('launches_per_step'))}, "
                     f"{fmt(cached.get('launches_per_step_pytorch'))} | {fmt(cached.get('threads'))} | "
                     f"{cached.get('load', '-')} |")
    lines += ["", "Naive: one full forward of the reference model per sub-pixel; cached: fastgen.sampling.sample "
                  "(on CPU its plain-PyTorch step, on CUDA the fused step kernels; PixelRNN: its own "
                  "PixelRNN.sample_cached, plain PyTorch everywhere). Both from the same seed in the "
                  "same run; '-' = not measured (naive beyond the time cap). Launches per sub-pixel step (per pixel "
                  "for PixelCNN++'s DMOL): kernels one step starts (Triton launches and ATen ops that start a "
                  "kernel), counted on CPU under the interpreter or on the GPU; the row-level work is not in it."]
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    """Speed-up of the cached sampler over the naive one vs batch, one line per (model, size), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[tuple, list] = {}
    for r in rows:
        if r.get("provider") == "cached" and r.get("speedup_vs_naive"):
            lines.setdefault((r["model"], r["size"]), []).append((r["batch"], r["speedup_vs_naive"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for (model, size), points in sorted(lines.items()):
        points.sort()
        ax.plot([b for b, _ in points], [s for _, s in points], marker="o", label=f"{model} {size}")
        for b, s in points:
            ax.annotate(f"{s:.0f}x", (b, s), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("batch size")
    ax.set_ylabel("speed-up of cached over naive (whole image, log scale)")
    ax.set_title(title, fontsize=9)
    if lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sampling(benchmark, provider, device):
    """One small case under pytest-benchmark: 8x8 grey, batch 16, PixelCNN (both samplers are plain PyTorch)."""
    case = SamplingCase("PixelCNN", SHAPES["8x8 grey"], 16)
    # on CPU the cached sampler runs its plain-PyTorch step (interpreted kernels are no speed figure)
    model = case.model(device).use_reference(provider == "naive" or device == "cpu")
    draw = sampling.sample_naive if provider == "naive" else sampling.sample
    benchmark.group = f"sampling {case.label}"
    previous = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(CPU_THREADS)  # as `fastgen bench` (see the module doc)
    try:
        benchmark.pedantic(lambda: draw(model, case.batch, size=(8, 8),
                                        generator=torch.Generator(device).manual_seed(0)), rounds=2, warmup_rounds=1)
    finally:
        torch.set_num_threads(previous)


def main(argv=None) -> int:
    import argparse
    import csv
    import datetime

    from fastgen.benchmarks.runner import device_name

    parser = argparse.ArgumentParser(description="naive vs cached PixelCNN and PixelRNN sampling, whole images")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--all", action="store_true", help="every case of the device, not only the quick one")
    parser.add_argument("--only", default="", metavar="TEXT", help="only cases whose label contains TEXT")
    parser.add_argument("--threads", type=int, default=None, help=f"CPU intra-op threads (default {CPU_THREADS})")
    parser.add_argument("--naive-cap", type=float, default=NAIVE_CAP_S, metavar="S",
                        help=f"skip naive runs estimated above S seconds (default {NAIVE_CAP_S:.0f})")
    parser.add_argument("--budget", type=float, default=None, metavar="S",
                        help="start no case after S seconds (skipped cases are named, never estimated)")
    parser.add_argument("--out", default="bench-out/sampling", metavar="PREFIX", help="writes PREFIX.csv/.md/.png")
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    stamp = dict(device=cpu_name() if args.device == "cpu" else device_name(args.device), torch=torch.__version__,
                 date=datetime.datetime.now().isoformat(timespec="seconds"))
    with open(args.out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()

        def write(row):  # each row as soon as it exists (long CPU runs)
            row.update(stamp)
            writer.writerow(row)
            f.flush()

        rows = run(args.device, quick=not args.all, only=args.only, threads=args.threads, on_row=write,
                   naive_cap_s=args.naive_cap, budget_s=args.budget)
    title = (f"PixelCNN and PixelRNN sampling, cached vs naive: {stamp['device']}, torch {stamp['torch']}, "
             f"{stamp['date'][:10]}")
    table = f"{title}\n\n{markdown(rows)}"
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")
    plot(rows, args.out + ".png", title)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
