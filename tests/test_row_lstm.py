"""fastgen.row_lstm (the fused Row LSTM recurrence) against the plain-PyTorch reference loop (run in float64 as
the oracle)."""

import zlib

import pytest
import torch

import fastgen
import fastgen.ops.row_lstm as op
from fastgen import reference
from fastgen.reference.row_lstm import split_gates
from tolerances import assert_close

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# the two launch forms, forced: one launch per row, or one persistent launch for all rows (a program per image)
FORMS = [pytest.param(False, id="per_row"), pytest.param(True, id="persistent")]


def make(shape, dtype, device, scale=1.0, salt=""):
    g = torch.Generator().manual_seed(zlib.crc32(f"{shape} {dtype} {salt}".encode()))
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device, dtype)


def inputs(batch, n, height, width, k, dtype, device, layout="nchw"):
    """(gates_in [B, 4n, H, W] in ``layout``: "nchw", "channels_last" or "sliced" (a strided window of a larger
    tensor), weight [4n, n, 1, k] scaled as a default-initialized conv weight would be, times 2)."""
    gates_in = make((batch, 4 * n, height, width), dtype, device, 1.5, "gates")
    if layout == "channels_last":
        gates_in = gates_in.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        gates_in = make((batch, 8 * n, height + 1, width + 2), dtype, device, 1.5, "gates")[:, 1::2, 1:, 2:]
    weight = make((4 * n, n, 1, k), dtype, device, 2.0 / (n * k) ** 0.5, "weight")
    return gates_in, weight


def check_against_reference(gates_in, weight, groups, dtype, grad_scale=1.0, persistent=None):
    """Values and the gradients of gates_in and weight for a random grad_output (rounded to ``dtype`` for both
    sides) against the float64 reference on the same inputs; ``persistent`` forces a launch form."""
    leaves = [gates_in.detach().requires_grad_(), weight.detach().requires_grad_()]
    h = fastgen.row_lstm(*leaves, groups=groups, persistent=persistent)
    leaves64 = [x.detach().double().requires_grad_() for x in leaves]
    h_ref = reference.row_lstm(*leaves64, groups=groups)
    assert h.dtype == dtype and h.shape == h_ref.shape
    assert_close(h, h_ref, dtype, "h")
    grad_h = (grad_scale * torch.randn(h.shape, dtype=torch.float64)).to(h.device, dtype)
    grads = torch.autograd.grad(h, leaves, grad_h)
    grads_ref = torch.autograd.grad(h_ref, leaves64, grad_h.double())
    for name, grad, grad_ref in zip(("gates_in", "weight"), grads, grads_ref):
        assert grad.dtype == dtype and grad.shape == grad_ref.shape
        assert_close(grad, grad_ref, dtype, f"grad of {name}")
    return h, grads


@pytest.mark.parametrize("persistent", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_matches_reference(layout, groups, dtype, persistent, device):
    gates_in, weight = inputs(2, 2 * groups, 4, 5, 3, dtype, device, layout)
    check_against_reference(gates_in, weight, groups, dtype, grad_scale=2.0, persistent=persistent)


@pytest.mark.parametrize("persistent", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch, n, height, width, k, groups", [
    (1, 33, 2, 3, 3, 1),  # n > 32: two hidden-unit blocks, the second mostly masked; 4n = 132 gate channels
    (1, 3, 3, 35, 3, 3),  # W > 32: two column blocks, the state-to-state window crosses their border
    (2, 33, 3, 35, 3, 3),  # both: a persistent program runs 4-9 tiles per row (column blocks x unit blocks)
    (3, 5, 3, 1, 3, 1),  # one column: the window's side taps read the zero padding only
    (2, 4, 3, 6, 1, 1),  # k = 1: no neighbour columns
    (1, 6, 3, 7, 5, 3),  # k = 5
    (2, 1, 5, 2, 3, 1),  # one hidden unit, more rows than columns
], ids=str)
def test_odd_shapes(batch, n, height, width, k, groups, dtype, persistent, device):
    gates_in, weight = inputs(batch, n, height, width, k, dtype, device)
    check_against_reference(gates_in, weight, groups, dtype, persistent=persistent)


