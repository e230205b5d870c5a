"""`fastgen bench`: run the benchmark cases on whatever device exists, write CSV + markdown + PNG.

On CUDA every provider is timed. On a CPU-only machine the eager reference is timed (torch.compile too with
--full), and the fastgen kernels run under Triton's interpreter: a correctness pass against the float64
reference and a count of launches, never a time.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import sys
import time

import torch
import triton

from fastgen.benchmarks import harness

INTERPRETER_BATCH = 1  # batch of the interpreted correctness/launch-count runs (keeps the quick CPU run short)


def all_cases():
    """The op cases of every registered family (:mod:`fastgen.registry`)."""
    from fastgen import registry

    return [case for family in registry.families() for case in family.benchmark_cases()]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def stamp_for(device: str) -> dict:
    """The device, versions and time every row of a run carries."""
    return dict(device=device_name(device), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now().isoformat(timespec="seconds"))


def op_jobs(cases, providers) -> list[tuple]:
    """(case, provider, mode) in run order: fastgen and eager of every case first, then torch.compile case by
    case (its graph builds are the slow part: a run cut short by its budget loses those rows only; a case's
    modes stay together, so both reuse the graphs built for it)."""
    first = [(c, p, m) for c in cases for p in providers if p != "torch.compile" for m in c.modes]
    return first + [(c, p, m) for c in cases for p in providers if p == "torch.compile" for m in c.modes]


def run(device: str, quick: bool = True, full: bool = False, only: str = "", out_dir: str = "bench-out",
        progress: bool = True, on_row=None, budget_s: float | None = None, stamp: dict | None = None) -> list[dict]:
    """The op cases. Each row is appended to ``out_dir``/results.csv (and handed to ``on_row``) as soon as it is
    measured; results.md and results.png are written at the end. With ``budget_s``, no job starts after that
    many seconds (skipped jobs have no row and are named on stderr)."""
    from tqdm import tqdm

    cases = [c for c in all_cases() if (c.quick or not quick) and only in c.label]
    providers = [p for p in harness.PROVIDERS if device == "cuda" or full or p != "torch.compile"]
    stamp = stamp or stamp_for(device)
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "results.csv")
    rows, skipped = [], []
    start = time.monotonic()
    for case, provider, mode in tqdm(op_jobs(cases, providers), desc="fastgen bench", unit="case",
                                     disable=not progress):
        if budget_s is not None and time.monotonic() - start > budget_s:
            skipped.append(f"{case.label} {provider} {mode}")
            continue
        interpreted = device == "cpu" and provider == "fastgen"
        row = harness.measure(case, provider, mode, device, timed=not interpreted,
                              batch=INTERPRETER_BATCH if interpreted else None)
        if provider == "fastgen" and mode == case.modes[-1]:  # the error of the fullest mode the op has
            row["max_rel_err_vs_fp64"] = harness.max_error(case, device,
                                                           batch=INTERPRETER_BATCH if interpreted else None)
        row["status"] = "interpreted (correctness + counts, not timed)" if interpreted else "timed"
        row = {**row, **stamp}
        rows.append(row)
        _write_rows([row], COLUMNS, csv_path)
        if on_row is not None:
            on_row(row)
    if skipped:
        print(f"fastgen bench: budget of {budget_s:.0f} s spent, {len(skipped)} jobs not run (no row): "
              + "; ".join(skipped), file=sys.stderr, flush=True)
    if rows:
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(device_line(stamp) + "\n\n" + markdown(rows, device) + "\n")
        plot(rows, device, os.path.join(out_dir, "results.png"))
    return rows


def device_line(stamp: dict) -> str:
    return f"Device: {stamp['device']} · torch {stamp['torch']} · triton {stamp['triton']} · {stamp['date']}"


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
    """One line per (case, mode): fastgen beside eager (and torch.compile), with ratios (the device line is the
    caller's: :func:`device_line`)."""
    lines = []
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
    """GPU: speed-up of fastgen and torch.compile over eager. CPU: launches and bytes, fastgen vs eager. One bar
    (group) per op case and mode, labelled with the op's name, its case and the mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fastgen_rows = [r for r in rows if r["provider"] == "fastgen"]
    index = {(r["op"], r["case"], r["mode"], r["provider"]): r for r in rows}
    fastgen_rows = [r for r in fastgen_rows if (r["op"], r["case"], r["mode"], "eager") in index]
    if not fastgen_rows:
        return
    labels = [f"{r['op']}  {r['case']}\n{r['mode']}" for r in fastgen_rows]
    eager = [index[(r["op"], r["case"], r["mode"], "eager")] for r in fastgen_rows]
    fig, axes = plt.subplots(1, 2, figsize=(16, 0.5 * len(labels) + 2.5), sharey=True)
    y = list(range(len(labels)))
    if device == "cuda":
        for ax, provider in zip(axes, ("fastgen", "torch.compile")):
            ratios = []
            for r, e in zip(fastgen_rows, eager):
                other = index.get((r["op"], r["case"], r["mode"], provider), {})
                ratios.append(e["p50_ms"] / other["p50_ms"] if other.get("p50_ms") and e.get("p50_ms") else 0.0)
            ax.barh(y, ratios, color=["tab:green" if v >= 1 else "tab:red" for v in ratios])
            for i, v in enumerate(ratios):
                ax.annotate(f"{v:.2f}x" if v else "not timed", (v, i), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=7)
            ax.axvline(1.0, color="k", lw=0.8)
            ax.set_xlabel(f"speed-up of {provider} over eager PyTorch (p50 time; > 1 is faster)")
            ax.set_title(f"{provider} vs eager", fontsize=10)
    else:
        for ax, key, title in ((axes[0], "launches", "kernel launches per call"),
                               (axes[1], "bytes_moved", "MB moved per call")):
            scale = 2**20 if key == "bytes_moved" else 1
            ax.barh([i + 0.2 for i in y], [e[key] / scale for e in eager], height=0.4, label="eager PyTorch")
            ax.barh([i - 0.2 for i in y], [r[key] / scale for r in fastgen_rows], height=0.4, label="fastgen")
            ax.set_xscale("log")
            ax.set_xlabel(title + " (log scale)")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8, loc="best")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].invert_yaxis()  # sharey: both panels follow
    what = "speed-up over eager" if device == "cuda" else "launches and bytes, fastgen vs eager (CPU: not timed)"
    fig.suptitle(f"fastgen op benchmarks, {what}: {rows[0]['device']}, {rows[0]['date'][:10]}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long op labels: never cut at the left edge
    plt.close(fig)


SUITES = ("ops", "host", "train", "sample")  # `fastgen bench --suite`: op cases, host cost per call, training, sampling


def run_suites(device: str, suites=SUITES, quick: bool = True, full: bool = False, only: str = "",
               out_dir: str = "bench-out", progress: bool = True,
               budget_s: float | None = None) -> dict[str, list[dict]]:
    """The chosen suites; rows per suite. Files in ``out_dir``: results.jsonl (every row of every suite with its
    ``suite``, appended: the one results file), results.md (one device line, then a section per suite), the op
    rows in results.csv (+ results.png), the host-cost rows in host.csv, the training rows in training.csv
    (+ training.png where a provider other than eager was timed), the sampling rows in sampling.csv with the speed-up plot sampling.png (CSVs
    appended, header written once). Every row is appended to results.jsonl and its CSV as soon as it is
    measured (a run stopped part-way keeps what it measured); the markdown and the plots are written as each
    suite ends. ``budget_s``: each suite starts no job after that many seconds of its own."""
    from fastgen.benchmarks import bench_host, bench_sampling, bench_training

    os.makedirs(out_dir, exist_ok=True)
    stamp = stamp_for(device)
    jsonl = os.path.join(out_dir, "results.jsonl")

    def writer(suite, columns=None, csv_name=None):
        def on_row(row):  # stamped and appended as soon as it is measured
            row.update(stamp)
            if csv_name is not None:
                _write_rows([row], columns, os.path.join(out_dir, csv_name))
            with open(jsonl, "a") as f:
                f.write(json.dumps({"suite": suite, **row}, default=str) + "\n")
        return on_row

    results, sections = {}, []

    def write_markdown():
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write("\n\n".join([device_line(stamp)] + sections) + "\n")

    if "ops" in suites:
        rows = run(device, quick=quick, full=full, only=only, out_dir=out_dir, progress=progress,
                   on_row=writer("ops"), budget_s=budget_s, stamp=stamp)
        results["ops"] = rows
        if rows:
            sections.append("## Ops\n\n" + markdown(rows, device))
            write_markdown()  # run() wrote results.md for the ops alone: the sections replace it
    if "host" in suites:
        rows = bench_host.run(device, only=only, progress=progress,
                              on_row=writer("host", bench_host.COLUMNS, "host.csv"))
        results["host"] = rows
        if rows:
            sections.append(f"## Host cost per call ({bench_host.CALLS} back-to-back calls)\n\n"
                            + bench_host.markdown(rows))
            write_markdown()
    if "train" in suites:
        rows = bench_training.run(device, quick=quick, full=full, only=only, progress=progress,
                                  on_row=writer("train", bench_training.COLUMNS, "training.csv"), budget_s=budget_s)
        results["train"] = rows
        if rows:
            note = ("" if device == "cuda" else "\n\nCPU: eager (and torch.compile with --full) timed; fastgen's "
                    "kernels ran under Triton's interpreter on a tiny model (gradients checked against eager, "
                    "launches counted), never timed.")
            sections.append("## Training step (forward + loss + backward + Adam)\n\n" + bench_training.markdown(rows)
                            + note)
            write_markdown()
            bench_training.plot(rows, os.path.join(out_dir, "training.png"),
                                f"Training step: {stamp['device']}, {stamp['date'][:10]}")
    if "sample" in suites:
        rows = bench_sampling.run(device, quick=quick, only=only, progress=progress,
                                  on_row=writer("sample", bench_sampling.COLUMNS, "sampling.csv"), budget_s=budget_s)
        results["sample"] = rows
        if rows:
            sections.append("## Sampling, whole images: naive vs cached\n\n" + bench_sampling.markdown(rows))
            write_markdown()
            bench_sampling.plot(rows, os.path.join(out_dir, "sampling.png"),
                                f"PixelCNN sampling, cached vs naive: {stamp['device']}, {stamp['date'][:10]}")
    write_markdown()
    return results


def main(argv=None) -> int:
    """``python -m fastgen.benchmarks.runner``: `fastgen bench` with a time budget per suite (the GPU script)."""
    import argparse

    parser = argparse.ArgumentParser(description="fastgen benchmark suites, each row written as it is measured")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--suite", choices=SUITES + ("all",), default="ops")
    parser.add_argument("--all", action="store_true", help="every case, not only the quick ones")
    parser.add_argument("--full", action="store_true", help="torch.compile on CPU too")
    parser.add_argument("--only", default="", metavar="TEXT", help="only cases whose label contains TEXT")
    parser.add_argument("--out", default="bench-out", metavar="DIR")
    parser.add_argument("--budget", type=float, default=None, metavar="S",
                        help="start no job after S seconds of each suite (skipped jobs are named, never estimated)")
    args = parser.parse_args(argv)
    if args.device == "cpu" and not triton.knobs.runtime.interpret:
        parser.error("--device cpu runs fastgen's kernels under Triton's interpreter: set TRITON_INTERPRET=1 "
                     "before starting (or use `fastgen bench`, which does)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    suites = SUITES if args.suite == "all" else (args.suite,)
    results = run_suites(args.device, suites, quick=not args.all, full=args.full, only=args.only, out_dir=args.out,
                         budget_s=args.budget)
    if not any(results.values()):
        print(f"no benchmark case matched --only {args.only!r}" if args.only else "no rows measured",
              file=sys.stderr)
        return 1
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read())
    return 0


def _write_rows(rows: list[dict], columns: list[str], path: str) -> None:
    """Appends ``rows`` to the CSV at ``path`` (header written once)."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    raise SystemExit(main())
