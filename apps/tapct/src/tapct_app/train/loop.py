"""The 3D DINOv2 pretraining loop (paper section 3, Table 7; DINOv2 ``train/train.py``).

:func:`run_pretraining` reads as its named steps: resume point, data, parts
(``build``), the loop of :func:`~tapct_app.train.step.train_step` calls, and the
summary. The loop never reads a device value except in a fetch
(:class:`~tapct_app.train.monitor.StepMonitor`): at the first iteration, every
``log_every`` iterations, before every checkpoint and at the end. Hooks see the fetched
values: the progress bar, the metrics file, and any hook the caller adds; a checkpoint
is written only after a fetch that saw every step since the previous one finite.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import torch
from tapct_data.faults import fault_point
from torch import nn

from tapct_app.config_file import config_to_dict
from tapct_app.errors import UserError
from tapct_app.train import checkpoint as ckpt
from tapct_app.train.build import (
    build_data,
    build_loader,
    build_parts,
    loader_workers,
    wrap_ddp,
)
from tapct_app.train.config import PretrainConfig
from tapct_app.train.data import IterationBatchSampler
from tapct_app.train.distributed import (
    DistInfo,
    all_gather_floats,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from tapct_app.train.metrics import MetricsLogger, plot_loss_curve, read_metrics
from tapct_app.train.monitor import StepMonitor, TrainingDivergedError
from tapct_app.train.state import (
    RunState,
    export_teacher,
    load_resume_checkpoint,
    restore_run_state,
    run_state_to_checkpoint,
)
from tapct_app.train.step import train_step

__all__ = [
    "CollapseHook",
    "Hook",
    "MetricsHook",
    "OutputInUseError",
    "PretrainInterrupted",
    "PretrainResult",
    "ProgressHook",
    "TrainingDivergedError",
    "run_pretraining",
]


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
        first_loss: Total loss of the run's first iteration.
        last_loss: Total loss of this invocation's last iteration.
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


class Hook(Protocol):
    """Called by the loop on rank 0 (any method may be a no-op)."""

    def on_step(self, iteration: int) -> None:
        """After each step, without values (nothing was read from the device)."""

    def on_log(self, iteration: int, metrics: dict[str, float]) -> None:
        """At each logged iteration, with the fetched values and the schedule."""

    def close(self) -> None:
        """At the end of the loop, also after an error."""


class MetricsHook:
    """Append the logged metrics to ``metrics.jsonl`` (and TensorBoard when installed).

    Args:
        output: The run directory.
        start: The iteration the run (re)starts at (later lines are dropped).
    """

    def __init__(self, output: Path, start: int) -> None:
        self.logger = MetricsLogger(output, resume_from=start)

    def on_step(self, iteration: int) -> None:
        """Nothing per step."""

    def on_log(self, iteration: int, metrics: dict[str, float]) -> None:
        """Write one line."""
        self.logger.log(iteration, metrics)

    def close(self) -> None:
        """Close the files."""
        self.logger.close()


class CollapseHook:
    """Warn (one line per sign, once per run invocation) when the monitors show collapse.

    Reads the logged collapse monitors (``teacher_entropy``, ``teacher_batch_entropy``,
    ``cls_std``, ``cls_effective_rank``; ``tapct_ssl.collapse``) and prints
    ``tapct: warning: ...`` lines from ``tapct_ssl.collapse_warnings``. Before the end of
    the learning-rate warm-up nothing is said: a freshly initialised student with
    LayerScale 1e-5 starts with almost equal cls tokens, which is not a collapse yet.

    Args:
        console: A ``rich.console.Console`` (or None: warnings go to stderr).
        n_prototypes: K of the DINO head.
        embed_dim: E of the backbone.
        batch: Teacher cls tokens per step and process (``n_global_crops x batch``).
        quiet_until: The first iteration at which a warning may be printed.
        centering: The run's ``objective.centering`` (shapes the advice).
    """

    def __init__(
        self,
        console: Any,
        n_prototypes: int,
        embed_dim: int,
        batch: int,
        quiet_until: int,
        centering: str = "centering",
    ) -> None:
        self.console = console
        self.centering = centering
        self.n_prototypes, self.embed_dim, self.batch = n_prototypes, embed_dim, batch
        self.quiet_until = quiet_until
        self.said: set[str] = set()
        self.lines: list[str] = []

    def on_step(self, iteration: int) -> None:
        """Nothing per step."""

    def on_log(self, iteration: int, metrics: dict[str, float]) -> None:
        """Check the logged monitors; print each new kind of warning once."""
        if iteration < self.quiet_until:
            return
        from tapct_ssl import collapse_warnings

        lines = collapse_warnings(
            metrics, self.n_prototypes, self.embed_dim, self.batch, self.centering
        )
        for line in lines:
            kind = line.split("(", 1)[0]
            if kind in self.said:
                continue
            self.said.add(kind)
            text = f"tapct: warning: iteration {iteration}: {line}"
            self.lines.append(text)
            if self.console is not None:
                self.console.print(text, markup=False, highlight=False)
            else:
                import sys

                print(text, file=sys.stderr)

    def close(self) -> None:
        """Nothing to close."""


def _short(name: str) -> str:
    return (
        name.removesuffix("_loss")
        .replace("_crops", "")
        .replace("dino_local", "dino_l")
        .replace("dino_global", "dino_g")
    )


class ProgressHook:
    """Progress with ETA and the last logged terms (``tapct_app.progress.CommandProgress``).

    On a terminal: a rich bar. Otherwise (a log file, a pipe): one plain, uncut line per
    logged iteration, e.g. ``pretrain: 10/100 it (10%), 1.2 it/s, eta 0:01:15, loss
    11.3712  dino_l ...  lr 1.70e-03  ... samples/s``.

    Args:
        console: A ``rich.console.Console``.
        total: Iterations of the whole run.
        start: Iterations already done.
    """

    def __init__(self, console: Any, total: int, start: int) -> None:
        from tapct_app.progress import CommandProgress

        self.total = total
        self.progress = CommandProgress(
            console, "pretrain", unit="it", initial=start, transient=False
        ).start()
        self.progress(start, total, line=False)

    def on_step(self, iteration: int) -> None:
        """Advance the bar."""
        self.progress(iteration + 1, self.total, line=False)

    def on_log(self, iteration: int, metrics: dict[str, float]) -> None:
        """Show the terms (every ``*loss*`` value), the lr and the throughput."""
        parts = [f"{_short(k)} {v:.4f}" for k, v in metrics.items() if k.endswith("loss")]
        if "teacher_entropy" in metrics:
            parts.append(f"H_t {metrics['teacher_entropy']:.2f}")
        if "cls_effective_rank" in metrics:
            parts.append(f"rank {metrics['cls_effective_rank']:.1f}")
        parts.append(f"lr {metrics['lr']:.2e}")
        if "samples_per_s" in metrics:
            parts.append(f"{metrics['samples_per_s']:.1f} samples/s")
        self.progress(iteration + 1, self.total, info="  ".join(parts), line=True)

    def close(self) -> None:
        """Stop the bar."""
        self.progress.close()


def run_pretraining(
    config: PretrainConfig,
    output: str | Path,
    *,
    resume: bool = True,
    stop_after: int | None = None,
    console: Any = None,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
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
        hooks: Extra hooks called on rank 0 (:class:`Hook`).

    Returns:
        A :class:`PretrainResult`.

    Raises:
        UserError: For bad data, a bad config, or a checkpoint that does not fit.
        TrainingDivergedError: If the loss or a gradient norm becomes NaN/inf (found at
            the next fetch; no checkpoint is written after the bad step).
    """
    output = Path(output)
    dist = init_distributed(config.device)
    try:
        return _run(config, output, dist, resume, stop_after, console, progress, hooks)
    finally:
        cleanup_distributed()


