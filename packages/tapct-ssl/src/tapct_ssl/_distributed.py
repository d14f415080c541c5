"""Collectives guarded for single-process runs (private).

Every collective of the package goes through these helpers, so a run without
``torch.distributed`` initialised (a laptop, a unit test) never calls into it. This is
the fix for DINOv2's unguarded iBOT Sinkhorn-Knopp ``all_reduce``
(dinov2/loss/ibot_patch_loss.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Return True when ``torch.distributed`` is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Return the number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over all processes (no-op when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """Take the element-wise max of ``tensor`` in place over all processes."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
