"""``survival``: an ABMIL risk score on the windows' cls tokens, trained with the Cox
partial likelihood; Harrell's concordance index.

The ABMIL head (:class:`~tapct_eval.abmil.ABMIL`, one output) gives each case a log hazard
``log h_i``. The Cox partial likelihood needs risk sets, so each step uses
``accumulation_steps`` bags at once (batches without an event are skipped). Loss and
concordance index come from torchsurv (``neg_partial_log_likelihood`` with Efron's ties,
``ConcordanceIndex``; Monod et al. 2024, "TorchSurv: a lightweight package for deep
survival analysis").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..abmil import ABMIL, ABMILTrainingConfig
from ..figures import plot_prediction_scatter
from ..metrics import summarize_folds
from ..task import ParseContext, SurvivalCase, csv_cases
from .base import BenchmarkResults, CasePrediction, KindContext, TaskKind

__all__ = ["SURVIVAL", "concordance_index", "cox_loss", "train_survival_head"]


def _torchsurv() -> tuple[Any, Any]:
    with warnings.catch_warnings():  # torchsurv 0.2 uses the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from torchsurv.loss.cox import neg_partial_log_likelihood
        from torchsurv.metrics.cindex import ConcordanceIndex
    return neg_partial_log_likelihood, ConcordanceIndex


def cox_loss(log_hz: torch.Tensor, event: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood, mean over events (torchsurv, Efron's ties).

    Args:
        log_hz: ``(n,)`` float log hazards (risk scores).
        event: ``(n,)`` bool, True where the event was observed.
        time: ``(n,)`` float times to event or censoring.

    Returns:
        Scalar tensor (differentiable in ``log_hz``).
    """
    neg_partial_log_likelihood, _ = _torchsurv()
    return neg_partial_log_likelihood(log_hz.view(-1), event.bool().view(-1), time.float())


def concordance_index(
    risk: torch.Tensor | np.ndarray,
    event: torch.Tensor | np.ndarray,
    time: torch.Tensor | np.ndarray,
) -> float:
    """Harrell's concordance index (torchsurv ``ConcordanceIndex``): higher risk, earlier event.

    Args:
        risk: ``(n,)`` risk scores (log hazards).
        event: ``(n,)`` bool events.
        time: ``(n,)`` times.

    Returns:
        The C-index in [0, 1] (0.5 for random scores); NaN when no pair is comparable.
    """
    _, ConcordanceIndex = _torchsurv()
    value = ConcordanceIndex()(
        torch.as_tensor(risk, dtype=torch.float32).view(-1),
        torch.as_tensor(event).bool().view(-1),
        torch.as_tensor(time, dtype=torch.float32).view(-1),
    )
    return float(value)


