"""Training-step benchmark: forward + loss + backward + Adam step of each PixelCNN family, the VAE and DCGAN.

Providers, all on the same initial parameters and the same batch:

* fastgen: the model on fastgen's convolutions with its training loss ``model.nll`` (the fused output head
  ``conv1x1_cross_entropy`` of the softmax models, ``dmol_nll`` for PixelCNN++);
* eager: the same parameters on the plain-PyTorch reference layers and losses (``model.use_reference(True)``
  inside ``fastgen.use_backend("reference")``);
* torch.compile: ``torch.compile`` of the eager model's forward + loss (timed on CUDA, on CPU only with
  ``--full``: CPU builds are slow);
* on CUDA, the same two compiled with ``mode="reduce-overhead"`` (CUDA-graph replay of the forward and the
  backward): "fastgen reduce-overhead" (fastgen's ops enter the graph as ``torch.ops.fastgen`` custom ops) and
  "torch.compile reduce-overhead" (the eager model).

Shapes: digits-like 8x8 grey (17 levels, batch 64) and 32x32x3 (256 levels, batch 16); the models of
:mod:`fastgen.benchmarks.bench_sampling` (PixelCNN h=64 x 7 blocks, Gated 64 x 6 layers, PixelCNN++-lite 80 x 2
grey / 160 x 3 RGB, 10 mixtures), PixelRNN (Row LSTM and Diagonal BiLSTM, h = 64 (66 RGB) x 4 layers), a VAE (32 channels grey / 64 RGB, 16 latents; its loss is the negative ELBO
with fixed seeded noise, so every provider computes the same function) and a DCGAN (32 / 64 channels, 32
latents, non-saturating loss, fixed seeded z; its step back-propagates the D loss plus the G loss and takes one
Adam step: the compute of one alternating D and G step. R1 is left out here because torch.compile does not
compile double backward; ``fastgen.gradient_penalty`` has its own op benchmark). Per row: step time (``triton.testing.do_bench`` on CUDA; a wall-clock median
on CPU), images/s, launches per step, peak memory on CUDA, and the MB autograd keeps for the backward of the
full case (``saved_mb``; fastgen's counted with no-op launches on CPU), and on fastgen's rows three errors of the
step's loss and parameter gradients (:func:`step_errors`): against eager at the row's precision, against an
eager float64 step, and eager's own against that float64 step (the precision's floor: with bfloat16, a step
``max_rel_err_vs_fp64`` near ``eager_max_rel_err_vs_fp64`` is as accurate as eager's, however far the two are
from each other). On CPU fastgen's kernels run under Triton's interpreter: a correctness pass (those errors) and
a launch count on a tiny model and batch (``INTERPRETER_BATCH``), never a time, and only without --quick (an interpreted
step takes ~10 s even there); the CPU steps are timed with ``CPU_THREADS`` = 1
intra-op thread, as the sampling benchmark (on the shared 2-core CI machine two OpenMP threads made an 8x8
batch-64 eager PixelCNN step take 7.3 s).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
import time
from typing import Callable

import pytest
import torch

import fastgen
from fastgen.benchmarks import harness
from fastgen.benchmarks import bench_sampling
from fastgen.benchmarks.bench_sampling import CPU_THREADS, FAMILIES, SHAPES, Shape, build_model
from fastgen.dtypes import compute_dtype
from fastgen.models import DCGAN, VAE, PixelRNN, dmol_targets
from fastgen.reference import pixel_losses as reference_losses

PROVIDERS = ("fastgen", "eager", "fastgen reduce-overhead", "torch.compile reduce-overhead", "torch.compile")
CUDA_ONLY = ("fastgen reduce-overhead", "torch.compile reduce-overhead")  # CUDA graphs need CUDA
INTERPRETER_BATCH = 1  # batch of the interpreted (CPU) correctness / launch-count step
TRAIN_SHAPES = {"8x8 grey": 64, "32x32x3": 16}  # shape -> batch
# PixelRNN beside the PixelCNNs (the training-speed gap that motivated the PixelCNN): h = 64 (66 RGB) x 4 layers
PIXELRNN_FAMILIES = ("PixelRNN row", "PixelRNN diagonal")
TRAIN_FAMILIES = FAMILIES + PIXELRNN_FAMILIES + ("VAE", "DCGAN")
QUICK_FAMILIES = ("PixelCNN", "VAE", "DCGAN")  # at 8x8 grey: eager steps of a few ms on CPU


def build_training_model(family: str, shape: Shape, tiny: bool = False):
    """A float32 model of ``family`` for ``shape``, seeded (the PixelCNN families as the sampling benchmark's);
    ``tiny``: 8 channels (tests and the interpreted runs)."""
    if family in FAMILIES:
        return build_model(family, shape, tiny)
    torch.manual_seed(0)
    if family in PIXELRNN_FAMILIES:
        h = 6 if tiny else (66 if shape.channels == 3 else 64)
        return PixelRNN(family.split()[1], shape.channels, shape.levels, hidden_channels=h, n_layers=2 if tiny else 4)
    hidden = 8 if tiny else (64 if shape.channels == 3 else 32)
    if family == "VAE":
        return VAE(shape.channels, (shape.height, shape.width), latent_dim=4 if tiny else 16, hidden_channels=hidden,
                   levels=shape.levels)
    if family == "DCGAN":
        return DCGAN(shape.channels, shape.height, latent_dim=8 if tiny else 32, hidden_channels=hidden,
                     levels=shape.levels)
    raise ValueError(f"family must be one of {TRAIN_FAMILIES}, got {family!r}")


def _seeded_normal(rows: int, columns: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(rows, columns, generator=generator).to(like.device, dtype)


@dataclasses.dataclass
class TrainingCase:
    """One (model family, image shape, batch) training step."""

    family: str
    shape: Shape
    batch: int
    quick: bool = False
    tiny: bool = False  # tiny model (tests, and the interpreted CPU runs)
    precision: str = "float32"  # or "bfloat16": every provider's forward and loss under bfloat16 autocast

    @property
    def label(self) -> str:
        return (f"{self.family} {self.shape.name} B={self.batch}" + (" bf16" if self.precision == "bfloat16" else "")
                + (" tiny" if self.tiny else ""))

    def images(self, device: str, batch: int | None = None) -> torch.Tensor:
        """Random integer pixels [B, C, H, W] in 0..levels-1 (seeded)."""
        gen = torch.Generator().manual_seed(1)
        s = self.shape
        shape = (batch or self.batch, s.channels, s.height, s.width)
        return torch.randint(0, s.levels, shape, generator=gen).to(device)


def cases(quick: bool = True) -> list[TrainingCase]:
    """Every family at each of ``TRAIN_SHAPES``; quick: ``QUICK_FAMILIES`` at 8x8 grey."""
    every = [TrainingCase(f, SHAPES[name], batch, quick=(name == "8x8 grey" and f in QUICK_FAMILIES))
             for name, batch in TRAIN_SHAPES.items() for f in TRAIN_FAMILIES]
    # the precision `fastgen train` uses on CUDA by default: bfloat16 autocast over forward and loss
    every += [TrainingCase(f, SHAPES["32x32x3"], TRAIN_SHAPES["32x32x3"], precision="bfloat16")
              for f in TRAIN_FAMILIES]
    return [c for c in every if c.quick or not quick]


def providers(device: str, quick: bool, full: bool) -> list[str]:
    """CUDA: all. CPU: eager; fastgen (interpreted, ~10 s a step even on the tiny model) unless quick;
    torch.compile with ``full``."""
    if device == "cuda":
        return list(PROVIDERS)
    return [p for p in PROVIDERS if p not in CUDA_ONLY and (
        p == "eager" or (p == "fastgen" and not quick) or (p == "torch.compile" and full))]


def compiled(provider: str) -> bool:
    """Whether ``provider`` builds torch.compile graphs (its jobs run last, its launches are not counted)."""
    return "compile" in provider or "reduce-overhead" in provider


def fixed_noise(model, x: torch.Tensor) -> torch.Tensor | None:
    """The seeded noise of the VAE (eps) and the DCGAN (z) for a batch like x, in the model's parameter dtype (the
    same draws for a float64 copy), made once, outside every compiled function (a torch.Generator cannot be
    created inside one); None for the PixelCNN families."""
    if not isinstance(model, (VAE, DCGAN)):
        return None
    return _seeded_normal(len(x), model.latent_dim, x, next(model.parameters()).dtype)


def loss_of(model, x: torch.Tensor, reference: bool, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of integer images x [B, C, H, W] under ``model``: nats per sub-pixel for the PixelCNN
    families, the negative ELBO (nats per image) for the VAE, D loss + G loss for the DCGAN; the noise of the
    VAE and the DCGAN is fixed and seeded. The reference loss of the PixelCNN families runs in the compute dtype
    of the model's output (float32 for the bfloat16 output of autocast, float64 for a float64 model) on the pixel
    values scaled in it (:func:`fastgen.models.dmol_targets`), as fastgen's fused losses compute it. (The DMOL
    evaluated in bfloat16, as it was here before, put eager's bfloat16 step on the tiny 32x32x3 PixelCNN++,
    batch 1, 0.40 away from float64 in :func:`max_relative_error` and its loss 4% away: fastgen's was 0.03 and
    7e-5.)"""
    if isinstance(model, (VAE, DCGAN)) and noise is None:
        noise = fixed_noise(model, x)
    if isinstance(model, VAE):
        return model.loss(x, eps=noise)
    if isinstance(model, DCGAN):
        return model.d_loss(x, noise).loss + model.g_loss(noise)
    if not reference:
        # the model's training loss (the fused output head for the softmax models); the images are made in
        # range: no per-step range check (a device sync that eager's loss does not make)
        return model.nll(x, pixels_checked=True)
    out = model(x)
    params = out.to(compute_dtype(out.dtype))
    if model.output_kind == "dmol":
        return reference_losses.dmol_nll(params, dmol_targets(x, model.levels, out.dtype), model.n_mixtures,
                                         levels=model.levels)
    return reference_losses.pixel_cross_entropy(params, x, model.levels)


