"""Benchmark task files (YAML or JSON): schema, loading and validation.

Every task names a ``kind``; each kind is one entry of :data:`tapct_eval.kinds.TASK_KINDS`
(a parse function for its keys, the keys it declares and a run function). A key neither
common nor the kind's own is refused (a misspelled ``stpes`` would otherwise leave the
default in place). Common keys (paths are relative to the task file)::

    name: totalseg-small            # required, str
    kind: segmentation              # required: segmentation | classification | regression
                                    #   | survival | retrieval | localisation
    roi_size: [12, 224, 224]        # required, window (d, h, w) in voxels
    overlap: 0.25                   # optional, [0, 1)
    blend_mode: constant            # optional: constant | gaussian (MONAI SlidingWindowInferer)
    sigma_scale: 0.125              # optional, gaussian width as a fraction of the ROI
    in_plane_size: [224, 224]       # optional: resize (z, H, W) -> (z, h, w) before features
    steps: 200                      # optional: optimizer steps of the head
    accumulation_steps: 4           # optional (paper C.1: 4 segmentation, 16 the others)
    lr: 0.01                        # optional

Per kind:

``segmentation`` (linear probe on patch features; Dice)::

    num_classes: 49                 # required, classes incl. background (after label_map)
    label_map: totalsegmentator_49  # optional: null | totalsegmentator_49 | {old_id: new_id}
    class_names: [...]              # optional, num_classes names
    ignore_index: 255               # optional: label value left out of loss and Dice
    train: {images: imagesTr, labels: labelsTr}   # folder pair (matched by file name)
    test:  [{image: a.nii.gz, label: a_seg.nii.gz}, ...]   # or an explicit list

``classification`` (ABMIL on window cls tokens; AUC)::

    csv: cases.csv                  # columns: image, split (train|test), target columns
    task_type: binary               # binary | multiclass | multilabel
    target_columns: [label]         # default [label]
    num_classes: 1                  # 1 (binary), K or L

``regression`` (linear or ABMIL head on window cls tokens; MAE, Pearson r)::

    csv: cases.csv                  # columns: image, split, target columns (floats)
    target_columns: [volume_ml]     # default [target]
    head: linear                    # linear (mean-pooled tokens) | abmil

``survival`` (ABMIL risk score, Cox partial likelihood; concordance index)::

    csv: cases.csv                  # columns: image, split, time, event (1 event, 0 censored)
    time_column: time               # default time (any unit, > 0)
    event_column: event             # default event

``retrieval`` (no head: lesion -> follow-up patch retrieval; top-k hit rate, mAP)::

    pairs:                          # required: the query scan with its lesion mask, and the
      - {query: base.nii.gz, query_label: base_lesion.nii.gz,     # follow-up scan with the
         target: fu.nii.gz, target_label: fu_lesion.nii.gz}       # same lesion's mask
    label_value: 1                  # optional: the lesion's id in the masks (default: any > 0)
    top_k: [1, 5, 10]               # optional: hit rates reported
    label_map: totalsegmentator_49  # optional, as for segmentation

``localisation`` (per-patch heat map + soft-argmax; centroid error in mm)::

    structure: 5                    # required: label id whose centroid is the target
    label_map: totalsegmentator_49  # optional, as for segmentation
    spacing: [3.0, 3.0, 3.0]        # optional: voxel size (d, h, w) in mm of the loaded grid
                                    #   (when the runner has no load_spacing)
    train: {images: imagesTr, labels: labelsTr}   # as for segmentation
    test:  [{image: a.nii.gz, label: a_seg.nii.gz}, ...]
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

__all__ = [
    "COMMON_KEYS",
    "BenchmarkCase",
    "BenchmarkTask",
    "CaseError",
    "ClassificationCase",
    "LocalisationCase",
    "ParseContext",
    "RegressionCase",
    "RetrievalCase",
    "SegmentationCase",
    "SurvivalCase",
    "TaskFileError",
    "check_keys",
    "csv_cases",
    "first_dot_stem",
    "labelled_cases",
    "load_task",
    "parse_label_map",
]


class TaskFileError(ValueError):
    """A task file is missing a key or holds an invalid value (names the file and key)."""


COMMON_KEYS: tuple[str, ...] = (
    "name",
    "kind",
    "roi_size",
    "overlap",
    "blend_mode",
    "sigma_scale",
    "in_plane_size",
    "steps",
    "accumulation_steps",
    "lr",
)
"""The top-level keys every kind accepts (each kind adds its own, ``TaskKind.keys``)."""


def _did_you_mean(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, [str(k) for k in known], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_keys(raw: Mapping[str, Any], known: tuple[str, ...], path: Path, kind: str) -> None:
    """Refuse top-level keys a kind does not read (a misspelled key would otherwise be
    ignored silently and its default used).

    Args:
        raw: the task file's top-level mapping.
        known: the keys the kind accepts (:data:`COMMON_KEYS` plus its own).
        path: the task file (named in the error).
        kind: the kind's name (named in the error).

    Raises:
        TaskFileError: naming the file, each unknown key with the closest known key, and
            the known keys.
    """
    unknown = [str(k) for k in raw if k not in known]
    if unknown:
        listed = ", ".join(f"{k!r}{_did_you_mean(k, known)}" for k in unknown)
        raise TaskFileError(
            f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {listed} for kind {kind}; "
            f"known keys: {', '.join(known)}"
        )


class CaseError(ValueError):
    """A case's data does not fit its task (a label off the image grid, a structure or a
    lesion missing from a mask, an unknown voxel spacing); the message starts with the
    file's path."""


