#!/usr/bin/env bash
# The one script to run on a lent GPU (the H200 image: torch 2.11, triton 3.6, no package registry), in a
# single call of under 8 minutes: the test suite on the compiled kernels, then the benchmarks.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu-out)
# Everything it writes lands in OUT_DIR: tests.log, bench-{ops,train,sample}.log, results.jsonl/.csv/.md/.png,
# training.csv/.png, sampling.csv/.md/.png, status.txt (each stage's exit code), nvidia-smi.txt, versions.txt.
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
# Each stage has its own time limit, so one slow stage cannot eat the others; all together under 8 minutes
# (with ~30 s of start-up): tests 170 s, op benchmarks 110 s, training steps 60 s, sampling 90 s.
# tests on the compiled kernels (the sm_90/80 compile check runs in CI already)
timeout 170 python3 -m pytest tests -q -x -p no:cacheprovider -m "not compile_check" 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}
# op micro-benchmarks (quick set: every op, fastgen vs eager vs torch.compile)
timeout 110 python3 -m fastgen bench --suite ops --out "$out" 2>&1 | tee "$out/bench-ops.log"
ops_rc=${PIPESTATUS[0]}
# training steps of every model (PixelCNN, Gated, PixelCNN++, VAE, DCGAN at 8x8 and 32x32x3)
timeout 60 python3 -m fastgen bench --suite train --all --out "$out" 2>&1 | tee "$out/bench-train.log"
train_rc=${PIPESTATUS[0]}
# sampling, naive vs cached (CUDA graphs), every size and batch; rows are written as they finish, naive runs
# estimated above 5 s are skipped (their rows absent)
timeout 90 python3 -m fastgen.benchmarks.bench_sampling --all --naive-cap 5 --out "$out/sampling" 2>&1 \
  | tee "$out/bench-sample.log"
sample_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc ops rc=$ops_rc train rc=$train_rc sample rc=$sample_rc (124 = stage timed out)" \
  | tee "$out/status.txt"
