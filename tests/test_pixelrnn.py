"""PixelRNN (Row LSTM and Diagonal BiLSTM): shapes, causality, the fastgen path against the reference path, the
cached sampler against the naive one, the nn.RowLSTM and nn.DiagonalBiLSTM layers, the diagonal reference."""

import pytest
import torch

import fastgen
from fastgen.models import PixelRNN
from fastgen.nn import DiagonalBiLSTM, RowLSTM
from fastgen.reference.diagonal_lstm import diagonal_bilstm, diagonal_lstm, skew, unskew
from fastgen.reference.row_lstm import lstm_cell
from fastgen.sampling import sample_naive
from tolerances import assert_close


def small_model(data_channels=1, levels=5, n_classes=None, dtype=torch.float64, kind="row", **kwargs):
    kwargs = dict(dict(hidden_channels=3 * data_channels, n_layers=2, kernel_size=5, hidden_kernel_size=3), **kwargs)
    torch.manual_seed(0)
    model = PixelRNN(kind, data_channels=data_channels, levels=levels, n_classes=n_classes, **kwargs)
    with torch.no_grad():  # larger weights than the default init: saturating gates, visible dependencies
        for p in model.parameters():
            p.mul_(2.0)
    return model.to(dtype)


@pytest.mark.parametrize("kind", ["row", "diagonal"])
def test_forward_shapes(kind):
    model = small_model(3, levels=7, n_classes=4, dtype=torch.float32, kind=kind)
    x = torch.randint(0, 7, (2, 3, 4, 6))
    assert model(x, torch.tensor([0, 3])).shape == (2, 7, 3, 4, 6)
    assert PixelRNN(**model.config).config == model.config
    assert f"kind='{kind}'" in repr(model)


def _subpixel_logits(logits):
    """[B, levels, C, H, W] -> [B, H * W * C, levels] in raster order (rows, columns, channels)."""
    return logits.permute(0, 3, 4, 2, 1).flatten(1, 3)


