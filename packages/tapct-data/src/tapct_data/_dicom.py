"""DICOM reading with pydicom: series assembly, geometry checks, Enhanced CT, SEG."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError

from .errors import DicomGeometryWarning
from .formats import AIR_HU

# Relative tolerance on slice steps (1 %), and absolute floor in mm.
_STEP_RTOL = 0.01
_STEP_ATOL = 1e-3
# Gantry tilt is reported when the step deviates from the slice normal by more than this.
_TILT_TOL_DEG = 0.1

_DECODER_HINT = (
    "install a decoder: pylibjpeg with pylibjpeg-openjpeg (JPEG 2000) or pylibjpeg-libjpeg "
    "(JPEG-LS, JPEG lossless); RLE is decoded by pydicom itself"
)


@attrs.define
class _Frame:
    """One 2D frame of a series: a single-frame file or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    position: np.ndarray
    row_cos: np.ndarray
    col_cos: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    rows: int
    cols: int
    slope: float | None
    intercept: float | None
    thickness: float | None
    padding: tuple[int, int] | None = None  # stored-value range marking "outside the FOV"


def _f(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _spacing_pair(path: Path, value: Any) -> tuple[float, float]:
    """``PixelSpacing`` as ``(between rows, between columns)``; it must hold 2 numbers."""
    try:
        dy, dx = (float(v) for v in value)
    except (TypeError, ValueError) as exc:  # one number (not iterable), 3 numbers, text
        raise ValueError(f"{path}: PixelSpacing must be 2 numbers, got {value!r}") from exc
    return dy, dx


def _padding_range(ds: pydicom.Dataset) -> tuple[int, int] | None:
    """The stored-value range ``(lo, hi)`` that PixelPaddingValue marks, or None.

    PixelPaddingValue alone marks one stored value; with PixelPaddingRangeLimit every
    stored value between the two (inclusive) is padding (DICOM PS3.3 C.7.5.1.1.2). Both are
    compared with the *stored* values, before the rescale, in the pixel representation's
    own signedness: an unsigned series written by a tool that thought in signed numbers
    (-2000 stored as 63536) is matched either way, as GDCM and dcm2niix do.
    """
    value = ds.get("PixelPaddingValue")
    if value is None or value == "":
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    bits = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1

    def as_stored(v: Any) -> int:
        v = int(v) % (1 << bits)  # the bit pattern
        return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v

    lo = as_stored(value)
    hi = lo if limit is None or limit == "" else as_stored(limit)
    return (min(lo, hi), max(lo, hi))


def dcmread(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Read a DICOM file; files without preamble/file meta are read with ``force=True``.

    Raises:
        ValueError: the file is not a parseable DICOM dataset.
    """
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    except Exception as exc:
        raise ValueError(f"{path}: cannot parse DICOM ({exc})") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot parse DICOM ({exc})") from exc
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise ValueError(
            f"{path}: no DICOM preamble or file meta, and no image dataset could be parsed "
            "from it (not a readable DICOM image)"
        )
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # No file meta: pydicom guessed the encoding while parsing; record it for decoding.
        meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        implicit = ds.is_implicit_VR if ds.is_implicit_VR is not None else True
        meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
        )
        ds.file_meta = meta
    return ds


def _frames_of(path: Path, ds: pydicom.Dataset) -> list[_Frame]:
    """Geometry records of every frame in a file (single-frame or Enhanced multi-frame)."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
        frames = []
        for index, per in enumerate(ds.PerFrameFunctionalGroupsSequence):

            def group(name: str, per=per) -> pydicom.Dataset | None:
                for source in (per, shared):
                    if name in source:
                        return source[name][0]
                return None

            position = group("PlanePositionSequence")
            orientation = group("PlaneOrientationSequence")
            measures = group("PixelMeasuresSequence")
            rescale = group("PixelValueTransformationSequence")
            if position is None or orientation is None or measures is None:
                raise ValueError(f"{path}: frame {index} lacks plane position/orientation/spacing")
            iop = np.asarray(orientation.ImageOrientationPatient, dtype=np.float64)
            frames.append(
                _Frame(
                    path=path,
                    frame=index,
                    position=np.asarray(position.ImagePositionPatient, dtype=np.float64),
                    row_cos=iop[:3],
                    col_cos=iop[3:],
                    pixel_spacing=_spacing_pair(path, measures.PixelSpacing),
                    rows=int(ds.Rows),
                    cols=int(ds.Columns),
                    slope=_f(rescale.get("RescaleSlope")) if rescale else None,
                    intercept=_f(rescale.get("RescaleIntercept")) if rescale else None,
                    thickness=_f(measures.get("SliceThickness")),
                    padding=_padding_range(ds),
                )
            )
        if len(frames) != n_frames:
            raise ValueError(f"{path}: {n_frames} frames but {len(frames)} per-frame groups")
        return frames
    if n_frames != 1:
        raise ValueError(f"{path}: multi-frame image without per-frame functional groups")
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise ValueError(
            f"{path}: no ImagePositionPatient/ImageOrientationPatient (no 3D geometry)"
        )
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is None:
        raise ValueError(f"{path}: no PixelSpacing")
    return [
        _Frame(
            path=path,
            frame=None,
            position=np.asarray(ds.ImagePositionPatient, dtype=np.float64),
            row_cos=iop[:3],
            col_cos=iop[3:],
            pixel_spacing=_spacing_pair(path, spacing),
            rows=int(ds.Rows),
            cols=int(ds.Columns),
            slope=_f(ds.get("RescaleSlope")),
            intercept=_f(ds.get("RescaleIntercept")),
            thickness=_f(ds.get("SliceThickness")),
            padding=_padding_range(ds),
        )
    ]


def _pixels(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Decoded stored values ``(frames, rows, cols)``; clear errors for missing decoders."""
    if "PixelData" not in ds:
        raise ValueError(f"{path}: no PixelData")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(
            f"{path}: {ds.SamplesPerPixel} samples per pixel (colour image), not a scalar CT"
        )
    try:
        array = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise ValueError(
            f"{path}: cannot decode pixel data with transfer syntax "
            f"{getattr(syntax, 'name', syntax)}: {_DECODER_HINT} ({exc})"
        ) from exc
    except Exception as exc:  # truncated or corrupt pixel data
        raise ValueError(f"{path}: corrupt or truncated pixel data ({exc})") from exc
    if array.ndim == 2:
        array = array[None]
    return array


def _rescale(stored: np.ndarray, frame: _Frame, modality: str | None) -> np.ndarray:
    slope, intercept = frame.slope, frame.intercept
    if slope is None or intercept is None:
        if modality == "CT":
            warnings.warn(
                f"{frame.path}: RescaleSlope/RescaleIntercept missing; assuming identity "
                "(stored values are taken as HU)",
                DicomGeometryWarning,
                stacklevel=4,
            )
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
    hu = stored.astype(np.float64) * slope + intercept
    if frame.padding is not None:  # outside the field of view: air, decided before the rescale
        lo, hi = frame.padding
        hu[(stored >= lo) & (stored <= hi)] = AIR_HU
    return hu


def _padding_mask(stored: np.ndarray, frame: _Frame) -> np.ndarray:
    """``(rows, cols)`` bool: True where the stored value is PixelPaddingValue (range)."""
    if frame.padding is None:
        return np.zeros(stored.shape, dtype=bool)
    lo, hi = frame.padding
    return (stored >= lo) & (stored <= hi)


def _list_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )


def _series_of(folder: Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in _list_files(folder):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except ValueError:
            continue  # not a DICOM file: ignored (e.g. a README beside the series)
        if "Rows" not in ds:
            continue  # DICOM but not an image (e.g. a report)
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    return series


def read_dicom(
    path: Path, series_uid: str | None = None, files: tuple[Path, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a DICOM series folder or a single (possibly multi-frame) DICOM file.

    Rules (each is tested on a real file):
        * A folder with several series raises ``ValueError`` listing each series' UID,
          description and number of files, unless ``series_uid`` picks one.
        * Frames are ordered by their position along the slice normal
          (``row_cos x col_cos``), never by file name or InstanceNumber.
        * Duplicate positions (two frames at one position) raise ``ValueError``.
        * Uneven slice steps (a missing slice, two slabs with a gap) raise ``ValueError``
          listing the steps found; tolerance 1 % of the median step.
        * Gantry tilt (the step between slices is not along the normal) is resampled onto
          an orthogonal grid: each slice is shifted in-plane (bilinear; a voxel whose
          neighbourhood holds padding or lies outside the stored field is `AIR_HU`), the
          slice spacing becomes the distance between planes, and a `DicomGeometryWarning`
          reports the angle.
        * HU: RescaleSlope/RescaleIntercept per frame (functional groups for Enhanced CT);
          missing tags on a CT mean identity, with a warning.
        * PixelPaddingValue (and PixelPaddingRangeLimit) mark stored values outside the
          field of view; they are matched before the rescale, in the stored signedness
          (unsigned 63536 is signed -2000), and become `AIR_HU` (-1024 HU), as GDCM and
          dcm2niix treat them. ``metadata["padding_voxels"]`` counts them.
        * A single slice gives a one-slice volume whose slice spacing is
          SpacingBetweenSlices, else SliceThickness, else 1 mm.

    Args:
        path: A folder of single-frame files or one DICOM file; with ``files``, only the
            name used in error messages.
        series_uid: SeriesInstanceUID to pick in a folder with several series.
        files: The files of one series (any order, any folders), as grouped by
            ``tapct_data.expand_inputs``; replaces the folder listing.

    Returns:
        ``(array (I, J, K) float64 HU, affine (4, 4) index -> LPS mm, metadata)``;
        ``i`` runs along the row direction (columns), ``j`` along the column direction
        (rows), ``k`` along the normal.

    Raises:
        ValueError: any rule above, unreadable files, missing decoders.
    """
    if files is not None:
        if not files:
            raise ValueError(f"{path}: no DICOM files given for the series")
        headers = [(f, dcmread(f, stop_before_pixels=True)) for f in sorted(files)]
    elif path.is_dir():
        series = _series_of(path)
        if not series:
            raise ValueError(f"{path}: no DICOM image files in the folder")
        if series_uid is not None:
            if series_uid not in series:
                raise ValueError(f"{path}: series {series_uid} not found; have {sorted(series)}")
            members = series[series_uid]
        elif len(series) > 1:
            listing = "; ".join(
                f"{uid} ({items[0][1].get('SeriesDescription', '')!s}, {len(items)} files)"
                for uid, items in sorted(series.items())
            )
            raise ValueError(
                f"{path}: {len(series)} series in one folder; pass series_uid= to pick one of: "
                f"{listing}"
            )
        else:
            members = next(iter(series.values()))
        headers = members
    else:
        headers = [(path, dcmread(path, stop_before_pixels=True))]

    first = headers[0][1]
    modality = str(first.get("Modality", "")) or None
    frames: list[_Frame] = []
    for file_path, ds in headers:
        frames.extend(_frames_of(file_path, ds))
    return _assemble(path, frames, modality, first)


def _assemble(
    source: Path, frames: list[_Frame], modality: str | None, first: pydicom.Dataset
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    ref = frames[0]
    for fr in frames[1:]:
        if (fr.rows, fr.cols) != (ref.rows, ref.cols):
            raise ValueError(
                f"{source}: frames of different sizes ({ref.rows}x{ref.cols} in {ref.path}, "
                f"{fr.rows}x{fr.cols} in {fr.path})"
            )
        if not (
            np.allclose(fr.row_cos, ref.row_cos, atol=1e-4)
            and np.allclose(fr.col_cos, ref.col_cos, atol=1e-4)
        ):
            raise ValueError(f"{source}: frames with different orientations ({fr.path})")
    normal = np.cross(ref.row_cos, ref.col_cos)
    dist = np.array([fr.position @ normal for fr in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    positions = np.stack([fr.position for fr in frames])
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": modality,
        "series_uid": str(first.get("SeriesInstanceUID", "")) or None,
    }
    n = len(frames)
    tilt_deg = 0.0
    if n > 1:
        steps = np.diff(dist)
        if np.any(steps < _STEP_ATOL):
            dup = [str(frames[i].path.name) for i in np.nonzero(steps < _STEP_ATOL)[0]]
            raise ValueError(
                f"{source}: duplicate slice positions (not a single volume); frames at the same "
                f"position as their neighbour: {dup}"
            )
        median = float(np.median(steps))
        if np.any(np.abs(steps - median) > max(_STEP_RTOL * median, _STEP_ATOL)):
            found = sorted({round(float(s), 3) for s in steps})
            raise ValueError(
                f"{source}: uneven slice steps {found} mm along the normal (missing slices or "
                "separate slabs); refusing to build a volume with a wrong spacing"
            )
        step_vec = (positions[-1] - positions[0]) / (n - 1)
        along = float(step_vec @ normal)
        cos = abs(along) / float(np.linalg.norm(step_vec))
        tilt_deg = float(np.degrees(np.arccos(min(1.0, cos))))
        slice_vec = normal * along
    else:
        thickness = _f(first.get("SpacingBetweenSlices")) or ref.thickness or 1.0
        slice_vec = normal * thickness
        step_vec = slice_vec

    stack = np.empty((ref.cols, ref.rows, n), dtype=np.float64)  # (I, J, K)
    padded = np.zeros((ref.cols, ref.rows, n), dtype=bool)  # (I, J, K) PixelPaddingValue
    cache: dict[Path, np.ndarray] = {}
    for k, fr in enumerate(frames):
        if fr.path not in cache:
            cache = {fr.path: _pixels(dcmread(fr.path), fr.path)}
        stored = cache[fr.path][fr.frame or 0]
        stack[:, :, k] = _rescale(stored, fr, modality).T  # (rows, cols) -> (i=col, j=row)
        padded[:, :, k] = _padding_mask(stored, fr).T
    if padded.any():
        meta["padding_voxels"] = int(padded.sum())

    dy, dx = ref.pixel_spacing  # between rows, between columns
    affine = np.eye(4)
    affine[:3, 0] = ref.row_cos * dx
    affine[:3, 1] = ref.col_cos * dy
    affine[:3, 2] = slice_vec
    affine[:3, 3] = positions[0]
    if tilt_deg > _TILT_TOL_DEG:
        stack = _untilt(stack, ~padded, step_vec - slice_vec, ref.row_cos * dx, ref.col_cos * dy)
        meta["gantry_tilt_deg"] = tilt_deg
        meta["resampled"] = "gantry tilt"
        warnings.warn(
            f"{source}: gantry tilt of {tilt_deg:.2f} degrees; slices resampled onto an "
            f"orthogonal grid (slice spacing {abs(float(slice_vec @ normal)):.3f} mm along the "
            f"normal, step length {float(np.linalg.norm(step_vec)):.3f} mm)",
            DicomGeometryWarning,
            stacklevel=3,
        )
    return stack, affine, meta


def _untilt(
    stack: np.ndarray,
    valid: np.ndarray,
    shear: np.ndarray,
    col_i: np.ndarray,
    col_j: np.ndarray,
) -> np.ndarray:
    """Shift slice ``k`` in-plane by ``-k * shear`` so the stack becomes orthogonal.

    Padding never blends into tissue: the validity mask (False at PixelPaddingValue voxels)
    is resampled with the values, and every output voxel whose interpolation touched a
    padded voxel or fell outside the stored field is set to `AIR_HU`.

    Args:
        stack: ``(I, J, K)`` values (HU; padded voxels already `AIR_HU`).
        valid: ``(I, J, K)`` bool, False where the stored value was padding.
        shear: In-plane part of the slice step (mm, LPS).
        col_i, col_j: Affine columns of the ``i`` and ``j`` axes (mm per voxel).

    Returns:
        ``(I, J, K)`` float64 resampled values (bilinear inside the valid field).
    """
    n_i, n_j, n_k = stack.shape
    # Shear in voxel units along i and j (the columns are orthogonal).
    si = float(shear @ col_i) / float(col_i @ col_i)
    sj = float(shear @ col_j) / float(col_j @ col_j)
    values = torch.from_numpy(np.where(valid, stack, AIR_HU)).permute(2, 1, 0)[:, None]
    weight = torch.from_numpy(valid).permute(2, 1, 0)[:, None].double()  # (K, 1, J, I)
    k = torch.arange(n_k, dtype=torch.float64)
    theta = torch.zeros(n_k, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    # Output voxel (i, j) of slice k sits at stored voxel (i + k*si, j + k*sj).
    theta[:, 0, 2] = 2.0 * k * si / n_i
    theta[:, 1, 2] = 2.0 * k * sj / n_j
    grid = F.affine_grid(theta, list(values.shape), align_corners=False)
    out = F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Weight < 1: the 2x2 neighbourhood held padding or lay outside the stored slice.
    cover = F.grid_sample(weight, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = torch.where(cover > 1.0 - 1e-6, out, torch.full_like(out, AIR_HU))
    return out[:, 0].permute(2, 1, 0).numpy()


def read_dicom_seg(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a DICOM SEG object into an integer label array on its own frame grid.

    Each segment's frames are placed by their PlanePositionSequence; the grid spans the
    lowest to the highest frame position with the SpacingBetweenSlices step (else the
    smallest gap between frames), so slices without a frame are background. Label value =
    ReferencedSegmentNumber; where segments overlap the higher number wins. Fractional
    segmentations are thresholded at half their maximum.

    Returns:
        ``(labels (I, J, K) int64, affine (4, 4) index -> LPS mm, metadata)``.

    Raises:
        ValueError: not a SEG object or no frames.
    """
    ds = dcmread(path)
    if str(ds.get("Modality", "")) != "SEG":
        raise ValueError(f"{path}: Modality {ds.get('Modality')!r} is not SEG")
    frames = _frames_of(path, ds)
    pixels = _pixels(ds, path)
    if str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        pixels = pixels >= (float(ds.get("MaximumFractionalValue", 255)) / 2.0)
    numbers = [
        int(per.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for per in ds.PerFrameFunctionalGroupsSequence
    ]
    ref = frames[0]
    normal = np.cross(ref.row_cos, ref.col_cos)
    dist = np.array([fr.position @ normal for fr in frames])
    unique = np.unique(np.round(dist, 3))
    spacing_between = None
    shared = ds.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
    if "PixelMeasuresSequence" in shared:
        spacing_between = _f(shared.PixelMeasuresSequence[0].get("SpacingBetweenSlices"))
    if spacing_between is None:
        spacing_between = (
            float(np.min(np.diff(unique))) if len(unique) > 1 else (ref.thickness or 1.0)
        )
    n_k = round((unique[-1] - unique[0]) / spacing_between) + 1
    labels = np.zeros((ref.cols, ref.rows, n_k), dtype=np.int64)
    origin = frames[int(np.argmin(dist))].position
    for _fr, number, d, image in sorted(
        zip(frames, numbers, dist, pixels), key=lambda item: item[1]
    ):
        k = round((d - unique[0]) / spacing_between)
        labels[:, :, k][image.T > 0] = number
    dy, dx = ref.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = ref.row_cos * dx
    affine[:3, 1] = ref.col_cos * dy
    affine[:3, 2] = normal * spacing_between
    affine[:3, 3] = origin
    meta = {
        "format": "dicom-seg",
        "modality": "SEG",
        "series_uid": str(ds.get("SeriesInstanceUID", "")) or None,
        "segments": {
            int(s.SegmentNumber): str(s.get("SegmentLabel", ""))
            for s in ds.get("SegmentSequence", [])
        },
    }
    return labels, affine, meta