class OutputInUseError(UserError):
    """Another process holds the run directory's lock (``tapct_data.locking``)."""


class PretrainInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the run; the message says where and what a rerun resumes from.

    Args:
        message: One line, ``interrupted at iteration N ...; rerun the same command to
            resume``.
    """


class _DeferredInterrupt:
    """Turn the first Ctrl-C into a request honoured after the current step.

    Installed only in a single process's main thread (under torchrun the ranks would
    stop at different iterations); a second Ctrl-C interrupts at once.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C: at once

    def __enter__(self) -> _DeferredInterrupt:
        main = threading.current_thread() is threading.main_thread()
        if self.enabled and main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        else:
            self.enabled = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(
    config: PretrainConfig,
    output: Path,
    dist: DistInfo,
    resume: bool,
    stop_after: int | None,
    console: Any,
    show_progress: bool,
    extra_hooks: Sequence[Hook],
) -> PretrainResult:
    from tapct_data.locking import FolderLockedError, folder_lock

    if not dist.is_main:
        console = None
    with contextlib.ExitStack() as stack:
        if dist.is_main:
            output.mkdir(parents=True, exist_ok=True)
            try:
                stack.enter_context(folder_lock(output))
            except FolderLockedError as exc:
                raise OutputInUseError(str(exc)) from exc
        barrier()
        return _run_locked(config, output, dist, resume, stop_after, console, show_progress,
                           extra_hooks)  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover


