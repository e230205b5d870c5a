"""The installed package: kernels live inside fastgen, the console script answers."""

import subprocess
import sys

import fastgen


def test_kernels_are_installed_inside_the_package(tmp_path):
    import fastgen.kernels.reparameterize_kl as kernels

    assert hasattr(kernels, "reparameterize_kl_forward_kernel")
    # outside the checkout, so that the repository's own folders are not on the path
    code = "import importlib.util as u; print(u.find_spec('kernels'), u.find_spec('fastgen.benchmarks') is not None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "True"]  # no top-level `kernels` package


def test_public_api():
    for name in ("reparameterize_kl", "ReparameterizeKL", "backend_for", "use_backend", "interpreting"):
        assert hasattr(fastgen, name)


def test_cli_help():
    for args in (["-m", "fastgen", "--help"], ["-m", "fastgen", "bench", "--help"], ["-m", "fastgen", "verify", "--help"]):
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True).stdout
        assert "usage" in out.lower()