@pytest.mark.parametrize("kind", ["row", "diagonal"])
@pytest.mark.parametrize("data_channels", [1, 3])
def test_causal(data_channels, kind):
    """Changing sub-pixel p changes the logits of sub-pixels after p only (and of the next one in its row)."""
    model = small_model(data_channels, kind=kind).use_reference(True)
    height, width, levels = 5, 5, model.levels
    n_sub = height * width * data_channels
    after = torch.arange(n_sub)[None, :] > torch.arange(n_sub)[:, None]
    changed = torch.zeros(n_sub, n_sub, dtype=torch.bool)  # [perturbed sub-pixel, sub-pixel], over 3 images
    for _ in range(3):  # a ReLU can hide a dependency in one image: "sees" is taken over three
        x = torch.randint(0, levels, (1, data_channels, height, width))
        batch = x.repeat(n_sub + 1, 1, 1, 1)
        for s in range(n_sub):  # image s + 1 has sub-pixel s changed
            pixel, channel = divmod(s, data_channels)
            row, col = divmod(pixel, width)
            batch[s + 1, channel, row, col] = (x[0, channel, row, col] + 1 + s % (levels - 1)) % levels
        with torch.no_grad():
            logits = _subpixel_logits(model(batch))
        changed_here = (logits[1:] - logits[:1]).abs().amax(-1) > 1e-12
        assert not (changed_here & ~after).any(), "a logit depends on its own or a later sub-pixel"
        changed |= changed_here
    in_row = torch.arange(n_sub - 1)
    in_row = in_row[(in_row // data_channels) % width != width - 1]  # not the last sub-pixel of a row
    assert changed[in_row, in_row + 1].all(), "a sub-pixel does not see the one before it in its row"
    sub = lambda row, col: (row * width + col) * data_channels  # noqa: E731
    if kind == "row":
        # the Row LSTM's triangular context (the paper's figure 2): the state-to-state 1 x 3 window widens it by
        # one column per row and layer, so the last pixel of row 0 is not seen from the start of row 2 ...
        assert not changed[sub(0, width - 1), sub(2, 0)]
        # ... but from column 1 of row 2
        assert changed[sub(0, width - 1), sub(2, 1)]
    else:
        # the Diagonal BiLSTM's right-to-left direction carries the whole row above into the row below it: the
        # last pixel of row 0 (which enters the LSTMs at row 1, through the mask-A input window) is seen from the
        # start of row 2; and the last sub-pixel sees every sub-pixel before it
        assert changed[sub(0, width - 1), sub(2, 0)]
        assert changed[:-data_channels, -1].all()


@pytest.mark.parametrize("kind", ["row", "diagonal"])
@pytest.mark.parametrize("data_channels", [1, 3])
def test_kernels_match_the_reference_path(data_channels, kind, device):
    """The model on fastgen's kernels (compiled, or interpreted on CPU) against the same parameters on the
    reference layers: logits and parameter gradients, float64."""
    model = small_model(data_channels, n_classes=2, kind=kind).to(device)
    x = torch.randint(0, model.levels, (2, data_channels, 3, 4), device=device)
    y = torch.tensor([0, 1], device=device)
    out = model(x, y)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    model.use_reference(True)
    out_ref = model(x, y)
    grads_ref = torch.autograd.grad(out_ref.square().sum(), list(model.parameters()))
    assert_close(out, out_ref, torch.float64)
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, torch.float64)


@pytest.mark.parametrize("kind", ["row", "diagonal"])
@pytest.mark.parametrize("data_channels, n_classes", [(1, None), (3, None), (1, 3)])
def test_cached_sampler_equals_naive(data_channels, n_classes, kind):
    model = small_model(data_channels, n_classes=n_classes, kind=kind).use_reference(True)
    n, size = 3, (4, 5)
    uniforms = torch.rand((n, data_channels, *size), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = None if n_classes is None else torch.tensor([0, 2, 1])
    cached = model.sample_cached(y=y, uniforms=uniforms)
    naive = sample_naive(model, y=y, uniforms=uniforms)
    assert cached.dtype == torch.long and cached.shape == (n, data_channels, *size)
    assert torch.equal(cached, naive)
    assert len(cached.unique()) > 1
    # the same seed gives the same draws
    a = model.sample_cached(2, size=(2, 3), y=None if y is None else y[:2],
                            generator=torch.Generator().manual_seed(5))
    b = model.sample_cached(2, size=(2, 3), y=None if y is None else y[:2],
                            generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_cached_sampler_errors():
    model = small_model(1, n_classes=2)
    with pytest.raises(ValueError, match="give n and size"):
        model.sample_cached(2)
    with pytest.raises(ValueError, match="y .* is required"):
        model.sample_cached(2, size=(2, 2))
    with pytest.raises(ValueError, match=r"uniforms must have shape \[n, 1, H, W\]"):
        model.sample_cached(uniforms=torch.rand(2, 3, 2, 2, dtype=torch.float64), y=torch.tensor([0, 1]))


def test_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        PixelRNN("column")
    with pytest.raises(ValueError, match=r"hidden_channels \(4\) must be divisible by data_channels \(3\)"):
        PixelRNN(data_channels=3, hidden_channels=4)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        RowLSTM(4, 4, kernel_size=2)
    with pytest.raises(ValueError, match="x must have shape"):
        small_model(3)(torch.zeros(1, 1, 2, 2, dtype=torch.long))


def test_row_lstm_module(device):
    """nn.RowLSTM = the masked 1 x k input-to-state conv, then fastgen.row_lstm with its state-to-state weight;
    mask A leaves out the current column."""
    layer = RowLSTM(3, 6, 3, "A", data_channels=3).double().to(device)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device)
    expected = fastgen.reference.row_lstm(layer.input_to_state(x), layer.state_to_state.weight, groups=3)
    assert_close(layer(x), expected, torch.float64)
    assert layer.input_to_state.taps.diagram() == "xc"  # columns x-1 and x (x: the lower channel groups only)
    assert "mask_type='A'" in repr(layer)


def test_cli_train_and_sample_round_trip(tmp_path, capsys):
    """`fastgen train pixelrnn` writes a checkpoint that loads as a PixelRNN; `fastgen sample` draws from it
    with the model's cached sampler, and `--naive` with the naive one: the same grid for the same seed."""
    import numpy as np

    from fastgen import cli
    from fastgen.training import load_checkpoint

    data = tmp_path / "tiny.npy"
    np.save(data, np.random.default_rng(0).integers(0, 4, (16, 4, 4)).astype(np.uint8))
    out = tmp_path / "run"
    assert cli.main(["train", "pixelrnn", "--data", str(data), "--epochs", "1", "--layers", "1", "--hidden-channels",
                     "4", "--batch-size", "8", "--samples", "0", "--no-progress", "--out", str(out)]) == 0
    model, meta = load_checkpoint(out / "pixelrnn.pt")
    assert isinstance(model, PixelRNN) and model.config["kind"] == "row" and len(meta["history"]) == 1
    for extra, name in (([], "cached.png"), (["--naive"], "naive.png")):
        assert cli.main(["sample", str(out / "pixelrnn.pt"), "-n", "2", "--seed", "1", "--no-progress",
                         "-o", str(tmp_path / name), *extra]) == 0
    assert (tmp_path / "cached.png").read_bytes() == (tmp_path / "naive.png").read_bytes()
    capsys.readouterr()


# ------------------------------------------------------------------------------------ the Diagonal BiLSTM
def test_skew_unskew():
    x = torch.arange(24.0).view(1, 2, 3, 4)
    s = skew(x)
    assert s.shape == (1, 2, 3, 6) and s[0, 0, 2].tolist() == [0, 0, 8, 9, 10, 11]
    assert torch.equal(unskew(s, 4), x)


def _diagonal_in_image_coordinates(gates_in, weight, groups):
    """An independent oracle: the left-to-right diagonal LSTM pixel by pixel, state (r, c) from the states above
    (tap 0) and to the left (tap 1), the cell carried from the left."""
    batch, four_n, height, width = gates_in.shape
    n = four_n // 4
    h = gates_in.new_zeros((batch, n, height, width))
    c = gates_in.new_zeros((batch, n, height, width))
    w_above, w_left = weight[:, :, 0, 0], weight[:, :, 1, 0]
    for r in range(height):
        for col in range(width):
            z = gates_in[:, :, r, col].clone()
            if r > 0:
                z += h[:, :, r - 1, col] @ w_above.T
            if col > 0:
                z += h[:, :, r, col - 1] @ w_left.T
            h[:, :, r, col], c[:, :, r, col] = lstm_cell(z, c[:, :, r, col - 1] if col > 0 else None, groups)
    return h


@pytest.mark.parametrize("groups, shape", [(1, (2, 3, 4, 5)), (3, (1, 6, 5, 3))])
def test_diagonal_lstm_reference(groups, shape):
    batch, n, height, width = shape
    gates_in = torch.randn(batch, 4 * n, height, width, dtype=torch.float64)
    weight = torch.randn(4 * n, n, 2, 1, dtype=torch.float64)
    torch.testing.assert_close(diagonal_lstm(gates_in, weight, groups=groups),
                               _diagonal_in_image_coordinates(gates_in, weight, groups))
    right = torch.randn_like(gates_in)
    weight_right = torch.randn_like(weight)
    both = diagonal_bilstm(gates_in, right, weight, weight_right, groups=groups)
    mirrored = _diagonal_in_image_coordinates(right.flip(3), weight_right, groups).flip(3)
    expected = _diagonal_in_image_coordinates(gates_in, weight, groups)
    expected[:, :, 1:] += mirrored[:, :, :-1]  # the right-to-left direction shifted down one row
    torch.testing.assert_close(both, expected)


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)], ids=str)
def test_diagonal_empty(shape):
    batch, n, height, width = shape
    gates_in = torch.zeros(batch, 4 * n, height, width, requires_grad=True)
    h = diagonal_lstm(gates_in, torch.zeros(4 * n, n, 2, 1))
    assert h.shape == shape
    h.sum().backward()
    assert gates_in.grad.shape == gates_in.shape


