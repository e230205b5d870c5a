"""Run every test on the compiled kernels where a GPU exists, else on Triton's CPU interpreter.

TRITON_INTERPRET must be set before the kernels are decorated, i.e. before fastgen is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastgen  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The tests run tiny tensors, where handing work to OpenMP threads costs more than it saves: a 4x50 @ 50x12
# addmm took 8 ms with 2 threads and 8 us with 1 on the 2-core CI machine while other work ran (the samplers
# and the reference models run thousands of such ops). The interpreted kernels are NumPy, single-threaded.
torch.set_num_threads(1)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
