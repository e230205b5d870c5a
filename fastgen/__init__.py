"""fastgen: Triton kernels for generative image models, drop-in autograd Functions checked against PyTorch.

Set ``TRITON_INTERPRET=1`` before importing fastgen to run the Triton kernels on CPU tensors (slowly);
otherwise CPU tensors use the plain-PyTorch reference and CUDA tensors the compiled kernels
(see :mod:`fastgen.dispatch`).
"""

from fastgen.dispatch import backend_for, interpreting, use_backend
from fastgen.ops.conv1x1_cross_entropy import Conv1x1CrossEntropy, conv1x1_cross_entropy
from fastgen.ops.gan_losses import (GANDiscriminatorLoss, GANGeneratorLoss, GradientPenalty, gan_d_loss,
                                    gan_g_loss, gradient_penalty)
from fastgen.ops.gated_activation import GatedActivation, gated_activation
from fastgen.ops.gumbel_softmax import GumbelSoftmax, gumbel_softmax
from fastgen.ops.pixel_losses import (DiscretizedLogisticMixtureNLL, PixelCrossEntropy, bits_per_dim, dmol_nll,
                                      dmol_sample, pixel_cross_entropy)
from fastgen.ops.reparameterize_kl import ReparameterizeKL, reparameterize_kl
from fastgen.ops.row_lstm import RowLSTMRecurrence, diagonal_bilstm, diagonal_lstm, row_lstm
from fastgen.ops.tap_conv import TapConv, masked_conv2d, tap_conv2d, tap_conv2d_gated, tap_conv2d_gated_residual
from fastgen import compat, estimators, nn  # noqa: E402  (after the ops they build on)
from fastgen import models  # noqa: E402  (after fastgen.nn)
from fastgen import sampling  # noqa: E402  (after fastgen.models)

__version__ = "0.1.0"

__all__ = ["Conv1x1CrossEntropy", "DiscretizedLogisticMixtureNLL", "GANDiscriminatorLoss", "GANGeneratorLoss", "GatedActivation",
           "GradientPenalty", "GumbelSoftmax", "PixelCrossEntropy", "ReparameterizeKL", "RowLSTMRecurrence", "TapConv",
           "backend_for", "bits_per_dim", "compat", "conv1x1_cross_entropy", "diagonal_bilstm", "diagonal_lstm", "dmol_nll", "dmol_sample", "estimators", "gan_d_loss",
           "gan_g_loss", "gated_activation", "gradient_penalty", "gumbel_softmax", "interpreting", "masked_conv2d",
           "models", "nn", "pixel_cross_entropy", "reparameterize_kl", "row_lstm", "sampling", "tap_conv2d",
           "tap_conv2d_gated", "tap_conv2d_gated_residual", "use_backend", "__version__"]
