"""Training, evaluating and checkpointing the PixelCNN models, the VAE and the DCGAN, and writing sample grids.

>>> data = fastgen.data.load_dataset("digits")
>>> model = fastgen.models.GatedPixelCNN(data_channels=1, levels=data.levels, hidden_channels=32, n_layers=4)
>>> history = train(model, data.pixels, epochs=5)       # per epoch: train and test bits/dim
>>> save_checkpoint("gated.pt", model, image_size=data.image_size, history=history)
>>> model, meta = load_checkpoint("gated.pt")

The loss is the model's :meth:`~fastgen.models.PixelModel.nll`: PixelCNN, Gated PixelCNN and PixelRNN (softmax
heads) run their last 1x1 convolution fused with the cross-entropy (:func:`fastgen.conv1x1_cross_entropy`: the
[B, C * levels, H, W] logits are never stored), PixelCNN++ takes :func:`fastgen.dmol_nll` of its output; both
means are nats per sub-pixel, so :func:`fastgen.bits_per_dim` of them is bits/dim. :func:`loss_of` is the same
loss of an output already computed. A model switched to the reference layers
(``model.use_reference(True)``) also computes its loss on the reference.

:func:`train_vae` trains a :class:`fastgen.models.VAE` on the negative ELBO (nats per image, with its
reconstruction and KL parts per epoch), :func:`train_gan` a :class:`fastgen.models.DCGAN` (alternating D and G
steps; D and G losses per epoch). Both take the same integer ``pixels`` [N, C, H, W] as :func:`train`.

All three run a step the way modern PyTorch trains fastest on CUDA, each switch an argument
(:func:`step_options` resolves them): ``precision="auto"`` (bfloat16 autocast over the forward and the loss,
float32 master weights), ``channels_last="auto"`` (model and batches in channels-last), fused Adam, and, when
asked, ``compile="default"`` or ``"reduce-overhead"`` (torch.compile of the step's forward + loss; CUDA-graph
replay). "auto" is on for CUDA, off elsewhere.
"""

from __future__ import annotations

import math
import os
import pickle
import time
import zipfile
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch

from fastgen.data import train_test_indices
from fastgen.models import DCGAN, VAE, GatedPixelCNN, PixelCNN, PixelCNNpp, PixelModel, PixelRNN, dmol_targets
from fastgen.ops.pixel_losses import bits_per_dim, dmol_nll, pixel_cross_entropy
from fastgen.validation import check_choice

#: checkpoint kind name -> model class
MODELS = {"pixelcnn": PixelCNN, "gated": GatedPixelCNN, "pixelcnnpp": PixelCNNpp, "pixelrnn": PixelRNN, "vae": VAE,
          "dcgan": DCGAN}


