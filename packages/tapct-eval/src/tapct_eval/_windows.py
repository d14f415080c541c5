"""Patch-aligned sliding-window geometry (stride, padding, window starts)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.data.utils import dense_patch_slices


def as_triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """Return ``value`` as 3 positive ints; raises ValueError naming ``name``."""
    triple = (value, value, value) if isinstance(value, int) else tuple(value)
    if len(triple) != 3 or not all(isinstance(v, int) and v > 0 for v in triple):
        raise ValueError(f"{name} must be 3 positive ints (d, h, w), got {value!r}")
    return triple  # type: ignore[return-value]


def scan_interval(
    roi_size: Sequence[int], patch_size: Sequence[int], overlap: float
) -> tuple[int, int, int]:
    """Window stride in voxels, rounded down to whole patches and never below one patch.

    MONAI's rule is ``int(roi * (1 - overlap))`` (0 becomes 1); here the stride is also a
    multiple of the patch size so every window lands on the volume's patch grid, and at
    least one patch so it never rounds to zero (thin ROI axes, overlap near 1).

    Returns:
        ``(sd, sh, sw)`` strides in voxels, each in ``[patch, roi]``.
    """
    out = []
    for roi, patch in zip(roi_size, patch_size):
        stride = int(roi * (1.0 - overlap)) // patch * patch
        out.append(min(roi, max(patch, stride)))
    return tuple(out)  # type: ignore[return-value]


def monai_overlap(roi_size: Sequence[int], interval: Sequence[int]) -> tuple[float, ...]:
    """Per-axis overlap that makes MONAI's ``int(roi * (1 - overlap))`` equal ``interval``."""
    return tuple(0.0 if s >= r else 1.0 - (s + 0.5) / r for r, s in zip(roi_size, interval))


def padded_shape(
    shape: Sequence[int], roi_size: Sequence[int], patch_size: Sequence[int]
) -> tuple[int, int, int]:
    """Volume shape after padding at the end: whole patches, and at least one ROI."""
    return tuple(  # type: ignore[return-value]
        max(r, math.ceil(s / p) * p) for s, r, p in zip(shape, roi_size, patch_size)
    )


def window_starts(
    shape: Sequence[int], roi_size: Sequence[int], interval: Sequence[int]
) -> list[tuple[int, int, int]]:
    """Start voxel of every window on a (padded) volume, with MONAI's ``dense_patch_slices``.

    Returns:
        ``[(d0, h0, w0), ...]`` sorted; the last window of each axis ends at the border, so
        the windows cover every voxel.
    """
    slices = dense_patch_slices(tuple(shape), tuple(roi_size), tuple(interval))
    return sorted({tuple(int(s.start) for s in window) for window in slices})  # type: ignore[misc]
