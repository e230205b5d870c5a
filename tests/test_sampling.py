"""fastgen.sampling: the cached incremental sampler returns the naive sampler's pixels for the same draws.

The naive sampler runs the model (its reference layers on CPU, except in one test where the fastgen kernels
run on the ``device`` fixture's device) once per sub-pixel; the cached one evaluates every layer at the new pixel only. Their samples
are compared exactly, in float64 for every model family, grey and RGB, conditional, several depths and
kernel sizes, image completion and temperatures; float32 too. Parameters are perturbed away from their
initialization so that every layer (biases, gates, embeddings) matters.
"""

import pytest
import torch

import fastgen
from fastgen.benchmarks.bench_sampling import step_launches
from fastgen.models import GatedPixelCNN, PixelCNN, PixelCNNpp
from fastgen.models.base import IncrementalSampler, Linear1x1, PixelModel, conv1x1
from fastgen.nn import MaskedConv2d
from fastgen.sampling import draw_categorical, sample, sample_naive, sampling_uniforms, uniforms_shape

MAX_STEP_LAUNCHES = 12  # issue 14: kernels per sub-pixel step of the cached sampler

SIZE = (4, 5)  # H != W

CONFIGS = {
    "pixelcnn-grey-k5": (PixelCNN, dict(data_channels=1, levels=5, hidden_channels=6, n_layers=2, kernel_size=5)),
    "pixelcnn-rgb-cond": (PixelCNN, dict(data_channels=3, levels=4, hidden_channels=6, n_layers=2, kernel_size=3,
                                         hidden_kernel_size=5, n_classes=3)),
    "pixelcnn-no-blocks": (PixelCNN, dict(data_channels=1, levels=3, hidden_channels=4, n_layers=0, kernel_size=3)),
    "gated-grey-k7": (GatedPixelCNN, dict(data_channels=1, levels=5, hidden_channels=6, n_layers=3, kernel_size=7)),
    "gated-rgb-cond": (GatedPixelCNN, dict(data_channels=3, levels=4, hidden_channels=6, n_layers=3, kernel_size=3,
                                           hidden_kernel_size=5, n_classes=3)),
    "gated-one-layer": (GatedPixelCNN, dict(data_channels=1, levels=4, hidden_channels=4, n_layers=1,
                                            kernel_size=3)),
    "pixelcnnpp-grey": (PixelCNNpp, dict(data_channels=1, levels=9, hidden_channels=6, n_layers=2, n_mixtures=2)),
    "pixelcnnpp-rgb-cond": (PixelCNNpp, dict(data_channels=3, levels=9, hidden_channels=6, n_layers=1,
                                             n_mixtures=3, n_classes=2)),
    "pixelcnnpp-no-blocks": (PixelCNNpp, dict(data_channels=1, levels=17, hidden_channels=4, n_layers=0,
                                              n_mixtures=2)),
}


def build(name, dtype=torch.float64):
    cls, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    model = cls(**kwargs)
    with torch.no_grad():  # away from the init (zero biases, small output scale): every term matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype).use_reference(True)


def labels(model, n):
    return None if model.n_classes is None else torch.arange(n) % model.n_classes


def generator(seed=1):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_equals_naive_float64(name):
    model = build(name)
    n = 3
    naive = sample_naive(model, n, size=SIZE, y=labels(model, n), generator=generator())
    cached = sample(model, n, size=SIZE, y=labels(model, n), generator=generator())
    assert naive.shape == (n, model.data_channels, *SIZE) and naive.dtype == torch.long
    assert torch.equal(cached, naive)
    assert 0 <= int(naive.min()) and int(naive.max()) < model.levels
    assert len(naive.unique()) > 1  # not a degenerate constant image
    other = sample(model, n, size=SIZE, y=labels(model, n), generator=generator(2))
    assert not torch.equal(other, cached)  # the draws matter


