"""NRRD/MHA (and other ITK formats) via SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813


def read_itk(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read an ITK-readable image into a float array in ``(i, j, k)`` order and an LPS affine.

    Args:
        path: NRRD, MHA/MHD or another format SimpleITK reads.

    Returns:
        ``(array (I, J, K) float64, affine (4, 4) index -> LPS mm, metadata dict)``.

    Raises:
        ValueError: unreadable file, 2D image, 4D image or a multi-component (RGB/vector)
            image.
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: SimpleITK cannot read it ({str(exc).splitlines()[-1]})") from exc
    dim = image.GetDimension()
    if dim == 2:
        raise ValueError(f"{path}: 2D image of size {image.GetSize()}; a volume needs 3 dimensions")
    if dim != 3:
        raise ValueError(f"{path}: {dim}D image of size {image.GetSize()}, expected 3D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(RGB/vector image), not a scalar CT"
        )
    array = sitk.GetArrayFromImage(image).astype(np.float64).transpose(2, 1, 0)  # (k,j,i)->(i,j,k)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())[None, :]
    affine[:3, 3] = image.GetOrigin()
    meta: dict = {"format": path.suffix.lstrip(".").lower()}
    for key in ("Modality", "0008|0060"):
        if image.HasMetaDataKey(key):
            meta["modality"] = image.GetMetaData(key).strip()
    return array, affine, meta
