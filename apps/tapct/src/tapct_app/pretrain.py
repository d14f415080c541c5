"""The ``tapct pretrain`` and ``tapct export`` jobs: config resolution, run, report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tapct_app.config_file import config_to_dict, load_config, structure
from tapct_app.errors import UserError
from tapct_app.train.config import PretrainConfig

__all__ = [
    "export_command",
    "pretrain_command",
    "resolve_pretrain_config",
    "validate_pretrain_config",
]

DEMO_OUTPUT = Path("tapct-demo")
DEFAULT_OUTPUT = Path("runs/pretrain")

# Keys a resumed run may change; every other difference keeps the checkpoint's value.
_RESUMABLE_CHANGES = {"device", "log_every", "data.num_workers", "checkpoint.every",
                      "checkpoint.keep", "train.iterations", "model.grad_checkpointing",
                      "train.compile"}


def resolve_pretrain_config(
    config: str | None,
    data: Sequence[str],
    preset: str | None = None,
    iterations: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    overrides: Sequence[str] = (),
    intensity_stats: str | Path | None = None,
) -> PretrainConfig:
    """Build the run config: shipped/explicit file <- CLI options <- ``--set`` overrides.

    Without ``--config`` the shipped ``demo`` config is used when no data is given, and
    the paper's ``tap_b_3d`` (Table 7) otherwise.

    Args:
        config: A YAML/TOML path or a shipped config name, or None.
        data: ``--data`` values.
        preset: ``--preset`` (model preset name).
        iterations: ``--iterations``.
        batch_size: ``--batch-size``.
        seed: ``--seed``.
        device: ``--device``.
        overrides: ``--set section.key=value`` strings.
        intensity_stats: ``--intensity-stats`` JSON (a ``tapct fingerprint`` output);
            sets ``data.normalize`` (``--set data.normalize.*`` still applies after it).

    Returns:
        The validated :class:`PretrainConfig`.

    Raises:
        UserError: On a bad file, key or value.
    """
    if config is None:
        config = "demo" if not data else "tap_b_3d"
    updates: dict[str, Any] = {}
    if data:
        updates["data"] = {"sources": list(data)}
    if intensity_stats is not None:
        from tapct_app.intensity import load_intensity_stats

        stats = load_intensity_stats(intensity_stats).to_dict()
        updates.setdefault("data", {})["normalize"] = stats
    if preset is not None:
        updates["model"] = {"name": preset}
    train = {}
    if iterations is not None:
        train["iterations"] = iterations
    if batch_size is not None:
        train["batch_size"] = batch_size
    if train:
        updates["train"] = train
    if seed is not None:
        updates["seed"] = seed
    if device is not None:
        updates["device"] = device
    cfg = load_config(PretrainConfig, config, updates=updates, overrides=overrides)
    validate_pretrain_config(cfg)
    return cfg


def validate_pretrain_config(cfg: PretrainConfig) -> None:
    """Check the library sections, the model preset and the crops now, before any data.

    The backbone is built on the meta device (no memory, no initialisation), which checks
    the preset name, its overrides and that the crop sizes are multiples of the patch.

    Args:
        cfg: The resolved config.

    Raises:
        UserError: An unknown preset or override, a bad ``optim``/``objective``/``crops``
            section, or crops that do not tile into patches.
    """
    import torch

    from tapct_app.train.build import (
        WorkerCollate,
        build_backbone,
        build_optim_config,
        objective_config,
    )

    build_optim_config(cfg)  # validate the library sections now, with a clear message
    objective_config(cfg)
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    WorkerCollate(cfg, backbone.patch_size)  # crop sizes, crops and masking sections


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("overrides", "extra", "objective", "optim"):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _config_for_resume(
    requested: PretrainConfig, output: Path, console: Any
) -> PretrainConfig:
    """On resume, keep the checkpoint's config except for the few keys that may change."""
    from tapct_app.train.checkpoint import latest_intact_checkpoint

    try:  # a damaged newest checkpoint is reported (and moved aside) by the run
        latest, state, _damaged = latest_intact_checkpoint(output / "checkpoints")
    except ValueError as exc:
        raise UserError(f"{exc}; use --no-resume or another --output") from exc
    if latest is None or state is None:
        return requested
    try:
        stored = state["config"]
        done = int(state["iteration"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{latest}: not a tapct pretraining checkpoint ({exc})") from exc
    del state
    new = config_to_dict(requested)
    old_flat, new_flat = _flat(stored), _flat(new)
    merged = dict(stored)
    ignored = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) == new_flat.get(key):
            continue
        if key in _RESUMABLE_CHANGES:
            node = merged
            parts = key.split(".")
            for part in parts[:-1]:
                node[part] = dict(node[part])
                node = node[part]
            node[parts[-1]] = new_flat[key]
        else:
            ignored.append(key)
    if ignored and console is not None:
        console.print(
            f"resuming {output}: keeping the checkpoint's values of {', '.join(ignored)} "
            "(use --no-resume or another --output to change them)",
            style="yellow", markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    before = old_flat.get("train.iterations")
    after = requested.train.iterations
    if before != after and done < after and console is not None:
        console.print(
            f"note: resuming at iteration {done} with --iterations {after} (the run was "
            f"planned for {before}): the schedules (warm-ups, lr, weight decay, momentum, "
            f"teacher temperature) are rescaled to {after} from here on, so the result "
            f"differs from a run planned for {after} from the start",
            style="yellow", markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    return structure(PretrainConfig, merged, f"{latest} config")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if it exists)."""
    missing = None
    current = path.absolute()
    while not current.exists() and current != current.parent:
        missing, current = current, current.parent
    return missing


def pretrain_command(
    *,
    config: str | None,
    data: Sequence[str],
    output: Path | None,
    preset: str | None,
    iterations: int | None,
    batch_size: int | None,
    seed: int | None,
    resume: bool,
    device: str | None,
    stop_after: int | None,
    overrides: Sequence[str],
    console: Any,
    intensity_stats: Path | None = None,
) -> None:
    """Run ``tapct pretrain`` (see the CLI help) and print a summary.

    Raises:
        UserError: On any user mistake; the folders this call created for the output
            (``runs/`` of ``runs/pretrain`` too) are removed unless a checkpoint was written.
    """
    import os

    from tapct_app.train.loop import run_pretraining

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        from rich.console import Console

        console = Console(quiet=True)
    for source in data:
        if not Path(source).expanduser().exists():
            raise UserError(f"{source}: no such file or directory")
    if stop_after is not None and stop_after < 1:
        raise UserError(f"--stop-after must be >= 1, got {stop_after}")
    cfg = resolve_pretrain_config(
        config, data, preset, iterations, batch_size, seed, device, overrides, intensity_stats
    )
    from tapct_app.train.distributed import resolve_device

    try:
        resolve_device(cfg.device)  # a bad --device fails before any work
    except ValueError as exc:
        raise UserError(f"--device {cfg.device!r}: {exc}") from exc
    demo = not cfg.data.sources
    if output is None:
        output = DEMO_OUTPUT if demo else DEFAULT_OUTPUT
    from tapct_app.outputs import check_output

    check_output(output, "folder")

    requested_init = cfg.model.init
    if requested_init is not None:
        from tapct_app.models import check_init_source

        check_init_source(requested_init)
    if resume:
        cfg = _config_for_resume(cfg, output, console)
        if requested_init is not None:
            from tapct_app.train.checkpoint import latest_checkpoint

            if latest_checkpoint(output / "checkpoints") is not None:
                console.print(
                    f"resuming {output}: the checkpoint's weights win over --init "
                    f"{requested_init} (not loaded)", markup=False, highlight=False,
                    soft_wrap=True,
                )
    created = _first_missing(output)  # removed again if the run fails before a checkpoint
    if demo:
        console.print(
            f"tapct pretrain: built-in demo on CT phantoms ({cfg.model.name}, "
            f"{cfg.train.iterations} iterations, batch {cfg.train.batch_size}, "
            f"crops {cfg.crops.global_crops_size}/{cfg.crops.local_crops_size}) -> {output}/"
        )
    from tapct_app.train.checkpoint import list_checkpoints
    from tapct_app.train.loop import OutputInUseError

    try:
        result = run_pretraining(cfg, output, resume=resume, stop_after=stop_after, console=console)
    except UserError as exc:
        # Remove a run directory this call created, unless another process owns it or it
        # holds a checkpoint (e.g. an out-of-memory error mid-run: the run resumes).
        keep = isinstance(exc, OutputInUseError) or list_checkpoints(output / "checkpoints")
        if created is not None and not keep:
            shutil.rmtree(created, ignore_errors=True)
        raise
    if result.rank_checksums and len(set(result.rank_checksums)) > 1:
        raise RuntimeError(f"ranks diverged: parameter checksums {result.rank_checksums}")
    ran = result.iterations_done - result.start_iteration
    if ran == 0:
        console.print(
            f"{output}: the run is already complete ({result.iterations_done} of "
            f"{cfg.train.iterations} iterations); last loss {result.last_loss:.4f}",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
        if result.model_dir is not None:
            console.print(f"encoder (teacher backbone): {result.model_dir}/", markup=False)
        return
    console.print(
        f"iterations {result.start_iteration} -> {result.iterations_done} of "
        f"{cfg.train.iterations} ({ran} in {result.wall_s:.1f} s, "
        f"{result.samples_per_s:.1f} samples/s)"
    )
    console.print(f"loss: first {result.first_loss:.4f} -> last {result.last_loss:.4f}")
    if result.checkpoint is not None:
        console.print(f"checkpoint: {result.checkpoint}")
    if result.model_dir is not None:
        console.print(f"encoder (teacher backbone): {result.model_dir}/")
    console.print(f"metrics: {output / 'metrics.jsonl'}, loss curve: {output / 'loss_curve.png'}")


def export_command(checkpoint: Path, output: Path, which: str, console: Any) -> None:
    """Export the teacher (or student) backbone of a checkpoint with ``save_pretrained``.

    Args:
        checkpoint: A checkpoint file or a run directory (its newest checkpoint).
        output: The model directory to write (atomically).
        which: ``teacher`` or ``student``.
        console: A rich console.

    Raises:
        UserError: If the checkpoint is missing or unreadable, or ``which`` is unknown.
    """
    from tapct_app.intensity import model_metadata
    from tapct_app.outputs import atomic_output_dir, check_output
    from tapct_app.train.build import build_backbone
    from tapct_app.train.checkpoint import latest_checkpoint, load_checkpoint
    from tapct_app.train.model_card import model_card

    if which not in ("teacher", "student"):
        raise UserError(f"--which {which!r}: expected teacher or student")
    check_output(output, "folder", owned_by="model.safetensors")
    path = checkpoint
    if checkpoint.is_dir():
        found = latest_checkpoint(checkpoint / "checkpoints") or latest_checkpoint(checkpoint)
        if found is None:
            raise UserError(f"{checkpoint}: no checkpoint-*.pt found")
        path = found
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        state = load_checkpoint(path)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    cfg = structure(PretrainConfig, state["config"], f"{path} config")
    backbone = build_backbone(cfg)
    prefix = "backbone."
    weights = {k[len(prefix) :]: v for k, v in state[which].items() if k.startswith(prefix)}
    backbone.load_state_dict(weights, strict=True)
    card = model_card(
        cfg, int(state["iteration"]), int(state.get("samples_seen", 0)), path.parent.parent,
        which=which, title=output.name,
    )  # fmt: skip
    with atomic_output_dir(output) as tmp:
        backbone.save_pretrained(tmp, metadata=model_metadata(cfg.data.normalize),
                                 model_card=card)
    console.print(f"exported the {which} backbone of {path} (iteration {state['iteration']}) "
                  f"to {output}/ (model.safetensors, config.json, README.md model card)")
