"""GAN losses and gradient penalties as GAN training loops write them in eager PyTorch.

Discriminator and generator losses as in StyleGAN2-ADA (``training/loss.py``: softplus on the logits),
BigGAN / SAGAN (hinge), LSGAN, WGAN and pix2pix (``F.binary_cross_entropy_with_logits`` with a smoothed
target); R1 as StyleGAN2-ADA writes it and WGAN-GP as the improved-WGAN PyTorch ports do (norm per sample).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastgen.gan_kinds import D_KINDS, G_KINDS, PENALTY_KINDS
from fastgen.reductions import reduce_batch


def gan_d_loss(real_logits, fake_logits, kind="minimax", reduction="mean", real_label=1.0):
    """Discriminator loss: reduce(real terms) + reduce(fake terms), or the two term tensors for "none"
    (see :func:`fastgen.gan_d_loss`)."""
    if kind == "minimax":
        if real_label == 1.0:
            real_terms = F.softplus(-real_logits)  # StyleGAN2-ADA: -log(sigmoid(real))
        elif real_label == 0.0:
            real_terms = F.softplus(real_logits)
        else:  # one-sided label smoothing: the BCE of pix2pix/DCGAN code against target t, written as
            # t softplus(-r) + (1 - t) softplus(r) (F.binary_cross_entropy_with_logits is nan at r = -inf)
            real_terms = -real_label * F.logsigmoid(real_logits) - (1.0 - real_label) * F.logsigmoid(-real_logits)
        fake_terms = F.softplus(fake_logits)  # -log(1 - sigmoid(fake))
    elif kind == "hinge":
        real_terms = F.relu(1.0 - real_logits)
        fake_terms = F.relu(1.0 + fake_logits)
    elif kind == "ls":
        real_terms = 0.5 * (real_logits - real_label) ** 2
        fake_terms = 0.5 * fake_logits ** 2
    elif kind == "wgan":
        real_terms = -real_logits
        fake_terms = fake_logits
    else:
        raise ValueError(f"kind must be one of {D_KINDS}, got {kind!r}")
    if reduction == "none":
        return real_terms, fake_terms
    return reduce_batch(real_terms, reduction) + reduce_batch(fake_terms, reduction)


def gan_g_loss(fake_logits, kind="nonsaturating", reduction="mean"):
    """Generator loss on the discriminator's logits of generated samples (see :func:`fastgen.gan_g_loss`)."""
    if kind == "nonsaturating":
        terms = F.softplus(-fake_logits)  # -log(sigmoid(fake))
    elif kind == "saturating":
        terms = -F.softplus(fake_logits)  # log(1 - sigmoid(fake)), the original minimax generator loss
    elif kind in ("hinge", "wgan"):
        terms = -fake_logits
    elif kind == "ls":
        terms = 0.5 * (fake_logits - 1.0) ** 2
    else:
        raise ValueError(f"kind must be one of {G_KINDS}, got {kind!r}")
    return reduce_batch(terms, reduction)


def gradient_penalty(grads, kind="r1", gamma=10.0, reduction="mean"):
    """Per-sample penalty on D's input gradients [B, ...], reduced over the batch (see
    :func:`fastgen.gradient_penalty`)."""
    rows = grads.reshape(grads.shape[0], math.prod(grads.shape[1:]))  # one row per sample (also B = 0)
    if kind == "r1":
        # StyleGAN2-ADA: r1_penalty = r1_grads.square().sum([1,2,3]); loss_Dr1 = r1_penalty * (r1_gamma / 2)
        penalty = rows.square().sum(1) * (gamma / 2)
    elif kind == "wgan-gp":
        # improved WGAN: gradients.view(B, -1).norm(2, dim=1), ((norm - 1) ** 2) * LAMBDA
        norm = rows.norm(2, dim=1)
        penalty = ((norm - 1) ** 2) * gamma
    else:
        raise ValueError(f"kind must be one of {PENALTY_KINDS}, got {kind!r}")
    return reduce_batch(penalty, reduction)