@pytest.mark.parametrize("name", ["pixelcnn-rgb-cond", "gated-grey-k7", "pixelcnnpp-rgb-cond"])
def test_completion_keeps_rows_and_matches_naive(name):
    model = build(name)
    n = 2
    x = sample(model, n, size=SIZE, y=labels(model, n), generator=generator(5))
    for fixed_rows in (1, SIZE[0]):
        naive = sample_naive(model, x=x, fixed_rows=fixed_rows, y=labels(model, n), generator=generator())
        cached = sample(model, x=x, fixed_rows=fixed_rows, y=labels(model, n), generator=generator())
        assert torch.equal(cached, naive)
        assert torch.equal(cached[:, :, :fixed_rows], x[:, :, :fixed_rows])
    assert torch.equal(cached, x)  # every row fixed: nothing sampled


@pytest.mark.parametrize("name", ["pixelcnn-grey-k5", "gated-rgb-cond", "pixelcnnpp-grey"])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature(name, temperature):
    model = build(name)
    n = 2
    kwargs = dict(size=SIZE, y=labels(model, n), temperature=temperature)
    cached = sample(model, n, generator=generator(), **kwargs)
    assert torch.equal(cached, sample_naive(model, n, generator=generator(), **kwargs))
    assert not torch.equal(cached, sample(model, n, size=SIZE, y=labels(model, n), generator=generator()))


@pytest.mark.parametrize("name", ["pixelcnn-rgb-cond", "gated-rgb-cond", "pixelcnnpp-grey"])
def test_float32_matches_naive(name):
    model = build(name, torch.float32)
    n = 3
    naive = sample_naive(model, n, size=SIZE, y=labels(model, n), generator=generator())
    cached = sample(model, n, size=SIZE, y=labels(model, n), generator=generator())
    assert torch.equal(cached, naive)


@pytest.mark.parametrize("name", ["pixelcnn-grey-k5", "gated-one-layer", "pixelcnnpp-grey"])
def test_naive_on_fastgen_kernels_matches_cached(name, device):
    """The naive sampler on the fastgen convolutions (compiled on a GPU, interpreted on CPU) draws the same."""
    model = build(name).use_reference(False).to(device)
    assert fastgen.backend_for(next(model.parameters())) == "triton"
    naive = sample_naive(model, 1, size=(3, 3), generator=generator())
    assert torch.equal(sample(model, 1, size=(3, 3), generator=generator()), naive)


@pytest.mark.parametrize("name", CONFIGS)
def test_fused_steps_equal_naive_float64(name):
    """The models' fused step kernels (interpreted on CPU, compiled on a GPU: one launch per sub-pixel) draw the
    naive sampler's pixels."""
    model = build(name)
    n = 2
    naive = sample_naive(model, n, size=SIZE, y=labels(model, n), generator=generator())
    model.use_reference(False)
    assert fastgen.backend_for(next(model.parameters())) == "triton" and model._kernel_steps()
    assert type(model.incremental_sampler(n, SIZE[1], labels(model, n))).__name__.endswith("KernelSteps")
    assert torch.equal(sample(model, n, size=SIZE, y=labels(model, n), generator=generator()), naive)


@pytest.mark.parametrize("name", ["pixelcnn-rgb-cond", "gated-grey-k7", "pixelcnnpp-rgb-cond"])
def test_fused_steps_completion_and_temperature(name):
    model = build(name)
    n = 2
    x = sample(model, n, size=SIZE, y=labels(model, n), generator=generator(5))
    kwargs = dict(x=x, fixed_rows=2, y=labels(model, n), temperature=0.7)
    naive = sample_naive(model, generator=generator(), **kwargs)
    fused = sample(model.use_reference(False), generator=generator(), **kwargs)
    assert torch.equal(fused, naive)
    assert torch.equal(fused[:, :, :2], x[:, :, :2])


