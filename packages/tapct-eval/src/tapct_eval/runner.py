"""Benchmark runner: features once per model (cached), a probe per seed, mean +- std.

For a :class:`~tapct_eval.task.BenchmarkTask` and a backbone, :func:`run_benchmark`

1. looks the task's kind up in :data:`~tapct_eval.kinds.TASK_KINDS`;
2. hands the kind a scan loader that loads a case (injectable ``load_image``/
   ``load_label``; MONAI defaults), applies the label map and the in-plane resize, and
   extracts sliding-window features once, caching them under
   ``output_dir/features/<model_name>/``;
3. the kind trains its head for each seed and returns typed
   :class:`~tapct_eval.kinds.BenchmarkResults` (mean +- std over seeds) with its figures;
4. writes ``results.json``, ``results.csv`` and, for kinds with per-case outputs,
   ``predictions.csv``. Printing tables is the caller's business (the ``tapct`` app).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from .encoders import Encoder, as_encoder
from .features import ExtractedFeatures, extract_features
from .kinds import TASK_KINDS, BenchmarkResults, KindContext, Scan
from .kinds.base import Ticker
from .kinds.base import file_name as _file_name
from .label_checks import prepare_label
from .loading import IntensityStats, load_image_monai, load_label_monai
from .task import BenchmarkTask, CaseError, load_task

__all__ = ["BenchmarkResults", "run_benchmark", "write_results"]

ImageLoader = Callable[[Path], torch.Tensor]
LabelLoader = Callable[[Path, Path], torch.Tensor]
SpacingLoader = Callable[[Path], Sequence[float]]
Preprocess = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


def _default_preprocess(task: BenchmarkTask, encoder: Encoder) -> Preprocess:
    """In-plane resize to the encoder's size, else the task's (``Preprocessing.resize``)."""
    prep = encoder.preprocessing
    if prep.in_plane_size is None and task.in_plane_size is not None:
        prep = attrs.evolve(prep, in_plane_size=task.in_plane_size)
    return prep.resize


def _cached_features(
    model: Encoder,
    image: torch.Tensor,
    cache: Path,
    task: BenchmarkTask,
    device: str,
    sw_batch_size: int,
    roi: tuple[int, int, int],
) -> dict[str, torch.Tensor]:
    key = {
        "roi_size": list(roi),
        "overlap": task.overlap,
        "shape": list(image.shape),
        "blend": [task.blend_mode, task.sigma_scale],
    }
    if cache.is_file():
        stored = torch.load(cache, weights_only=True)
        if json.loads(bytes(stored["key"].tolist()).decode()) == key:
            return stored
    feats: ExtractedFeatures = extract_features(
        model,
        image,
        roi,
        overlap=task.overlap,
        sw_batch_size=sw_batch_size,
        device=device,
        pad_value=model.preprocessing.pad_value,
        mode=task.blend_mode,
        sigma_scale=task.sigma_scale,
    )
    stored = {
        "patch_features": feats.load_patch_features(),
        "cls_tokens": feats.cls_tokens,
        "window_positions": feats.window_positions,
        "key": torch.tensor(list(json.dumps(key).encode()), dtype=torch.uint8),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(stored, tmp)
    tmp.replace(cache)
    return stored


def _load_case(
    task, image: torch.Tensor, image_path: Path, label_path: Path | None, load_label, preprocess
):
    if image.ndim != 4 or image.shape[0] != 1:
        raise CaseError(
            f"{image_path}: load_image must give (1, D, H, W), got {tuple(image.shape)}"
        )
    label = None
    if label_path is not None:
        # The one check of label values (label map, classes, ignore_index): LabelError.
        label = prepare_label(
            torch.as_tensor(load_label(label_path, image_path)),
            label_path,
            num_classes=task.num_classes,
            label_map=task.label_map,
            ignore_index=task.ignore_index,
            task_file=task.source,
        )
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise CaseError(
                f"{label_path}: label grid {tuple(label.shape)} differs from image "
                f"{image_path} grid {tuple(image.shape[1:])}"
            )
    return preprocess(image.float(), label)


def run_benchmark(
    task: BenchmarkTask | str | Path,
    model: Encoder | nn.Module,
    output_dir: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    load_image: ImageLoader | None = None,
    load_label: LabelLoader | None = None,
    intensity: IntensityStats | Sequence[float] | None = None,
    preprocess: Preprocess | None = None,
    load_spacing: SpacingLoader | None = None,
    device: str = "cpu",
    model_name: str | None = None,
    sw_batch_size: int = 1,
    figures: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> BenchmarkResults:
    """Run one benchmark task for one frozen encoder over several seeds.

    Args:
        task: a :class:`BenchmarkTask` or a task file path (see :func:`load_task`).
        model: an :class:`~tapct_eval.encoders.Encoder` (our ViT, a timm model slice by
            slice, a MONAI encoder, ...) or a backbone with the DINOv2 interface
            (``.patch_size``, ``.embed_dim``, ``forward_features``/
            ``get_intermediate_layers``). The sliding window is the task's ``roi_size``
            as the encoder resolves it (``Preprocessing.resolve_window``: e.g. whole
            resized slices for a 2D model, multiples of 32 for SwinUNETR), padded with
            the encoder's air value.
        output_dir: where features (``features/<model_name>/``), ``results.json``,
            ``results.csv`` and ``figures/`` are written.
        seeds: one head is trained per seed; results are mean +- std over them.
        load_image: ``path -> (1, D, H, W)`` float32 normalised volume. Default
            :func:`~tapct_eval.loading.load_image_monai` (MONAI, canonical LPS axial-first)
            normalised with ``intensity``.
        load_label: ``(label_path, image_path) -> (D, H, W)`` int64 on the image grid.
            Default :func:`~tapct_eval.loading.load_label_monai`.
        load_spacing: ``image_path -> (sd, sh, sw)`` voxel size in mm of what
            ``load_image`` returns (localisation; default the task's ``spacing``). An
            in-plane resize by ``preprocess`` is accounted for.
        intensity: the clip/normalisation statistics the model was trained with
            (:class:`~tapct_eval.loading.ClipStats`, ``tapct_data.NormalizeConfig`` or
            ``(lower, upper, mean, std)`` in HU); default the encoder's
            ``preprocessing.intensity``; one of them is required when ``load_image`` is
            None.
        preprocess: ``(image, label | None) -> (image, label)`` applied after loading
            (default: in-plane resize to the encoder's ``preprocessing.in_plane_size``,
            else ``task.in_plane_size`` when set, trilinear for the
            image, nearest for labels). Pass ``lambda i, l: (i, l)`` to take loader outputs
            as final.
        device: where the backbone and heads run.
        model_name: names the feature cache and the results (default: class name).
        sw_batch_size: windows per backbone call.
        figures: write the PNG figures.
        progress: ``(done, total, what)`` called after the features of each scan and
            after each optimizer step of a head (:class:`~tapct_eval.kinds.base.Ticker`).

    Returns:
        :class:`~tapct_eval.kinds.BenchmarkResults` (``files`` holds the written
        outputs).

    Raises:
        ValueError: on empty seeds, when neither ``load_image`` nor an intensity is
            given, or when the window is not a multiple of the encoder's stride.
        CaseError: (a ValueError) on loader outputs with wrong shapes/grids and on a
            case the kind cannot use (e.g. a structure missing from its label map).
        TaskFileError: when ``task`` is a path to an invalid task file.
    """
    task = task if isinstance(task, BenchmarkTask) else load_task(task)
    if not seeds:
        raise ValueError("seeds must not be empty")
    encoder = as_encoder(model)
    roi = encoder.preprocessing.resolve_window(task.roi_size, encoder.stride)
    if intensity is None:
        intensity = encoder.preprocessing.intensity
    if load_image is None:
        if intensity is None:
            raise ValueError(
                "run_benchmark: pass intensity=(lower, upper, mean, std) in HU (the "
                "statistics the model was trained with) or a load_image that normalises"
            )
        stats = intensity

        def load_image(path: Path) -> torch.Tensor:
            return load_image_monai(path, stats)

    load_label = load_label or load_label_monai
    preprocess = preprocess or _default_preprocess(task, encoder)
    name = model_name or type(model).__name__
    out = Path(output_dir)
    cache_dir = out / "features" / _file_name(name) / task.name

    n_cases = len(task.train) + len(task.test)
    ticker = Ticker(progress, n_cases + (len(seeds) * task.steps if task.train else 0), task.steps)
    loaded: dict[tuple[Path, Path | None], tuple[torch.Tensor, Any, Any]] = {}

    def load(image_path: Path, label_path: Path | None):
        raw = load_image(image_path)
        # Right after the image: a loader that caches its last read answers from it.
        given = load_spacing(image_path) if load_spacing is not None else task.spacing
        image, label = _load_case(task, raw, image_path, label_path, load_label, preprocess)
        spacing = None
        if given is not None:  # the voxel size of the preprocessed grid
            sd, sh, sw = (
                float(s) * r / n
                for s, r, n in zip(given, raw.shape[1:], image.shape[1:], strict=True)
            )
            spacing = (sd, sh, sw)
        return image, label, spacing

    # Every label is loaded and checked against its image before any feature is computed,
    # so a bad label stops the run at once (LabelError) instead of after hours of windows.
    for case in (*task.train, *task.test):
        label_path = getattr(case, "label", None)
        if label_path is not None:
            loaded[(case.image, label_path)] = load(case.image, label_path)

    def scan(scan_id: str, image_path: Path, label_path: Path | None) -> Scan:
        cached = loaded.pop((image_path, label_path), None)
        image, label, spacing = cached if cached is not None else load(image_path, label_path)
        feats = _cached_features(
            encoder, image, cache_dir / f"{scan_id}.pt", task, device, sw_batch_size, roi
        )
        ticker(f"features of {scan_id}")
        return Scan(
            scan_id, image, label, feats["patch_features"], feats["cls_tokens"], spacing
        )

    context = KindContext(
        task=task,
        model_name=name,
        seeds=tuple(seeds),
        device=device,
        output_dir=out,
        figures=figures,
        patch_size=(int(encoder.stride[0]), int(encoder.stride[1]), int(encoder.stride[2])),
        scan=scan,
        ticker=ticker,
    )
    results = TASK_KINDS[task.kind].run(context)
    files = write_results(results, out)
    return attrs.evolve(results, files={**results.files, **files})


def write_results(results: BenchmarkResults, out: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and (when there are any) ``predictions.csv``.

    Args:
        results: one task's results.
        out: the results folder (created).

    Returns:
        ``{"json": path, "csv": path[, "predictions": path]}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results.to_dict(), indent=2))
    csv_path = out / "results.csv"
    rows = [
        ("all", results.metric, results.summary),
        *[
            (k, results.metric if results.metric == "dice" else k, v)
            for k, v in results.per_class.items()
        ],
    ]
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "model", "class", "metric", "mean", "std", "n_valid", "n_total"])
        for cls, metric, s in rows:
            writer.writerow(
                [results.task, results.model, cls, metric, s.mean, s.std, s.n_valid, s.n_total]
            )
    files = {"json": json_path, "csv": csv_path}
    if results.predictions:
        pred_path = out / "predictions.csv"
        with pred_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["task", "model", "seed", "case_id", "prediction", "target"])
            for p in results.predictions:
                writer.writerow(
                    [
                        results.task,
                        results.model,
                        "" if p.seed is None else p.seed,
                        p.case_id,
                        " ".join(repr(v) for v in p.prediction),
                        " ".join(repr(v) for v in p.target),
                    ]
                )
        files["predictions"] = pred_path
    return files
