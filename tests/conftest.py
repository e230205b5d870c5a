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


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
