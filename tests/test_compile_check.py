"""Every kernel configuration the ops launch compiles for sm_90 and sm_80, with no register spills.

The interpreter accepts code a GPU rejects, so this runs `fastgen verify` (triton.compile for GPUTarget
("cuda", 90/80, 32) and the wheel's ptxas) in a fresh process without TRITON_INTERPRET.
"""

import json
import os
import subprocess
import sys

import pytest

from fastgen import compile_check


@pytest.mark.compile_check
def test_every_launch_compiles_for_sm90_and_sm80_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # really compile, never a cached result
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "fastgen.compile_check", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=1500)
    print(proc.stdout)  # the register/spill table, shown with -s or on failure
    reports = json.loads(out.read_text())
    assert {r["arch"] for r in reports} == {90, 80}
    assert len(reports) == 2 * len(compile_check.registered_launches())
    bad = [f"sm_{r['arch']} {r['label']}: {p}" for r in reports for p in compile_check.problems(r)]
    launches = {launch.label(): launch for launch in compile_check.registered_launches()}
    bad += [f"sm_90 {r['label']}: no HGMMA (warpgroup MMA) in a Hopper tensor-core tile" for r in reports
            if r["arch"] == 90 and r["ok"] and _needs_hgmma(launches[r["label"]]) and not r["hgmma"]]
    assert not bad, "\n".join(bad)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_registry_covers_every_kernel_of_every_op():
    import pkgutil
    import importlib

    import fastgen.kernels

    launched = {launch.kernel for launch in compile_check.registered_launches()}
    for module in pkgutil.iter_modules(fastgen.kernels.__path__):
        kernels = importlib.import_module(f"fastgen.kernels.{module.name}")
        assert {name for name in dir(kernels) if name.endswith("_kernel")} <= launched, module.name


_CONV_GEMMS = ("tap_conv_gemm_kernel", "tap_conv_weight_grad_kernel")


def _needs_hgmma(launch) -> bool:
    """A convolution GEMM on tensor cores whose MMA tile has at least 64 rows (a warpgroup's HGMMA): on sm_90
    it must use HGMMA, not the older HMMA. The weight gradient's 16-row tiles (1- or 3-channel inputs) may not."""
    if launch.kernel not in _CONV_GEMMS or not launch.tensor_cores:
        return False
    constexprs = dict(launch.constexprs)
    return constexprs.get("BLOCK_C", constexprs.get("BLOCK_M")) >= 64


def test_matmul_shaped_kernels_must_use_tensor_cores_in_16_bit_and_tf32():
    """The check requires HGMMA/HMMA in every 16-bit and every TF32 variant of the convolution GEMMs (forward and
    backward), and HGMMA on sm_90 for tiles of 64 rows or more; exact float32 and float64 run on FMA units."""
    gemms = [launch for launch in compile_check.registered_launches() if launch.kernel in _CONV_GEMMS]
    for launch in gemms:
        sixteen_bit = launch.signature[0][1] in ("*fp16", "*bf16")
        tf32 = dict(launch.constexprs).get("PRECISION") == "tf32"
        assert tf32 <= (launch.signature[0][1] == "*fp32"), launch.label()
        assert launch.tensor_cores == (sixteen_bit or tf32), launch.label()
    assert any(dict(l.constexprs).get("PRECISION") == "tf32" for l in gemms)
    assert sum(_needs_hgmma(l) for l in gemms) > len(gemms) // 2


def test_problems_flags_spills_errors_and_missing_tensor_cores():
    clean = dict(ok=True, spill_stores=0, spill_loads=0)
    assert compile_check.problems(clean) == []
    assert compile_check.problems(dict(clean, spill_loads=4))
    assert compile_check.problems(dict(ok=False, error="boom")) == ["boom"]
    assert compile_check.problems(dict(clean, hgmma=0, hmma=0))
    assert compile_check.problems(dict(clean, hgmma=3, hmma=0)) == []
