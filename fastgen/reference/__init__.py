"""Plain-PyTorch implementations of every fastgen op.

Each is written the way popular codebases write the formula (pytorch/examples, pythae, NVAE, ...), so it is
at once the test oracle, the CPU fallback (see :mod:`fastgen.dispatch`) and the "eager PyTorch" baseline of
the benchmarks. They take the same arguments as the public ops but do not validate them.
"""

from fastgen.reference.conv1x1_cross_entropy import conv1x1_cross_entropy
from fastgen.reference.diagonal_lstm import diagonal_bilstm, diagonal_lstm
from fastgen.reference.gan_losses import gan_d_loss, gan_g_loss, gradient_penalty
from fastgen.reference.gated_activation import gated_activation
from fastgen.reference.gumbel_softmax import gumbel_softmax, sample_gumbel
from fastgen.reference.pixel_losses import dmol_nll, dmol_sample, pixel_cross_entropy
from fastgen.reference.reparameterize_kl import gaussian_kl, reparameterize_kl
from fastgen.reference.row_lstm import row_lstm

__all__ = ["conv1x1_cross_entropy", "diagonal_bilstm", "diagonal_lstm", "dmol_nll", "dmol_sample", "gan_d_loss", "gan_g_loss",
           "gated_activation", "gaussian_kl", "gradient_penalty", "gumbel_softmax", "pixel_cross_entropy",
           "reparameterize_kl", "row_lstm", "sample_gumbel"]
