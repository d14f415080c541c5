"""3D random resized crop: area and aspect in the axial plane, a block of whole slices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch

from ._random import uniform
from ._transform import BatchedRandomTransform, SpatialParamsTransform, spatial_shape

__all__ = [
    "CropParams",
    "RandomResizedCrop3d",
    "ResizedCrop3d",
    "nearest_crop3d",
    "resized_crop3d",
    "uncrop3d",
]


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

    def crop_matrix(self, size: Sequence[int], in_shape: Sequence[int]) -> np.ndarray:
        """``(4, 4)`` map from an output index ``(d, h, w, 1)`` to the input index of the
        same point, for row 0 (the geometry of `resized_crop3d` and `nearest_crop3d`).

        Output voxel centre ``j`` maps to input index ``top + (j + 0.5) s - 0.5`` with
        ``s = box / out`` per in-plane axis; slice ``k`` to input slice ``start + k``.

        Args:
            size: Output ``(d, h, w)``.
            in_shape: Input ``(D, H, W)`` (boxes are relative to its ``(H, W)``).
        """
        _d, h, w = (int(v) for v in size)
        top, left, box_h, box_w = (float(v) for v in self.voxel_boxes(in_shape)[0])
        sh, sw = box_h / h, box_w / w
        matrix = np.diag([1.0, sh, sw, 1.0])
        matrix[:3, 3] = [float(self.start[0]), top + 0.5 * sh - 0.5, left + 0.5 * sw - 0.5]
        return matrix


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


def nearest_crop3d(
    x: torch.Tensor,
    params: CropParams,
    size: tuple[int, int, int],
    pad_value: float = 0,
) -> torch.Tensor:
    """`resized_crop3d` with nearest-neighbour sampling, for label maps.

    Output voxel ``j`` of a box ``[lo, lo + length)`` takes input voxel
    ``floor(lo + (j + 0.5) length / n_out)`` (the voxel containing the output centre:
    ``F.interpolate(mode="nearest-exact")``'s rule), so classes are never blended and the
    output lies on the same grid (same affine) as `resized_crop3d`'s. Batched gather, no
    per-sample loop.

    Args:
        x: ``(B, C, D, H, W)`` tensor of any dtype (integer class ids).
        params: Boxes, ``N = V B`` rows (crop-major, as `resized_crop3d`).
        size: Output ``(d, h, w)``.
        pad_value: Fill of slices outside the input (background 0).

    Returns:
        ``(N, C, d, h, w)`` tensor of ``x``'s dtype on ``x``'s device.

    Raises:
        ValueError: ``x`` not 5-D or ``N`` not a multiple of ``B``.
    """
    if x.ndim != 5:
        raise ValueError(f"expected x of shape (B, C, D, H, W), got {tuple(x.shape)}")
    b, _c, depth, height, width = x.shape
    n = params.start.shape[0]
    if n % b:
        raise ValueError(f"params hold {n} crops, not a multiple of the batch size {b}")
    d, h, w = size
    dev = x.device
    boxes = params.voxel_boxes((height, width)).to(dev)
    top, left, box_h, box_w = boxes.unbind(1)  # (N,) voxels

    def index(lo: torch.Tensor, length: torch.Tensor, n_out: int, n_in: int) -> torch.Tensor:
        centre = (
            lo[:, None]
            + (torch.arange(n_out, device=dev, dtype=torch.float64) + 0.5)
            * (length / n_out)[:, None]
        )
        first = lo.round()[:, None]
        last = (lo + length).round()[:, None] - 1
        return torch.minimum(torch.maximum(centre.floor(), first), last).long().clamp(0, n_in - 1)

    rows = index(top, box_h, h, height)  # (N, h)
    cols = index(left, box_w, w, width)  # (N, w)
    z = params.start.to(dev)[:, None] + torch.arange(d, device=dev)  # (N, d)
    bi = torch.arange(n, device=dev) % b
    gathered = x.permute(0, 2, 3, 4, 1)[
        bi[:, None, None, None],
        z.clamp(0, depth - 1)[:, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (N, d, h, w, C)
    out = gathered.permute(0, 4, 1, 2, 3).contiguous()  # (N, C, d, h, w)
    inside = ((z >= 0) & (z < depth)).view(n, 1, d, 1, 1)
    return torch.where(inside, out, torch.full_like(out, pad_value))


def uncrop3d(
    crop: torch.Tensor,
    params: CropParams,
    in_shape: Sequence[int],
    label: bool,
    fill: float | None = None,
) -> torch.Tensor:
    """Inverse of a resized crop (one row of ``params``): back onto the input grid.

    The crop is resized back to its box (linear, as `resized_crop3d`, or nearest for label
    maps, as `nearest_crop3d`) and pasted into a volume of the input's shape; voxels outside
    the box get ``fill`` (TorchIO inverts its ``Crop`` the same way, by a ``Pad``). Slices
    of the crop that padded a shallow input are dropped.

    Args:
        crop: ``(1, C, d, h, w)``.
        params: The crop's `CropParams` (one row).
        in_shape: ``(D, H, W)`` of the cropped input.
        label: Nearest neighbour (label maps) instead of linear.
        fill: Value outside the box; None = 0 for label maps, the crop's minimum (air)
            for images.

    Returns:
        ``(1, C, D, H, W)``: float32 for images, ``crop``'s dtype for label maps.
    """
    depth, height, width = spatial_shape(in_shape)
    d = crop.shape[2]
    voxels = params.voxel_boxes((height, width))[0]
    top, left, box_h, box_w = (round(float(v)) for v in voxels)
    full = CropParams(
        start=torch.zeros(1, dtype=torch.long),
        boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64),
    )
    size = (d, box_h, box_w)
    back = nearest_crop3d(crop, full, size) if label else resized_crop3d(crop, full, size)
    if fill is None:
        fill = 0.0 if label else float(crop.min())
    out = torch.full((1, crop.shape[1], depth, height, width), fill, dtype=back.dtype)
    start = int(params.start[0])
    lo, hi = max(0, start), min(depth, start + d)
    if hi > lo:
        out[:, :, lo:hi, top : top + box_h, left : left + box_w] = back[
            :, :, lo - start : hi - start
        ]
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

    On a ``tio.Subject`` one box is drawn (on the canonical axial plane of the first
    selected image, whatever its storage orientation) and applied to every selected
    image: scalar images with `resized_crop3d`, label maps with `nearest_crop3d` (same
    output grid, classes never blended), each affine updated; the subject's history
    records the deterministic `ResizedCrop3d`, which is invertible.

    Args:
        size: Output ``(d, h, w)`` in voxels.
        scale: Range of the in-plane area fraction.
        ratio: Range of the in-plane aspect ratio ``w / h``.
        pad_value: Fill value for missing slices; None = per-sample minimum (label maps:
            0).
        seed: Seed or generator of the TorchIO path.
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ...).

    Raises:
        ValueError: non-positive sizes or invalid ranges; on a subject, selected images
            on different voxel grids.

    Shapes:
        ``(B, C, D, H, W) -> (B, C, d, h, w)`` float32; on a ``tio.Subject`` each image
        becomes ``(C, d, h, w)`` in the canonical layout, stored back in the image's own
        axis order, with the affine updated.
    """

    spatial = True

    def __init__(
        self,
        size: Sequence[int] = (12, 224, 224),
        scale: Sequence[float] = (0.32, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        pad_value: float | None = None,
        seed: int | torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        ints = tuple(int(s) for s in size)
        if len(ints) != 3 or min(ints) < 1:
            raise ValueError(f"size must be 3 positive ints (d, h, w), got {ints}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        super().__init__(seed, **kwargs)
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

    def apply_label(self, x: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Deterministic nearest-neighbour crop of a label map; see `nearest_crop3d`."""
        return nearest_crop3d(x, params, self.size, 0 if self.pad_value is None else self.pad_value)

    def new_affine(
        self, affine_dhw: np.ndarray, params: CropParams, in_shape: tuple[int, int, int]
    ) -> np.ndarray:
        """Affine of the crop: origin at the box corner, in-plane columns scaled."""
        return affine_dhw @ params.crop_matrix(self.size, in_shape)

    def fixed(self, params: CropParams, in_shape: tuple[int, int, int]) -> ResizedCrop3d:
        """The deterministic `ResizedCrop3d` of row 0 of ``params``."""
        return ResizedCrop3d(
            self.size,
            start=int(params.start[0]),
            box=[float(v) for v in params.boxes[0]],
            in_shape=in_shape,
            pad_value=self.pad_value,
            **self._base_kwargs(),
        )


class ResizedCrop3d(SpatialParamsTransform):
    """Deterministic resized crop of a ``tio.Subject`` (what `RandomResizedCrop3d` records).

    Every selected image is brought to the canonical ``(C, D, H, W)`` layout, cropped with
    the same box (scalar images `resized_crop3d`, label maps `nearest_crop3d`) and put
    back in its own axis order with its affine updated. Invertible, as TorchIO's ``Crop``
    (inverted by a ``Pad``): the inverse (`uncrop3d`) resamples the crop back onto its box
    in the original grid, filling the rest with ``pad_value`` (None: the image's minimum,
    label maps 0); what the crop dropped or downsampled is not recovered.

    Args:
        size: Output ``(d, h, w)`` in voxels.
        start: First slice of the block (negative: padded).
        box: ``(top, left, height, width)`` as fractions of the input's ``(H, W)``.
        in_shape: Canonical ``(D, H, W)`` the box was drawn on (the inverse's output shape).
        pad_value: As `RandomResizedCrop3d`.
        invert: Apply the inverse (set by ``inverse()``).
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ...).

    Raises:
        ValueError: images whose canonical ``(D, H, W)`` is not ``in_shape``, or selected
            images on different grids.
    """

    def __init__(
        self,
        size: Sequence[int],
        start: int,
        box: Sequence[float],
        in_shape: Sequence[int],
        pad_value: float | None = None,
        invert: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size = tuple(int(v) for v in size)
        self.start = int(start)
        self.box = tuple(float(v) for v in box)
        self.in_shape = spatial_shape(in_shape)
        self.pad_value = pad_value
        self.invert_transform = bool(invert)
        if len(self.box) != 4:
            raise ValueError(f"box must be (top, left, height, width), got {self.box}")
        self.args_names = ["size", "start", "box", "in_shape", "pad_value", "invert"]

    @property
    def invert(self) -> bool:
        """Whether this applies the inverse."""
        return self.invert_transform

    def random(self) -> RandomResizedCrop3d:
        """The random transform this crop is one draw of."""
        return RandomResizedCrop3d(self.size, pad_value=self.pad_value)

    def params(self) -> CropParams:
        """This crop as a one-sample ``CropParams`` record (start ``(1,)``, box ``(1, 4)``)."""
        return CropParams(
            start=torch.tensor([self.start], dtype=torch.long),
            boxes=torch.tensor([self.box], dtype=torch.float64),
        )

    def apply_canonical(
        self, x: torch.Tensor, affine_dhw: np.ndarray, label: bool
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Crop (or, inverted, un-crop) one ``(C, D, H, W)`` canonical image and its affine.

        Label maps are resampled nearest-neighbour, scalar images with the batched
        separable kernel.

        Raises:
            ValueError: The image's shape is not the one this crop was drawn for.
        """
        expected = self.size if self.invert_transform else self.in_shape
        if spatial_shape(x.shape) != tuple(expected):
            raise ValueError(
                f"{self.name}{' (inverse)' if self.invert_transform else ''} expects images "
                f"of canonical (D, H, W) {tuple(expected)}, got {spatial_shape(x.shape)}"
            )
        if not self.invert_transform:
            return super().apply_canonical(x, affine_dhw, label)
        params = self.params()
        out = uncrop3d(x[None], params, self.in_shape, label, self.pad_value)[0]
        matrix = params.crop_matrix(self.size, self.in_shape)
        return out, affine_dhw @ np.linalg.inv(matrix)
