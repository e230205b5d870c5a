"""fastgen.gated_activation against the plain-PyTorch reference (run in float64 as the oracle)."""

import zlib

import pytest
import torch

import fastgen
from fastgen import reference
import fastgen.ops.gated_activation as op
from fastgen.models.gated_pixelcnn import gated_activation as model_gated_activation
from tolerances import assert_close

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def make(shape, dtype, device, scale=2.0, salt=""):
    g = torch.Generator().manual_seed(zlib.crc32(f"{shape} {dtype} {salt}".encode()))
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device, dtype)


def inputs(batch, channels, height, width, dtype, device, layout="nchw"):
    """(t, other, bias) with t and other in ``layout``: "nchw", "channels_last", or "sliced" (a strided window
    of a larger tensor whose H and W do not merge: the kernel's H-rows path)."""
    t, other = (make((batch, channels, height, width), dtype, device, salt=s) for s in ("t", "other"))
    if layout == "channels_last":
        t, other = t.contiguous(memory_format=torch.channels_last), other.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        t = make((batch, 2 * channels, height, width + 3), dtype, device, salt="t")[:, 1::2, :, 2:-1]
        other = make((batch, channels, height + 1, width + 1), dtype, device, salt="o")[:, :, 1:, :-1]
        assert op.pixel_layout([t, other])[0] == height  # H rows of W pixels
    bias = make((batch, channels), dtype, device, salt="bias")
    return t, other, bias


def check_against_reference(t, other, bias, groups, dtype, grad_scale=1.0):
    """Values, and the gradients of t, other and bias for a random grad_output (rounded to ``dtype`` for both
    sides), against the float64 reference on the same inputs."""
    leaves = [x.detach().requires_grad_() if x is not None else None for x in (t, other, bias)]
    y = fastgen.gated_activation(*leaves, groups=groups)
    leaves64 = [x.detach().double().requires_grad_() if x is not None else None for x in (t, other, bias)]
    y_ref = reference.gated_activation(*leaves64, groups=groups)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, dtype, "y")
    grad_y = (grad_scale * torch.randn(y.shape, dtype=torch.float64)).to(y.device, dtype)
    given = [x for x in leaves if x is not None]
    grads = torch.autograd.grad(y, given, grad_y)
    grads_ref = torch.autograd.grad(y_ref, [x for x in leaves64 if x is not None], grad_y.double())
    for name, grad, grad_ref in zip(("t", "other", "bias"), grads, grads_ref):
        assert grad.dtype == dtype and grad.shape == grad_ref.shape
        assert_close(grad, grad_ref, dtype, f"grad of {name}")
    return y, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_matches_reference(layout, groups, dtype, device):
    t, other, bias = inputs(2, 4 * groups, 3, 5, dtype, device, layout)
    y, _ = check_against_reference(t, other, bias, groups, dtype)
    if layout == "channels_last":  # the output keeps a channels-last input's layout
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()


@pytest.mark.parametrize("with_other, with_bias", [(False, False), (True, False), (False, True)])
def test_optional_other_and_bias(with_other, with_bias, device):
    t, other, bias = inputs(2, 6, 4, 3, torch.float32, device)
    check_against_reference(t, other if with_other else None, bias if with_bias else None, 1, torch.float32)


def test_several_channel_blocks(device):
    """n = 40 output channels: two 32-channel blocks, the second partly masked; n / groups = 20 crosses them."""
    assert op.tile_for(40, torch.float32)[0] == 32
    t, other, bias = inputs(1, 80, 2, 3, torch.float32, device)
    check_against_reference(t, other, bias, 2, torch.float32)
    check_against_reference(t.contiguous(memory_format=torch.channels_last), other, bias, 2, torch.float32)


def test_group_layout():
    """Output group g reads the halves of input group g: the layout of the model's original gate."""
    t = torch.randn(2, 12, 3, 3, dtype=torch.float64)
    a = torch.cat([t[:, 0:2], t[:, 4:6], t[:, 8:10]], 1)
    b = torch.cat([t[:, 2:4], t[:, 6:8], t[:, 10:12]], 1)
    torch.testing.assert_close(reference.gated_activation(t, groups=3), torch.tanh(a) * torch.sigmoid(b))
    torch.testing.assert_close(reference.gated_activation(t), torch.tanh(t[:, :6]) * torch.sigmoid(t[:, 6:]))


def test_model_gate_keeps_its_signature_on_2d_rows():
    """fastgen.sampling calls the model's gated_activation(t, groups) on [n, 2n] rows."""
    t = torch.randn(5, 6, dtype=torch.float64)
    expected = torch.cat([torch.tanh(t[:, 2 * g:2 * g + 1]) * torch.sigmoid(t[:, 2 * g + 1:2 * g + 2])
                          for g in range(3)], 1)
    torch.testing.assert_close(model_gated_activation(t, 3), expected)
    torch.testing.assert_close(model_gated_activation(t[:, :, None, None], 3)[:, :, 0, 0], expected)


def test_other_and_t_get_the_same_gradient(device):
    t, other, bias = (x.requires_grad_() for x in inputs(2, 6, 3, 4, torch.float32, device))
    fastgen.gated_activation(t, other, bias).sum().backward()  # an expanded (stride 0) grad_output
    assert torch.equal(t.grad, other.grad)
    torch.testing.assert_close(bias.grad, t.grad.sum((2, 3)))


def test_mixed_layouts_and_large_values(device):
    """t channels-last, other NCHW: no common merge of the strides; |s| up to ~40 saturates tanh and sigmoid."""
    t, other, bias = inputs(2, 8, 3, 4, torch.float32, device)
    check_against_reference(10 * t.contiguous(memory_format=torch.channels_last), 10 * other, bias, 2,
                            torch.float32)


