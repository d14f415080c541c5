"""Errors and warnings raised by the readers."""

from __future__ import annotations

__all__ = [
    "DicomGeometryWarning",
    "IncompleteStoreWarning",
    "LabelMapError",
    "NotCTError",
    "NotCTWarning",
]


class NotCTError(ValueError):
    """The input is not a CT in Hounsfield units (e.g. an MR volume).

    Raised by `read_volume` when the DICOM Modality is not ``CT`` or, for files without a
    modality (NIfTI, NRRD, MHA), when the intensities are far from HU. Pass
    ``allow_non_ct=True`` to read anyway (a `NotCTWarning` is issued instead).
    """


class LabelMapError(NotCTError):
    """The input looks like a label map (segmentation), not an image.

    Raised by `read_volume` when every value is a non-negative integer and there are few
    distinct values (at most 256): TotalSegmentator's ``segmentations/``, nnU-Net's
    ``labelsTr/``. A subclass of `NotCTError`, so ``allow_non_ct=True`` reads it anyway.
    """


class NotCTWarning(UserWarning):
    """Issued when a non-CT input is read with ``allow_non_ct=True``."""


class DicomGeometryWarning(UserWarning):
    """A DICOM series needed a documented geometric fix (e.g. gantry tilt resampled)."""


class IncompleteStoreWarning(UserWarning):
    """A zarr scan store whose build did not finish (stopped, interrupted or running).

    Issued when such a store is opened: it holds only the scans committed so far; rerun
    the same ``tapct preprocess`` command (or `build_zarr_store` call) to finish it.
    """
