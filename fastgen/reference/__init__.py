"""Plain-PyTorch implementations of every fastgen op.

Each is written the way popular codebases write the formula (pytorch/examples, pythae, NVAE, ...), so it is
at once the test oracle, the CPU fallback (see :mod:`fastgen.dispatch`) and the "eager PyTorch" baseline of
the benchmarks. They take the same arguments as the public ops but do not validate them.
"""

from fastgen.reference.gan_losses import gan_d_loss, gan_g_loss, gradient_penalty
from fastgen.reference.gumbel_softmax import gumbel_softmax, sample_gumbel
from fastgen.reference.reparameterize_kl import gaussian_kl, reparameterize_kl

__all__ = ["gan_d_loss", "gan_g_loss", "gaussian_kl", "gradient_penalty", "gumbel_softmax", "reparameterize_kl",
           "sample_gumbel"]
