"""Sliding-window dense features of a frozen backbone (paper section 3.3, Figure 1).

The volume is padded at its far end to whole patches (and at least one ROI), scanned with
MONAI's ``sliding_window_inference`` using windows whose starts lie on the patch grid, and
the predictor returns each window's patch features ``(B, E, t, h, w)``, i.e. an output at
``1 / patch_size`` of the input resolution, which MONAI places and averages (constant
blending). Window cls tokens are captured in the predictor with the window coordinates
MONAI passes (``with_coord=True``).

Speed (paper-scale scans on a GPU): the padded volume is moved to the backbone's device
once, windows are cut, batched (``sw_batch_size`` per forward) and averaged there (MONAI's
``sw_device`` and ``device`` are both the backbone's device), the forward runs under bf16
autocast on CUDA, and features and cls tokens come back to the host in one transfer at
the end. Padding uses ``pad_value``: callers embedding CT pass the *normalised value of
air* (MONAI's default ``cval`` 0.0 is the dataset mean, about -87 HU with the paper's
statistics, i.e. soft tissue around the scan).

In streaming mode the same windows are visited one row of depth starts at a time and
finished patch rows are written to a zarr array, so memory holds one ROI depth of features
instead of the whole grid.

References:
    Cardoso et al. 2022 (MONAI), ``monai/inferers/utils.py::sliding_window_inference``;
    kaiko eva's embedding extraction used by the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
import zarr
from monai.inferers import sliding_window_inference
from torch import nn

from ._backbone import backbone_embed_dim, backbone_forward, backbone_patch_size
from ._windows import as_triple, monai_overlap, padded_shape, scan_interval, window_starts

__all__ = ["ExtractedFeatures", "FeatureExtractor", "extract_features"]


@attrs.frozen(eq=False)
class ExtractedFeatures:
    """Dense features of one volume.

    Attributes:
        patch_features: ``(E, t, h, w)`` float32 tensor, or a ``zarr.Array`` of that shape
            when streamed. Patch ``(i, j, k)`` covers voxels ``[i*pd, (i+1)*pd)`` etc. of
            the input; ``(t, h, w) = ceil((D, H, W) / patch_size)`` so every voxel is under
            a patch (the last patch of an axis may reach into padding).
        cls_tokens: ``(n_windows, E)`` float32, one backbone cls token per window.
        window_positions: ``(n_windows, 3)`` int64 start voxel ``(d0, h0, w0)`` of each
            window in the padded volume (same order as ``cls_tokens``, sorted).
        roi_size: window size in voxels ``(d, h, w)``.
        patch_size: backbone patch size ``(pd, ph, pw)``.
        volume_shape: input ``(D, H, W)``.
        padded_shape: ``(D', H', W')`` after padding.
    """

    patch_features: Any
    cls_tokens: torch.Tensor
    window_positions: torch.Tensor
    roi_size: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    volume_shape: tuple[int, int, int]
    padded_shape: tuple[int, int, int]

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Patch grid ``(t, h, w)`` of the whole volume."""
        return tuple(int(s) for s in self.patch_features.shape[1:])  # type: ignore[return-value]

    def load_patch_features(self) -> torch.Tensor:
        """Return the patch features as an in-memory ``(E, t, h, w)`` float32 tensor."""
        if isinstance(self.patch_features, torch.Tensor):
            return self.patch_features
        return torch.from_numpy(np.asarray(self.patch_features[...], dtype=np.float32))


def _read_slab(volume: Any, d0: int, d1: int) -> torch.Tensor:
    """Rows ``[d0, d1)`` of a ``(1, D, H, W)`` tensor/array/zarr array as float32 tensor."""
    slab = volume[:, d0:d1]
    if not isinstance(slab, torch.Tensor):
        slab = torch.from_numpy(np.ascontiguousarray(np.asarray(slab)))
    return slab.to(torch.float32)


def _pad_to(x: torch.Tensor, shape: Sequence[int], value: float) -> torch.Tensor:
    """Pad ``(..., D, H, W)`` at the far end of each spatial axis to ``shape``."""
    pads: list[int] = []
    for have, want in zip(reversed(x.shape[-3:]), reversed(tuple(shape))):
        pads += [0, int(want) - int(have)]
    return F.pad(x, pads, value=value) if any(pads) else x


def _validate(
    model: nn.Module, volume: Any, roi_size: Any, overlap: float, sw_batch_size: int
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    shape = tuple(getattr(volume, "shape", ()))
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"volume must have shape (1, D, H, W), got {shape}")
    roi = as_triple(roi_size, "roi_size")
    patch = backbone_patch_size(model)
    bad = [i for i in range(3) if roi[i] % patch[i]]
    if bad:
        raise ValueError(f"roi_size {roi} must be a multiple of the patch size {patch} per axis")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive int, got {sw_batch_size!r}")
    return roi, patch, tuple(int(s) for s in shape[1:])  # type: ignore[return-value]


class _WindowRecorder:
    """The MONAI predictor: backbone patch features out, cls tokens and positions kept."""

    def __init__(
        self, model: nn.Module, device: torch.device, autocast: bool, depth_offset: int = 0
    ) -> None:
        self.model = model
        self.device = device
        self.autocast = autocast
        self.depth_offset = depth_offset
        self.cls: list[torch.Tensor] = []  # (B, E) float32 on ``device``: no host sync
        self.positions: list[tuple[int, int, int]] = []

    def __call__(self, windows: torch.Tensor, coords: Sequence[Sequence[slice]]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            patch, cls = backbone_forward(self.model, windows.to(self.device))
        self.cls.append(cls.detach().float())
        for window in coords:  # [batch slice, channel slice, d, h, w slices]: host ints
            d, h, w = (int(s.start) for s in window[2:5])
            self.positions.append((d + self.depth_offset, h, w))
        return patch.float()  # (B, E, t, h, w): MONAI averages in float32 on the device


def _resolve_autocast(autocast: bool | None, device: torch.device) -> bool:
    """Whether the forward runs under bf16 autocast: ``None`` means "on CUDA only"."""
    return device.type == "cuda" if autocast is None else bool(autocast)


def extract_features(
    model: nn.Module,
    volume: torch.Tensor | np.ndarray | Any,
    roi_size: int | Sequence[int],
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    device: str | torch.device = "cpu",
    *,
    pad_value: float = 0.0,
    autocast: bool | None = None,
    output: str | Path | None = None,
) -> ExtractedFeatures:
    """Extract dense patch features and per-window cls tokens with a sliding window.

    Args:
        model: frozen backbone with ``.patch_size``, ``.embed_dim`` and
            ``forward_features``/``get_intermediate_layers`` (DINOv2 interface). It is put
            in eval mode for the call and restored afterwards.
        volume: normalised ``(1, D, H, W)`` float volume (tensor, numpy array, or any
            array with numpy slicing such as a zarr array; streamed mode reads it one ROI
            depth at a time).
        roi_size: window ``(d, h, w)`` in voxels, a multiple of the patch size per axis
            (the backbone's native input, e.g. ``(12, 224, 224)`` for TAP-B-3D).
        overlap: fraction of the ROI shared by neighbouring windows, in ``[0, 1)``. The
            stride ``int(roi * (1 - overlap))`` is rounded down to whole patches and is at
            least one patch, so it is never zero.
        sw_batch_size: windows per backbone call (default 4). Any value gives the same
            features up to float rounding; larger batches keep a GPU busier.
        device: where the backbone runs and where windows are cut and averaged; the
            results are returned on the CPU.
        pad_value: value of the padding added at the far end of each axis, in the
            volume's (normalised) units. For CT pass the normalised value of air
            (e.g. ``(clip(-1024) - mean) / std``, about -2.86 with the paper's
            statistics); the default 0.0 is MONAI's ``cval`` and, after z-normalisation,
            means the dataset mean (about -87 HU), not air.
        autocast: run the backbone under ``torch.autocast(dtype=torch.bfloat16)``;
            ``None`` (default) = on for CUDA devices, off elsewhere. Features are
            averaged and returned in float32 either way.
        output: a zarr store path; when given, features stream into a float32 zarr array
            ``(E, t, h, w)`` there (chunked one patch row per chunk) and memory stays
            bounded by one ROI depth of the grid.

    Returns:
        :class:`ExtractedFeatures` with ``patch_features (E, t, h, w)`` (overlaps averaged,
        cropped back to ``ceil((D, H, W) / patch_size)``), ``cls_tokens (n_windows, E)`` and
        ``window_positions (n_windows, 3)``.

    Raises:
        ValueError: bad volume shape, ``roi_size`` not a multiple of the patch size,
            ``overlap`` outside ``[0, 1)`` or a bad ``sw_batch_size``.
        TypeError: when ``model`` does not offer the backbone interface.

    Shapes:
        ``volume (1, D, H, W)`` -> ``patch_features (E, ceil(D/pd), ceil(H/ph), ceil(W/pw))``.
    """
    roi, patch, shape = _validate(model, volume, roi_size, overlap, sw_batch_size)
    embed_dim = backbone_embed_dim(model)
    device = torch.device(device)
    amp = _resolve_autocast(autocast, device)
    pshape = padded_shape(shape, roi, patch)
    interval = scan_interval(roi, patch, float(overlap))
    grid = tuple(-(-s // p) for s, p in zip(shape, patch))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if output is None:
                feats, cls, pos = _extract_in_memory(
                    model,
                    volume,
                    roi,
                    pshape,
                    interval,
                    grid,
                    sw_batch_size,
                    device,
                    pad_value,
                    amp,
                )
            else:
                feats, cls, pos = _extract_streamed(
                    model,
                    volume,
                    roi,
                    patch,
                    pshape,
                    interval,
                    grid,
                    embed_dim,
                    sw_batch_size,
                    device,
                    pad_value,
                    amp,
                    Path(output),
                )
    finally:
        model.train(was_training)
    order = sorted(range(len(pos)), key=lambda i: pos[i])
    return ExtractedFeatures(
        patch_features=feats,
        cls_tokens=cls[order].clone(),
        window_positions=torch.tensor([pos[i] for i in order], dtype=torch.long).reshape(-1, 3),
        roi_size=roi,
        patch_size=patch,
        volume_shape=shape,
        padded_shape=pshape,
    )


def _one_tensor(
    out: torch.Tensor | tuple[torch.Tensor, ...] | dict[Any, torch.Tensor],
) -> torch.Tensor:
    """The single tensor MONAI returns for a predictor (``_WindowRecorder``) that gives one."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"sliding_window_inference gave a {type(out).__name__}, not one tensor")
    return out


def _extract_in_memory(
    model, volume, roi, pshape, interval, grid, sw_batch_size, device, pad_value, amp
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    slab = _read_slab(volume, 0, volume.shape[1]).to(device)  # one host -> device copy
    x = _pad_to(slab, pshape, pad_value)[None]  # (1, 1, D', H', W') on ``device``
    recorder = _WindowRecorder(model, device, amp)
    out = sliding_window_inference(
        x,
        roi,
        sw_batch_size,
        recorder,
        overlap=monai_overlap(roi, interval),
        mode="constant",
        sw_device=device,
        device=device,
        with_coord=True,
    )
    t, h, w = grid
    feats = _one_tensor(out)[0, :, :t, :h, :w].float().cpu().contiguous()  # (E, t, h, w)
    return feats, torch.cat(recorder.cls).cpu(), recorder.positions


def _extract_streamed(
    model,
    volume,
    roi,
    patch,
    pshape,
    interval,
    grid,
    embed_dim,
    sw_batch_size,
    device,
    pad_value,
    amp,
    output,
) -> tuple[Any, torch.Tensor, list[tuple[int, int, int]]]:
    t, h, w = grid
    array = zarr.open_array(
        store=str(output),
        mode="w",
        shape=(embed_dim, t, h, w),
        chunks=(embed_dim, 1, h, w),
        dtype="float32",
        fill_value=0.0,
    )
    pd = patch[0]
    rt = roi[0] // pd
    starts = sorted({s[0] for s in window_starts(pshape, roi, interval)})
    in_plane_overlap = monai_overlap(roi, interval)[1:]
    buf_start = 0
    buf_sum: torch.Tensor | None = None  # rolling rows of the patch grid, set together
    buf_cnt: torch.Tensor | None = None
    cls: list[torch.Tensor] = []
    positions: list[tuple[int, int, int]] = []

    def flush(until: int) -> None:
        nonlocal buf_start, buf_sum, buf_cnt
        n = min(until, t) - buf_start
        if buf_sum is None or buf_cnt is None or n <= 0:
            return
        rows = buf_sum[:, :n] / buf_cnt[:n].view(1, -1, 1, 1)
        array[:, buf_start : buf_start + n] = rows.cpu().numpy()
        buf_sum, buf_cnt = buf_sum[:, n:], buf_cnt[n:]
        buf_start += n

    for d0 in starts:
        flush(d0 // pd)
        slab = _read_slab(volume, d0, d0 + roi[0]).to(device)
        slab = _pad_to(slab, (roi[0], pshape[1], pshape[2]), pad_value)[None]
        recorder = _WindowRecorder(model, device, amp, depth_offset=d0)
        out = _one_tensor(
            sliding_window_inference(
                slab,
                roi,
                sw_batch_size,
                recorder,
                overlap=(0.0, *in_plane_overlap),
                mode="constant",
                sw_device=device,
                device=device,
                with_coord=True,
            )
        )[0, :, :, :h, :w]  # (E, rt, h, w) on ``device``
        cls += recorder.cls
        positions += recorder.positions
        row0 = d0 // pd - buf_start
        need = row0 + rt
        if buf_sum is None or buf_cnt is None:
            buf_sum = torch.zeros(embed_dim, 0, h, w, device=device)
            buf_cnt = torch.zeros(0, device=device)
        if buf_sum.shape[1] < need:
            grow = need - buf_sum.shape[1]
            buf_sum = torch.cat([buf_sum, buf_sum.new_zeros(embed_dim, grow, h, w)], dim=1)
            buf_cnt = torch.cat([buf_cnt, buf_cnt.new_zeros(grow)])
        buf_sum[:, row0:need] += out
        buf_cnt[row0:need] += 1
    flush(t)
    return array, torch.cat(cls).cpu(), positions


@attrs.frozen
class FeatureExtractor:
    """Configured :func:`extract_features`, for injection (like MONAI's SlidingWindowInferer).

    Attributes:
        roi_size: window ``(d, h, w)`` in voxels (a multiple of the patch size).
        overlap: window overlap in ``[0, 1)`` (default 0.25, MONAI's default).
        sw_batch_size: windows per backbone call.
        device: where the backbone runs.
        pad_value: padding value in normalised units (for CT: the normalised value of air).
        autocast: bf16 autocast; ``None`` = on CUDA only.

    Example:
        >>> extractor = FeatureExtractor(roi_size=(12, 64, 64))  # doctest: +SKIP
        >>> feats = extractor(model, volume)  # doctest: +SKIP
    """

    roi_size: tuple[int, int, int] = attrs.field(converter=lambda v: as_triple(v, "roi_size"))
    overlap: float = 0.25
    sw_batch_size: int = 4
    device: str = "cpu"
    pad_value: float = 0.0
    autocast: bool | None = None

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be a positive int, got {self.sw_batch_size!r}")

    def __call__(
        self, model: nn.Module, volume: Any, *, output: str | Path | None = None
    ) -> ExtractedFeatures:
        """Run :func:`extract_features` with this configuration.

        Args:
            model: the backbone.
            volume: normalised ``(1, D, H, W)`` volume.
            output: optional zarr path to stream the features into.

        Returns:
            :class:`ExtractedFeatures`.
        """
        return extract_features(
            model,
            volume,
            self.roi_size,
            overlap=self.overlap,
            sw_batch_size=self.sw_batch_size,
            device=self.device,
            pad_value=self.pad_value,
            autocast=self.autocast,
            output=output,
        )