@pytest.mark.parametrize("name", ["pixelcnn-rgb-cond", "gated-rgb-cond", "pixelcnnpp-grey"])
def test_fused_steps_float32(name):
    model = build(name, torch.float32)
    n = 2
    naive = sample_naive(model, n, size=SIZE, y=labels(model, n), generator=generator())
    fused = sample(model.use_reference(False), n, size=SIZE, y=labels(model, n), generator=generator())
    assert (fused == naive).double().mean() >= 0.95  # float32: rare last-bit ties at a CDF boundary may differ


@pytest.mark.parametrize("name", ["pixelcnn-rgb-cond", "gated-rgb-cond", "pixelcnnpp-rgb-cond"])
def test_launches_per_sub_pixel_step(name):
    """One sub-pixel step (one pixel step for DMOL) of the cached sampler, counted on CPU under the interpreter
    (every Triton launch and every ATen op that would start a kernel): at most 12 (the fused kernels: 1); the
    plain-PyTorch step for comparison."""
    model = build(name)
    pytorch = step_launches(model)  # use_reference(True): the plain-PyTorch step
    fused = step_launches(model.use_reference(False))
    print(f"{name}: {fused} launches per sub-pixel step fused, {pytorch} in plain PyTorch")
    assert fused <= MAX_STEP_LAUNCHES
    assert fused == 1
    assert pytorch > MAX_STEP_LAUNCHES  # what the kernels replace


class _ToyModel(PixelModel):
    """A model the sampler has never heard of: 3x3 mask A, ReLU, 1x1 to logits. Its incremental sampler is all
    that ``fastgen.sampling.sample`` needs."""

    def __init__(self, levels=4):
        super().__init__(1, levels, None)
        self.config = dict(levels=levels)
        self.conv = MaskedConv2d(1, 6, 3, "A")
        self.out = conv1x1(6, levels)

    def _forward(self, x, y):
        return self.out(torch.relu(self.conv(x))).unflatten(1, (1, self.levels)).transpose(1, 2)

    def incremental_sampler(self, n, width, labels=None, temperature=1.0):
        return _ToySteps(self, n, width, temperature)


class _ToySteps(IncrementalSampler):
    def __init__(self, model, n, width, temperature):
        super().__init__(model, n, width, temperature)
        self.conv, self.out = self.window(model.conv), Linear1x1(model.out)

    def output(self, x):
        return self.out(torch.relu(self.conv.at(self.image, x)))


def test_a_new_model_samples_without_touching_the_sampler():
    torch.manual_seed(0)
    model = _ToyModel().double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.use_reference(True)
    naive = sample_naive(model, 3, size=SIZE, generator=generator())
    assert torch.equal(sample(model, 3, size=SIZE, generator=generator()), naive)


def test_given_uniforms_and_generator_agree():
    model = build("pixelcnnpp-rgb-cond")
    n = 2
    uniforms = sampling_uniforms(model, n, SIZE, generator())
    assert uniforms.shape == uniforms_shape(model, n, SIZE) == (n, 3 + 3, *SIZE)
    a = sample(model, uniforms=uniforms, y=labels(model, n))
    assert torch.equal(a, sample(model, n, size=SIZE, y=labels(model, n), generator=generator()))
    assert torch.equal(a, sample_naive(model, uniforms=uniforms, y=labels(model, n)))


def test_batch_sizes_progress_and_model_state():
    model = build("gated-rgb-cond").train()
    one = sample(model, 1, size=SIZE, y=torch.tensor([2]), generator=generator(), progress=True)
    assert one.shape == (1, 3, *SIZE)
    assert model.training  # restored
    empty = sample(model, 0, size=SIZE, y=torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 3, *SIZE)
    assert sample(model, 2, size=1, y=labels(model, 2)).shape == (2, 3, 1, 1)
    # a batch is a stack of independent chains: image i depends only on its own draws and label
    uniforms = sampling_uniforms(model, 3, SIZE, generator())
    batch = sample(model, uniforms=uniforms, y=torch.tensor([0, 1, 2]))
    assert torch.equal(batch[1:2], sample(model, uniforms=uniforms[1:2], y=torch.tensor([1])))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_sample_valid_pixels(dtype):
    model = build("pixelcnn-rgb-cond", dtype)
    pixels = sample(model, 2, size=SIZE, y=labels(model, 2), generator=generator())
    assert pixels.shape == (2, 3, *SIZE) and 0 <= int(pixels.min()) and int(pixels.max()) < model.levels


