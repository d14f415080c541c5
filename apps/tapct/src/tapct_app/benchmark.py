"""``tapct benchmark``: the ``tapct_eval`` runner with ``tapct_data`` readers, any encoder."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, user_errors_from

__all__ = ["benchmark_command", "comparison_table"]


def benchmark_command(
    task_file: Path,
    model: str | Sequence[str],
    output: Path | None,
    seeds: Sequence[int],
    device: str,
    console: Any,
    intensity_stats: Path | None = None,
) -> Any:
    """Run a benchmark task file for one or more models; write results.json/.csv and figures.

    Args:
        task_file: A ``tapct_eval`` task file (YAML/JSON).
        model: One ``--model`` string or several (see :mod:`tapct_app.encoders`: a
            model folder or preset, ``timm:NAME``, ``monai:NAME``, ``module:function``).
            With several, each model's results go to ``OUTPUT/<model>/`` and
            ``OUTPUT/comparison.csv`` holds them side by side.
        output: Results folder (default ``runs/benchmark/<task name>``); written
            atomically.
        seeds: Seeds, one head per seed (paper: 3).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        console: A rich console.
        intensity_stats: ``--intensity-stats`` JSON overriding the model's statistics.

    Returns:
        The ``tapct_eval.BenchmarkResults`` (one model), or a list of them (several).

    Raises:
        UserError: A missing or invalid task file, an unreadable scan or label, a bad
            model or device, a window that does not fit a model.
    """
    from tapct_data import NormalizeConfig, strip_image_suffix
    from tapct_eval import load_task, run_benchmark

    from tapct_app.encoders import load_encoder, model_display_name
    from tapct_app.outputs import atomic_output_dir
    from tapct_app.readers import ScanLoaders
    from tapct_app.train.distributed import resolve_device

    models = [model] if isinstance(model, str) else list(model)
    if not models:
        raise UserError("--model: give at least one model")
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
    encoders = []
    for spec in models:
        encoder = load_encoder(spec, dev, intensity_stats)
        try:
            encoder.preprocessing.resolve_window(task.roi_size, encoder.stride)
        except ValueError as exc:
            raise UserError(
                f"{task_file}: roi_size {task.roi_size} does not fit --model {spec}: {exc}"
            ) from exc
        encoders.append((spec, encoder))
    output = output or Path("runs/benchmark") / task.name
    all_results = []
    with atomic_output_dir(output) as tmp:
        for spec, encoder in encoders:
            name = model_display_name(spec)
            intensity = encoder.preprocessing.intensity
            assert intensity is not None  # load_encoder sets it for every encoder
            loaders = ScanLoaders(NormalizeConfig(*intensity))
            results = run_benchmark(
                task,
                encoder,
                tmp if len(encoders) == 1 else tmp / _dir_name(name),
                seeds=tuple(seeds),
                load_image=loaders.load_image,
                load_label=loaders.load_label,
                device=str(dev),
                model_name=name,
                console=console,
            )
            all_results.append(results)
        if len(all_results) > 1:
            _write_comparison(all_results, tmp / "comparison.csv")
            console.print(comparison_table(all_results))
    for results in all_results:
        console.print(
            f"{task.name} / {results.model}: {results.metric} {results.summary} over seeds "
            f"{list(seeds)} -> {output}/"
        )
    return all_results[0] if len(all_results) == 1 else all_results


def _dir_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def comparison_table(results: Sequence[Any]) -> Any:
    """A rich table of several models' results on one task, side by side.

    Args:
        results: ``tapct_eval.BenchmarkResults`` of one task, one per model.

    Returns:
        A ``rich.table.Table`` (model, metric, mean, std, seeds).
    """
    from rich.table import Table

    table = Table(title=f"{results[0].task}: models side by side (mean ± std over seeds)")
    for column in ("model", "metric", "mean", "std", "valid seeds"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.model,
            r.metric,
            _fmt(r.summary.mean),
            _fmt(r.summary.std),
            f"{r.summary.n_valid}/{r.summary.n_total}",
        )
    return table


def _write_comparison(results: Sequence[Any], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "model", "metric", "mean", "std", "n_valid", "n_total"])
        for r in results:
            s = r.summary
            writer.writerow([r.task, r.model, r.metric, s.mean, s.std, s.n_valid, s.n_total])
