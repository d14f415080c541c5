"""Default image and label loaders (MONAI), so the package works on its own.

Orientation: arrays are returned as ``(1, D, H, W)`` in the project's canonical LPS
orientation with the axial axis first (D inferior -> superior, H anterior -> posterior,
W right -> left), obtained with MONAI ``Orientation(axcodes="SPL")`` (MONAI labels array
axes by the RAS direction they run toward). Image intensities (HU) are clipped and
z-normalised with the paper's foreground statistics (Appendix B: clip [-1008, 822] HU,
mean -86.8086, std 322.6347). The app injects tapct_data readers instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation

__all__ = ["PAPER_CLIP_NORMALIZE", "clip_normalize", "load_image_monai", "load_label_monai"]

#: (lower HU, upper HU, mean HU, std HU) of the paper's preprocessing (Appendix B).
PAPER_CLIP_NORMALIZE = (-1008.0, 822.0, -86.8086, 322.6347)


def clip_normalize(
    hu: torch.Tensor, stats: tuple[float, float, float, float] = PAPER_CLIP_NORMALIZE
) -> torch.Tensor:
    """Clip HU to ``[lower, upper]`` and z-normalise with ``(mean, std)``.

    Args:
        hu: any-shape tensor in HU.
        stats: ``(lower, upper, mean, std)`` in HU.

    Returns:
        float32 tensor, same shape.
    """
    lower, upper, mean, std = stats
    return ((hu.float().clamp(lower, upper) - mean) / std).float()


def _load_canonical(path: str | Path) -> torch.Tensor:
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(
            f"{path}: expected a single-channel 3D image, got shape {tuple(image.shape)}"
        )
    oriented = Orientation(axcodes="SPL")(image) if isinstance(image, MetaTensor) else image
    if not isinstance(oriented, MetaTensor):
        # Without meta tracking MONAI drops the affine and Orientation assumes identity.
        raise RuntimeError(
            f"{path}: MONAI returned no affine (meta tracking is off); "
            "call monai.data.set_track_meta(True) before loading"
        )
    return oriented.as_tensor()


def load_image_monai(path: str | Path) -> torch.Tensor:
    """Read a CT (NIfTI, NRRD, DICOM folder, ...) as a normalised canonical volume.

    Args:
        path: image file or DICOM series folder.

    Returns:
        ``(1, D, H, W)`` float32, LPS axial-first, clip-normalised (paper values).

    Raises:
        ValueError: when the image is not single-channel 3D.
        RuntimeError: when MONAI's meta tracking is off (no affine to orient by).
    """
    return clip_normalize(_load_canonical(path))


def load_label_monai(path: str | Path, image_path: str | Path | None = None) -> torch.Tensor:
    """Read a label map in the same canonical orientation as :func:`load_image_monai`.

    Args:
        path: label file.
        image_path: the image it belongs to (its grid is checked when given).

    Returns:
        ``(D, H, W)`` int64 labels.

    Raises:
        ValueError: when the label grid differs from the image's, or values are not integral.
    """
    label = _load_canonical(path)[0]
    if not torch.equal(label, label.round()):
        raise ValueError(f"{path}: label values are not integers")
    if image_path is not None:
        image = _load_canonical(image_path)
        if tuple(image.shape[1:]) != tuple(label.shape):
            raise ValueError(
                f"{path}: label grid {tuple(label.shape)} differs from image "
                f"{image_path} grid {tuple(image.shape[1:])}"
            )
    return label.to(torch.int64)
