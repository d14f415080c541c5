"""Helpers for sampling with an optional `torch.Generator`."""

from __future__ import annotations

import torch


def uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` float64 samples from U(low, high) on the generator's device (CPU without one)."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return (low + (high - low) * u).cpu()


def generator_from(seed: int | torch.Generator | None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed``; a generator is passed through; None stays None."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g
