"""fastgen.compat: each famous function equals its namesake, written here in float64 as the original writes it."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastgen import compat

F64 = torch.float64


# ---------------------------------------------------------------------------------------- pclucas14/pixel-cnn-pp
def _log_sum_exp(x):
    m, _ = torch.max(x, dim=-1)
    m2, _ = torch.max(x, dim=-1, keepdim=True)
    return m + torch.log(torch.sum(torch.exp(x - m2), dim=-1))


def _log_prob_from_logits(x):
    m, _ = torch.max(x, dim=-1, keepdim=True)
    return x - m - torch.log(torch.sum(torch.exp(x - m), dim=-1, keepdim=True))


def _log_probs(x, means, log_scales):
    """pclucas14's per-channel log-probabilities of the bins (x, means, log_scales: [B, H, W, C, K])."""
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1. / 255.)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered_x - 1. / 255.)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered_x
    log_pdf_mid = mid_in - log_scales - 2. * F.softplus(mid_in)
    inner_inner_cond = (cdf_delta > 1e-5).to(x.dtype)
    inner_inner_out = (inner_inner_cond * torch.log(torch.clamp(cdf_delta, min=1e-12))
                       + (1. - inner_inner_cond) * (log_pdf_mid - math.log(127.5)))
    inner_cond = (x > 0.999).to(x.dtype)
    inner_out = inner_cond * log_one_minus_cdf_min + (1. - inner_cond) * inner_inner_out
    cond = (x < -0.999).to(x.dtype)
    return cond * log_cdf_plus + (1. - cond) * inner_out


def pclucas14_loss(x, l):  # noqa: E741
    x, l = x.permute(0, 2, 3, 1), l.permute(0, 2, 3, 1)
    xs, nr_mix = list(x.shape), l.shape[-1] // 10
    logit_probs = l[:, :, :, :nr_mix]
    l = l[:, :, :, nr_mix:].contiguous().view(xs + [nr_mix * 3])
    means = l[:, :, :, :, :nr_mix]
    log_scales = torch.clamp(l[:, :, :, :, nr_mix:2 * nr_mix], min=-7.)
    coeffs = torch.tanh(l[:, :, :, :, 2 * nr_mix:3 * nr_mix])
    x = x.contiguous().unsqueeze(-1) + torch.zeros(xs + [nr_mix], dtype=x.dtype)
    m2 = (means[:, :, :, 1, :] + coeffs[:, :, :, 0, :] * x[:, :, :, 0, :]).view(xs[0], xs[1], xs[2], 1, nr_mix)
    m3 = (means[:, :, :, 2, :] + coeffs[:, :, :, 1, :] * x[:, :, :, 0, :]
          + coeffs[:, :, :, 2, :] * x[:, :, :, 1, :]).view(xs[0], xs[1], xs[2], 1, nr_mix)
    means = torch.cat((means[:, :, :, 0, :].unsqueeze(3), m2, m3), dim=3)
    log_probs = torch.sum(_log_probs(x, means, log_scales), dim=3) + _log_prob_from_logits(logit_probs)
    return -torch.sum(_log_sum_exp(log_probs))


def pclucas14_loss_1d(x, l):  # noqa: E741
    x, l = x.permute(0, 2, 3, 1), l.permute(0, 2, 3, 1)
    xs, nr_mix = list(x.shape), l.shape[-1] // 3
    logit_probs = l[:, :, :, :nr_mix]
    l = l[:, :, :, nr_mix:].contiguous().view(xs + [nr_mix * 2])
    means = l[:, :, :, :, :nr_mix]
    log_scales = torch.clamp(l[:, :, :, :, nr_mix:2 * nr_mix], min=-7.)
    x = x.contiguous().unsqueeze(-1) + torch.zeros(xs + [nr_mix], dtype=x.dtype)
    log_probs = torch.sum(_log_probs(x, means, log_scales), dim=3) + _log_prob_from_logits(logit_probs)
    return -torch.sum(_log_sum_exp(log_probs))


def _images(channels, gen, batch=2, size=3):
    x = torch.randint(0, 256, (batch, channels, size, size), generator=gen).to(F64) / 127.5 - 1.0
    x[0, :, 0, 0] = -1.0  # the edge bins
    x[0, :, 0, 1] = 1.0
    return x


@pytest.mark.parametrize("channels", [3, 1])
def test_discretized_mix_logistic_loss_is_pclucas14s(channels, device):
    gen = torch.Generator().manual_seed(channels)
    nr_mix = 3
    x = _images(channels, gen)
    l = torch.randn(2, (10 if channels == 3 else 3) * nr_mix, 3, 3, generator=gen, dtype=F64)  # noqa: E741
    l[:, nr_mix:] *= 0.5
    expected_fn = pclucas14_loss if channels == 3 else pclucas14_loss_1d
    ours = compat.discretized_mix_logistic_loss if channels == 3 else compat.discretized_mix_logistic_loss_1d
    l_ours = l.to(device).requires_grad_()
    l_theirs = l.clone().requires_grad_()
    loss = ours(x.to(device), l_ours)
    expected = expected_fn(x, l_theirs)
    torch.testing.assert_close(loss.cpu(), expected, rtol=1e-9, atol=1e-9)  # the sum, not a mean
    (grad,) = torch.autograd.grad(loss, l_ours)
    (expected_grad,) = torch.autograd.grad(expected, l_theirs)
    torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-9, atol=1e-9)


