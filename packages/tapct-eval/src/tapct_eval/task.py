"""Benchmark task files (YAML or JSON): schema, loading and validation.

Schema (paths are relative to the task file)::

    name: totalseg-small            # required, str
    kind: segmentation              # required: segmentation | classification
    roi_size: [12, 224, 224]        # required, window (d, h, w) in voxels
    overlap: 0.25                   # optional, [0, 1)
    blend_mode: constant            # optional: constant | gaussian (MONAI SlidingWindowInferer)
    sigma_scale: 0.125              # optional, gaussian width as a fraction of the ROI
    in_plane_size: [224, 224]       # optional: resize (z, H, W) -> (z, h, w) before features
    # segmentation
    num_classes: 49                 # required, classes incl. background (after label_map)
    label_map: totalsegmentator_49  # optional: null | totalsegmentator_49 | {old_id: new_id}
    class_names: [...]              # optional, num_classes names
    train: {images: imagesTr, labels: labelsTr}   # folder pair (matched by file name)
    test:  [{image: a.nii.gz, label: a_seg.nii.gz}, ...]   # or an explicit list
    # classification
    csv: cases.csv                  # columns: image, split (train|test), target columns
    task_type: binary               # binary | multiclass | multilabel
    target_columns: [label]         # default [label]
    num_classes: 1                  # 1 (binary), K or L
    # training (optional)
    steps: 200
    accumulation_steps: 4           # paper C.1: 4 segmentation, 16 classification
    lr: 0.01
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

__all__ = ["BenchmarkCase", "BenchmarkTask", "TaskFileError", "first_dot_stem", "load_task"]


class TaskFileError(ValueError):
    """A task file is missing a key or holds an invalid value (names the file and key)."""


@attrs.frozen
class BenchmarkCase:
    """One case of a task.

    Attributes:
        case_id: unique name (file stem).
        image: image path (file or DICOM folder).
        label: label path (segmentation) or None.
        target: class id or tuple of 0/1 (classification) or None.
    """

    case_id: str
    image: Path
    label: Path | None = None
    target: int | tuple[int, ...] | None = None


@attrs.frozen
class BenchmarkTask:
    """A validated benchmark task (see the module docstring for the file schema).

    Attributes:
        name: task name.
        kind: ``segmentation`` or ``classification``.
        roi_size: sliding window ``(d, h, w)``.
        overlap: window overlap.
        blend_mode: ``constant`` or ``gaussian`` blending of overlapping windows.
        sigma_scale: gaussian width as a fraction of the ROI (MONAI's ``sigma_scale``).
        num_classes: classes (segmentation incl. background) or outputs (classification).
        train: training cases.
        test: test cases.
        label_map: None, ``"totalsegmentator_49"`` or an id mapping.
        class_names: optional names of the classes.
        in_plane_size: optional in-plane resize ``(h, w)``.
        task_type: ``binary``/``multiclass``/``multilabel`` (classification).
        steps: optimizer steps.
        accumulation_steps: micro-batches per step (4 segmentation, 16 classification).
        lr: learning rate.
        source: the task file.
    """

    name: str
    kind: str
    roi_size: tuple[int, int, int]
    num_classes: int
    train: tuple[BenchmarkCase, ...]
    test: tuple[BenchmarkCase, ...]
    overlap: float = 0.25
    label_map: str | Mapping[int, int] | None = None
    class_names: tuple[str, ...] | None = None
    in_plane_size: tuple[int, int] | None = None
    task_type: str | None = None
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


def _seg_cases(
    raw: Any, base: Path, path: Path, key: str, _stem: Callable[[Path], str]
) -> tuple[BenchmarkCase, ...]:
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
            cases.append(BenchmarkCase(stem, image, label_by_stem[stem]))
    elif isinstance(raw, list):
        cases = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
                raise _err(path, f"{key}[{i}]", f"needs 'image' and 'label', got {item!r}")
            image, label = base / str(item["image"]), base / str(item["label"])
            for p, sub in ((image, "image"), (label, "label")):
                if not p.exists():
                    raise _err(path, f"{key}[{i}].{sub}", f"{p} does not exist")
            cases.append(BenchmarkCase(str(item.get("id", _stem(image))), image, label))
    else:
        raise _err(path, key, f"must be {{images, labels}} folders or a list of cases, got {raw!r}")
    if not cases:
        raise _err(path, key, "holds no case")
    return tuple(cases)


def _csv_cases(
    raw: Any,
    base: Path,
    path: Path,
    targets: list[str],
    task_type: str,
    _stem: Callable[[Path], str],
):
    csv_path = base / str(raw)
    if not csv_path.is_file():
        raise _err(path, "csv", f"file {csv_path} does not exist")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    need = {"image", "split", *targets}
    if not rows or not need <= set(rows[0]):
        raise _err(path, "csv", f"{csv_path} needs columns {sorted(need)}")
    split: dict[str, list[BenchmarkCase]] = {"train": [], "test": []}
    for n, row in enumerate(rows, start=2):
        if row["split"] not in split:
            raise _err(
                path,
                "csv",
                f"{csv_path} line {n}: split must be train or test, got {row['split']!r}",
            )
        try:
            values = tuple(int(row[c]) for c in targets)
        except ValueError as exc:
            raise _err(path, "csv", f"{csv_path} line {n}: targets must be ints ({exc})") from None
        target = values if task_type == "multilabel" else values[0]
        image = base / row["image"]
        split[row["split"]].append(BenchmarkCase(_stem(image), image, None, target))
    for name, cases in split.items():
        if not cases:
            raise _err(path, "csv", f"{csv_path} has no {name} rows")
    return tuple(split["train"]), tuple(split["test"])


def load_task(path: str | Path, *, case_id: Callable[[Path], str] | None = None) -> BenchmarkTask:
    """Load and validate a task file (YAML ``.yaml``/``.yml`` or JSON ``.json``).

    Args:
        path: the task file; relative paths inside it are resolved against its folder.
        case_id: image/label path -> case id (images and labels are paired by it); default
            `first_dot_stem`. The ``tapct`` app passes tapct_data's suffix table.

    Returns:
        :class:`BenchmarkTask`.

    Raises:
        TaskFileError: (a ValueError) naming the file and key for a missing key, a wrong
            type or value, or a path that does not exist.
        FileNotFoundError: when the task file does not exist.
    """
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
    base = path.parent
    stem = case_id or first_dot_stem
    for key in ("name", "kind", "roi_size", "num_classes"):
        if key not in raw:
            raise _err(path, key, "is required")
    kind = raw["kind"]
    if kind not in ("segmentation", "classification"):
        raise _err(path, "kind", f"must be segmentation or classification, got {kind!r}")
    num_classes = raw["num_classes"]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise _err(path, "num_classes", f"must be a positive int, got {num_classes!r}")
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
        "num_classes": num_classes,
        "overlap": float(overlap),
        "in_plane_size": None if in_plane is None else _ints(in_plane, 2, path, "in_plane_size"),
        "steps": raw.get("steps", 200),
        "accumulation_steps": raw.get("accumulation_steps", 4 if kind == "segmentation" else 16),
        "lr": float(raw.get("lr", 1e-2 if kind == "segmentation" else 1e-3)),
        "source": path,
        "blend_mode": blend_mode,
        "sigma_scale": float(sigma_scale),
    }
    for key in ("steps", "accumulation_steps"):
        if not isinstance(common[key], int) or common[key] < 1:
            raise _err(path, key, f"must be a positive int, got {common[key]!r}")
    if kind == "segmentation":
        if num_classes < 2:
            raise _err(path, "num_classes", f"segmentation needs >= 2 classes, got {num_classes}")
        for key in ("train", "test"):
            if key not in raw:
                raise _err(path, key, "is required for segmentation")
        label_map = raw.get("label_map")
        if isinstance(label_map, Mapping):
            try:
                label_map = {int(k): int(v) for k, v in label_map.items()}
            except (TypeError, ValueError):
                raise _err(path, "label_map", f"must map ints to ints, got {label_map!r}") from None
        elif label_map not in (None, "totalsegmentator_49"):
            raise _err(
                path,
                "label_map",
                f"must be null, 'totalsegmentator_49' or a mapping, got {label_map!r}",
            )
        names = raw.get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != num_classes):
            raise _err(path, "class_names", f"must list {num_classes} names")
        return BenchmarkTask(
            train=_seg_cases(raw["train"], base, path, "train", stem),
            test=_seg_cases(raw["test"], base, path, "test", stem),
            label_map=label_map,
            class_names=None if names is None else tuple(str(n) for n in names),
            **common,
        )
    if "csv" not in raw:
        raise _err(path, "csv", "is required for classification")
    task_type = raw.get("task_type", "binary")
    if task_type not in ("binary", "multiclass", "multilabel"):
        raise _err(
            path, "task_type", f"must be binary, multiclass or multilabel, got {task_type!r}"
        )
    if task_type == "binary" and num_classes != 1:
        raise _err(path, "num_classes", f"a binary task has 1 output, got {num_classes}")
    targets = raw.get("target_columns", ["label"])
    if not isinstance(targets, list) or not targets:
        raise _err(path, "target_columns", f"must be a non-empty list, got {targets!r}")
    if task_type == "multilabel" and len(targets) != num_classes:
        raise _err(
            path, "target_columns", f"multilabel needs {num_classes} columns, got {len(targets)}"
        )
    train, test = _csv_cases(raw["csv"], base, path, [str(t) for t in targets], task_type, stem)
    return BenchmarkTask(train=train, test=test, task_type=task_type, **common)
