"""The encoder protocol: one interface for every model the benchmark compares.

An *encoder* maps a batch of preprocessed windows ``(B, 1, d, h, w)`` to dense patch
features ``(B, E, d / sd, h / sh, w / sw)`` on a regular grid of voxel stride
``(sd, sh, sw)``, and optionally one cls token ``(B, E)`` per window. It carries the
:class:`Preprocessing` its model expects (HU window and normalisation, an in-plane size,
the per-channel mean/std of 2D natural-image models, the window sizes the network needs),
so the benchmark can compare our ViT, a 2D timm model applied slice by slice and a MONAI
network's encoder on the same scans, each as its authors feed it.

Adapters: :class:`~tapct_eval.encoders.backbone.BackboneEncoder` (any DINOv2-interface
backbone, e.g. ``tapct_vit3d``), :class:`~tapct_eval.encoders.timm_slices.TimmSliceEncoder`
and :class:`~tapct_eval.encoders.monai_nets.MonaiEncoder`.

References:
    kaiko eva's ``ModelFromRegistry``/``TimmModel`` wrappers (the paper's benchmark code),
    MONAI ``monai.inferers`` for the sliding-window side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import attrs
import torch
import torch.nn.functional as F

__all__ = ["Encoder", "EncoderOutput", "Preprocessing", "hu_window"]


class EncoderOutput(NamedTuple):
    """What an encoder returns for a batch of windows.

    Attributes:
        patch_features: ``(B, E, t, h, w)`` float features; cell ``(i, j, k)`` covers
            voxels ``[i*sd, (i+1)*sd) x [j*sh, ...) x [k*sw, ...)`` of the window.
        cls_token: ``(B, E)`` one global token per window, or None when the model has
            none (the feature extraction then uses the mean of the patch features).
    """

    patch_features: torch.Tensor
    cls_token: torch.Tensor | None


def _optional_triple(value: Sequence[int | None] | None) -> tuple[int | None, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen
class Preprocessing:
    """The input an encoder's model expects, as a small record.

    The benchmark applies the volume-level steps (``intensity`` on the HU volume,
    ``in_plane_size`` to image and label); the adapter applies the window-level ones
    (channel replication and ``channel_mean``/``channel_std``, padding to
    ``pad_multiple``) inside its forward.

    Attributes:
        intensity: ``(lower, upper, mean, std)`` in HU: clip to ``[lower, upper]`` then
            ``(x - mean) / std`` (the 4 numbers of ``tapct_data.NormalizeConfig``). A
            window scaled to ``[0, 1]`` is ``(lo, hi, lo, hi - lo)`` (see :func:`hu_window`).
            None: the caller's normalisation is used as is.
        in_plane_size: ``(H, W)`` every axial slice is resized to before features (e.g.
            a 2D model's input size), or None to keep the task's.
        window_size: ``(d, h, w)`` axes the sliding window must have, None per axis for
            the task's value (e.g. ``(None, 224, 224)``: whole resized slices).
        window_multiple: each window axis is rounded *up* to a multiple of this (e.g. 32
            for SwinUNETR's five halvings); None: the window must already be a multiple
            of the stride.
        pad_multiple: the adapter pads each window at its far end to a multiple of this
            before the network and crops the features back (None: no padding).
        channel_mean: per-channel mean the adapter subtracts after replicating the
            ``[0, 1]`` input to ``len(channel_mean)`` channels (ImageNet's for 2D
            natural-image models), or None for one channel.
        channel_std: per-channel std, same length as ``channel_mean``.
    """

    intensity: tuple[float, float, float, float] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(float(x) for x in v)
    )
    in_plane_size: tuple[int, int] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(int(x) for x in v)
    )
    window_size: tuple[int | None, ...] = attrs.field(
        default=(None, None, None), converter=_optional_triple
    )
    window_multiple: tuple[int, int, int] | None = attrs.field(
        default=None, converter=_optional_triple
    )
    pad_multiple: tuple[int, int, int] | None = attrs.field(
        default=None, converter=_optional_triple
    )
    channel_mean: tuple[float, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(float(x) for x in v)
    )
    channel_std: tuple[float, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(float(x) for x in v)
    )

    def __attrs_post_init__(self) -> None:
        if self.intensity is not None:
            lower, upper, _, std = self.intensity
            if len(self.intensity) != 4 or not lower < upper or not std > 0:
                raise ValueError(
                    f"intensity must be (lower < upper, mean, std > 0) in HU, got {self.intensity}"
                )
        if self.in_plane_size is not None and (
            len(self.in_plane_size) != 2 or min(self.in_plane_size) < 1
        ):
            raise ValueError(f"in_plane_size must be 2 positive ints, got {self.in_plane_size}")
        if len(self.window_size) != 3 or any(v is not None and v < 1 for v in self.window_size):
            raise ValueError(f"window_size must be 3 positive ints or None, got {self.window_size}")
        for name in ("window_multiple", "pad_multiple"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or min(value) < 1):
                raise ValueError(f"{name} must be 3 positive ints, got {value}")
        if (self.channel_mean is None) != (self.channel_std is None) or (
            self.channel_mean is not None
            and self.channel_std is not None
            and (len(self.channel_mean) != len(self.channel_std) or min(self.channel_std) <= 0)
        ):
            raise ValueError(
                "channel_mean and channel_std must be given together, of one length, std > 0; "
                f"got {self.channel_mean} and {self.channel_std}"
            )

    @property
    def pad_value(self) -> float:
        """Normalised value of air (-1024 HU, clipped): what windows are padded with.

        0.0 when ``intensity`` is None (MONAI's ``cval``; the caller's units are unknown).
        """
        if self.intensity is None:
            return 0.0
        lower, upper, mean, std = self.intensity
        return (min(max(-1024.0, lower), upper) - mean) / std

    def normalize_hu(self, volume: torch.Tensor) -> torch.Tensor:
        """Clip a HU volume and normalise it with ``intensity``.

        Args:
            volume: ``(..., D, H, W)`` in HU, any float or int dtype.

        Returns:
            float32 tensor of the same shape.

        Raises:
            ValueError: when ``intensity`` is None.
        """
        if self.intensity is None:
            raise ValueError("this encoder's preprocessing has no intensity window")
        lower, upper, mean, std = self.intensity
        return (volume.float().clamp(lower, upper) - mean) / std

    def resize(
        self, image: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Resize every axial slice to ``in_plane_size`` (image trilinear, label nearest).

        Args:
            image: ``(C, D, H, W)`` float.
            label: ``(D, H, W)`` int or None.

        Returns:
            ``(image (C, D, h, w), label (D, h, w) int64 or None)``; unchanged when
            ``in_plane_size`` is None.
        """
        if self.in_plane_size is None:
            return image, label
        size = (image.shape[1], *self.in_plane_size)
        image = F.interpolate(
            image[None].float(), size=size, mode="trilinear", align_corners=False
        )[0]
        if label is not None:
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return image, label

    def resolve_window(
        self, requested: Sequence[int], stride: Sequence[int]
    ) -> tuple[int, int, int]:
        """The sliding window this encoder runs with, for a requested (task) window.

        Fixed ``window_size`` axes win; other axes are rounded up to ``window_multiple``
        when set. The result must be a multiple of ``stride`` on every axis.

        Args:
            requested: the task's ``(d, h, w)`` in voxels.
            stride: the encoder's feature stride ``(sd, sh, sw)``.

        Returns:
            ``(d, h, w)`` in voxels.

        Raises:
            ValueError: when the window is not a multiple of the stride.
        """
        out = []
        for axis, want in enumerate(requested):
            fixed = self.window_size[axis]
            value = int(fixed) if fixed is not None else int(want)
            if fixed is None and self.window_multiple is not None:
                m = self.window_multiple[axis]
                value = -(-value // m) * m
            out.append(value)
        if any(v % s for v, s in zip(out, stride)):
            raise ValueError(
                f"roi_size {tuple(out)} must be a multiple of the encoder's stride "
                f"{tuple(stride)} per axis"
            )
        return tuple(out)  # type: ignore[return-value]

    def prepare_window(self, x: torch.Tensor) -> torch.Tensor:
        """Window-level steps: replicate to ``len(channel_mean)`` channels and normalise.

        Args:
            x: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` in the volume's units (``[0, 1]``
                for a 2D natural-image model).

        Returns:
            ``(N, C, ...)``; ``x`` itself when ``channel_mean`` is None.
        """
        if self.channel_mean is None or self.channel_std is None:
            return x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.new_tensor(self.channel_mean).view(shape)
        std = x.new_tensor(self.channel_std).view(shape)
        return (x.expand(-1, len(self.channel_mean), *x.shape[2:]) - mean) / std


def hu_window(lower: float, upper: float) -> tuple[float, float, float, float]:
    """The ``intensity`` record that maps HU ``[lower, upper]`` linearly onto ``[0, 1]``.

    Args:
        lower: HU mapped to 0.
        upper: HU mapped to 1.

    Returns:
        ``(lower, upper, lower, upper - lower)``.
    """
    return (float(lower), float(upper), float(lower), float(upper) - float(lower))


def pad_window(
    x: torch.Tensor, multiple: Sequence[int] | None, value: float
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad ``(B, C, d, h, w)`` at the far end of each axis to a multiple of ``multiple``.

    Returns:
        ``(padded, (d, h, w))`` with the original spatial size, to crop features back.
    """
    size = tuple(int(s) for s in x.shape[2:])
    if multiple is None:
        return x, size  # type: ignore[return-value]
    pads: list[int] = []
    for s, m in zip(reversed(size), reversed(tuple(multiple))):
        pads += [0, -(-s // m) * m - s]
    return (F.pad(x, pads, value=value) if any(pads) else x), size  # type: ignore[return-value]


@runtime_checkable
class Encoder(Protocol):
    """The encoder protocol (see the module docstring).

    Attributes:
        embed_dim: feature width E.
        stride: voxel stride ``(sd, sh, sw)`` of the patch features in the preprocessed
            volume; a window must be a multiple of it.
        preprocessing: the :class:`Preprocessing` the model expects.

        training: ``nn.Module``'s mode flag.

    Adapters are ``nn.Module``s, so ``.to(device)``, ``.eval()`` and ``.train()`` work.
    """

    embed_dim: int
    stride: tuple[int, int, int]
    preprocessing: Preprocessing
    training: bool

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Map windows ``(B, 1, d, h, w)`` to :class:`EncoderOutput`."""
        ...

    def train(self, mode: bool = True) -> object:
        """Set training mode (``nn.Module.train``); the extraction calls ``train(False)``."""
        ...
