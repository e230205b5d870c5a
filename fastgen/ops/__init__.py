"""Functional ops: each module holds an op's launchers, its autograd Function and the public function."""

from fastgen.ops.reparameterize_kl import ReparameterizeKL, reparameterize_kl

__all__ = ["ReparameterizeKL", "reparameterize_kl"]
