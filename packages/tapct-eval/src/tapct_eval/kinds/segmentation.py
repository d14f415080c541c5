"""``segmentation``: a linear probe on patch features, Dice per class (paper section 3.3.1).

Also writes the overlay and a patch-retrieval heat map (paper Fig. 2, 4) as figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..figures import plot_retrieval_heatmap, plot_segmentation_overlay
from ..labels import TOTALSEGMENTATOR_49_CLASSES
from ..metrics import summarize_folds
from ..retrieval import masked_patch_features, retrieve_patches
from ..segmentation import (
    LinearSegmentationProbe,
    ProbeTrainingConfig,
    evaluate_segmentation,
    predict_segmentation,
    train_segmentation_probe,
)
from ..task import BenchmarkTask, ParseContext, labelled_cases, parse_label_map
from .base import BenchmarkResults, KindContext, Scan, TaskKind, patch_mask

__all__ = ["SEGMENTATION", "class_names"]


def parse(raw: Mapping[str, Any], ctx: ParseContext) -> dict[str, Any]:
    """The segmentation keys: ``num_classes``, ``label_map``, ``class_names``,
    ``ignore_index``, ``train``, ``test`` (see :mod:`tapct_eval.task`)."""
    num_classes = ctx.require(raw, "num_classes", "segmentation")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ctx.error("num_classes", f"must be a positive int, got {num_classes!r}")
    if num_classes < 2:
        raise ctx.error("num_classes", f"segmentation needs >= 2 classes, got {num_classes}")
    for key in ("train", "test"):
        ctx.require(raw, key, "segmentation")
    label_map = parse_label_map(raw, ctx)
    names = raw.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != num_classes):
        raise ctx.error("class_names", f"must list {num_classes} names")
    ignore_index = raw.get("ignore_index")
    if ignore_index is not None and (
        not isinstance(ignore_index, int)
        or isinstance(ignore_index, bool)
        or 0 <= ignore_index < num_classes
    ):
        raise ctx.error(
            "ignore_index",
            f"must be an int outside the class ids 0..{num_classes - 1} (e.g. 255 or -1), "
            f"got {ignore_index!r}",
        )
    return {
        "ignore_index": ignore_index,
        "num_classes": num_classes,
        "train": labelled_cases(raw["train"], ctx, "train"),
        "test": labelled_cases(raw["test"], ctx, "test"),
        "label_map": label_map,
        "class_names": None if names is None else tuple(str(n) for n in names),
    }


def _label(scan: Scan) -> torch.Tensor:
    if scan.label is None:  # the segmentation cases always carry a label path
        raise ValueError(f"{scan.scan_id}: no label map")
    return scan.label


def _without_ignored(label: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Labels with ``ignore_index`` voxels shown as background (for figures)."""
    return label if ignore_index is None else label.masked_fill(label == ignore_index, 0)


def class_names(task: BenchmarkTask) -> tuple[str, ...]:
    """The task's class names (given, TotalSegmentator's 49, or ``class_<i>``)."""
    if task.class_names is not None:
        return task.class_names
    num_classes = task.num_classes or 0
    if task.label_map == "totalsegmentator_49" and num_classes == 49:
        return TOTALSEGMENTATOR_49_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def run(ctx: KindContext) -> BenchmarkResults:
    """Train a linear probe per seed; macro Dice over test cases (mean +- std over seeds).

    Returns:
        :class:`BenchmarkResults` with metric ``dice`` and the per-class Dice.
    """
    task, seeds, patch, device, name = (
        ctx.task,
        ctx.seeds,
        ctx.patch_size,
        ctx.device,
        ctx.model_name,
    )
    num_classes = int(task.num_classes or 0)
    train = [ctx.scan(c.case_id, c.image, c.label) for c in task.train]
    test = [ctx.scan(c.case_id, c.image, c.label) for c in task.test]
    config = ProbeTrainingConfig(
        steps=task.steps, accumulation_steps=task.accumulation_steps, lr=task.lr
    )
    train_x = [s.patch_features for s in train]
    train_y = [_label(s) for s in train]
    test_x = [s.patch_features for s in test]
    test_y = [_label(s) for s in test]
    names = class_names(task)[1:]
    per_seed: list[float] = []
    per_class_rows: list[torch.Tensor] = []
    first_probe: LinearSegmentationProbe | None = None
    for seed in seeds:
        probe = train_segmentation_probe(
            train_x,
            train_y,
            num_classes,
            patch_size=patch,
            config=config,
            seed=seed,
            device=device,
            ignore_index=task.ignore_index,
            on_step=ctx.steps_of(seed),
        )
        if first_probe is None:
            first_probe = probe
        # (n_cases, C - 1); ignore_index voxels left out
        dice = evaluate_segmentation(probe, test_x, test_y, ignore_index=task.ignore_index)
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
    files = {}
    if ctx.figures and first_probe is not None:
        scan, case = test[0], task.test[0]
        label = scan.label
        assert label is not None
        label = _without_ignored(label, task.ignore_index)
        pred = predict_segmentation(first_probe, scan.patch_features, label.shape)
        files["overlay"] = plot_segmentation_overlay(
            scan.image,
            label,
            pred,
            ctx.figure_path("overlay"),
            num_classes=num_classes,
            title=f"{task.name}: {case.case_id} (seed {seeds[0]})",
        )
        train_label = train[0].label
        assert train_label is not None
        train_label = _without_ignored(train_label, task.ignore_index)
        grid = tuple(train[0].patch_features.shape[1:])
        counts = torch.bincount(train_label.flatten(), minlength=num_classes)[1:]
        for cls in (counts.argsort(descending=True) + 1).tolist():
            mask = patch_mask(train_label, cls, patch, grid)
            if bool(mask.any()):
                query = masked_patch_features(train[0].patch_features, mask)
                hit = retrieve_patches(query, scan.patch_features, k=5)
                files["retrieval"] = plot_retrieval_heatmap(
                    scan.image,
                    hit.similarity,
                    ctx.figure_path("retrieval"),
                    top_positions=hit.positions,
                    patch_size=patch,
                    title=f"query: {class_names(task)[cls]} of {task.train[0].case_id}",
                )
                break
    return BenchmarkResults(
        task.name,
        name,
        "dice",
        summarize_folds(per_seed),
        tuple(per_seed),
        per_class,
        files,
        kind="segmentation",
    )


SEGMENTATION = TaskKind(
    parse=parse,
    run=run,
    accumulation_steps=4,
    lr=1e-2,
    summary="linear probe on patch features; Dice per class",
    keys=("num_classes", "label_map", "class_names", "ignore_index", "train", "test"),
)
