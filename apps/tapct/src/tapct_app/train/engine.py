"""The 3D DINOv2 pretraining loop (paper section 3, Table 7; DINOv2 ``train/train.py``).

One iteration (= one optimizer step):

1. set lr / weight decay / last-layer lr from the schedules (per param group multipliers
   from ``tapct_ssl.get_params_groups``);
2. for each micro-batch: read slabs ``(B, 1, S, H0, W0)``, move them to the device, make
   the multi-crops and iBOT masks there (``tapct_data``; the batched GPU path on CUDA),
   run the objective under bf16 autocast on CUDA, back-propagate ``loss / k``;
3. stop with a clear message if the loss or the gradient norm is not finite (on any rank)
   before anything is written;
4. clip gradients (3.0), AdamW step, ``objective.update(momentum)`` (centers + EMA);
5. log, and every ``checkpoint.every`` iterations write an atomic checkpoint (rank 0).

Every random choice of micro-batch ``shard`` at iteration ``it`` is drawn from generators
seeded with ``(seed, it, shard)``, and the global torch RNG (drop path) is reseeded the
same way before each forward, so a resumed run continues exactly and a run on ``n``
processes equals one process accumulating ``n`` micro-batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from tapct_app.config_file import config_to_dict
from tapct_app.errors import UserError
from tapct_app.intensity import model_metadata
from tapct_app.train import checkpoint as ckpt
from tapct_app.train.config import PretrainConfig
from tapct_app.train.data import (
    IterationBatchSampler,
    PretrainSlabDataset,
    derive_seed,
    prepare_stores,
    write_demo_phantoms,
)
from tapct_app.train.distributed import (
    DistInfo,
    all_gather_floats,
    any_true,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from tapct_app.train.metrics import MetricsLogger, plot_loss_curve, read_metrics

if TYPE_CHECKING:  # the libraries are imported lazily, for a fast CLI start
    from tapct_ssl import DINOv2Objective
    from tapct_vit3d import VisionTransformer3d

__all__ = [
    "LOSS_TERMS",
    "PretrainResult",
    "TrainingDivergedError",
    "build_backbone",
    "build_objective",
    "build_optim_config",
    "objective_config",
    "run_pretraining",
]

LOSS_TERMS = ("dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss")


class TrainingDivergedError(UserError):
    """The loss or gradient became NaN/inf; nothing was written for that iteration."""


@attrs.frozen
class PretrainResult:
    """What a pretraining run produced.

    Attributes:
        output: The run directory.
        model_dir: The exported teacher backbone (``save_pretrained``), or None when the
            run stopped before the last iteration.
        checkpoint: The last checkpoint written.
        start_iteration: Iteration the run started (or resumed) at.
        iterations_done: Completed iterations at the end of this invocation.
        first_loss: Total loss of the first iteration of this invocation.
        last_loss: Total loss of its last iteration.
        samples_per_s: Mean global throughput of this invocation (samples/s).
        wall_s: Wall-clock seconds of the training loop.
        rank_checksums: A parameter checksum of the student per rank (all equal under DDP).
    """

    output: Path
    model_dir: Path | None
    checkpoint: Path | None
    start_iteration: int
    iterations_done: int
    first_loss: float
    last_loss: float
    samples_per_s: float
    wall_s: float
    rank_checksums: tuple[float, ...]


def build_backbone(config: PretrainConfig) -> VisionTransformer3d:
    """Create the student backbone from the config's model section.

    Args:
        config: The run config.

    Returns:
        A ``tapct_vit3d.VisionTransformer3d``.

    Raises:
        UserError: If the preset is unknown or an override is rejected.
    """
    from tapct_vit3d import create_model

    kwargs = dict(config.model.overrides)
    kwargs.setdefault("drop_path_rate", config.model.drop_path_rate)
    try:
        return create_model(config.model.name, **kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"model {config.model.name!r}: {exc}") from exc


def build_objective(config: PretrainConfig, backbone: nn.Module) -> DINOv2Objective:
    """Wrap the backbone in the DINOv2 objective (student, EMA teacher, heads, losses).

    Args:
        config: The run config; its ``objective`` mapping becomes a
            ``tapct_ssl.DINOv2ObjectiveConfig``.
        backbone: The student backbone.

    Returns:
        A ``tapct_ssl.DINOv2Objective``.

    Raises:
        UserError: If the ``objective`` section has an unknown or invalid key.
    """
    from tapct_ssl import DINOv2Objective

    return DINOv2Objective(backbone, objective_config(config))


def objective_config(config: PretrainConfig) -> Any:
    """Build the ``tapct_ssl.DINOv2ObjectiveConfig`` from the ``objective`` section.

    Args:
        config: The run config.

    Returns:
        The objective config (paper defaults for absent keys).

    Raises:
        UserError: If the section has an unknown or invalid key.
    """
    from tapct_ssl import DINOv2ObjectiveConfig

    try:
        return DINOv2ObjectiveConfig(**config.objective)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config section 'objective': {exc}") from exc


def build_optim_config(config: PretrainConfig) -> Any:
    """Build the ``tapct_ssl.OptimConfig`` of the run from the ``optim`` section.

    Args:
        config: The run config.

    Returns:
        A ``tapct_ssl.OptimConfig`` (paper defaults for absent keys).

    Raises:
        UserError: If the section has an unknown or invalid key.
    """
    from tapct_ssl import OptimConfig

    try:
        return OptimConfig(**config.optim)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config section 'optim': {exc}") from exc


def _schedule_values(schedules: Any, it: int) -> dict[str, float]:
    return {
        "lr": float(schedules.lr[it]),
        "wd": float(schedules.weight_decay[it]),
        "momentum": float(schedules.momentum[it]),
        "teacher_temp": float(schedules.teacher_temp[it]),
    }


def _apply_schedule(
    optimizer: torch.optim.Optimizer, values: dict[str, float], frozen: bool
) -> None:
    for g in optimizer.param_groups:
        last = bool(g.get("is_last_layer", False))
        g["lr"] = values["lr"] * g.get("lr_multiplier", 1.0) * (0.0 if last and frozen else 1.0)
        g["weight_decay"] = values["wd"] * g.get("wd_multiplier", 1.0)


def _build_optimizer(optim_config: Any, objective: DINOv2Objective) -> torch.optim.Optimizer:
    from tapct_ssl import get_params_groups

    groups = get_params_groups(
        objective.student,
        layerwise_decay=optim_config.layerwise_decay,
        patch_embed_lr_mult=optim_config.patch_embed_lr_mult,
    )
    betas = (optim_config.adamw_beta1, optim_config.adamw_beta2)
    return torch.optim.AdamW(groups, betas=betas)


class _Augmenter:
    """Slabs -> multi-crops -> masked, collated batch, on the slabs' device."""

    def __init__(self, config: PretrainConfig, patch_size: tuple[int, int, int]) -> None:
        from tapct_data import MaskingGenerator3d, MultiCropAugmentation

        c, m = config.crops, config.masking
        self.augment = MultiCropAugmentation(
            global_crops_size=c.global_crops_size,
            local_crops_size=c.local_crops_size,
            local_crops_number=c.local_crops_number,
            global_crops_scale=c.global_crops_scale,
            local_crops_scale=c.local_crops_scale,
            **c.extra,
        )
        (gd, gh, gw), (pd, ph, pw) = c.global_crops_size, patch_size
        grid = (gd // pd, gh // ph, gw // pw)
        for size, p in ((c.global_crops_size, patch_size), (c.local_crops_size, patch_size)):
            if any(s % q for s, q in zip(size, p, strict=True)):
                raise UserError(f"crop size {size} is not a multiple of the patch size {p}")
        self.mask_generator = MaskingGenerator3d(input_size=grid, **m.extra)
        self.mask_ratio = m.mask_ratio
        self.mask_probability = m.mask_probability

    def __call__(self, slabs: torch.Tensor, seed: int) -> dict[str, Any]:
        from tapct_data import MaskingConfig, collate_data_and_cast

        gen = torch.Generator(device=slabs.device).manual_seed(derive_seed(seed, "crops"))
        crops = self.augment(slabs, generator=gen)
        mask_gen = torch.Generator().manual_seed(derive_seed(seed, "masks"))
        batch = collate_data_and_cast(
            crops,
            mask_generator=self.mask_generator,
            masking=MaskingConfig(
                mask_probability=self.mask_probability, mask_ratio=self.mask_ratio
            ),
            dtype=torch.float32,
            generator=mask_gen,
        )
        # The objective still reads DINOv2's keys (it derives the mask indices and weights).
        return {
            "collated_global_crops": batch.global_crops,
            "collated_local_crops": batch.local_crops,
            "collated_masks": batch.masks.to(slabs.device),
        }


def _param_checksum(module: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in module.parameters()))


