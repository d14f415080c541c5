"""``tapct preprocess`` (scans -> zarr store) and ``tapct fingerprint`` (dataset statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, one_line, user_errors_from

__all__ = ["default_workers", "fingerprint_command", "preprocess_command"]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``; None stays None.

    Raises:
        UserError: Not of that form.
    """
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if not 0 <= k < n:
        raise UserError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


def preprocess_command(
    inputs: Sequence[Path],
    output: Path | None,
    console: Any,
    *,
    workers: int | None = None,
    shard: str | None = None,
    on_error: str = "skip",
    dry_run: bool = False,
    list_file: Path | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    allow_non_ct: bool = False,
) -> Any:
    """Convert scans into one chunked zarr store (``tapct_data.build_zarr_store``).

    The inputs are expanded with ``tapct_data.expand_inputs`` (files, folders walked
    recursively, DICOM series, list files). The store is resumable: rerunning the same
    command skips the scans already in it, a scan is in it completely or not at all (also
    after ``kill -9``), and bad scans are listed in ``STORE/skipped.jsonl``. Progress:
    a bar with scans/s and ETA on a terminal, a plain line per ~5 % of the scans
    otherwise (``tapct_app.progress.CommandProgress``). Ends with ``N scans written, M
    skipped (see STORE/skipped.jsonl)`` (``, K already done`` after N on a rerun). User
    paths are printed literally (no markup).

    Args:
        inputs: Scan files, folders or list files.
        output: The store path (e.g. ``scans.zarr``); may be None with ``dry_run``.
        console: A rich console.
        workers: Processes (default: the available cores).
        shard: ``"K/N"``: only every N-th source from the K-th (0-based) of the sorted list.
        on_error: ``"skip"`` or ``"stop"``.
        dry_run: Print what would be read (scans, skipped, left out), write nothing.
        list_file: With ``dry_run``: also write the listing as a ``.csv`` file
            (``tapct_data.write_listing``) that every shard reads instead of walking the
            archive.
        include: ``--include`` glob patterns (``tapct_data.expand_inputs``): only matching
            files are read.
        exclude: ``--exclude`` glob patterns: matching files are left out (e.g.
            ``segmentations/*`` of TotalSegmentator, ``labelsTr/*`` of nnU-Net).
        allow_non_ct: ``--allow-non-ct``: store MR and other non-HU volumes anyway.

    Returns:
        The ``tapct_data.StoreReport``, or the ``InputListing`` with ``dry_run``.

    Raises:
        UserError: A missing input, nothing readable (first reason and count; nothing is
            left on disk), or with ``on_error="stop"`` the first bad scan (named).
    """
    from tapct_data import expand_inputs, format_listing, write_listing

    from tapct_app.outputs import check_output
    from tapct_app.scans import check_inputs_exist
    from tapct_app.train.data import build_store, store_summary

    check_inputs_exist(inputs)
    if output is not None and not dry_run:
        check_output(output, "folder")
    if list_file is not None and dry_run:
        check_output(list_file, "file", "--list-file")
    with user_errors_from(inputs[0] if len(inputs) == 1 else "inputs"):
        listing = expand_inputs(inputs, include=include, exclude=exclude)
    if dry_run:
        for line in format_listing(listing):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        if list_file is not None:
            with user_errors_from(list_file):
                write_listing(listing, list_file)
            console.print(
                f"list of {len(listing.scans)} scans written to {list_file}",
                markup=False,
                soft_wrap=True,
            )
        return listing
    if output is None:
        raise UserError("--output STORE is required (or use --dry-run)")
    if list_file is not None:
        raise UserError("--list-file goes with --dry-run; give the list file as an input")
    from tapct_app.progress import CommandProgress

    with CommandProgress(console, "preprocess") as progress:
        report = build_store(
            inputs,
            output,
            on_error=on_error,
            workers=workers,
            shard=parse_shard(shard),
            progress=progress,
            listing=listing,
            allow_non_ct=allow_non_ct,
        )
    console.print(store_summary(report), markup=False, highlight=False, soft_wrap=True)
    return report


