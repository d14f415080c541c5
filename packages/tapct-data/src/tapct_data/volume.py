"""The `Volume` record: a CT volume in the canonical orientation with its geometry."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch

__all__ = ["Volume"]

# LPS <-> RAS is a sign flip of the first two world axes (its own inverse).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _as_affine(value: Any) -> np.ndarray:
    affine = np.asarray(value, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    return affine


@attrs.define(eq=False)
class Volume:
    """A volume in the canonical orientation (DESIGN.md section 3).

    Canonical orientation: LPS with the axial axis first. Index ``(d, h, w)`` runs
    D inferior -> superior, H anterior -> posterior, W right -> left, so ``data[0, k]`` is
    an axial slice in the radiological display convention.

    Attributes:
        data: Tensor ``(C, D, H, W)``; float32 HU for images (C = 1), integer class ids for
            label maps.
        spacing: ``(sd, sh, sw)`` voxel spacing in mm (the lengths of the affine's columns).
        affine: ``(4, 4)`` float64 array mapping the voxel index ``(d, h, w, 1)`` to patient
            LPS coordinates in mm.
        source: Where the volume came from (a path or a description).
        metadata: Minimal metadata: ``modality``, ``series_uid`` where the file has them,
            plus notes on what a reader did (``"resampled"``, warnings).
    """

    data: torch.Tensor
    spacing: tuple[float, float, float] = attrs.field(
        converter=lambda s: tuple(float(v) for v in s)
    )
    affine: np.ndarray = attrs.field(converter=_as_affine)
    source: str = ""
    metadata: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(self.data).__name__}")
        if self.data.ndim != 4:
            raise ValueError(f"data must be (C, D, H, W), got shape {tuple(self.data.shape)}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive values in mm, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial shape ``(D, H, W)``."""
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    def ras_affine_whd(self) -> np.ndarray:
        """Affine for the array transposed to ``(W, H, D)`` in RAS (NIfTI/TorchIO convention).

        Returns:
            ``(4, 4)`` float64 array mapping index ``(w, h, d)`` to RAS mm.
        """
        return _LPS_TO_RAS @ self.affine[:, [2, 1, 0, 3]]

    def to_torchio(self, label: bool = False):
        """Wrap as a TorchIO image (``tio.ScalarImage`` or ``tio.LabelMap``).

        TorchIO stores ``(C, W, H, D)`` with a RAS affine; this permutes the axes and converts
        the affine, so TorchIO's own geometry matches this volume exactly.

        Args:
            label: Return a ``tio.LabelMap`` instead of a ``tio.ScalarImage``.

        Returns:
            The TorchIO image with tensor ``(C, W, H, D)``.
        """
        import torchio as tio

        cls = tio.LabelMap if label else tio.ScalarImage
        return cls(tensor=self.data.permute(0, 3, 2, 1).contiguous(), affine=self.ras_affine_whd())

    @classmethod
    def from_torchio(cls, image, source: str = "") -> Volume:
        """Build a `Volume` from a TorchIO image whose axes are already canonical.

        Args:
            image: A ``tio.Image`` with tensor ``(C, W, H, D)`` (e.g. from `to_torchio`).
            source: Stored in ``source``.

        Returns:
            The `Volume` with ``data (C, D, H, W)``.
        """
        data = image.data.permute(0, 3, 2, 1).contiguous()
        affine = _LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)
        affine = affine[:, [2, 1, 0, 3]]
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        return cls(data=data, spacing=tuple(spacing), affine=affine, source=source)
