"""The famous losses under their famous names and semantics, on fastgen's kernels.

Drop-in replacements for functions that PixelCNN++, VAE and StyleGAN2 code bases define themselves, with the
same arguments, tensor layouts and reductions, so that swapping one in cannot silently rescale a loss:

* pclucas14/pixel-cnn-pp (``utils.py``): :func:`discretized_mix_logistic_loss` (RGB) and
  :func:`discretized_mix_logistic_loss_1d` (grey), NCHW ``x`` in [-1, 1] and ``l``, the **summed** negative
  log-likelihood; :func:`sample_from_discretized_mix_logistic` and its ``_1d`` twin.
* pytorch/examples (``vae/main.py``): :func:`loss_function` ``(recon_x, x, mu, logvar)``, the summed binary
  cross-entropy plus the summed KL to N(0, I).
* rosinality/stylegan2-pytorch (``train.py``): :func:`d_logistic_loss`, :func:`g_nonsaturating_loss` and
  :func:`d_r1_loss` (the batch mean of ``||grad||^2``, no gamma: the caller multiplies by ``r1 / 2``).

Each takes exactly what its namesake takes and returns the same value (float32 for 16-bit inputs, as the
fastgen ops do); the work runs in the fastgen kernel named in its docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.ops.gan_losses import gan_d_loss, gan_g_loss, gradient_penalty
from fastgen.ops.pixel_losses import dmol_nll, dmol_sample
from fastgen.ops.reparameterize_kl import reparameterize_kl

__all__ = ["d_logistic_loss", "d_r1_loss", "discretized_mix_logistic_loss", "discretized_mix_logistic_loss_1d",
           "g_nonsaturating_loss", "loss_function", "sample_from_discretized_mix_logistic",
           "sample_from_discretized_mix_logistic_1d"]


def _mixtures(l: torch.Tensor, per_mixture: int, name: str) -> int:  # noqa: E741  (the peers' name)
    if not isinstance(l, torch.Tensor) or l.dim() != 4 or l.shape[1] % per_mixture:
        raise ValueError(f"l must be a 4-d [B, {per_mixture} * nr_mix, H, W] tensor of mixture parameters for "
                         f"{name}, got {tuple(l.shape) if isinstance(l, torch.Tensor) else type(l).__name__}")
    return l.shape[1] // per_mixture


def discretized_mix_logistic_loss(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """pclucas14's ``discretized_mix_logistic_loss(x, l)``: the summed NLL (nats) of RGB images x [B, 3, H, W]
    in [-1, 1] under the mixture parameters l [B, 10 * nr_mix, H, W] (openai's channel order), 8-bit bins.
    Kernel: :func:`fastgen.dmol_nll` with ``reduction="sum"``."""
    return dmol_nll(l, x, _mixtures(l, 10, "RGB images"), reduction="sum")


def discretized_mix_logistic_loss_1d(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """pclucas14's ``discretized_mix_logistic_loss_1d(x, l)``: the grey form, x [B, 1, H, W] and l
    [B, 3 * nr_mix, H, W]; summed NLL. Kernel: :func:`fastgen.dmol_nll`."""
    return dmol_nll(l, x, _mixtures(l, 3, "grey images"), reduction="sum")


def sample_from_discretized_mix_logistic(l: torch.Tensor, nr_mix: int) -> torch.Tensor:  # noqa: E741
    """pclucas14's ``sample_from_discretized_mix_logistic(l, nr_mix)``: one RGB sample [B, 3, H, W] in [-1, 1]
    per pixel. The noise is Philox (seeded from torch's generator), equally distributed as theirs but not the
    same stream. Kernel: :func:`fastgen.dmol_sample`."""
    if _mixtures(l, 10, "RGB images") != nr_mix:
        raise ValueError(f"nr_mix ({nr_mix}) does not match l with {l.shape[1]} channels (10 * nr_mix for RGB)")
    return dmol_sample(l, nr_mix)


def sample_from_discretized_mix_logistic_1d(l: torch.Tensor, nr_mix: int) -> torch.Tensor:  # noqa: E741
    """pclucas14's grey sampler: [B, 1, H, W] in [-1, 1]. Kernel: :func:`fastgen.dmol_sample`."""
    if _mixtures(l, 3, "grey images") != nr_mix:
        raise ValueError(f"nr_mix ({nr_mix}) does not match l with {l.shape[1]} channels (3 * nr_mix for grey)")
    return dmol_sample(l, nr_mix)


def loss_function(recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """pytorch/examples' VAE ``loss_function``: ``BCE(recon_x, x, reduction="sum") - 0.5 * sum(1 + logvar - mu^2 -
    exp(logvar))``. ``recon_x`` are probabilities; x is read in recon_x's shape (their ``x.view(-1, 784)``).
    The KL runs in :func:`fastgen.reparameterize_kl` (its sample is not used); the BCE is torch's."""
    bce = F.binary_cross_entropy(recon_x, x.reshape(recon_x.shape), reduction="sum")
    _, kl = reparameterize_kl(mu, logvar, seed=0, reduction="sum")
    return bce + kl


def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """rosinality's ``d_logistic_loss``: ``softplus(-real).mean() + softplus(fake).mean()``.
    Kernel: :func:`fastgen.gan_d_loss` ("minimax")."""
    return gan_d_loss(real_pred, fake_pred, kind="minimax", reduction="mean")


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """rosinality's ``g_nonsaturating_loss``: ``softplus(-fake).mean()``. Kernel: :func:`fastgen.gan_g_loss`."""
    return gan_g_loss(fake_pred, kind="nonsaturating", reduction="mean")


def d_r1_loss(real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """rosinality's ``d_r1_loss``: the batch mean of ``||d real_pred.sum() / d real_img||^2`` per sample,
    differentiable (``create_graph=True``). Kernel: :func:`fastgen.gradient_penalty` ("r1", gamma 2, whose
    ``gamma / 2 * ||g||^2`` is then ``||g||^2``)."""
    (grad_real,) = torch.autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return gradient_penalty(grad_real, kind="r1", gamma=2.0, reduction="mean")