def training_step(model, x: torch.Tensor, provider: str, precision: str = "float32") -> Callable[[], torch.Tensor]:
    """A no-argument callable running one step (zero_grad, forward, loss, backward, Adam) of ``model`` on x;
    with precision "bfloat16" the forward and the loss run under bfloat16 autocast (float32 weights)."""
    reference = not provider.startswith("fastgen")
    model.use_reference(reference)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    noise = fixed_noise(model, x)
    autocast = precision == "bfloat16"

    def forward_loss(x):
        with fastgen.use_backend("reference") if reference else contextlib.nullcontext(), \
                torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return loss_of(model, x, reference, noise)

    graphs = provider.endswith("reduce-overhead")
    if compiled(provider):
        forward_loss = torch.compile(forward_loss, dynamic=False, mode="reduce-overhead" if graphs else None)

    def step():
        if graphs:  # a new step: the previous replay's outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        loss = forward_loss(x)
        loss.backward()
        optimizer.step()
        return loss

    step.forward_loss = forward_loss  # the step's forward and loss alone (saved_mb measures it)
    return step


@contextlib.contextmanager
def exact_float32():
    """TF32 off for CUDA matmuls and convolutions inside the block (PyTorch lets cuDNN convolutions use TF32 by
    default, ``torch.backends.cudnn.allow_tf32``), restored after: the correctness pass compares fastgen's
    float32 step with an eager float32 step, not with a TF32 one (on the H200, TF32 put eager 1e-3 to 2e-2 away
    from fastgen's exact float32). On torch >= 2.9 through the per-operation precisions (cuDNN's convolutions and
    CUDA matmuls), each restored: the legacy ``allow_tf32`` getter raises once a user has set them apart with that
    newer API (e.g. ``torch.backends.cudnn.conv.fp32_precision = "ieee"``)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None:  # torch < 2.9: the legacy switches only
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        return
    saved = [(switch, switch.fp32_precision) for switch in (conv, torch.backends.cuda.matmul)]
    for switch, _ in saved:
        switch.fp32_precision = "ieee"
    try:
        yield
    finally:
        for switch, precision in saved:
            switch.fp32_precision = precision


def eager_step_values(model, x: torch.Tensor, precision: str) -> list[torch.Tensor]:
    """[loss, the gradient of every parameter (zeros where unused)] of one eager step (reference layers and
    losses) of ``model`` on x, without changing ``model``: under bfloat16 autocast for "bfloat16", on a float64
    copy for "float64", else in exact float32 (:func:`exact_float32`)."""
    if precision == "float64":
        model = copy.deepcopy(model).double()
    model.use_reference(True)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    params = list(model.parameters())
    with fastgen.use_backend("reference"), exact_float32():
        with autocast:
            loss = loss_of(model, x, True)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [loss.detach()] + [g if g is not None else torch.zeros_like(p) for p, g in zip(params, grads)]


def max_relative_error(values: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """The largest over the pairs of tensors of max |value - reference| / max |reference| (in float64)."""
    errors = [(a.double() - b.double()).abs().max().item() / max(b.double().abs().max().item(), 1e-30)
              for a, b in zip(values, reference, strict=True) if b.numel()]
    return max(errors, default=0.0)


def step_errors(eager_model, x: torch.Tensor, loss: torch.Tensor, model, precision: str = "float32") -> dict:
    """Errors of the loss and of every parameter gradient of ``model`` (its ``.grad`` after one step that
    returned ``loss``), each :func:`max_relative_error` (per tensor relative to its largest reference value,
    the largest over the tensors):

    * ``max_rel_err_vs_eager``: against ``eager_model`` (a copy of its parameters before that step) on x at the
      same precision (bfloat16 autocast);
    * ``max_rel_err_vs_fp64``: against the eager step of a float64 copy;
    * ``eager_max_rel_err_vs_fp64``: the eager step at the row's precision against that float64 step: the
      precision's own error on this model and batch, the floor of the two above.

    In float32 all three are rounding (1e-7 to 1e-5 on the tiny CPU cases). In bfloat16 a gradient that sums
    many terms to a small total can be 1e-2 to 1e-1 off in any of the steps (eager's on the tiny 32x32x3
    PixelCNN, batch 1: 0.12), and a ReLU input within a rounding of 0 can take the other branch at a pixel in
    one step and not in the other (the tiny 32x32x3 Gated PixelCNN, batch 1: a head ReLU input of +4.9e-4 in
    float64 came out -4.7e-4 with fastgen's fused gate, which rounds t + other once where eager rounds three
    bfloat16 ops; its layer-0 weight gradients were then 3.5e-2 from float64, eager's 7e-3): read
    ``max_rel_err_vs_fp64`` against ``eager_max_rel_err_vs_fp64``, not against 0. Under Triton's interpreter
    every float32 -> bfloat16 conversion truncates (Triton 3.6, with ``fp_downcast_rounding="rtne"`` too) where
    a GPU rounds to nearest, which adds to fastgen's bfloat16 errors on CPU: on the tiny 32x32x3 PixelCNN++,
    batch 1, 2.7e-2 interpreted and 7.1e-3 with the interpreter patched to round to nearest (eager: 8.2e-3)."""
    fastgen_values = [loss.detach()] + [p.grad if p.grad is not None else torch.zeros_like(p)
                                        for p in model.parameters()]
    eager = eager_step_values(eager_model, x, precision)
    exact = eager_step_values(eager_model, x, "float64")
    return dict(max_rel_err_vs_eager=max_relative_error(fastgen_values, eager),
                max_rel_err_vs_fp64=max_relative_error(fastgen_values, exact),
                eager_max_rel_err_vs_fp64=max_relative_error(eager, exact))


def measure(case: TrainingCase, provider: str, device: str, *, timed: bool, batch: int | None = None) -> dict:
    """One row; ``batch`` shrinks the batch (interpreted runs: one step, counted and checked, untimed). The
    first step (the one checked against eager) runs in exact float32 (:func:`exact_float32`); the timed steps
    run with PyTorch's defaults. torch.compile builds its graphs once, in the first step of the case."""
    model = build_training_model(case.family, case.shape, case.tiny).to(device).train()
    eager_copy = copy.deepcopy(model) if provider.startswith("fastgen") else None
    x = case.images(device, batch)
    if compiled(provider):
        torch._dynamo.reset()  # drop the graphs of earlier cases (one function recompiled per case: none is reused)
    step = training_step(model, x, provider, case.precision)
    first = [None]

    def first_step():
        with exact_float32() if eager_copy is not None else contextlib.nullcontext():
            first[0] = step()

    counted = not compiled(provider)  # its generated kernels are not counted (as in the op benchmarks)
    if batch is None:  # warm-up (compile, autotune, Adam state) outside of every count, then a counted step
        first_step()
        errors = step_errors(eager_copy, x, first[0], model, case.precision) if eager_copy is not None else {}
        launches = harness.count_launches(step)[0] if counted else None
    else:  # interpreted: one step, counted, then its gradients checked
        launches = harness.count_launches(first_step)[0]
        errors = step_errors(eager_copy, x, first[0], model, case.precision) if eager_copy is not None else {}
    row = dict(suite="train", model=case.family, size=case.shape.name, batch=x.shape[0], provider=provider,
               precision=case.precision,
               params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3), tiny=case.tiny,
               launches=launches, p20_ms=None, p50_ms=None, p80_ms=None, images_per_s=None, peak_mb=None,
               **{name: errors.get(name) for name in ERROR_COLUMNS})
    row["saved_mb"] = None if compiled(provider) else saved_mb(case, provider, device)
    if timed:
        p20, p50, p80 = harness.time_ms(step, device, budget_s=1.0)
        peak = harness.peak_memory_mb(step, device)
        row.update(p20_ms=round(p20, 3), p50_ms=round(p50, 3), p80_ms=round(p80, 3),
                   images_per_s=round(x.shape[0] / (p50 * 1e-3), 1), peak_mb=None if peak is None else round(peak, 1))
    return row


