"""The full (three-resolution) PixelCNN++ on fastgen kernels, and its resampling convolutions.

The strided and transposed shifted convolutions (fastgen.nn.shifted_resample) are checked in float64 on the
fastgen kernels (interpreted on CPU) against plain references written the openai/pixel-cnn way: ``F.pad`` +
``F.conv2d(stride=s)``, and ``F.conv_transpose2d(stride=s, output_padding=s-1)`` + openai's crop; outputs and
the gradients of input, weight and bias, odd sizes, strides 2 and 3, several kernel sizes.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.nn import (DownRightShiftedConvTranspose2d, DownShiftedConvTranspose2d, StridedDownRightShiftedConv2d,
                        StridedDownShiftedConv2d)
from fastgen.nn.shifted_resample import StridedShiftedConv2d
from tolerances import assert_close

# ------------------------------------------------------------------------------ resampling convolutions


def reference_strided(x, module):
    """openai's down_shifted_conv2d / down_right_shifted_conv2d with strides: pad, then a VALID strided conv."""
    (kh, kw), left = module.kernel_size, module.shift_taps.padding[1]
    return F.conv2d(F.pad(x, (left, kw - 1 - left, kh - 1, 0)), module.weight, module.bias, stride=module.stride)


def reference_transposed(x, module):
    """openai's down_shifted_deconv2d / down_right_shifted_deconv2d: a VALID transposed conv (H*s + kh - 1 rows),
    then rows [0, H*s) and columns [c0, c0 + W*s) (c0 = (kw-1)//2 resp. 0)."""
    (kh, kw), s = module.kernel_size, module.stride[0]
    height, width = x.shape[2:]
    out = F.conv_transpose2d(x, module.weight, module.bias, stride=s, output_padding=s - 1)
    assert out.shape[2:] == (height * s + kh - 1, width * s + kw - 1)  # TF's VALID target shape
    c0 = (kw - 1) // 2 if isinstance(module, DownShiftedConvTranspose2d) else 0
    return out[:, :, :height * s, c0:c0 + width * s]


STRIDED = [(StridedDownShiftedConv2d, (2, 3)), (StridedDownShiftedConv2d, (1, 3)),
           (StridedDownShiftedConv2d, (3, 3)), (StridedDownShiftedConv2d, (2, 2)),
           (StridedDownRightShiftedConv2d, (2, 2)), (StridedDownRightShiftedConv2d, (2, 1)),
           (StridedDownRightShiftedConv2d, (3, 2))]
TRANSPOSED = [(DownShiftedConvTranspose2d, (2, 3)), (DownShiftedConvTranspose2d, (1, 3)),
              (DownShiftedConvTranspose2d, (3, 3)), (DownShiftedConvTranspose2d, (2, 2)),
              (DownRightShiftedConvTranspose2d, (2, 2)), (DownRightShiftedConvTranspose2d, (2, 1)),
              (DownRightShiftedConvTranspose2d, (3, 2))]
# (batch, H, W): even, odd, H != W, smaller than the stride
STRIDED_SHAPES = [(2, 8, 6), (1, 5, 7), (1, 3, 2), (1, 1, 1)]
TRANSPOSED_SHAPES = [(2, 4, 3), (1, 3, 5), (1, 1, 1)]


def check_against(module, reference, shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((shape[0], module.in_channels) + shape[1:], generator=g, dtype=torch.float64)
    with torch.no_grad():  # a bias that is not zero
        module.bias.copy_(torch.randn(module.bias.shape, generator=g, dtype=torch.float64))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = module(x1), reference(x2, module)
    assert out.shape == expected.shape
    assert_close(out, expected, torch.float64)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (x1, module.weight, module.bias), grad)
    want = torch.autograd.grad(expected, (x2, module.weight, module.bias), grad)
    for name, a, b in zip(("x", "weight", "bias"), got, want):
        assert_close(a, b, torch.float64, name)


