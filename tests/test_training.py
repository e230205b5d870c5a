"""fastgen.data, fastgen.training and the `fastgen train` / `fastgen sample` commands.

The conftest runs fastgen's kernels under Triton's interpreter, far too slow to train with, so every model
here runs on the plain-PyTorch reference layers (``model.use_reference(True)``, or ``use_backend("reference")``
around the CLI): these tests are about the data, the training loop, checkpoints and the CLI; the layers
themselves are tested against the kernels in test_models.py.
"""

import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fastgen
import fastgen.training
from fastgen import cli
from fastgen.data import (DIGITS_LEVELS, load_dataset, load_digits, load_image_folder, load_npy, pixels_from_array,
                          train_test_indices)
from fastgen.models import DCGAN, VAE, GatedPixelCNN, PixelCNN, PixelCNNpp
from fastgen.training import (StepOptions, evaluate, image_grid, load_checkpoint, loss_of, save_checkpoint,
                              save_image_grid, step_options, train, train_gan, train_vae)

UNIFORM_DIGITS_BPD = math.log2(DIGITS_LEVELS)  # 4.09: a model that learnt nothing

# small enough to train on digits in a few seconds on 2 CPU cores
SMALL = {
    "pixelcnn": lambda **kw: PixelCNN(1, DIGITS_LEVELS, hidden_channels=16, n_layers=2, **kw),
    "gated": lambda **kw: GatedPixelCNN(1, DIGITS_LEVELS, hidden_channels=16, n_layers=3, **kw),
    "pixelcnnpp": lambda **kw: PixelCNNpp(1, DIGITS_LEVELS, hidden_channels=16, n_layers=2, n_mixtures=3, **kw),
}


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture
def one_thread():
    """Training on a machine shared by other jobs: one intra-op thread avoids OpenMP waiting on a busy core
    (10x slower steps measured with 2 threads while another process used a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------- data
def test_digits(digits):
    pixels, labels = digits
    assert pixels.shape == (1797, 1, 8, 8) and pixels.dtype == torch.long
    assert labels.shape == (1797,) and labels.dtype == torch.long
    assert pixels.min() == 0 and pixels.max() == DIGITS_LEVELS - 1
    assert sorted(labels.unique().tolist()) == list(range(10))
    data = load_dataset("digits")
    assert torch.equal(data.pixels, pixels) and data.levels == 17 and data.n_classes == 10
    assert data.image_size == (8, 8)


def test_digits_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `from sklearn import ...` raise ImportError
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


def _images(n, c, h, w, high, dtype=np.int64, seed=0):
    """[N, C, H, W] random integer images."""
    return np.random.default_rng(seed).integers(0, high, (n, c, h, w)).astype(dtype)


@pytest.mark.parametrize("layout", ["NHW", "NHWC-grey", "NCHW-grey", "NHWC-rgb", "NCHW-rgb"])
def test_npy_layouts(tmp_path, layout):
    c = 3 if layout.endswith("rgb") else 1
    expected = _images(5, c, 4, 6, 9)
    stored = {"NHW": expected[:, 0], "NHWC": expected.transpose(0, 2, 3, 1), "NCHW": expected}[layout.split("-")[0]]
    path = tmp_path / "images.npy"
    np.save(path, stored)
    pixels, levels = load_npy(path)
    assert pixels.dtype == torch.long and pixels.shape == (5, c, 4, 6)
    np.testing.assert_array_equal(pixels.numpy(), expected)
    assert levels == int(expected.max()) + 1  # integer data: max + 1 levels
    data = load_dataset(str(path))
    assert data.labels is None and data.levels == levels and torch.equal(data.pixels, pixels)


def test_npy_uint8_and_levels(tmp_path):
    path = tmp_path / "u8.npy"
    np.save(path, _images(3, 3, 4, 4, 10, np.uint8).transpose(0, 2, 3, 1))
    assert load_npy(path)[1] == 256  # uint8: 8-bit data whatever the largest value
    assert load_npy(path, levels=10)[1] == 10
    with pytest.raises(ValueError, match=r"0\.\.8 \(levels=9\)"):
        load_npy(path, levels=9)
    # [N, 3, H, 3] could be either layout: say which
    np.save(path, np.zeros((2, 3, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="ambiguous.*layout"):
        load_npy(path)
    assert load_npy(path, layout="NHWC")[0].shape == (2, 3, 3, 5)
    assert load_npy(path, layout="NCHW")[0].shape == (2, 3, 5, 3)


@pytest.mark.parametrize("array,error,match", [
    (np.zeros((2, 4, 4), np.float32), TypeError, "integer pixel values.*float32"),
    (np.zeros((2, 4, 4), bool), TypeError, "integer pixel values"),
    (np.zeros((2, 4, 4, 2), np.uint8), ValueError, "C = 1 or 3"),
    (np.zeros((2, 1, 4, 4, 1), np.uint8), ValueError, r"\[N, H, W\]"),
    (np.zeros((4, 4), np.uint8), ValueError, r"\[N, H, W\]"),
    (np.zeros((0, 4, 4), np.uint8), ValueError, "no pixels"),
    (np.full((2, 4, 4), -1), ValueError, "pixel values must be in"),
])
def test_npy_errors(tmp_path, array, error, match):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(error, match=match) as info:
        load_npy(path)
    assert "bad.npy" in str(info.value)  # the error names the file


def test_unreadable_data(tmp_path):
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not an array")
    with pytest.raises(ValueError, match="garbage.npy.*not a readable .npy"):
        load_npy(garbage)
    with pytest.raises(ValueError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="data must be 'digits', a .npy file or a folder"):
        load_dataset(str(tmp_path / "images.txt"))
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        pixels_from_array(np.zeros((1, 2, 2), np.uint8), levels=1)


def _write_png(path, array):
    Image.fromarray(array).save(path)


def test_image_folder_grey_and_rgb(tmp_path):
    grey = _images(3, 1, 5, 4, 256, np.uint8, seed=1)[:, 0]  # [3, 5, 4]: 3 images 4 wide, 5 high
    for i, image in enumerate(grey):
        _write_png(tmp_path / f"{i}.png", image)
    (tmp_path / "notes.txt").write_text("not an image")
    pixels, labels, classes = load_image_folder(tmp_path)
    assert labels is None and classes is None
    np.testing.assert_array_equal(pixels.numpy(), grey[:, None])
    # one RGB image makes the whole set RGB (grey ones repeated over R, G, B)
    rgb = _images(1, 3, 5, 4, 256, np.uint8, seed=2)[0].transpose(1, 2, 0)
    _write_png(tmp_path / "3.png", rgb)
    pixels, _, _ = load_image_folder(tmp_path)
    assert pixels.shape == (4, 3, 5, 4)
    np.testing.assert_array_equal(pixels[3].numpy(), rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(pixels[0].numpy(), np.repeat(grey[:1], 3, 0))
    data = load_dataset(str(tmp_path))
    assert data.levels == 256 and data.labels is None


def test_image_folder_classes_and_errors(tmp_path):
    for name, value in (("cat", 10), ("ant", 200)):
        (tmp_path / name).mkdir()
        for i in range(2):
            _write_png(tmp_path / name / f"{i}.png", np.full((3, 3), value + i, np.uint8))
    pixels, labels, classes = load_image_folder(tmp_path)
    assert classes == ["ant", "cat"] and labels.tolist() == [0, 0, 1, 1]
    assert pixels[:, 0, 0, 0].tolist() == [200, 201, 10, 11]
    assert load_dataset(str(tmp_path)).n_classes == 2

    _write_png(tmp_path / "cat" / "2.png", np.zeros((4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"2.png' is 3x4"):
        load_image_folder(tmp_path)
    (tmp_path / "cat" / "2.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="cannot read image.*2.png"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .png/.jpg/.jpeg images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="is not a folder"):
        load_image_folder(tmp_path / "missing")


def test_train_test_split():
    train_index, test_index = train_test_indices(1797, 0.1, seed=3)
    assert len(test_index) == 180 and len(train_index) == 1617
    assert torch.equal(torch.cat([train_index, test_index]).sort().values, torch.arange(1797))
    again = train_test_indices(1797, 0.1, seed=3)
    assert torch.equal(again[0], train_index) and torch.equal(again[1], test_index)
    assert not torch.equal(train_test_indices(1797, 0.1, seed=4)[1], test_index)
    assert [len(i) for i in train_test_indices(5, 0.01)] == [4, 1]  # at least one test item
    assert [len(i) for i in train_test_indices(5, 0.0)] == [5, 0]
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_indices(5, 1.0)


# --------------------------------------------------------------------------------------------------- training
def test_loss_by_output_kind(digits):
    """Logits models: the per-sub-pixel cross-entropy (F.cross_entropy's mean); DMOL models: the DMOL NLL
    of the pixels scaled to [-1, 1], with the levels of the model."""
    x = digits[0][:4]
    model = SMALL["pixelcnn"]().double().use_reference(True)
    logits = model(x)
    torch.testing.assert_close(loss_of(model, logits, x), F.cross_entropy(logits, x))
    model = SMALL["pixelcnnpp"]().double().use_reference(True)
    params = model(x)
    expected = fastgen.reference.pixel_losses.dmol_nll(params, 2 * x.double() / 16 - 1, 3, levels=17)
    torch.testing.assert_close(loss_of(model, params, x), expected)


@pytest.mark.parametrize("name", list(SMALL))
def test_models_learn_digits(digits, name, one_thread):
    """Two epochs take every model from the uniform 4.09 bits/dim well below it on held-out digits, and
    lower the training loss from the first epoch to the second."""
    pixels, labels = digits
    torch.manual_seed(0)
    model = SMALL[name]().use_reference(True)
    history = train(model, pixels, labels, epochs=2, batch_size=64, lr=3e-3, progress=False, seed=0)
    assert [r["epoch"] for r in history] == [1, 2]
    print(name, [(round(r["train_bpd"], 3), round(r["test_bpd"], 3), round(r["seconds"], 1)) for r in history])
    assert history[-1]["test_bpd"] < UNIFORM_DIGITS_BPD - 1.0
    assert history[1]["train_bpd"] < history[0]["train_bpd"]
    _, test_index = train_test_indices(len(pixels), 0.1, seed=0)
    assert evaluate(model, pixels[test_index]) == pytest.approx(history[-1]["test_bpd"], rel=1e-6)


def test_conditional_training_uses_labels(digits, one_thread):
    pixels, labels = digits
    model = SMALL["gated"](n_classes=10).use_reference(True)
    with pytest.raises(ValueError, match="labels are required"):
        train(model, pixels, epochs=1, progress=False)
    history = train(model, pixels[:256], labels[:256], epochs=1, progress=False)
    assert history[0]["test_bpd"] < UNIFORM_DIGITS_BPD
    # a wrong label changes the likelihood: the labels reach the model
    x = pixels[:64]
    assert evaluate(model, x, labels[:64]) != evaluate(model, x, (labels[:64] + 1) % 10)


def test_train_arguments(digits):
    model = SMALL["pixelcnn"]().use_reference(True)
    pixels = digits[0][:8]
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train(model, pixels, epochs=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        train(model, pixels, lr=0.0)
    with pytest.raises(ValueError, match=r"pixels must be in 0\.\.16"):
        train(model, pixels + 1, epochs=1)
    with pytest.raises(TypeError, match="pixels must be an integer tensor"):
        train(model, pixels.float(), epochs=1)
    with pytest.raises(ValueError, match=r"pixels must have shape \[N, 1, H, W\]"):
        train(model, pixels[:, 0], epochs=1)


# ------------------------------------------------------------------------------ precision, memory format, compile
def tiny_pixelcnn(data_channels=1, levels=DIGITS_LEVELS):
    """A PixelCNN of a few hundred parameters on the reference layers: a step takes milliseconds on CPU."""
    return PixelCNN(data_channels, levels, hidden_channels=6, n_layers=1).use_reference(True)


def test_step_options_resolve_auto_by_device():
    """"auto" is bfloat16 autocast and channels-last on CUDA, float32 and the layout as it is elsewhere; Adam is
    fused on CUDA and CPU. (Resolving needs no GPU: a torch.device("cuda") is only a name.)"""
    assert step_options("cpu") == StepOptions(None, False, True, None)
    assert step_options("cuda") == StepOptions(torch.bfloat16, True, True, None)
    assert step_options("cpu", "bfloat16", True, "default") == StepOptions(torch.bfloat16, True, True, "default")
    assert step_options("cuda", "float32", False, "reduce-overhead") == StepOptions(None, False, True,
                                                                                     "reduce-overhead")
    assert step_options("meta").fused_adam is False  # other devices: PyTorch's default Adam
    assert step_options("cuda").describe() == "bfloat16 autocast, channels-last, fused Adam"
    assert step_options("cpu", compile="default").describe() == "float32, fused Adam, torch.compile default"


@pytest.mark.parametrize("loop", ["train", "train_vae", "train_gan"])
@pytest.mark.parametrize("options,match", [
    (dict(precision="float16"), "precision must be one of"),
    (dict(precision=None), "precision must be one of"),
    (dict(channels_last="yes"), "channels_last must be 'auto', True or False"),
    (dict(channels_last=1), "channels_last must be 'auto', True or False"),
    (dict(compile="max-autotune"), "compile must be one of"),
    (dict(compile="reduce-overhead"), "compile='reduce-overhead' replays CUDA graphs.*CUDA device.*cpu"),
])
def test_speed_options_are_checked(digits, loop, options, match):
    """A bad precision, channels_last or compile raises a ValueError naming the argument before any training;
    compile="reduce-overhead" (CUDA graphs) is refused off CUDA."""
    models = {"train": tiny_pixelcnn, "train_vae": lambda: VAE(1, (8, 8), latent_dim=2, hidden_channels=2),
              "train_gan": lambda: DCGAN(1, 8, latent_dim=2, hidden_channels=2)}
    model = models[loop]().use_reference(True).to("cpu")
    with pytest.raises(ValueError, match=match):
        getattr(fastgen.training, loop)(model, digits[0][:8], epochs=1, progress=False, **options)


def test_bfloat16_on_cpu(digits, one_thread):
    """precision="bfloat16" runs each step's forward and loss under CPU bfloat16 autocast and keeps float32
    weights; evaluation stays float32; "auto" on CPU is float32 throughout."""
    dtypes = []
    torch.manual_seed(0)
    model = tiny_pixelcnn()
    model.head.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))  # the fused head's input
    history = train(model, digits[0][:32], epochs=1, batch_size=16, progress=False, precision="bfloat16")
    assert math.isfinite(history[0]["train_bpd"]) and math.isfinite(history[0]["test_bpd"])
    assert history[0]["train_bpd"] < UNIFORM_DIGITS_BPD + 1.0
    assert dtypes == [torch.bfloat16, torch.bfloat16, torch.float32]  # 29 images: 2 steps, then evaluate
    assert all(p.dtype == torch.float32 for p in model.parameters())
    dtypes.clear()
    train(model, digits[0][:32], epochs=1, batch_size=16, progress=False)  # precision="auto"
    assert dtypes == [torch.float32] * 3


def test_channels_last(one_thread):
    """channels_last=True converts the model's 4-D parameters and hands the first layer a channels-last input
    (RGB: the layouts differ), and trains the same model as the default layout, up to float rounding."""
    pixels = torch.randint(0, 4, (24, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    histories = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = tiny_pixelcnn(data_channels=3, levels=4)
        seen = []
        model.input_conv.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        histories[channels_last] = train(model, pixels, epochs=1, batch_size=8, progress=False,
                                         channels_last=channels_last)
        weights = [p for p in model.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights) == channels_last
        assert seen[:3] == [channels_last] * 3  # the 3 training steps (evaluate takes the test set as it is)
    for key in ("train_bpd", "test_bpd"):
        assert histories[True][0][key] == pytest.approx(histories[False][0][key], rel=1e-5)


def test_vae_and_gan_bfloat16_channels_last(digits, one_thread):
    pixels = digits[0][:32]
    torch.manual_seed(0)
    vae = VAE(1, (8, 8), latent_dim=2, hidden_channels=4, levels=DIGITS_LEVELS).use_reference(True)
    (record,) = train_vae(vae, pixels, epochs=1, batch_size=16, progress=False, precision="bfloat16",
                          channels_last=True)
    assert all(math.isfinite(v) for v in record.values())
    assert vae.encoder[2].weight.is_contiguous(memory_format=torch.channels_last)  # [8, 4, 4, 4]
    gan = DCGAN(1, 8, latent_dim=2, hidden_channels=4, r1_gamma=1.0, levels=DIGITS_LEVELS).use_reference(True)
    (record,) = train_gan(gan, pixels, epochs=1, batch_size=16, progress=False, precision="bfloat16",
                          channels_last=True)
    assert all(math.isfinite(v) for v in record.values()) and record["r1"] > 0


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="Inductor on CPU needs a C++ compiler")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
def test_compile_default_on_cpu_matches_eager(digits, one_thread):
    """compile="default" (Inductor's C++ backend on CPU) trains the same model as eager, up to float rounding.
    The slowest test here: ~30 s to build the graphs on a busy 2-core machine (~5 s with Inductor's cache warm);
    32 images in 2 batches of 16 keep it to one graph."""
    pixels, test_pixels = digits[0][:32], digits[0][32:40]
    histories, models = [], []
    for mode in ("default", None):
        torch.manual_seed(0)
        models.append(tiny_pixelcnn())
        histories.append(train(models[-1], pixels, epochs=1, batch_size=16, progress=False, test_pixels=test_pixels,
                               compile=mode))
    for key in ("train_bpd", "test_bpd"):
        assert histories[0][0][key] == pytest.approx(histories[1][0][key], rel=1e-5)
    for compiled, eager in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(SMALL))
def test_checkpoint_round_trip(tmp_path, digits, name):
    x, y = digits[0][:4], digits[1][:4]
    torch.manual_seed(1)
    model = SMALL[name](n_classes=10 if name == "gated" else None).use_reference(True)
    y = y if model.n_classes else None
    history = [dict(epoch=1, train_bpd=2.0, test_bpd=2.1, seconds=0.5)]
    path = tmp_path / "run" / f"{name}.pt"
    save_checkpoint(path, model, image_size=(8, 8), history=history)
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    assert meta["kind"] == name and meta["levels"] == 17 and tuple(meta["image_size"]) == (8, 8)
    assert meta["history"] == history and "state_dict" not in meta
    with torch.no_grad():
        torch.testing.assert_close(loaded.use_reference(True)(x, y), model.eval()(x, y), rtol=0, atol=0)


def test_checkpoint_errors(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a fastgen checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a fastgen checkpoint"):
        load_checkpoint(path)
    with pytest.raises(TypeError, match="model must be one of"):
        save_checkpoint(tmp_path / "y.pt", torch.nn.Linear(1, 1))


def test_image_grid(tmp_path):
    pixels = torch.tensor([0, 16, 8, 4, 12]).view(5, 1, 1, 1).expand(5, 1, 8, 8)
    grid = image_grid(pixels, 17)  # 3 per row, 2 rows, 4x enlarged to 32x32, 1 pixel of padding
    assert grid.shape == (2 * 33 + 1, 3 * 33 + 1)
    assert grid[1, 1] == 0.0 and grid[32, 32] == 0.0 and grid[1, 34] == 1.0 and grid[34, 1] == 0.25
    assert grid[0, 0] == 1.0 and grid[33, 10] == 1.0  # padding
    assert grid[40, 70] == 1.0  # the empty sixth cell
    rgb = image_grid(torch.randint(0, 4, (2, 3, 16, 16)), 4, nrow=1)
    assert rgb.shape == (2 * 33 + 1, 33 + 1, 3)
    path = tmp_path / "grid" / "samples.png"
    save_image_grid(pixels, 17, path)
    with Image.open(path) as image:
        assert image.size == (3 * 33 + 1, 2 * 33 + 1)
        written = np.asarray(image.convert("L"))
    assert written[1, 1] == 0 and written[1, 34] == 255 and abs(int(written[34, 1]) - 64) <= 1


# -------------------------------------------------------------------------------------------------------- CLI
def test_cli_train_and_sample_on_npy(tmp_path, one_thread, capsys, monkeypatch):
    """`fastgen train` on a .npy file, then `fastgen sample` from its checkpoint, both with ``--device cpu``
    (also on a CUDA machine): on CPU the CLI runs the reference layers, even where the conftest turned on the
    interpreter (or these steps would take minutes). The CUDA path of the CLI (the compiled kernels) runs in
    test_cli_conditional_digits and test_vae_dcgan's CLI test, which take the default device."""
    array = np.random.default_rng(0).integers(0, 4, (40, 5, 5, 3)).astype(np.uint8)  # 40 RGB 5x5, 4 levels
    np.save(tmp_path / "tiny.npy", array)
    out = tmp_path / "run"
    backends, real_train = [], fastgen.training.train

    def spy(model, *args, **kwargs):
        backends.append(model.reference)
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(fastgen.training, "train", spy)
    assert cli.main(["train", "gated", "--data", str(tmp_path / "tiny.npy"), "--epochs", "2", "--layers", "1",
                     "--hidden-channels", "6", "--batch-size", "16", "--out", str(out), "--samples", "4",
                     "--no-progress", "--threads", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2  train" in printed and "test" in printed
    assert backends == [True]  # the reference layers on CPU
    model, meta = load_checkpoint(out / "gated.pt")
    assert model.data_channels == 3 and model.levels == 256 and tuple(meta["image_size"]) == (5, 5)
    assert len(meta["history"]) == 2
    with Image.open(out / "gated-samples.png") as image:
        assert image.mode == "RGBA" and image.size == (2 * 36 + 1, 2 * 36 + 1)  # 2x2 grid of 7x enlarged 5x5
    assert cli.main(["sample", str(out / "gated.pt"), "-n", "3", "-o", str(tmp_path / "s.png"), "--seed", "1",
                     "--no-progress", "--device", "cpu"]) == 0
    with Image.open(tmp_path / "s.png") as image:
        assert image.size == (2 * 36 + 1, 2 * 36 + 1)


def test_cli_conditional_digits(tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "pixelcnnpp", "--epochs", "1", "--layers", "1", "--hidden-channels", "8",
                     "--batch-size", "128", "--conditional", "--out", str(out), "--samples", "10",
                     "--no-progress"]) == 0
    model, meta = load_checkpoint(out / "pixelcnnpp.pt")
    assert model.n_classes == 10 and meta["history"][0]["test_bpd"] < UNIFORM_DIGITS_BPD
    assert cli.main(["sample", str(out / "pixelcnnpp.pt"), "-n", "2", "-o", str(tmp_path / "s.png"),
                     "--label", "3", "--temperature", "0.8", "--naive", "--no-progress"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    with Image.open(out / "pixelcnnpp-samples.png") as image:
        assert image.size == (10 * 33 + 1, 33 + 1)  # one column per class
    capsys.readouterr()


def test_cli_errors(tmp_path, capsys):
    np.save(tmp_path / "floats.npy", np.zeros((4, 5, 5), np.float32))
    assert cli.main(["train", "gated", "--data", str(tmp_path / "floats.npy"), "--no-progress"]) == 2
    assert "--data: " in capsys.readouterr().err
    np.save(tmp_path / "ok.npy", np.zeros((4, 5, 5), np.uint8))
    assert cli.main(["train", "gated", "--data", str(tmp_path / "ok.npy"), "--conditional"]) == 2
    assert "--conditional" in capsys.readouterr().err
    assert cli.main(["train", "gated", "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert cli.main(["sample", str(tmp_path / "ok.npy")]) == 2
    assert "CHECKPOINT: " in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["train", "gated", "--device", "cuda"]) == 2
        assert "--device cuda: no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "flow"])  # not a model


def test_cli_help(capsys):
    for command, options in (("train", ["--data", "--epochs", "--conditional", "--out", "--precision",
                                        "--channels-last", "--no-channels-last", "--compile", "--cuda-graph"]),
                             ("sample", ["-n", "--temperature", "--naive", "--label"])):
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        assert info.value.code == 0 and all(option in out for option in options), out