def _run_locked(
    config: PretrainConfig,
    output: Path,
    dist: DistInfo,
    resume: bool,
    stop_after: int | None,
    console: Any,
    show_progress: bool,
    extra_hooks: Sequence[Hook],
) -> PretrainResult:
    from tapct_app.train.memory import check_memory

    latest, saved = load_resume_checkpoint(output, resume, console, dist.is_main)
    start, total = (int(saved["iteration"]) if saved is not None else 0), config.train.iterations
    if start > total:
        raise UserError(
            f"{latest}: the checkpoint is at iteration {start}, past train.iterations={total}; "
            "give --iterations >= that, or use --no-resume or another --output"
        )
    if start < total:
        check_memory(config, dist.device)  # before the data cache and the first step
    dataset, store = build_data(config, output, dist, console)
    parts = build_parts(config, dist)
    run = RunState()
    if saved is not None and latest is not None:
        run = restore_run_state(parts.objective, parts.optimizer, saved, latest)
        if console is not None and start < total:
            console.print(f"resuming from {latest} at iteration {run.iteration}",
                          markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        del saved
    elif config.model.init:  # a new run: student and teacher from --init (resume wins)
        from tapct_app.models import init_pretraining

        init_pretraining(parts.objective, config.model.init, console)
    wrap_ddp(parts, dist)
    if dist.is_main:
        _write_config(config, output)

    end = total if stop_after is None else min(total, start + stop_after)
    global_batch = config.train.global_batch(dist.world_size)
    sampler = IterationBatchSampler(
        start, end, run.samples_seen, config.train.batch_size,
        config.train.accumulation_steps, dist.rank, dist.world_size,
    )  # fmt: skip
    workers = loader_workers(config.data.num_workers, console)
    batches = build_loader(dataset, sampler, parts.collate, config, dist.device, workers)
    hooks: list[Hook] = []
    if dist.is_main:
        metrics_hook = MetricsHook(output, start)
        hooks.append(metrics_hook)
        if console is not None and metrics_hook.logger.tensorboard_off:
            console.print(
                metrics_hook.logger.tensorboard_off, markup=False, highlight=False, soft_wrap=True
            )
        if console is not None and show_progress and start < end:
            hooks.append(ProgressHook(console, total, start))
        hooks.append(_collapse_hook(config, parts, console))
        hooks.extend(extra_hooks)

    monitor = StepMonitor(dist.device)
    last_ckpt, last_loss = latest, math.nan
    accum = config.train.accumulation_steps
    parts.objective.train()
    t_start = time.perf_counter()
    t_log, n_log = t_start, 0
    it = start
    interrupt = _DeferredInterrupt(enabled=not dist.distributed)
    try:
        with interrupt:
            for it in range(start, end):
                micro = [next(batches).to(dist.device, non_blocking=True) for _ in range(accum)]
                step_out = train_step(parts, micro, it)
                monitor.observe(it, step_out)
                run.iteration, run.samples_seen = it + 1, run.samples_seen + global_batch
                fault_point("pretrain.after_step")
                n_log += global_batch
                for hook in hooks:
                    hook.on_step(it)
                stopping = interrupt.requested and it + 1 < end
                log_due = (it + 1) % config.log_every == 0 or it == start or it + 1 == end
                ckpt_due = (it + 1) % config.checkpoint.every == 0 or it + 1 == end or stopping
                if not (log_due or ckpt_due):
                    continue
                fetched = monitor.fetch(ckpt.latest_checkpoint(output / "checkpoints"))  # raises
                loss = fetched.values["loss"]
                if run.first_loss is None:
                    run.first_loss = loss
                last_loss = loss
                if (log_due or stopping) and dist.is_main:
                    now = time.perf_counter()
                    metrics = {**fetched.values, **_schedule_metrics(step_out.schedule)}
                    if step_out.teacher_cls is not None:  # an SVD: logging steps only
                        from tapct_ssl import effective_rank

                        rank = effective_rank(step_out.teacher_cls)
                        metrics["cls_effective_rank"] = float(rank)
                    metrics["samples_per_s"] = n_log / max(now - t_log, 1e-9)
                    t_log, n_log = now, 0
                    for hook in hooks:
                        hook.on_log(it, metrics)
                if ckpt_due:
                    if dist.is_main:
                        state = run_state_to_checkpoint(
                            parts.objective, parts.optimizer, run, config, dist.world_size
                        )
                        last_ckpt = ckpt.save_checkpoint(
                            state, output / "checkpoints", it + 1, config.checkpoint.keep
                        )
                    barrier()
                if stopping:
                    raise PretrainInterrupted(
                        f"interrupted at iteration {it + 1} of {total}; checkpoint "
                        f"{last_ckpt} written; rerun the same command to resume"
                    )
    except torch.OutOfMemoryError as exc:
        from tapct_app.train.memory import out_of_memory_message

        raise UserError(out_of_memory_message(config, dist.device, it, last_ckpt)) from exc
    except PretrainInterrupted:
        raise
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or under torchrun
        where = (f"from {last_ckpt}" if last_ckpt is not None else
                 "from the start (no checkpoint was written yet)")
        raise PretrainInterrupted(
            f"interrupted at iteration {run.iteration} of {total}; rerun the same command "
            f"to resume {where}"
        ) from exc
    finally:
        for hook in hooks:
            hook.close()
    wall = time.perf_counter() - t_start
    if start == end and start > 0:  # nothing ran (a finished run): its last logged loss
        last_loss = _last_logged_loss(output / "metrics.jsonl", start)
    return _finish(config, output, dist, parts.objective, run, start, wall, last_ckpt,
                   last_loss, store)  # fmt: skip


def _collapse_hook(config: PretrainConfig, parts: Any, console: Any) -> CollapseHook:
    """The run's :class:`CollapseHook`: quiet until the learning-rate warm-up ends."""
    objective = parts.objective
    n_global = objective.config.n_global_crops
    return CollapseHook(
        console,
        n_prototypes=objective.config.dino_head_n_prototypes,
        embed_dim=objective.embed_dim,
        batch=n_global * config.train.batch_size,
        quiet_until=parts.schedules.lr.warmup_iters,
        centering=objective.config.centering,
    )


def _last_logged_loss(path: Path, iterations: int) -> float:
    """The loss of the last metrics line before ``iterations`` (NaN when none)."""
    rows = [r for r in read_metrics(path) if int(r.get("iteration", -1)) < iterations]
    return float(rows[-1]["loss"]) if rows and "loss" in rows[-1] else math.nan


def _schedule_metrics(values: Any) -> dict[str, float]:
    """The logged schedule values of a ``tapct_ssl.ScheduleValues``."""
    return {
        "lr": values.lr,
        "wd": values.weight_decay,
        "momentum": values.momentum,
        "teacher_temp": values.teacher_temp,
    }


def _write_config(config: PretrainConfig, output: Path) -> None:
    import yaml

    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    (output / "config.yaml").write_text(text, encoding="utf-8")


def _param_checksum(module: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in module.parameters()))


