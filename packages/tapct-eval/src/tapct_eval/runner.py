"""Benchmark runner: features once per model (cached), a probe per seed, mean +- std.

For a :class:`~tapct_eval.task.BenchmarkTask` and a backbone, :func:`run_benchmark`

1. loads every case (injectable ``load_image``/``load_label``; MONAI defaults), applies
   the label map and the in-plane resize, and extracts sliding-window features once,
   caching them under ``output_dir/features/<model_name>/``;
2. trains the paper's head for each seed (segmentation: linear probe, batch 1 x 4
   accumulation; classification: ABMIL on window cls tokens, batch 1 x 16);
3. reports mean +- std over seeds as a rich table, ``results.json`` and ``results.csv``,
   plus PNG figures (segmentation overlay, retrieval heat map) for segmentation tasks.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from .abmil import ABMILTrainingConfig, predict_abmil, train_abmil
from .encoders import Encoder, as_encoder
from .features import ExtractedFeatures, extract_features
from .figures import plot_retrieval_heatmap, plot_segmentation_overlay
from .labels import TOTALSEGMENTATOR_49_CLASSES, merge_totalsegmentator_labels, remap_labels
from .loading import IntensityStats, load_image_monai, load_label_monai
from .metrics import (
    FoldSummary,
    auc_score,
    micro_average_precision,
    multilabel_micro_auc,
    summarize_folds,
)
from .retrieval import masked_patch_features, retrieve_patches
from .segmentation import (
    LinearSegmentationProbe,
    ProbeTrainingConfig,
    evaluate_segmentation,
    predict_segmentation,
    train_segmentation_probe,
)
from .task import BenchmarkCase, BenchmarkTask, load_task

__all__ = ["BenchmarkResults", "run_benchmark"]

ImageLoader = Callable[[Path], torch.Tensor]
LabelLoader = Callable[[Path, Path], torch.Tensor]
Preprocess = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


@attrs.frozen
class BenchmarkResults:
    """Results of one task for one model.

    Attributes:
        task: task name.
        model: model name.
        metric: name of the main metric (``dice``, ``auc``, ``micro_auc``).
        summary: main metric over seeds.
        per_seed: main metric of each seed.
        per_class: per-class (segmentation) or secondary metrics, name -> summary.
        files: written outputs (json, csv, figures).
    """

    task: str
    model: str
    metric: str
    summary: FoldSummary
    per_seed: tuple[float, ...]
    per_class: dict[str, FoldSummary]
    files: dict[str, Path]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN written as null)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        def summ(s: FoldSummary) -> dict[str, Any]:
            return {
                "mean": num(s.mean),
                "std": num(s.std),
                "n_valid": s.n_valid,
                "n_total": s.n_total,
            }

        return {
            "task": self.task,
            "model": self.model,
            "metric": self.metric,
            **summ(self.summary),
            "per_seed": [num(v) for v in self.per_seed],
            "per_class": {k: summ(v) for k, v in self.per_class.items()},
        }


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


def _load_case(task, case: BenchmarkCase, load_image, load_label, preprocess):
    image = load_image(case.image)
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(
            f"load_image({case.image}) must give (1, D, H, W), got {tuple(image.shape)}"
        )
    label = None
    if case.label is not None:
        label = torch.as_tensor(load_label(case.label, case.image)).long()
        if task.label_map == "totalsegmentator_49":
            label = merge_totalsegmentator_labels(label)
        elif task.label_map is not None:
            label = remap_labels(label, task.label_map)
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise ValueError(
                f"label {case.label} grid {tuple(label.shape)} differs from image "
                f"{case.image} grid {tuple(image.shape[1:])}"
            )
        if int(label.max()) >= task.num_classes:
            raise ValueError(
                f"label {case.label} holds id {int(label.max())} >= num_classes "
                f"{task.num_classes} (set label_map?)"
            )
    return preprocess(image.float(), label)


def _class_names(task: BenchmarkTask) -> tuple[str, ...]:
    if task.class_names is not None:
        return task.class_names
    if task.label_map == "totalsegmentator_49" and task.num_classes == 49:
        return TOTALSEGMENTATOR_49_CLASSES
    return tuple(f"class_{i}" for i in range(task.num_classes))


def _patch_mask(
    label: torch.Tensor, cls: int, patch: Sequence[int], grid: Sequence[int]
) -> torch.Tensor:
    one = (label == cls).float()[None, None]
    full = [g * p for g, p in zip(grid, patch)]
    one = F.pad(one, [x for d in (2, 1, 0) for x in (0, full[d] - one.shape[2 + d])])
    return F.avg_pool3d(one, kernel_size=tuple(patch))[0, 0] >= 0.5  # (t, h, w) majority


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
    device: str = "cpu",
    model_name: str | None = None,
    sw_batch_size: int = 1,
    console: Console | None = None,
    figures: bool = True,
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
        console: rich console for the table (default: a new one).
        figures: write the PNG figures.

    Returns:
        :class:`BenchmarkResults`.

    Raises:
        ValueError: on empty seeds, on loader outputs with wrong shapes/grids, when
            neither ``load_image`` nor an intensity is given, or when the window is not a
            multiple of the encoder's stride.
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
    data: dict[str, list] = {"train": [], "test": []}
    for split in ("train", "test"):
        for case in getattr(task, split):
            image, label = _load_case(task, case, load_image, load_label, preprocess)
            feats = _cached_features(
                encoder, image, cache_dir / f"{case.case_id}.pt", task, device, sw_batch_size, roi
            )
            data[split].append((case, image, label, feats))
    if task.kind == "segmentation":
        results = _run_segmentation(task, encoder, name, data, seeds, device, out, figures)
    else:
        results = _run_classification(task, name, data, seeds, device)
    files = _write_reports(results, out, console)
    return attrs.evolve(results, files={**results.files, **files})


def _file_name(name: str) -> str:
    """A model name usable in file names (``timm:vit_s`` -> ``timm_vit_s``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _run_segmentation(task, encoder, name, data, seeds, device, out, figures) -> BenchmarkResults:
    patch = tuple(encoder.stride)
    config = ProbeTrainingConfig(
        steps=task.steps, accumulation_steps=task.accumulation_steps, lr=task.lr
    )
    train_x = [f["patch_features"] for _, _, _, f in data["train"]]
    train_y = [y for _, _, y, _ in data["train"]]
    test_x = [f["patch_features"] for _, _, _, f in data["test"]]
    test_y = [y for _, _, y, _ in data["test"]]
    names = _class_names(task)[1:]
    per_seed: list[float] = []
    per_class_rows: list[torch.Tensor] = []
    first_probe: LinearSegmentationProbe | None = None
    for seed in seeds:
        probe = train_segmentation_probe(
            train_x,
            train_y,
            task.num_classes,
            patch_size=patch,
            config=config,
            seed=seed,
            device=device,
        )
        if first_probe is None:
            first_probe = probe
        dice = evaluate_segmentation(probe, test_x, test_y)  # (n_cases, C - 1)
        case_macro = [
            float(row[~row.isnan()].mean()) if (~row.isnan()).any() else math.nan for row in dice
        ]
        per_seed.append(
            summarize_folds(case_macro).mean
            if any(not math.isnan(v) for v in case_macro)
            else math.nan
        )
        valid = ~dice.isnan()
        per_class_rows.append(
            torch.where(
                valid.any(0),
                dice.nan_to_num(0).sum(0) / valid.sum(0).clamp(min=1),
                torch.full_like(dice[0], math.nan),
            )
        )
    stacked = torch.stack(per_class_rows)  # (n_seeds, C - 1)
    per_class = {
        n: summarize_folds(stacked[:, i].tolist())
        for i, n in enumerate(names)
        if not bool(stacked[:, i].isnan().all())
    }
    files: dict[str, Path] = {}
    if figures:
        if first_probe is None:
            raise ValueError("seeds must not be empty")
        case, image, label, feats = data["test"][0]
        pred = predict_segmentation(first_probe, feats["patch_features"], label.shape)
        files["overlay"] = plot_segmentation_overlay(
            image,
            label,
            pred,
            out / "figures" / f"{task.name}_{_file_name(name)}_overlay.png",
            num_classes=task.num_classes,
            title=f"{task.name}: {case.case_id} (seed {seeds[0]})",
        )
        _, _, train_label, train_feats = data["train"][0]
        grid = train_feats["patch_features"].shape[1:]
        counts = torch.bincount(train_label.flatten(), minlength=task.num_classes)[1:]
        for cls in (counts.argsort(descending=True) + 1).tolist():
            mask = _patch_mask(train_label, cls, patch, grid)
            if bool(mask.any()):
                query = masked_patch_features(train_feats["patch_features"], mask)
                hit = retrieve_patches(query, feats["patch_features"], k=5)
                files["retrieval"] = plot_retrieval_heatmap(
                    image,
                    hit.similarity,
                    out / "figures" / f"{task.name}_{_file_name(name)}_retrieval.png",
                    top_positions=hit.positions,
                    patch_size=patch,
                    title=f"query: {_class_names(task)[cls]} of {data['train'][0][0].case_id}",
                )
                break
    return BenchmarkResults(
        task.name, name, "dice", summarize_folds(per_seed), tuple(per_seed), per_class, files
    )


def _run_classification(task, name, data, seeds, device) -> BenchmarkResults:
    config = ABMILTrainingConfig(
        steps=task.steps, accumulation_steps=task.accumulation_steps, lr=task.lr
    )
    bags = [f["cls_tokens"] for _, _, _, f in data["train"]]
    targets = [c.target for c, _, _, _ in data["train"]]
    test_bags = [f["cls_tokens"] for _, _, _, f in data["test"]]
    y_test = torch.tensor([c.target for c, _, _, _ in data["test"]])
    main: list[float] = []
    extra: dict[str, list[float]] = {"micro_ap": []}
    for seed in seeds:
        head = train_abmil(
            bags, targets, task.task_type, task.num_classes, config=config, seed=seed, device=device
        )
        scores = predict_abmil(head, test_bags, task.task_type).numpy()
        if task.task_type == "multilabel":
            main.append(multilabel_micro_auc(y_test.numpy(), scores))
        else:
            main.append(auc_score(y_test.numpy(), scores))
        ap_true = (
            y_test.numpy()
            if task.task_type != "multiclass"
            else F.one_hot(y_test, task.num_classes).numpy()
        )
        extra["micro_ap"].append(micro_average_precision(ap_true, scores))
    metric = "micro_auc" if task.task_type == "multilabel" else "auc"
    return BenchmarkResults(
        task.name,
        name,
        metric,
        summarize_folds(main),
        tuple(main),
        {k: summarize_folds(v) for k, v in extra.items()},
        {},
    )


def _write_reports(
    results: BenchmarkResults, out: Path, console: Console | None
) -> dict[str, Path]:
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
    table = Table(
        title=f"{results.task} / {results.model}: {results.metric} (mean ± std over seeds)"
    )
    for column in ("class", "mean", "std", "valid"):
        table.add_column(column)
    for cls, _, s in rows:
        table.add_row(cls, f"{s.mean:.3f}", f"{s.std:.3f}", f"{s.n_valid}/{s.n_total}")
    (console or Console()).print(table)
    return {"json": json_path, "csv": csv_path}