@attrs.frozen
class SegmentationCase:
    """One labelled scan (segmentation, localisation).

    Attributes:
        case_id: unique name (file stem).
        image: image path (file or DICOM folder).
        label: label map path on the image's grid.
    """

    case_id: str
    image: Path
    label: Path


@attrs.frozen
class ClassificationCase:
    """One scan with a class target.

    Attributes:
        case_id: unique name (file stem).
        image: image path.
        target: class id (binary, multiclass) or tuple of 0/1 (multilabel).
    """

    case_id: str
    image: Path
    target: int | tuple[int, ...]


@attrs.frozen
class RegressionCase:
    """One scan with real-valued targets.

    Attributes:
        case_id: unique name (file stem).
        image: image path.
        target: one float per target column.
    """

    case_id: str
    image: Path
    target: tuple[float, ...]


@attrs.frozen
class SurvivalCase:
    """One scan with a (possibly censored) survival time.

    Attributes:
        case_id: unique name (file stem).
        image: image path.
        time: time to the event or to censoring (> 0, any unit).
        event: True when the event was observed, False when censored.
    """

    case_id: str
    image: Path
    time: float
    event: bool


@attrs.frozen
class RetrievalCase:
    """A lesion in a baseline scan and the same lesion in a follow-up scan.

    Attributes:
        case_id: unique name of the pair.
        image: the query (baseline) scan.
        label: the query's lesion mask.
        target_image: the follow-up scan searched.
        target_label: the lesion's mask in the follow-up (the true matches).
    """

    case_id: str
    image: Path
    label: Path
    target_image: Path
    target_label: Path


LocalisationCase = SegmentationCase
"""A localisation case is a labelled scan; the target is one structure's centroid."""

BenchmarkCase = (
    SegmentationCase | ClassificationCase | RegressionCase | SurvivalCase | RetrievalCase
)
"""Any kind's case record."""


