"""Pretraining dataset: random slabs of whole slices read chunk-wise from a zarr store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from os import PathLike
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from .formats import AIR_HU
from .normalize import ClipNormalize
from .store import ZarrVolumeStore

__all__ = ["PretrainSlabDataset"]


class PretrainSlabDataset(IterableDataset):
    """An endless, resumable stream of normalised slabs ``(1, S, H0, W0)`` for pretraining.

    Sample ``k`` (a global index) is a pure function of ``(seed, k)``: a scan drawn
    uniformly, a start slice drawn uniformly, the ``S`` slices read from the store (only
    the chunks holding them), resized in-plane to ``(H0, W0)`` (bilinear, antialiased;
    slices are never mixed, paper C.2 "in image space"), then normalised.
    The multi-crop runs later on the batch (on the GPU).

    Scans with fewer than ``S`` slices: all their slices are used and the slab is padded
    with ``pad_hu`` (air, -1024 HU) evenly before and after.

    Sharding and resume: rank ``r`` of ``world_size`` yields global indices
    ``j * world_size + r`` for local steps ``j = position, position + 1, ...``; DataLoader
    workers split the local steps round-robin, so the order with any ``num_workers`` is the
    same. The dataset cannot see what workers consumed: the training loop keeps the number
    of samples consumed by this rank and resumes with
    ``load_state_dict({"position": consumed})``.

    Args:
        store: A `ZarrVolumeStore` or its path.
        slab_depth: ``S`` slices per sample.
        in_plane_size: ``(H0, W0)``.
        normalize: Callable on HU tensors (default `ClipNormalize` with the paper's values);
            None returns HU.
        seed: Base seed.
        rank: This process's rank.
        world_size: Number of processes.
        pad_hu: Fill for missing slices of short scans.

    Raises:
        ValueError: empty store, bad sizes or rank.
    """

    def __init__(
        self,
        store: ZarrVolumeStore | str | PathLike[str],
        slab_depth: int,
        in_plane_size: tuple[int, int] = (224, 224),
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = ClipNormalize(),  # noqa: B008
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_hu: float = AIR_HU,
    ) -> None:
        super().__init__()
        self.store = store if isinstance(store, ZarrVolumeStore) else ZarrVolumeStore(store)
        if len(self.store) == 0:
            raise ValueError(f"{self.store.path}: the store holds no complete scan")
        if slab_depth < 1 or len(in_plane_size) != 2 or min(in_plane_size) < 1:
            raise ValueError(f"bad slab_depth {slab_depth} or in_plane_size {in_plane_size}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}"
            )
        self.slab_depth = int(slab_depth)
        self.in_plane_size = (int(in_plane_size[0]), int(in_plane_size[1]))
        self.normalize = normalize
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.pad_hu = float(pad_hu)
        self.position = 0
        self._names = list(self.store.names)
        self._depths = [self.store.shape(n)[0] for n in self._names]

    def __getitem__(self, index: int) -> torch.Tensor:
        """Sample with global index ``index``: ``(1, S, H0, W0)`` float32."""
        rng = np.random.default_rng([self.seed, int(index)])
        scan = int(rng.integers(len(self._names)))
        name, depth = self._names[scan], self._depths[scan]
        s = self.slab_depth
        if depth >= s:
            start = int(rng.integers(depth - s + 1))
            slab = self.store.read_slab(name, start, s)
        else:
            slab = self.store.read_slab(name, 0, depth)
            before = (s - depth) // 2
            slab = F.pad(slab, (0, 0, 0, 0, before, s - depth - before), value=self.pad_hu)
        if tuple(slab.shape[-2:]) != self.in_plane_size:
            slab = F.interpolate(
                slab.transpose(0, 1),
                size=self.in_plane_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            ).transpose(0, 1)
        if self.normalize is not None:
            slab = self.normalize(slab)
        return slab.float().contiguous()

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.position
        while True:
            if step % n_workers == worker:
                sample = self[step * self.world_size + self.rank]
                if info is None:
                    self.position = step + 1  # counted as consumed once handed out
                yield sample
            step += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"position": local steps consumed, "seed": ...}``."""
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state["position"]`` (samples this rank has consumed)."""
        self.position = int(state["position"])
        self.seed = int(state.get("seed", self.seed))
