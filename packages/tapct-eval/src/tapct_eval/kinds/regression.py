"""``regression``: a linear or ABMIL head on the windows' cls tokens; MAE and Pearson r.

The head sees instances standardised per channel and regresses standardised targets
(train means and stds) with a mean squared error,
batch 1 with gradient accumulation like the classification head (paper C.1). ``linear``
is a linear layer on the mean of the bag's tokens; ``abmil`` is the gated attention pooling
of :class:`~tapct_eval.abmil.ABMIL` with one output per target. Metrics come from
scikit-learn (``mean_absolute_error``) and SciPy (``pearsonr``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr
from sklearn.metrics import mean_absolute_error
from torch import nn

from ..abmil import ABMIL, ABMILTrainingConfig
from ..figures import plot_prediction_scatter
from ..metrics import UndefinedMetricWarning, summarize_folds
from ..task import ParseContext, RegressionCase, csv_cases
from .base import BenchmarkResults, CasePrediction, KindContext, TaskKind

__all__ = ["REGRESSION", "MeanPoolLinear", "regression_metrics", "train_bag_regressor"]


class MeanPoolLinear(nn.Module):
    """A linear layer on the mean of a bag's instances.

    Shapes:
        ``forward(x (B, N, E)) -> (B, num_outputs)``.
    """

    def __init__(self, in_dim: int, num_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the mean-pooled bags."""
        return self.linear(x.mean(1))


