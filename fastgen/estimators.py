"""The two Monte-Carlo gradient estimators of E_{z ~ q_theta}[f(z)], for a user-supplied f.

* score function (REINFORCE): grad = E[(f(z) - b) * grad log q(z)], with an optional baseline b; f may be
  any function (not differentiable, discrete z);
* reparameterisation (pathwise): z = g(theta, noise), grad = E[grad f(g(theta, noise))]; f must be
  differentiable in z. For a categorical q it uses the Gumbel-softmax relaxation (biased, lower variance).

Distributions: :class:`Gaussian` (diagonal, mean and log-variance as in a VAE: its pathwise samples come from
:func:`fastgen.reparameterize_kl`) and :class:`Categorical` (logits; pathwise samples from
:func:`fastgen.gumbel_softmax`). Each estimator returns a scalar *surrogate*: its value is the Monte-Carlo
estimate of E[f(z)] and its gradient (``surrogate.backward()``) is the estimator's gradient.

>>> q = estimators.Gaussian(mu, logvar)
>>> estimators.score_function(f, q, n_samples=64, baseline="leave-one-out").backward()
>>> estimators.pathwise(f, q, n_samples=64).backward()
>>> estimators.gradient_variance(lambda: estimators.pathwise(f, q, 16), [mu, logvar], n_trials=200)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

BASELINES = (None, "leave-one-out")


@dataclasses.dataclass
class Gaussian:
    """A diagonal Gaussian N(mu, exp(logvar)) over tensors of mu's shape."""

    mu: torch.Tensor
    logvar: torch.Tensor

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n_samples, *mu.shape] samples carrying no gradient (for the score-function estimator)."""
        eps = torch.randn((n_samples, *self.mu.shape), generator=generator, dtype=self.mu.dtype,
                          device=self.mu.device)
        return (self.mu + torch.exp(0.5 * self.logvar) * eps).detach()

    def rsample(self, n_samples: int, seed: int | None = None) -> torch.Tensor:
        """[n_samples, *mu.shape] reparameterised samples (gradients flow to mu and logvar)."""
        from fastgen.ops.reparameterize_kl import reparameterize_kl

        mu = self.mu.unsqueeze(0).expand(n_samples, *self.mu.shape)
        logvar = self.logvar.unsqueeze(0).expand(n_samples, *self.logvar.shape)
        z, _ = reparameterize_kl(mu, logvar, seed=seed)
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) summed over the event dims: [n_samples]."""
        lp = -0.5 * (math.log(2 * math.pi) + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar))
        return lp.reshape(z.shape[0], -1).sum(1)


@dataclasses.dataclass
class Categorical:
    """A categorical distribution over the last dim of ``logits``; samples are one-hot vectors."""

    logits: torch.Tensor
    tau: float = 1.0  # temperature of the Gumbel-softmax relaxation (pathwise estimator only)
    hard: bool = False  # straight-through: one-hot forward, relaxed gradient

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n_samples, *logits.shape] exact one-hot samples, carrying no gradient."""
        index = torch.multinomial(torch.softmax(self.logits.detach().reshape(-1, self.logits.shape[-1]), -1),
                                  n_samples, replacement=True, generator=generator)  # [rows, n]
        index = index.t().reshape(n_samples, *self.logits.shape[:-1])
        return torch.nn.functional.one_hot(index, self.logits.shape[-1]).to(self.logits.dtype)

    def rsample(self, n_samples: int, seed: int | None = None) -> torch.Tensor:
        """[n_samples, *logits.shape] relaxed one-hot samples (Gumbel-softmax), differentiable in logits."""
        from fastgen.ops.gumbel_softmax import gumbel_softmax

        logits = self.logits.unsqueeze(0).expand(n_samples, *self.logits.shape)
        return gumbel_softmax(logits, tau=self.tau, hard=self.hard, seed=seed)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) of one-hot samples z, summed over the event dims: [n_samples]."""
        lp = (z * torch.log_softmax(self.logits, -1)).sum(-1)
        return lp.reshape(z.shape[0], -1).sum(1)


def _check(f, n_samples: int) -> None:
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")


def _values(f, z: torch.Tensor) -> torch.Tensor:
    """f applied to a batch of samples: f maps [n, ...] to [n] (or to a scalar per sample)."""
    values = f(z)
    if values.shape != (z.shape[0],):
        raise ValueError(f"f must map samples of shape {tuple(z.shape)} to one value per sample, shape "
                         f"[{z.shape[0]}], got {tuple(values.shape)}")
    return values


def score_function(f: Callable[[torch.Tensor], torch.Tensor], q: Gaussian | Categorical, n_samples: int = 1,
                   baseline: str | float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """REINFORCE surrogate: value = mean f(z_i), gradient = mean (f(z_i) - b_i) grad log q(z_i).

    ``baseline``: None, a number (a fixed baseline), or "leave-one-out" (b_i = the mean of f over the other
    samples: unbiased, needs n_samples >= 2). ``f`` needs no gradient.
    """
    _check(f, n_samples)
    if not (baseline in BASELINES or isinstance(baseline, (int, float)) and not isinstance(baseline, bool)):
        raise ValueError(f"baseline must be None, a number or 'leave-one-out', got {baseline!r}")
    if baseline == "leave-one-out" and n_samples < 2:
        raise ValueError("baseline='leave-one-out' needs n_samples >= 2")
    z = q.sample(n_samples, generator)
    with torch.no_grad():
        values = _values(f, z)
        if baseline == "leave-one-out":
            b = (values.sum() - values) / (n_samples - 1)
        else:
            b = torch.zeros_like(values) if baseline is None else torch.full_like(values, float(baseline))
    log_q = q.log_prob(z)
    # value: the Monte-Carlo estimate; gradient: the score-function estimator
    return (values + (values - b) * (log_q - log_q.detach())).mean()


def pathwise(f: Callable[[torch.Tensor], torch.Tensor], q: Gaussian | Categorical, n_samples: int = 1,
             seed: int | None = None) -> torch.Tensor:
    """Reparameterisation surrogate: mean f(z_i) with z_i = g(theta, noise_i); f must be differentiable.

    For a Categorical q, z_i are Gumbel-softmax relaxations at q.tau (a biased estimator of the discrete
    objective's gradient).
    """
    _check(f, n_samples)
    return _values(f, q.rsample(n_samples, seed)).mean()


def gradient_variance(estimate: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                      n_trials: int = 100) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(mean, variance) over ``n_trials`` independent calls of ``estimate`` (a surrogate) of its gradient
    with respect to each of ``params``."""
    grads = [[] for _ in params]
    for _ in range(n_trials):
        for store, grad in zip(grads, torch.autograd.grad(estimate(), list(params), allow_unused=True)):
            store.append(torch.zeros(()) if grad is None else grad.detach())
    stacked = [torch.stack(g) for g in grads]
    return [s.mean(0) for s in stacked], [s.var(0) for s in stacked]
