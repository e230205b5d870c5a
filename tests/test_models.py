"""fastgen.models: shapes, fastgen vs reference backends, causality (and no blind spot), training, conditioning.

The Triton runs take the ``device`` fixture's device (compiled on a GPU, interpreted on CPU), so the models are
tiny (2 layers, 6-8 channels, 5x5 images) and the Triton runs use 3x3 input kernels; the exhaustive causality
checks (every input sub-pixel perturbed) run on the reference backend (CPU) with the default 7x7 input kernels,
and the Triton runs check one perturbed pixel.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen.models import GatedPixelCNN, PixelCNN, PixelCNNpp, scale_pixels

LEVELS = 7
H = W = 5

# name -> (class, constructor arguments for the interpreted runs)
TINY = {
    "pixelcnn": (PixelCNN, dict(hidden_channels=6, n_layers=2, kernel_size=3, head_channels=6)),
    "gated": (GatedPixelCNN, dict(hidden_channels=6, n_layers=2, kernel_size=3, head_channels=12)),
    "pixelcnnpp": (PixelCNNpp, dict(hidden_channels=6, n_layers=2, n_mixtures=2)),
}


def build(name, data_channels=1, n_classes=None, **overrides):
    cls, kwargs = TINY[name]
    torch.manual_seed(0)
    return cls(**dict(kwargs, data_channels=data_channels, levels=LEVELS, n_classes=n_classes, **overrides)).double()


def images(batch, data_channels, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, LEVELS, (batch, data_channels, H, W), generator=g)


def labels(model, batch):
    return None if model.n_classes is None else torch.arange(batch) % model.n_classes


def dependence(model, x, pixels=None):
    """|change| [C_in, P_in, C_out, P_out] of the outputs when input sub-pixel (c, p) is perturbed, for the
    input pixels ``pixels`` (raster indices; all by default). One batched forward."""
    batch_x = x.double() if x.is_floating_point() else scale_pixels(x, LEVELS, torch.float64)
    c, n = x.shape[1], H * W
    pixels = list(range(n)) if pixels is None else pixels
    perturbed = batch_x.repeat(1 + c * len(pixels), 1, 1, 1)
    for i, (ci, p) in enumerate((ci, p) for ci in range(c) for p in pixels):
        perturbed[1 + i, ci, p // W, p % W] += 0.75
    with torch.no_grad():
        out = model(perturbed, None if model.n_classes is None else torch.zeros(len(perturbed), dtype=torch.long,
                                                                               device=perturbed.device))
    if model.output_kind == "logits":  # [N, L, C, H, W]: the largest change over the levels, per channel
        change = (out[1:] - out[:1]).abs().amax(1)
    else:  # [N, P, H, W]: DMOL parameters describe the whole pixel
        change = (out[1:] - out[:1]).abs().amax(1, keepdim=True)
    return change.reshape(c, len(pixels), change.shape[1], n).cpu(), out


def allowed(model, c_in, pixels, c_out):
    """[C_in, P_in, C_out, P_out] bool: which outputs may depend on which input sub-pixels."""
    p_in = torch.tensor(pixels).view(1, -1, 1, 1)
    p_out = torch.arange(H * W).view(1, 1, 1, -1)
    ci = torch.arange(c_in).view(-1, 1, 1, 1)
    co = torch.arange(c_out).view(1, 1, -1, 1)
    if model.output_kind == "dmol":  # the whole pixel p is left out: the DMOL couples its channels
        return (p_in < p_out).expand(c_in, -1, c_out, -1)
    return (p_in < p_out) | ((p_in == p_out) & (ci < co))


def check_causal(model, change, pixels, complete):
    """No output depends on a sub-pixel it must not see; with ``complete`` every allowed one is seen (no blind
    spot within the receptive field, which covers the whole 5x5 image in these models)."""
    may = allowed(model, change.shape[0], pixels, change.shape[2])
    leaks = (change > 1e-12) & ~may
    assert not leaks.any(), f"causality violated at (c_in, p_in, c_out, p_out) = {leaks.nonzero()[:5].tolist()}"
    if complete:
        missing = (change <= 1e-12) & may  # the weakest real dependence here is ~1e-9
        assert not missing.any(), f"blind spot at (c_in, p_in, c_out, p_out) = {missing.nonzero()[:5].tolist()}"


def expected_shape(model, batch):
    if model.output_kind == "dmol":
        return (batch, (10 if model.data_channels == 3 else 3) * model.n_mixtures, H, W)
    return (batch, LEVELS, model.data_channels, H, W)


CONFIGS = [(name, c) for name in TINY for c in (1, 3)]


@pytest.mark.parametrize("name,data_channels", CONFIGS, ids=lambda v: str(v))
def test_backends_agree_and_are_causal(name, data_channels, device):
    """fastgen's kernels and the reference layers give the same outputs, shapes and state_dict; the kernel
    run leaves the future of one perturbed pixel untouched."""
    model = build(name, data_channels, n_classes=3 if data_channels == 3 else None).to(device)
    x = images(1, data_channels).to(device)
    assert fastgen.backend_for(x.double()) == "triton"
    centre = [(H // 2) * W + W // 2]
    keys = list(model.state_dict())
    change, out = dependence(model, x, centre)
    assert out.shape == expected_shape(model, len(out))
    change_ref, out_ref = dependence(model.use_reference(True), x, centre)
    assert model.reference and list(model.state_dict()) == keys
    torch.testing.assert_close(out, out_ref, rtol=1e-9, atol=1e-9)
    check_causal(model, change, centre, complete=name != "pixelcnn")


@pytest.mark.parametrize("name,data_channels", CONFIGS, ids=lambda v: str(v))
def test_causality_every_subpixel(name, data_channels):
    """Reference layers, default input kernels: perturb every input sub-pixel. PixelCNN: nothing before p
    (raster order), or channel >= c at p, changes; Gated PixelCNN and PixelCNN++ also see every allowed
    sub-pixel (no blind spot, e.g. the pixel up-right of p)."""
    cls, kwargs = TINY[name]
    kwargs = {k: v for k, v in kwargs.items() if k != "kernel_size"}  # the default 7x7 input layer
    torch.manual_seed(0)
    model = cls(**kwargs, data_channels=data_channels, levels=LEVELS).double().use_reference(True)
    x = images(1, data_channels)
    change, _ = dependence(model, x)
    check_causal(model, change, list(range(H * W)), complete=name != "pixelcnn")
    if name == "pixelcnn":  # it sees the left and the upper neighbour (every channel: mask A then B)
        p = 2 * W + 2
        assert (change[:, p - 1, :, p] > 1e-9).all() and (change[:, p - W, :, p] > 1e-9).all()


def nll(model, out, x):
    """Mean negative log-likelihood in nats per sub-pixel: cross-entropy or a plain-torch DMOL."""
    if model.output_kind == "logits":
        return F.cross_entropy(out, x)
    return dmol_nll(out, scale_pixels(x, LEVELS, out.dtype), LEVELS)


def dmol_nll(params, x, levels):
    """Discretized logistic mixture NLL (Salimans et al. 2017, openai/pixel-cnn's formula and channel order),
    params [B, 10K or 3K, H, W], x [B, C, H, W] in [-1, 1] -> mean nats per sub-pixel."""
    batch, c, height, width = x.shape
    k = params.shape[1] // (10 if c == 3 else 3)
    logit_probs = params[:, :k]
    rest = params[:, k:].reshape(batch, c, -1, k, height, width)  # [B, C, (means, log-scales, coeffs), K, H, W]
    means, log_scales = rest[:, :, 0], rest[:, :, 1].clamp(min=-7.0)
    xk = x.unsqueeze(2)
    if c == 3:
        coeffs = torch.tanh(rest[:, :, 2])
        means = torch.stack([means[:, 0], means[:, 1] + coeffs[:, 0] * xk[:, 0],
                             means[:, 2] + coeffs[:, 1] * xk[:, 0] + coeffs[:, 2] * xk[:, 1]], 1)
    centered, inv_scale, half_bin = xk - means, torch.exp(-log_scales), 1.0 / (levels - 1)
    plus, minus = inv_scale * (centered + half_bin), inv_scale * (centered - half_bin)
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_scale * centered
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid) - math.log((levels - 1) / 2)
    log_probs = torch.where(xk < -0.999, plus - F.softplus(plus),
                            torch.where(xk > 0.999, -F.softplus(minus),
                                        torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)),
                                                    log_pdf_mid)))
    log_probs = log_probs.sum(1) + F.log_softmax(logit_probs, 1)
    return -torch.logsumexp(log_probs, 1).mean() / c


@pytest.mark.parametrize("name,data_channels", [("pixelcnn", 3), ("gated", 1), ("pixelcnnpp", 1)],
                         ids=lambda v: str(v))
def test_training_step(name, data_channels, device):
    """The kernels' gradients equal the reference's, and one Adam step lowers the loss on a tiny batch."""
    model = build(name, data_channels).to(device)
    x = images(2, data_channels).to(device)
    assert fastgen.backend_for(x.double()) == "triton"
    params = list(model.parameters())
    loss = nll(model, model(x), x)
    grads = torch.autograd.grad(loss, params)
    model.use_reference(True)
    grads_ref = torch.autograd.grad(nll(model, model(x), x), params)
    model.use_reference(False)
    for (pname, _), g, g_ref in zip(model.named_parameters(), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10, msg=f"gradient of {pname}")
    optimizer = torch.optim.Adam(params, lr=3e-3)
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    with torch.no_grad():
        after = nll(model, model(x), x)
    assert after < loss.detach() - 1e-3, (loss.item(), after.item())


@pytest.mark.parametrize("name,data_channels,n_classes", [("pixelcnn", 3, None), ("gated", 1, 2),
                                                            ("pixelcnnpp", 1, None)], ids=lambda v: str(v))
def test_nll_is_the_loss_of_the_forward(name, data_channels, n_classes, device):
    """model.nll (the fused head for the softmax models) gives the loss of the logits model(x) returns and the
    same parameter gradients, on the kernels and on the reference; "none" per sub-pixel."""
    model = build(name, data_channels, n_classes).to(device)
    x = images(2, data_channels).to(device)
    y = labels(model, 2)
    y = None if y is None else y.to(device)
    params = list(model.parameters())
    for reference in (False, True):
        model.use_reference(reference)
        loss = model.nll(x, y)
        expected = nll(model, model(x, y), x)
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
        for g, g_exp, (pname, _) in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params),
                                        model.named_parameters()):
            torch.testing.assert_close(g, g_exp, rtol=1e-8, atol=1e-10, msg=f"gradient of {pname}")
    model.use_reference(False)
    terms = model.nll(x, y, reduction="none")  # per sub-pixel; DMOL: per pixel (its channels' joint NLL)
    assert terms.shape == (x.shape if model.output_kind == "logits" else x[:, 0].shape)
    torch.testing.assert_close(terms.sum() / x.numel(), model.nll(x, y).detach(), rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="pixels"):
        model.nll(x.double(), y)


@pytest.mark.parametrize("name", list(TINY))
def test_training_lowers_loss_reference(name):
    """A few steps on the reference layers (fast): the loss falls well below its start on a fixed batch."""
    model = build(name, 3).use_reference(True)
    x = images(2, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = nll(model, model(x), x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", list(TINY))
def test_conditioning_uses_the_class(name):
    model = build(name, 1, n_classes=3)
    x = images(1, 1).repeat(3, 1, 1, 1)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 1, 0]))
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="y"):
        model(x)
    with pytest.raises(ValueError, match="y"):
        build(name, 1)(x, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="shape"):
        model(x, torch.tensor([0, 1]))


@pytest.mark.parametrize("name", list(TINY))
def test_inputs_config_and_state_dict(name):
    """Integer pixels equal their scaled floats; float32 works; config rebuilds the model for a checkpoint."""
    model = build(name, 3).use_reference(True)
    x = images(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(scale_pixels(x, LEVELS, torch.float64)))
        twin = type(model)(**model.config).double().use_reference(True)
        twin.load_state_dict(model.state_dict())
        torch.testing.assert_close(twin(x), model(x))
        out32 = model.float()(x)
    assert out32.dtype == torch.float32 and out32.shape == expected_shape(model, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        model(images(2, 1))
    with pytest.raises(TypeError, match="x"):
        model(x.bool())


@pytest.mark.parametrize("name", list(TINY))
def test_argument_errors(name):
    cls = TINY[name][0]
    with pytest.raises(ValueError, match="data_channels"):
        cls(data_channels=2)
    with pytest.raises(ValueError, match="levels"):
        cls(levels=1)
    with pytest.raises(TypeError, match="n_layers"):
        cls(n_layers=2.0)
    if name != "pixelcnnpp":  # PixelCNN++ conditions on whole pixels: no channel groups
        with pytest.raises(ValueError, match="hidden_channels .* divisible by data_channels"):
            cls(data_channels=3, hidden_channels=8)


def test_public_names():
    assert fastgen.models.PixelCNN is PixelCNN
    model = build("pixelcnn")
    assert model.use_reference() is model and model.reference
    assert not model.use_reference(False).reference
    assert "reference" not in "".join(model.state_dict())