def _grad_norm_and_clip(objective: DINOv2Objective, clip: float) -> float:
    """Clip each student part's gradient norm separately (as DINOv2) and return the max."""
    norms = []
    for part in objective.student.values():
        params = [p for p in part.parameters() if p.grad is not None]
        if not params:
            continue
        max_norm = clip if clip > 0 else float("inf")
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
    return max(norms) if norms else 0.0


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _make_loader(
    dataset: PretrainSlabDataset,
    sampler: IterationBatchSampler,
    config: PretrainConfig,
    dist: DistInfo,
) -> Iterator[torch.Tensor]:
    from torch.utils.data import DataLoader

    workers = config.data.num_workers
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=dist.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    return iter(loader)


def _prepare_data(
    config: PretrainConfig, output: Path, dist: DistInfo, console: Any
) -> tuple[PretrainSlabDataset, list[Path]]:
    from tapct_data import ClipNormalize, is_zarr_store

    cache = output / "cache"
    sources: list[str] = list(config.data.sources)
    if not sources:  # the built-in demo: CT phantoms
        if dist.is_main:
            d = config.data
            write_demo_phantoms(cache / "phantoms", d.phantom_count, d.phantom_shape, config.seed)
        barrier()
        sources = [str(p) for p in sorted((cache / "phantoms").glob("phantom-*.nii.gz"))]
    if dist.is_main:
        if console is not None and not all(is_zarr_store(s) for s in sources):
            console.print(f"[dim]preparing the zarr store cache for {len(sources)} source(s)[/]")
        store = prepare_stores(sources, cache, on_error=config.data.on_error, console=console)
    barrier()
    if not dist.is_main:  # the main process has built the cache
        store = prepare_stores(sources, cache, convert=False)
    dataset = PretrainSlabDataset(
        store,
        slab_depth=config.data.slab_depth,
        in_plane_size=config.data.in_plane_size,
        normalize=ClipNormalize(config.data.normalize),
        seed=config.seed,
    )
    return dataset, store


