"""torch.distributed set-up for ``torchrun``: process group, device, small collectives.

Every collective is guarded for the single-process case (STYLE.md 8). ``torchrun`` sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; with those
present and ``WORLD_SIZE > 1`` a process group is created (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs
import torch
import torch.distributed as dist

from tapct_app.devices import resolve_device

__all__ = [
    "DistInfo",
    "all_gather_floats",
    "all_reduce_max_",
    "any_true",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "resolve_device",
]


@attrs.frozen
class DistInfo:
    """This process's place in the job.

    Attributes:
        rank: Global rank (0 .. world_size - 1).
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU).
        device: The device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes checkpoints, logs and exports)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group when one is configured.

    Args:
        device_name: As for :func:`resolve_device`.

    Returns:
        The :class:`DistInfo`; ``world_size == 1`` without ``torchrun``.

    Raises:
        ValueError: As :func:`resolve_device`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def any_true(flag: bool, device: torch.device) -> bool:
    """Return True when ``flag`` is True on any rank (a MAX all-reduce).

    Args:
        flag: This rank's value.
        device: Device for the reduction tensor (the process group's device).

    Returns:
        The OR over ranks.
    """
    if not _active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """In place MAX over ranks of a tensor on the process group's device (no host sync).

    Args:
        tensor: This rank's values (same shape and dtype on every rank).

    Returns:
        ``tensor``, now holding the element-wise maximum over ranks (unchanged in a
        single process).
    """
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_floats(values: Sequence[float], device: torch.device) -> list[list[float]]:
    """Gather a short list of floats from every rank.

    Args:
        values: This rank's values (same length on every rank).
        device: Device for the gather.

    Returns:
        ``world_size`` lists, in rank order (one list in a single process).
    """
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if not _active():
        return [t.tolist()]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]