def saved_mb(case: TrainingCase, provider: str, device: str) -> float:
    """MB that autograd keeps for the backward of one forward and loss of the full case (the step's activation
    memory, the part of its peak that grows with the batch). On CPU fastgen's kernels would run interpreted: its
    forward runs with no-op launches there (:func:`fastgen.launch.dry_run`), allocating what the kernels
    write, so the count is of the full model and batch, as eager's."""
    from fastgen.launch import dry_run

    model = build_training_model(case.family, case.shape).to(device).train()
    x = case.images(device)
    step = training_step(model, x, provider, case.precision)
    dry = provider.startswith("fastgen") and device == "cpu"
    with dry_run() if dry else contextlib.nullcontext():
        saved = harness.saved_bytes(lambda: step.forward_loss(x), {})
    return round(saved / 2**20, 2)


# fastgen's rows (None on the others), see step_errors
ERROR_COLUMNS = ("max_rel_err_vs_eager", "max_rel_err_vs_fp64", "eager_max_rel_err_vs_fp64")
COMPILE_RESERVE_S = 45.0  # a torch.compile job (build + time) is not started with less of the budget left


def jobs(selected: list[TrainingCase], chosen: list[str]) -> list[tuple[TrainingCase, str]]:
    """(case, provider) in run order: fastgen and eager of every case first, torch.compile last (its graph
    builds take tens of seconds each: a run cut short by its budget loses those rows only)."""
    first = [(c, p) for c in selected for p in chosen if not compiled(p)]
    return first + [(c, p) for c in selected for p in chosen if compiled(p)]


