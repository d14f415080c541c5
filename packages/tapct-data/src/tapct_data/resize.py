"""Resizing in image space (paper C.2) and resampling to a spacing."""

from __future__ import annotations

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from .volume import Volume

__all__ = ["resample_to_spacing", "resize_for_eval"]


def _resize(data: torch.Tensor, size: tuple[int, int, int], label: bool) -> torch.Tensor:
    x = data[None]
    if label:
        return F.interpolate(x.float(), size=size, mode="nearest-exact")[0].to(data.dtype)
    return F.interpolate(x.float(), size=size, mode="trilinear", align_corners=False)[0]


def _rescaled(volume: Volume, data: torch.Tensor) -> Volume:
    old = np.asarray(volume.shape, dtype=np.float64)
    new = np.asarray(data.shape[1:], dtype=np.float64)
    factor = old / new
    scale = np.diag([*factor, 1.0])
    # Output voxel centre i maps to input index (i + 0.5) * factor - 0.5.
    scale[:3, 3] = 0.5 * factor - 0.5
    affine = volume.affine @ scale
    spacing = tuple(np.asarray(volume.spacing) * factor)
    return attrs.evolve(volume, data=data, affine=affine, spacing=spacing)


def resize_for_eval(
    volume: Volume | torch.Tensor,
    in_plane: tuple[int, int] = (224, 224),
    label: bool | None = None,
) -> Volume | torch.Tensor:
    """Resize in-plane to ``(z, h, w)`` in image space, keeping every slice (paper C.2).

    Images use bilinear interpolation within each slice (trilinear with D unchanged is
    exactly that); integer tensors (label maps) nearest neighbour.

    Args:
        volume: `Volume` or tensor ``(C, D, H, W)``.
        in_plane: Target ``(h, w)``, e.g. ``(224, 224)`` or ``(512, 512)``.
        label: Force nearest (True) or linear (False); default: nearest for integer data.

    Returns:
        Same type as the input; ``(C, D, h, w)``; a `Volume` gets its spacing and affine
        updated.
    """
    data = volume.data if isinstance(volume, Volume) else volume
    if data.ndim != 4:
        raise ValueError(f"expected (C, D, H, W), got shape {tuple(data.shape)}")
    is_label = (not data.is_floating_point()) if label is None else label
    out = _resize(data, (data.shape[1], int(in_plane[0]), int(in_plane[1])), is_label)
    return _rescaled(volume, out) if isinstance(volume, Volume) else out


def resample_to_spacing(
    volume: Volume, spacing: tuple[float, float, float], label: bool | None = None
) -> Volume:
    """Resample to a voxel spacing ``(sd, sh, sw)`` mm (trilinear, or nearest for labels).

    The new shape is ``round(shape * old_spacing / new_spacing)`` (at least 1); the field
    of view is kept (corners aligned at voxel edges).

    Args:
        volume: The `Volume`.
        spacing: Target spacing in mm.
        label: Force nearest (True) or linear (False); default: nearest for integer data.

    Returns:
        The resampled `Volume`.

    Raises:
        ValueError: non-positive spacing.
    """
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive values in mm, got {spacing}")
    old = np.asarray(volume.spacing)
    size = tuple(max(1, round(s * o / n)) for s, o, n in zip(volume.shape, old, spacing))
    is_label = (not volume.data.is_floating_point()) if label is None else label
    return _rescaled(volume, _resize(volume.data, size, is_label))
