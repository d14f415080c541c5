"""Default image and label loaders (MONAI), so the package works on its own.

Orientation: arrays are returned as ``(1, D, H, W)`` in the project's canonical LPS
orientation with the axial axis first (D inferior -> superior, H anterior -> posterior,
W right -> left), obtained with MONAI ``Orientation(axcodes="SPL")`` (MONAI labels array
axes by the RAS direction they run toward). Image intensities (HU) are clipped and
z-normalised with the statistics the caller passes (:class:`ClipStats`: the ones the
model was trained with; ``tapct`` reads them from the model's ``config.json``, the paper's
values are ``tapct_data.NormalizeConfig()``). This package holds no copy of them. The app
injects tapct_data readers instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from monai.data import ITKReader, MetaTensor, NibabelReader, NrrdReader, PydicomReader
from monai.data.image_reader import ImageReader
from monai.transforms import LoadImage, Orientation
from monai.utils import optional_import

from .label_checks import check_label_image

__all__ = ["ClipStats", "IntensityStats", "clip_normalize", "load_image_monai", "load_label_monai"]


class IntensityStats(Protocol):
    """Anything with the four statistics in HU (``tapct_data.NormalizeConfig`` is one)."""

    @property
    def lower(self) -> float: ...
    @property
    def upper(self) -> float: ...
    @property
    def mean(self) -> float: ...
    @property
    def std(self) -> float: ...


class ClipStats(NamedTuple):
    """The clip window and z-normalisation statistics of a model's input, in HU.

    Attributes:
        lower: Lower clip.
        upper: Upper clip (> lower).
        mean: Mean subtracted after clipping.
        std: Standard deviation divided by (> 0).
    """

    lower: float
    upper: float
    mean: float
    std: float


def _as_stats(stats: IntensityStats | Sequence[float]) -> ClipStats:
    if isinstance(stats, Sequence):
        if len(stats) != 4:
            raise ValueError(f"expected (lower, upper, mean, std), got {stats!r}")
        out = ClipStats(*(float(v) for v in stats))
    else:
        out = ClipStats(float(stats.lower), float(stats.upper), float(stats.mean), float(stats.std))
    if not (out.lower < out.upper and out.std > 0):
        raise ValueError(f"need lower < upper and std > 0, got {out}")
    return out


def clip_normalize(hu: torch.Tensor, stats: IntensityStats | Sequence[float]) -> torch.Tensor:
    """Clip HU to ``[lower, upper]`` and z-normalise with ``(mean, std)``.

    Args:
        hu: any-shape tensor in HU.
        stats: :class:`ClipStats`, any object with ``lower, upper, mean, std`` (e.g.
            ``tapct_data.NormalizeConfig``) or a ``(lower, upper, mean, std)`` sequence.

    Returns:
        float32 tensor, same shape.

    Raises:
        ValueError: malformed statistics.
    """
    lower, upper, mean, std = _as_stats(stats)
    return ((hu.float().clamp(lower, upper) - mean) / std).float()


_NIFTI = (".nii", ".nii.gz")
_NRRD = (".nrrd", ".nhdr")
_META = (".mha", ".mhd")


def _installed(module: str) -> bool:
    return bool(optional_import(module)[1])


def _reader(path: str | Path) -> type[ImageReader] | None:
    """MONAI's reader class for ``path``'s file type, or None for MONAI's own choice.

    MONAI's ``LoadImage`` without a reader hands a file to the first registered reader
    that claims its suffix; with neither ``itk`` nor ``pynrrd`` installed PydicomReader
    claims NRRD and MHA files and fails on them. The reader is therefore picked here:
    NibabelReader for NIfTI, PydicomReader for a DICOM folder or ``.dcm`` file,
    NrrdReader (``pynrrd``, a dependency) or ITKReader (``itk``) for NRRD, ITKReader for
    MetaImage. Any other suffix is left to MONAI.

    Raises:
        ValueError: naming the file, its format and the package to install when no
            installed reader handles it (MetaImage without ``itk``).
    """
    p = Path(path)
    name = p.name.lower()
    if p.is_dir() or name.endswith(".dcm"):
        return PydicomReader
    if name.endswith(_NIFTI):
        return NibabelReader
    if name.endswith(_NRRD):
        if _installed("nrrd"):
            return NrrdReader
        if _installed("itk"):
            return ITKReader
        raise ValueError(
            f"{path}: NRRD needs pynrrd (a tapct-eval dependency: pip install pynrrd) or itk"
        )
    if name.endswith(_META):
        if _installed("itk"):
            return ITKReader
        raise ValueError(
            f"{path}: MetaImage ({name.rsplit('.', 1)[-1]}) needs itk, which MONAI's "
            "ITKReader reads it with (pip install itk); or convert it to NIfTI or NRRD"
        )
    return None


def _load_canonical(path: str | Path) -> torch.Tensor:
    return _load_canonical_with_affine(path)[0]


def _load_canonical_with_affine(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """``(1, D, H, W)`` canonical tensor and its ``(4, 4)`` voxel -> world affine (MONAI's)."""
    image = LoadImage(reader=_reader(path), image_only=True, ensure_channel_first=True)(str(path))
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
    return oriented.as_tensor(), np.asarray(oriented.affine, dtype=np.float64)


def load_image_monai(
    path: str | Path, stats: IntensityStats | Sequence[float] | None
) -> torch.Tensor:
    """Read a CT (NIfTI, NRRD, DICOM folder, ...) as a normalised canonical volume.

    The MONAI reader follows the file type: NibabelReader (``.nii``, ``.nii.gz``),
    PydicomReader (DICOM folder, ``.dcm``), NrrdReader (``.nrrd``, ``.nhdr``; pynrrd),
    ITKReader (``.mha``, ``.mhd``; needs ``itk``, not a dependency); MONAI's own choice for
    any other suffix.

    Args:
        path: image file or DICOM series folder.
        stats: the model's clip/normalisation statistics (see :func:`clip_normalize`);
            None returns HU.

    Returns:
        ``(1, D, H, W)`` float32, LPS axial-first, clip-normalised with ``stats``.

    Raises:
        ValueError: when the image is not single-channel 3D, bad ``stats``, or a format
            whose reader is not installed (MetaImage without ``itk``; names the package).
        RuntimeError: when MONAI's meta tracking is off (no affine to orient by).
    """
    hu = _load_canonical(path)
    return hu.float() if stats is None else clip_normalize(hu, stats)


def load_label_monai(path: str | Path, image_path: str | Path | None = None) -> torch.Tensor:
    """Read a label map in the same canonical orientation as :func:`load_image_monai`.

    Args:
        path: label file (the formats of :func:`load_image_monai`).
        image_path: the image it belongs to (its grid is checked when given).

    Returns:
        ``(D, H, W)`` int64 labels.

    Raises:
        ValueError: when the label grid differs from the image's, values are not integral,
            or the format's reader is not installed (see :func:`load_image_monai`).
        LabelError: (a ValueError) when the label looks like an image, or does not lie on
            its image (see :func:`~tapct_eval.label_checks.check_label_image`).

    Warns:
        LabelCoverWarning: when the label covers only part of the image.
    """
    label, label_affine = _load_canonical_with_affine(path)
    label = label[0]
    if image_path is not None:
        image, image_affine = _load_canonical_with_affine(image_path)
        check_label_image(
            label,
            label_affine,
            image.shape[1:],
            image_affine,
            label_path=path,
            image_path=image_path,
        )
        if tuple(image.shape[1:]) != tuple(label.shape):
            raise ValueError(
                f"{path}: label grid {tuple(label.shape)} differs from image "
                f"{image_path} grid {tuple(image.shape[1:])}"
            )
    if not torch.equal(label, label.round()):
        raise ValueError(f"{path}: label values are not integers")
    return label.to(torch.int64)
