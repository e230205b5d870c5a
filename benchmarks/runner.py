"""`fastgen bench`: run the benchmark cases on whatever device exists, write CSV + markdown + PNG.

On CUDA every provider is timed. On a CPU-only machine the eager reference is timed (torch.compile too with
--full), and the fastgen kernels run under Triton's interpreter: a correctness pass against the float64
reference and a count of launches, never a time.
"""

from __future__ import annotations

import csv
import datetime
import importlib
import json
import os
import platform

import torch
import triton

from fastgen.benchmarks import harness

CASE_MODULES = [
    "fastgen.benchmarks.bench_reparameterize_kl",
    "fastgen.benchmarks.bench_tap_conv",
    "fastgen.benchmarks.bench_gan_losses",
    "fastgen.benchmarks.bench_gumbel_softmax",
    "fastgen.benchmarks.bench_pixel_losses",
    "fastgen.benchmarks.bench_gated_activation",
]
INTERPRETER_BATCH = 1  # batch of the interpreted correctness/launch-count runs (keeps the quick CPU run short)


def all_cases():
    return [case for name in CASE_MODULES for case in importlib.import_module(name).CASES]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run(device: str, quick: bool = True, full: bool = False, only: str = "", out_dir: str = "bench-out",
        progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    cases = [c for c in all_cases() if (c.quick or not quick) and only in c.label]
    providers = [p for p in harness.PROVIDERS if device == "cuda" or full or p != "torch.compile"]
    jobs = [(c, p, m) for c in cases for p in providers for m in c.modes]
    stamp = dict(device=device_name(device), torch=torch.__version__, triton=triton.__version__,
                 date=datetime.datetime.now().isoformat(timespec="seconds"))
    rows = []
    for case, provider, mode in tqdm(jobs, desc="fastgen bench", unit="case", disable=not progress):
        interpreted = device == "cpu" and provider == "fastgen"
        row = harness.measure(case, provider, mode, device, timed=not interpreted,
                              batch=INTERPRETER_BATCH if interpreted else None)
        if provider == "fastgen" and mode == case.modes[-1]:  # the error of the fullest mode the op has
            row["max_rel_err_vs_fp64"] = harness.max_error(case, device,
                                                           batch=INTERPRETER_BATCH if interpreted else None)
        row["status"] = "interpreted (correctness + counts, not timed)" if interpreted else "timed"
        rows.append({**row, **stamp})
    os.makedirs(out_dir, exist_ok=True)
    write_csv(rows, os.path.join(out_dir, "results.csv"))
    table = markdown(rows, device)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    plot(rows, device, os.path.join(out_dir, "results.png"))
    return rows


COLUMNS = ["op", "case", "provider", "mode", "status", "p20_ms", "p50_ms", "p80_ms", "gbps", "gflop_live",
           "gflop_dense", "tflops_live", "tflops_dense", "launches", "bytes_moved", "saved_kb_per_sample",
           "count_batch", "peak_mb", "max_rel_err_vs_fp64", "device",
           "torch", "triton", "date"]


def write_csv(rows: list[dict], path: str) -> None:
    """Appends the op rows to the CSV at ``path`` (header written once)."""
    _write_rows(rows, COLUMNS, path)


def _fmt(value, spec=""):
    return "-" if value is None else format(value, spec)


def _pair(row: dict, key: str) -> str:
    live, dense = row.get(f"{key}_live"), row.get(f"{key}_dense")
    return "-" if live is None else f"{live:.3g} / {dense:.3g}"


def markdown(rows: list[dict], device: str) -> str:
    """One line per (case, mode): fastgen beside eager (and torch.compile), with ratios."""
    lines = [f"Device: {rows[0]['device']} · torch {rows[0]['torch']} · triton {rows[0]['triton']} · "
             f"{rows[0]['date']}", ""]
    if device == "cpu":
        lines.append("CPU only: the eager reference is timed; fastgen's kernels ran under Triton's interpreter "
                     "(checked against float64, launches counted), so GPU timings need a GPU.")
        lines.append("")
    lines.append("| case | mode | launches fastgen / eager | MB moved fastgen / eager | saved KB/sample "
                 "fastgen / eager | eager ms | compile ms | fastgen ms | speed-up vs eager | fastgen GB/s "
                 "| GFLOP live / dense | TFLOP/s fastgen (live / dense) | TFLOP/s eager (live / dense) "
                 "| max rel. err vs fp64 |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by_key = {(r["op"], r["case"], r["mode"], r["provider"]): r for r in rows}
    for (op, case, mode, provider), fg in by_key.items():
        if provider != "fastgen":
            continue
        eager = by_key.get((op, case, mode, "eager"), {})
        comp = by_key.get((op, case, mode, "torch.compile"), {})
        speedup = (eager["p50_ms"] / fg["p50_ms"]) if fg.get("p50_ms") and eager.get("p50_ms") else None
        err = next((r["max_rel_err_vs_fp64"] for m in harness.MODES[::-1]  # measured on the op's fullest mode
                    if (r := by_key.get((op, case, m, "fastgen"), {})).get("max_rel_err_vs_fp64") is not None), None)
        lines.append(
            f"| {op} {case} | {mode} | {fg['launches']} / {_fmt(eager.get('launches'))} | "
            f"{fg['bytes_moved'] / 2**20:.2f} / {_fmt(eager.get('bytes_moved') and eager['bytes_moved'] / 2**20, '.2f')} | "
            f"{fg['saved_kb_per_sample']:.2f} / {_fmt(eager.get('saved_kb_per_sample'), '.2f')} | "
            f"{_fmt(eager.get('p50_ms'), '.3f')} | {_fmt(comp.get('p50_ms'), '.3f')} | {_fmt(fg['p50_ms'], '.3f')} | "
            f"{_fmt(speedup, '.2f')} | {_fmt(fg['gbps'], '.0f')} | {_pair(fg, 'gflop')} | {_pair(fg, 'tflops')} | "
            f"{_pair(eager, 'tflops')} | {_fmt(err, '.1e')} |")
    if device == "cuda":
        lines += ["", f"GB/s counts the bytes the fused op must move; the H200 copies at about "
                      f"{harness.H200_COPY_GBPS:.0f} GB/s. TFLOP/s 'live' counts only the multiply-adds of unmasked "
                      f"taps, 'dense' those of the dense convolution; a bf16 matmul peaks at about "
                      f"{harness.H200_BF16_TFLOPS:.0f} TFLOP/s."]
    elif any(r.get("gflop_live") for r in rows):
        lines += ["", "GFLOP live / dense: the multiply-adds of the unmasked taps (what fastgen's kernels do) and of "
                      "the dense convolution (what F.conv2d(x, weight * mask) does)."]
    return "\n".join(lines)


def plot(rows: list[dict], device: str, path: str) -> None:
    """GPU: speed-up of fastgen and torch.compile over eager. CPU: launches and bytes, fastgen vs eager."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fastgen_rows = [r for r in rows if r["provider"] == "fastgen"]
    index = {(r["case"], r["mode"], r["provider"]): r for r in rows}
    labels = [f"{r['case']}\n{r['mode']}" for r in fastgen_rows]
    eager = [index[(r["case"], r["mode"], "eager")] for r in fastgen_rows]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.55 * len(labels) + 2.5))
    y = range(len(labels))
    if device == "cuda":
        for ax, provider in zip(axes, ("fastgen", "torch.compile")):
            ratios = [e["p50_ms"] / index[(r["case"], r["mode"], provider)]["p50_ms"]
                      if (r["case"], r["mode"], provider) in index else 0 for r, e in zip(fastgen_rows, eager)]
            ax.barh(list(y), ratios)
            ax.axvline(1.0, color="k", lw=0.8)
            ax.set_title(f"{provider}: speed-up over eager (p50)")
    else:
        for ax, key, title in ((axes[0], "launches", "kernel launches per call"),
                               (axes[1], "bytes_moved", "bytes moved per call (MB)")):
            scale = 2**20 if key == "bytes_moved" else 1
            ax.barh([i + 0.2 for i in y], [e[key] / scale for e in eager], height=0.4, label="eager PyTorch")
            ax.barh([i - 0.2 for i in y], [r[key] / scale for r in fastgen_rows], height=0.4, label="fastgen")
            ax.set_xscale("log")
            ax.set_title(title + " (log scale)")
            ax.legend()
    for ax in axes:
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
    fig.suptitle(f"fastgen benchmarks on {rows[0]['device']} ({rows[0]['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SUITES = ("ops", "host", "train", "sample")  # `fastgen bench --suite`: op cases, host cost per call, training, sampling


def run_suites(device: str, suites=SUITES, quick: bool = True, full: bool = False, only: str = "",
               out_dir: str = "bench-out", progress: bool = True) -> dict[str, list[dict]]:
    """The chosen suites; rows per suite. Files in ``out_dir``: results.jsonl (every row of every suite with its
    ``suite``, appended: the one results file), results.md (a section per suite), the op rows
    in results.csv (+ results.png), the host-cost rows in host.csv, the training rows in training.csv, the sampling rows in sampling.csv with
    the speed-up plot sampling.png (CSVs appended, header written once)."""
    from fastgen.benchmarks import bench_host, bench_sampling, bench_training

    os.makedirs(out_dir, exist_ok=True)
    results, sections = {}, []
    if "ops" in suites:
        results["ops"] = run(device, quick=quick, full=full, only=only, out_dir=out_dir, progress=progress)
        with open(os.path.join(out_dir, "results.md")) as f:
            sections.append("## Ops\n\n" + f.read().strip())
    stamp = dict(device=device_name(device), torch=torch.__version__, triton=triton.__version__,
                 date=datetime.datetime.now().isoformat(timespec="seconds"))
    if "host" in suites:
        rows = [{**r, **stamp} for r in bench_host.run(device, quick=quick, only=only, progress=progress)]
        results["host"] = rows
        if rows:
            _write_rows(rows, bench_host.COLUMNS, os.path.join(out_dir, "host.csv"))
            sections.append(f"## Host cost per call ({bench_host.CALLS} back-to-back calls)\n\n"
                            + bench_host.markdown(rows))
    if "train" in suites:
        rows = [{**r, **stamp} for r in bench_training.run(device, quick=quick, full=full, only=only,
                                                           progress=progress)]
        results["train"] = rows
        if rows:
            _write_rows(rows, bench_training.COLUMNS, os.path.join(out_dir, "training.csv"))
            note = ("" if device == "cuda" else "\n\nCPU: eager (and torch.compile with --full) timed; fastgen's "
                    "kernels ran under Triton's interpreter on a tiny model (gradients checked against eager, "
                    "launches counted), never timed.")
            sections.append("## Training step (forward + loss + backward + Adam)\n\n" + bench_training.markdown(rows)
                            + note)
            bench_training.plot(rows, os.path.join(out_dir, "training.png"),
                                f"Training step: {stamp['device']}, {stamp['date'][:10]}")
    if "sample" in suites:
        rows = [{**r, **stamp} for r in bench_sampling.run(device, quick=quick, only=only, progress=progress)]
        results["sample"] = rows
        if rows:
            _write_rows(rows, bench_sampling.COLUMNS, os.path.join(out_dir, "sampling.csv"))
            sections.append("## Sampling, whole images: naive vs cached\n\n" + bench_sampling.markdown(rows))
            bench_sampling.plot(rows, os.path.join(out_dir, "sampling.png"),
                                f"PixelCNN sampling, cached vs naive: {stamp['device']}, {stamp['date'][:10]}")
    with open(os.path.join(out_dir, "results.jsonl"), "a") as f:  # every row of every suite, one file
        for suite, rows in results.items():
            for row in rows:
                f.write(json.dumps({"suite": suite, **row}, default=str) + "\n")
    header = f"Device: {stamp['device']} · torch {stamp['torch']} · triton {stamp['triton']} · {stamp['date']}"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n\n".join([header] + sections) + "\n")
    return results


def _write_rows(rows: list[dict], columns: list[str], path: str) -> None:
    """Appends ``rows`` to the CSV at ``path`` (header written once)."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
