#!/usr/bin/env bash
# The one script to run on a lent GPU (the H200 image: torch 2.11, triton 3.6, no package registry), in a
# single call of under 8 minutes: the test suite on the compiled kernels, then the benchmarks.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu-out)
# Everything it writes lands in OUT_DIR: tests.log, bench-{ops,train,sample}.log, results.jsonl (every benchmark
# row), results.csv/.png with results-ops.md (op rows), training.csv/.png with results-train.md,
# sampling.csv/.md/.png, status.txt (when each stage started, each stage's exit code), nvidia-smi.txt,
# versions.txt.
set -u
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
# No install on the GPU image: run from the checkout. `fastgen.kernels` and `fastgen.benchmarks` are mapped
# folders of the installed package: link them into the checkout's fastgen/ for this run (removed on exit), so
# `import fastgen` from the checkout works whichever way it is found (the image may hold an editable install
# of fastgen that points at the checkout: a copy elsewhere on PYTHONPATH would be shadowed by it).
made=()
for sub in kernels benchmarks; do
  if [ ! -e "fastgen/$sub" ]; then ln -s "../$sub" "fastgen/$sub" && made+=("fastgen/$sub"); fi
done
trap 'rm -f "${made[@]}"' EXIT
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" \
  | tee "$out/versions.txt"
# Each stage has its own time limit, so one slow stage cannot eat the others; all together under 8 minutes
# (~30 s of start-up + 150 + 45 + 75 + 110 + 70 s = 480 s at the very worst). The benchmark stages also get a budget
# (--budget, a little under their limit): past it they start no new job and still write their markdown and
# plots; every row is appended to its CSV and results.jsonl as soon as it is measured, so even a stage cut
# short by its limit leaves every row it finished. torch.compile jobs run last in each stage (each case's graphs
# are built once and reused by its modes): a budget spent on them costs compile rows only. Skipped jobs are
# named in the stage's log, never estimated.
stage_start=$(date +%s)
stage() { local now; now=$(date +%s); echo "[gpu_check] $1 ($((now - stage_start)) s since start)" | tee -a "$out/status.txt"; }
: > "$out/status.txt"
# tests on the compiled kernels (the sm_90/80 compile check runs in CI already); no -x: every failure is listed
stage "tests"
timeout 150 python3 -m pytest tests -q -p no:cacheprovider -m "not compile_check" 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}
# host cost per call of every op, fastgen vs eager, and a bare launch through fastgen's launch path vs Triton's
stage "host"
timeout 45 python3 -m fastgen.benchmarks.runner --suite host --out "$out" 2>&1 | tee "$out/bench-host.log"
host_rc=${PIPESTATUS[0]}
[ -f "$out/results.md" ] && mv "$out/results.md" "$out/results-host.md"
# op micro-benchmarks (quick set: every op, fastgen vs eager, then torch.compile)
stage "ops"
timeout 75 python3 -m fastgen.benchmarks.runner --suite ops --budget 55 --out "$out" 2>&1 | tee "$out/bench-ops.log"
ops_rc=${PIPESTATUS[0]}
[ -f "$out/results.md" ] && mv "$out/results.md" "$out/results-ops.md"  # each stage writes its own results.md
# training steps of every model (PixelCNN, Gated, PixelCNN++, VAE, DCGAN at 8x8 and 32x32x3): fastgen and eager
# of every case, then torch.compile while the budget lasts (no compile job starts in its last 45 s)
stage "train"
timeout 110 python3 -m fastgen.benchmarks.runner --suite train --all --budget 80 --out "$out" 2>&1 \
  | tee "$out/bench-train.log"
train_rc=${PIPESTATUS[0]}
[ -f "$out/results.md" ] && mv "$out/results.md" "$out/results-train.md"
# sampling, naive vs cached (CUDA graphs), every size and batch; rows are written as they finish, naive runs
# estimated above 5 s are skipped (their rows absent)
stage "sample"
timeout 70 python3 -m fastgen.benchmarks.bench_sampling --all --naive-cap 5 --budget 55 --out "$out/sampling" 2>&1 \
  | tee "$out/bench-sample.log"
sample_rc=${PIPESTATUS[0]}
stage "done"
echo "tests rc=$tests_rc host rc=$host_rc ops rc=$ops_rc train rc=$train_rc sample rc=$sample_rc (124 = stage timed out)" \
  | tee -a "$out/status.txt"
