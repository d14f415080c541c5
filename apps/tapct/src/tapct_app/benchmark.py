"""``tapct benchmark``: the ``tapct_eval`` runner with ``tapct_data`` readers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, user_errors_from

__all__ = ["benchmark_command", "results_table"]


def results_table(results: Any) -> Any:
    """A rich table of one task's results: the main metric and the secondary ones.

    Args:
        results: A ``tapct_eval.BenchmarkResults``.

    Returns:
        A ``rich.table.Table`` (mean, std and the number of valid seeds, or of query pairs
        for retrieval, per row).
    """
    from rich.table import Table
    from rich.text import Text

    spread = "query pairs" if results.kind == "retrieval" else "seeds"
    table = Table(
        title=Text(
            f"{results.task} / {results.model} ({results.kind}): {results.metric} "
            f"(mean ± std over {spread})"
        )
    )
    for column in ("class" if results.kind == "segmentation" else "metric", "mean", "std", "valid"):
        table.add_column(column)
    rows = [("all" if results.kind == "segmentation" else results.metric, results.summary)]
    rows += list(results.per_class.items())
    for name, s in rows:
        table.add_row(Text(str(name)), f"{s.mean:.3f}", f"{s.std:.3f}", f"{s.n_valid}/{s.n_total}")
    return table


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
        UserError: A missing or invalid task file, an unreadable scan or label, a label
            that is an image, lies elsewhere than its image or holds values outside the
            task's classes (``tapct_eval.LabelError``), a bad model or device.
    """
    from tapct_data import strip_image_suffix
    from tapct_eval import CaseError, LabelError, load_task, run_benchmark

    from tapct_app.devices import resolve_device
    from tapct_app.intensity import model_normalize
    from tapct_app.models import load_backbone
    from tapct_app.outputs import atomic_output_dir, check_output
    from tapct_app.progress import CommandProgress
    from tapct_app.readers import ScanLoaders

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
    backbone, _ = load_backbone(model, dev)
    patch = tuple(int(p) for p in backbone.patch_size)
    if any(r % p for r, p in zip(task.roi_size, patch, strict=True)):
        raise UserError(
            f"{task_file}: roi_size {task.roi_size} is not a multiple of the model's patch "
            f"size {patch}"
        )
    output = check_output(output or Path("runs/benchmark") / task.name, "folder")
    loaders = ScanLoaders(model_normalize(model, intensity_stats), allow_non_ct=allow_non_ct)
    model_name = Path(model).name if Path(model).exists() else str(model)
    # One step of progress: the features of one case, or one optimizer step of a head.
    with (
        atomic_output_dir(output) as tmp,
        CommandProgress(console, "benchmark", unit="steps") as progress,
    ):
        try:
            results = run_benchmark(
                task,
                backbone,
                tmp,
                seeds=tuple(seeds),
                load_image=loaders.load_image,
                load_label=loaders.load_label,
                load_spacing=lambda p: loaders.volume(p).spacing,
                device=str(dev),
                model_name=model_name,
                progress=progress,
            )
        except (LabelError, CaseError) as exc:  # the message starts with the case's file
            raise UserError(str(exc)) from exc
    console.print(results_table(results))
    console.print(
        f"{task.name}: {results.metric} {results.summary} over seeds {list(seeds)} -> {output}/"
    )
    return results
