"""``tapct benchmark``: the ``tapct_eval`` runner with ``tapct_data`` readers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, user_errors_from

__all__ = ["benchmark_command"]


def benchmark_command(
    task_file: Path,
    model: str,
    output: Path | None,
    seeds: Sequence[int],
    device: str,
    console: Any,
    intensity_stats: Path | None = None,
    allow_non_ct: bool = False,
) -> Any:
    """Run a benchmark task file for one model; write results.json/.csv and figures.

    Args:
        task_file: A ``tapct_eval`` task file (YAML/JSON).
        model: Model folder or preset.
        output: Results folder (default ``runs/benchmark/<task name>``); written
            atomically.
        seeds: Seeds, one head per seed (paper: 3).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        console: A rich console.
        intensity_stats: ``--intensity-stats`` JSON overriding the model's statistics.
        allow_non_ct: ``--allow-non-ct``: read non-HU images anyway.

    Returns:
        The ``tapct_eval.BenchmarkResults``.

    Raises:
        UserError: A missing or invalid task file, an unreadable scan or label, a bad
            model or device.
    """
    from tapct_data import strip_image_suffix
    from tapct_eval import load_task, run_benchmark

    from tapct_app.backbone import load_backbone
    from tapct_app.intensity import model_normalize
    from tapct_app.outputs import atomic_output_dir, check_output
    from tapct_app.readers import ScanLoaders
    from tapct_app.train.distributed import resolve_device

    if output is not None:
        check_output(output, "folder")
    if not task_file.is_file():
        raise UserError(f"{task_file}: no such task file")
    if not seeds:
        raise UserError("--seeds: give at least one seed")
    with user_errors_from(task_file):
        # TaskFileError (a ValueError) names file and key; case ids by the one suffix table.
        task = load_task(task_file, case_id=lambda p: strip_image_suffix(p.name))
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from exc
    backbone = load_backbone(model, dev)
    patch = tuple(int(p) for p in backbone.patch_size)
    if any(r % p for r, p in zip(task.roi_size, patch, strict=True)):
        raise UserError(
            f"{task_file}: roi_size {task.roi_size} is not a multiple of the model's patch "
            f"size {patch}"
        )
    output = check_output(output or Path("runs/benchmark") / task.name, "folder")
    loaders = ScanLoaders(model_normalize(model, intensity_stats), allow_non_ct=allow_non_ct)
    model_name = Path(model).name if Path(model).exists() else str(model)
    with atomic_output_dir(output) as tmp:
        results = run_benchmark(
            task,
            backbone,
            tmp,
            seeds=tuple(seeds),
            load_image=loaders.load_image,
            load_label=loaders.load_label,
            device=str(dev),
            model_name=model_name,
            console=console,
        )
    console.print(
        f"{task.name}: {results.metric} {results.summary} over seeds {list(seeds)} -> {output}/"
    )
    return results