def model_kind(model: PixelModel) -> str:
    """The registry name of ``model``'s class ("pixelcnn", "gated", "pixelcnnpp", "pixelrnn", "vae" or "dcgan")."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise TypeError(f"model must be one of {', '.join(c.__name__ for c in MODELS.values())}, got "
                    f"{type(model).__name__}")


def loss_of(model: PixelModel, output: torch.Tensor, pixels: torch.Tensor, *,
            pixels_checked: bool = False) -> torch.Tensor:
    """Mean NLL in nats per sub-pixel of integer ``pixels`` [B, C, H, W] under the model's ``output``
    (logits [B, levels, C, H, W] or DMOL parameters [B, P, H, W], by ``model.output_kind``).

    ``pixels_checked``: the pixels are known to be in 0..levels-1 (the training loop checks a data set once), so
    the cross-entropy skips its per-call range check, a reduction and a device sync on every step."""
    with model._backend():
        if model.output_kind == "logits":
            return pixel_cross_entropy(output, pixels, check_targets=not pixels_checked)
        if model.output_kind == "dmol":
            x = dmol_targets(pixels, model.levels, output.dtype)
            return dmol_nll(output, x, model.n_mixtures, levels=model.levels)
    raise ValueError(f"model.output_kind must be 'logits' or 'dmol', got {model.output_kind!r}")


def _check_data(model: PixelModel, pixels, labels, name: str = "pixels", labels_name: str = "labels"):
    if not isinstance(pixels, torch.Tensor) or pixels.is_floating_point() or pixels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor [N, C, H, W], got "
                        f"{pixels.dtype if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
    if pixels.dim() != 4 or pixels.shape[1] != model.data_channels:
        raise ValueError(f"{name} must have shape [N, {model.data_channels}, H, W], got {tuple(pixels.shape)}")
    if pixels.numel() and (int(pixels.min()) < 0 or int(pixels.max()) >= model.levels):
        raise ValueError(f"{name} must be in 0..{model.levels - 1} (model.levels={model.levels}), got values from "
                         f"{int(pixels.min())} to {int(pixels.max())}")
    if model.n_classes is None:
        return None  # an unconditional model ignores labels
    if labels is None:
        raise ValueError(f"{labels_name} are required: the model is conditional (n_classes={model.n_classes})")
    if tuple(labels.shape) != (len(pixels),):
        raise ValueError(f"{labels_name} must have shape [{len(pixels)}], got {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= model.n_classes):
        raise ValueError(f"{labels_name} must be in 0..{model.n_classes - 1} (model.n_classes={model.n_classes})")
    return labels


#: the values of the training loops' ``precision``
PRECISIONS = ("auto", "float32", "bfloat16")
#: the values of the training loops' ``compile``: eager, or torch.compile's mode
COMPILE_MODES = (None, "default", "reduce-overhead")


class StepOptions(NamedTuple):
    """How the training loops run a step, resolved by :func:`step_options` for one device."""

    autocast_dtype: torch.dtype | None  #: torch.bfloat16: the forward and the loss run under autocast; None: float32
    channels_last: bool  #: the model's 4-D parameters and the input batches in channels-last
    fused_adam: bool  #: ``torch.optim.Adam(..., fused=True)``
    compile: str | None  #: torch.compile's mode for the step's forward + loss; None: eager

    def describe(self) -> str:
        """One line for a log, e.g. "bfloat16 autocast, channels-last, fused Adam, torch.compile default"."""
        parts = [f"{str(self.autocast_dtype).removeprefix('torch.')} autocast" if self.autocast_dtype else "float32"]
        parts += ["channels-last"] * self.channels_last + ["fused Adam"] * self.fused_adam
        return ", ".join(parts + ([f"torch.compile {self.compile}"] if self.compile else []))


def step_options(device, precision: str = "auto", channels_last="auto", compile: str | None = None) -> StepOptions:
    """Resolves the speed switches of :func:`train`, :func:`train_vae` and :func:`train_gan` for ``device``.

    Args:
        precision: "auto" (the default): "bfloat16" on CUDA, "float32" elsewhere; "bfloat16": the step's
            forward and loss run under ``torch.autocast(device.type, dtype=torch.bfloat16)`` (on CPU too) while
            the parameters, their gradients and Adam's state stay float32 (backward and the optimizer step run
            outside autocast; fastgen's losses return float32 under autocast); "float32": no autocast.
        channels_last: "auto" (the default): True on CUDA, False elsewhere; True converts the model with
            ``model.to(memory_format=torch.channels_last)`` (its 4-D parameters) and makes every batch
            channels-last, so the scaled input reaches the first layer channels-last (the layout fastgen's
            convolution kernels are fastest on); False leaves both as they are.
        compile: None (the default): eager; "default" or "reduce-overhead": the step's forward + loss function
            is compiled once per training call, ``torch.compile(fn, mode=compile, dynamic=False)`` (a static graph
            per batch shape: the full batches and the last, smaller one); "reduce-overhead" also replays it as
            CUDA graphs and needs a CUDA device.

    Adam is fused (``fused=True``, one kernel for every parameter) on CUDA and on CPU: torch 2.13's fused CPU
    Adam matched the for-loop Adam to 2e-7 after 20 steps of a PixelCNN and took a third of its time per step
    (160 vs 440 us); other devices keep PyTorch's default.
    """
    device = torch.device(device)
    check_choice("precision", precision, PRECISIONS)
    if not (isinstance(channels_last, bool) or (isinstance(channels_last, str) and channels_last == "auto")):
        raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    check_choice("compile", compile, COMPILE_MODES)
    cuda = device.type == "cuda"
    if compile == "reduce-overhead" and not cuda:
        raise ValueError(f"compile='reduce-overhead' replays CUDA graphs, which need a CUDA device; the model "
                         f"trains on {device.type} (use compile='default' or None there)")
    bfloat16 = precision == "bfloat16" or (precision == "auto" and cuda)
    return StepOptions(autocast_dtype=torch.bfloat16 if bfloat16 else None,
                       channels_last=cuda if channels_last == "auto" else channels_last,
                       fused_adam=device.type in ("cuda", "cpu"), compile=compile)


def _place(model: torch.nn.Module, device: torch.device, options: StepOptions) -> None:
    """Moves the model to ``device``, in channels-last when chosen."""
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)


def _adam(params, lr: float, options: StepOptions, **kwargs) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, fused=True if options.fused_adam else None, **kwargs)


def _autocast(device: torch.device, options: StepOptions):
    """The context the step's forward and loss run in: bfloat16 autocast, or none."""
    if options.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=options.autocast_dtype)


