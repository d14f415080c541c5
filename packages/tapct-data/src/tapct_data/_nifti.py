"""NIfTI reading with nibabel: scaling, qform/sform rule, shape checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from ._orientation import LPS_TO_RAS


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a NIfTI file into a float array in file order and an LPS affine.

    Rules:
        * Scaling: ``scl_slope``/``scl_inter`` are applied once by nibabel
          (``get_fdata``); a slope of 0 or NaN means unscaled (NIfTI standard).
        * Geometry: nibabel's rule, the sform when ``sform_code > 0``, else the qform when
          ``qform_code > 0``, else the zooms; a warning when both codes are set and the two
          matrices disagree by more than 1e-3 mm.
        * Shape: 3D, or 4D/5D whose extra axes are singletons. RGB/structured dtypes and
          true 4D series raise ``ValueError``.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(array (I, J, K) float64, affine (4, 4) index -> LPS mm, metadata dict)``.

    Raises:
        ValueError: corrupt file, RGB data, 2D image, or a non-singleton 4th dimension.
    """
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for a broken header
        raise ValueError(f"{path}: cannot read NIfTI ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise ValueError(f"{path}: not a NIfTI-1/2 image (nibabel read a {type(img).__name__})")
    header = img.header
    dtype = header.get_data_dtype()
    if dtype.names is not None or dtype.kind == "V":
        raise ValueError(
            f"{path}: NIfTI has a structured dtype {dtype} (RGB/colour image), not a scalar CT"
        )
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode > 0 and scode > 0:
        qform, sform = header.get_qform(), header.get_sform()
        if not np.allclose(qform, sform, atol=1e-3):
            warnings.warn(
                f"{path}: qform and sform disagree; using the sform (nibabel's rule)",
                UserWarning,
                stacklevel=3,
            )
    shape = img.shape
    if len(shape) < 3:
        raise ValueError(f"{path}: 2D image of shape {shape}; a volume needs 3 dimensions")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise ValueError(
            f"{path}: image of shape {shape} has a non-singleton 4th dimension "
            "(a time series or vector image), not a single CT volume"
        )
    try:
        data = img.get_fdata(dtype=np.float64)
    except Exception as exc:  # truncated gzip, short data
        raise ValueError(f"{path}: cannot read the NIfTI voxel data ({exc})") from exc
    data = data.reshape(shape[:3])
    affine = LPS_TO_RAS @ img.affine
    meta = {"format": "nifti", "qform_code": qcode, "sform_code": scode}
    return data, affine, meta
