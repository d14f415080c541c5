"""The one table of image formats and file suffixes, the air value, and zarr detection.

Every reader, the input expansion, the store and the CLI ask this module which files are
images and how a scan's name loses its suffix; no other suffix list exists in tapct_data.

DICOM files are often named without an extension, or after their SOP Instance UID
(``CT.1.3.12.2.1107.5...``, whose last "suffix" is a number); `might_be_dicom` says which
names are worth a header read, and the input walk then checks for real DICOM tags.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import attrs

__all__ = [
    "AIR_HU",
    "FORMATS",
    "ZARR_SUFFIX",
    "ImageFormat",
    "image_format",
    "image_suffix",
    "is_zarr_store",
    "might_be_dicom",
    "strip_image_suffix",
]

AIR_HU: float = -1024.0
"""The one air value (HU) of the data path: every pad, fill and padding-value mapping."""

ZARR_SUFFIX = ".zarr"


@attrs.frozen
class ImageFormat:
    """One image format the readers understand.

    Attributes:
        kind: The reader family: ``"nifti"`` (nibabel), ``"itk"`` (SimpleITK) or
            ``"dicom"`` (pydicom).
        name: Human-readable name, e.g. ``"NIfTI"``.
        suffixes: Lower-case file suffixes, longest first (``.nii.gz`` before ``.nii``).
    """

    kind: str
    name: str
    suffixes: tuple[str, ...]


FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("nifti", "NIfTI", (".nii.gz", ".nii")),
    ImageFormat("itk", "NRRD", (".nrrd", ".nhdr")),
    ImageFormat("itk", "MetaImage", (".mha", ".mhd")),
    ImageFormat("dicom", "DICOM", (".dcm", ".dicom", ".ima")),
)
"""Image formats by suffix. DICOM files also come without an extension (see `might_be_dicom`)."""

# (suffix, format), longest suffix first so ".nii.gz" wins over any shorter match.
_BY_SUFFIX: tuple[tuple[str, ImageFormat], ...] = tuple(
    sorted(
        ((s, f) for f in FORMATS for s in f.suffixes),
        key=lambda item: -len(item[0]),
    )
)


def image_format(path: str | PathLike[str]) -> ImageFormat | None:
    """The format a file name announces by its suffix (case-insensitive), else None."""
    name = Path(path).name.lower()
    for suffix, fmt in _BY_SUFFIX:
        if name.endswith(suffix) and len(name) > len(suffix):
            return fmt
    return None


def image_suffix(path: str | PathLike[str]) -> str | None:
    """The image suffix of a file name, lower-case (``".nii.gz"``, ``".dcm"``), else None.

    Examples:
        ``image_suffix("a/CT_0000.NII.GZ") == ".nii.gz"``; ``image_suffix("x.txt") is None``.
    """
    name = Path(path).name.lower()
    for suffix, _fmt in _BY_SUFFIX:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def strip_image_suffix(name: str) -> str:
    """A file name without its image (or ``.zarr``) suffix: ``"ct.nii.gz" -> "ct"``.

    Names without a known suffix are returned unchanged (``"IM0001" -> "IM0001"``,
    ``"CT.1.2.3" -> "CT.1.2.3"``).
    """
    suffix = image_suffix(name)
    if suffix is None and name.lower().endswith(ZARR_SUFFIX) and len(name) > len(ZARR_SUFFIX):
        suffix = ZARR_SUFFIX
    return name[: -len(suffix)] if suffix else name


def might_be_dicom(path: str | PathLike[str]) -> bool:
    """Whether a file name is worth a DICOM header read during a walk.

    True for the DICOM suffixes of `FORMATS`, for names without a suffix (``IM0001``,
    ``DICOMDIR`` is excluded by the caller) and for names whose last suffix is a number
    (files named after a UID, ``CT.1.3.12.2.1107.5.1.4``). Other suffixes (``.txt``,
    ``.json``, ``.raw``, ``.png``, ...) are not DICOM.
    """
    p = Path(path)
    fmt = image_format(p)
    if fmt is not None:
        return fmt.kind == "dicom"
    suffix = p.suffix
    return suffix == "" or suffix[1:].isdigit()


def is_zarr_store(path: str | PathLike[str]) -> bool:
    """True when ``path`` is a zarr group (v2 ``.zgroup`` or v3 ``zarr.json`` at its root)."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in ("zarr.json", ".zgroup"))
