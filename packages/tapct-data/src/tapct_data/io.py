"""Reading and writing volumes: any CT format -> canonical `Volume`, and back to NIfTI."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ._dicom import read_dicom, read_dicom_seg
from ._itk import read_itk
from ._nifti import read_nifti
from ._orientation import LPS_TO_RAS, canonicalize, spacing_of
from .errors import LabelMapError, NotCTError, NotCTWarning
from .formats import image_format
from .volume import Volume

__all__ = ["read_label", "read_volume", "resample_label", "write_volume"]

# HU plausibility rule for files without a Modality: a CT in HU contains air, fat or lung,
# so its 1st percentile lies below this value. MR, PET, or CT stored without its rescale
# offset do not.
_HU_Q01_MAX = -200.0
# Label-map rule: non-negative integers with at most this many distinct values.
_LABEL_MAX_DISTINCT = 256
# Garbage rule: a CT's voxels lie in about [-2048, 4095] HU (12-bit CT, air padding, metal);
# an array with more than half its voxels outside cannot be CT (e.g. a corrupt JPEG stream
# decoded to noise over the whole int16 range).
_HU_RANGE = (-2048.0, 4095.0)
_OUTSIDE_MAX_FRACTION = 0.5
_SAMPLE = 200_000


def _kind(path: Path) -> str:
    if path.is_dir():
        return "dicom"
    fmt = image_format(path)
    return "dicom" if fmt is None else fmt.kind  # no extension: DICOM files often have none


def _read_raw(
    path: Path, series_uid: str | None, files: tuple[Path, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    if files is not None:
        return read_dicom(path, files=files)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = _kind(path)
    if kind == "nifti":
        return read_nifti(path)
    if kind == "itk":
        return read_itk(path)
    return read_dicom(path, series_uid=series_uid)


def _sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    return flat[:: max(1, flat.size // _SAMPLE)]


def _label_map_problem(array: np.ndarray, sample: np.ndarray) -> str | None:
    """``"looks like a label map (N distinct integer values)"`` or None."""
    if sample.size == 0 or float(sample.min()) < 0 or not np.all(sample == np.round(sample)):
        return None
    if np.unique(sample).size > _LABEL_MAX_DISTINCT:
        return None
    # The sample says "label map": confirm on every voxel.
    if float(array.min()) < 0 or not np.all(array == np.round(array)):
        return None
    distinct = np.unique(array).size
    if distinct > _LABEL_MAX_DISTINCT:
        return None
    return f"looks like a label map ({distinct} distinct integer values), not a CT image"


def _check_ct(path: object, array: np.ndarray, meta: dict, allow_non_ct: bool) -> None:
    """Refuse what cannot be CT, in this order (the first reason wins).

    1. A Modality other than CT (DICOM): `NotCTError`.
    2. A label map (non-negative integers, at most 256 distinct values): `LabelMapError`.
    3. No modality and a 1st percentile not below -200 HU (no air, fat or lung): `NotCTError`.
    4. Accepted as CT but more than half the voxels outside [-2048, 4095] HU: ``ValueError``
       (garbage pixels; ``allow_non_ct`` does not lift this one).
    """
    modality = meta.get("modality")
    sample = _sample(array)
    error: type[NotCTError] = NotCTError
    problem: str | None = None
    if modality and modality != "CT":
        problem = f"Modality is {modality!r}, not 'CT'"
    if problem is None:
        problem = _label_map_problem(array, sample)
        if problem is not None:
            error = LabelMapError
    if problem is None and not modality:
        q01 = float(np.quantile(sample, 0.01))
        if q01 >= _HU_Q01_MAX:
            problem = (
                f"values look far from HU (1st percentile {q01:.1f} >= {_HU_Q01_MAX}: no air, "
                "fat or lung)"
            )
    if problem is None:
        lo, hi = _HU_RANGE
        outside = float(np.mean((sample < lo) | (sample > hi)))
        if outside > _OUTSIDE_MAX_FRACTION:
            raise ValueError(
                f"{path}: pixel values cannot be CT ({outside:.0%} of voxels outside "
                f"[{lo:.0f}, {hi:.0f}] HU after the rescale; corrupt or wrongly decoded pixel "
                "data?)"
            )
        return
    if not allow_non_ct:
        raise error(f"{path}: {problem}")
    warnings.warn(f"{path}: {problem}; read anyway (allow_non_ct=True)", NotCTWarning, stacklevel=3)
    meta["non_ct"] = problem


def read_volume(
    path: str | PathLike[str],
    *,
    series_uid: str | None = None,
    allow_non_ct: bool = False,
    files: Sequence[str | PathLike[str]] | None = None,
) -> Volume:
    """Read a CT scan in the canonical orientation (LPS, axial axis first) as HU float32.

    Formats: NIfTI (``.nii``, ``.nii.gz``; nibabel), NRRD/MHA/MHD (SimpleITK), a DICOM
    series folder or a single DICOM file, including Enhanced (multi-frame) CT and
    compressed transfer syntaxes (JPEG 2000, JPEG-LS, JPEG lossless via pylibjpeg; RLE via
    pydicom). The array is only flipped/transposed to the canonical layout (no
    interpolation), except for gantry-tilted DICOM series which are resampled (see
    ``tapct_data._dicom.read_dicom`` for every DICOM rule: several series, uneven or
    duplicate positions, gantry tilt, missing rescale tags).

    Non-CT rules, the first that applies wins: a DICOM whose Modality is not ``CT``
    raises `NotCTError`; a volume of non-negative integers with at most 256 distinct
    values raises `LabelMapError` ("looks like a label map (N distinct integer values)");
    a file without a modality whose 1st intensity percentile is not below -200 (no air,
    fat or lung: not HU) raises `NotCTError`. With ``allow_non_ct=True`` these are read
    and a `NotCTWarning` issued. An array accepted as CT with more than half its voxels
    outside [-2048, 4095] HU (decoder noise) is a ``ValueError`` in every case.

    Args:
        path: File or DICOM folder; with ``files``, the name used in messages.
        series_uid: SeriesInstanceUID to pick in a folder holding several series.
        allow_non_ct: Read non-CT inputs anyway (with a warning) instead of raising.
        files: The files of one DICOM series (from ``expand_inputs``), read instead of
            listing ``path``.

    Returns:
        `Volume` with ``data (1, D, H, W)`` float32 HU, ``spacing (sd, sh, sw)`` mm,
        ``affine`` (index ``(d, h, w)`` -> LPS mm), ``source`` and ``metadata``
        (``modality``, ``series_uid`` where present, ``format``).

    Raises:
        FileNotFoundError: the path does not exist.
        NotCTError: non-CT input without ``allow_non_ct`` (`LabelMapError` for a label map).
        ValueError: corrupt/truncated files, 2D images, 4D or RGB files, several series,
            duplicate positions, uneven slice steps, pixel values that cannot be CT; the
            message names the file and problem.
    """
    path = Path(path)
    file_list = None if files is None else tuple(Path(f) for f in files)
    array, affine, meta = _read_raw(path, series_uid, file_list)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: contains NaN or infinite values")
    _check_ct(path, array, meta, allow_non_ct)
    data, affine = canonicalize(array, affine)
    tensor = torch.from_numpy(data.astype(np.float32))[None]
    return Volume(
        data=tensor, spacing=spacing_of(affine), affine=affine, source=str(path), metadata=meta
    )


def _same_grid(a_shape, a_affine, b_shape, b_affine, atol: float = 1e-2) -> bool:
    return tuple(a_shape) == tuple(b_shape) and np.allclose(a_affine, b_affine, atol=atol)


def _nearest_onto(
    labels: torch.Tensor, label_affine: np.ndarray, reference: Volume
) -> torch.Tensor:
    """Nearest-neighbour resampling of ``(D, H, W)`` labels onto the reference grid."""
    # Reference voxel index -> label voxel index.
    mapping = np.linalg.inv(label_affine) @ reference.affine
    src = np.asarray(labels.shape, dtype=np.float64)
    dst = np.asarray(reference.shape, dtype=np.float64)
    # Normalised coords (align_corners=False): n = (2 i + 1) / S - 1  <=>  i = ((n + 1) S - 1) / 2
    to_index = np.eye(4)
    to_index[:3, :3] = np.diag(dst / 2.0)
    to_index[:3, 3] = (dst - 1.0) / 2.0
    to_norm = np.eye(4)
    to_norm[:3, :3] = np.diag(2.0 / src)
    to_norm[:3, 3] = 1.0 / src - 1.0
    theta = (to_norm @ mapping @ to_index)[:3]
    # grid_sample orders coordinates (x=W, y=H, z=D): reverse both sides.
    perm = [2, 1, 0]
    theta_xyz = np.concatenate([theta[perm][:, perm], theta[perm][:, 3:]], axis=1)
    grid = F.affine_grid(
        torch.from_numpy(theta_xyz).float()[None], [1, 1, *reference.shape], align_corners=False
    )
    out = F.grid_sample(
        labels[None, None].double(),
        grid.double(),
        mode="nearest",
        padding_mode="zeros",
        align_corners=False,
    )
    return out[0, 0].round().to(labels.dtype)


def read_label(
    path: str | PathLike[str],
    reference: Volume | None = None,
) -> Volume:
    """Read a label map onto the canonical grid (integer classes, nearest neighbour only).

    Formats: NIfTI, NRRD/MHA, DICOM SEG (label = segment number). Reorientation is exact
    (flips/transposes). With a ``reference`` whose grid differs (shape or affine beyond
    0.01 mm), labels are resampled onto it by nearest neighbour in world coordinates
    (voxels outside the label's field are 0); with the same grid they are returned as is.

    Args:
        path: The label file.
        reference: The image volume to align to (e.g. from `read_volume`).

    Returns:
        `Volume` with ``data (1, D, H, W)`` int64 class ids.

    Raises:
        ValueError: non-integer values, unreadable file, or a shape problem.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = _kind(path)
    if kind == "dicom":
        array, affine, meta = read_dicom_seg(path)
    else:
        array, affine, meta = _read_raw(path, None)
        if not np.all(np.isfinite(array)) or not np.allclose(array, np.round(array)):
            raise ValueError(f"{path}: label map has non-integer values")
        array = np.round(array).astype(np.int64)
    data, affine = canonicalize(array, affine)
    label = Volume(
        data=torch.from_numpy(data.astype(np.int64))[None],
        spacing=spacing_of(affine),
        affine=affine,
        source=str(path),
        metadata=meta,
    )
    return label if reference is None else resample_label(label, reference)


def resample_label(label: Volume, reference: Volume) -> Volume:
    """Put a label map on a reference grid (nearest neighbour in world coordinates).

    The second half of ``read_label(path, reference)``, for callers that inspect the label
    on its own grid first (e.g. its overlap with the image).

    Args:
        label: A label `Volume` (``data (1, D, H, W)`` integer ids), e.g. from `read_label`.
        reference: The image volume to align to.

    Returns:
        ``label`` itself when the grids agree (shape, and affine within 0.01 mm); else a
        new `Volume` on the reference grid, voxels outside the label's field 0, with
        ``metadata["resampled"]`` set.
    """
    if _same_grid(label.shape, label.affine, reference.shape, reference.affine):
        return label
    labels = _nearest_onto(label.data[0], label.affine, reference)
    affine = reference.affine.copy()
    return Volume(
        data=labels[None],
        spacing=spacing_of(affine),
        affine=affine,
        source=label.source,
        metadata={**label.metadata, "resampled": "nearest neighbour onto the reference grid"},
    )


def write_volume(volume: Volume, path: str | PathLike[str]) -> Path:
    """Write a `Volume` as NIfTI with the right affine (qform and sform, code 1).

    The array is stored as ``(W, H, D)`` (i = W, j = H, k = D) with the RAS affine of
    ``Volume.ras_affine_whd``, so `read_volume` returns the same data and affine. Floating
    data is written as float32; integer data as int16 when it fits, else int32. Multi-channel
    data is written as a 4D image ``(W, H, D, C)``.

    Args:
        volume: The volume (``data (C, D, H, W)``).
        path: Output path ending in ``.nii`` or ``.nii.gz``.

    Returns:
        The written path.

    Raises:
        ValueError: the path does not end in ``.nii``/``.nii.gz``.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt is None or fmt.kind != "nifti":
        raise ValueError(f"{path}: write_volume writes NIfTI; use a .nii or .nii.gz name")
    data = volume.data.detach().cpu()
    array = data.permute(3, 2, 1, 0).numpy()  # (W, H, D, C)
    if array.shape[-1] == 1:
        array = array[..., 0]
    if data.is_floating_point():
        array = array.astype(np.float32)
    else:
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        array = array.astype(np.int16 if lo >= -32768 and hi <= 32767 else np.int32)
    affine = LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]]
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
