"""Clipping and z-normalisation with dataset foreground statistics (nnU-Net style)."""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from typing import Any

import attrs
import numpy as np
import torch
import torchio as tio

from .volume import Volume

__all__ = ["ClipNormalize", "ForegroundStats", "compute_foreground_stats"]


class ClipNormalize(tio.IntensityTransform):
    """Clip HU to ``[lower, upper]``, subtract ``mean`` and divide by ``std``.

    Defaults are the paper's dataset statistics (Appendix B): clip [-1008, 822] HU,
    mean -86.8086, std 322.6347 (foreground 0.5/99.5 percentiles, mean and std, nnU-Net v2
    "CTNormalization").

    Call it on a tensor of HU of any shape (returns float32 of the same shape), or use it
    as a TorchIO transform on a ``tio.Subject`` (scalar images only).

    Args:
        lower: Lower clip in HU.
        upper: Upper clip in HU.
        mean: Foreground mean in HU.
        std: Foreground standard deviation in HU (> 0).

    Raises:
        ValueError: ``lower >= upper`` or ``std <= 0``.
    """

    # Shadows torchio's static ``Transform.mean(tensor)``, a masking helper that users pass
    # as ``masking_method`` and torchio never calls on ``self``; the name stays because
    # ``args_names`` (torchio's history) and callers read ``.mean``.
    mean: float  # type: ignore[assignment]

    def __init__(
        self,
        lower: float = -1008.0,
        upper: float = 822.0,
        mean: float = -86.8086,
        std: float = 322.6347,
    ) -> None:
        if not lower < upper:
            raise ValueError(f"lower ({lower}) must be below upper ({upper})")
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        super().__init__()
        self.lower, self.upper, self.mean, self.std = (
            float(lower),
            float(upper),
            float(mean),
            float(std),
        )
        self.args_names = ["lower", "upper", "mean", "std"]

    @classmethod
    def from_stats(cls, stats: ForegroundStats) -> ClipNormalize:
        """Build from `compute_foreground_stats` output."""
        return cls(stats.lower, stats.upper, stats.mean, stats.std)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The pure function: ``(clip(x, lower, upper) - mean) / std`` as float32."""
        return (x.float().clamp(self.lower, self.upper) - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised values back to (clipped) HU."""
        return x.float() * self.std + self.mean

    def __call__(self, data: Any) -> Any:  # type: ignore[override]
        if isinstance(data, torch.Tensor):
            return self.normalize(data)
        if isinstance(data, Volume):
            return attrs.evolve(data, data=self.normalize(data.data))
        return super().__call__(data)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            image.set_data(self.normalize(image.data))
        return subject


@attrs.frozen
class ForegroundStats:
    """Dataset foreground intensity statistics in HU.

    Attributes:
        lower: 0.5th percentile of the foreground.
        upper: 99.5th percentile of the foreground.
        mean: Mean of all foreground voxels.
        std: Standard deviation of all foreground voxels.
        n_voxels: Number of foreground voxels counted (over all scans).
    """

    lower: float
    upper: float
    mean: float
    std: float
    n_voxels: int


def compute_foreground_stats(
    volumes_or_paths: Iterable[Volume | torch.Tensor | str | PathLike[str]],
    *,
    threshold: float = -500.0,
    samples_per_scan: int = 10_000,
    max_pool: int = 2_000_000,
    seed: int = 0,
    reader: Any = None,
) -> ForegroundStats:
    """Foreground percentiles, mean and std over a dataset, streaming in bounded memory.

    Foreground: voxels above ``threshold`` HU (-500 keeps body and drops air and lung).
    Mean and std are exact over all foreground voxels (running float64 sums, one scan in
    memory at a time). Percentiles come from ``samples_per_scan`` foreground voxels drawn
    uniformly with replacement per scan (nnU-Net v2 ``DatasetFingerprintExtractor``
    samples 10,000 per case), pooled in a reservoir of at most ``max_pool`` values.

    Args:
        volumes_or_paths: `Volume` objects, HU tensors, or paths read with ``reader``.
        threshold: Foreground threshold in HU.
        samples_per_scan: Voxels sampled per scan for the percentiles.
        max_pool: Size bound of the percentile reservoir.
        seed: Seed of the sampling.
        reader: Function ``path -> Volume``; default `read_volume`.

    Returns:
        `ForegroundStats` (0.5/99.5 percentiles, mean, std in HU, voxel count).

    Raises:
        ValueError: no foreground voxel in the whole dataset, or bad arguments.
    """
    if samples_per_scan < 1 or max_pool < 1:
        raise ValueError(f"samples_per_scan ({samples_per_scan}) and max_pool must be >= 1")
    if reader is None:
        from .io import read_volume as reader
    rng = np.random.default_rng(seed)
    total, total_sq, count = 0.0, 0.0, 0
    pool = np.empty(0, dtype=np.float32)
    seen = 0  # samples offered to the reservoir
    for item in volumes_or_paths:
        if isinstance(item, Volume):
            data = item.data
        elif isinstance(item, torch.Tensor):
            data = item
        else:
            data = reader(item).data
        values = data.detach().cpu().float().reshape(-1)
        fg = values[values > threshold].double()
        if fg.numel() == 0:
            continue
        count += fg.numel()
        total += float(fg.sum())
        total_sq += float((fg * fg).sum())
        sample = fg.numpy()[rng.integers(0, fg.numel(), samples_per_scan)].astype(np.float32)
        # Reservoir sampling (algorithm R, vectorised per scan).
        room = max_pool - pool.size
        if room > 0:
            pool = np.concatenate([pool, sample[:room]])
            sample = sample[room:]
            seen += min(room, samples_per_scan)
        if sample.size:
            positions = seen + np.arange(1, sample.size + 1)
            slots = (rng.random(sample.size) * positions).astype(np.int64)
            keep = slots < max_pool
            pool[slots[keep]] = sample[keep]
            seen += sample.size
    if count == 0:
        raise ValueError(f"no foreground voxel above {threshold} HU in the dataset")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    lower, upper = np.percentile(pool, [0.5, 99.5])
    return ForegroundStats(
        lower=float(lower), upper=float(upper), mean=mean, std=float(np.sqrt(var)), n_voxels=count
    )