def _fmt_terms(values: dict[str, float]) -> str:
    short = {
        "dino_local_crops_loss": "dino_l",
        "dino_global_crops_loss": "dino_g",
        "koleo_loss": "koleo",
        "ibot_loss": "ibot",
    }
    parts = [f"loss {values['loss']:.4f}"]
    parts += [f"{short[k]} {values[k]:.3f}" for k in LOSS_TERMS if k in values]
    parts.append(f"lr {values['lr']:.2e}")
    if "samples_per_s" in values:
        parts.append(f"{values['samples_per_s']:.1f} samples/s")
    return "  ".join(parts)


def _checkpoint_state(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    samples_seen: int,
    config: PretrainConfig,
    dist: DistInfo,
    first_loss: float | None,
) -> dict[str, Any]:
    full = objective.state_dict()
    student = {k[len("student.") :]: v for k, v in full.items() if k.startswith("student.")}
    teacher = {k[len("teacher.") :]: v for k, v in full.items() if k.startswith("teacher.")}
    rest = {k: v for k, v in full.items() if not k.startswith(("student.", "teacher."))}
    return {
        "iteration": iteration,
        "samples_seen": samples_seen,
        "student": student,
        "teacher": teacher,
        "objective_state": rest,  # centers and any other running state of the objective
        "optimizer": optimizer.state_dict(),
        "rng": ckpt.capture_rng_state(),
        "config": config_to_dict(config),
        "world_size": dist.world_size,
        "first_loss": first_loss,
    }


