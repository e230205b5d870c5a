"""DCGAN (Radford et al. 2016) for small images, with fastgen's GAN losses and R1 penalty.

    generator:     z [B, d] -> 4x4 transposed conv (d -> h * 2^(k-1), 1x1 -> 4x4) -> BN -> ReLU
                   -> (k - 1) x [4x4 stride-2 transposed conv (halving the channels) -> BN -> ReLU]
                   -> 4x4 stride-2 transposed conv (h -> C) -> tanh -> images [B, C, S, S] in [-1, 1]
    discriminator: images -> 4x4 stride-2 conv (C -> h) -> LeakyReLU(0.2)
                   -> (k - 1) x [4x4 stride-2 conv (doubling the channels) -> LeakyReLU(0.2)]
                   -> 4x4 conv (4x4 -> 1x1) -> logits [B]

with S = 2^(k+2) = ``image_size``, a power of two >= 8 (8: scikit-learn's digits as they are; 16, 32, 64). The
discriminator has no batch norm (so the R1 penalty of each image depends on that image only).

Losses (``loss`` picks the pair): "nonsaturating" (D: :func:`fastgen.gan_d_loss` "minimax", G: "nonsaturating"),
"hinge", "ls" or "wgan" (the same kind on both sides); ``r1_gamma`` > 0 adds :func:`fastgen.gradient_penalty`
"r1" on the real images to the D loss. ``model.use_reference(True)`` runs the losses on the plain-PyTorch
reference with the same parameters.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import nn

from fastgen.models.base import ReferenceSwitch, check_positive_int, scale_pixels
from fastgen.ops.gan_losses import gan_d_loss, gan_g_loss, gradient_penalty

#: ``loss`` -> (gan_d_loss kind, gan_g_loss kind)
LOSSES = {"nonsaturating": ("minimax", "nonsaturating"), "hinge": ("hinge", "hinge"), "ls": ("ls", "ls"),
          "wgan": ("wgan", "wgan")}


class DLoss(NamedTuple):
    """The discriminator's loss (0-d tensors): loss = adversarial + r1."""

    loss: torch.Tensor
    adversarial: torch.Tensor
    r1: torch.Tensor