def test_tiles():
    assert op.plan(2, 33, 35, torch.float32)[0] == (4, 3)  # (B * column blocks, hidden-unit blocks of 16)
    assert op.plan(2, 33, 35, torch.bfloat16)[0] == (4, 2)  # 16-bit: blocks of 32
    # (BLOCK_W, BLOCK_N, forward BLOCK_K, backward BLOCK_K, persistent backward BLOCK_K)
    assert op.plan(2, 16, 16, torch.bfloat16)[2] == (16, 16, 16, 32, 32)
    assert op.plan(2, 33, 35, torch.bfloat16)[2] == (32, 32, 32, 32, 16)  # [32, 32] tiles: 16 when persistent
    assert op.plan(2, 16, 16, torch.float32)[2] == (16, 16, 16, 16, 16)
    assert op.plan(2, 4, 3, torch.float32)[2] == (16, 16, 16, 16, 16)
    assert op.plan(2, 33, 35, torch.float64)[2] == (16, 16, 16, 16, 16)  # float64: 16 everywhere (no spills)


def test_persistent_rule():
    """One launch for all rows when a row has at most PERSISTENT_MAX_TILES tiles per image or the batch fills
    the multiprocessors; one launch per row otherwise, and for a single row."""
    assert op.PERSISTENT_MAX_TILES == 4
    assert op.persistent_rows(batch=1, height=32, tiles=4, multiprocessors=132)
    assert not op.persistent_rows(batch=1, height=32, tiles=5, multiprocessors=132)
    assert not op.persistent_rows(batch=131, height=32, tiles=16, multiprocessors=132)
    assert op.persistent_rows(batch=132, height=32, tiles=16, multiprocessors=132)
    assert not op.persistent_rows(batch=132, height=1, tiles=1, multiprocessors=132)


def _spy_launches(monkeypatch):
    """Counts the launches of each of the op's four kernels (its Kernel objects wrapped)."""
    launched = {}

    class Spy:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launched[self.name] = launched.get(self.name, 0) + 1
            return self.kernel[grid]

    for name in ("_forward_kernel", "_backward_kernel", "_persistent_forward_kernel", "_persistent_backward_kernel"):
        monkeypatch.setattr(op, name, Spy(name.strip("_"), getattr(op, name)))
    return launched


@pytest.mark.parametrize("persistent, expected", [
    (False, dict(forward_kernel=5, backward_kernel=5)),
    (True, dict(persistent_forward_kernel=1, persistent_backward_kernel=1)),
    # None: 1 tile per image of 16 columns x 16 units, so the rule picks the persistent form
    (None, dict(persistent_forward_kernel=1, persistent_backward_kernel=1)),
], ids=["per_row", "persistent", "rule"])
def test_launches_per_form(persistent, expected, device, monkeypatch):
    """H = 5 rows: five launches each way per row, one each way persistent; the same values either way (the
    gradient of h.sum(): grad_h with zero strides)."""
    gates_in, weight = (x.requires_grad_() for x in inputs(2, 3, 5, 4, 3, torch.float64, device))
    launched = _spy_launches(monkeypatch)
    h = fastgen.row_lstm(gates_in, weight, persistent=persistent)
    grads = torch.autograd.grad(h.sum(), [gates_in, weight])
    assert launched == expected
    monkeypatch.undo()
    h_other = fastgen.row_lstm(gates_in, weight, persistent=not persistent)
    torch.testing.assert_close(h, h_other, rtol=0, atol=1e-14)
    for grad, other in zip(grads, torch.autograd.grad(h_other.sum(), [gates_in, weight])):
        torch.testing.assert_close(grad, other, rtol=0, atol=1e-13)


def test_rule_keeps_per_row_launches_for_many_tiles(device, monkeypatch):
    """float32, n = 80 and W = 17: 2 column blocks x 5 unit blocks = 10 tiles per image and a batch of 1, so
    the rule keeps one launch per row (3 rows: 3 launches each way)."""
    gates_in, weight = (x.requires_grad_() for x in inputs(1, 80, 3, 17, 1, torch.float32, device))
    launched = _spy_launches(monkeypatch)
    fastgen.row_lstm(gates_in, weight).sum().backward()
    assert launched == dict(forward_kernel=3, backward_kernel=3)


def test_gate_layout():
    """Gate q of hidden unit c = g * m + j is channel g * 4m + q * m + j; one group: z.chunk(4, 1)."""
    z = torch.arange(24.0).view(1, 24)
    o, f, i, g = split_gates(z, groups=3)  # m = 2
    assert o.tolist() == [[0, 1, 8, 9, 16, 17]] and g.tolist() == [[6, 7, 14, 15, 22, 23]]
    assert all(torch.equal(a, b) for a, b in zip(split_gates(z), z.chunk(4, 1)))