def _load_state(objective: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    full = {f"student.{k}": v for k, v in state["student"].items()}
    full.update({f"teacher.{k}": v for k, v in state["teacher"].items()})
    full.update(state.get("objective_state", {}))
    objective.load_state_dict(full, strict=True)
    optimizer.load_state_dict(state["optimizer"])
    ckpt.restore_rng_state(state.get("rng", {}))


def _export(objective: DINOv2Objective, output: Path, config: PretrainConfig) -> Path:
    import shutil
    import tempfile

    from tapct_vit3d import VisionTransformer3d

    backbone = objective.teacher["backbone"]
    if not isinstance(backbone, VisionTransformer3d):
        raise TypeError(f"cannot export a {type(backbone).__name__}: not a VisionTransformer3d")
    target = output / "model"
    tmp = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=output))
    try:
        backbone.save_pretrained(tmp, metadata=model_metadata(config.data.normalize))
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def run_pretraining(
    config: PretrainConfig,
    output: str | Path,
    *,
    resume: bool = True,
    stop_after: int | None = None,
    console: Any = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> PretrainResult:
    """Pretrain (or resume pretraining) a 3D ViT with the DINOv2 objective.

    Args:
        config: The resolved run config (Table 7 defaults).
        output: The run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``,
            ``cache/`` (zarr store of converted scans), ``model/`` (exported teacher
            backbone), ``loss_curve.png``, ``summary.json``.
        resume: Continue from the newest checkpoint in ``output/checkpoints`` if any.
        stop_after: Stop after this many iterations in this invocation (the schedules
            still span ``config.train.iterations``); a checkpoint is written at the stop.
            Models a pre-empted job; None runs to the end.
        console: A ``rich.console.Console`` for progress and messages (rank 0), or None.
        progress: Show a rich progress bar.
        on_step: Called on rank 0 after each iteration with ``(iteration, metrics)``.

    Returns:
        A :class:`PretrainResult`.

    Raises:
        UserError: For bad data, a bad config, or a checkpoint that does not fit.
        TrainingDivergedError: If the loss or gradient norm becomes NaN/inf.
    """
    output = Path(output)
    dist = init_distributed(config.device)
    try:
        return _run(config, output, dist, resume, stop_after, console, progress, on_step)
    finally:
        cleanup_distributed()


def _run(
    config: PretrainConfig,
    output: Path,
    dist: DistInfo,
    resume: bool,
    stop_after: int | None,
    console: Any,
    show_progress: bool,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> PretrainResult:
    import yaml

    if not dist.is_main:
        console = None
    device = dist.device
    if dist.is_main:
        output.mkdir(parents=True, exist_ok=True)
    barrier()

    # Resume point (every rank reads the same file).
    state = None
    latest = ckpt.latest_checkpoint(output / "checkpoints") if resume else None
    if latest is not None:
        try:
            state = ckpt.load_checkpoint(latest, map_location="cpu")
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    dataset, store = _prepare_data(config, output, dist, console)

    torch.manual_seed(derive_seed(config.seed, "init"))
    backbone = build_backbone(config)
    objective = build_objective(config, backbone).to(device)
    from tapct_ssl import build_schedulers

    optim_config = build_optim_config(config)
    optimizer = _build_optimizer(optim_config, objective)
    global_batch = config.train.global_batch(dist.world_size)
    schedules = build_schedulers(
        optim_config, config.train.iterations, global_batch_size=global_batch
    )
    augmenter = _Augmenter(config, backbone.patch_size)

    start_it, samples_seen, first_loss = 0, 0, None
    if state is not None:
        try:
            _load_state(objective, optimizer, state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(
                f"{latest}: the checkpoint does not fit this model/config ({exc}); "
                "use another --output or --no-resume"
            ) from exc
        start_it, samples_seen = int(state["iteration"]), int(state["samples_seen"])
        first_loss = state.get("first_loss")
        if console is not None:
            console.print(f"resuming from {latest} at iteration {start_it}")
        del state

    if dist.is_main:
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        (output / "config.yaml").write_text(text, encoding="utf-8")

    total = config.train.iterations
    end_it = total if stop_after is None else min(total, start_it + stop_after)
    ddp: torch.nn.parallel.DistributedDataParallel | None = None
    if dist.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    model: nn.Module = objective if ddp is None else ddp
    accum = config.train.accumulation_steps
    sampler = IterationBatchSampler(
        start_it, end_it, samples_seen, config.train.batch_size, accum, dist.rank, dist.world_size
    )
    batches = _make_loader(dataset, sampler, config, dist)
    logger = MetricsLogger(output, resume_from=start_it) if dist.is_main else None

    prog, task = None, None
    if console is not None and show_progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        prog = Progress(
            TextColumn("[bold]pretrain"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            transient=False,
        )
        prog.start()
        task = prog.add_task("pretrain", total=total, completed=start_it, metrics="")

    objective.train()
    last_ckpt: Path | None = latest
    last_loss = math.nan
    t_start = time.perf_counter()
    t_log, n_log = t_start, 0
    done_its = start_it
    try:
        for it in range(start_it, end_it):
            values = _schedule_values(schedules, it)
            _apply_schedule(optimizer, values, frozen=schedules.is_last_layer_frozen(it))
            optimizer.zero_grad(set_to_none=True)
            sums = dict.fromkeys(("loss", *LOSS_TERMS), 0.0)
            finite = True
            for a in range(accum):
                shard = dist.rank * accum + a
                slabs = next(batches).to(device, non_blocking=True)
                step_seed = derive_seed(config.seed, it, shard)
                batch = augmenter(slabs, step_seed)
                torch.manual_seed(derive_seed(step_seed, "model"))  # drop path
                sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
                if ddp is not None and a < accum - 1:
                    sync = ddp.no_sync()
                with sync:
                    with _autocast(device, config.precision):
                        out = model(
                            batch["collated_global_crops"],
                            batch.get("collated_local_crops"),
                            batch["collated_masks"].bool(),
                            values["teacher_temp"],
                        )
                    loss = out.loss
                    loss_value = float(loss.detach())
                    finite = finite and math.isfinite(loss_value)
                    (loss / accum).backward()
                sums["loss"] += loss_value / accum
                for k in LOSS_TERMS:
                    sums[k] += float(getattr(out, k).detach()) / accum
            grad_norm = _grad_norm_and_clip(objective, optim_config.clip_grad)
            finite = finite and math.isfinite(grad_norm)
            if any_true(not finite, device):
                good = ckpt.latest_checkpoint(output / "checkpoints")
                terms = ", ".join(f"{k}={v:.4g}" for k, v in sums.items())
                raise TrainingDivergedError(
                    f"training diverged at iteration {it}: loss or gradient is not finite "
                    f"({terms}, grad_norm={grad_norm:.4g}); nothing was written for this "
                    f"iteration; last good checkpoint: {good or 'none'}; "
                    "try a lower optim.base_lr or a longer warm-up"
                )
            optimizer.step()
            objective.update(values["momentum"])
            done_its = it + 1
            samples_seen += global_batch
            n_log += global_batch
            if first_loss is None:
                first_loss = sums["loss"]
            last_loss = sums["loss"]
            metrics = {**sums, **values, "grad_norm": grad_norm}
            if dist.is_main:
                now = time.perf_counter()
                if (it + 1) % config.log_every == 0 or it == start_it or it + 1 == end_it:
                    metrics["samples_per_s"] = n_log / max(now - t_log, 1e-9)
                    t_log, n_log = now, 0
                    if logger is not None:
                        logger.log(it, metrics)
                if prog is not None and task is not None:
                    prog.update(task, completed=it + 1, metrics=_fmt_terms(metrics))
                if on_step is not None:
                    on_step(it, metrics)
            if (it + 1) % config.checkpoint.every == 0 or it + 1 == end_it:
                if dist.is_main:
                    st = _checkpoint_state(
                        objective, optimizer, it + 1, samples_seen, config, dist, first_loss
                    )
                    last_ckpt = ckpt.save_checkpoint(
                        st, output / "checkpoints", it + 1, config.checkpoint.keep
                    )
                barrier()
    finally:
        if prog is not None:
            prog.stop()
        if logger is not None:
            logger.close()

    wall = time.perf_counter() - t_start
    ran = done_its - start_it
    checksums = tuple(x[0] for x in all_gather_floats([_param_checksum(objective.student)], device))
    model_dir = None
    if dist.is_main:
        if done_its == total:
            model_dir = _export(objective, output, config)
        plot_loss_curve(read_metrics(output / "metrics.jsonl"), output / "loss_curve.png")
        summary = {
            "start_iteration": start_it,
            "iterations_done": done_its,
            "iterations_total": total,
            "first_loss": first_loss,
            "last_loss": last_loss,
            "samples_per_s": ran * global_batch / max(wall, 1e-9),
            "wall_s": wall,
            "world_size": dist.world_size,
            "global_batch": global_batch,
            "rank_checksums": list(checksums),
            "store": ", ".join(str(p) for p in store),
            "checkpoint": str(last_ckpt) if last_ckpt else None,
            "model_dir": str(model_dir) if model_dir else None,
        }
        (output / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    barrier()
    return PretrainResult(
        output=output,
        model_dir=model_dir,
        checkpoint=last_ckpt,
        start_iteration=start_it,
        iterations_done=done_its,
        first_loss=float(first_loss) if first_loss is not None else math.nan,
        last_loss=last_loss,
        samples_per_s=ran * global_batch / max(wall, 1e-9),
        wall_s=wall,
        rank_checksums=checksums,
    )
