"""One optimizer step of 3D DINOv2 pretraining, with no I/O and no host sync.

:func:`train_step` is the whole step that ``tapct pretrain`` runs and that
``benchmarks/bench_pretrain_gpu.py`` times:

1. set lr, weight decay and the last-layer freeze from the schedules (host floats);
2. for each micro-batch: crops and masks on the device, reseed drop path from the
   micro-batch seed, the objective under autocast, backward of ``loss / k`` (DDP
   all-reduces the gradients on the last micro-batch only);
3. clip each student part's gradient norm (3.0, as DINOv2);
4. ``found_inf``: any term or gradient norm not finite, on any rank (a MAX all-reduce
   of a device tensor); fused AdamW skips its update where it is set, and the
   objective's ``update(momentum, skip=found_inf)`` keeps centers and teacher.

It returns device tensors only (:class:`StepOutput`); reading them is the loop's job,
once every ``log_every`` steps (``tapct_app.train.monitor``), so the device never waits for the host
in between. Every random choice derives from ``(seed, iteration, shard)``, so a resumed
run continues exactly and ``n`` processes equal one process accumulating ``n``
micro-batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import attrs
import torch

from tapct_app.train.build import TrainParts
from tapct_app.train.data import derive_seed
from tapct_app.train.distributed import all_reduce_max_

__all__ = [
    "MicroBatch",
    "Phase",
    "StepOutput",
    "StepSchedule",
    "autocast",
    "schedule_at",
    "train_step",
]

Phase = Callable[[str], AbstractContextManager[Any]]
"""A phase hook: ``phase(name)`` returns a context manager around one part of the step
(``augment``, ``forward``, ``backward``, ``optimizer``); the benchmark times them."""


def _no_phase(name: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


@attrs.frozen
class StepSchedule:
    """The scheduled values of one iteration (host floats, paper Table 7 schedules).

    Attributes:
        lr: Base learning rate (per group times ``lr_multiplier``).
        weight_decay: Weight decay (per group times ``wd_multiplier``).
        momentum: Teacher EMA momentum.
        teacher_temp: Teacher temperature.
        last_layer_frozen: Whether the heads' last layer gets lr 0 this iteration.
    """

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    last_layer_frozen: bool

    def as_dict(self) -> dict[str, float]:
        """The values to log: ``lr``, ``wd``, ``momentum``, ``teacher_temp``."""
        return {
            "lr": self.lr,
            "wd": self.weight_decay,
            "momentum": self.momentum,
            "teacher_temp": self.teacher_temp,
        }


def schedule_at(schedules: Any, iteration: int) -> StepSchedule:
    """Read the schedules at ``iteration`` (past the end: their final values).

    Args:
        schedules: A ``tapct_ssl.Schedules``.
        iteration: 0-based optimizer step.

    Returns:
        The :class:`StepSchedule`.
    """
    return StepSchedule(
        lr=float(schedules.lr[iteration]),
        weight_decay=float(schedules.weight_decay[iteration]),
        momentum=float(schedules.momentum[iteration]),
        teacher_temp=float(schedules.teacher_temp[iteration]),
        last_layer_frozen=bool(schedules.is_last_layer_frozen(iteration)),
    )


def _apply_schedule(optimizer: torch.optim.Optimizer, s: StepSchedule) -> None:
    for g in optimizer.param_groups:
        frozen = s.last_layer_frozen and bool(g.get("is_last_layer", False))
        g["lr"] = 0.0 if frozen else s.lr * g.get("lr_multiplier", 1.0)
        g["weight_decay"] = s.weight_decay * g.get("wd_multiplier", 1.0)


@attrs.frozen
class MicroBatch:
    """One micro-batch as the loader delivers it, on the training device.

    Attributes:
        slabs: ``(B, 1, S, H0, W0)`` float32, normalised.
        seed: ``derive_seed(run seed, iteration, shard)``: crops, masks and drop path.
    """

    slabs: torch.Tensor
    seed: int


@attrs.frozen
class StepOutput:
    """What a step leaves on the device; nothing here has been read by the host.

    Attributes:
        names: The names of ``values``: the objective's terms in the order it returns
            them (``loss`` first), then ``grad_norm``.
        values: ``(T,)`` float32: the terms averaged over the micro-batches of this
            rank, and the largest clipped-before norm of the student parts.
        found_inf: ``()`` float32, 1.0 when a value was not finite on any rank (the
            update was then skipped on the device), else 0.0.
    """

    names: tuple[str, ...]
    values: torch.Tensor
    found_inf: torch.Tensor


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA for ``auto``; ``bf16`` forces it, ``fp32`` disables it.

    Args:
        device: The training device.
        precision: ``auto``, ``bf16`` or ``fp32``.

    Returns:
        The context manager.
    """
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _clip_and_norm(parts: TrainParts) -> torch.Tensor:
    """Clip each student part's gradient norm separately (as DINOv2); return the max."""
    max_norm = parts.clip_grad if parts.clip_grad > 0 else float("inf")
    norms = []
    for part in parts.objective.student.values():
        params = [p for p in part.parameters() if p.grad is not None]
        if params:
            norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
    if not norms:
        return torch.zeros((), device=parts.device)
    return torch.stack(norms).max()