def test_reference_is_the_lstm_recurrence():
    """The reference's first two rows written out: z_0 = gates_in_0; z_1 = gates_in_1 + conv1d(h_0)."""
    gates_in, weight = inputs(2, 3, 2, 4, 3, torch.float64, "cpu")
    o, f, i, g = gates_in[:, :, 0].chunk(4, 1)
    c0 = torch.sigmoid(i) * torch.tanh(g)
    h0 = torch.sigmoid(o) * torch.tanh(c0)
    z1 = gates_in[:, :, 1] + torch.nn.functional.conv1d(h0, weight[:, :, 0], padding=1)
    o, f, i, g = z1.chunk(4, 1)
    c1 = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
    h1 = torch.sigmoid(o) * torch.tanh(c1)
    torch.testing.assert_close(reference.row_lstm(gates_in, weight), torch.stack([h0, h1], 2))


def test_saturated_gates(device):
    """|z| up to ~40: sigmoid and tanh saturate without overflow or nan in both directions."""
    gates_in, weight = inputs(2, 3, 3, 4, 3, torch.float32, device)
    check_against_reference(25 * gates_in, 10 * weight, 1, torch.float32)


@pytest.mark.parametrize("persistent", FORMS)
def test_no_grad_keeps_nothing_more(persistent, device):
    """Without a gradient the pre-activations are not written; the values are the same."""
    gates_in, weight = (x.requires_grad_() for x in inputs(2, 3, 3, 4, 3, torch.float32, device))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        h = fastgen.row_lstm(gates_in, weight, persistent=persistent)
    assert [tuple(s.shape) for s in saved] == [(2, 12, 3, 4), (2, 3, 3, 4), (12, 3, 1, 3), (2, 3, 3, 4)]
    with torch.no_grad():
        assert torch.equal(fastgen.row_lstm(gates_in, weight, persistent=persistent), h)


@pytest.mark.parametrize("persistent", FORMS)
def test_weight_only_and_gates_only_gradients(persistent, device):
    gates_in, weight = inputs(2, 3, 3, 4, 3, torch.float64, device)
    w = weight.clone().requires_grad_()
    (grad_w,) = torch.autograd.grad(fastgen.row_lstm(gates_in, w, persistent=persistent).sum(), [w])
    g = gates_in.clone().requires_grad_()
    (grad_g,) = torch.autograd.grad(fastgen.row_lstm(g, weight, persistent=persistent).sum(), [g])
    w64, g64 = weight.clone().requires_grad_(), gates_in.clone().requires_grad_()
    ref = torch.autograd.grad(reference.row_lstm(g64, w64).sum(), [g64, w64])
    assert_close(grad_g, ref[0], torch.float64)
    assert_close(grad_w, ref[1], torch.float64)


def test_backend_switch(device):
    gates_in, weight = inputs(2, 3, 3, 4, 3, torch.float64, device)
    with fastgen.use_backend("reference"):
        expected = fastgen.row_lstm(gates_in, weight)
    assert_close(fastgen.row_lstm(gates_in, weight), expected, torch.float64)


# ---------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("persistent", FORMS)
@pytest.mark.parametrize("groups, layout, k", [(1, "nchw", 3), (3, "channels_last", 3), (1, "sliced", 5)])
def test_gradcheck(groups, layout, k, persistent, device):
    gates_in, weight = (x.requires_grad_() for x in inputs(2, groups, 3, 4, k, torch.float64, device, layout))
    fn = lambda g, w: fastgen.row_lstm(g, w, groups=groups, persistent=persistent)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [gates_in, weight], eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("persistent", FORMS)
def test_gradcheck_full(persistent, device):
    gates_in, weight = (x.requires_grad_() for x in inputs(1, 2, 3, 3, 3, torch.float64, device))
    fn = lambda g, w: fastgen.row_lstm(g, w, persistent=persistent)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [gates_in, weight], eps=1e-6, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("persistent", FORMS)
@pytest.mark.parametrize("shape", [(0, 12, 3, 3), (2, 12, 0, 3), (2, 12, 3, 0), (2, 0, 3, 3)], ids=str)
def test_empty(shape, persistent, device):
    n = shape[1] // 4
    gates_in = torch.zeros(shape, device=device).requires_grad_()
    weight = torch.zeros((4 * n, n, 1, 3), device=device).requires_grad_()
    h = fastgen.row_lstm(gates_in, weight, persistent=persistent)
    assert h.shape == (shape[0], n, *shape[2:])
    h.sum().backward()
    assert gates_in.grad.shape == gates_in.shape and not gates_in.grad.any()
    assert weight.grad is None or not weight.grad.any()