@attrs.frozen
class BenchmarkTask:
    """A validated benchmark task (see the module docstring for the file schema).

    Attributes:
        name: task name.
        kind: a key of :data:`tapct_eval.kinds.TASK_KINDS`.
        roi_size: sliding window ``(d, h, w)``.
        blend_mode: ``constant`` or ``gaussian`` blending of overlapping windows.
        sigma_scale: gaussian width as a fraction of the ROI (MONAI's ``sigma_scale``).
        train: training cases (the kind's case records; empty for retrieval).
        test: test cases.
        overlap: window overlap.
        num_classes: classes (segmentation incl. background) or outputs (classification);
            None for the other kinds.
        label_map: None, ``"totalsegmentator_49"`` or an id mapping (labelled kinds).
        ignore_index: label value of voxels left out of loss and Dice (segmentation), or
            None.
        class_names: optional names of the classes.
        in_plane_size: optional in-plane resize ``(h, w)``.
        task_type: ``binary``/``multiclass``/``multilabel`` (classification).
        target_columns: the CSV target columns (classification, regression).
        head: ``linear`` or ``abmil`` (regression).
        structure: the label id to localise (localisation).
        spacing: ``(d, h, w)`` voxel size in mm of the loaded grid (localisation, when the
            runner is given no ``load_spacing``).
        label_value: the lesion id in the masks, None for any non-zero (retrieval).
        top_k: the k of the reported hit rates (retrieval).
        steps: optimizer steps.
        accumulation_steps: micro-batches per step (4 segmentation, 16 the others).
        lr: learning rate.
        source: the task file.
    """

    name: str
    kind: str
    roi_size: tuple[int, int, int]
    train: tuple[Any, ...]
    test: tuple[Any, ...]
    overlap: float = 0.25
    num_classes: int | None = None
    label_map: str | Mapping[int, int] | None = None
    ignore_index: int | None = None
    class_names: tuple[str, ...] | None = None
    in_plane_size: tuple[int, int] | None = None
    task_type: str | None = None
    target_columns: tuple[str, ...] = ()
    head: str | None = None
    structure: int | None = None
    spacing: tuple[float, float, float] | None = None
    label_value: int | None = None
    top_k: tuple[int, ...] = (1, 5, 10)
    steps: int = 200
    accumulation_steps: int = 4
    lr: float = 1e-2
    source: Path | None = None
    blend_mode: str = "constant"
    sigma_scale: float = 0.125


def _err(path: Path, key: str, message: str) -> TaskFileError:
    return TaskFileError(f"{path}: key {key!r}: {message}")


def _ints(raw: Any, n: int, path: Path, key: str) -> tuple[int, ...]:
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != n
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)
    ):
        raise _err(path, key, f"must be a list of {n} positive ints, got {raw!r}")
    return tuple(raw)


def first_dot_stem(path: Path) -> str:
    """The default case id: the file name up to its first dot (``a_0000.nii.gz -> a_0000``).

    tapct_eval knows no table of image formats (that lives in tapct_data, which this
    package does not import); the ``tapct`` app passes the exact rule as ``case_id``.
    """
    return path.name.split(".", 1)[0] or path.name


@attrs.frozen
class ParseContext:
    """What a kind's parse function needs besides the raw mapping.

    Attributes:
        path: the task file (named in every error).
        base: folder that relative paths are resolved against.
        case_id: image/label path -> case id.
    """

    path: Path
    base: Path
    case_id: Callable[[Path], str]

    def error(self, key: str, message: str) -> TaskFileError:
        """A :class:`TaskFileError` naming this file and ``key``."""
        return _err(self.path, key, message)

    def require(self, raw: Mapping[str, Any], key: str, kind: str) -> Any:
        """``raw[key]``, or a :class:`TaskFileError` saying the kind needs it."""
        if key not in raw:
            raise self.error(key, f"is required for {kind}")
        return raw[key]


