"""Float32 islands inside autocast regions (private)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` cast to float32 if it is float16/bfloat16, else unchanged.

    Float64 inputs stay float64, so tests in double precision stay exact.
    """
    return x.float() if x.dtype in _LOW_PRECISION else x


@contextlib.contextmanager
def autocast_disabled(device: torch.device) -> Iterator[None]:
    """Disable autocast for ``device``'s type inside the block (float32 math)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield
