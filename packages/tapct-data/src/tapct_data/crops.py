"""3D random resized crop: area and aspect in the axial plane, a block of whole slices."""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from ._random import uniform
from ._transform import BatchedRandomTransform

__all__ = ["CropParams", "RandomResizedCrop3d", "resized_crop3d"]


@attrs.frozen
class CropParams:
    """Per-sample crop boxes (input voxel indices), all ``(B,)`` int64 CPU tensors.

    Attributes:
        start: First slice of the depth block (negative when the input is shallower than the
            crop: the block is then centred-at-random and padded).
        top: First row of the in-plane box.
        left: First column of the in-plane box.
        height: Rows in the box.
        width: Columns in the box.
    """

    start: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


def resized_crop3d(
    x: torch.Tensor,
    params: CropParams,
    size: tuple[int, int, int],
    pad_value: float | None = None,
) -> torch.Tensor:
    """Apply crop boxes: ``d`` consecutive slices, in-plane box resized to ``(h, w)``.

    Each output slice comes from exactly one input slice (slices are never mixed): the
    box of every slice is resized with 2D bilinear interpolation (``antialias=True``,
    ``align_corners=False``, as torchvision's RandomResizedCrop). Slices of the block that
    fall outside the input (input shallower than ``d``) are filled with ``pad_value``
    (default: each sample's minimum, i.e. air).

    Args:
        x: ``(B, C, D, H, W)`` float tensor on any device.
        params: Boxes from `RandomResizedCrop3d.sample`.
        size: Output ``(d, h, w)``.
        pad_value: Fill for slices outside the input; None = per-sample minimum.

    Returns:
        ``(B, C, d, h, w)`` tensor, same device and dtype as ``x``.
    """
    b, _c, depth, _, _ = x.shape
    d, h, w = size
    outs = []
    for i in range(b):
        z0, top, left = int(params.start[i]), int(params.top[i]), int(params.left[i])
        bh, bw = int(params.height[i]), int(params.width[i])
        index = torch.arange(z0, z0 + d, device=x.device)
        inside = (index >= 0) & (index < depth)
        box = x[i][:, index.clamp(0, depth - 1), top : top + bh, left : left + bw]  # (C, d, bh, bw)
        box = box.transpose(0, 1)  # (d, C, bh, bw): slices as a batch of 2D images
        if (bh, bw) != (h, w):
            box = F.interpolate(
                box.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
            ).to(x.dtype)
        if not bool(inside.all()):
            fill = float(x[i].min()) if pad_value is None else pad_value
            box = torch.where(inside[:, None, None, None], box, torch.full_like(box, fill))
        outs.append(box.transpose(0, 1))
    return torch.stack(outs)


class RandomResizedCrop3d(BatchedRandomTransform):
    """Random resized crop for CT (paper section 3.1, "Local and global crops").

    An area fraction ``s ~ U(scale)`` and aspect ratio ``r = w/h`` (log-uniform in
    ``ratio``) are sampled in the axial plane (torchvision's RandomResizedCrop rule: 10
    attempts, then a centre crop with the ratio clamped), the box is extended by a block of
    exactly ``d`` consecutive slices starting at a uniformly random slice, and each slice's
    box is resized in-plane to ``(h, w)``; depth is never resampled.

    Inputs with fewer than ``d`` slices: the block starts uniformly in ``[D - d, 0]`` and
    slices outside the input are filled with ``pad_value`` (default: the sample's minimum).
    Inputs smaller than the crop in-plane are upsampled; the output is always exactly
    ``(d, h, w)``.

    Args:
        size: Output ``(d, h, w)`` in voxels.
        scale: Range of the in-plane area fraction.
        ratio: Range of the in-plane aspect ratio ``w / h``.
        pad_value: Fill value for missing slices; None = per-sample minimum.
        seed: Seed or generator of the TorchIO path.

    Raises:
        ValueError: non-positive sizes or invalid ranges.

    Shapes:
        ``(B, C, D, H, W) -> (B, C, d, h, w)``; on a ``tio.Subject`` each image
        ``(C, W, H, D) -> (C, w, h, d)`` with the affine updated.
    """

    def __init__(
        self,
        size: tuple[int, int, int] = (12, 224, 224),
        scale: tuple[float, float] = (0.32, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        pad_value: float | None = None,
        seed: int | torch.Generator | None = None,
    ) -> None:
        ints = tuple(int(s) for s in size)
        if len(ints) != 3 or min(ints) < 1:
            raise ValueError(f"size must be 3 positive ints (d, h, w), got {ints}")
        size = (ints[0], ints[1], ints[2])
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        super().__init__(seed)
        self.size = size
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.pad_value = pad_value
        self.args_names = ["size", "scale", "ratio", "pad_value"]

    def sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None
    ) -> CropParams:
        """Draw boxes for a batch of shape ``(B, C, D, H, W)``.

        Args:
            shape: The batch shape.
            generator: Random generator (global RNG when None).

        Returns:
            `CropParams` with ``(B,)`` int64 CPU tensors.
        """
        b, _, depth, height, width = shape
        attempts = 10
        area = height * width * uniform(b * attempts, *self.scale, generator)
        log_r = uniform(b * attempts, math.log(self.ratio[0]), math.log(self.ratio[1]), generator)
        r = torch.exp(log_r)
        bw = torch.round(torch.sqrt(area * r)).long().view(b, attempts)
        bh = torch.round(torch.sqrt(area / r)).long().view(b, attempts)
        ok = (bw > 0) & (bw <= width) & (bh > 0) & (bh <= height)
        first = torch.argmax(ok.int(), dim=1)
        has = ok.any(dim=1)
        rows = torch.arange(b)
        bw, bh = bw[rows, first], bh[rows, first]
        # Fallback: centre crop with the ratio clamped into range (torchvision's rule).
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fh, fw = height, round(height * self.ratio[1])
        else:
            fw, fh = width, height
        bw = torch.where(has, bw, torch.full_like(bw, max(1, fw)))
        bh = torch.where(has, bh, torch.full_like(bh, max(1, fh)))
        u_top, u_left, u_start = uniform(3 * b, 0.0, 1.0, generator).view(3, b)
        top = torch.where(has, (u_top * (height - bh + 1)).long(), (height - bh) // 2)
        left = torch.where(has, (u_left * (width - bw + 1)).long(), (width - bw) // 2)
        d = self.size[0]
        if depth >= d:
            start = (u_start * (depth - d + 1)).long()
        else:
            start = (depth - d) + (u_start * (d - depth + 1)).long()
        return CropParams(start=start, top=top, left=left, height=bh, width=bw)

    def apply(self, x: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Deterministic crop-and-resize; see `resized_crop3d`."""
        return resized_crop3d(x, params, self.size, self.pad_value)

    def new_affine(self, affine_dhw: np.ndarray, params: CropParams) -> np.ndarray:
        """Affine of the crop: origin at the box corner, in-plane columns scaled."""
        _d, h, w = self.size
        sh = float(params.height[0]) / h
        sw = float(params.width[0]) / w
        # Output pixel centre j maps to input index top + (j + 0.5) * sh - 0.5.
        offset = np.array(
            [
                float(params.start[0]),
                float(params.top[0]) + 0.5 * sh - 0.5,
                float(params.left[0]) + 0.5 * sw - 0.5,
                1.0,
            ]
        )
        scale = np.diag([1.0, sh, sw, 1.0])
        scale[:, 3] = offset
        return affine_dhw @ scale
