"""The compute device of a command: ``--device auto|cpu|cuda|cuda:N``.

Shared by every command (``pretrain``, ``embed``, ``benchmark``, ``retrieve``); kept apart
from the training package so that the inference commands do not import the training stack.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a device.

    Args:
        name: The requested device; ``auto`` picks CUDA when available.
        local_rank: The GPU index for ``auto``/``cuda`` under torchrun.

    Returns:
        The device.

    Raises:
        ValueError: If CUDA is requested but not available, or the name is unknown.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device
