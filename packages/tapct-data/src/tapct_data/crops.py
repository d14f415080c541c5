"""3D random resized crop: area and aspect in the axial plane, a block of whole slices."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np
import torch

from ._random import uniform
from ._transform import BatchedRandomTransform, spatial_shape

__all__ = ["CropParams", "RandomResizedCrop3d", "resized_crop3d"]


@attrs.frozen
class CropParams:
    """Per-sample crop boxes, CPU tensors with one row per output crop.

    Boxes are relative to the input's in-plane extent, so a box sampled on one grid (e.g.
    the 256 x 256 reference grid of the config) applies unchanged to the same slab at
    another in-plane resolution (e.g. the full-resolution 512 x 512 slab: the in-plane
    resize is then fused into the crop).

    Attributes:
        start: ``(N,)`` int64 first slice of the depth block (negative when the input is
            shallower than the crop: the block is then padded).
        boxes: ``(N, 4)`` float64 ``(top, left, height, width)`` as fractions of the input's
            ``(H, W)``; `voxel_boxes` gives them in voxels.
    """

    start: torch.Tensor
    boxes: torch.Tensor

    def voxel_boxes(self, in_size: Sequence[int]) -> torch.Tensor:
        """``(N, 4)`` float64 ``(top, left, height, width)`` in voxels of an ``(H, W)`` input."""
        h, w = (float(s) for s in in_size[-2:])
        return self.boxes * torch.tensor([h, w, h, w], dtype=self.boxes.dtype)


def _axis_weights(lo: torch.Tensor, length: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """``(N, n_out, n_in)`` float64 resampling matrices of antialiased linear interpolation.

    The rule of ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``
    (PIL's): output pixel ``i`` of a box ``[lo, lo + length)`` (input voxels) is centred at
    ``lo + scale (i + 0.5)`` with ``scale = length / n_out``; input voxel ``k`` (centre
    ``k + 0.5``, inside the box) weighs ``max(0, 1 - |k + 0.5 - centre| / max(scale, 1))``;
    each row is normalised to sum 1. Downsampling thus averages over the whole footprint
    (a triangle filter widened by the scale); upsampling is plain linear interpolation.
    """
    dev = lo.device
    scale = length / n_out  # (N,)
    inv = 1.0 / scale.clamp_min(1.0)  # (N,)
    out_pos = torch.arange(n_out, dtype=torch.float64, device=dev) + 0.5
    centre = lo[:, None] + scale[:, None] * out_pos  # (N, n_out)
    pos = torch.arange(n_in, dtype=torch.float64, device=dev) + 0.5  # (n_in,)
    w = (1.0 - ((pos - centre[..., None]) * inv[:, None, None]).abs()).clamp_min(0.0)
    inside = (pos >= lo[:, None]) & (pos < (lo + length)[:, None])  # (N, n_in)
    w = w * inside[:, None, :]
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


def resized_crop3d(
    x: torch.Tensor,
    params: CropParams,
    size: tuple[int, int, int],
    pad_value: float | None = None,
) -> torch.Tensor:
    """Apply crop boxes: ``d`` consecutive slices, in-plane box resized to ``(h, w)``.

    One batched resample for all crops (no per-sample loop, no value read back to the
    host): the in-plane resize is separable, so each crop is ``Wy @ slice @ Wx^T`` with
    per-crop matrices (`_axis_weights`) that reproduce
    ``F.interpolate(box, (h, w), mode="bilinear", align_corners=False, antialias=True)``
    (torchvision's RandomResizedCrop), computed as two batched matrix products. Each
    output slice comes from exactly one input slice (slices are never mixed). Slices of
    the block outside the input (input shallower than ``d``) are filled with ``pad_value``
    (default: each sample's minimum, i.e. air).

    ``params`` may hold ``V`` crops per input (``N = V B`` rows, crop-major: row
    ``v B + b`` crops sample ``b``); all ``V`` views are resampled in the same two products.
    The input may have any in-plane size (boxes are relative): a full-resolution slab is
    cropped and resized in one step.

    Args:
        x: ``(B, C, D, H, W)`` tensor on any device, float or integer (e.g. int16 HU).
        params: Boxes from `RandomResizedCrop3d.sample`, ``N = V B`` rows (CPU or on
            ``x``'s device).
        size: Output ``(d, h, w)``.
        pad_value: Fill for slices outside the input; None = per-sample minimum.

    Returns:
        ``(N, C, d, h, w)`` float32 on ``x``'s device. Agrees with the antialiased
        ``F.interpolate`` path to float32 rounding (tested at 1e-5 relative to the value
        range); on CUDA with TF32 matmuls enabled (``torch.backends.cuda.matmul.allow_tf32``)
        the products round to TF32 (about 1e-3 relative).

    Raises:
        ValueError: ``x`` not 5-D or ``N`` not a multiple of ``B``.
    """
    if x.ndim != 5:
        raise ValueError(f"expected x of shape (B, C, D, H, W), got {tuple(x.shape)}")
    b, c, depth, height, width = x.shape
    n = params.start.shape[0]
    if n % b:
        raise ValueError(f"params hold {n} crops, not a multiple of the batch size {b}")
    v = n // b
    d, h, w = size
    dev = x.device
    start = params.start.to(dev, non_blocking=True)
    boxes = params.boxes.to(dev, torch.float64, non_blocking=True)
    extent = torch.tensor([height, width, height, width], dtype=torch.float64, device=dev)
    top, left, box_h, box_w = (boxes * extent).unbind(1)  # (N,) voxels
    wy = _axis_weights(top, box_h, height, h).float()  # (N, h, H)
    wx = _axis_weights(left, box_w, width, w).float()  # (N, w, W)
    xf = x.float()
    # Columns of every view of a sample in one product: (B, C*D*H, W) @ (B, W, V*w).
    wx_all = wx.view(v, b, w, width).permute(1, 3, 0, 2).reshape(b, width, v * w)
    cols = torch.bmm(xf.reshape(b, c * depth * height, width), wx_all)
    cols = cols.view(b, c, depth, height, v, w)
    # The depth block of each crop: (V, B, d, C, H, w).
    z = start.view(v, b, 1) + torch.arange(d, device=dev)  # (V, B, d)
    bi = torch.arange(b, device=dev).view(1, b, 1)
    vi = torch.arange(v, device=dev).view(v, 1, 1)
    block = cols[bi, :, z.clamp(0, depth - 1), :, vi]
    # Rows: (N, h, H) x (N, d*C, H, w) -> (N, d*C, h, w).
    out = torch.einsum("nih,nmhj->nmij", wy, block.reshape(n, d * c, height, w))
    out = out.view(n, d, c, h, w).transpose(1, 2).contiguous()  # (N, C, d, h, w)
    if depth < d:
        inside = ((z >= 0) & (z < depth)).view(n, 1, d, 1, 1)
        if pad_value is None:
            fill = xf.amin(dim=(1, 2, 3, 4)).repeat(v).view(n, 1, 1, 1, 1)
        else:
            fill = torch.full((n, 1, 1, 1, 1), float(pad_value), device=dev)
        out = torch.where(inside, out, fill)
    return out


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
        ``(B, C, D, H, W) -> (B, C, d, h, w)`` float32; on a ``tio.Subject`` each image
        ``(C, W, H, D) -> (C, w, h, d)`` with the affine updated.
    """

    def __init__(
        self,
        size: Sequence[int] = (12, 224, 224),
        scale: Sequence[float] = (0.32, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        pad_value: float | None = None,
        seed: int | torch.Generator | None = None,
    ) -> None:
        ints = tuple(int(s) for s in size)
        if len(ints) != 3 or min(ints) < 1:
            raise ValueError(f"size must be 3 positive ints (d, h, w), got {ints}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        super().__init__(seed)
        self.size: tuple[int, int, int] = (ints[0], ints[1], ints[2])
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.pad_value = pad_value
        self.args_names = ["size", "scale", "ratio", "pad_value"]

    def sample(
        self,
        batch_size: int,
        in_shape: Sequence[int],
        generator: torch.Generator | None = None,
    ) -> CropParams:
        """Draw boxes for ``batch_size`` inputs of spatial shape ``(D, H, W)``.

        Boxes are whole voxels of ``in_shape`` (torchvision's rounding), stored relative.

        Args:
            batch_size: Number of inputs ``B``.
            in_shape: ``(D, H, W)`` (a longer shape's last three entries are used).
            generator: Random generator (global RNG when None).

        Returns:
            `CropParams` with ``B`` rows, CPU tensors.
        """
        b = int(batch_size)
        depth, height, width = spatial_shape(in_shape)
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
        voxels = torch.stack([top, left, bh, bw], dim=1).double()  # (B, 4)
        extent = torch.tensor([height, width, height, width], dtype=torch.float64)
        return CropParams(start=start, boxes=voxels / extent)

    def apply(self, x: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Deterministic crop-and-resize; see `resized_crop3d`."""
        return resized_crop3d(x, params, self.size, self.pad_value)

    def new_affine(
        self, affine_dhw: np.ndarray, params: CropParams, in_shape: tuple[int, int, int]
    ) -> np.ndarray:
        """Affine of the crop: origin at the box corner, in-plane columns scaled."""
        _d, h, w = self.size
        top, left, box_h, box_w = (float(v) for v in params.voxel_boxes(in_shape[1:])[0])
        sh, sw = box_h / h, box_w / w
        # Output pixel centre j maps to input index top + (j + 0.5) * sh - 0.5.
        offset = np.array(
            [float(params.start[0]), top + 0.5 * sh - 0.5, left + 0.5 * sw - 0.5, 1.0]
        )
        scale = np.diag([1.0, sh, sw, 1.0])
        scale[:, 3] = offset
        return affine_dhw @ scale