def labelled_cases(raw: Any, ctx: ParseContext, key: str) -> tuple[SegmentationCase, ...]:
    """Image/label cases from ``{images: dir, labels: dir}`` or ``[{image, label, id?}]``.

    Raises:
        TaskFileError: on a missing folder or file, an unpaired image, clashing case ids
            or an empty list.
    """
    path, base, _stem = ctx.path, ctx.base, ctx.case_id
    if isinstance(raw, Mapping):
        if set(raw) != {"images", "labels"}:
            raise _err(
                path, key, f"a folder pair needs exactly 'images' and 'labels', got {sorted(raw)}"
            )
        images, labels = base / str(raw["images"]), base / str(raw["labels"])
        for folder, sub in ((images, "images"), (labels, "labels")):
            if not folder.is_dir():
                raise _err(path, f"{key}.{sub}", f"folder {folder} does not exist")
        label_by_stem: dict[str, Path] = {}
        for p in sorted(labels.iterdir()):
            if p.name.startswith("."):
                continue
            if _stem(p) in label_by_stem:
                raise _err(
                    path,
                    f"{key}.labels",
                    f"{label_by_stem[_stem(p)]} and {p} give the same case id {_stem(p)!r}",
                )
            label_by_stem[_stem(p)] = p
        cases = []
        for image in sorted(p for p in images.iterdir() if not p.name.startswith(".")):
            stem = _stem(image)
            if stem not in label_by_stem:
                raise _err(path, f"{key}.labels", f"no label named like {image.name} in {labels}")
            cases.append(SegmentationCase(stem, image, label_by_stem[stem]))
    elif isinstance(raw, list):
        cases = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
                raise _err(path, f"{key}[{i}]", f"needs 'image' and 'label', got {item!r}")
            image, label = base / str(item["image"]), base / str(item["label"])
            for p, sub in ((image, "image"), (label, "label")):
                if not p.exists():
                    raise _err(path, f"{key}[{i}].{sub}", f"{p} does not exist")
            cases.append(SegmentationCase(str(item.get("id", _stem(image))), image, label))
    else:
        raise _err(path, key, f"must be {{images, labels}} folders or a list of cases, got {raw!r}")
    if not cases:
        raise _err(path, key, "holds no case")
    return tuple(cases)


def parse_label_map(raw: Mapping[str, Any], ctx: ParseContext) -> str | dict[int, int] | None:
    """The optional ``label_map`` key: null, ``totalsegmentator_49`` or ``{old: new}``."""
    label_map = raw.get("label_map")
    if isinstance(label_map, Mapping):
        try:
            return {int(k): int(v) for k, v in label_map.items()}
        except (TypeError, ValueError):
            raise ctx.error("label_map", f"must map ints to ints, got {label_map!r}") from None
    if label_map not in (None, "totalsegmentator_49"):
        raise ctx.error(
            "label_map", f"must be null, 'totalsegmentator_49' or a mapping, got {label_map!r}"
        )
    return label_map


