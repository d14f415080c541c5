"""``localisation``: a structure's centroid from patch features (heat map + soft-argmax).

A 1x1x1 convolution scores every patch of the frozen feature grid; a softmax over the
grid turns the scores into a heat map whose expectation over the patch centres (in mm) is
the predicted coordinate (soft-argmax; Nibali et al. 2018, "Numerical coordinate
regression with convolutional neural networks"). The target is the centroid of the
structure's voxels, in mm on the loaded image's grid (``index * spacing``, axes
``(z, y, x)`` = ``(D, H, W)``). The head trains with a mean squared error on the
coordinates in units of the patch size, batch 1 with gradient accumulation; the metric is
the Euclidean error in mm (mean over test cases), with the per-axis mean absolute error
(scikit-learn) beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import mean_absolute_error
from torch import nn

from ..figures import plot_localisation
from ..metrics import summarize_folds
from ..task import CaseError, ParseContext, SegmentationCase, labelled_cases, parse_label_map
from .base import BenchmarkResults, CasePrediction, KindContext, Scan, TaskKind

__all__ = ["LOCALISATION", "SoftArgmaxLocaliser", "patch_centres_mm", "structure_centroid_mm"]


def patch_centres_mm(
    grid: tuple[int, ...], patch: tuple[int, int, int], spacing: tuple[float, float, float]
) -> torch.Tensor:
    """Centres of the patches of a feature grid in mm.

    Args:
        grid: ``(t, h, w)``.
        patch: ``(pd, ph, pw)`` voxels per patch.
        spacing: ``(sd, sh, sw)`` mm per voxel.

    Returns:
        ``(t * h * w, 3)`` float32 ``(z, y, x)`` in mm (voxel ``i`` sits at ``i * s``).
    """
    axes = [
        (torch.arange(g, dtype=torch.float32) * p + (p - 1) / 2) * s
        for g, p, s in zip(grid, patch, spacing, strict=True)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def structure_centroid_mm(
    label: torch.Tensor, structure: int, spacing: tuple[float, float, float]
) -> torch.Tensor:
    """Centroid of the voxels of one label id, in mm.

    Args:
        label: ``(D, H, W)`` int label map.
        structure: the id.
        spacing: ``(sd, sh, sw)`` mm per voxel.

    Returns:
        ``(3,)`` float32 ``(z, y, x)`` in mm.

    Raises:
        ValueError: when the label holds no voxel of ``structure``.
    """
    idx = (label == structure).nonzero().float()
    if not len(idx):
        raise ValueError(f"the label map holds no voxel of structure {structure}")
    return idx.mean(0) * torch.tensor(spacing, dtype=torch.float32)


class SoftArgmaxLocaliser(nn.Module):
    """Per-patch scores -> softmax heat map -> expected patch centre.

    Shapes:
        ``forward(features (B, E, t, h, w), centres (t*h*w, 3)) -> (B, 3)``;
        ``heatmap(features) -> (B, t, h, w)`` (sums to 1).
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.score = nn.Conv3d(in_dim, 1, kernel_size=1)

    def heatmap(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax over the grid of the patch scores."""
        logits = self.score(features)[:, 0]  # (B, t, h, w)
        return logits.flatten(1).softmax(1).view_as(logits)

    def forward(self, features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Expected coordinates under the heat map."""
        return self.heatmap(features).flatten(1) @ centres


def _case_inputs(scan: Scan, case: SegmentationCase, structure: int, patch: tuple[int, int, int]):
    if scan.spacing is None:
        raise CaseError(
            f"{case.image}: localisation needs the voxel spacing: give run_benchmark a "
            "load_spacing or set 'spacing' in the task file"
        )
    assert scan.label is not None
    try:
        target = structure_centroid_mm(scan.label, structure, scan.spacing)
    except ValueError as exc:
        raise CaseError(f"{case.label}: {exc}") from None
    centres = patch_centres_mm(tuple(scan.patch_features.shape[1:]), patch, scan.spacing)
    return scan.patch_features.float(), centres, target


def parse(raw: Mapping[str, Any], ctx: ParseContext) -> dict[str, Any]:
    """The localisation keys: ``structure``, ``spacing``, ``label_map``, ``train``, ``test``."""
    structure = ctx.require(raw, "structure", "localisation")
    if not isinstance(structure, int) or isinstance(structure, bool) or structure < 1:
        raise ctx.error("structure", f"must be a positive label id, got {structure!r}")
    spacing = raw.get("spacing")
    if spacing is not None and (
        not isinstance(spacing, list)
        or len(spacing) != 3
        or not all(isinstance(v, int | float) and v > 0 for v in spacing)
    ):
        raise ctx.error("spacing", f"must be 3 positive numbers (mm), got {spacing!r}")
    for key in ("train", "test"):
        ctx.require(raw, key, "localisation")
    return {
        "structure": structure,
        "spacing": None if spacing is None else tuple(float(v) for v in spacing),
        "label_map": parse_label_map(raw, ctx),
        "train": labelled_cases(raw["train"], ctx, "train"),
        "test": labelled_cases(raw["test"], ctx, "test"),
    }


def run(ctx: KindContext) -> BenchmarkResults:
    """Train a soft-argmax localiser per seed; Euclidean centroid error in mm.

    Returns:
        :class:`BenchmarkResults` with metric ``error_mm`` and ``mae_z_mm``,
        ``mae_y_mm``, ``mae_x_mm`` in ``per_class``.

    Raises:
        CaseError: when a case lacks the structure or its spacing is unknown.
    """
    task, patch, device = ctx.task, ctx.patch_size, ctx.device
    structure = int(task.structure or 0)
    train_scans = [ctx.scan(c.case_id, c.image, c.label) for c in task.train]
    train = [
        _case_inputs(s, c, structure, patch) for s, c in zip(train_scans, task.train, strict=True)
    ]
    test_scans = [ctx.scan(c.case_id, c.image, c.label) for c in task.test]
    test = [
        _case_inputs(s, c, structure, patch) for s, c in zip(test_scans, task.test, strict=True)
    ]
    y_test = torch.stack([t for _, _, t in test]).numpy()
    # the loss counts in patch sizes (mm) of the first training scan
    scale = float(np.mean([p * s for p, s in zip(patch, train_scans[0].spacing or (1, 1, 1))]))
    errors: list[float] = []
    axis_mae: list[np.ndarray] = []
    predictions: list[CasePrediction] = []
    first: np.ndarray | None = None
    for seed in ctx.seeds:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = SoftArgmaxLocaliser(train[0][0].shape[0]).to(device).train()
            opt = torch.optim.AdamW(head.parameters(), lr=task.lr)
            order: list[int] = []
            on_step = ctx.steps_of(seed)
            for step in range(1, task.steps + 1):
                opt.zero_grad(set_to_none=True)
                for _ in range(task.accumulation_steps):
                    if not order:
                        order = torch.randperm(len(train), generator=generator).tolist()
                    x, centres, target = train[order.pop()]
                    pred = head(x[None].to(device), centres.to(device))[0]
                    loss = F.mse_loss(pred / scale, target.to(device) / scale)
                    (loss / task.accumulation_steps).backward()
                opt.step()
                on_step(step)
        head.eval()
        with torch.no_grad():
            pred_test = torch.stack(
                [head(x[None].to(device), c.to(device))[0].cpu() for x, c, _ in test]
            ).numpy()
        first = pred_test if first is None else first
        errors.append(float(np.linalg.norm(pred_test - y_test, axis=1).mean()))
        axis_mae.append(mean_absolute_error(y_test, pred_test, multioutput="raw_values"))
        predictions += [
            CasePrediction(seed, c.case_id, tuple(map(float, p)), tuple(map(float, t)))
            for c, p, t in zip(task.test, pred_test, y_test, strict=True)
        ]
    per_axis = np.stack(axis_mae)  # (n_seeds, 3)
    files = {}
    if ctx.figures and first is not None:
        scan = test_scans[0]
        spacing = np.asarray(scan.spacing)
        files["localisation"] = plot_localisation(
            scan.image,
            y_test[0] / spacing,
            first[0] / spacing,
            ctx.figure_path("localisation"),
            title=f"{task.name}: structure {structure} in {task.test[0].case_id}",
        )
    return BenchmarkResults(
        task.name,
        ctx.model_name,
        "error_mm",
        summarize_folds(errors),
        tuple(errors),
        {f"mae_{a}_mm": summarize_folds(per_axis[:, i].tolist()) for i, a in enumerate("zyx")},
        files,
        kind="localisation",
        predictions=tuple(predictions),
    )


LOCALISATION = TaskKind(
    parse=parse,
    run=run,
    accumulation_steps=4,
    lr=1e-2,
    summary="heat map + soft-argmax on patch features; centroid error in mm",
    keys=("structure", "spacing", "label_map", "train", "test"),
)