def run(device: str, quick: bool = True, full: bool = False, only: str = "", progress: bool = True,
        case_list: list[TrainingCase] | None = None, threads: int | None = None,
        on_row: Callable[[dict], None] | None = None, budget_s: float | None = None) -> list[dict]:
    """Every selected case and provider (order: :func:`jobs`); ``on_row`` gets each row as soon as it is
    measured. With ``budget_s``, no job starts after that many seconds (a torch.compile job none within
    ``COMPILE_RESERVE_S`` of it): skipped jobs have no row and are named on stderr. On CPU fastgen runs
    interpreted on a tiny copy of the case, and the timed steps use ``threads`` (default ``CPU_THREADS``)
    intra-op threads (restored after)."""
    from tqdm import tqdm

    selected = [c for c in (case_list or cases(quick)) if only in c.label]
    chosen = providers(device, quick, full)
    previous = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads or CPU_THREADS)
    rows, skipped = [], []
    start = time.monotonic()
    try:
        for case, provider in tqdm(jobs(selected, chosen), desc="training step", unit="case",
                                   disable=not progress):
            reserve = COMPILE_RESERVE_S if compiled(provider) else 0.0
            if budget_s is not None and time.monotonic() - start > budget_s - reserve:
                skipped.append(f"{case.label} {provider}")
                continue
            interpreted = device == "cpu" and provider == "fastgen"
            measured = dataclasses.replace(case, tiny=True) if interpreted else case
            try:
                row = measure(measured, provider, device, timed=not interpreted,
                              batch=INTERPRETER_BATCH if interpreted else None)
            except Exception as error:  # noqa: BLE001  (a compiler failure is a row, not the end of the suite)
                if not compiled(provider):
                    raise
                print(f"training step: {case.label} {provider} failed: {type(error).__name__}: {error}",
                      file=sys.stderr, flush=True)
                row = dict(suite="train", model=case.family, size=case.shape.name, batch=case.batch,
                           provider=provider, params_m=None, tiny=case.tiny, launches=None, p20_ms=None,
                           p50_ms=None, p80_ms=None, images_per_s=None, peak_mb=None,
                           **dict.fromkeys(ERROR_COLUMNS))
                row["status"] = f"failed: {type(error).__name__}: {str(error)[:200]}"
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                continue
            row["status"] = "interpreted, tiny model (correctness + counts, not timed)" if interpreted else "timed"
            row["threads"] = torch.get_num_threads() if device == "cpu" else None
            row["load"] = bench_sampling.load()
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        torch.set_num_threads(previous)
    if skipped:
        print(f"training step: budget of {budget_s:.0f} s spent, {len(skipped)} jobs not run (no row): "
              + "; ".join(skipped), file=sys.stderr, flush=True)
    return rows