def test_diagonal_module(device):
    layer = DiagonalBiLSTM(3, 6, "A", data_channels=3).double().to(device)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device)
    expected = diagonal_bilstm(layer.input_to_state(x), layer.input_to_state_right(x), layer.state_to_state.weight,
                               layer.state_to_state_right.weight, groups=3)
    assert_close(layer(x), expected, torch.float64)
    with pytest.raises(ValueError, match=r"hidden_channels \(4\) must be divisible by data_channels \(3\)"):
        DiagonalBiLSTM(3, 4, data_channels=3)


DIAGONAL_DTYPES = [torch.float64, torch.float32, torch.bfloat16]


@pytest.mark.parametrize("persistent", [pytest.param(False, id="per_column"), pytest.param(True, id="persistent")])
@pytest.mark.parametrize("dtype", DIAGONAL_DTYPES, ids=str)
@pytest.mark.parametrize("groups, shape", [(1, (2, 2, 4, 5)), (3, (1, 3, 3, 2)), (1, (1, 1, 1, 4))], ids=str)
def test_fused_diagonal_lstm_matches_reference(groups, shape, dtype, persistent, device):
    """fastgen.diagonal_lstm (the Row LSTM's kernels on the skewed, transposed map, in both launch forms) against
    the reference loop over the skewed columns, evaluated in float64: h and the gradients of gates_in and the
    weight."""
    batch, n, height, width = shape
    gen = torch.Generator().manual_seed(3)
    gates64 = torch.randn(batch, 4 * n, height, width, dtype=torch.float64, generator=gen)
    weight64 = 0.5 * torch.randn(4 * n, n, 2, 1, dtype=torch.float64, generator=gen)
    gates = gates64.to(device, dtype).requires_grad_()
    weight = weight64.to(device, dtype).requires_grad_()
    h = fastgen.diagonal_lstm(gates, weight, groups=groups, persistent=persistent)
    leaves64 = [t.detach().double().requires_grad_() for t in (gates, weight)]
    expected = diagonal_lstm(*leaves64, groups=groups)
    assert h.dtype == dtype and h.shape == expected.shape
    assert_close(h, expected, dtype, "h")
    grad_h = torch.randn(h.shape, dtype=torch.float64, generator=gen).to(device)
    for got, want, name in zip(torch.autograd.grad(h, (gates, weight), grad_h.to(dtype)),
                               torch.autograd.grad(expected, leaves64, grad_h), ("gates_in", "weight")):
        # bfloat16: h is rounded at every column and the rounding is carried through the recurrence
        tolerance = dict(rtol=5e-2, atol=5e-2) if dtype == torch.bfloat16 else None
        if tolerance:
            torch.testing.assert_close(got.double(), want, **tolerance, msg=lambda m: f"gradient of {name}: {m}")
        else:
            assert_close(got, want, dtype, f"gradient of {name}")


