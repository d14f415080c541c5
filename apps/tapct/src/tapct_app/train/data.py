"""Training data: sources -> zarr stores (cached conversion) -> slab dataset -> batches.

The dataset (``tapct_data.PretrainSlabDataset``, sample ``k`` a pure function of
``(seed, k)``) and the one data order (``tapct_data.IterationBatchSampler``) live in
``tapct_data`` and are re-exported here; this module turns ``--data`` into stores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tapct_data import IterationBatchSampler, PretrainSlabDataset, is_zarr_store

from tapct_app.errors import UserError, user_errors_from

__all__ = [
    "IterationBatchSampler",
    "PretrainSlabDataset",
    "build_store",
    "derive_seed",
    "prepare_stores",
    "store_summary",
    "write_demo_phantoms",
]


def derive_seed(*parts: int | str) -> int:
    """Derive a 63-bit seed from a tuple (seed, iteration, shard, stream name, ...).

    Args:
        parts: Integers or strings.

    Returns:
        A non-negative int usable by ``torch.Generator.manual_seed``.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def write_demo_phantoms(folder: Path, count: int, shape: Sequence[int], seed: int) -> list[Path]:
    """Write ``count`` CT phantoms (``tapct_data.phantom``) as NIfTI files.

    Args:
        folder: Where to write ``phantom-<i>.nii.gz`` (created).
        count: Number of phantoms.
        shape: ``(D, H, W)`` voxels.
        seed: Base seed; phantom ``i`` uses ``seed + i``.

    Returns:
        The written paths.

    Raises:
        ValueError: If ``shape`` does not have 3 values.
    """
    from tapct_data import write_volume
    from tapct_data.phantom import make_phantom

    if len(shape) != 3:
        raise ValueError(f"shape must be (D, H, W), got {tuple(shape)}")
    d, h, w = shape
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"phantom-{i:03d}.nii.gz"
        if not path.is_file():
            volume, _labels = make_phantom(shape=(d, h, w), seed=seed + i)
            tmp = folder / f".tmp-phantom-{i:03d}.nii.gz"
            write_volume(volume, tmp)
            tmp.replace(path)
        paths.append(path)
    return paths


def _is_store_folder(path: Path) -> bool:
    """A folder of zarr scan stores (e.g. shards), maybe with logs beside them, no scans."""
    from tapct_data import image_suffix

    if not path.is_dir() or is_zarr_store(path):
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    stores = [p for p in entries if is_zarr_store(p)]
    others = [p for p in entries if p not in stores]
    return bool(stores) and not any(p.is_dir() or image_suffix(p) for p in others)