def train_survival_head(
    bags: Sequence[torch.Tensor],
    time: torch.Tensor,
    event: torch.Tensor,
    *,
    config: ABMILTrainingConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ABMIL:
    """Train an ABMIL log-hazard head with the Cox partial likelihood.

    Args:
        bags: per case ``(N_i, E)`` instances.
        time: ``(n,)`` float times (> 0).
        event: ``(n,)`` bool events.
        config: steps, batch (``accumulation_steps`` bags per step, at most n), lr and
            ABMIL settings (default ``ABMILTrainingConfig()``).
        seed: seeds initialisation and the batches.
        device: where to train.

    Returns:
        The trained :class:`ABMIL` (one output: the log hazard), eval mode.

    Raises:
        ValueError: on mismatched inputs or no observed event.
    """
    config = config or ABMILTrainingConfig()
    time = torch.as_tensor(time, dtype=torch.float32)
    event = torch.as_tensor(event).bool()
    if not bags or time.shape != (len(bags),) or event.shape != (len(bags),):
        raise ValueError(
            f"need n > 0 bags with (n,) times and events, got {len(bags)}, "
            f"{tuple(time.shape)}, {tuple(event.shape)}"
        )
    if not bool(event.any()):
        raise ValueError("the training cases hold no observed event")
    batch = min(config.accumulation_steps, len(bags))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ABMIL(bags[0].shape[-1], 1, config.hidden_dim, config.gated, config.dropout).to(
            device
        )
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        order: list[int] = []
        for _ in range(config.steps):
            index = []
            for _ in range(batch):
                if not order:
                    order = torch.randperm(len(bags), generator=generator).tolist()
                index.append(order.pop())
            if not bool(event[index].any()):
                continue
            log_hz = torch.cat([model(bags[i].to(device, torch.float32)[None]) for i in index])
            loss = cox_loss(log_hz[:, 0].cpu(), event[index], time[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def parse(raw: Mapping[str, Any], ctx: ParseContext) -> dict[str, Any]:
    """The survival keys: ``csv``, ``time_column``, ``event_column``."""
    csv_file = ctx.require(raw, "csv", "survival")
    time_col = str(raw.get("time_column", "time"))
    event_col = str(raw.get("event_column", "event"))

    def make_case(case_id: str, image: Path, row: dict[str, str]) -> SurvivalCase:
        try:
            time = float(row[time_col])
        except ValueError:
            raise ValueError(f"{time_col} must be a number, got {row[time_col]!r}") from None
        if not math.isfinite(time) or time <= 0:
            raise ValueError(f"{time_col} must be > 0, got {time}")
        if row[event_col] not in ("0", "1"):
            raise ValueError(f"{event_col} must be 0 or 1, got {row[event_col]!r}")
        return SurvivalCase(case_id, image, time, row[event_col] == "1")

    train, test = csv_cases(csv_file, ctx, [time_col, event_col], make_case)
    if not any(c.event for c in train):
        raise ctx.error("csv", "the train rows hold no event (every case censored)")
    return {"target_columns": (time_col, event_col), "train": train, "test": test}


def run(ctx: KindContext) -> BenchmarkResults:
    """Train a Cox ABMIL head per seed; C-index on the test cases (mean +- std over seeds).

    Returns:
        :class:`BenchmarkResults` with metric ``c_index``; the test Cox loss in
        ``per_class``.
    """
    task = ctx.task
    bags = [ctx.scan(c.case_id, c.image, None).cls_tokens for c in task.train]
    test_bags = [ctx.scan(c.case_id, c.image, None).cls_tokens for c in task.test]
    time = torch.tensor([c.time for c in task.train])
    event = torch.tensor([c.event for c in task.train])
    t_test = torch.tensor([c.time for c in task.test])
    e_test = torch.tensor([c.event for c in task.test])
    config = ABMILTrainingConfig(
        steps=task.steps, accumulation_steps=task.accumulation_steps, lr=task.lr
    )
    c_indices: list[float] = []
    losses: list[float] = []
    predictions: list[CasePrediction] = []
    first: torch.Tensor | None = None
    for seed in ctx.seeds:
        head = train_survival_head(bags, time, event, config=config, seed=seed, device=ctx.device)
        ctx.seed_done(seed)
        with torch.no_grad():
            risk = torch.cat(
                [head(b.to(ctx.device, torch.float32)[None]).cpu() for b in test_bags]
            )[:, 0]
            losses.append(float(cox_loss(risk, e_test, t_test)) if bool(e_test.any()) else math.nan)
        first = risk if first is None else first
        c_indices.append(concordance_index(risk, e_test, t_test))
        predictions += [
            CasePrediction(seed, c.case_id, (float(r),), (c.time, float(c.event)))
            for c, r in zip(task.test, risk, strict=True)
        ]
    files = {}
    if ctx.figures and first is not None:
        files["risk"] = plot_prediction_scatter(
            t_test.numpy(),
            first.numpy(),
            ctx.figure_path("risk"),
            xlabel="time",
            ylabel="predicted log hazard",
            title=f"{task.name} / {ctx.model_name} (seed {ctx.seeds[0]}; o event, x censored)",
            marked=~e_test.numpy(),
        )
    return BenchmarkResults(
        task.name,
        ctx.model_name,
        "c_index",
        summarize_folds(c_indices),
        tuple(c_indices),
        {"cox_loss": summarize_folds(losses)},
        files,
        kind="survival",
        predictions=tuple(predictions),
    )


SURVIVAL = TaskKind(
    parse=parse,
    run=run,
    accumulation_steps=16,
    lr=1e-3,
    summary="ABMIL log hazard, Cox partial likelihood; concordance index (torchsurv)",
    keys=("csv", "time_column", "event_column"),
)