def test_fused_diagonal_bilstm_and_gradcheck(device):
    gen = torch.Generator().manual_seed(4)
    left, right = (torch.randn(1, 8, 3, 3, dtype=torch.float64, generator=gen).to(device).requires_grad_()
                   for _ in range(2))
    w_left, w_right = ((0.5 * torch.randn(8, 2, 2, 1, dtype=torch.float64, generator=gen)).to(device)
                       .requires_grad_() for _ in range(2))
    for persistent in (False, True):
        torch.testing.assert_close(fastgen.diagonal_bilstm(left, right, w_left, w_right, persistent=persistent),
                                   diagonal_bilstm(left, right, w_left, w_right))
    # one direction (the other is the same op on the mirrored map), small: each Jacobian column is a full pass
    gates = left[:, :4, :2].detach().clone().requires_grad_()
    weight = w_left[:4, :1].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda g, w: fastgen.diagonal_lstm(g, w), (gates, weight), eps=1e-6,
                                    atol=1e-5, rtol=1e-4, fast_mode=True)
    with pytest.raises(ValueError, match="weight"):
        fastgen.diagonal_lstm(left, w_left[:, :, :1])


def test_fused_skew_is_the_reference_skew():
    from fastgen.ops.row_lstm import skew as fused_skew, unskew as fused_unskew

    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(fused_skew(x), skew(x))
    assert torch.equal(fused_unskew(skew(x), 5), unskew(skew(x), 5))