def _compiled(step_loss, options: StepOptions):
    """``step_loss`` compiled as ``options.compile`` asks, or as it is."""
    return step_loss if options.compile is None else torch.compile(step_loss, mode=options.compile, dynamic=False)


def _step_begin(options: StepOptions) -> None:
    """Tells the CUDA-graph trees a new step begins: the previous replay's outputs may be overwritten (they have
    been read by then)."""
    if options.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def _batch(pixels: torch.Tensor, index: torch.Tensor, device: torch.device, options: StepOptions) -> torch.Tensor:
    """The integer images ``pixels[index]`` on ``device``, channels-last when chosen (the model's scaling to floats
    keeps the layout, so its first layer sees a channels-last input)."""
    x = pixels[index].to(device)
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last else x


@torch.no_grad()
def evaluate(model: PixelModel, pixels: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256,
             device=None) -> float:
    """Bits/dim of ``pixels`` [N, C, H, W] (labels [N] for a conditional model), in eval mode, in float32 (no
    autocast, whatever precision :func:`train` used: the reported bits/dim are not bfloat16-rounded)."""
    labels = _check_data(model, pixels, labels)
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(pixels), batch_size):
        x = pixels[start:start + batch_size].to(device)
        y = None if labels is None else labels[start:start + batch_size].to(device)
        total += float(model.nll(x, y, pixels_checked=True)) * len(x)
    model.train(was_training)
    return bits_per_dim(total / max(len(pixels), 1))


