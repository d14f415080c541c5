"""3D patch embedding: non-overlapping ``(pd, ph, pw)`` patches to ``E``-dim tokens.

TAP-CT (paper section 3, "ViT adjustments") replaces the ViT's 2D patch convolution by a 3D
one (kernel = stride = patch size). The parameters live in a ``Conv3d`` named ``proj`` so
that checkpoints keep DINOv2's name ``patch_embed.proj`` (dinov2/layers/patch_embed.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._checks import as_triple

__all__ = ["PatchEmbed3d", "patch_grid", "resample_patch_embed"]


def patch_grid(
    volume_size: Sequence[int], patch_size: Sequence[int]
) -> tuple[int, int, int]:
    """Return the patch grid ``(t, h, w) = (D // pd, H // ph, W // pw)`` of a volume size.

    Args:
        volume_size: Spatial size ``(D, H, W)`` in voxels.
        patch_size: Patch size ``(pd, ph, pw)`` in voxels.

    Returns:
        The grid ``(t, h, w)`` in patches.

    Raises:
        ValueError: If a size is not a positive multiple of the patch size along its axis;
            the message names both sizes.
        TypeError: If the sizes are not three ints.
    """
    size = tuple(int(s) for s in volume_size)
    patch = as_triple(tuple(patch_size), "patch_size")
    if len(size) != 3 or min(size) < 1:
        raise ValueError(
            f"input size (D, H, W) must be three positive multiples of the patch size "
            f"{patch}, got {size}"
        )
    if any(s % p for s, p in zip(size, patch)):
        raise ValueError(
            f"input size (D, H, W)={size} is not a multiple of the patch size {patch}; "
            "crop or pad each axis to a multiple of the patch"
        )
    return (size[0] // patch[0], size[1] // patch[1], size[2] // patch[2])


class PatchEmbed3d(nn.Module):
    """Embed a volume as a sequence of non-overlapping 3D patches.

    Mathematically a ``Conv3d(in_chans, embed_dim, kernel_size=patch, stride=patch)``
    followed by flattening in ``t h w`` order. The forward pass computes it as a patchify
    (einops) plus one matrix multiply with the same ``proj`` weights, which is about twice
    as fast as ``conv3d`` on CPU and identical up to float rounding.

    Args:
        patch_size: Patch size ``(pd, ph, pw)`` in voxels (one int means a cube).
        in_chans: Input channels ``C`` (1 for CT).
        embed_dim: Token width ``E``.

    Raises:
        ValueError: If a size is not positive.

    References:
        dinov2/layers/patch_embed.py (2D original); TAP-CT paper section 3.
    """

    def __init__(self, patch_size: int | Sequence[int], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if in_chans < 1 or embed_dim < 1:
            raise ValueError(f"in_chans and embed_dim must be >= 1, got {in_chans}, {embed_dim}")
        self.patch_size = as_triple(patch_size, "patch_size")
        self.in_chans = int(in_chans)
        self.embed_dim = int(embed_dim)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size,
                              stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Embed ``x``.

        Args:
            x: Volume batch ``(B, C, D, H, W)``; D, H, W multiples of the patch size.

        Returns:
            ``(tokens, grid)``: tokens ``(B, N, E)`` with ``N = t*h*w`` in ``t h w`` order,
            and the grid ``(t, h, w)``.

        Raises:
            ValueError: If ``x`` is not 5D, has the wrong channel count, or a spatial size
                is not a multiple of the patch size.
        """
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]}")
        grid = patch_grid(x.shape[2:], self.patch_size)
        pd, ph, pw = self.patch_size
        patches = rearrange(
            x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pd, ph=ph, pw=pw
        )
        weight = self.proj.weight.flatten(1)  # (E, C*pd*ph*pw), same (c pt ph pw) order
        return F.linear(patches, weight, self.proj.bias), grid


def _resize_matrix(
    old: tuple[int, int], new: tuple[int, int], interpolation: str, antialias: bool
) -> torch.Tensor:
    """Matrix ``(new_h * new_w, old_h * old_w)`` of ``F.interpolate`` on ``old`` images."""
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float32).reshape(n_old, 1, *old)
    resized = F.interpolate(basis, size=new, mode=interpolation, antialias=antialias,
                            align_corners=False)  # (n_old, 1, new_h, new_w)
    return resized.reshape(n_old, new[0] * new[1]).T


def resample_patch_embed(
    weight: torch.Tensor,
    new_size: Sequence[int],
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a patch kernel to another in-plane patch size, FlexiViT's pseudo-inverse.

    Resizing an input patch ``x`` from ``(ph, pw)`` to ``(ph', pw')`` is linear,
    ``x' = B x``; the new kernel ``w'`` is chosen so that ``<x', w'> = <x, w>`` for every
    patch, in the least-squares sense: ``w' = pinv(B^T) w``. A model given inputs resized
    by the same factor as its patches then computes the same tokens (exactly when
    upsampling the patch, approximately when downsampling, e.g. DINOv2's 14 to 8).
    A 3D kernel ``(E, C, pd, ph, pw)`` is resampled slice by slice in-plane (depth kept).

    Args:
        weight: Kernel ``(E, C, ph, pw)`` or ``(E, C, pd, ph, pw)``, any float dtype.
        new_size: Target in-plane patch size ``(ph', pw')``.
        interpolation: ``F.interpolate`` mode of the resize ``B`` (``"bicubic"`` as
            timm, ``"bilinear"`` as big_vision).
        antialias: Anti-aliasing of the resize (True, as timm and big_vision).

    Returns:
        Kernel ``(E, C, ph', pw')`` or ``(E, C, pd, ph', pw')``, the input's dtype and
        device (computed in float32). The same tensor when the size is unchanged.

    Raises:
        ValueError: If ``weight`` is not 4D or 5D or ``new_size`` is not two positive ints.

    References:
        Beyer et al. 2023, *FlexiViT: One Model for All Patch Sizes*, section 3.4;
        big_vision ``models/proj/flexi/vit.py`` ``resample_patchemb``; timm
        ``timm.layers.resample_patch_embed`` (identical result, tested).
    """
    if weight.ndim not in (4, 5):
        raise ValueError(f"patch kernel must be 4D or 5D, got shape {tuple(weight.shape)}")
    size = tuple(int(s) for s in new_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"new_size must be two positive ints (ph, pw), got {new_size!r}")
    old = (int(weight.shape[-2]), int(weight.shape[-1]))
    if old == size:
        return weight
    matrix = _resize_matrix(old, (size[0], size[1]), interpolation, antialias)
    pinv = torch.linalg.pinv(matrix).to(weight.device)  # (n_old, n_new)
    flat = weight.reshape(*weight.shape[:-2], old[0] * old[1]).float()
    return (flat @ pinv).reshape(*weight.shape[:-2], *size).to(weight.dtype)