def test_sample_from_discretized_mix_logistic(device):
    """A mixture with one dominant, sharp component samples its (coefficient-shifted) means."""
    nr_mix = 2
    l = torch.zeros(1, 10 * nr_mix, 2, 2, dtype=F64)  # noqa: E741
    l[:, 0] = 100.0  # component 0 is certain
    means = torch.tensor([0.5, -0.25, 0.0], dtype=F64)
    for c in range(3):
        l[:, nr_mix + c * 3 * nr_mix] = means[c]  # channel c, mean of component 0
        l[:, nr_mix + c * 3 * nr_mix + nr_mix] = -7.0  # its log-scale: as sharp as the clamp allows
    sample = compat.sample_from_discretized_mix_logistic(l.to(device), nr_mix)
    assert sample.shape == (1, 3, 2, 2)
    torch.testing.assert_close(sample.cpu(), means.view(1, 3, 1, 1).expand(1, 3, 2, 2), rtol=0, atol=0.02)
    grey = compat.sample_from_discretized_mix_logistic_1d(l[:, :3 * nr_mix].to(device), nr_mix)
    assert grey.shape == (1, 1, 2, 2) and (grey.abs() <= 1).all()
    with pytest.raises(ValueError, match="nr_mix"):
        compat.sample_from_discretized_mix_logistic(l.to(device), 3)


# ---------------------------------------------------------------------------------------- pytorch/examples VAE
def test_vae_loss_function_is_pytorch_examples(device):
    gen = torch.Generator().manual_seed(0)
    recon_x = torch.sigmoid(torch.randn(4, 784, generator=gen, dtype=F64))
    x = torch.rand(4, 1, 28, 28, generator=gen, dtype=F64)
    mu, logvar = torch.randn(4, 20, generator=gen, dtype=F64), torch.randn(4, 20, generator=gen, dtype=F64)
    inputs = [t.to(device).requires_grad_() for t in (recon_x, mu, logvar)]
    loss = compat.loss_function(inputs[0], x.to(device), inputs[1], inputs[2])
    leaves = [t.clone().requires_grad_() for t in (recon_x, mu, logvar)]
    bce = F.binary_cross_entropy(leaves[0], x.view(-1, 784), reduction="sum")  # their code, MNIST-shaped
    kld = -0.5 * torch.sum(1 + leaves[2] - leaves[1].pow(2) - leaves[2].exp())
    torch.testing.assert_close(loss.cpu(), bce + kld, rtol=1e-9, atol=1e-9)
    grads = torch.autograd.grad(loss, inputs)
    expected = torch.autograd.grad(bce + kld, leaves)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------- rosinality/stylegan2
def test_stylegan2_losses_are_rosinalitys(device):
    gen = torch.Generator().manual_seed(1)
    real_pred, fake_pred = (torch.randn(5, 1, generator=gen, dtype=F64) * 3 for _ in range(2))
    torch.testing.assert_close(compat.d_logistic_loss(real_pred.to(device), fake_pred.to(device)).cpu(),
                               F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(compat.g_nonsaturating_loss(fake_pred.to(device)).cpu(),
                               F.softplus(-fake_pred).mean(), rtol=1e-12, atol=0)


def test_d_r1_loss_is_rosinalitys(device):
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(3 * 4 * 4, generator=gen, dtype=F64)
    real_img = torch.randn(2, 3, 4, 4, generator=gen, dtype=F64)

    def discriminator(img):  # nonlinear, so that the penalty's own gradient depends on the image
        return torch.tanh(img.reshape(len(img), -1) @ weight).unsqueeze(1)

    img = real_img.to(device).requires_grad_()
    ours = compat.d_r1_loss(discriminator(img), img)
    theirs_img = real_img.clone().requires_grad_()
    (grad_real,) = torch.autograd.grad(discriminator(theirs_img).sum(), theirs_img, create_graph=True)
    theirs = grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()
    torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(ours, img)[0].cpu(), torch.autograd.grad(theirs, theirs_img)[0],
                               rtol=1e-7, atol=1e-10)  # through the double backward, as in training


def test_bad_parameters_raise_naming_l(device):
    with pytest.raises(ValueError, match="l must be a 4-d"):
        compat.discretized_mix_logistic_loss(torch.zeros(1, 3, 2, 2, device=device),
                                             torch.zeros(1, 11, 2, 2, device=device))