class BagRegressor(nn.Module):
    """A head between standardisations: instances by the train instances' mean and std
    per channel, outputs by the train targets' mean and std (predictions in the targets'
    units).

    Shapes:
        ``forward(x (B, N, E)) -> (B, T)``.
    """

    def __init__(
        self,
        head: nn.Module,
        in_stats: tuple[torch.Tensor, torch.Tensor],
        out_stats: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        super().__init__()
        self.head = head
        self.in_mean: torch.Tensor
        self.in_std: torch.Tensor
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("in_mean", in_stats[0])
        self.register_buffer("in_std", in_stats[1])
        self.register_buffer("mean", out_stats[0])
        self.register_buffer("std", out_stats[1])

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output for raw instances (standardised targets)."""
        return self.head((x - self.in_mean) / self.in_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in the targets' units."""
        return self.standardised(x) * self.std + self.mean


def train_bag_regressor(
    bags: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    head: str = "linear",
    config: ABMILTrainingConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> BagRegressor:
    """Train a regression head on bags of frozen embeddings (MSE on standardised targets).

    Args:
        bags: per case ``(N_i, E)`` instances (window cls tokens).
        targets: ``(n, T)`` float targets.
        head: ``"linear"`` (:class:`MeanPoolLinear`) or ``"abmil"`` (:class:`ABMIL`).
        config: steps, accumulation (bags per step, one at a time), lr and ABMIL
            settings (default ``ABMILTrainingConfig()``).
        seed: seeds initialisation and the visiting order.
        device: where to train.

    Returns:
        The trained :class:`BagRegressor` (eval mode).

    Raises:
        ValueError: on an unknown head or mismatched inputs.
    """
    config = config or ABMILTrainingConfig()
    if head not in ("linear", "abmil"):
        raise ValueError(f"head must be linear or abmil, got {head!r}")
    targets = torch.as_tensor(targets, dtype=torch.float32)
    if not bags or targets.ndim != 2 or len(bags) != len(targets):
        raise ValueError(
            f"need n > 0 bags and (n, T) targets, got {len(bags)} and {tuple(targets.shape)}"
        )
    mean = targets.mean(0)
    std = targets.std(0, unbiased=False).clamp(min=1e-8)
    z = (targets - mean) / std
    instances = torch.cat([b.float().reshape(-1, b.shape[-1]) for b in bags])
    in_stats = (instances.mean(0), instances.std(0, unbiased=False).clamp(min=1e-6))
    generator = torch.Generator().manual_seed(seed)
    in_dim, n_out = bags[0].shape[-1], targets.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net: nn.Module = (
            MeanPoolLinear(in_dim, n_out)
            if head == "linear"
            else ABMIL(in_dim, n_out, config.hidden_dim, config.gated, config.dropout)
        )
        model = BagRegressor(
            net, (in_stats[0].to(device), in_stats[1].to(device)), (mean.to(device), std.to(device))
        ).to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        order: list[int] = []
        for _ in range(config.steps):
            opt.zero_grad(set_to_none=True)
            for _ in range(config.accumulation_steps):
                if not order:
                    order = torch.randperm(len(bags), generator=generator).tolist()
                i = order.pop()
                out = model.standardised(bags[i].to(device, torch.float32)[None])  # (1, T)
                loss = F.mse_loss(out, z[i].to(device)[None])
                (loss / config.accumulation_steps).backward()
            opt.step()
    return model.eval()


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE (scikit-learn) and Pearson r (SciPy), averaged over target columns.

    Args:
        y_true: ``(n, T)`` targets.
        y_pred: ``(n, T)`` predictions.

    Returns:
        ``{"mae": ..., "pearson_r": ...}``; r is NaN (with an
        :class:`~tapct_eval.metrics.UndefinedMetricWarning`) for a constant column or
        fewer than 2 cases.
    """
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    rs = []
    for t in range(y_true.shape[1]):
        if len(y_true) < 2 or np.ptp(y_true[:, t]) == 0 or np.ptp(y_pred[:, t]) == 0:
            warnings.warn(
                "Pearson r is undefined for a constant column; NaN",
                UndefinedMetricWarning,
                stacklevel=2,
            )
            rs.append(math.nan)
        else:
            rs.append(float(pearsonr(y_true[:, t], y_pred[:, t]).statistic))
    r = math.nan if all(math.isnan(v) for v in rs) else float(np.nanmean(rs))
    return {"mae": float(mean_absolute_error(y_true, y_pred)), "pearson_r": r}


def parse(raw: Mapping[str, Any], ctx: ParseContext) -> dict[str, Any]:
    """The regression keys: ``csv``, ``target_columns``, ``head``."""
    csv_file = ctx.require(raw, "csv", "regression")
    targets = raw.get("target_columns", ["target"])
    if not isinstance(targets, list) or not targets:
        raise ctx.error("target_columns", f"must be a non-empty list, got {targets!r}")
    head = raw.get("head", "linear")
    if head not in ("linear", "abmil"):
        raise ctx.error("head", f"must be linear or abmil, got {head!r}")
    columns = [str(t) for t in targets]

    def make_case(case_id: str, image: Path, row: dict[str, str]) -> RegressionCase:
        try:
            values = tuple(float(row[c]) for c in columns)
        except ValueError as exc:
            raise ValueError(f"targets must be numbers ({exc})") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"targets must be finite, got {values}")
        return RegressionCase(case_id, image, values)

    train, test = csv_cases(csv_file, ctx, columns, make_case)
    return {"target_columns": tuple(columns), "head": head, "train": train, "test": test}


def run(ctx: KindContext) -> BenchmarkResults:
    """Train a regression head per seed; MAE (main) and Pearson r over the test cases.

    Returns:
        :class:`BenchmarkResults` with metric ``mae`` and ``pearson_r`` in ``per_class``.
    """
    task = ctx.task
    bags = [ctx.scan(c.case_id, c.image, None).cls_tokens for c in task.train]
    test_bags = [ctx.scan(c.case_id, c.image, None).cls_tokens for c in task.test]
    y_train = torch.tensor([c.target for c in task.train], dtype=torch.float32)
    y_test = np.array([c.target for c in task.test], dtype=float)
    config = ABMILTrainingConfig(
        steps=task.steps, accumulation_steps=task.accumulation_steps, lr=task.lr
    )
    maes: list[float] = []
    rs: list[float] = []
    predictions: list[CasePrediction] = []
    first: np.ndarray | None = None
    for seed in ctx.seeds:
        model = train_bag_regressor(
            bags, y_train, head=task.head or "linear", config=config, seed=seed, device=ctx.device
        )
        ctx.seed_done(seed)
        with torch.no_grad():
            pred = torch.cat(
                [model(b.to(ctx.device, torch.float32)[None]).cpu() for b in test_bags]
            ).numpy()
        first = pred if first is None else first
        m = regression_metrics(y_test, pred)
        maes.append(m["mae"])
        rs.append(m["pearson_r"])
        predictions += [
            CasePrediction(seed, c.case_id, tuple(map(float, p)), c.target)
            for c, p in zip(task.test, pred, strict=True)
        ]
    files = {}
    if ctx.figures and first is not None:
        files["scatter"] = plot_prediction_scatter(
            y_test[:, 0],
            first[:, 0],
            ctx.figure_path("scatter"),
            xlabel=f"true {task.target_columns[0]}",
            ylabel=f"predicted {task.target_columns[0]}",
            title=f"{task.name} / {ctx.model_name} (seed {ctx.seeds[0]})",
            identity=True,
        )
    return BenchmarkResults(
        task.name,
        ctx.model_name,
        "mae",
        summarize_folds(maes),
        tuple(maes),
        {"pearson_r": summarize_folds(rs)},
        files,
        kind="regression",
        predictions=tuple(predictions),
    )


REGRESSION = TaskKind(
    parse=parse,
    run=run,
    accumulation_steps=16,
    lr=1e-3,
    summary="linear or ABMIL head on window cls tokens; MAE and Pearson r",
    keys=("csv", "target_columns", "head"),
)