# (module class, kernel size, the openai form, input shapes [B, H, W]) of every strided and transposed module
RESAMPLES = ([(cls, k, reference_strided, STRIDED_SHAPES) for cls, k in STRIDED]
             + [(cls, k, reference_transposed, TRANSPOSED_SHAPES) for cls, k in TRANSPOSED])


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("cls,kernel_size,reference,shapes", RESAMPLES,
                         ids=lambda v: getattr(v, "__name__", str(v)) if not isinstance(v, list) else None)
def test_shifted_resample_equals_openai_form(cls, kernel_size, reference, shapes, stride):
    torch.manual_seed(0)
    module = cls(3, 5, kernel_size, stride=stride).double()
    for i, shape in enumerate(shapes):
        check_against(module, reference, shape, seed=i)


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("cls,kernel_size", STRIDED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_strided_shifted_conv_output_size(cls, kernel_size, stride):
    module = cls(3, 5, kernel_size, stride=stride).double()
    assert module(torch.zeros(1, 3, 7, 5, dtype=torch.float64)).shape == (1, 5, -(-7 // stride), -(-5 // stride))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls", [StridedDownShiftedConv2d, StridedDownRightShiftedConv2d, DownShiftedConvTranspose2d,
                                 DownRightShiftedConvTranspose2d])
def test_model_layers_in_lower_precision(cls, dtype):
    """The model's four resampling layers (default kernels, stride 2) in float32 / bfloat16 against the float64
    reference on the same rounded inputs and weights, within the dtype's tolerance."""
    torch.manual_seed(0)
    module = cls(16, 16).to(dtype)
    x = torch.randn(2, 16, 6, 4).to(dtype)
    reference = reference_strided if isinstance(module, StridedShiftedConv2d) else reference_transposed
    expected = reference(x.double(), module.double())
    assert_close(module.to(dtype)(x), expected, dtype)


def test_phase_geometry_of_the_model_layers():
    """The coarse windows the model's resampling layers read (see the module doc)."""
    assert StridedDownShiftedConv2d(1, 1).phase_taps.kernel_size == (2, 2)
    assert StridedDownShiftedConv2d(1, 1).phase_taps.padding == (1, 1)
    assert StridedDownRightShiftedConv2d(1, 1).phase_taps.kernel_size == (2, 2)
    assert DownShiftedConvTranspose2d(1, 1).phase_taps.kernel_size == (1, 2)
    assert DownShiftedConvTranspose2d(1, 1).phase_taps.padding == (0, 0)
    assert DownRightShiftedConvTranspose2d(1, 1).phase_taps.kernel_size == (1, 1)
    # 2x3 at stride 2: 6 taps spread over 4 coarse taps x 4 phases, each reached once
    index = StridedDownShiftedConv2d(1, 1).phase_index
    assert sorted(index[index < 6].tolist()) == list(range(6))


@pytest.mark.parametrize("cls,twin,kwargs", [
    (StridedDownShiftedConv2d, nn.Conv2d, dict(kernel_size=(2, 3), stride=2)),
    (StridedDownRightShiftedConv2d, nn.Conv2d, dict(kernel_size=(2, 2), stride=2)),
    (DownShiftedConvTranspose2d, nn.ConvTranspose2d, dict(kernel_size=(2, 3), stride=2, output_padding=1)),
    (DownRightShiftedConvTranspose2d, nn.ConvTranspose2d, dict(kernel_size=(2, 2), stride=2, output_padding=1)),
])
def test_state_dict_is_the_torch_twins(cls, twin, kwargs):
    torch.manual_seed(0)
    ours, theirs = cls(4, 6), twin(4, 6, **kwargs)
    assert isinstance(ours, twin)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.weight, theirs.weight)
    assert ours.stride == theirs.stride


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="stride"):
        StridedDownShiftedConv2d(2, 2, stride=0)
    with pytest.raises(TypeError, match="stride"):
        DownShiftedConvTranspose2d(2, 2, stride=2.0)
    with pytest.raises(ValueError, match="kernel_size"):
        StridedDownRightShiftedConv2d(2, 2, kernel_size=(2, 2, 2))
    with pytest.raises(ValueError, match="output_size"):
        DownShiftedConvTranspose2d(2, 2)(torch.zeros(1, 2, 2, 2), output_size=(4, 4))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        StridedDownShiftedConv2d(2, 2)(torch.zeros(2, 2, 2))