def test_row_model_loss_compiles_whole(device):
    """The Row LSTM model's training loss (convolutions, the recurrence and the fused loss: fastgen custom ops)
    compiles with fullgraph=True and gives eager's loss and parameter gradients."""
    model = small_model(1, dtype=torch.float32).to(device)
    x = torch.randint(0, model.levels, (2, 1, 3, 4), device=device)

    def loss(x):
        return fastgen.pixel_cross_entropy(model(x), x)

    params = list(model.parameters())
    eager_loss = loss(x)
    eager_grads = torch.autograd.grad(eager_loss, params)
    torch._dynamo.reset()
    compiled_loss = torch.compile(loss, fullgraph=True, backend="aot_eager")(x)
    compiled_grads = torch.autograd.grad(compiled_loss, params)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["PixelRNN row", "PixelRNN diagonal"])
def test_sampling_benchmark_rows(family):
    """The sampling benchmark's PixelRNN rows, beside the PixelCNN ones: the naive sampler (a full forward per
    sub-pixel) and the cached one (PixelRNN.sample_cached, plain PyTorch) on a tiny model draw the same pixels
    from the same seed; the cached step's launches are counted (no fused step kernels: none counted there)."""
    from fastgen.benchmarks import bench_sampling

    assert {f"{family} 8x8 grey B=16", f"{family} 28x28 grey B=16"} <= {
        c.label for c in bench_sampling.cases("cpu", quick=False)}
    assert f"{family} 32x32x3 B=64" in {c.label for c in bench_sampling.cases("cuda", quick=False)}
    case = bench_sampling.SamplingCase(family, bench_sampling.Shape("4x4 grey", 1, 4, 4, 17), 2, tiny=True)
    rows = bench_sampling.measure(case, "cpu")
    by = {r["provider"]: r for r in rows}
    assert set(by) == {"naive", "cached"}
    assert all(set(r) <= set(bench_sampling.COLUMNS) for r in rows)
    assert by["naive"]["forwards"] == 16  # one full forward per sub-pixel
    assert by["cached"]["same_pixels"] == by["naive"]["same_pixels"] == 1.0
    assert by["cached"]["speedup_vs_naive"] == round(by["naive"]["seconds"] / by["cached"]["seconds"], 1)
    assert by["cached"]["cached_step"] == "pytorch" and by["cached"]["launches_per_step"] is None
    assert by["cached"]["launches_per_step_pytorch"] > 0
    assert f"| {family} | 4x4 grey | 2 |" in bench_sampling.markdown(rows)


def test_cached_step_launches_grow_with_layers():
    """What one cached sub-pixel step launches (counted, plain PyTorch) grows with the layers it steps through."""
    from fastgen.benchmarks.bench_sampling import cached_step_launches

    for kind in ("row", "diagonal"):
        counts = []
        for layers in (1, 2, 3):
            torch.manual_seed(0)
            counts.append(cached_step_launches(PixelRNN(kind, 1, 5, hidden_channels=4, n_layers=layers)))
        assert counts[0] < counts[1] < counts[2] and counts[2] - counts[1] == counts[1] - counts[0]
