"""Resampling of a learned 3D positional embedding onto another patch grid.

TAP-CT (paper section 3, "ViT adjustments") interpolates the learned positional encoding onto
the 3D patch grid ``(t, h, w)`` of each input, the 3D counterpart of DINOv2's
``interpolate_pos_encoding`` (dinov2/models/vision_transformer.py), which resamples the patch
part of the embedding bicubically in 2D. Here each axis is resampled to an explicit target
size with trilinear interpolation (``align_corners=False``), so there is no scale-factor
rounding and a depth-1 grid reduces to plain bilinear resampling in the axial plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from ._checks import as_triple

__all__ = ["resample_pos_embed"]


def resample_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
) -> torch.Tensor:
    """Resample a patch positional embedding from one ``(t, h, w)`` grid to another.

    Tokens are ordered ``t h w`` (einops ``b c t h w -> b (t h w) c``), as the patch
    embedding flattens them. Each axis is resampled to its explicit target size with
    trilinear interpolation (``align_corners=False``); the computation runs in float32 and
    the result is cast back to the input dtype (as DINOv2 does). When the grids are equal
    the input tensor itself is returned (identity, no copy).

    Args:
        pos_embed: Patch positional embedding ``(1, N_old, E)`` with ``N_old = t*h*w`` of
            ``old_grid``; any float dtype and device. Prefix (cls) positions must be removed
            by the caller.
        old_grid: Grid ``(t, h, w)`` the embedding was learned on (patches, not voxels).
        new_grid: Target grid ``(t', h', w')``.

    Returns:
        Tensor ``(1, N_new, E)`` with ``N_new = t'*h'*w'``, same dtype and device.

    Raises:
        TypeError: If ``pos_embed`` is not a floating-point tensor or a grid is not 3 ints.
        ValueError: If ``pos_embed`` is not ``(1, N, E)``, ``N`` differs from the product of
            ``old_grid``, or a grid has a non-positive entry.

    References:
        DINOv2 ``interpolate_pos_encoding`` (dinov2/models/vision_transformer.py); TAP-CT
        paper section 3 ("the learned positional encoding is interpolated onto a 3D grid").
    """
    if not isinstance(pos_embed, torch.Tensor) or not pos_embed.is_floating_point():
        raise TypeError(f"pos_embed must be a floating-point tensor, got {type(pos_embed)!r}")
    old = as_triple(tuple(old_grid), "old_grid")
    new = as_triple(tuple(new_grid), "new_grid")
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, N, E), got {tuple(pos_embed.shape)}")
    n_old = old[0] * old[1] * old[2]
    if pos_embed.shape[1] != n_old:
        raise ValueError(
            f"pos_embed has {pos_embed.shape[1]} tokens but old_grid {old} holds {n_old}"
        )
    if old == new:
        return pos_embed
    dtype = pos_embed.dtype
    grid = rearrange(pos_embed.float(), "1 (t h w) e -> 1 e t h w", t=old[0], h=old[1], w=old[2])
    # (1, E, t, h, w) -> (1, E, t', h', w')
    grid = F.interpolate(grid, size=new, mode="trilinear", align_corners=False)
    return rearrange(grid, "1 e t h w -> 1 (t h w) e").to(dtype)