# --------------------------------------------------------------------------------------------- the model

import fastgen  # noqa: E402
from fastgen.data import DIGITS_LEVELS, load_digits  # noqa: E402
from fastgen.models import PixelCNNpp, scale_pixels  # noqa: E402
from fastgen.sampling import sample, sample_naive  # noqa: E402

LEVELS = 9
SIZE = (8, 8)  # resolutions 8, 4, 2


def full_model(data_channels=1, n_classes=None, n_layers=1, perturb=True, **overrides):
    torch.manual_seed(0)
    model = PixelCNNpp(data_channels, LEVELS, hidden_channels=6, n_layers=n_layers, n_mixtures=2,
                       n_classes=n_classes, architecture="full", **overrides).double()
    if perturb:  # away from the init (zero biases, small output scale): every term matters
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model


def pixels(batch, data_channels=1, size=SIZE, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, LEVELS, (batch, data_channels) + size, generator=g)


def test_full_model_structure():
    """openai's block counts (up: n_layers per resolution; down: n_layers, n_layers + 1, n_layers + 1), skip
    inputs (up: ul gets u; down: u gets the popped u, ul concat(u, popped ul)) and the DMOL output."""
    n = 2
    model = full_model(n_layers=n, perturb=False)
    assert [len(b) for b in model.up_u_blocks] == [n] * 3 == [len(b) for b in model.up_ul_blocks]
    assert [len(b) for b in model.down_u_blocks] == [n, n + 1, n + 1] == [len(b) for b in model.down_ul_blocks]
    assert all(b.skip is None for r in model.up_u_blocks for b in r)
    assert all(b.skip.in_channels == 2 * 6 for r in model.up_ul_blocks for b in r)  # concat_elu(u)
    assert all(b.skip.in_channels == 2 * 6 for r in model.down_u_blocks for b in r)
    assert all(b.skip.in_channels == 2 * 12 for r in model.down_ul_blocks for b in r)  # concat_elu(cat(u, ul))
    assert model(pixels(2)).shape == (2, 3 * 2, *SIZE)
    rgb = full_model(3, n_classes=3, perturb=False)
    assert rgb(pixels(2, 3), torch.tensor([0, 2])).shape == (2, 10 * 2, *SIZE)
    assert rgb.config["architecture"] == "full" and rgb.config["weight_norm"] is True
    rebuilt = PixelCNNpp(**rgb.config).double()
    rebuilt.load_state_dict(rgb.state_dict())  # type(model)(**model.config) rebuilds it for a checkpoint


def test_lite_stays_the_default():
    model = PixelCNNpp(1, LEVELS, hidden_channels=4, n_layers=1, n_mixtures=2)
    assert model.config["architecture"] == "lite" and model.config["weight_norm"] is False
    assert not any("parametrizations" in k for k in model.state_dict())
    assert {k.split(".")[0] for k in model.state_dict()} == {"u_input", "ul_input_up", "ul_input_left", "u_blocks",
                                                            "ul_blocks", "output_conv"}


def test_full_model_bad_arguments():
    with pytest.raises(ValueError, match="architecture"):
        PixelCNNpp(1, LEVELS, architecture="three")
    with pytest.raises(TypeError, match="weight_norm"):
        PixelCNNpp(1, LEVELS, architecture="full", weight_norm=1)
    model = full_model(perturb=False)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(pixels(1, size=(6, 8)))
    with pytest.raises(ValueError, match="weight_norm=True"):
        full_model(perturb=False, weight_norm=False).data_dependent_init(pixels(2))