def train_step(
    parts: TrainParts,
    micro_batches: Sequence[MicroBatch],
    schedule: StepSchedule,
    phase: Phase | None = None,
) -> StepOutput:
    """Run one optimizer step over this rank's micro-batches (no I/O, no host sync).

    Args:
        parts: The run's parts (:func:`~tapct_app.train.build.build_parts`).
        micro_batches: This rank's micro-batches of the iteration, on ``parts.device``
            (``train.accumulation_steps`` of them).
        schedule: This iteration's scheduled values.
        phase: Optional hook wrapping each phase (``augment``, ``forward``,
            ``backward``, ``optimizer``), e.g. a timer.

    Returns:
        The :class:`StepOutput` (device tensors).

    Raises:
        ValueError: If ``micro_batches`` is empty or the optimizer is not fused (only
            fused AdamW skips a non-finite update on the device).
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    optimizer = parts.optimizer
    if not optimizer.defaults.get("fused"):
        raise ValueError("train_step needs a fused optimizer (build_optimizer) for found_inf")
    phase = phase or _no_phase
    _apply_schedule(optimizer, schedule)
    optimizer.zero_grad(set_to_none=True)
    ddp, accum = parts.ddp, len(micro_batches)
    names: tuple[str, ...] = ()
    sums: torch.Tensor | None = None
    for a, mb in enumerate(micro_batches):
        with phase("augment"):
            batch = parts.augmenter(mb.slabs, mb.seed)
        torch.manual_seed(derive_seed(mb.seed, "model"))  # drop path
        sync = ddp.no_sync() if ddp is not None and a < accum - 1 else contextlib.nullcontext()
        with sync:
            with phase("forward"), autocast(parts.device, parts.precision):
                terms = parts.model(batch, teacher_temp=schedule.teacher_temp)
            with phase("backward"):
                (terms["loss"] / accum).backward()
        names = tuple(terms)  # the objective's own record of terms: no second list
        stacked = torch.stack([terms[k].detach().float() for k in names]) / accum  # (T,)
        sums = stacked if sums is None else sums + stacked
    assert sums is not None
    with phase("optimizer"):
        grad_norm = _clip_and_norm(parts)
        values = torch.cat([sums, grad_norm.float().reshape(1)])  # (T + 1,)
        found_inf = all_reduce_max_((~torch.isfinite(values).all()).float())  # ()
        optimizer.found_inf = found_inf  # type: ignore[attr-defined]  # fused AdamW skips
        optimizer.step()
        parts.objective.update(schedule.momentum, skip=found_inf.bool())
    return StepOutput(names=(*names, "grad_norm"), values=values, found_inf=found_inf)