def _finish(
    config: PretrainConfig,
    output: Path,
    dist: DistInfo,
    objective: Any,
    run: RunState,
    start: int,
    wall: float,
    last_ckpt: Path | None,
    last_loss: float,
    store: list[Path],
) -> PretrainResult:
    """Export (at the end of the run), loss curve, ``summary.json``, the result."""
    total, global_batch = config.train.iterations, config.train.global_batch(dist.world_size)
    samples_per_s = (run.iteration - start) * global_batch / max(wall, 1e-9)
    sums = all_gather_floats([_param_checksum(objective.student)], dist.device)
    checksums = tuple(x[0] for x in sums)
    model_dir = None
    if dist.is_main:
        if run.iteration == total:
            from tapct_app.intensity import model_metadata
            from tapct_app.train.model_card import model_card

            card = model_card(config, run.iteration, run.samples_seen, output)
            model_dir = export_teacher(
                objective, output, model_metadata(config.data.normalize), card
            )
        plot_loss_curve(read_metrics(output / "metrics.jsonl"), output / "loss_curve.png")
        summary = {
            "start_iteration": start,
            "iterations_done": run.iteration,
            "iterations_total": total,
            "first_loss": run.first_loss,
            "last_loss": last_loss,
            "samples_per_s": samples_per_s,
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
        start_iteration=start,
        iterations_done=run.iteration,
        first_loss=float(run.first_loss) if run.first_loss is not None else math.nan,
        last_loss=last_loss,
        samples_per_s=samples_per_s,
        wall_s=wall,
        rank_checksums=checksums,
    )
