"""Gradient variance of the score-function and pathwise estimators, side by side (`fastgen.estimators`).

For E_q[f(z)] with a known gradient: a diagonal Gaussian q = N(mu, exp(logvar)) and f(z) = ||z - t||^2
(exact gradient 2 (mu - t) and exp(logvar)), and a categorical q over 10 classes with f(z) = <z, v> (exact
gradient p_j (v_j - E f)). Each estimator is called ``n_trials`` times; the table gives the error of the mean
gradient against the exact one and the total variance of one call's gradient (the sum over parameters).
Run: `python -m fastgen.benchmarks.bench_estimators`, or `pytest benchmarks/bench_estimators.py -s`.
"""

from __future__ import annotations

import torch

from fastgen import estimators


def _problems(device: str):
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(16, generator=gen).to(device).requires_grad_()
    logvar = (0.3 * torch.randn(16, generator=gen)).to(device).requires_grad_()
    target = torch.randn(16, generator=gen).to(device)
    gaussian_exact = [2 * (mu - target).detach(), torch.exp(logvar).detach()]
    logits = torch.randn(10, generator=gen).to(device).requires_grad_()
    values = torch.randn(10, generator=gen).to(device)
    p = torch.softmax(logits.detach(), -1)
    categorical_exact = [p * (values - (p * values).sum())]
    return [
        ("gaussian 16-d", estimators.Gaussian(mu, logvar), lambda z: ((z - target) ** 2).sum(-1), [mu, logvar],
         gaussian_exact),
        ("categorical 10-way", estimators.Categorical(logits, tau=0.5), lambda z: (z * values).sum(-1), [logits],
         categorical_exact),
    ]


def variance_rows(device: str = "cpu", n_samples: int = 8, n_trials: int = 200) -> list[dict]:
    rows = []
    for name, q, f, params, exact in _problems(device):
        runs = {
            "score function": lambda: estimators.score_function(f, q, n_samples),
            "score function, leave-one-out baseline": lambda: estimators.score_function(
                f, q, n_samples, baseline="leave-one-out"),
            "pathwise" + (" (Gumbel-softmax, tau=0.5)" if isinstance(q, estimators.Categorical) else ""):
                lambda: estimators.pathwise(f, q, n_samples),
        }
        for estimator, run in runs.items():
            means, variances = estimators.gradient_variance(run, params, n_trials)
            error = sum(((m - e) ** 2).sum() for m, e in zip(means, exact)).sqrt().item()
            norm = sum((e ** 2).sum() for e in exact).sqrt().item()
            rows.append(dict(distribution=name, estimator=estimator, n_samples=n_samples, n_trials=n_trials,
                             mean_error=error / norm, total_variance=sum(v.sum().item() for v in variances)))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| distribution | estimator | samples per call | relative error of the mean gradient | "
             "total gradient variance |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['distribution']} | {r['estimator']} | {r['n_samples']} | {r['mean_error']:.3f} | "
                     f"{r['total_variance']:.4g} |")
    return "\n".join(lines)


def test_estimator_variance(device):
    rows = variance_rows(device, n_trials=50)
    print("\n" + markdown(rows))
    assert len(rows) == 6


if __name__ == "__main__":
    print(markdown(variance_rows("cuda" if torch.cuda.is_available() else "cpu")))
