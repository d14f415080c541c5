"""Sliding-window dense features of a frozen encoder (paper section 3.3, Figure 1).

The encoder is anything with the :class:`~tapct_eval.encoders.Encoder` protocol (a
DINOv2-interface backbone is wrapped in :class:`~tapct_eval.encoders.BackboneEncoder`).
The volume is padded at its far end to whole feature cells (and at least one ROI),
scanned with MONAI's :class:`~monai.inferers.SlidingWindowInferer` using windows whose
starts lie on the feature grid, and the predictor returns each window's patch features
``(B, E, t, h, w)``, i.e. an output at ``1 / stride`` of the input resolution, which MONAI
places and blends: ``mode="constant"`` (plain average, the default) or ``"gaussian"``
(weights ``exp(-x^2 / 2 (sigma_scale * roi)^2)`` per axis, MONAI's importance map, so
window borders count less). Window cls tokens are captured in the predictor with the
window coordinates MONAI passes (``with_coord=True``).

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
from monai.data.utils import compute_importance_map
from monai.inferers import SlidingWindowInferer
from torch import nn

from ._windows import as_triple, monai_overlap, padded_shape, scan_interval, window_starts
from .encoders import Encoder, as_encoder

__all__ = [
    "BLEND_MODES",
    "ExtractedFeatures",
    "FeatureExtractor",
    "blend_weights",
    "extract_features",
]


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
        patch_size: the encoder's feature stride ``(pd, ph, pw)`` in voxels (a ViT's
            patch size).
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


#: Blending modes of MONAI's sliding window (``monai.utils.BlendMode``).
BLEND_MODES = ("constant", "gaussian")


def _validate(
    model: Encoder,
    volume: Any,
    roi_size: Any,
    overlap: float,
    sw_batch_size: int,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    shape = tuple(getattr(volume, "shape", ()))
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"volume must have shape (1, D, H, W), got {shape}")
    roi = as_triple(roi_size, "roi_size")
    patch = tuple(int(s) for s in model.stride)
    bad = [i for i in range(3) if roi[i] % patch[i]]
    if bad:
        raise ValueError(f"roi_size {roi} must be a multiple of the patch size {patch} per axis")
    if mode not in BLEND_MODES:
        raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
    sigmas = (sigma_scale,) if isinstance(sigma_scale, int | float) else tuple(sigma_scale)
    if len(sigmas) not in (1, 3) or not all(float(v) > 0 for v in sigmas):
        raise ValueError(f"sigma_scale must be a positive float or 3 of them, got {sigma_scale!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive int, got {sw_batch_size!r}")
    return roi, patch, tuple(int(s) for s in shape[1:])  # type: ignore[return-value]


class _WindowRecorder:
    """The MONAI predictor: encoder patch features out, cls tokens and positions kept.

    With ``weight`` (streamed mode) it returns ``[weight * features, weight]`` (E + 1
    channels) so that rows of windows can be blended outside MONAI.
    """

    def __init__(
        self,
        model: Encoder,
        device: torch.device,
        autocast: bool,
        depth_offset: int = 0,
        weight: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.autocast = autocast
        self.depth_offset = depth_offset
        self.weight = weight  # (t, h, w) on ``device`` or None
        self.cls: list[torch.Tensor] = []  # (B, E) float32 on ``device``: no host sync
        self.positions: list[tuple[int, int, int]] = []

    def __call__(self, windows: torch.Tensor, coords: Sequence[Sequence[slice]]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            patch, cls = self.model.encode(windows.to(self.device))
        patch = patch.float().contiguous()  # (B, E, t, h, w): MONAI blends it in place
        if cls is None:
            cls = patch.mean(dim=(2, 3, 4))  # (B, E): no cls token, mean of the window
        self.cls.append(cls.detach().float())
        for window in coords:  # [batch slice, channel slice, d, h, w slices]: host ints
            d, h, w = (int(s.start) for s in window[2:5])
            self.positions.append((d + self.depth_offset, h, w))
        if self.weight is None:
            return patch
        weight = self.weight.expand(patch.shape[0], 1, *self.weight.shape)  # (B, 1, t, h, w)
        return torch.cat([patch * weight, weight], dim=1)  # (B, E + 1, t, h, w)


def blend_weights(
    roi_size: Sequence[int],
    stride: Sequence[int],
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The per-feature-cell weight of one window, exactly as MONAI's sliding window uses it.

    MONAI's importance map at the ROI size, resized (``nearest-exact``) to the window's
    feature grid ``roi / stride``.

    Returns:
        ``(t, h, w)`` float32 weights.
    """
    importance = compute_importance_map(
        tuple(int(r) for r in roi_size), mode=mode, sigma_scale=sigma_scale, device=device
    )
    grid = tuple(int(r) // int(s) for r, s in zip(roi_size, stride))
    return F.interpolate(importance[None, None], size=grid, mode="nearest-exact")[0, 0]


def _resolve_autocast(autocast: bool | None, device: torch.device) -> bool:
    """Whether the forward runs under bf16 autocast: ``None`` means "on CUDA only"."""
    return device.type == "cuda" if autocast is None else bool(autocast)


def extract_features(
    model: Encoder | nn.Module,
    volume: torch.Tensor | np.ndarray | Any,
    roi_size: int | Sequence[int],
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    device: str | torch.device = "cpu",
    *,
    pad_value: float = 0.0,
    autocast: bool | None = None,
    output: str | Path | None = None,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
) -> ExtractedFeatures:
    """Extract dense patch features and per-window cls tokens with a sliding window.

    Args:
        model: a frozen :class:`~tapct_eval.encoders.Encoder`, or a backbone with
            ``.patch_size``, ``.embed_dim`` and ``forward_features``/
            ``get_intermediate_layers`` (DINOv2 interface, wrapped with
            :func:`~tapct_eval.encoders.as_encoder`). It is put in eval mode for the call
            and restored afterwards. An encoder without a cls token gets the mean of each
            window's patch features as its cls token.
        volume: normalised ``(1, D, H, W)`` float volume (tensor, numpy array, or any
            array with numpy slicing such as a zarr array; streamed mode reads it one ROI
            depth at a time).
        roi_size: window ``(d, h, w)`` in voxels, a multiple of the stride per axis
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
        mode: blending of overlapping windows, ``"constant"`` (mean) or ``"gaussian"``
            (MONAI's ``SlidingWindowInferer`` ``mode``; streamed mode blends the same way).
        sigma_scale: width of the gaussian as a fraction of the ROI (one or 3 floats,
            MONAI's default 0.125); used with ``mode="gaussian"``.

    Returns:
        :class:`ExtractedFeatures` with ``patch_features (E, t, h, w)`` (overlaps averaged,
        cropped back to ``ceil((D, H, W) / patch_size)``), ``cls_tokens (n_windows, E)`` and
        ``window_positions (n_windows, 3)``.

    Raises:
        ValueError: bad volume shape, ``roi_size`` not a multiple of the patch size,
            ``overlap`` outside ``[0, 1)``, a bad ``sw_batch_size``, ``mode`` or
            ``sigma_scale``.
        TypeError: when ``model`` is neither an encoder nor a backbone.

    Shapes:
        ``volume (1, D, H, W)`` -> ``patch_features (E, ceil(D/pd), ceil(H/ph), ceil(W/pw))``.
    """
    model = as_encoder(model)
    roi, patch, shape = _validate(
        model, volume, roi_size, overlap, sw_batch_size, mode, sigma_scale
    )
    embed_dim = int(model.embed_dim)
    device = torch.device(device)
    amp = _resolve_autocast(autocast, device)
    pshape = padded_shape(shape, roi, patch)
    interval = scan_interval(roi, patch, float(overlap))
    grid = tuple(-(-s // p) for s, p in zip(shape, patch))
    was_training = model.training
    model.train(False)
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
                    mode,
                    sigma_scale,
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
                    mode,
                    sigma_scale,
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
        raise TypeError(f"the sliding window gave a {type(out).__name__}, not one tensor")
    return out


def _inferer(roi, sw_batch_size, overlap, mode, sigma_scale, device) -> SlidingWindowInferer:
    return SlidingWindowInferer(
        roi_size=roi,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode=mode,
        sigma_scale=sigma_scale,
        sw_device=device,
        device=device,
        with_coord=True,
    )


def _extract_in_memory(
    model, volume, roi, pshape, interval, grid, sw_batch_size, device, pad_value, amp, mode, sigma
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    slab = _read_slab(volume, 0, volume.shape[1]).to(device)  # one host -> device copy
    x = _pad_to(slab, pshape, pad_value)[None]  # (1, 1, D', H', W') on ``device``
    recorder = _WindowRecorder(model, device, amp)
    inferer = _inferer(roi, sw_batch_size, monai_overlap(roi, interval), mode, sigma, device)
    out = inferer(x, recorder)
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
    mode,
    sigma,
) -> tuple[Any, torch.Tensor, list[tuple[int, int, int]]]:
    """Rows of windows one depth start at a time, blended outside MONAI.

    MONAI blends each row with constant weights the predictor's ``[w * f, w]`` channels
    (``w`` the window's :func:`blend_weights`); a cell's row result is
    ``(sum w f / n, sum w / n)`` with ``n`` its in-plane window count, the same for every
    row, so summing rows and dividing gives ``sum w f / sum w``: MONAI's own blend.
    """
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
    buf_cnt: torch.Tensor | None = None  # summed blend weights per row and cell
    weight = blend_weights(roi, patch, mode, sigma, device)  # (rt, rh, rw)
    cls: list[torch.Tensor] = []
    positions: list[tuple[int, int, int]] = []

    def flush(until: int) -> None:
        nonlocal buf_start, buf_sum, buf_cnt
        n = min(until, t) - buf_start
        if buf_sum is None or buf_cnt is None or n <= 0:
            return
        rows = buf_sum[:, :n] / buf_cnt[:n][None]
        array[:, buf_start : buf_start + n] = rows.cpu().numpy()
        buf_sum, buf_cnt = buf_sum[:, n:], buf_cnt[n:]
        buf_start += n

    for d0 in starts:
        flush(d0 // pd)
        slab = _read_slab(volume, d0, d0 + roi[0]).to(device)
        slab = _pad_to(slab, (roi[0], pshape[1], pshape[2]), pad_value)[None]
        recorder = _WindowRecorder(model, device, amp, depth_offset=d0, weight=weight)
        inferer = _inferer(roi, sw_batch_size, (0.0, *in_plane_overlap), "constant", 0.125, device)
        out = _one_tensor(inferer(slab, recorder))[0, :, :, :h, :w]  # (E + 1, rt, h, w)
        cls += recorder.cls
        positions += recorder.positions
        row0 = d0 // pd - buf_start
        need = row0 + rt
        if buf_sum is None or buf_cnt is None:
            buf_sum = torch.zeros(embed_dim, 0, h, w, device=device)
            buf_cnt = torch.zeros(0, h, w, device=device)
        if buf_sum.shape[1] < need:
            grow = need - buf_sum.shape[1]
            buf_sum = torch.cat([buf_sum, buf_sum.new_zeros(embed_dim, grow, h, w)], dim=1)
            buf_cnt = torch.cat([buf_cnt, buf_cnt.new_zeros(grow, h, w)])
        buf_sum[:, row0:need] += out[:embed_dim]
        buf_cnt[row0:need] += out[embed_dim]
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
        mode: window blending, ``"constant"`` or ``"gaussian"``.
        sigma_scale: gaussian width as a fraction of the ROI.

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
    mode: str = "constant"
    sigma_scale: float = 0.125

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be a positive int, got {self.sw_batch_size!r}")
        if self.mode not in BLEND_MODES:
            raise ValueError(f"mode must be one of {BLEND_MODES}, got {self.mode!r}")

    def __call__(
        self, model: Encoder | nn.Module, volume: Any, *, output: str | Path | None = None
    ) -> ExtractedFeatures:
        """Run :func:`extract_features` with this configuration.

        Args:
            model: the encoder or backbone.
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
            mode=self.mode,
            sigma_scale=self.sigma_scale,
        )
