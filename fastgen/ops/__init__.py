"""Functional ops: each module holds an op's launchers, its autograd Function and the public function.

The public names are re-exported by ``fastgen`` itself (``fastgen.reparameterize_kl``, ...).
"""
