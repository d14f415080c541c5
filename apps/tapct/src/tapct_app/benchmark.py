"""``tapct benchmark``: the ``tapct_eval`` runner with ``tapct_data`` readers, any encoder."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, user_errors_from

__all__ = ["benchmark_command", "comparison_table", "results_table"]


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
    model: str | Sequence[str],
    output: Path | None,
    seeds: Sequence[int],
    device: str,
    console: Any,
    intensity_stats: Path | None = None,
    allow_non_ct: bool = False,
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
        allow_non_ct: ``--allow-non-ct``: read non-HU images anyway.

    Returns:
        The ``tapct_eval.BenchmarkResults`` (one model), or a list of them (several).

    Raises:
        UserError: A missing or invalid task file, an unreadable scan or label, a label
            that is an image, lies elsewhere than its image or holds values outside the
            task's classes (``tapct_eval.LabelError``), a bad model or device, a window
            that does not fit a model.
    """
    from tapct_data import NormalizeConfig, strip_image_suffix
    from tapct_eval import CaseError, LabelError, load_task, run_benchmark
    from tapct_eval.kinds.base import file_name

    from tapct_app.devices import resolve_device
    from tapct_app.encoders import load_encoder, model_display_name
    from tapct_app.outputs import atomic_output_dir, check_output
    from tapct_app.progress import CommandProgress
    from tapct_app.readers import ScanLoaders

    models = [model] if isinstance(model, str) else list(model)
    if not models:
        raise UserError("--model: give at least one model")
    if output is not None:
        check_output(output, "folder", owned_by=_OWNED_BY[len(models) > 1])
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
    output = check_output(
        output or Path("runs/benchmark") / task.name, "folder", owned_by=_OWNED_BY[len(models) > 1]
    )  # fmt: skip
    all_results = []
    # One step of progress: the features of one scan, or one optimizer step of a head.
    with (
        atomic_output_dir(output) as tmp,
        CommandProgress(console, "benchmark", unit="steps") as progress,
    ):
        for spec, encoder in encoders:
            name = model_display_name(spec)
            intensity = encoder.preprocessing.intensity
            assert intensity is not None  # load_encoder sets it for every encoder
            loaders = ScanLoaders(NormalizeConfig(*intensity), allow_non_ct=allow_non_ct)
            try:
                results = run_benchmark(
                    task,
                    encoder,
                    tmp if len(encoders) == 1 else tmp / file_name(name),
                    seeds=tuple(seeds),
                    load_image=loaders.load_image,
                    load_label=loaders.load_label,
                    load_spacing=loaders.spacing,
                    device=str(dev),
                    model_name=name,
                    progress=progress,
                )
            except (LabelError, CaseError) as exc:  # the message starts with the case's file
                raise UserError(str(exc)) from exc
            all_results.append(results)
        if len(all_results) > 1:
            _write_comparison(all_results, tmp / "comparison.csv")
    for results in all_results:
        console.print(results_table(results))
    if len(all_results) > 1:
        console.print(comparison_table(all_results))
    for results in all_results:
        console.print(
            f"{task.name} / {results.model}: {results.metric} {results.summary} over seeds "
            f"{list(seeds)} -> {output}/"
        )
    return all_results[0] if len(all_results) == 1 else all_results


#: The file a benchmark results folder holds: one model's results.json, or the
#: comparison.csv of several (``check_output(owned_by=...)``).
_OWNED_BY = {False: "results.json", True: "comparison.csv"}


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
    from rich.text import Text

    table = Table(title=Text(f"{results[0].task}: models side by side (mean ± std over seeds)"))
    for column in ("model", "metric", "mean", "std", "valid seeds"):
        table.add_column(column)
    for r in results:
        table.add_row(
            Text(r.model),
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