def default_workers() -> int:
    """The cores this process may use (``os.sched_getaffinity``, else ``os.cpu_count``)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def fingerprint_command(
    inputs: Sequence[Path],
    output: Path | None,
    console: Any,
    *,
    workers: int | None = None,
    on_error: str = "skip",
    samples_per_scan: int = 10_000,
    seed: int = 0,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    allow_non_ct: bool = False,
) -> Any:
    """Compute the dataset fingerprint (``tapct_data.compute_fingerprint``) of the inputs.

    Foreground: the body mask (lungs included); ``samples_per_scan`` voxels per scan,
    seeded; the scans are read by ``workers`` processes. The JSON written to ``output``
    has a ``"normalize"`` object that ``tapct pretrain --intensity-stats`` (and
    ``tapct_data.NormalizeConfig.from_json``) reads, plus the foreground intensity,
    spacing and shape statistics and the skipped scans with their reasons.

    Args:
        inputs: Scan files, folders (walked, DICOM grouped into series), zarr stores,
            ``.txt``/``.csv`` lists (``tapct_data.expand_inputs``).
        output: Optional JSON file for the result.
        console: A rich console.
        workers: Processes (default: the available cores).
        on_error: ``skip`` (leave bad scans out, list them) or ``stop`` (at the first).
        samples_per_scan: Foreground voxels sampled per scan.
        seed: Seed of the sampling.
        include: ``--include`` glob patterns (only matching files are read).
        exclude: ``--exclude`` glob patterns (matching files are left out).
        allow_non_ct: ``--allow-non-ct``: include MR and other non-HU volumes.

    Returns:
        The ``tapct_data.Fingerprint``.

    Raises:
        UserError: A missing input, a bad option, no foreground in any scan, or (with
            ``stop``) the first bad scan.
    """
    import functools

    import attrs
    from tapct_data import compute_fingerprint, read_scan

    from tapct_app.outputs import check_output
    from tapct_app.scans import check_inputs_exist, list_inputs

    check_inputs_exist(inputs)
    if output is not None:
        check_output(output, "file")
    if on_error not in ("skip", "stop"):
        raise UserError(f"--on-error {on_error!r}: expected skip or stop")
    n_workers = default_workers() if workers is None else workers
    if n_workers < 1:
        raise UserError(f"--workers {n_workers}: must be >= 1")
    if samples_per_scan < 1:
        raise UserError(f"--samples-per-scan {samples_per_scan}: must be >= 1")
    listing = list_inputs(inputs, include=include, exclude=exclude)
    if on_error == "stop" and listing.skipped:
        bad = listing.skipped[0]
        raise UserError(f"{bad.path}: {bad.reason}")
    from tapct_app.progress import CommandProgress

    try:
        with CommandProgress(console, "fingerprint") as progress:
            fp = compute_fingerprint(
                listing.scans,
                samples_per_scan=samples_per_scan,
                seed=seed,
                workers=n_workers,
                on_error=on_error,
                reader=functools.partial(read_scan, allow_non_ct=True) if allow_non_ct else None,
                progress=progress,
            )
    except ValueError as exc:
        raise UserError(one_line(exc)) from exc
    fp = attrs.evolve(fp, skipped=(*listing.skipped, *fp.skipped))
    fg, norm = fp.foreground, fp.normalize
    console.print(
        f"fingerprint of {fp.n_scans} scan(s), {fg.n_voxels:,} body voxels "
        f"({fg.n_samples:,} sampled): clip [{norm.lower:.1f}, {norm.upper:.1f}] HU, "
        f"mean {norm.mean:.4f}, std {norm.std:.4f}; median spacing "
        f"{tuple(round(v, 3) for v in fp.spacing['median'])} mm, median shape "
        f"{tuple(int(v) for v in fp.shape['median'])}",
        markup=False,
        soft_wrap=True,
    )
    if fp.skipped:  # user paths: printed literally, never read as markup
        first = fp.skipped[0]
        console.print(
            f"{len(fp.skipped)} scan(s) skipped (first: {first.path}: {first.reason})",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )
    if output is not None:
        fp.save_json(output)
        console.print(
            f"wrote {output} (use: tapct pretrain --intensity-stats)",
            markup=False,
            soft_wrap=True,
        )
    return fp
