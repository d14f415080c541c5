"""Pretraining dataset: sample ``k`` -> a slab of whole slices read chunk-wise from scan stores.

Loader design (issue 9 item 5). CPU time per (12, 512, 512) sample on one core of a
300x512x512 scan (zarr 3.1; ``time.process_time``, so zarr's decoding threads count; the
2-core machine was shared, load average 5-8, so figures are upper bounds):

=========================================  ==========
zarr read, zstd (8, 256, 256) chunks (old)  21.8 ms
zarr read, blosc-lz4+shuffle (1, 512, 512)   8.5 ms
the same in 32-slice files (the default)    10.2 ms
in-plane resize 512 -> 224 (antialiased)    10.9 ms
int16 -> float32 + clip/normalise            2.9 ms
``dataset[k]``, default (int16, 512 x 512)   9.9 ms   (``benchmarks/bench_ingest.py``)
``dataset[k]``, resize 224 + ClipNormalize  24.8 ms
=========================================  ==========

So the CPU keeps to reading: with ``normalize=None`` (the default) a sample is the stored
int16 HU slab at the canvas size ``in_plane_size`` (default 512 x 512, the size of nearly
every CT slice), untouched for scans of that size; clip/normalise and the in-plane resize
run on the training device, where the batched multi-crop resamples from any input size
(the resize fuses into the crop). About 10 ms of CPU per sample: one core feeds about
100 samples/s (the issue's budget: 15 ms). Scans of another in-plane size are resized
on the CPU to the canvas (bilinear, antialiased, then rounded to int16), which costs
those samples about 10 ms more. Passing ``normalize`` (e.g. `ClipNormalize`) and a small
``in_plane_size`` returns float32 normalised slabs resized on the CPU instead (small
runs, the CPU demo, and today's training engine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from os import PathLike
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .formats import AIR_HU
from .store import ZarrStoreCollection, ZarrVolumeStore, open_stores

__all__ = ["PretrainSlabDataset"]

StoreLike = ZarrVolumeStore | ZarrStoreCollection


class PretrainSlabDataset(Dataset[torch.Tensor]):
    """Map-style pretraining samples: ``dataset[k]`` is a slab ``(1, S, H0, W0)``.

    Sample ``k`` is a pure function of ``(seed, k)``: a generator seeded with both draws a
    scan (uniformly, or with probability proportional to its slice count with
    ``scan_weighting="slices"``) and a start slice (uniformly); the ``S`` slices are read
    from the store (only the chunks holding them). Slices are never mixed (paper C.2,
    crops "in image space"): the multi-crop runs later on the batch. Which indices a rank
    reads, and in which order, is the sampler's business (`IterationBatchSampler`), so
    resume and multi-GPU runs are exact. ``len()`` is 2**62 (an endless stream).

    Scans with fewer than ``S`` slices: all their slices, padded with ``pad_hu`` (air)
    evenly before and after.

    Args:
        store: A store, a `ZarrStoreCollection`, or path(s) for `open_stores` (stores or
            folders of stores, e.g. the shards of one archive).
        slab_depth: ``S`` slices per sample.
        in_plane_size: ``(H0, W0)``; slabs of another in-plane size are resized on the CPU.
        normalize: None (default): return int16 HU (normalise on the device). A callable
            on float32 HU tensors (e.g. `ClipNormalize`): return its float32 output.
        seed: Base seed.
        scan_weighting: ``"uniform"`` (every scan equally likely, the default) or
            ``"slices"`` (every slice equally likely).
        pad_hu: Fill for the missing slices of short scans (air).

    Shapes:
        ``dataset[k]``: ``(1, S, H0, W0)`` int16 HU, or float32 with ``normalize``.

    Raises:
        ValueError: empty store, bad sizes or weighting.
    """

    def __init__(
        self,
        store: StoreLike | str | PathLike[str] | Sequence[str | PathLike[str]],
        slab_depth: int,
        in_plane_size: tuple[int, int] = (512, 512),
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        scan_weighting: Literal["uniform", "slices"] = "uniform",
        pad_hu: float = AIR_HU,
    ) -> None:
        super().__init__()
        self.store: StoreLike = (
            store
            if isinstance(store, ZarrVolumeStore | ZarrStoreCollection)
            else open_stores(store)
        )
        if len(self.store) == 0:
            raise ValueError(f"{self.store.path}: the store holds no complete scan")
        if slab_depth < 1 or len(in_plane_size) != 2 or min(in_plane_size) < 1:
            raise ValueError(f"bad slab_depth {slab_depth} or in_plane_size {in_plane_size}")
        if scan_weighting not in ("uniform", "slices"):
            raise ValueError(
                f"scan_weighting must be 'uniform' or 'slices', got {scan_weighting!r}"
            )
        self.slab_depth = int(slab_depth)
        self.in_plane_size = (int(in_plane_size[0]), int(in_plane_size[1]))
        self.normalize = normalize
        self.seed = int(seed)
        self.scan_weighting = scan_weighting
        self.pad_hu = float(pad_hu)
        self._names = list(self.store.names)
        self._depths = np.array([self.store.shape(n)[0] for n in self._names])
        self._cumulative = np.cumsum(self._depths)

    def __len__(self) -> int:
        return 2**62

    def short_scans(self) -> list[tuple[str, int]]:
        """The scans with fewer slices than the slab, padded with ``pad_hu`` when drawn.

        Returns:
            ``(name, slices)`` of each such scan, in store order.
        """
        return [
            (n, int(d)) for n, d in zip(self._names, self._depths, strict=True)
            if d < self.slab_depth
        ]

    def _draw(self, index: int) -> tuple[str, int, int]:
        rng = np.random.default_rng([self.seed, int(index)])
        if self.scan_weighting == "uniform":
            scan = int(rng.integers(len(self._names)))
        else:
            slice_ = int(rng.integers(int(self._cumulative[-1])))
            scan = int(np.searchsorted(self._cumulative, slice_, side="right"))
        depth = int(self._depths[scan])
        start = int(rng.integers(depth - self.slab_depth + 1)) if depth >= self.slab_depth else 0
        return self._names[scan], start, min(depth, self.slab_depth)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Sample ``index``: ``(1, S, H0, W0)`` int16 HU (float32 with ``normalize``)."""
        name, start, depth = self._draw(index)
        raw = self.normalize is None
        slab = self.store.read_slab(name, start, depth, dtype=torch.int16 if raw else torch.float32)
        s = self.slab_depth
        if depth < s:
            before = (s - depth) // 2
            pad = (0, 0, 0, 0, before, s - depth - before)
            slab = F.pad(slab, pad, value=int(self.pad_hu) if raw else self.pad_hu)
        if tuple(slab.shape[-2:]) != self.in_plane_size:
            resized = F.interpolate(
                slab.float().transpose(0, 1),  # (S, 1, H, W): slices as a batch
                size=self.in_plane_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            ).transpose(0, 1)
            slab = resized.round().clamp(-32768, 32767).to(torch.int16) if raw else resized
        if self.normalize is not None:
            slab = self.normalize(slab).float()
        return slab.contiguous()
