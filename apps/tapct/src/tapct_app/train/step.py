"""One optimizer step of 3D DINOv2 pretraining, with no I/O and no host sync.

:func:`train_step` is the whole step that ``tapct pretrain`` runs and that
``benchmarks/bench_pretrain_gpu.py`` times:

1. set lr, weight decay and the last-layer freeze from the schedules
   (``tapct_ssl.apply_schedules``: host floats);
2. for each micro-batch (a ``LoaderBatch``: slabs, crop parameters, masks and mask
   indices, all drawn in the DataLoader workers): the crops applied on the device
   (``MultiCropAugmentation.apply``), drop path reseeded from the micro-batch seed,
   the objective under autocast, backward of ``loss / k`` (DDP all-reduces the
   gradients on the last micro-batch only);
3. clip each student part's gradient norm (3.0, as DINOv2; ``clip_gradients``);
4. ``found_inf``: any term or gradient norm not finite, on any rank (a MAX all-reduce
   of a device tensor); fused AdamW skips its update where it is set, and the
   objective's ``update(momentum, skip=found_inf)`` keeps centers and teacher.

It returns device tensors only (:class:`StepOutput`); reading them is the loop's job,
once every ``log_every`` steps (``tapct_app.train.monitor``), so the device never waits for the host
in between. Every random choice derives from the run seed and the micro-batch's first
sample index, so a resumed run continues exactly and ``n`` processes equal one process
accumulating ``n`` micro-batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import attrs
import torch

from tapct_app.train.build import LoaderBatch, TrainParts
from tapct_app.train.data import derive_seed
from tapct_app.train.distributed import all_reduce_max_

if TYPE_CHECKING:
    from tapct_ssl import ScheduleValues

__all__ = [
    "Phase",
    "StepOutput",
    "autocast",
    "train_step",
]

Phase = Callable[[str], AbstractContextManager[Any]]
"""A phase hook: ``phase(name)`` returns a context manager around one part of the step
(``augment``, ``forward``, ``backward``, ``optimizer``); the benchmark times them."""


def _no_phase(name: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


@attrs.frozen
class StepOutput:
    """What a step leaves on the device; nothing here has been read by the host.

    Attributes:
        names: The names of ``values``: the objective's terms in the order of its
            record (``tapct_ssl.DINOv2Terms``, ``loss`` first), then ``grad_norm``,
            then the collapse monitors (``tapct_ssl.CollapseStats``).
        values: ``(T,)`` float32: the terms averaged over the micro-batches of this
            rank, the largest clipped-before norm of the student parts, and the
            monitors averaged over the micro-batches.
        found_inf: ``()`` float32, 1.0 when a term or the gradient norm was not finite
            on any rank (the update was then skipped on the device), else 0.0; the
            monitors do not take part.
        schedule: The scheduled values the step used (host floats).
        teacher_cls: ``(n_g B, E)`` the teacher's cls tokens of the last micro-batch
            (for ``tapct_ssl.effective_rank`` on logging steps), or None.
    """

    names: tuple[str, ...]
    values: torch.Tensor
    found_inf: torch.Tensor
    schedule: ScheduleValues
    teacher_cls: torch.Tensor | None = None


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


def train_step(
    parts: TrainParts,
    micro_batches: Sequence[LoaderBatch],
    iteration: int,
    phase: Phase | None = None,
) -> StepOutput:
    """Run one optimizer step over this rank's micro-batches (no I/O, no host sync).

    Args:
        parts: The run's parts (:func:`~tapct_app.train.build.build_parts`).
        micro_batches: This rank's micro-batches of the iteration, on ``parts.device``
            (``train.accumulation_steps`` of them).
        iteration: The 0-based optimizer step (selects the scheduled values).
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
    from tapct_ssl import apply_schedules

    phase = phase or _no_phase
    schedule = apply_schedules(optimizer, parts.schedules, iteration)
    optimizer.zero_grad(set_to_none=True)
    ddp, accum = parts.ddp, len(micro_batches)
    names: tuple[str, ...] = ()
    monitor_names: tuple[str, ...] = ()
    sums: torch.Tensor | None = None
    monitor_sums: torch.Tensor | None = None
    for a, mb in enumerate(micro_batches):
        with phase("augment"):
            slabs = parts.normalize.apply(mb.slabs)  # int16 HU -> clipped z-scores
            crops = parts.augmentation.apply(slabs, mb.params)
        torch.manual_seed(derive_seed(mb.seed, "model"))  # drop path
        sync = ddp.no_sync() if ddp is not None and a < accum - 1 else contextlib.nullcontext()
        with sync:
            with phase("forward"), autocast(parts.device, parts.precision):
                terms = parts.model(
                    crops.global_crops,
                    crops.local_crops,
                    mb.masks,
                    schedule.teacher_temp,
                    mask_index=mb.mask_index,
                )
            with phase("backward"):
                (terms.loss / accum).backward()
        names = tuple(name for name, _ in terms)  # the objective's record: no second list
        stacked = torch.stack([v.detach().float() for _, v in terms]) / accum  # (T,)
        sums = stacked if sums is None else sums + stacked
        if terms.monitors is not None:
            monitor_names = tuple(name for name, _ in terms.monitors)
            mon = torch.stack([v.float() for _, v in terms.monitors]) / accum  # (M,)
            monitor_sums = mon if monitor_sums is None else monitor_sums + mon
    assert sums is not None
    with phase("optimizer"):
        grad_norm = parts.objective.clip_gradients(parts.clip_grad if parts.clip_grad > 0 else None)
        values = torch.cat([sums, grad_norm.float().reshape(1)])  # (T + 1,)
        found_inf = all_reduce_max_((~torch.isfinite(values).all()).float())  # ()
        optimizer.found_inf = found_inf  # type: ignore[attr-defined]  # fused AdamW skips
        optimizer.step()
        parts.objective.update(schedule.momentum, skip=found_inf.bool())
    if monitor_sums is not None:
        values = torch.cat([values, monitor_sums])  # (T + 1 + M,)
    return StepOutput(
        names=(*names, "grad_norm", *monitor_names),
        values=values,
        found_inf=found_inf,
        schedule=schedule,
        teacher_cls=terms.teacher_cls,
    )
