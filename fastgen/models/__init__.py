"""The PixelCNN family and PixelRNN on fastgen's convolutions (PixelCNN, Gated PixelCNN, PixelCNN++ in its
one-resolution "lite" and three-resolution "full" forms), a VAE on :func:`fastgen.reparameterize_kl` and a DCGAN on
fastgen's GAN losses.

>>> model = fastgen.models.PixelCNN(data_channels=1, levels=17, hidden_channels=32, n_layers=4)
>>> logits = model(pixels)                      # pixels [B, 1, H, W] ints 0..16 -> logits [B, 17, 1, H, W]
>>> loss = F.cross_entropy(logits, pixels)
>>> model.use_reference(True)                   # the same parameters on the plain-PyTorch reference layers

Inputs: integer pixels 0..levels-1 or floats in [-1, 1] (see :mod:`fastgen.models.base`); labels y [B] for
models built with ``n_classes``. ``type(model)(**model.config)`` rebuilds a model for a checkpoint.
"""

from fastgen.models.base import PixelModel, dmol_targets, scale_pixels
from fastgen.models.dcgan import DCGAN, DLoss
from fastgen.models.gated_pixelcnn import GatedLayer, GatedPixelCNN, gated_activation
from fastgen.models.pixelcnn import PixelCNN, ResidualBlock
from fastgen.models.pixelcnnpp import GatedResnet, PixelCNNpp, concat_elu, dmol_channels, down_shift, right_shift
from fastgen.models.pixelrnn import PixelRNN, PixelRNNLayer
from fastgen.models.vae import VAE, NegativeELBO, VAEOutput

__all__ = ["DCGAN", "DLoss", "GatedLayer", "GatedPixelCNN", "GatedResnet", "NegativeELBO", "PixelCNN", "PixelCNNpp",
           "PixelModel", "PixelRNN", "PixelRNNLayer", "ResidualBlock", "VAE", "VAEOutput", "concat_elu",
           "dmol_channels", "dmol_targets", "down_shift", "gated_activation", "right_shift", "scale_pixels"]