COLUMNS = ["suite", "model", "size", "batch", "precision", "provider", "status", "p20_ms", "p50_ms", "p80_ms", "images_per_s",
           "launches", "peak_mb", "saved_mb", *ERROR_COLUMNS, "params_m", "tiny", "threads", "load", "device",
           "torch", "triton", "date"]


def _case_key(r: dict) -> tuple:
    """What makes rows the same case: model, size, batch and precision (float32 for rows written before it)."""
    return r["model"], r["size"], r["batch"], r.get("precision", "float32")


def _case_name(r: dict) -> str:
    return f"{r['model']} {r['size']} B={r['batch']}" + (" bf16" if r.get("precision") == "bfloat16" else "")


def speedups(rows: list[dict]) -> dict[str, list[tuple[str, float]]]:
    """provider -> [(case "model size B=batch [bf16]", p50 of eager / p50 of provider)] over the timed rows."""
    eager = {_case_key(r): r["p50_ms"] for r in rows if r["provider"] == "eager"}
    out: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        base = eager.get(_case_key(r))
        if r["provider"] != "eager" and r.get("p50_ms") and base:
            out.setdefault(r["provider"], []).append((_case_name(r), base / r["p50_ms"]))
    return out


def plot(rows: list[dict], path: str, title: str) -> bool:
    """Speed-up of each provider's training step over eager, one bar per case; False (nothing written) when no
    provider but eager was timed (a CPU run: fastgen runs interpreted there)."""
    ratios = speedups(rows)
    if not ratios:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ratios), figsize=(7 * len(ratios), 0.5 * max(map(len, ratios.values())) + 2),
                             squeeze=False)
    for ax, (provider, points) in zip(axes[0], sorted(ratios.items())):
        ax.barh([label for label, _ in points], [ratio for _, ratio in points])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{provider}: training-step speed-up over eager (p50)")
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(rows: list[dict]) -> str:
    """One line per row (provider), with the speed-up over eager of the same case."""
    def fmt(v, spec=""):
        return "-" if v is None else format(v, spec)

    eager = {_case_key(r): r for r in rows if r["provider"] == "eager"}
    lines = ["| model | size | batch | precision | provider | step ms (p50) | images/s | speed-up vs eager | launches "
             "| peak MB | saved MB | max rel. err vs eager | vs float64 | eager's vs float64 | params (M) | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = eager.get(_case_key(r), {})
        speedup = base["p50_ms"] / r["p50_ms"] if r.get("p50_ms") and base.get("p50_ms") else None
        errors = " | ".join(fmt(r.get(name), ".1e") for name in ERROR_COLUMNS)
        lines.append(f"| {r['model']} | {r['size']} | {r['batch']} | {r.get('precision', 'float32')} | "
                     f"{r['provider']} | {fmt(r['p50_ms'], '.2f')} | "
                     f"{fmt(r['images_per_s'], '.0f')} | {fmt(speedup, '.2f')} | {fmt(r['launches'])} | "
                     f"{fmt(r['peak_mb'], '.1f')} | {fmt(r.get('saved_mb'), '.1f')} | {errors} | "
                     f"{r['params_m']} | {r['status']} |")
    return "\n".join(lines)


@pytest.mark.parametrize("case", cases(quick=True), ids=lambda c: c.label)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_training_step(benchmark, provider, case, device):
    """The quick cases under pytest-benchmark: PixelCNN, VAE, DCGAN at 8x8 grey, batch 64 (on CPU only eager
    is timed)."""
    if device == "cpu" and provider.startswith("fastgen"):
        pytest.skip("fastgen's kernels run interpreted on CPU: not a speed figure (fastgen bench counts them)")
    if device == "cpu" and compiled(provider):
        pytest.skip("torch.compile is timed on GPU runs, or with `fastgen bench --full` (CPU builds are slow)")
    model = build_training_model(case.family, case.shape).to(device).train()
    step = training_step(model, case.images(device), provider)
    step()
    benchmark.group = f"training step {case.label}"
    benchmark(step)
