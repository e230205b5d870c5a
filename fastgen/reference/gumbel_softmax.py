"""Gumbel-softmax as torch.nn.functional.gumbel_softmax writes it in eager PyTorch."""

from __future__ import annotations

import torch


def sample_gumbel(logits: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise of logits' shape and dtype, drawn as ``F.gumbel_softmax`` draws it: -log(Exp(1)).

    From torch's generator, or from a generator seeded with ``seed``: a different stream from the Triton
    kernels' Philox noise. Like torch's, it is +inf where the exponential draw is 0 (pytorch issue #22442).
    """
    generator = None if seed is None else torch.Generator(device=logits.device).manual_seed(seed)
    exponential = torch.empty_like(logits, memory_format=torch.legacy_contiguous_format)
    return -exponential.exponential_(generator=generator).log()


def gumbel_softmax(logits, tau=1.0, hard=False, *, dim=-1, seed=None, noise=None):
    """softmax((logits + g) / tau) over ``dim``; with ``hard`` the straight-through one-hot of its argmax
    (see :func:`fastgen.gumbel_softmax`). ``noise`` is the Gumbel noise g (drawn by :func:`sample_gumbel`
    when None)."""
    gumbels = sample_gumbel(logits, seed) if noise is None else noise
    z = logits + gumbels
    # softmax(z / tau) as softmax((z - max z) / tau): the same function and gradient, but z / tau cannot
    # overflow to inf (then nan) for a small tau; tau -> 0 gives the one-hot limit. Empty rows have no max.
    if z.numel() and z.shape[dim]:
        z = z - z.detach().amax(dim, keepdim=True)
    if tau >= torch.finfo(z.dtype).tiny:
        y_soft = (z / tau).softmax(dim)
    else:  # tau would round to 0 (or a subnormal) in z's dtype: divide in float64, where it is exact
        y_soft = (z.double() / tau).to(z.dtype).softmax(dim)
    if not hard:
        return y_soft
    # straight through, as torch: the value of the one-hot, the gradient of y_soft
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft
