"""Reorient an ``(i, j, k)`` array with an LPS affine to the canonical ``(D, H, W)`` layout."""

from __future__ import annotations

import numpy as np
from nibabel import orientations as ornt

# Canonical target in an LPS world: array axis 0 toward +x (L), 1 toward +y (P), 2 toward +z (S),
# before the final transpose that puts the axial axis first.
_TARGET = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def canonicalize(array_ijk: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose an array to canonical ``(D, H, W)`` (LPS, axial axis first).

    Only axis permutations and flips are applied (no interpolation): each array axis goes
    to the world axis it is closest to (nibabel's ``io_orientation``). An oblique affine
    keeps its rotation.

    Args:
        array_ijk: ``(I, J, K)`` or ``(I, J, K, C)`` array in file order.
        affine_lps: ``(4, 4)`` map from index ``(i, j, k)`` to LPS mm.

    Returns:
        ``(array (D, H, W[, C]), affine (4, 4) from (d, h, w) to LPS mm)``.
    """
    current = ornt.io_orientation(affine_lps)
    transform = ornt.ornt_transform(current, _TARGET)
    spatial = array_ijk.shape[:3]
    out = ornt.apply_orientation(array_ijk, transform)
    affine = affine_lps @ ornt.inv_ornt_aff(transform, spatial)
    # (x=L, y=P, z=S) -> (D=S, H=P, W=L)
    axes = (2, 1, 0, *tuple(range(3, out.ndim)))
    out = np.transpose(out, axes)
    affine = affine[:, [2, 1, 0, 3]]
    return np.ascontiguousarray(out), affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm: the lengths of the affine's three columns."""
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore[return-value]