def train(model: PixelModel, pixels: torch.Tensor, labels: torch.Tensor | None = None, *, epochs: int = 10,
          batch_size: int = 64, lr: float = 3e-3, device=None, test_pixels: torch.Tensor | None = None,
          test_labels: torch.Tensor | None = None, test_fraction: float = 0.1, seed: int = 0,
          progress: bool = True, on_epoch=None, precision: str = "auto", channels_last="auto",
          compile: str | None = None) -> list[dict]:
    """Trains ``model`` with Adam on integer ``pixels`` [N, C, H, W] (0..levels-1) for ``epochs`` epochs.

    Args:
        labels: [N] class labels, used when the model is conditional (``model.n_classes``); required then.
        device: where to train (default: the model's device); the model is moved there.
        test_pixels, test_labels: the held-out set; by default the last ``test_fraction`` of a permutation
            seeded with ``seed`` (:func:`fastgen.data.train_test_indices`) is held out from ``pixels``.
        seed: also seeds the shuffling of the batches.
        progress: show a tqdm progress bar per epoch.
        on_epoch: called with each epoch's record as it finishes (e.g. to print it).
        precision: "auto" (bfloat16 autocast on CUDA, float32 elsewhere), "float32" or "bfloat16" (autocast over
            the forward and the loss, float32 weights); see :func:`step_options`.
        channels_last: "auto" (True on CUDA), True or False: the model and its batches in channels-last.
        compile: None, "default" or "reduce-overhead" (CUDA only): torch.compile of the step's forward + loss.

    Returns:
        the history: one dict per epoch with "epoch" (1..), "train_bpd" (the mean over the epoch's batches, at the
        chosen precision), "test_bpd" (after the epoch, in eval mode, by :func:`evaluate`: float32 and eager,
        whatever ``precision`` and ``compile``; nan without a test set) and "seconds" (the epoch's time).
    """
    _check_loop(epochs, batch_size, lr)
    device = next(model.parameters()).device if device is None else torch.device(device)
    options = step_options(device, precision, channels_last, compile)
    pixels, labels, test_pixels, test_labels = _split(model, pixels, labels, test_pixels, test_labels,
                                                      test_fraction, seed)
    _place(model, device, options)
    optimizer = _adam(model.parameters(), lr, options)

    def step_loss(x, y):
        """The step's forward and loss (what ``compile`` compiles); backward and the Adam step run outside."""
        with _autocast(device, options):
            loss = model.nll(x, y, pixels_checked=True)
        return loss

    step = _compiled(step_loss, options)
    history = []
    for epoch, batches, start in _epochs(len(pixels), epochs, batch_size, seed, progress):
        model.train()
        total, count = 0.0, 0
        for index in batches:
            x = _batch(pixels, index, device, options)
            y = None if labels is None else labels[index].to(device)
            _step_begin(options)
            loss = step(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            nats = loss.item()
            total, count = total + nats * len(x), count + len(x)
            batches.set_postfix(bpd=f"{bits_per_dim(nats):.3f}")
        test_bpd = evaluate(model, test_pixels, test_labels, device=device) if len(test_pixels) else math.nan
        record = dict(epoch=epoch, train_bpd=bits_per_dim(total / count), test_bpd=test_bpd,
                      seconds=time.perf_counter() - start)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    model.eval()
    return history


def _epochs(n_images: int, epochs: int, batch_size: int, seed: int, progress: bool):
    """Per epoch: (epoch, a tqdm bar over that epoch's shuffled index batches, its start time); the shuffles
    come from one generator seeded with ``seed``."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(n_images, generator=generator)
        batches = [order[first:first + batch_size] for first in range(0, n_images, batch_size)]
        yield epoch, tqdm(batches, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not progress,
                          unit="batch"), start


def _check_loop(epochs, batch_size, lr) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")


def _split(model, pixels, labels, test_pixels, test_labels, test_fraction, seed):
    """Checks the data; holds out a seeded ``test_fraction`` of ``pixels`` (and labels) when no test set is
    given. Returns (pixels, labels, test_pixels, test_labels)."""
    labels = _check_data(model, pixels, labels)
    if test_pixels is None:
        train_index, test_index = train_test_indices(len(pixels), test_fraction, seed)
        test_pixels, pixels = pixels[test_index], pixels[train_index]
        if labels is not None:
            test_labels, labels = labels[test_index], labels[train_index]
    else:
        test_labels = _check_data(model, test_pixels, test_labels, "test_pixels", "test_labels")
    if len(pixels) == 0:
        raise ValueError("pixels: no training images left after holding out the test set")
    return pixels, labels, test_pixels, test_labels


@torch.no_grad()
def evaluate_vae(model: VAE, pixels: torch.Tensor, batch_size: int = 256, device=None) -> dict:
    """Mean negative ELBO and its reconstruction and KL parts, nats per image, of integer ``pixels``
    [N, C, H, W] in eval mode (one posterior sample per image), in float32 (no autocast, whatever precision
    :func:`train_vae` used): {"nelbo", "reconstruction", "kl"}."""
    _check_data(model, pixels, None)
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    totals = np.zeros(3)
    for start in range(0, len(pixels), batch_size):
        terms = model.negative_elbo(pixels[start:start + batch_size].to(device))
        totals += [float(t.sum()) for t in terms]
    model.train(was_training)
    return dict(zip(("nelbo", "reconstruction", "kl"), totals / max(len(pixels), 1)))


def train_vae(model: VAE, pixels: torch.Tensor, *, epochs: int = 20, batch_size: int = 64, lr: float = 3e-3,
              beta: float = 1.0, device=None, test_pixels: torch.Tensor | None = None, test_fraction: float = 0.1,
              seed: int = 0, progress: bool = True, on_epoch=None, precision: str = "auto", channels_last="auto",
              compile: str | None = None) -> list[dict]:
    """Trains a VAE with Adam on the negative ELBO (``beta`` weighs the KL) of integer ``pixels`` [N, C, H, W].

    The held-out set, ``seed``, ``progress``, ``on_epoch``, ``precision``, ``channels_last`` and ``compile`` are as
    in :func:`train` (the compiled step is the forward and the negative ELBO). Returns one dict per epoch: "epoch",
    "train_nelbo", "train_reconstruction", "train_kl" (means over the epoch's batches, nats per image, at the
    chosen precision), "test_nelbo", "test_reconstruction", "test_kl" (after the epoch, eval mode, by
    :func:`evaluate_vae`: float32 and eager; nan without a test set), "seconds". The negative ELBO counts the KL
    with weight 1 whatever ``beta``.
    """
    _check_loop(epochs, batch_size, lr)
    device = next(model.parameters()).device if device is None else torch.device(device)
    options = step_options(device, precision, channels_last, compile)
    pixels, _, test_pixels, _ = _split(model, pixels, None, test_pixels, None, test_fraction, seed)
    _place(model, device, options)
    optimizer = _adam(model.parameters(), lr, options)

    def step_loss(x):
        """The step's forward and loss (what ``compile`` compiles): (the batch mean, the per-image terms)."""
        with _autocast(device, options):
            terms = model.negative_elbo(x, beta=beta)
            loss = terms.loss.mean()
        return loss, terms

    step = _compiled(step_loss, options)
    history = []
    for epoch, batches, start in _epochs(len(pixels), epochs, batch_size, seed, progress):
        model.train()
        totals = np.zeros(3)
        for index in batches:
            x = _batch(pixels, index, device, options)
            _step_begin(options)
            loss, terms = step(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            reconstruction, kl = terms.reconstruction.sum().item(), terms.kl.sum().item()
            totals += [reconstruction + kl, reconstruction, kl]
            batches.set_postfix(nelbo=f"{(reconstruction + kl) / len(x):.2f}")
        test = evaluate_vae(model, test_pixels, device=device) if len(test_pixels) else dict.fromkeys(
            ("nelbo", "reconstruction", "kl"), math.nan)
        train_means = totals / len(pixels)
        record = dict(epoch=epoch, train_nelbo=train_means[0], train_reconstruction=train_means[1],
                      train_kl=train_means[2], **{f"test_{k}": v for k, v in test.items()},
                      seconds=time.perf_counter() - start)
        history.append({k: float(v) if k != "epoch" else v for k, v in record.items()})
        if on_epoch is not None:
            on_epoch(history[-1])
    model.eval()
    return history


def train_gan(model: DCGAN, pixels: torch.Tensor, *, epochs: int = 20, batch_size: int = 64, lr: float = 2e-4,
              betas: tuple[float, float] = (0.5, 0.999), device=None, seed: int = 0, progress: bool = True,
              on_epoch=None, precision: str = "auto", channels_last="auto", compile: str | None = None) -> list[dict]:
    """Trains a DCGAN on integer ``pixels`` [N, C, S, S]: per batch one D step (:meth:`DCGAN.d_loss`, R1
    included when the model has ``r1_gamma``) then one G step on a fresh batch of z, each with its own Adam
    (``lr``, ``betas``; DCGAN's 2e-4 and (0.5, 0.999)).

    ``precision``, ``channels_last`` and ``compile`` are as in :func:`train`. ``compile`` compiles the G step's
    forward + loss, and the D step's unless the model has R1 (``r1_gamma`` > 0): R1 differentiates the D loss's
    gradient (double backward), which torch.compile does not compile, so that D step stays eager.

    Returns one dict per epoch: "epoch", "d_loss" (with R1), "r1", "g_loss" (means over the epoch's batches),
    "seconds". The model stays in train mode (the generator's batch norm uses batch statistics).
    """
    _check_loop(epochs, batch_size, lr)
    device = next(model.parameters()).device if device is None else torch.device(device)
    options = step_options(device, precision, channels_last, compile)
    _check_data(model, pixels, None)
    if len(pixels) == 0:
        raise ValueError("pixels: no training images")
    _place(model, device, options)
    d_optimizer = _adam(model.discriminator.parameters(), lr, options, betas=betas)
    g_optimizer = _adam(model.generator.parameters(), lr, options, betas=betas)

    def d_step_loss(real):
        """The D step's forward and loss (compiled by ``compile`` unless R1 is on)."""
        with _autocast(device, options):
            return model.d_loss(real)

    def g_step_loss(n):
        """The G step's forward and loss on ``n`` fresh latents (what ``compile`` compiles)."""
        with _autocast(device, options):
            return model.g_loss(n)

    d_step = d_step_loss if model.r1_gamma > 0 else _compiled(d_step_loss, options)
    g_step = _compiled(g_step_loss, options)
    history = []
    for epoch, batches, start in _epochs(len(pixels), epochs, batch_size, seed, progress):
        model.train()
        totals = np.zeros(3)
        n_batches = 0
        for index in batches:
            real = _batch(pixels, index, device, options)
            _step_begin(options)
            d_terms = d_step(real)
            d_optimizer.zero_grad(set_to_none=True)
            d_terms.loss.backward()
            d_optimizer.step()
            d_values = torch.stack([d_terms.loss.detach(), d_terms.r1.detach()])  # read before the G step's replay
            _step_begin(options)
            g_loss = g_step(len(real))
            g_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            g_optimizer.step()
            values = [*d_values.tolist(), g_loss.item()]
            totals += values
            n_batches += 1
            batches.set_postfix(d=f"{values[0]:.3f}", g=f"{values[2]:.3f}")
        means = totals / n_batches
        record = dict(epoch=epoch, d_loss=float(means[0]), r1=float(means[1]), g_loss=float(means[2]),
                      seconds=time.perf_counter() - start)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return history


def to_pixels(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Float images in [0, 1] -> integer pixels 0..levels-1 (rounded), e.g. for :func:`save_image_grid`."""
    return images.detach().clamp(0, 1).mul(levels - 1).round().long()


def save_checkpoint(path, model: PixelModel, **meta) -> None:
    """Writes ``model`` to ``path`` with torch.save: its kind (a :data:`MODELS` name),
    ``model.config``, the state_dict, levels, and ``meta`` (e.g. image_size=(H, W), history=[...]): plain
    Python values (numbers, strings, lists, tuples, dicts), so :func:`load_checkpoint` can read it with
    ``weights_only=True``."""
    checkpoint = dict(meta, kind=model_kind(model), config=dict(model.config), levels=model.levels,
                      state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()})
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    torch.save(checkpoint, path)


def load_checkpoint(path, map_location="cpu") -> tuple[PixelModel, dict]:
    """Rebuilds the model saved by :func:`save_checkpoint` (``MODELS[kind](**config)``, weights loaded, eval
    mode). Returns (model, meta): meta is everything saved but the state_dict (kind, config, levels,
    image_size, history, ...). Any file that is not such a checkpoint raises ``ValueError`` with a one-line
    reason."""
    name = repr(os.fspath(path))
    if os.path.isfile(path) and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(f"path {name} is not a fastgen checkpoint: not a file written by torch.save")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as error:
        raise ValueError(f"cannot read {name}: {error.strerror or error}") from error
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            reason = "it holds Python objects, not only tensors and plain values as a fastgen checkpoint does"
        else:
            reason = f"not a file written by torch.save ({_one_line(error)})"
        raise ValueError(f"path {name} is not a fastgen checkpoint: {reason}") from error
    except Exception as error:  # torch.load raises KeyError, RuntimeError, EOFError, ... on arbitrary bytes
        raise ValueError(f"path {name} is not a fastgen checkpoint: not a file written by torch.save "
                         f"({_one_line(error)})") from error
    if not isinstance(checkpoint, dict) or not {"kind", "config", "state_dict"} <= checkpoint.keys():
        raise ValueError(f"path {name} is not a fastgen checkpoint (no kind/config/state_dict)")
    if checkpoint["kind"] not in MODELS:
        raise ValueError(f"path {name}: unknown model kind {checkpoint['kind']!r} (known: {', '.join(MODELS)})")
    try:
        model = MODELS[checkpoint["kind"]](**checkpoint["config"])
        model.load_state_dict(checkpoint.pop("state_dict"))
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise ValueError(f"path {name}: its config and weights do not make a {checkpoint['kind']} model "
                         f"({_one_line(error)})") from error
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    return model.eval(), checkpoint


def _one_line(error: BaseException, limit: int = 200) -> str:
    """The error's type and message on one line (whitespace collapsed), cut at ``limit`` characters."""
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def image_grid(pixels: torch.Tensor, levels: int, nrow: int | None = None, scale: int | None = None,
               padding: int = 1) -> np.ndarray:
    """Integer images [N, C, H, W] (C = 1 or 3, 0..levels-1) -> one float image [rows, cols] or
    [rows, cols, 3] in [0, 1]: ``nrow`` images per row (default ceil(sqrt(N))), each enlarged ``scale`` times
    by nearest neighbour (default: to at least 32 pixels a side), ``padding`` pixels of white between them."""
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"pixels must be a tensor [N, C, H, W] with C = 1 or 3, got "
                         f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
    n, c, h, w = pixels.shape
    if n == 0:
        raise ValueError("pixels holds no images")
    nrow = math.ceil(math.sqrt(n)) if nrow is None else nrow
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    scale = max(1, math.ceil(32 / max(h, w, 1))) if scale is None else scale
    images = pixels.detach().cpu().double().div(levels - 1).clamp(0, 1).numpy()
    images = images.repeat(scale, axis=2).repeat(scale, axis=3)
    rows = math.ceil(n / nrow)
    cell_h, cell_w = h * scale + padding, w * scale + padding
    grid = np.ones((c, rows * cell_h + padding, nrow * cell_w + padding))
    for i, image in enumerate(images):
        top, left = padding + (i // nrow) * cell_h, padding + (i % nrow) * cell_w
        grid[:, top:top + h * scale, left:left + w * scale] = image
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


#: file name endings :func:`save_image_grid` writes, and the format of each
IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def save_image_grid(pixels: torch.Tensor, levels: int, path, nrow: int | None = None) -> None:
    """Writes integer images [N, C, H, W] (0..levels-1) as one image grid (see :func:`image_grid`): a JPEG
    (quality 95, with Pillow) where ``path`` ends in .jpg or .jpeg, else a PNG (with matplotlib); grey images
    in the grey colour map, 0 black and levels-1 white."""
    grid = image_grid(pixels, levels, nrow)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    if IMAGE_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower()) == "jpeg":
        from PIL import Image

        Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(path, format="JPEG", quality=95)
        return
    import matplotlib.pyplot as plt

    plt.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
