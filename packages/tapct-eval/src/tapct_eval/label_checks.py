"""Checks of a label map against its image and its task: one place for every pairing.

Three kinds of bad label are refused here, each with one line that starts with the label's
path (:class:`LabelError`, a ``ValueError``):

1. **An image given as the label** (:func:`image_like_problem`): values that are not
   integers, or more than :data:`MAX_LABEL_VALUES` distinct values (a CT in HU holds
   thousands). The threshold is the one ``tapct_data`` uses the other way round (its
   ``LabelMapError``: an image path holding at most 256 distinct non-negative integers).
2. **A label that does not lie on its image** (:func:`check_label_image`): the label's
   voxel grid is mapped into the image's voxel grid with the two affines. A label none of
   whose foreground voxels lands inside the image (another scan's label, a different world
   position) or whose grid box covers less than :data:`MIN_COVER` of the image's box is
   refused; nearest-neighbour resampling would turn it into all background and score
   Dice ~0 without a word. A cover below 1 that is still acceptable gives a
   :class:`LabelCoverWarning`. A DICOM SEG stores only the frames that hold a segment, so
   its grid spans just the segmented slices: for it (``sparse_frames``) a short cover is
   only warned about, and the foreground must still land inside the image.
3. **Values the task cannot train on** (:func:`prepare_label`): ids outside
   ``0..num_classes-1`` after the task's ``label_map`` (a wrong ``num_classes``, a missing
   ``label_map``, 255 or -1 borders) unless they equal the task's ``ignore_index``.

The loaders call (1) and (2) on the label as stored, before any resampling (the app's
``ScanLoaders.load_label`` for ``tapct benchmark`` and ``tapct retrieve``,
:func:`~tapct_eval.loading.load_label_monai` for the library default); the benchmark
runner calls (3) on every case before any feature is computed.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch

from .labels import TOTALSEGMENTATOR_V2_TO_49, merge_totalsegmentator_labels, remap_labels

__all__ = [
    "MAX_LABEL_VALUES",
    "MIN_COVER",
    "LabelCoverWarning",
    "LabelError",
    "LabelOverlap",
    "bad_label_values",
    "check_label_image",
    "image_like_problem",
    "label_overlap",
    "prepare_label",
]

#: A label map holds at most this many distinct values (tapct_data's label-map threshold).
MAX_LABEL_VALUES = 256

#: The least fraction of the image's extent a label's grid must cover to be accepted.
MIN_COVER = 0.5

# Cover at or above this counts as full (no warning); floating-point slack only.
_FULL_COVER = 0.999

# Label voxels mapped per slab in label_overlap (bounds its memory on big label maps).
_CHUNK_VOXELS = 1 << 22

# Bad values named in a message before "...".
_SHOW_VALUES = 8


class LabelError(ValueError):
    """A label map that cannot be used with its image or task.

    The message is one line that starts with the label's path (``"<path>: <problem>"``).

    Attributes:
        path: The label file.
        problem: The message after the path.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self):  # picklable across worker processes despite two arguments
        return type(self), (self.path, self.problem)


class LabelCoverWarning(UserWarning):
    """A label's grid covers only part of its image (the rest is read as background)."""


@attrs.frozen
class LabelOverlap:
    """How a label's grid lies on its image's grid.

    Attributes:
        foreground: Label voxels with a value > 0.
        inside: Of those, the voxels whose centre lands inside the image's voxel box.
        cover: Fraction (0-1) of the image's voxel box inside the label's grid box, both
            boxes taken in the image's voxel frame (exact for grids whose axes are parallel,
            as canonical volumes are; the label box's axis-aligned hull otherwise).
        label_box: World bounding box of the label grid, ``((lo, hi),) * 3`` in mm, in the
            order and frame of the affines' world axes.
        image_box: World bounding box of the image grid, same layout.
    """

    foreground: int
    inside: int
    cover: float
    label_box: tuple[tuple[float, float], ...]
    image_box: tuple[tuple[float, float], ...]