class DCGAN(ReferenceSwitch):
    """A DCGAN generator/discriminator pair with loss helpers.

    Args:
        data_channels: image channels C.
        image_size: S, a power of two >= 8 (square images).
        latent_dim: d, the size of z.
        hidden_channels: h: the generator's last hidden layer and the discriminator's first have h channels,
            doubling towards 4x4.
        loss: "nonsaturating", "hinge", "ls" or "wgan".
        r1_gamma: weight of the R1 penalty on real images (0: none).
        levels: integer inputs 0..levels-1 are mapped to [-1, 1] (:func:`fastgen.models.scale_pixels`).

    ``generator(z)``: z [B, d] -> images [B, C, S, S]; ``discriminator(x)``: images -> logits [B, 1, 1, 1];
    ``d_loss(real)`` -> :class:`DLoss`; ``g_loss(n)`` -> 0-d; ``sample(n)`` -> images in [0, 1].
    """

    def __init__(self, data_channels: int = 1, image_size: int = 16, latent_dim: int = 32, hidden_channels: int = 32,
                 loss: str = "nonsaturating", r1_gamma: float = 0.0, levels: int = 256):
        super().__init__()
        self.n_classes = None  # unconditional (fastgen.training's data checks read it)
        c = check_positive_int("data_channels", data_channels)
        size = check_positive_int("image_size", image_size, 8)
        if size & (size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {size}")
        d = check_positive_int("latent_dim", latent_dim)
        h = check_positive_int("hidden_channels", hidden_channels)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
        if isinstance(r1_gamma, bool) or not isinstance(r1_gamma, numbers.Real) or not 0 <= r1_gamma < math.inf:
            raise ValueError(f"r1_gamma must be a finite number >= 0, got {r1_gamma!r}")
        self.levels = check_positive_int("levels", levels, 2)
        self.config = dict(data_channels=c, image_size=size, latent_dim=d, hidden_channels=h, loss=loss,
                           r1_gamma=float(r1_gamma), levels=self.levels)
        self.data_channels, self.image_size, self.latent_dim = c, size, d
        self.d_kind, self.g_kind = LOSSES[loss]
        self.r1_gamma = float(r1_gamma)
        self.reference = False
        k = int(math.log2(size)) - 2  # stride-2 layers
        widths = [h * 2 ** i for i in range(k)]  # h, 2h, ..., at S/2, S/4, ..., 4
        g_layers = [nn.ConvTranspose2d(d, widths[-1], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[-1]), nn.ReLU()]
        for wide, narrow in zip(widths[:0:-1], widths[-2::-1]):
            g_layers += [nn.ConvTranspose2d(wide, narrow, 4, 2, 1, bias=False), nn.BatchNorm2d(narrow), nn.ReLU()]
        g_layers += [nn.ConvTranspose2d(h, c, 4, 2, 1), nn.Tanh()]
        self.generator = nn.Sequential(nn.Unflatten(1, (d, 1, 1)), *g_layers)
        d_layers = [nn.Conv2d(c, h, 4, 2, 1), nn.LeakyReLU(0.2)]
        for narrow, wide in zip(widths[:-1], widths[1:]):
            d_layers += [nn.Conv2d(narrow, wide, 4, 2, 1), nn.LeakyReLU(0.2)]
        d_layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0)]
        self.discriminator = nn.Sequential(*d_layers)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Checks real images ``x`` [B, C, S, S]: floats in [-1, 1], or integer pixels (mapped to [-1, 1])."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        size = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.data_channels, size, size):
            raise ValueError(f"x must have shape [B, {self.data_channels}, {size}, {size}], got {tuple(x.shape)}")
        dtype = self.discriminator[0].weight.dtype
        if x.is_floating_point():
            return x.to(dtype)
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"x must hold floats in [-1, 1] or integer pixels, got {x.dtype}")
        return scale_pixels(x, self.levels, dtype)

    def latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z [n, d] ~ N(0, I) in the parameters' dtype and device."""
        n = check_positive_int("n", n, 0)
        weight = self.discriminator[0].weight
        return torch.randn(n, self.latent_dim, generator=generator, dtype=weight.dtype, device=weight.device)

    def _z(self, z_or_n) -> torch.Tensor:
        if isinstance(z_or_n, torch.Tensor):
            if z_or_n.dim() != 2 or z_or_n.shape[1] != self.latent_dim:
                raise ValueError(f"z must have shape [B, {self.latent_dim}], got {tuple(z_or_n.shape)}")
            return z_or_n
        return self.latents(z_or_n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, d] -> generated images [B, C, S, S] in [-1, 1]."""
        return self.generator(self._z(z))

    def d_loss(self, real: torch.Tensor, z=None) -> DLoss:
        """The discriminator's loss on real images [B, C, S, S] and on images generated (detached) from ``z``
        ([B', d], or a count; default as many as real images), plus R1 on ``real`` when ``r1_gamma`` > 0."""
        real = self.prepare_input(real)
        fake = self.generator(self._z(len(real) if z is None else z)).detach()
        if self.r1_gamma > 0:
            real = real.detach().requires_grad_(True)
        real_logits = self.discriminator(real)
        with self._backend():
            adversarial = gan_d_loss(real_logits, self.discriminator(fake), kind=self.d_kind)
            r1 = adversarial.new_zeros(())
            if self.r1_gamma > 0:
                grads, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                r1 = gradient_penalty(grads, kind="r1", gamma=self.r1_gamma)
        return DLoss(adversarial + r1, adversarial, r1)

    def g_loss(self, z) -> torch.Tensor:
        """The generator's loss (0-d) on images generated from ``z`` [B, d] (or a count B)."""
        fake_logits = self.discriminator(self.generator(self._z(z)))
        with self._backend():
            return gan_g_loss(fake_logits, kind=self.g_kind)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n generated images [n, C, S, S] mapped to [0, 1] (the generator in its current train/eval mode)."""
        return (self.generator(self.latents(n, generator)) + 1) / 2
