"""A small convolutional VAE (Kingma & Welling 2014) with an optional second latent level, on
:func:`fastgen.reparameterize_kl`.

    encoder: x [B, C, H, W] -> 4x4 stride-2 conv (C -> h) -> ReLU -> 4x4 stride-2 conv (h -> 2h) -> ReLU
             -> flatten -> features [B, 2h * H/4 * W/4]
    decoder: z [B, d] -> linear -> ReLU -> [B, 2h, H/4, W/4] -> 4x4 stride-2 transposed conv (2h -> h) -> ReLU
             -> 4x4 stride-2 transposed conv (h -> C) -> decoder parameters [B, C, H, W]

H and W must be multiples of 4 (two stride-2 halvings): scikit-learn's 8x8 digits are used at 8x8 as they are.

One level (``hierarchical=False``): q(z|x) = N(mu(x), exp(logvar(x))), prior N(0, I), p(x|z) = decoder(z).
Two levels (``hierarchical=True``, top-down inference as in LVAE/NVAE): q(z2|x) and q(z1|x, z2) are diagonal
Gaussians, the prior is p(z2) = N(0, I) and p(z1|z2) = N(mu_p(z2), exp(logvar_p(z2))), and p(x|z1) = decoder(z1).
Its KL is ``KL(q(z2|x) || N(0, I)) + KL(q(z1|x, z2) || p(z1|z2))`` at the sampled z2, the second one through
``reparameterize_kl``'s ``prior_mu``/``prior_logvar``.

Decoders, on images x in [0, 1] (floats; integer pixels are divided by ``levels - 1``):

* ``"bernoulli"``: logits; -log p(x|z) is ``binary_cross_entropy_with_logits(logits, x)`` summed over pixels
  (the usual "Bernoulli" VAE loss, also applied to grey values in [0, 1]);
* ``"gaussian"``: means; -log p(x|z) = ``0.5 * (log(2 pi) + logvar + (x - mean)^2 / exp(logvar))`` summed,
  with a learnt log-variance per channel (``gaussian_logvar=None``) or a fixed one (a float).

The convolutions are PyTorch's; fastgen runs the reparameterization and KL (``reparameterize_kl``).
``model.use_reference(True)`` runs them on the plain-PyTorch reference with the same parameters.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.base import ReferenceSwitch, check_positive_int
from fastgen.ops.reparameterize_kl import reparameterize_kl
from fastgen.validation import check_choice

DECODERS = ("bernoulli", "gaussian")


def check_image_size(image_size, multiple: int) -> tuple[int, int]:
    """``image_size`` (an int or (H, W)) -> (H, W), each a positive multiple of ``multiple``."""
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in image_size)):
        raise TypeError(f"image_size must be an int or a pair (H, W) of ints, got {image_size!r}")
    height, width = (int(s) for s in image_size)
    if height < multiple or width < multiple or height % multiple or width % multiple:
        raise ValueError(f"image_size must be positive multiples of {multiple}, got {(height, width)}")
    return height, width


class VAEOutput(NamedTuple):
    """What :meth:`VAE.forward` returns (B images, d = latent_dim)."""

    decoded: torch.Tensor  #: [B, C, H, W]: Bernoulli logits or Gaussian means
    z: torch.Tensor  #: [B, d]: the sampled latent the decoder saw (z1 for a hierarchical model)
    kl: torch.Tensor  #: [B]: the total KL, nats per image
    kls: tuple  #: per level, top first: ([B] for a one-level model; ([B], [B]) for two levels)


class NegativeELBO(NamedTuple):
    """Per-image terms of the negative ELBO, each [B] in nats: loss = reconstruction + beta * kl."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


