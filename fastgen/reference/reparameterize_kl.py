"""Reparameterization + KL as a VAE training loop writes it in eager PyTorch."""

from __future__ import annotations

import math

import torch

from fastgen.reductions import reduce_batch


def gaussian_kl(mu, logvar, prior_mu=None, prior_logvar=None):
    """Elementwise KL(N(mu, exp(logvar)) || prior); prior N(0, 1) when both prior tensors are None."""
    if prior_mu is None and prior_logvar is None:
        # pytorch/examples vae: -0.5 * sum(1 + logvar - mu^2 - logvar.exp())
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    if prior_mu is None:
        prior_mu = torch.zeros_like(mu)
    if prior_logvar is None:
        prior_logvar = torch.zeros_like(logvar)
    # Gaussian-Gaussian KL as hierarchical VAEs (NVAE, VDVAE) write it
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1)


def reparameterize_kl(mu, logvar, eps=None, *, seed=None, prior_mu=None, prior_logvar=None, beta=1.0,
                      free_bits=0.0, reduction="none"):
    """z = mu + exp(logvar / 2) * eps and beta * KL per sample (see :func:`fastgen.reparameterize_kl`).

    Without ``eps`` the noise is ``torch.randn`` from torch's generator, or from a generator seeded with
    ``seed``: a different stream from the Triton kernels' Philox noise.
    """
    std = torch.exp(0.5 * logvar)
    if eps is None:
        generator = None
        if seed is not None:
            generator = torch.Generator(device=mu.device).manual_seed(seed)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    z = mu + eps * std
    kl = gaussian_kl(mu, logvar, prior_mu, prior_logvar).reshape(mu.shape[0], math.prod(mu.shape[1:]))
    if free_bits > 0:
        # IAF free bits: a dim whose KL, averaged over the batch, is under free_bits counts as free_bits
        kl = torch.where(kl.mean(0) < free_bits, free_bits, kl)
    kl = beta * kl.sum(1)
    return z, reduce_batch(kl, reduction)