def test_errors(device):
    gates_in = torch.zeros(2, 12, 3, 3, device=device)
    weight = torch.zeros(12, 3, 1, 3, device=device)
    with pytest.raises(TypeError, match="gates_in must be a torch.Tensor"):
        fastgen.row_lstm(gates_in.tolist(), weight)
    with pytest.raises(TypeError, match="gates_in must be a floating-point"):
        fastgen.row_lstm(gates_in.long(), weight)
    with pytest.raises(ValueError, match=r"gates_in must have shape \[B, 4n, H, W\]"):
        fastgen.row_lstm(gates_in[0], weight)
    with pytest.raises(ValueError, match="gates_in has 10 channels"):
        fastgen.row_lstm(gates_in[:, :10], weight)
    with pytest.raises(ValueError, match="multiple of 4 \\* groups = 8"):
        fastgen.row_lstm(gates_in, weight, groups=2)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        fastgen.row_lstm(gates_in, weight, groups=0)
    with pytest.raises(TypeError, match="groups must be an int"):
        fastgen.row_lstm(gates_in, weight, groups=1.0)
    with pytest.raises(TypeError, match="positional"):
        fastgen.row_lstm(gates_in, weight, 1)  # groups is keyword-only
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        fastgen.row_lstm(gates_in, None)
    with pytest.raises(TypeError, match="weight has dtype"):
        fastgen.row_lstm(gates_in, weight.double())
    with pytest.raises(ValueError, match="weight is on meta"):
        fastgen.row_lstm(gates_in, torch.zeros(12, 3, 1, 3, device="meta"))
    with pytest.raises(ValueError, match=r"weight must have shape \[4n, n, 1, k\] = \[12, 3, 1, k\] with k odd"):
        fastgen.row_lstm(gates_in, weight[..., :2])
    with pytest.raises(ValueError, match=r"weight must have shape"):
        fastgen.row_lstm(gates_in, torch.zeros(12, 3, 3, device=device))
    with pytest.raises(ValueError, match=r"weight must have shape"):
        fastgen.row_lstm(gates_in, torch.zeros(12, 4, 1, 3, device=device))
    with pytest.raises(TypeError, match="persistent must be None .*, True or False, got int 1"):
        fastgen.row_lstm(gates_in, weight, persistent=1)
    with pytest.raises(TypeError, match="persistent must be None"):
        fastgen.diagonal_lstm(gates_in, torch.zeros(12, 3, 2, 1, device=device), persistent="yes")


# ---------------------------------------------------------------------------------------------- custom ops
@pytest.mark.parametrize("layout, persistent", [("nchw", None), ("channels_last", False), ("nchw", True)])
def test_custom_ops_pass_opcheck(layout, persistent, device):
    from library_checks import check_opcheck

    gates_in, weight = (x.requires_grad_() for x in inputs(2, 3, 3, 4, 3, torch.float32, device, layout))
    check_opcheck(torch.ops.fastgen.row_lstm.default, gates_in, weight, 3, True, persistent)
    check_opcheck(torch.ops.fastgen.row_lstm.default, gates_in.detach(), weight.detach(), 1, False, persistent)
    _, cell, gates = torch.ops.fastgen.row_lstm(gates_in.detach(), weight.detach(), 1, True, persistent)
    hidden = fastgen.row_lstm(gates_in.detach(), weight.detach())
    grad_h = make((2, 3, 3, 4), torch.float32, device, salt="grad_h")
    check_opcheck(torch.ops.fastgen.row_lstm_backward.default, grad_h, gates, cell, weight.detach(), hidden, 1,
                  True, True, persistent)


@pytest.mark.parametrize("persistent", [None, False])
def test_compiles_without_graph_breaks(persistent, device):
    from library_checks import check_fullgraph

    gates_in, weight = (x.requires_grad_() for x in inputs(2, 3, 3, 4, 3, torch.float32, device))
    check_fullgraph(lambda g, w: fastgen.row_lstm(2 * g, w, groups=3, persistent=persistent), gates_in, weight)


def test_benchmark_cases_force_each_launch_form(device, monkeypatch):
    """bench_row_lstm's "per-row" and "persistent" cases run the op in the form they name (on small inputs here:
    4 rows, so 4 launches against 1)."""
    from fastgen.benchmarks import bench_row_lstm

    gates_in, weight = inputs(1, 3, 4, 4, 3, torch.float32, device)
    forms = {"per-row": dict(forward_kernel=4), "persistent": dict(persistent_forward_kernel=1)}
    forced = [c for c in bench_row_lstm.CASES if c.name.split()[-1] in forms]
    assert len(forced) == 4
    for case in forced:
        launched = _spy_launches(monkeypatch)
        with torch.no_grad():
            case.fastgen(gates_in=gates_in, weight=weight)
        assert launched == forms[case.name.split()[-1]], case.name
        monkeypatch.undo()
