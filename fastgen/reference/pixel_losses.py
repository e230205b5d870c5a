"""PixelCNN output losses as PixelCNN code writes them in eager PyTorch.

* ``pixel_cross_entropy``: the 256-way (``levels``-way) softmax per sub-pixel of PixelCNN (van den Oord et al.
  2016), ``F.cross_entropy`` over the levels dim of [B, levels, C, H, W] logits.
* ``dmol_nll`` / ``dmol_sample``: the discretized logistic mixture of PixelCNN++ (Salimans et al. 2017), as
  openai/pixel-cnn's ``discretized_mix_logistic_loss`` and ``sample_from_discretized_mix_logistic`` (and the
  PyTorch port pclucas14/pixel-cnn-pp) write them, NCHW instead of NHWC, with ``torch.where`` selections (the
  port's ``cond * a + (1 - cond) * b`` is NaN where an unselected branch is infinite) and a bit depth.

Parameter layout of the mixture, as openai/pixel-cnn orders the last dim of ``l`` (here dim 1 of [B, P, H, W]):
``[K mixture logits | for channel c in 0..C-1: K means, K log-scales, (RGB only) K coefficients]``, so P = 10K
for RGB and 3K for grayscale. The RGB coefficient block of channel 0 conditions G on R, that of channel 1 B on
R, that of channel 2 B on G: ``m_G = mu_G + tanh(a) x_R``, ``m_B = mu_B + tanh(b) x_R + tanh(c) x_G``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastgen.levels import bin_half_width, edge_threshold, logits_as_5d

LOG_SCALE_MIN = -7.0  # openai: log_scales = max(l[...], -7.)
MIN_CDF_DELTA = 1e-5  # openai: below it, the log density at the bin centre times the bin width
UNIFORM_MIN = 1e-5  # openai's sampler draws u ~ U(1e-5, 1 - 1e-5)


def pixel_cross_entropy(logits, targets, levels=None, reduction="mean"):
    """Cross-entropy in nats of each sub-pixel (see :func:`fastgen.pixel_cross_entropy`): "none" [B, C, H, W],
    "sum", or "mean" over the sub-pixels (nats/dim)."""
    logits = logits_as_5d(logits, targets.shape[1], levels)
    targets = targets.long()
    valid = (targets >= 0) & (targets < logits.shape[1])
    # a target outside [0, levels) (unchecked: check_targets=False) gives a nan loss and a nan gradient for its
    # sub-pixel, as the kernels do, not F.cross_entropy's error (nor its ignore_index=-100 zero)
    terms = F.cross_entropy(logits, torch.where(valid, targets, 0), reduction="none")
    terms = terms * torch.where(valid, 1.0, math.nan).to(terms.dtype)
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    return terms


def split_mixture_params(params: torch.Tensor, n_mixtures: int, channels: int):
    """(logits [B, K, H, W], means, log-scales (raw, not clamped), coefficients (raw, or None): [B, C, K, H, W])."""
    batch, _, height, width = params.shape
    k = n_mixtures
    logits = params[:, :k]
    per_channel = params[:, k:].reshape(batch, channels, 3 if channels == 3 else 2, k, height, width)
    coefficients = per_channel[:, :, 2] if channels == 3 else None
    return logits, per_channel[:, :, 0], per_channel[:, :, 1], coefficients


def channels_of(params: torch.Tensor, n_mixtures: int) -> int:
    """C of a mixture whose params have P = 10K (RGB) or 3K (grayscale) channels."""
    return 3 if params.shape[1] == 10 * n_mixtures else 1


def dmol_log_probs(params, x, n_mixtures, bits=8, levels=None):
    """log p(x_pixel) under the mixture, per pixel: [B, H, W]; ``levels`` (values per sub-pixel) overrides
    ``2**bits``."""
    levels = 2**bits if levels is None else levels
    channels = x.shape[1]
    logits, means, log_scales, coefficients = split_mixture_params(params, n_mixtures, channels)
    # max(log_scale, -7) with its gradient passed at exactly -7, as the kernel does: written out, because
    # torch.clamp(min=...)'s gradient at the bound is 1 in torch <= 2.13 and 0 in 2.14 (NaN stays NaN)
    log_scales = torch.where(log_scales < LOG_SCALE_MIN, LOG_SCALE_MIN, log_scales)
    x = x.unsqueeze(2)  # [B, C, 1, H, W]
    if channels == 3:  # means adjusted by the preceding sub-pixels
        coefficients = torch.tanh(coefficients)
        m_g = means[:, 1] + coefficients[:, 0] * x[:, 0]
        m_b = means[:, 2] + coefficients[:, 1] * x[:, 0] + coefficients[:, 2] * x[:, 1]
        means = torch.stack([means[:, 0], m_g, m_b], dim=1)
    half_bin = bin_half_width(levels)
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + half_bin)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered_x - half_bin)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log probability of pixel 0
    log_one_minus_cdf_min = -F.softplus(min_in)  # log probability of pixel 255
    cdf_delta = cdf_plus - cdf_min  # probability of the other bins
    mid_in = inv_stdv * centered_x
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)  # log density at the centre of the bin
    log_bin_width = math.log(2.0 * half_bin)  # -log(127.5) at 8 bits
    edge = edge_threshold(levels)
    log_probs = torch.where(
        x < -edge, log_cdf_plus,
        torch.where(x > edge, log_one_minus_cdf_min,
                    torch.where(cdf_delta > MIN_CDF_DELTA, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                                log_pdf_mid + log_bin_width)))
    log_probs = log_probs.sum(1) + torch.log_softmax(logits, dim=1)  # [B, K, H, W]
    return torch.logsumexp(log_probs, dim=1)


def dmol_nll(params, x, n_mixtures, bits=8, reduction="mean", levels=None):
    """Negative log-likelihood in nats of x under the discretized logistic mixture (see
    :func:`fastgen.dmol_nll`): "none" per pixel [B, H, W], "sum" (openai's loss), or "mean" over the
    sub-pixels (nats/dim: the sum divided by x.numel())."""
    nll = -dmol_log_probs(params, x, n_mixtures, bits, levels)
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        return nll.sum() / x.numel() if x.numel() else nll.sum() * math.nan
    return nll


def dmol_uniforms(params, n_mixtures, seed=None):
    """U[0, 1) draws of :func:`dmol_sample` from torch's generator (seeded with ``seed``): [B, K + C, H, W]."""
    channels = channels_of(params, n_mixtures)
    batch, _, height, width = params.shape
    generator = None if seed is None else torch.Generator(device=params.device).manual_seed(seed)
    return torch.rand((batch, n_mixtures + channels, height, width), generator=generator, dtype=params.dtype,
                      device=params.device)


def dmol_sample(params, n_mixtures, seed=None, temperature=1.0, uniforms=None):
    """A sample x [B, C, H, W] in [-1, 1] of the mixture, as openai's ``sample_from_discretized_mix_logistic``
    (see :func:`fastgen.dmol_sample`); ``uniforms`` [B, K + C, H, W] in [0, 1) are mapped to
    [1e-5, 1 - 1e-5]: the first K pick the component (Gumbel-max), the last C the logistic samples."""
    channels = channels_of(params, n_mixtures)
    if uniforms is None:
        uniforms = dmol_uniforms(params, n_mixtures, seed)
    u = UNIFORM_MIN + (1.0 - 2.0 * UNIFORM_MIN) * uniforms.to(params.dtype)
    logits, means, log_scales, coefficients = split_mixture_params(params, n_mixtures, channels)
    neg_gumbel = torch.log(-torch.log(u[:, :n_mixtures]))
    # argmax of logits / T + g; below T = 1 as argmax of logits + T g (the same choice, no overflow of logits / T
    # for a tiny T, whose limit is the argmax of the logits), as the kernel computes it
    scores = logits / temperature - neg_gumbel if temperature >= 1.0 else logits - temperature * neg_gumbel
    choice = torch.argmax(scores, dim=1, keepdim=True)
    sel = F.one_hot(choice, n_mixtures).movedim(-1, 1).to(params.dtype)  # [B, K, 1, H, W]
    sel = sel.transpose(1, 2)  # [B, 1, K, H, W]
    means = (means * sel).sum(2)  # [B, C, H, W]
    log_scales = torch.clamp((log_scales * sel).sum(2), min=LOG_SCALE_MIN)
    u = u[:, n_mixtures:]
    x = means + torch.exp(log_scales) * temperature * (torch.log(u) - torch.log(1.0 - u))
    if channels == 1:
        return torch.clamp(x, -1.0, 1.0)
    coefficients = (torch.tanh(coefficients) * sel).sum(2)
    x0 = torch.clamp(x[:, 0], -1.0, 1.0)
    x1 = torch.clamp(x[:, 1] + coefficients[:, 0] * x0, -1.0, 1.0)
    x2 = torch.clamp(x[:, 2] + coefficients[:, 1] * x0 + coefficients[:, 2] * x1, -1.0, 1.0)
    return torch.stack([x0, x1, x2], dim=1)
