"""The run state that goes to and from a checkpoint, and the exported encoder.

A checkpoint (``checkpoint.save_checkpoint``: plain values, atomic, the last K kept)
holds ``iteration``, ``samples_seen``, ``first_loss``, the objective's
``state_for_checkpoint()`` (``student``/``teacher`` weights, keys ``backbone.*``,
``dino_head.*``, ``ibot_head.*``, and ``objective_state``: DINO and iBOT centers), the
optimizer, the RNG states, the resolved config and the world size. The data position is
``samples_seen`` (the sampler is a pure function of it), so resume is exact.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from tapct_app.config_file import config_to_dict
from tapct_app.errors import UserError
from tapct_app.train import checkpoint as ckpt
from tapct_app.train.config import PretrainConfig

if TYPE_CHECKING:
    from tapct_ssl import DINOv2Objective

__all__ = [
    "RunState",
    "export_teacher",
    "load_resume_checkpoint",
    "restore_run_state",
    "run_state_to_checkpoint",
]


@attrs.define
class RunState:
    """Where a run stands (what, besides the modules, a checkpoint restores).

    Attributes:
        iteration: Completed optimizer steps.
        samples_seen: Global samples consumed (the data position).
        first_loss: Total loss of the run's first iteration, once known.
    """

    iteration: int = 0
    samples_seen: int = 0
    first_loss: float | None = None


def load_resume_checkpoint(
    output: Path, resume: bool, console: Any = None, is_main: bool = True
) -> tuple[Path | None, dict | None]:
    """Read the newest intact checkpoint of a run directory (every rank reads the same file).

    A damaged newer checkpoint (truncated, overwritten) is renamed to ``<name>.damaged``
    with a warning line, and the previous intact one is used; temporaries of interrupted
    writes are removed. Call it with the run's lock held (rank 0 renames and removes).

    Args:
        output: The run directory.
        resume: False to start afresh.
        console: A rich console for the warning, or None.
        is_main: True on rank 0, the one process that renames and removes files.

    Returns:
        ``(path, state)``, or ``(None, None)`` when there is nothing to resume.

    Raises:
        UserError: If checkpoints exist but none can be read.
    """
    if not resume:
        return None, None
    folder = output / "checkpoints"
    try:
        latest, state, damaged = ckpt.latest_intact_checkpoint(folder)
    except ValueError as exc:
        raise UserError(f"{exc}; use --no-resume or another --output") from exc
    if not is_main:
        return latest, state
    ckpt.remove_temporaries(folder)
    for path, reason in damaged:
        aside = path.with_name(path.name + ".damaged")
        path.replace(aside)
        if console is not None:
            console.print(
                f"warning: {reason}; moved aside to {aside.name}, resuming from the "
                f"previous intact checkpoint {latest}",
                style="yellow", markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip
    return latest, state


def run_state_to_checkpoint(
    objective: DINOv2Objective,
    optimizer: torch.optim.Optimizer,
    run: RunState,
    config: PretrainConfig,
    world_size: int,
) -> dict[str, Any]:
    """The checkpoint dict of a run (plain values and tensors only).

    Args:
        objective: The DINOv2 objective (bare, not DDP-wrapped).
        optimizer: Its optimizer.
        run: The run state.
        config: The resolved config.
        world_size: Number of processes of the job.

    Returns:
        The state for ``checkpoint.save_checkpoint``.
    """
    return {
        "iteration": run.iteration,
        "samples_seen": run.samples_seen,
        **objective.state_for_checkpoint(),  # student, teacher, objective_state (centers)
        "optimizer": optimizer.state_dict(),
        "rng": ckpt.capture_rng_state(),
        "config": config_to_dict(config),
        "world_size": world_size,
        "first_loss": run.first_loss,
    }


def restore_run_state(
    objective: DINOv2Objective, optimizer: torch.optim.Optimizer, state: dict, path: Path
) -> RunState:
    """Load a checkpoint into the objective and optimizer, restore the RNG states.

    Args:
        objective: The freshly built objective (same config).
        optimizer: Its optimizer.
        state: A checkpoint dict (:func:`run_state_to_checkpoint`).
        path: The checkpoint's path (for the error message).

    Returns:
        The run state to continue from.

    Raises:
        UserError: If the checkpoint does not fit this model/config.
    """
    try:
        objective.load_checkpoint_state(state)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(
            f"{path}: the checkpoint does not fit this model/config ({exc}); "
            "use another --output or --no-resume"
        ) from exc
    ckpt.restore_rng_state(state.get("rng", {}))
    return RunState(
        iteration=int(state["iteration"]),
        samples_seen=int(state["samples_seen"]),
        first_loss=state.get("first_loss"),
    )


def export_teacher(
    objective: DINOv2Objective,
    output: Path,
    metadata: dict[str, Any] | None = None,
    model_card: dict[str, Any] | None = None,
) -> Path:
    """Write the teacher backbone with ``save_pretrained`` to ``output/model`` atomically.

    Args:
        objective: The trained objective.
        output: The run directory.
        metadata: Extra ``config.json`` entries (the intensity normalisation,
            ``tapct_app.intensity.model_metadata``).
        model_card: ``save_pretrained``'s model card (``tapct_app.train.model_card``), or
            None for no ``README.md``.

    Returns:
        ``output/model``.

    Raises:
        TypeError: If the teacher backbone is not a ``tapct_vit3d.VisionTransformer3d``.
    """
    from tapct_vit3d import VisionTransformer3d

    backbone = objective.teacher_backbone
    if not isinstance(backbone, VisionTransformer3d):
        raise TypeError(f"cannot export a {type(backbone).__name__}: not a VisionTransformer3d")
    target = output / "model"
    for stale in output.glob(".model.tmp-*"):  # an export killed earlier (the run is locked)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=output))
    try:
        backbone.save_pretrained(tmp, metadata=metadata, model_card=model_card)
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