def _as_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _corners(shape: Sequence[int]) -> np.ndarray:
    """The 8 corners of a voxel grid's box, ``(8, 4)`` homogeneous voxel indices."""
    edges = [(-0.5, n - 0.5) for n in shape]
    return np.array([[*c, 1.0] for c in itertools.product(*edges)])


def _world_box(shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[float, float], ...]:
    world = (np.asarray(affine, dtype=np.float64) @ _corners(shape).T)[:3]
    return tuple((float(lo), float(hi)) for lo, hi in zip(world.min(1), world.max(1)))


def _format_box(box: tuple[tuple[float, float], ...]) -> str:
    return "[" + ", ".join(f"{lo:.0f}..{hi:.0f}" for lo, hi in box) + "] mm"


def label_overlap(
    label: np.ndarray | torch.Tensor,
    label_affine: np.ndarray,
    image_shape: Sequence[int],
    image_affine: np.ndarray,
) -> LabelOverlap:
    """Measure where a label's grid and its foreground land on an image's grid.

    Args:
        label: ``(D, H, W)`` label values on the label's own grid (foreground: > 0).
        label_affine: ``(4, 4)`` voxel index -> world (mm) of the label, index order as
            ``label``'s axes.
        image_shape: ``(D, H, W)`` of the image.
        image_affine: ``(4, 4)`` voxel index -> world (mm) of the image, same world frame.

    Returns:
        :class:`LabelOverlap`.

    Raises:
        ValueError: When ``label`` is not 3-D or an affine is not an invertible ``(4, 4)``.
    """
    values = _as_numpy(label)
    image_shape = tuple(int(n) for n in image_shape)
    if values.ndim != 3 or len(image_shape) != 3:
        raise ValueError(
            f"need a (D, H, W) label and image shape, got {values.shape} and {image_shape}"
        )
    la = np.asarray(label_affine, dtype=np.float64)
    ia = np.asarray(image_affine, dtype=np.float64)
    if la.shape != (4, 4) or ia.shape != (4, 4):
        raise ValueError(f"affines must be (4, 4), got {la.shape} and {ia.shape}")
    try:
        to_image = np.linalg.inv(ia) @ la  # label voxel index -> image voxel index
    except np.linalg.LinAlgError:
        raise ValueError("the image affine is not invertible") from None
    n = np.asarray(image_shape, dtype=np.float64)
    # Grid box of the label in the image's voxel frame, intersected with the image's box.
    corners = (to_image @ _corners(values.shape).T)[:3]  # (3, 8)
    lo = np.maximum(corners.min(1), -0.5)
    hi = np.minimum(corners.max(1), n - 0.5)
    cover = float(np.prod(np.clip(hi - lo, 0.0, None)) / np.prod(n))
    foreground = inside = 0
    step = max(1, _CHUNK_VOXELS // max(1, values[0].size))
    for start in range(0, values.shape[0], step):  # slabs bound the memory of big labels
        fg = np.argwhere(values[start : start + step] > 0)  # (N, 3) label voxel indices
        fg[:, 0] += start
        pos = fg @ to_image[:3, :3].T + to_image[:3, 3]  # (N, 3) image voxel indices
        foreground += len(fg)
        inside += int(np.count_nonzero(np.all((pos >= -0.5) & (pos < n - 0.5), axis=1)))
    return LabelOverlap(
        foreground=foreground,
        inside=inside,
        cover=min(cover, 1.0),
        label_box=_world_box(values.shape, la),
        image_box=_world_box(image_shape, ia),
    )


def _distinct_count(values: np.ndarray) -> int:
    lo, hi = int(values.min()), int(values.max())
    if hi - lo < 1 << 22:  # a histogram is much faster than sorting millions of voxels
        return int(np.count_nonzero(np.bincount((values.astype(np.int64) - lo).ravel())))
    return int(np.unique(values).size)


def image_like_problem(values: np.ndarray | torch.Tensor) -> str | None:
    """Why an array given as a label map looks like an image (None if it can be a label).

    Args:
        values: The label values, any shape, any dtype.

    Returns:
        One line (values that are not integers, or more than :data:`MAX_LABEL_VALUES`
        distinct values, with their range), or None.
    """
    array = _as_numpy(values)
    if array.size == 0:
        return None
    if array.dtype == np.bool_:
        return None
    if not np.issubdtype(array.dtype, np.integer):
        finite = np.isfinite(array)
        if not finite.all():
            return "holds NaN or infinite values: an image, not a label map"
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            return (
                f"holds values that are not integers (e.g. {example:g}): an image, not a "
                "label map"
            )
        array = array.astype(np.int64)
    distinct = _distinct_count(array)
    if distinct <= MAX_LABEL_VALUES:
        return None
    lo, hi = int(array.min()), int(array.max())
    what = "a CT image in HU" if lo < -100 else "an image"
    return (
        f"holds {distinct} distinct values from {lo} to {hi} (a label map has at most "
        f"{MAX_LABEL_VALUES}): this looks like {what}, not a label map"
    )


def check_label_image(
    label: np.ndarray | torch.Tensor,
    label_affine: np.ndarray,
    image_shape: Sequence[int],
    image_affine: np.ndarray,
    *,
    label_path: str | Path,
    image_path: str | Path,
    min_cover: float = MIN_COVER,
    sparse_frames: bool = False,
) -> LabelOverlap:
    """Refuse a label that is an image or does not lie on its image; warn on partial cover.

    Call it on the label as stored (its own grid and affine), before resampling it onto
    the image: after nearest-neighbour resampling a label from elsewhere is all background.

    Args:
        label: ``(D, H, W)`` label values on the label's grid.
        label_affine: ``(4, 4)`` voxel -> world (mm) of the label.
        image_shape: ``(D, H, W)`` of the image.
        image_affine: ``(4, 4)`` voxel -> world (mm) of the image, same world frame.
        label_path: The label file (leads the message).
        image_path: The image it is paired with (named in the message).
        min_cover: Least fraction of the image's extent the label grid must cover.
        sparse_frames: The label's grid holds only the frames that carry a segment (a
            DICOM SEG leaves out empty frames): a cover below ``min_cover`` is then warned
            about, not refused.

    Returns:
        The :class:`LabelOverlap` found.

    Raises:
        LabelError: When the label looks like an image (:func:`image_like_problem`), when
            none of its foreground voxels lands inside the image, or when its grid covers
            less than ``min_cover`` of the image's extent (unless ``sparse_frames``).

    Warns:
        LabelCoverWarning: When the cover is below 1 (and at least ``min_cover`` unless
            ``sparse_frames``).
    """
    problem = image_like_problem(label)
    if problem is not None:
        raise LabelError(label_path, problem)
    found = label_overlap(label, label_affine, image_shape, image_affine)
    where = (
        f"(label spans {_format_box(found.label_box)}, the image "
        f"{_format_box(found.image_box)}; another scan's label?)"
    )
    if found.foreground and not found.inside:
        raise LabelError(
            label_path,
            f"none of its {found.foreground} foreground voxels lies inside the image "
            f"{image_path}; its grid covers {found.cover:.0%} of the image's extent {where}",
        )
    if found.cover < min_cover and not sparse_frames:
        raise LabelError(
            label_path,
            f"covers only {found.cover:.0%} of the extent of its image {image_path} (at "
            f"least {min_cover:.0%} needed; {found.inside} of {found.foreground} foreground "
            f"voxels inside) {where}",
        )
    if found.cover < _FULL_COVER:
        warnings.warn(
            f"{label_path}: covers {found.cover:.1%} of the extent of its image {image_path}; "
            "the rest is read as background (a DICOM SEG may leave out empty frames)",
            LabelCoverWarning,
            stacklevel=2,
        )
    return found


def bad_label_values(
    label: torch.Tensor, num_classes: int | None, ignore_index: int | None = None
) -> list[int]:
    """The distinct values of a label map outside ``0..num_classes-1`` (and not ignored).

    Args:
        label: Integer labels, any shape.
        num_classes: Classes including background; None (a kind that reads structure or
            lesion ids, not classes) checks only that no value is negative.
        ignore_index: A value that marks voxels to leave out (allowed), or None.

    Returns:
        The sorted bad values (empty when all are valid).
    """
    bad = label < 0
    if num_classes is not None:
        bad |= label >= num_classes
    if ignore_index is not None:
        bad &= label != ignore_index
    if not bool(bad.any()):
        return []
    return [int(v) for v in torch.unique(label[bad]).tolist()]


def _show(values: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOW_VALUES])
    more = f", ... ({len(values)} values)" if len(values) > _SHOW_VALUES else ""
    return f"[{shown}{more}]"