def test_draw_categorical_inverse_cdf_and_temperature():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0]], dtype=torch.float64).expand(40000, -1)
    u = torch.rand(40000, generator=generator(), dtype=torch.float64)
    for temperature in (1.0, 0.5, 3.0):
        counts = torch.bincount(draw_categorical(logits, u, temperature), minlength=4).double() / len(u)
        expected = torch.softmax(logits[0] / temperature, 0)
        torch.testing.assert_close(counts, expected, rtol=0, atol=0.01)
    cdf = torch.softmax(logits[0], 0).cumsum(0)
    edges = torch.tensor([0.0, cdf[0] - 1e-12, cdf[0] + 1e-12, 1.0 - 1e-12], dtype=torch.float64)
    assert draw_categorical(logits[:4], edges).tolist() == [0, 0, 1, 3]


def test_argument_errors():
    model = build("pixelcnn-rgb-cond")
    y = labels(model, 2)
    with pytest.raises(TypeError, match="model"):
        sample(torch.nn.Conv2d(1, 1, 1), 2, size=SIZE)
    with pytest.raises(ValueError, match="n "):
        sample(model, size=SIZE)
    with pytest.raises(ValueError, match="size"):
        sample(model, 2, y=y)
    with pytest.raises(ValueError, match="y "):
        sample(model, 2, size=SIZE)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, 2, size=SIZE, y=y, temperature=0.0)
    with pytest.raises(ValueError, match="fixed_rows"):
        sample(model, 2, size=SIZE, y=y, fixed_rows=1)
    x = torch.zeros((2, 3, *SIZE), dtype=torch.long)
    with pytest.raises(ValueError, match="fixed_rows"):
        sample(model, x=x, y=y, fixed_rows=SIZE[0] + 1)
    with pytest.raises(TypeError, match="x must be an integer"):
        sample(model, x=x.double(), y=y, fixed_rows=1)
    with pytest.raises(ValueError, match="x's kept rows"):
        sample(model, x=x + model.levels, y=y, fixed_rows=1)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        sample(model, 2, size=SIZE, y=y, uniforms=torch.rand(2, 4, *SIZE))
    with pytest.raises(ValueError, match="uniforms must lie"):
        sample(model, 2, size=SIZE, y=y, uniforms=torch.full((2, 3, *SIZE), 1.0))
    with pytest.raises(ValueError, match="generator"):
        sample(model, 2, size=SIZE, y=y, uniforms=torch.rand(2, 3, *SIZE), generator=generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("name", ["pixelcnn-rgb-cond", "gated-grey-k7", "pixelcnnpp-rgb-cond"])
def test_cuda_graph_rows_equal_eager(name):
    model = build(name).cuda()
    n, size = 3, (6, 5)  # rows 2.. replay the captured graph
    kwargs = dict(size=size, y=None if model.n_classes is None else labels(model, n).cuda())
    uniforms = sampling_uniforms(model, n, size, generator()).cuda()
    graphed = sample(model, n, uniforms=uniforms, cuda_graph=True, **kwargs)
    assert torch.equal(graphed, sample(model, n, uniforms=uniforms, cuda_graph=False, **kwargs))
    assert torch.equal(graphed, sample_naive(model, n, uniforms=uniforms, **kwargs))


def test_cuda_graph_needs_cuda():
    model = build("pixelcnn-grey-k5")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graph"):
            sample(model, 1, size=SIZE, cuda_graph=True)


def test_public_names():
    assert fastgen.sampling.sample is sample
