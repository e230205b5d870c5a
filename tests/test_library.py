"""fastgen's ops as a whole under torch.compile: every public op has its custom op, and the training loss of
every model (forward, fastgen's fused losses, backward) compiles with ``fullgraph=True``, with the eager value
and gradients. Each family's own ops are opcheck-ed in its test file (``test_custom_ops_*``)."""

import pytest
import torch

import fastgen
from fastgen import library
from fastgen.benchmarks import bench_training
from fastgen.benchmarks.bench_sampling import SHAPES

# each public op -> the custom op that torch.compile puts in the graph for it
PUBLIC_OPS = {
    "gan_d_loss": "gan_d_loss", "gan_g_loss": "gan_g_loss", "gradient_penalty": "gradient_penalty",
    "reparameterize_kl": "reparameterize_kl", "gumbel_softmax": "gumbel_softmax",
    "pixel_cross_entropy": "pixel_cross_entropy", "dmol_nll": "dmol_nll", "dmol_sample": "dmol_sample",
    "gated_activation": "gated_activation", "masked_conv2d": "tap_conv2d", "tap_conv2d": "tap_conv2d",
    "row_lstm": "row_lstm", "diagonal_lstm": "row_lstm", "diagonal_bilstm": "row_lstm",
    "conv1x1_cross_entropy": "conv1x1_cross_entropy",
    "tap_conv2d_gated": "tap_conv2d_gated", "tap_conv2d_gated_residual": "tap_conv2d_gated",
}
# ops whose backward is other ops' backward ops: the GAN losses' gan_logit_loss_backward; the gated convolutions'
# gated_activation_backward (the tanh gate; the residual gate's gradient is PyTorch ops) and tap_conv2d_backward
REUSED_BACKWARD = {"gan_d_loss", "gan_g_loss", "tap_conv2d_gated"}


def test_every_public_op_has_a_custom_op():
    registered = set(library.registered_ops())
    for public, op in PUBLIC_OPS.items():
        assert callable(getattr(fastgen, public)), public
        assert op in registered, f"fastgen.{public}: no torch.ops.fastgen.{op}"
    differentiable = set(PUBLIC_OPS.values()) - {"dmol_sample"}
    assert {f"{op}_backward" for op in differentiable if op not in REUSED_BACKWARD} <= registered
    assert {"gan_logit_loss_backward", "gated_activation_backward", "tap_conv2d_backward"} <= registered


@pytest.mark.parametrize("family", ["PixelCNN", "GatedPixelCNN", "PixelCNNpp", "VAE", "DCGAN"])
def test_model_loss_compiles_whole(family, device):
    """The benchmark's training loss of a tiny model on fastgen's ops, compiled with fullgraph=True (no graph
    break at any fastgen op), gives eager's loss and parameter gradients."""
    case = bench_training.TrainingCase(family, SHAPES["8x8 grey"], 1, tiny=True)
    model = bench_training.build_training_model(family, case.shape, tiny=True).to(device)
    x = case.images(device, 1)
    noise = bench_training.fixed_noise(model, x)

    def loss(x):
        return bench_training.loss_of(model, x, False, noise)

    params = list(model.parameters())
    eager_loss = loss(x)
    eager_grads = torch.autograd.grad(eager_loss, params, allow_unused=True)
    torch._dynamo.reset()
    compiled_loss = torch.compile(loss, fullgraph=True, backend="aot_eager")(x)
    compiled_grads = torch.autograd.grad(compiled_loss, params, allow_unused=True)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        if expected is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
