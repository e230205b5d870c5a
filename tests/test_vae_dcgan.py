"""fastgen.models.VAE and fastgen.models.DCGAN: shapes, fastgen vs reference losses and gradients in float64,
the hierarchical KL against a hand-written Gaussian-Gaussian KL, a few training steps, and argument errors.

The convolutions are PyTorch's; fastgen runs reparameterize_kl / the GAN losses / R1 (compiled on a GPU,
interpreted on CPU: the tests comparing fastgen with the reference run on the ``device`` fixture's device), so
tensors stay tiny: batch 2, 8x8 images, a few channels. The shape, training and error tests run on CPU, on the
reference layers where they train."""

import math

import pytest
import torch

import fastgen
from fastgen.data import DIGITS_LEVELS, load_digits
from fastgen.models import DCGAN, VAE

F64 = torch.float64


def grads_of(loss, module):
    return [g if g is not None else torch.zeros_like(p)
            for p, g in zip(module.parameters(), torch.autograd.grad(loss, list(module.parameters()),
                                                                      allow_unused=True))]


def assert_same(a, b, what):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=what)


# ------------------------------------------------------------------------------------------------------------ VAE
@pytest.mark.parametrize("hierarchical", [False, True])
def test_vae_shapes(hierarchical):
    model = VAE(1, (8, 12), latent_dim=3, hidden_channels=4, hierarchical=hierarchical)
    x = torch.rand(2, 1, 8, 12)
    out = model(x)
    assert out.decoded.shape == (2, 1, 8, 12) and out.z.shape == (2, 3) and out.kl.shape == (2,)
    assert len(out.kls) == (2 if hierarchical else 1) and all(k.shape == (2,) for k in out.kls)
    assert torch.allclose(out.kl, sum(out.kls))
    terms = model.negative_elbo(x)
    assert all(t.shape == (2,) for t in terms) and (terms.kl >= 0).all() and (terms.reconstruction > 0).all()
    assert model.sample(3).shape == (3, 1, 8, 12) and model.reconstruct(x).shape == (2, 1, 8, 12)
    assert 0 <= float(model.sample(3).min()) and float(model.sample(3).max()) <= 1
    rebuilt = VAE(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    eps = tuple(torch.randn(2, 3) for _ in out.kls)
    assert torch.equal(rebuilt.loss(x, eps), model.loss(x, eps))


@pytest.mark.parametrize("decoder,hierarchical,gaussian_logvar",
                         [("bernoulli", False, None), ("gaussian", False, None), ("gaussian", True, -1.0),
                          ("bernoulli", True, None)])
def test_vae_fastgen_matches_reference(decoder, hierarchical, gaussian_logvar, device):
    model = VAE(1, 8, latent_dim=3, hidden_channels=3, decoder=decoder, gaussian_logvar=gaussian_logvar,
                hierarchical=hierarchical).to(device, F64)
    x = torch.rand(2, 1, 8, 8, dtype=F64, device=device)
    eps = tuple(torch.randn(2, 3, dtype=F64, device=device) for _ in range(2 if hierarchical else 1))
    assert fastgen.backend_for(x) == "triton"  # compiled on CUDA, interpreted on CPU: the kernels run
    terms = model.negative_elbo(x, eps, beta=0.5)
    grads = grads_of(terms.loss.mean(), model)
    model.use_reference(True)
    expected = model.negative_elbo(x, eps, beta=0.5)
    assert_same(terms, expected, "negative ELBO terms")
    assert_same(grads, grads_of(expected.loss.mean(), model), "gradients")
    assert any(float(g.abs().max()) > 0 for g in grads)
    if decoder == "gaussian" and gaussian_logvar is None:
        assert "decoder_logvar" in dict(model.named_parameters())


def test_vae_hierarchical_kl_is_gaussian_gaussian_kl(device):
    model = VAE(1, 8, latent_dim=3, hidden_channels=3, hierarchical=True).to(device, F64)
    x = torch.rand(2, 1, 8, 8, dtype=F64, device=device)
    eps2, eps1 = torch.randn(2, 3, dtype=F64, device=device), torch.randn(2, 3, dtype=F64, device=device)
    assert fastgen.backend_for(x) == "triton"
    out = model(x, (eps2, eps1))
    # by hand: q(z2|x), z2, p(z1|z2), q(z1|x, z2)
    features = model.encoder(x)
    mu2, logvar2 = model.posterior(features).chunk(2, dim=1)
    z2 = mu2 + torch.exp(logvar2 / 2) * eps2
    prior_mu, prior_logvar = model.prior_z1(z2).chunk(2, dim=1)
    mu1, logvar1 = model.posterior_z1(torch.cat([features, z2], dim=1)).chunk(2, dim=1)
    q1 = torch.distributions.Normal(mu1, torch.exp(logvar1 / 2))
    p1 = torch.distributions.Normal(prior_mu, torch.exp(prior_logvar / 2))
    q2 = torch.distributions.Normal(mu2, torch.exp(logvar2 / 2))
    standard = torch.distributions.Normal(torch.zeros_like(mu2), torch.ones_like(mu2))
    kl_top = torch.distributions.kl_divergence(q2, standard).sum(1)
    kl_bottom = torch.distributions.kl_divergence(q1, p1).sum(1)
    torch.testing.assert_close(out.kls[0], kl_top, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.kls[1], kl_bottom, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.z, mu1 + torch.exp(logvar1 / 2) * eps1, rtol=1e-10, atol=1e-12)
    assert float(kl_bottom.detach().abs().min()) > 1e-3  # a non-trivial prior: not N(0, I)


def test_vae_training_lowers_loss():
    torch.manual_seed(0)
    pixels = load_digits()[0][:128]
    model = VAE(1, 8, latent_dim=4, hidden_channels=8, levels=DIGITS_LEVELS).use_reference(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(model.loss(pixels))
    for _ in range(30):
        loss = model.loss(pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(model.loss(pixels))
    assert after < 0.9 * before, (before, after)  # measured 42.1 -> 34.3 nats per image


def test_vae_integer_pixels_are_scaled():
    model = VAE(1, 8, latent_dim=2, hidden_channels=2, levels=17).use_reference(True)
    pixels = torch.randint(0, 17, (2, 1, 8, 8))
    eps = torch.randn(2, 2)
    assert torch.equal(model.loss(pixels, eps), model.loss(pixels.float() / 16, eps))


def test_vae_errors():
    with pytest.raises(ValueError, match="image_size"):
        VAE(1, 10)
    with pytest.raises(TypeError, match="image_size"):
        VAE(1, (8, 8, 8))
    with pytest.raises(ValueError, match="decoder"):
        VAE(1, 8, decoder="poisson")
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(1, 8, latent_dim=0)
    with pytest.raises(TypeError, match="gaussian_logvar"):
        VAE(1, 8, decoder="gaussian", gaussian_logvar="learnt")
    with pytest.raises(TypeError, match="hierarchical"):
        VAE(1, 8, hierarchical=1)
    model = VAE(1, 8, latent_dim=2, hidden_channels=2)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(TypeError, match="x must"):
        model(torch.ones(2, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="eps"):
        model(torch.rand(2, 1, 8, 8), (torch.randn(2, 2), torch.randn(2, 2)))
    with pytest.raises(ValueError, match="eps"):
        model(torch.rand(2, 1, 8, 8), torch.randn(3, 2))
    with pytest.raises(ValueError, match="beta"):
        model.loss(torch.rand(2, 1, 8, 8), beta=-1.0)


# ---------------------------------------------------------------------------------------------------------- DCGAN
@pytest.mark.parametrize("size", [8, 16])
def test_dcgan_shapes(size):
    model = DCGAN(1, size, latent_dim=4, hidden_channels=4)
    images = model(model.latents(3))
    assert images.shape == (3, 1, size, size) and float(images.detach().abs().max()) <= 1
    assert model.discriminator(images).shape == (3, 1, 1, 1)
    assert model.sample(2).shape == (2, 1, size, size)
    assert DCGAN(**model.config).config == model.config


@pytest.mark.parametrize("loss,r1_gamma", [("nonsaturating", 2.0), ("hinge", 0.0), ("ls", 1.0)])
def test_dcgan_fastgen_matches_reference(loss, r1_gamma, device):
    model = DCGAN(1, 8, latent_dim=3, hidden_channels=3, loss=loss, r1_gamma=r1_gamma).to(device, F64)
    real = torch.rand(2, 1, 8, 8, dtype=F64, device=device) * 2 - 1
    z = torch.randn(2, 3, dtype=F64, device=device)
    assert fastgen.backend_for(real) == "triton"  # compiled on CUDA, interpreted on CPU: the kernels run
    d_terms = model.d_loss(real, z)
    d_grads = grads_of(d_terms.loss, model.discriminator)
    g_loss = model.g_loss(z)
    g_grads = grads_of(g_loss, model.generator)
    model.use_reference(True)
    expected = model.d_loss(real, z)
    assert_same(d_terms, expected, "D loss terms")
    assert_same(d_grads, grads_of(expected.loss, model.discriminator), "D gradients")
    expected_g = model.g_loss(z)
    assert_same([g_loss], [expected_g], "G loss")
    assert_same(g_grads, grads_of(expected_g, model.generator), "G gradients")
    assert (float(d_terms.r1.detach()) > 0) == (r1_gamma > 0)


def test_dcgan_r1_by_hand(device):
    model = DCGAN(1, 8, latent_dim=3, hidden_channels=3, r1_gamma=4.0).to(device, F64)
    real = torch.rand(2, 1, 8, 8, dtype=F64, device=device).requires_grad_(True)
    assert fastgen.backend_for(real) == "triton"
    grads, = torch.autograd.grad(model.discriminator(real).sum(), real)
    expected = 4.0 / 2 * grads.pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(model.d_loss(real.detach(), 2).r1, expected, rtol=1e-10, atol=1e-12)


def test_dcgan_training_steps():
    torch.manual_seed(0)
    model = DCGAN(1, 8, latent_dim=4, hidden_channels=4, r1_gamma=1.0, levels=DIGITS_LEVELS).use_reference(True)
    real = torch.randint(0, DIGITS_LEVELS, (8, 1, 8, 8))
    d_opt = torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_opt = torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(2):
        d_terms = model.d_loss(real)
        d_opt.zero_grad()
        d_terms.loss.backward()
        d_opt.step()
        g_opt.zero_grad()  # the D step's backward does not reach G (fake images are detached)
        assert all(p.grad is None for p in model.generator.parameters())
        g_loss = model.g_loss(8)
        g_loss.backward()
        g_opt.step()
        assert all(math.isfinite(t.item()) for t in (*d_terms, g_loss)) and d_terms.r1.item() > 0


def test_dcgan_errors():
    with pytest.raises(ValueError, match="image_size"):
        DCGAN(1, 12)
    with pytest.raises(ValueError, match="image_size"):
        DCGAN(1, 4)
    with pytest.raises(ValueError, match="loss"):
        DCGAN(1, 8, loss="minimax")
    with pytest.raises(ValueError, match="r1_gamma"):
        DCGAN(1, 8, r1_gamma=-1.0)
    model = DCGAN(1, 8, latent_dim=2, hidden_channels=2)
    with pytest.raises(ValueError, match="x must have shape"):
        model.d_loss(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="z must have shape"):
        model.g_loss(torch.randn(2, 3))
    with pytest.raises(ValueError, match="n must be"):
        model.sample(-1)


# ------------------------------------------------------------------------------------------------ training + CLI
@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_vae_and_gan_histories(one_thread):
    from fastgen.training import train_gan, train_vae

    torch.manual_seed(0)
    pixels = load_digits()[0][:96]
    vae = VAE(1, 8, latent_dim=4, hidden_channels=8, levels=DIGITS_LEVELS).use_reference(True)
    history = train_vae(vae, pixels, epochs=2, batch_size=32, progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:
        assert record["train_nelbo"] == pytest.approx(record["train_reconstruction"] + record["train_kl"])
        assert record["test_nelbo"] == pytest.approx(record["test_reconstruction"] + record["test_kl"])
    assert history[1]["train_nelbo"] < history[0]["train_nelbo"]
    gan = DCGAN(1, 8, latent_dim=4, hidden_channels=4, r1_gamma=1.0, levels=DIGITS_LEVELS).use_reference(True)
    history = train_gan(gan, pixels, epochs=1, batch_size=32, progress=False)
    assert len(history) == 1 and all(math.isfinite(history[0][k]) for k in ("d_loss", "g_loss", "r1"))
    assert history[0]["r1"] > 0
    with pytest.raises(TypeError, match="pixels must be an integer tensor"):
        train_vae(vae, pixels.float(), epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        train_gan(gan, pixels, epochs=0)


def test_cli_train_and_sample_vae_dcgan(tmp_path, one_thread, capsys):
    from PIL import Image

    from fastgen import cli
    from fastgen.training import load_checkpoint

    out = tmp_path / "run"
    assert cli.main(["train", "vae", "--epochs", "2", "--hidden-channels", "4", "--latent-dim", "3",
                     "--hierarchical", "--decoder", "gaussian", "--batch-size", "256", "--out", str(out),
                     "--samples", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2  train -ELBO" in printed and "KL" in printed and "rec" in printed
    model, meta = load_checkpoint(out / "vae.pt")
    assert isinstance(model, VAE) and model.hierarchical and model.decoder_kind == "gaussian"
    assert len(meta["history"]) == 2 and tuple(meta["image_size"]) == (8, 8)
    with Image.open(out / "vae-reconstructions.png") as image:  # 8 test images over their reconstructions
        assert image.size == (8 * 33 + 1, 8 * 33 + 1)
    assert cli.main(["train", "dcgan", "--epochs", "1", "--hidden-channels", "4", "--latent-dim", "3",
                     "--gan-loss", "hinge", "--batch-size", "256", "--out", str(out), "--samples", "4",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "epoch   1  D loss" in printed and "G loss" in printed and "R1" in printed
    model, meta = load_checkpoint(out / "dcgan.pt")
    assert isinstance(model, DCGAN) and model.config["loss"] == "hinge" and model.config["r1_gamma"] == 1.0
    for name in ("vae", "dcgan"):
        assert (out / f"{name}-samples.png").stat().st_size > 0
        assert cli.main(["sample", str(out / f"{name}.pt"), "-n", "3", "-o", str(tmp_path / "s.png")]) == 0
        with Image.open(tmp_path / "s.png") as image:
            assert image.size == (2 * 33 + 1, 2 * 33 + 1)
    assert cli.main(["sample", str(out / "vae.pt"), "--naive", "-o", str(tmp_path / "s.png")]) == 2
    assert cli.main(["train", "vae", "--conditional"]) == 2
    assert cli.main(["train", "dcgan", "--layers", "2"]) == 2
    assert cli.main(["train", "dcgan", "--r1-gamma", "-1", "--epochs", "1"]) == 2
    assert "--r1-gamma" in capsys.readouterr().err