def csv_cases(
    raw: Any,
    ctx: ParseContext,
    columns: list[str],
    make_case: Callable[[str, Path, dict[str, str]], Any],
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Train and test cases from a CSV with ``image``, ``split`` and ``columns``.

    Args:
        raw: the ``csv`` value (path relative to the task file).
        ctx: the parse context.
        columns: the kind's required columns besides ``image`` and ``split``.
        make_case: ``(case_id, image_path, row) -> case``; raises ValueError on a bad
            value (reported with the line number).

    Returns:
        ``(train, test)`` case tuples, both non-empty.

    Raises:
        TaskFileError: on a missing file or column, a bad split or value, an empty split.
    """
    path = ctx.path
    csv_path = ctx.base / str(raw)
    if not csv_path.is_file():
        raise _err(path, "csv", f"file {csv_path} does not exist")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    need = {"image", "split", *columns}
    if not rows or not need <= set(rows[0]):
        raise _err(path, "csv", f"{csv_path} needs columns {sorted(need)}")
    split: dict[str, list[Any]] = {"train": [], "test": []}
    for n, row in enumerate(rows, start=2):
        if row["split"] not in split:
            raise _err(
                path,
                "csv",
                f"{csv_path} line {n}: split must be train or test, got {row['split']!r}",
            )
        image = ctx.base / row["image"]
        try:
            case = make_case(ctx.case_id(image), image, row)
        except ValueError as exc:
            raise _err(path, "csv", f"{csv_path} line {n}: {exc}") from None
        split[row["split"]].append(case)
    for name, cases in split.items():
        if not cases:
            raise _err(path, "csv", f"{csv_path} has no {name} rows")
    return tuple(split["train"]), tuple(split["test"])


def load_task(path: str | Path, *, case_id: Callable[[Path], str] | None = None) -> BenchmarkTask:
    """Load and validate a task file (YAML ``.yaml``/``.yml`` or JSON ``.json``).

    The common keys are read here; the kind's keys by its ``parse`` function in
    :data:`tapct_eval.kinds.TASK_KINDS`.

    Args:
        path: the task file; relative paths inside it are resolved against its folder.
        case_id: image/label path -> case id (images and labels are paired by it); default
            `first_dot_stem`. The ``tapct`` app passes tapct_data's suffix table.

    Returns:
        :class:`BenchmarkTask`.

    Raises:
        TaskFileError: (a ValueError) naming the file and key for a missing key, an
            unknown kind, a key the kind does not know (:func:`check_keys`), a wrong type or
            value, or a path that does not exist.
        FileNotFoundError: when the task file does not exist.
    """
    from .kinds import TASK_KINDS  # the kinds import this module's records and helpers

    path = Path(path)
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise TaskFileError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if not isinstance(raw, Mapping):
        raise TaskFileError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    for key in ("name", "kind"):
        if key not in raw:
            raise _err(path, key, "is required")
    kind = raw["kind"]
    if not isinstance(kind, str) or kind not in TASK_KINDS:
        hint = _did_you_mean(kind, TASK_KINDS) if isinstance(kind, str) else ""
        raise _err(path, "kind", f"must be one of {', '.join(TASK_KINDS)}, got {kind!r}{hint}")
    spec = TASK_KINDS[kind]
    check_keys(raw, COMMON_KEYS + spec.keys, path, kind)
    if "roi_size" not in raw:
        raise _err(path, "roi_size", "is required")
    overlap = raw.get("overlap", 0.25)
    if not isinstance(overlap, int | float) or not 0 <= overlap < 1:
        raise _err(path, "overlap", f"must be in [0, 1), got {overlap!r}")
    in_plane = raw.get("in_plane_size")
    blend_mode = raw.get("blend_mode", "constant")
    if blend_mode not in ("constant", "gaussian"):
        raise _err(path, "blend_mode", f"must be constant or gaussian, got {blend_mode!r}")
    sigma_scale = raw.get("sigma_scale", 0.125)
    number = isinstance(sigma_scale, int | float) and not isinstance(sigma_scale, bool)
    if not number or sigma_scale <= 0:
        raise _err(path, "sigma_scale", f"must be a positive number, got {sigma_scale!r}")
    common: dict[str, Any] = {
        "name": str(raw["name"]),
        "kind": kind,
        "roi_size": _ints(raw["roi_size"], 3, path, "roi_size"),
        "overlap": float(overlap),
        "in_plane_size": None if in_plane is None else _ints(in_plane, 2, path, "in_plane_size"),
        "steps": raw.get("steps", 200),
        "accumulation_steps": raw.get("accumulation_steps", spec.accumulation_steps),
        "lr": float(raw.get("lr", spec.lr)),
        "source": path,
        "blend_mode": blend_mode,
        "sigma_scale": float(sigma_scale),
    }
    for key in ("steps", "accumulation_steps"):
        if not isinstance(common[key], int) or common[key] < 1:
            raise _err(path, key, f"must be a positive int, got {common[key]!r}")
    ctx = ParseContext(path, path.parent, case_id or first_dot_stem)
    return BenchmarkTask(**common, **spec.parse(raw, ctx))