def test_pixel_layout():
    x = torch.empty(2, 6, 4, 5)
    assert op.pixel_layout([x])[:2] == (1, 20)
    assert op.pixel_layout([x, x.contiguous(memory_format=torch.channels_last)])[:2] == (1, 20)
    assert op.pixel_layout([x[:, :, :, 1:]])[:2] == (4, 4)
    assert op.pixel_layout([x[:, :, :, :1]]) == (1, 4, [(120, 20, 0, 5)])


# ---------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("groups, layout", [(1, "nchw"), (3, "channels_last"), (3, "sliced")])
def test_gradcheck(groups, layout, device):
    t, other, bias = (x.requires_grad_() for x in inputs(2, 2 * groups, 2, 3, torch.float64, device, layout))
    fn = lambda t, other, bias: fastgen.gated_activation(t, other, bias, groups=groups)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t, other, bias], eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_gradcheck_t_only(device):
    t = make((1, 4, 2, 2), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fastgen.gated_activation(t), [t], eps=1e-6, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("shape", [(0, 6, 3, 3), (2, 6, 0, 3), (2, 0, 3, 3)], ids=str)
def test_empty(shape, device):
    t, other = (torch.zeros(shape, device=device).requires_grad_() for _ in range(2))
    bias = torch.zeros(shape[:2], device=device).requires_grad_()
    y = fastgen.gated_activation(t, other, bias, groups=1)
    assert y.shape == (shape[0], shape[1] // 2, *shape[2:])
    y.sum().backward()
    assert t.grad.shape == t.shape and bias.grad.shape == bias.shape and not bias.grad.any()


def test_errors(device):
    t = torch.zeros(2, 6, 3, 3, device=device)
    with pytest.raises(TypeError, match="t must be a torch.Tensor"):
        fastgen.gated_activation(t.tolist())
    with pytest.raises(TypeError, match="t must be a floating-point"):
        fastgen.gated_activation(t.long())
    with pytest.raises(ValueError, match=r"t must have shape \[B, 2n, H, W\]"):
        fastgen.gated_activation(t[0])
    with pytest.raises(ValueError, match="t has 5 channels"):
        fastgen.gated_activation(t[:, :5])
    with pytest.raises(ValueError, match="multiple of 2 \\* groups = 4"):
        fastgen.gated_activation(t, groups=2)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        fastgen.gated_activation(t, groups=0)
    with pytest.raises(TypeError, match="groups must be an int"):
        fastgen.gated_activation(t, groups=True)
    with pytest.raises(TypeError, match="positional"):
        fastgen.gated_activation(t, None, None, 3)  # groups is keyword-only
    with pytest.raises(ValueError, match="other has shape"):
        fastgen.gated_activation(t, t[:, :, :2])
    with pytest.raises(TypeError, match="other has dtype"):
        fastgen.gated_activation(t, t.double())
    with pytest.raises(ValueError, match="other is on meta"):
        fastgen.gated_activation(t, torch.zeros(2, 6, 3, 3, device="meta"))
    with pytest.raises(ValueError, match=r"bias has shape \(6,\) but must have shape \(2, 6\)"):
        fastgen.gated_activation(t, bias=t[0, :, 0, 0])
    with pytest.raises(TypeError, match="bias has dtype"):
        fastgen.gated_activation(t, bias=t[:, :, 0, 0].half())


def test_saves_one_tensor_for_the_backward(device):
    """With other, the forward keeps s = t + other + bias (one [B, 2n, H, W] tensor) rather than t and other;
    without a gradient it writes nothing more than y (same values)."""
    t, other, bias = (x.requires_grad_() for x in inputs(2, 6, 3, 4, torch.float32, device))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        y = fastgen.gated_activation(t, other, bias)
    assert len(saved) == 1 and saved[0].shape == t.shape
    torch.testing.assert_close(saved[0], t + other + bias[:, :, None, None])
    with torch.no_grad():
        assert torch.equal(fastgen.gated_activation(t, other, bias), y)


# ---------------------------------------------------------------------------------------------- custom ops
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
@pytest.mark.parametrize("with_other, with_bias", [(True, True), (False, True), (True, False), (False, False)])
def test_custom_ops_pass_opcheck(with_other, with_bias, layout, device):
    from library_checks import check_opcheck

    t, other, bias = (x.requires_grad_() for x in inputs(2, 6, 3, 4, torch.float32, device, layout))
    other, bias = other if with_other else None, bias if with_bias else None
    check_opcheck(torch.ops.fastgen.gated_activation.default, t, other, bias, 3, True)
    # no gradient wanted: s is not written
    check_opcheck(torch.ops.fastgen.gated_activation.default, t.detach(), None if other is None else other.detach(),
                  None if bias is None else bias.detach(), 1, False)
    grad_out = make((2, 3, 3, 4), torch.float32, device, salt="grad_out")
    check_opcheck(torch.ops.fastgen.gated_activation_backward.default, t.detach(),
                  None if bias is None else bias.detach(), grad_out, 3)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_compiles_without_graph_breaks(layout, device):
    from library_checks import check_fullgraph

    t, other, bias = (x.requires_grad_() for x in inputs(2, 8, 3, 4, torch.float32, device, layout))

    def gates(t, other, bias):
        return fastgen.gated_activation(t, other, bias, groups=2), fastgen.gated_activation(t)

    check_fullgraph(gates, t, other, bias)
