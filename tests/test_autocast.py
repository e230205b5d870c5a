"""One training step of every model under ``torch.autocast`` (bfloat16): the ops take the dtypes autocast
hands them and return what the matching eager op would (convolutions in the autocast dtype, losses in
float32), the step updates every parameter with finite float32 gradients, and the loss agrees with the same
model on the reference backend under the same autocast (bfloat16 rounding apart). PixelCNN++'s loss scores
the exact pixel values under autocast, not their bfloat16 roundings."""

import pytest
import torch

from fastgen.models import DCGAN, VAE, GatedPixelCNN, PixelCNN, PixelCNNpp, PixelRNN, dmol_targets, scale_pixels
from fastgen.reference import pixel_losses as reference_losses
from fastgen.training import loss_of

LEVELS = 7
PIXEL_MODELS = {
    "pixelcnn": (PixelCNN, dict(hidden_channels=6, n_layers=2, kernel_size=3, head_channels=6)),
    "gated": (GatedPixelCNN, dict(hidden_channels=6, n_layers=2, kernel_size=3, head_channels=12)),
    "pixelcnnpp": (PixelCNNpp, dict(hidden_channels=6, n_layers=2, n_mixtures=2)),
    "pixelrnn row": (lambda **kw: PixelRNN("row", **kw), dict(hidden_channels=4, n_layers=1, kernel_size=3)),
    "pixelrnn diagonal": (lambda **kw: PixelRNN("diagonal", **kw), dict(hidden_channels=4, n_layers=1,
                                                                         kernel_size=3)),
}
BF16_LOSS_RTOL = 3e-2  # a loss of bf16 activations: fastgen and the reference round differently


def _step(model, loss_fn):
    """One Adam step under bf16 autocast; returns the loss (float32) and whether every parameter moved."""
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.autocast(model_device(model), dtype=torch.bfloat16):
        loss = loss_fn()
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    optimizer.step()
    moved = all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return loss.detach(), moved


def model_device(model):
    return next(model.parameters()).device.type


def _twins(build):
    """The model on fastgen's kernels and a copy of it on the reference layers."""
    torch.manual_seed(0)
    model = build()
    twin = build()
    twin.load_state_dict(model.state_dict())
    twin.use_reference(True)
    return model, twin


@pytest.mark.parametrize("name", sorted(PIXEL_MODELS))
def test_pixel_model_trains_one_step_under_autocast(name, device):
    cls, kwargs = PIXEL_MODELS[name]
    model, twin = _twins(lambda: cls(**kwargs, data_channels=1, levels=LEVELS).to(device))
    pixels = torch.randint(0, LEVELS, (2, 1, 5, 5), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        output = model(pixels)
    assert output.dtype == torch.bfloat16  # the convolutions ran in the autocast dtype, as F.conv2d does
    loss, moved = _step(model, lambda: loss_of(model, model(pixels), pixels))
    reference_loss, _ = _step(twin, lambda: loss_of(twin, twin(pixels), pixels))
    assert loss.dtype == torch.float32 and moved
    torch.testing.assert_close(loss, reference_loss, rtol=BF16_LOSS_RTOL, atol=0.0)


@pytest.mark.parametrize("data_channels", [1, 3])
@pytest.mark.parametrize("reference", [False, True], ids=["kernels", "reference"])
def test_pixelcnnpp_loss_under_autocast_scores_the_exact_pixels(data_channels, reference, device):
    """Under bfloat16 autocast the DMOL parameters are bfloat16; ``model.nll`` and ``training.loss_of`` score
    the 256-level pixel values in float32 (``dmol_targets``): per pixel, the float64 NLL of the same bfloat16
    parameters at the exact values, to float32 rounding. Pixel values scaled in bfloat16 (as they were) sit up to
    0.99 half bin widths off and put this per-pixel NLL up to 6e-3 nats (3e-4 relative) away on this model."""
    torch.manual_seed(0)
    model = PixelCNNpp(data_channels, 256, hidden_channels=6, n_layers=1, n_mixtures=2).to(device)
    model.use_reference(reference)
    pixels = torch.randint(0, 256, (2, data_channels, 5, 5), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        params = model(pixels)
        per_pixel = model.nll(pixels, reduction="none")
        mean = loss_of(model, params, pixels)
    assert params.dtype == torch.bfloat16 and per_pixel.dtype == mean.dtype == torch.float32
    expected = reference_losses.dmol_nll(params.double(), scale_pixels(pixels, 256, torch.float64), 2, levels=256,
                                         reduction="none")
    torch.testing.assert_close(per_pixel.double(), expected, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(mean.double(), expected.sum() / pixels.numel(), rtol=1e-5, atol=0.0)
    assert dmol_targets(pixels, 256, torch.bfloat16).dtype == torch.float32
    assert dmol_targets(pixels, 256, torch.float64).dtype == torch.float64


def test_vae_trains_one_step_under_autocast(device):
    model, twin = _twins(lambda: VAE(1, (8, 8), latent_dim=3, hidden_channels=4).to(device))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)
    eps = (torch.randn(2, 3, generator=torch.Generator().manual_seed(2)).to(device),)
    loss, moved = _step(model, lambda: model.loss(x, eps))
    reference_loss, _ = _step(twin, lambda: twin.loss(x, eps))
    assert loss.dtype == torch.float32 and moved
    torch.testing.assert_close(loss, reference_loss, rtol=BF16_LOSS_RTOL, atol=0.0)


def test_dcgan_trains_one_step_under_autocast(device):
    model, twin = _twins(lambda: DCGAN(1, 8, latent_dim=4, hidden_channels=4, r1_gamma=1.0).to(device))
    real = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(2)).to(device)
    d_loss, d_moved = _step(model.discriminator, lambda: model.d_loss(real, z).loss)
    reference_d, _ = _step(twin.discriminator, lambda: twin.d_loss(real, z).loss)
    g_loss, g_moved = _step(model.generator, lambda: model.g_loss(z))
    reference_g, _ = _step(twin.generator, lambda: twin.g_loss(z))
    assert d_loss.dtype == g_loss.dtype == torch.float32 and d_moved and g_moved
    torch.testing.assert_close(d_loss, reference_d, rtol=BF16_LOSS_RTOL, atol=0.0)
    torch.testing.assert_close(g_loss, reference_g, rtol=BF16_LOSS_RTOL, atol=0.0)
