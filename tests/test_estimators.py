"""fastgen.estimators: unbiasedness against exact gradients, and the variance ordering the lecture predicts."""

import pytest
import torch

from fastgen import estimators

N_TRIALS = 100


def gaussian_problem(device):
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(6, generator=gen).to(device).requires_grad_()
    logvar = (0.3 * torch.randn(6, generator=gen)).to(device).requires_grad_()
    target = torch.randn(6, generator=gen).to(device)
    exact = [2 * (mu - target).detach(), torch.exp(logvar).detach()]  # of E||z - t||^2
    return estimators.Gaussian(mu, logvar), (lambda z: ((z - target) ** 2).sum(-1)), [mu, logvar], exact


def assert_unbiased(means, variances, exact, n_trials):
    for mean, var, ex in zip(means, variances, exact):
        stderr = (var / n_trials).sqrt()
        assert ((mean - ex).abs() <= 5 * stderr + 1e-6).all(), (mean, ex, stderr)


def test_gaussian_estimators_are_unbiased_and_pathwise_has_lower_variance(device):
    q, f, params, exact = gaussian_problem(device)
    results = {}
    for name, run in {
        "score": lambda: estimators.score_function(f, q, 8),
        "score+baseline": lambda: estimators.score_function(f, q, 8, baseline="leave-one-out"),
        "pathwise": lambda: estimators.pathwise(f, q, 8),
    }.items():
        means, variances = estimators.gradient_variance(run, params, N_TRIALS)
        assert_unbiased(means, variances, exact, N_TRIALS)
        results[name] = sum(v.sum().item() for v in variances)
    assert results["pathwise"] < results["score+baseline"] < results["score"]


def test_surrogate_value_is_the_monte_carlo_estimate(device):
    q, f, params, _ = gaussian_problem(device)
    torch.manual_seed(3)
    value = estimators.score_function(f, q, 4000, baseline=0.5)
    expected = f(q.mu.detach()[None]).item() + torch.exp(q.logvar.detach()).sum().item()  # E||z - t||^2
    assert value.item() == pytest.approx(expected, rel=0.05)


def test_categorical_score_function_is_unbiased(device):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, generator=gen).to(device).requires_grad_()
    values = torch.randn(5, generator=gen).to(device)
    p = torch.softmax(logits.detach(), -1)
    exact = [p * (values - (p * values).sum())]
    q = estimators.Categorical(logits)
    f = lambda z: (z * values).sum(-1)  # noqa: E731
    means, variances = estimators.gradient_variance(
        lambda: estimators.score_function(f, q, 16, baseline="leave-one-out"), [logits], N_TRIALS)
    assert_unbiased(means, variances, exact, N_TRIALS)


def test_categorical_pathwise_points_the_right_way(device):
    """Gumbel-softmax is a biased relaxation, but at a low temperature its mean gradient follows the exact one."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, generator=gen).to(device).requires_grad_()
    values = torch.randn(5, generator=gen).to(device)
    p = torch.softmax(logits.detach(), -1)
    exact = p * (values - (p * values).sum())
    q = estimators.Categorical(logits, tau=0.5)
    (mean,), _ = estimators.gradient_variance(lambda: estimators.pathwise(lambda z: (z * values).sum(-1), q, 16),
                                              [logits], 50)
    cosine = torch.nn.functional.cosine_similarity(mean, exact, dim=0)
    assert cosine > 0.8


def test_errors(device):
    q, f, _, _ = gaussian_problem(device)
    with pytest.raises(ValueError, match="baseline"):
        estimators.score_function(f, q, 4, baseline="mean")
    with pytest.raises(ValueError, match="n_samples >= 2"):
        estimators.score_function(f, q, 1, baseline="leave-one-out")
    with pytest.raises(ValueError, match="n_samples"):
        estimators.pathwise(f, q, 0)
    with pytest.raises(TypeError, match="f must be callable"):
        estimators.pathwise(3, q, 2)
    with pytest.raises(ValueError, match="one value per sample"):
        estimators.pathwise(lambda z: z, q, 2)
