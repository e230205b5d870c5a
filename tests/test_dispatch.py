"""One dispatch rule for every op: CUDA -> compiled Triton, CPU -> interpreted Triton or the reference."""

import os
import subprocess
import sys

import pytest
import torch

import fastgen


def test_backend_for_this_session(device):
    assert fastgen.backend_for(torch.zeros(1, device=device)) == "triton"
    assert fastgen.interpreting() == (device == "cpu")


def test_use_backend_forces_the_reference_and_restores(device):
    x = torch.zeros(2, 3, device=device)
    with fastgen.use_backend("reference"):
        assert fastgen.backend_for(x) == "reference"
        z, kl = fastgen.reparameterize_kl(x, x, seed=1)
        assert kl.dtype == torch.float32  # the same output dtypes on both backends
    assert fastgen.backend_for(x) == "triton"
    with pytest.raises(ValueError, match="name"):
        with fastgen.use_backend("cudnn"):
            pass


def test_cpu_without_interpreter_falls_back_to_the_reference():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import torch, fastgen\n"
        "x = torch.zeros(2, 3)\n"
        "print(fastgen.backend_for(x), fastgen.interpreting())\n"
        "z, kl = fastgen.reparameterize_kl(x, x, seed=1)\n"
        "print(tuple(z.shape), kl.dtype)\n"
        "try:\n"
        "    with fastgen.use_backend('triton'):\n"
        "        fastgen.reparameterize_kl(x, x)\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "reference False"
    assert lines[1] == "(2, 3) torch.float32"
    assert lines[2].startswith("refused:") and "TRITON_INTERPRET=1" in lines[2]