def prepare_stores(
    sources: Sequence[str | Path],
    cache_dir: Path,
    *,
    on_error: str = "skip",
    workers: int | None = None,
    progress: Callable[..., Any] | None = None,
    console: Any = None,
    convert: bool = True,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[Path]:
    """Return the zarr stores holding ``sources``, converting scans into a cached store.

    Zarr stores and folders of stores (shards) are used as they are, as one dataset with
    the rest. Every other source (scan files, folders, list files) is expanded with
    ``tapct_data.expand_inputs`` and converted with ``tapct_data.build_zarr_store``
    (skip-and-report, ``workers`` processes) into ``cache_dir/scans-<hash>.zarr``, where
    the hash is of the resolved source paths and the include/exclude patterns, so a rerun
    reuses (and resumes) the cache.

    Args:
        sources: Stores, folders of stores, scan files, folders or list files.
        cache_dir: Folder of the cache (under the run's output directory).
        on_error: ``"skip"`` (report bad scans in the cache's ``skipped.jsonl``) or
            ``"stop"`` (the first bad scan is the error).
        workers: Conversion processes (default: the available cores).
        progress: Passed to ``build_zarr_store``.
        console: A rich console for the one-line conversion summary, or None.
        convert: False only returns the paths (other ranks, once the main one converted).
        include: Glob patterns a scan must match (``tapct_data.expand_inputs``).
        exclude: Glob patterns that leave a scan out.

    Returns:
        The store paths (at least one).

    Raises:
        UserError: No source, a missing one, a zarr store without scans (empty or not
            written by ``tapct preprocess``; checked before any conversion), nothing
            readable (with the first reason and the count), or with ``on_error="stop"``
            the first bad scan (named).
    """
    if not sources:
        raise UserError("no training data given (use --data PATH)")
    paths = [Path(s).expanduser() for s in sources]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
    stores: list[Path] = []
    scans: list[Path] = []
    for p in paths:
        if is_zarr_store(p):
            stores.append(p)
        elif _is_store_folder(p):
            stores.extend(sorted(c for c in p.iterdir() if is_zarr_store(c)))
        else:
            scans.append(p)
    for store_path in stores:
        _check_store_has_scans(store_path)
    if scans:
        resolved = sorted(str(p.resolve()) for p in scans)
        patterns = {"include": list(include), "exclude": list(exclude)}
        keyed: Any = resolved if not (include or exclude) else [resolved, patterns]
        key = hashlib.sha1(json.dumps(keyed).encode()).hexdigest()[:10]
        store = cache_dir / f"scans-{key}.zarr"
        if convert:
            cache_dir.mkdir(parents=True, exist_ok=True)
            report = build_store(
                scans,
                store,
                on_error=on_error,
                workers=workers,
                progress=progress,
                include=include,
                exclude=exclude,
            )
            if console is not None:
                console.print(store_summary(report), markup=False, highlight=False, soft_wrap=True)
        stores.append(store)
    return stores


def _check_store_has_scans(path: Path) -> None:
    """A zarr store given as data must hold complete scans (not empty, not foreign)."""
    from tapct_data import ZarrVolumeStore

    with user_errors_from(path):
        n = len(ZarrVolumeStore(path))
    if n == 0:
        raise UserError(
            f"{path}: holds no complete scan (an empty zarr store, or one not written by "
            "tapct preprocess)"
        )


def build_store(
    inputs: Sequence[Path],
    store: Path,
    *,
    on_error: str = "skip",
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    progress: Callable[..., Any] | None = None,
    listing: Any = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    allow_non_ct: bool = False,
) -> Any:
    """Expand ``inputs`` and convert them into ``store``; a user error if nothing was read.

    Args:
        inputs: Scan files, folders or list files (ignored when ``listing`` is given).
        store: The store folder.
        on_error: ``"skip"`` or ``"stop"``.
        workers: Processes (default: ``tapct_app.preprocess.default_workers()``, the
            available cores).
        shard: ``(k, n)`` or None.
        progress: Passed to ``build_zarr_store``.
        listing: An already expanded ``tapct_data.InputListing``.
        include: Glob patterns a scan must match (ignored with ``listing``).
        exclude: Glob patterns that leave a scan out (ignored with ``listing``).
        allow_non_ct: ``--allow-non-ct``: read MR and other non-HU volumes anyway.

    Returns:
        The ``tapct_data.StoreReport``.

    Raises:
        UserError: Bad ``on_error``; ``on_error="stop"`` and a bad scan; another process
            is building ``store`` (its lock, naming the holder); or no scan could be read
            at all (the first reason and the count; nothing is left on disk).
    """
    from tapct_data import build_zarr_store, expand_inputs
    from tapct_data.locking import FolderLockedError

    if on_error not in ("skip", "stop"):
        raise UserError(f"--on-error {on_error!r}: expected skip or stop")
    if listing is None:
        with user_errors_from(inputs[0] if len(inputs) == 1 else "inputs"):
            listing = expand_inputs(inputs, include=include, exclude=exclude)
    from tapct_app.preprocess import default_workers

    n_workers = workers if workers is not None else default_workers()
    try:
        report = build_zarr_store(
            listing,
            store,
            workers=n_workers,
            on_error="stop" if on_error == "stop" else "skip",
            shard=shard,
            progress=progress,
            allow_non_ct=allow_non_ct,
        )
    except (ValueError, FolderLockedError) as exc:
        raise UserError(str(exc)) from exc
    if not report.written and not report.already_done:
        if report.skipped:
            first = report.skipped[0]
            raise UserError(
                f"{first.path}: {first.reason}; no scan could be read "
                f"({len(report.skipped)} skipped)"
            )
        raise UserError(f"no scans found in {', '.join(str(p) for p in inputs)}")
    return report


def store_summary(report: Any) -> str:
    """What one build did: ``N scans written[, K already done], M skipped (see FILE)``.

    ``N`` counts only the scans this call wrote; ``K`` (shown when not 0) the scans a
    rerun found complete and kept, so a rerun with nothing new says ``0 scans written,
    7 already done, ...``.
    """
    text = f"{len(report.written)} scans written"
    if report.already_done:
        text += f", {len(report.already_done)} already done"
    text += f", {len(report.skipped)} skipped (see {report.skipped_file})"
    return text
