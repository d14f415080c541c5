"""``tapct preprocess`` (scans -> zarr store) and ``tapct fingerprint`` (foreground stats)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, user_errors_from

__all__ = ["fingerprint_command", "preprocess_command"]


def preprocess_command(inputs: Sequence[Path], output: Path, console: Any) -> Path:
    """Convert scans into one chunked zarr store (``tapct_data.build_zarr_store``).

    The store is resumable: rerunning adds the scans that are missing; a scan is in it
    completely or not at all.

    Args:
        inputs: Scan files or DICOM folders.
        output: The store path (e.g. ``scans.zarr``).
        console: A rich console.

    Returns:
        The store path.

    Raises:
        UserError: A missing, corrupt or non-CT input (named).
    """
    from tapct_data import ZarrVolumeStore, build_zarr_store

    from tapct_app.scans import check_inputs_exist

    check_inputs_exist(inputs)
    with user_errors_from(inputs[0] if len(inputs) == 1 else "preprocess"):
        store = build_zarr_store([str(p) for p in inputs], output, on_error="raise")
    n = len(ZarrVolumeStore(store))
    console.print(f"zarr store {store}: {n} scan(s)")
    return Path(store)


def fingerprint_command(inputs: Sequence[Path], output: Path | None, console: Any) -> Any:
    """Compute the foreground intensity statistics used by ``ClipNormalize``.

    Args:
        inputs: Scan files, DICOM folders or zarr stores.
        output: Optional JSON file for the result.
        console: A rich console.

    Returns:
        The ``tapct_data.ForegroundStats``.

    Raises:
        UserError: A missing or unreadable input.
    """
    from tapct_data import compute_foreground_stats

    from tapct_app.scans import check_inputs_exist, iter_scans

    check_inputs_exist(inputs)
    volumes = [volume for _name, _source, volume in iter_scans(inputs)]
    if not volumes:
        raise UserError("no scans found in the inputs")
    stats = compute_foreground_stats(volumes)
    values = {
        "lower": float(stats.lower),
        "upper": float(stats.upper),
        "mean": float(stats.mean),
        "std": float(stats.std),
        "n_voxels": int(stats.n_voxels),
        "n_scans": len(volumes),
    }
    console.print(
        f"foreground over {len(volumes)} scan(s), {values['n_voxels']:,} voxels: clip "
        f"[{values['lower']:.1f}, {values['upper']:.1f}] HU, mean {values['mean']:.4f}, "
        f"std {values['std']:.4f}  (paper: [-1008, 822], -86.8086, 322.6347)"
    )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(values, indent=2), encoding="utf-8")
    return stats