def test_full_model_is_causal():
    """Reference backend, float64: perturbing input pixel p changes the output at pixels after p only (raster
    order; every channel of p is left out of p's own output), and every output sees its left neighbour and
    the pixel above it."""
    model = full_model(n_layers=1).use_reference(True)
    h, w = SIZE
    x = scale_pixels(pixels(1), LEVELS, torch.float64)
    batch = x.repeat(1 + h * w, 1, 1, 1)
    for p in range(h * w):
        batch[1 + p, 0, p // w, p % w] += 0.75
    with torch.no_grad():
        out = model(batch)
    sees = ((out[1:] - out[:1]).abs().amax(1) > 0).reshape(h * w, h * w)  # [input pixel, output pixel]
    assert not sees.tril().any()  # input p >= output q
    for q in range(h * w):
        assert q % w == 0 or sees[q - 1, q]
        assert q < w or sees[q - w, q]


@pytest.mark.parametrize("data_channels,n_classes", [(1, None), (3, 2)])
def test_full_model_fastgen_equals_reference(data_channels, n_classes):
    """The full model on the fastgen kernels (interpreted on CPU) equals its plain-PyTorch reference layers in
    float64: the DMOL NLL and the gradients of every parameter."""
    model = full_model(data_channels, n_classes)
    x = pixels(2, data_channels)
    y = None if n_classes is None else torch.tensor([0, 1])
    results = []
    for reference in (False, True):
        model.use_reference(reference)
        model.zero_grad()
        loss = model.nll(x, y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss, grads), (ref_loss, ref_grads) = results
    assert_close(loss, ref_loss, torch.float64)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        assert_close(g, r, torch.float64, name)


def test_weight_norm_as_openai():
    """Every convolution's weight is g * v / ||v||, the norm per output channel (dim 1 of a transposed
    convolution's [C_in, C_out, kh, kw] weight)."""
    n = 1
    model = full_model(n_layers=n)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # inputs 3, up blocks 3n x 5 (u: 2 convs, ul: 2 convs + skip), down blocks (3n + 2) x 6, resampling 8, output 1
    assert len(convs) == 3 + 3 * n * 5 + (3 * n + 2) * 6 + 8 + 1
    for cls in (StridedDownShiftedConv2d, StridedDownRightShiftedConv2d, DownShiftedConvTranspose2d,
                DownRightShiftedConvTranspose2d, fastgen.nn.MaskedConv2d, fastgen.nn.DownShiftedConv2d):
        assert any(isinstance(m, cls) for m in convs), cls
    for module in convs:
        g, v = module.parametrizations.weight.original0, module.parametrizations.weight.original1
        dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0
        norm = v.transpose(0, dim).flatten(1).norm(dim=1)
        expected = (v.transpose(0, dim) * (g.flatten() / norm).view(-1, *[1] * (v.dim() - 1))).transpose(0, dim)
        torch.testing.assert_close(module.weight, expected, rtol=1e-12, atol=1e-12)
    keys = model.state_dict().keys()
    assert "upsample_u.0.parametrizations.weight.original0" in keys and "upsample_u.0.bias" in keys
    assert model.upsample_u[0].parametrizations.weight.original0.shape == (1, 6, 1, 1)


def test_data_dependent_init_normalizes_the_first_batch():
    """After openai's init pass every weight-normalized convolution's output on that batch has zero mean and
    standard deviation init_scale per channel (0.1 for the second convolution of each gated resnet)."""
    model = full_model(perturb=False).use_reference(True)
    x = pixels(16)
    out = model.data_dependent_init(x)
    outputs = {}
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    handles = [m.register_forward_hook(lambda m, a, o: outputs.__setitem__(m, o)) for m in convs]
    with torch.no_grad():
        again = model(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(again, out)  # the init pass returned what the initialized model computes
    second = {b.conv_out for b in model.modules() if isinstance(b, fastgen.models.GatedResnet)}
    for module, o in outputs.items():
        torch.testing.assert_close(o.mean((0, 2, 3)), torch.zeros(o.shape[1], dtype=o.dtype), atol=1e-9, rtol=0)
        std = torch.full((o.shape[1],), 0.1 if module in second else 1.0, dtype=o.dtype)
        torch.testing.assert_close(o.std((0, 2, 3), unbiased=False), std, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("data_channels,n_classes", [(1, None), (3, 2)])
def test_cached_steps_equal_the_forward_at_every_pixel(data_channels, n_classes):
    """The full model's row-cache sampler fed a given image (completion): its output at every pixel equals
    the forward's there (float64, reference layers)."""
    model = full_model(data_channels, n_classes, n_layers=2).use_reference(True).eval()
    n, (h, w) = 2, SIZE
    x = pixels(n, data_channels, seed=3)
    y = None if n_classes is None else torch.tensor([1, 0])
    with torch.no_grad():
        expected = model(x, y)
        steps = model.incremental_sampler(n, w, y)
        for row in range(h):
            steps.start_row(row == 0)
            for col in range(w):
                got = steps.output(col)
                assert_close(got, expected[:, :, row, col], torch.float64, f"pixel ({row}, {col})")
                steps.image.put(col, steps.scaled(x[:, :, row, col]))


@pytest.mark.parametrize("data_channels,n_classes", [(1, None), (3, 2)])
def test_full_model_samples_through_the_cached_sampler(data_channels, n_classes):
    """fastgen.sampling.sample (the cached sampler) returns sample_naive's pixels for the same draws, float64."""
    model = full_model(data_channels, n_classes).use_reference(True)
    n = 2
    y = None if n_classes is None else torch.tensor([0, 1])
    naive = sample_naive(model, n, size=SIZE, y=y, generator=torch.Generator().manual_seed(1))
    cached = sample(model, n, size=SIZE, y=y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cached, naive)
    assert len(naive.unique()) > 1
    completed = sample(model, n, size=SIZE, y=y, x=naive, fixed_rows=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(completed[:, :, :3], naive[:, :, :3])
    assert torch.equal(completed, sample_naive(model, n, size=SIZE, y=y, x=naive, fixed_rows=3,
                                               generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="divisible by 4"):
        model.incremental_sampler(n, 6)


def test_full_model_trains_on_digits():
    """A few Adam steps of the full model (8x8 digits: resolutions 8, 4, 2) from openai's data-dependent init
    lower the DMOL NLL of the training batch; then it samples through the cached sampler. On the reference
    layers: an interpreted training step takes minutes on CPU, and the kernels' loss and gradients equal the
    reference's (test_full_model_fastgen_equals_reference)."""
    digits, _ = load_digits()
    torch.manual_seed(0)
    model = PixelCNNpp(1, DIGITS_LEVELS, hidden_channels=8, n_layers=1, n_mixtures=3,
                       architecture="full").use_reference(True)
    batch = digits[:64]
    model.data_dependent_init(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model.nll(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.1
    images = sample(model, 2, size=(8, 8), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8) and 0 <= int(images.min()) and int(images.max()) < DIGITS_LEVELS


def test_cli_trains_the_full_model(tmp_path, capsys):
    """`fastgen train pixelcnnpp --architecture full` on digits: one epoch below the uniform 4.09 bits/dim, a
    checkpoint that rebuilds the full model, samples from the cached sampler; --architecture on another model
    is an error."""
    from fastgen import cli
    from fastgen.training import load_checkpoint

    out = tmp_path / "run"
    assert cli.main(["train", "pixelcnnpp", "--architecture", "full", "--epochs", "1", "--layers", "1",
                     "--hidden-channels", "8", "--batch-size", "64", "--out", str(out), "--samples", "2",
                     "--no-progress", "--device", "cpu"]) == 0
    model, meta = load_checkpoint(out / "pixelcnnpp.pt")
    assert model.architecture == "full" and model.config["weight_norm"]
    assert meta["history"][0]["test_bpd"] < math.log2(DIGITS_LEVELS)
    assert (out / "pixelcnnpp-samples.png").stat().st_size > 0
    assert cli.main(["train", "pixelcnn", "--architecture", "full", "--out", str(tmp_path / "x")]) == 2
    assert "--architecture" in capsys.readouterr().err


def test_lite_model_with_weight_norm_samples_as_naive():
    """weight_norm=True on the lite model: its cached sampler reads the normalized weights."""
    torch.manual_seed(0)
    model = PixelCNNpp(1, LEVELS, hidden_channels=4, n_layers=1, n_mixtures=2, weight_norm=True).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.use_reference(True)
    assert any("parametrizations" in k for k in model.state_dict())
    naive = sample_naive(model, 2, size=(4, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample(model, 2, size=(4, 5), generator=torch.Generator().manual_seed(1)), naive)
