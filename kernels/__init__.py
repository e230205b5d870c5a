"""Raw @triton.jit kernels, installed as ``fastgen.kernels``: one module per op family, no imports from fastgen."""