class VAE(ReferenceSwitch):
    """A convolutional VAE with a Bernoulli or Gaussian decoder, one or two latent levels.

    Args:
        data_channels: image channels C.
        image_size: H (square) or (H, W); multiples of 4.
        latent_dim: d, the size of each latent level.
        hidden_channels: h: the encoder's convolutions have h and 2h channels.
        decoder: "bernoulli" (logits) or "gaussian" (means).
        gaussian_logvar: the Gaussian decoder's log-variance: None learns one per channel (initialised to 0),
            a float fixes it. Ignored by the Bernoulli decoder.
        hierarchical: two latent levels z2 -> z1 -> x (see the module docstring).
        levels: integer inputs 0..levels-1 are mapped to [0, 1] as ``v / (levels - 1)``.

    ``forward(x, eps=None)`` -> :class:`VAEOutput`; ``negative_elbo(x)`` -> :class:`NegativeELBO` ([B] terms,
    nats per image); ``loss(x)`` -> their batch mean (nats per image; divide by C*H*W for nats per dim).
    """

    def __init__(self, data_channels: int = 1, image_size=(8, 8), latent_dim: int = 16, hidden_channels: int = 32,
                 decoder: str = "bernoulli", gaussian_logvar: float | None = None, hierarchical: bool = False,
                 levels: int = 256):
        super().__init__()
        self.n_classes = None  # unconditional (fastgen.training's data checks read it)
        c = check_positive_int("data_channels", data_channels)
        self.image_size = check_image_size(image_size, 4)
        d = check_positive_int("latent_dim", latent_dim)
        h = check_positive_int("hidden_channels", hidden_channels)
        check_choice("decoder", decoder, DECODERS)
        if gaussian_logvar is not None:
            if isinstance(gaussian_logvar, bool) or not isinstance(gaussian_logvar, numbers.Real):
                raise TypeError(f"gaussian_logvar must be None (learnt) or a float, got {gaussian_logvar!r}")
            if not math.isfinite(gaussian_logvar):
                raise ValueError(f"gaussian_logvar must be finite, got {gaussian_logvar}")
            gaussian_logvar = float(gaussian_logvar)
        if not isinstance(hierarchical, bool):
            raise TypeError(f"hierarchical must be a bool, got {type(hierarchical).__name__}")
        self.levels = check_positive_int("levels", levels, 2)
        self.config = dict(data_channels=c, image_size=self.image_size, latent_dim=d, hidden_channels=h,
                           decoder=decoder, gaussian_logvar=gaussian_logvar, hierarchical=hierarchical,
                           levels=self.levels)
        self.data_channels, self.latent_dim, self.decoder_kind, self.hierarchical = c, d, decoder, hierarchical
        self.reference = False
        height, width = self.image_size
        self.feature_shape = (2 * h, height // 4, width // 4)
        features = math.prod(self.feature_shape)
        self.encoder = nn.Sequential(nn.Conv2d(c, h, 4, 2, 1), nn.ReLU(), nn.Conv2d(h, 2 * h, 4, 2, 1), nn.ReLU(),
                                     nn.Flatten())
        self.posterior = nn.Linear(features, 2 * d)  # q(z|x), or q(z2|x) for two levels
        if hierarchical:
            self.posterior_z1 = nn.Linear(features + d, 2 * d)  # q(z1|x, z2)
            self.prior_z1 = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, 2 * d))  # p(z1|z2)
        self.decoder_input = nn.Linear(d, features)
        self.decoder = nn.Sequential(nn.ReLU(), nn.Unflatten(1, self.feature_shape),
                                     nn.ConvTranspose2d(2 * h, h, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(h, c, 4, 2, 1))
        if decoder == "gaussian" and gaussian_logvar is None:
            self.decoder_logvar = nn.Parameter(torch.zeros(c))
        else:
            self.register_buffer("decoder_logvar", torch.full((c,), gaussian_logvar or 0.0), persistent=False)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Checks ``x`` [B, C, H, W]; floats must be in [0, 1], integers 0..levels-1 are divided by levels-1."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.data_channels, *self.image_size):
            raise ValueError(f"x must have shape [B, {self.data_channels}, {self.image_size[0]}, "
                             f"{self.image_size[1]}], got {tuple(x.shape)}")
        dtype = self.posterior.weight.dtype
        if x.is_floating_point():
            return x.to(dtype)
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"x must hold floats in [0, 1] or integer pixels, got {x.dtype}")
        return x.to(dtype) / (self.levels - 1)

    def _check_eps(self, eps, batch: int) -> tuple:
        n_levels = 2 if self.hierarchical else 1
        if eps is None:
            return (None,) * n_levels
        if isinstance(eps, torch.Tensor):
            eps = (eps,)
        if len(eps) != n_levels:
            raise ValueError(f"eps must hold {n_levels} tensor(s) [B, {self.latent_dim}] (one per latent level, top "
                             f"first), got {len(eps)}")
        for e in eps:
            if not isinstance(e, torch.Tensor) or tuple(e.shape) != (batch, self.latent_dim):
                raise ValueError(f"eps must be tensors of shape [{batch}, {self.latent_dim}], got "
                                 f"{tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__}")
        return tuple(eps)

    def forward(self, x: torch.Tensor, eps=None) -> VAEOutput:
        """x [B, C, H, W] -> :class:`VAEOutput`. ``eps``: the standard-normal noise, a [B, d] tensor per latent
        level (top first; a tensor or a 1-tuple for one level); None draws it inside ``reparameterize_kl``."""
        x = self.prepare_input(x)
        eps = self._check_eps(eps, len(x))
        with self._backend():
            features = self.encoder(x)
            mu, logvar = self.posterior(features).chunk(2, dim=1)
            z, kl_top = reparameterize_kl(mu, logvar, eps[0])
            kls = (kl_top,)
            if self.hierarchical:
                prior_mu, prior_logvar = self.prior_z1(z).chunk(2, dim=1)
                mu1, logvar1 = self.posterior_z1(torch.cat([features, z], dim=1)).chunk(2, dim=1)
                z, kl_bottom = reparameterize_kl(mu1, logvar1, eps[1], prior_mu=prior_mu, prior_logvar=prior_logvar)
                kls = (kl_top, kl_bottom)
            decoded = self.decode(z)
        return VAEOutput(decoded, z, sum(kls[1:], kls[0]), kls)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, d] (z1 for two levels) -> decoder parameters [B, C, H, W] (logits or means)."""
        return self.decoder(self.decoder_input(z))

    def reconstruction_nll(self, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image [B] in nats, from decoder parameters [B, C, H, W] and x [B, C, H, W] in [0, 1]."""
        if self.decoder_kind == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(decoded, x, reduction="none")
        else:
            logvar = self.decoder_logvar.to(decoded.dtype)[:, None, None]
            nll = 0.5 * (math.log(2 * math.pi) + logvar + (x - decoded).pow(2) * torch.exp(-logvar))
        return nll.flatten(1).sum(1)

    def negative_elbo(self, x: torch.Tensor, eps=None, beta: float = 1.0) -> NegativeELBO:
        """Per-image negative ELBO terms [B] in nats (see :class:`NegativeELBO`); ``beta`` weighs the KL."""
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta >= 0:
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        output = self(x, eps)
        reconstruction = self.reconstruction_nll(output.decoded, self.prepare_input(x))
        kl = output.kl.to(reconstruction.dtype)
        return NegativeELBO(reconstruction + beta * kl, reconstruction, kl)

    def loss(self, x: torch.Tensor, eps=None, beta: float = 1.0) -> torch.Tensor:
        """The batch mean of the negative ELBO, nats per image (0-d)."""
        return self.negative_elbo(x, eps, beta).loss.mean()

    def mean_image(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder parameters -> the mean of p(x|z) in [0, 1]: sigmoid(logits), or the Gaussian mean clamped."""
        return torch.sigmoid(decoded) if self.decoder_kind == "bernoulli" else decoded.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images [n, C, H, W] in [0, 1]: the mean of p(x|z) at z drawn from the prior (ancestral for two
        levels: z2 ~ N(0, I), z1 ~ p(z1|z2)); noise from ``generator`` (default: torch's)."""
        n = check_positive_int("n", n, 0)
        weight = self.posterior.weight
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=weight.dtype, device=weight.device)
        if self.hierarchical:
            prior_mu, prior_logvar = self.prior_z1(z).chunk(2, dim=1)
            noise = torch.randn(n, self.latent_dim, generator=generator, dtype=weight.dtype, device=weight.device)
            z = prior_mu + torch.exp(0.5 * prior_logvar) * noise
        return self.mean_image(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> the mean of p(x|z) at the posterior means (z2's, then z1's given it), in [0, 1]."""
        x = self.prepare_input(x)
        features = self.encoder(x)
        z = self.posterior(features).chunk(2, dim=1)[0]
        if self.hierarchical:
            z = self.posterior_z1(torch.cat([features, z], dim=1)).chunk(2, dim=1)[0]
        return self.mean_image(self.decode(z))
