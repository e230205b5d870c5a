#!/usr/bin/env bash
# The one script to run on a lent GPU (the H200 image: torch 2.11, triton 3.6, no package registry), in a
# single call of under 8 minutes: the test suite on the compiled kernels, then the benchmarks.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu-out)
# Everything it writes lands in OUT_DIR: tests.log, bench.log, results.csv/.md/.png, nvidia-smi.txt.
set -u
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
# No install on the GPU image: run from the checkout. `fastgen.kernels` and `fastgen.benchmarks` are mapped
# folders, so expose them the way the installed package does.
site="$(mktemp -d)"
mkdir -p "$site/fastgen"
cp -r fastgen/. "$site/fastgen/"
cp -r kernels "$site/fastgen/kernels"
cp -r benchmarks "$site/fastgen/benchmarks"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" \
  | tee "$out/versions.txt"
# tests on the compiled kernels (the sm_90/80 compile check runs in CI already)
timeout 240 python3 -m pytest tests -q -x -p no:cacheprovider -m "not compile_check" 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 240 python3 -m fastgen bench --all --out "$out" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc bench rc=$bench_rc" | tee "$out/status.txt"