def _hint(bad: Sequence[int], ignore_index: int | None, otherwise: str) -> str:
    if len(bad) == 1 and ignore_index is None and bad[0] in (-1, 255):
        return f"set ignore_index: {bad[0]} in the task file to leave those voxels out"
    return f"{otherwise}, or set ignore_index for a value that marks voxels to leave out"


def prepare_label(
    label: torch.Tensor,
    path: str | Path,
    *,
    num_classes: int | None,
    label_map: str | Mapping[int, int] | None = None,
    ignore_index: int | None = None,
    task_file: str | Path | None = None,
) -> torch.Tensor:
    """Map a loaded label to the task's classes and refuse values the task cannot use.

    Voxels equal to ``ignore_index`` keep that value and skip the ``label_map``; every
    other value must map into ``0..num_classes-1``.

    Args:
        label: ``(D, H, W)`` integer labels on the image grid.
        path: The label file (leads the message).
        num_classes: Classes including background (after ``label_map``); None for kinds
            that read structure or lesion ids (only negative values are refused).
        label_map: None, ``"totalsegmentator_49"`` or an ``{old_id: new_id}`` mapping.
        ignore_index: The value marking voxels to leave out of loss and Dice, or None.
        task_file: The task file, named in the message.

    Returns:
        ``(D, H, W)`` int64 labels in ``0..num_classes-1`` or ``ignore_index``.

    Raises:
        LabelError: When the label looks like an image, holds ids the ``label_map`` does
            not know, or values outside ``0..num_classes-1`` that are not ``ignore_index``.
        ValueError: When ``label_map`` is a string other than ``"totalsegmentator_49"``.
    """
    problem = image_like_problem(label)
    if problem is not None:
        raise LabelError(path, problem)
    label = torch.as_tensor(label).long()
    of_task = f" of {task_file}" if task_file is not None else ""
    ignoring = f" (ignore_index {ignore_index})" if ignore_index is not None else ""
    ignored = label == ignore_index if ignore_index is not None else None
    if label_map is not None:
        name = label_map if isinstance(label_map, str) else "mapping"
        table = TOTALSEGMENTATOR_V2_TO_49 if label_map == "totalsegmentator_49" else label_map
        if isinstance(table, str):
            raise ValueError(f"unknown label_map {label_map!r}")
        present = torch.unique(label if ignored is None else label[~ignored]).tolist()
        unknown = [int(v) for v in present if int(v) not in table]
        if unknown:
            raise LabelError(
                path,
                f"label values {_show(unknown)} are not in label_map {name}{of_task}"
                f"{ignoring}; {_hint(unknown, ignore_index, 'check label_map')}",
            )
        values = label if ignored is None else label.masked_fill(ignored, 0)
        values = (
            merge_totalsegmentator_labels(values)
            if label_map == "totalsegmentator_49"
            else remap_labels(values, table)
        )
        if ignore_index is not None and ignored is not None:
            values = values.masked_fill(ignored, ignore_index)
        label = values
    bad = bad_label_values(label, num_classes, ignore_index)
    if bad:
        after = " after the label_map" if label_map is not None else ""
        allowed = f"0..{num_classes - 1}" if num_classes is not None else "ids >= 0"
        raise LabelError(
            path,
            f"label values {_show(bad)}{after} are outside {allowed} "
            f"(num_classes {num_classes}{of_task}){ignoring}; "
            f"{_hint(bad, ignore_index, 'check num_classes and label_map')}",
        )
    return label
