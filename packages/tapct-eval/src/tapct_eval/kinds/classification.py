"""``classification``: ABMIL on the windows' cls tokens, AUC (paper section 3.3.2)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..abmil import ABMILTrainingConfig, predict_abmil, train_abmil
from ..figures import plot_roc_curves
from ..metrics import auc_score, micro_average_precision, multilabel_micro_auc, summarize_folds
from ..task import ClassificationCase, ParseContext, csv_cases
from .base import BenchmarkResults, CasePrediction, KindContext, TaskKind

__all__ = ["CLASSIFICATION"]


def parse(raw: Mapping[str, Any], ctx: ParseContext) -> dict[str, Any]:
    """The classification keys: ``csv``, ``task_type``, ``target_columns``,
    ``num_classes`` (see :mod:`tapct_eval.task`)."""
    num_classes = ctx.require(raw, "num_classes", "classification")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ctx.error("num_classes", f"must be a positive int, got {num_classes!r}")
    csv_file = ctx.require(raw, "csv", "classification")
    task_type = raw.get("task_type", "binary")
    if task_type not in ("binary", "multiclass", "multilabel"):
        raise ctx.error("task_type", f"must be binary, multiclass or multilabel, got {task_type!r}")
    if task_type == "binary" and num_classes != 1:
        raise ctx.error("num_classes", f"a binary task has 1 output, got {num_classes}")
    targets = raw.get("target_columns", ["label"])
    if not isinstance(targets, list) or not targets:
        raise ctx.error("target_columns", f"must be a non-empty list, got {targets!r}")
    if task_type == "multilabel" and len(targets) != num_classes:
        raise ctx.error(
            "target_columns", f"multilabel needs {num_classes} columns, got {len(targets)}"
        )
    columns = [str(t) for t in targets]

    def make_case(case_id: str, image: Path, row: dict[str, str]) -> ClassificationCase:
        try:
            values = tuple(int(row[c]) for c in columns)
        except ValueError as exc:
            raise ValueError(f"targets must be ints ({exc})") from None
        return ClassificationCase(
            case_id, image, values if task_type == "multilabel" else values[0]
        )

    train, test = csv_cases(csv_file, ctx, columns, make_case)
    return {
        "num_classes": num_classes,
        "task_type": task_type,
        "target_columns": tuple(columns),
        "train": train,
        "test": test,
    }


def _target(case: ClassificationCase) -> tuple[float, ...]:
    t = case.target
    return tuple(float(v) for v in t) if isinstance(t, tuple) else (float(t),)


def run(ctx: KindContext) -> BenchmarkResults:
    """Train an ABMIL head per seed; AUC (micro AUC for multi-label) and micro AP.

    Each seed's test scores are kept as :class:`CasePrediction` rows (``predictions.csv``);
    with figures on, the first seed's ROC curves are written (``<task>_<model>_roc.png``).

    Returns:
        :class:`BenchmarkResults` with metric ``auc`` or ``micro_auc``.
    """
    task = ctx.task
    task_type = task.task_type or "binary"
    num_classes = int(task.num_classes or 1)
    train = [ctx.scan(c.case_id, c.image, None) for c in task.train]
    test = [ctx.scan(c.case_id, c.image, None) for c in task.test]
    config = ABMILTrainingConfig(
        steps=task.steps, accumulation_steps=task.accumulation_steps, lr=task.lr
    )
    bags = [s.cls_tokens for s in train]
    targets = [c.target for c in task.train]
    test_bags = [s.cls_tokens for s in test]
    y_test = torch.tensor([c.target for c in task.test])
    main: list[float] = []
    extra: dict[str, list[float]] = {"micro_ap": []}
    predictions: list[CasePrediction] = []
    first: np.ndarray | None = None
    for seed in ctx.seeds:
        head = train_abmil(
            bags,
            targets,
            task_type,  # type: ignore[arg-type]
            num_classes,
            config=config,
            seed=seed,
            device=ctx.device,
            on_step=ctx.steps_of(seed),
        )
        ctx.seed_done(seed)
        scores = predict_abmil(head, test_bags, task_type).numpy()  # type: ignore[arg-type]
        first = scores if first is None else first
        predictions += [
            CasePrediction(seed, c.case_id, tuple(map(float, np.atleast_1d(p))), _target(c))
            for c, p in zip(task.test, scores, strict=True)
        ]
        if task_type == "multilabel":
            main.append(multilabel_micro_auc(y_test.numpy(), scores))
        else:
            main.append(auc_score(y_test.numpy(), scores))
        ap_true = (
            y_test.numpy() if task_type != "multiclass" else F.one_hot(y_test, num_classes).numpy()
        )
        extra["micro_ap"].append(micro_average_precision(ap_true, scores))
    metric = "micro_auc" if task_type == "multilabel" else "auc"
    files = {}
    if ctx.figures and first is not None:
        truth = y_test if task_type != "multiclass" else F.one_hot(y_test, num_classes)
        files["roc"] = plot_roc_curves(
            truth,
            first,
            ctx.figure_path("roc"),
            class_names=list(task.target_columns) if task_type == "multilabel" else None,
            title=f"{task.name} / {ctx.model_name} (seed {ctx.seeds[0]})",
        )
    return BenchmarkResults(
        task.name,
        ctx.model_name,
        metric,
        summarize_folds(main),
        tuple(main),
        {k: summarize_folds(v) for k, v in extra.items()},
        files,
        kind="classification",
        predictions=tuple(predictions),
    )


CLASSIFICATION = TaskKind(
    parse=parse,
    run=run,
    accumulation_steps=16,
    lr=1e-3,
    summary="ABMIL on window cls tokens; AUC",
    keys=("csv", "task_type", "target_columns", "num_classes"),
)
