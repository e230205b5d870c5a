"""Seeds of the in-kernel Philox noise: one int32 kernel argument, drawn from torch's default generator when the
caller gives none (so ``torch.manual_seed`` makes runs repeatable).

Eagerly the seed is drawn as a Python int (:func:`draw_seed`: torch's CPU generator, no device sync). Under
torch.compile an int drawn while tracing would become a constant of the graph, every call the same noise: a
seed the caller did not give is drawn *in* the graph as a 0-d int64 CPU tensor (:func:`traced_seed`), which the
custom op reads on the host when it launches (:func:`seed_value`: a CPU tensor, no device sync). A graph with
such a CPU input is not captured as a CUDA graph, so each call keeps drawing a new seed; an explicit int seed
is replayed as given.
"""

from __future__ import annotations

import torch

SEED_HIGH = 2**31 - 1  # seeds are drawn in [0, SEED_HIGH): one int32 kernel argument


def draw_seed() -> int:
    """A seed from torch's default (CPU) generator."""
    return int(torch.randint(0, SEED_HIGH, ()).item())


def draw_seed_tensor() -> torch.Tensor:
    """The same draw as a 0-d int64 CPU tensor (traceable: drawn in the compiled graph)."""
    return torch.randint(0, SEED_HIGH, ())


def traced_seed(seed: int | None, noise_given: bool) -> tuple[int, torch.Tensor | None]:
    """(seed, drawn_seed) arguments of a custom op: the caller's seed, or a seed drawn in the graph when the
    caller gave neither a seed nor the noise itself."""
    if seed is None and not noise_given:
        return 0, draw_seed_tensor()
    return (0 if seed is None else seed), None


def seed_value(seed: int, drawn_seed: torch.Tensor | None) -> int:
    """The seed a custom op launches with: the drawn one when there is one."""
    return seed if drawn_seed is None else int(drawn_seed)
