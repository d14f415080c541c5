"""The optimisation recipe of the paper (Table 7) and the schedules built from it.

Reference: paper Table 7; DINOv2, dinov2/train/train.py (``build_schedulers``) and
dinov2/configs/ssl_default_config.yaml.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from tapct_ssl.param_groups import IS_LAST_LAYER as _LAST_LAYER
from tapct_ssl.param_groups import LR_MULTIPLIER as _LR_MULT
from tapct_ssl.param_groups import WD_MULTIPLIER as _WD_MULT
from tapct_ssl.param_groups import get_params_groups
from tapct_ssl.scheduler import CosineScheduler


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _unit(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value}")


@attrs.frozen(kw_only=True)
class OptimConfig:
    """AdamW and schedule settings; defaults are the paper's (Table 7) and DINOv2's.

    Iteration counts refer to ``total_iters``; ``build_schedulers`` rescales them
    proportionally when a run is shorter or longer.

    Attributes:
        base_lr: lr at batch 1024 (paper: 0.0035).
        lr_scaling_reference_batch: lr = base_lr * sqrt(global_batch / this) (1024).
        min_lr: final lr (1e-6).
        total_iters: schedule length (paper: 125,000).
        warmup_iters: lr warmup from 0 (paper: 25,000).
        weight_decay: start (0.04); weight_decay_end: end (0.4), cosine.
        momentum_teacher: EMA start (0.992); final_momentum_teacher: end (1.0), cosine.
        warmup_teacher_temp: start (0.04); teacher_temp: end (0.07), linear over
            warmup_teacher_temp_iters (37,500), constant after.
        freeze_last_layer_iters: head prototypes not trained (DINOv2: 1 epoch = 1,250).
        clip_grad: max gradient norm (3.0).
        layerwise_decay: lr decay per block (0.9); patch_embed_lr_mult: 0.2.
        adamw_beta1, adamw_beta2: (0.9, 0.999).

    Raises:
        ValueError: a value out of range (named in the message), or warmups longer than
            ``total_iters``.
    """

    base_lr: float = attrs.field(default=0.0035, validator=_positive)
    lr_scaling_reference_batch: int = attrs.field(default=1024, validator=_positive)
    min_lr: float = attrs.field(default=1.0e-6, validator=_non_negative)
    total_iters: int = attrs.field(default=125_000, validator=_positive)
    warmup_iters: int = attrs.field(default=25_000, validator=_non_negative)
    weight_decay: float = attrs.field(default=0.04, validator=_non_negative)
    weight_decay_end: float = attrs.field(default=0.4, validator=_non_negative)
    momentum_teacher: float = attrs.field(default=0.992, validator=_unit)
    final_momentum_teacher: float = attrs.field(default=1.0, validator=_unit)
    warmup_teacher_temp: float = attrs.field(default=0.04, validator=_positive)
    teacher_temp: float = attrs.field(default=0.07, validator=_positive)
    warmup_teacher_temp_iters: int = attrs.field(default=37_500, validator=_non_negative)
    freeze_last_layer_iters: int = attrs.field(default=1_250, validator=_non_negative)
    clip_grad: float = attrs.field(default=3.0, validator=_positive)
    layerwise_decay: float = attrs.field(default=0.9, validator=_positive)
    patch_embed_lr_mult: float = attrs.field(default=0.2, validator=_positive)
    adamw_beta1: float = attrs.field(default=0.9, validator=_unit)
    adamw_beta2: float = attrs.field(default=0.999, validator=_unit)

    def __attrs_post_init__(self) -> None:
        """Check that the warmups fit in the run."""
        for name in ("warmup_iters", "warmup_teacher_temp_iters", "freeze_last_layer_iters"):
            if getattr(self, name) > self.total_iters:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) exceeds total_iters ({self.total_iters})"
                )
        if self.layerwise_decay > 1.0:
            raise ValueError(f"layerwise_decay must be <= 1, got {self.layerwise_decay}")

    def scaled_lr(self, global_batch_size: int) -> float:
        """Peak lr ``base_lr * sqrt(global_batch_size / 1024)`` (DINOv2's sqrt rule).

        Args:
            global_batch_size: images per optimizer step over all processes (> 0).

        Returns:
            The peak learning rate.

        Raises:
            ValueError: ``global_batch_size < 1``.
        """
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        return self.base_lr * math.sqrt(global_batch_size / self.lr_scaling_reference_batch)


@attrs.frozen
class Schedules:
    """Per-iteration schedules of one run (index them by iteration).

    Attributes:
        lr: peak-scaled lr with warmup from 0, cosine to ``min_lr``.
        weight_decay: cosine ``weight_decay -> weight_decay_end``.
        momentum: teacher EMA momentum, cosine ``0.992 -> 1.0``.
        teacher_temp: linear ``0.04 -> 0.07`` over its warmup, then constant.
        freeze_last_layer_iters: iterations during which the heads' ``last_layer``
            gets lr 0 (DINOv2 zeroes the start of a copy of the lr schedule, without
            shifting it; ``is_last_layer_frozen`` gives the same).
    """

    lr: CosineScheduler
    weight_decay: CosineScheduler
    momentum: CosineScheduler
    teacher_temp: CosineScheduler
    freeze_last_layer_iters: int

    def is_last_layer_frozen(self, it: int) -> bool:
        """Whether groups with ``is_last_layer`` get lr 0 at iteration ``it``."""
        return it < self.freeze_last_layer_iters

    def at(self, it: int) -> ScheduleValues:
        """Every scheduled value at iteration ``it`` (past the end: the final values)."""
        return ScheduleValues(
            lr=self.lr[it],
            weight_decay=self.weight_decay[it],
            momentum=self.momentum[it],
            teacher_temp=self.teacher_temp[it],
            last_layer_frozen=self.is_last_layer_frozen(it),
        )


@attrs.frozen
class ScheduleValues:
    """The schedules' values at one iteration (what the step and the logger read).

    Attributes:
        lr: base learning rate (before the per-group multipliers).
        weight_decay: base weight decay (before the per-group multipliers).
        momentum: teacher EMA momentum for ``objective.update``.
        teacher_temp: teacher temperature for ``objective.forward``.
        last_layer_frozen: whether the heads' prototypes get lr 0 this iteration.
    """

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    last_layer_frozen: bool


def apply_schedules(
    optimizer: torch.optim.Optimizer, schedules: Schedules, iteration: int
) -> ScheduleValues:
    """Set every param group's lr and weight decay for ``iteration``; return the values.

    Each group built by :func:`~tapct_ssl.get_params_groups` (or :func:`build_optimizer`)
    carries ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer``:
    ``lr = lr(it) * lr_multiplier`` (0 for ``is_last_layer`` groups while the last layer
    is frozen) and ``weight_decay = wd(it) * wd_multiplier``. Groups without the keys
    use multiplier 1 and are never frozen. Python floats only: no device work.

    Args:
        optimizer: an optimizer over those groups.
        schedules: the run's :class:`Schedules`.
        iteration: the optimizer step about to be taken (0-based).

    Returns:
        ``schedules.at(iteration)``.
    """
    values = schedules.at(iteration)
    for group in optimizer.param_groups:
        frozen = values.last_layer_frozen and bool(group.get(_LAST_LAYER, False))
        group["lr"] = 0.0 if frozen else values.lr * group.get(_LR_MULT, 1.0)
        group["weight_decay"] = values.weight_decay * group.get(_WD_MULT, 1.0)
    return values


def build_optimizer(
    objective: nn.Module, optim_config: OptimConfig, device: torch.device | str | None = None
) -> torch.optim.AdamW:
    """AdamW over the student's parameter groups (layer-wise decay, no-decay sets).

    The groups come from :func:`~tapct_ssl.get_params_groups` on ``objective.student``
    (any module with trainable parameters works when it has no ``student``); lr and
    weight decay are set per step by :func:`apply_schedules`. On CUDA and CPU the fused
    kernel is used (one launch for all parameters; it also skips the step on the device
    where ``optimizer.found_inf`` is set, as a gradient scaler or a NaN/inf guard does);
    elsewhere the foreach one.

    Args:
        objective: a ``DINOv2Objective`` (or any module).
        optim_config: betas and the layer-wise decay settings.
        device: where the parameters live; default the first parameter's device.

    Returns:
        The ``torch.optim.AdamW``.
    """
    target = getattr(objective, "student", objective)
    if device is None:
        first = next(target.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    groups = get_params_groups(
        target,
        layerwise_decay=optim_config.layerwise_decay,
        patch_embed_lr_mult=optim_config.patch_embed_lr_mult,
    )
    betas = (optim_config.adamw_beta1, optim_config.adamw_beta2)
    if torch.device(device).type in ("cuda", "cpu"):
        return torch.optim.AdamW(groups, betas=betas, fused=True)
    return torch.optim.AdamW(groups, betas=betas, foreach=True)


def _rescale(iters: int, config_total: int, total: int) -> int:
    return round(iters * total / config_total)


def build_schedulers(
    config: OptimConfig, total_iters: int | None = None, *, global_batch_size: int
) -> Schedules:
    """Build every schedule of DINOv2 training from ``config``.

    Args:
        config: the recipe.
        total_iters: run length; ``None`` uses ``config.total_iters``. Otherwise the
            warmup, teacher-temperature warmup and last-layer freeze lengths are rescaled
            by ``total_iters / config.total_iters`` (rounded), keeping the paper's
            proportions (20 % lr warmup, 30 % temperature warmup, 1 % freeze).
        global_batch_size: images per optimizer step over all processes, for the lr
            scaling.

    Returns:
        The ``Schedules``; ``schedules.is_last_layer_frozen(it)`` marks the iterations
        where the app zeroes the lr of ``is_last_layer`` groups.

    Raises:
        ValueError: ``total_iters < 1`` or ``global_batch_size < 1``.
    """
    total = config.total_iters if total_iters is None else int(total_iters)
    if total < 1:
        raise ValueError(f"total_iters must be >= 1, got {total_iters}")
    warmup = _rescale(config.warmup_iters, config.total_iters, total)
    temp_warmup = _rescale(config.warmup_teacher_temp_iters, config.total_iters, total)
    freeze = _rescale(config.freeze_last_layer_iters, config.total_iters, total)
    peak = config.scaled_lr(global_batch_size)
    lr = CosineScheduler(peak, config.min_lr, total, warmup_iters=warmup)
    return Schedules(
        lr=lr,
        weight_decay=CosineScheduler(config.weight_decay, config.weight_decay_end, total),
        momentum=CosineScheduler(config.momentum_teacher, config.final_momentum_teacher, total),
        teacher_temp=CosineScheduler(
            config.teacher_temp,
            config.teacher_temp,
            temp_warmup,
            warmup_iters=temp_warmup,
            start_warmup_value=config.warmup_teacher_temp,
        ),
        freeze_last_layer_iters=freeze,
    )
