"""Reading the user's scans for the CLI: one clear error line per bad input.

Every command that takes scans (``preprocess``, ``pretrain --data``, ``fingerprint``,
``embed``) names its inputs the same way, through ``tapct_data.expand_inputs``: scan
files, folders walked recursively (DICOM series grouped by SeriesInstanceUID), zarr
stores, and ``.txt``/``.csv`` lists; ``--include``/``--exclude`` glob patterns filter them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, user_errors_from

__all__ = ["check_inputs_exist", "iter_scans", "list_inputs", "listing_lines", "read_ct"]


def check_inputs_exist(paths: Sequence[str | Path]) -> None:
    """Fail early, before any work or output, when an input path does not exist.

    Args:
        paths: Input files or folders.

    Raises:
        UserError: ``"<path>: no such file or directory"`` for the first missing one.
    """
    if not paths:
        raise UserError("no input given")
    for p in paths:
        if not Path(p).exists():
            raise UserError(f"{p}: no such file or directory")


def list_inputs(
    inputs: Sequence[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    expand_stores: bool = True,
) -> Any:
    """Expand the inputs (``tapct_data.expand_inputs``) or fail with one line.

    Args:
        inputs: Scan files, folders, zarr stores, ``.txt``/``.csv`` lists.
        include: Glob patterns; only matching files are kept (``--include``).
        exclude: Glob patterns; matching files are dropped (``--exclude``).
        expand_stores: One source per scan of a zarr store (False: the store itself).

    Returns:
        The ``tapct_data.InputListing`` (at least one scan).

    Raises:
        UserError: a missing input, a name clash between two inputs (both paths named),
            a bad list file, or no scan at all (with the first walk-time reason).
    """
    from tapct_data import expand_inputs

    check_inputs_exist(inputs)
    where = inputs[0] if len(inputs) == 1 else ", ".join(map(str, inputs))
    try:
        listing = expand_inputs(
            [Path(p) for p in inputs], include=include, exclude=exclude, expand_stores=expand_stores
        )
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    if not listing.scans:
        detail = ""
        if listing.skipped:
            first = listing.skipped[0]
            detail = f"; {len(listing.skipped)} skipped, first: {first.path}: {first.reason}"
        elif listing.left_out:
            detail = "; left out: " + ", ".join(f"{n} {k}" for k, n in listing.left_out.items())
        raise UserError(f"{where}: no scans found{detail}")
    return listing


def listing_lines(
    inputs: Sequence[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[str]:
    """What a ``--dry-run`` prints: one line per scan, the skips, then a summary.

    Args:
        inputs: As :func:`list_inputs`.
        include: As :func:`list_inputs`.
        exclude: As :func:`list_inputs`.

    Returns:
        Plain-text lines (print them with ``markup=False``: paths may hold ``[...]``).

    Raises:
        UserError: As :func:`list_inputs`.
    """
    from tapct_data import format_listing

    return format_listing(list_inputs(inputs, include=include, exclude=exclude))


def read_ct(path: str | Path) -> Any:
    """Read one CT scan (NIfTI, NRRD, MHA, DICOM file or series folder) in HU.

    Args:
        path: The scan.

    Returns:
        A ``tapct_data.Volume`` (``data (1, D, H, W)`` float32 HU, canonical LPS).

    Raises:
        UserError: Missing, corrupt, truncated, unsupported or not a CT; the message
            names the file and the problem.
    """
    from tapct_data import read_volume

    with user_errors_from(path):
        return read_volume(path)


def iter_scans(
    inputs: Sequence[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Iterator[tuple[str, str, Any]]:
    """Yield ``(name, source, Volume)`` for every expanded scan, in name order.

    Names follow ``tapct_data.scan_name`` (unique, stable: adding an input never
    renames the others); ``source`` is the ``str`` of the ``tapct_data.ScanSource``.

    Args:
        inputs: As :func:`list_inputs`.
        include: As :func:`list_inputs`.
        exclude: As :func:`list_inputs`.

    Yields:
        The scan's name, its source description, its ``tapct_data.Volume``.

    Raises:
        UserError: As :func:`list_inputs`; a source the walk could not use (raised before
            any scan is read); or the first scan that cannot be read
            (``"<source>: <problem>"``).
    """
    from tapct_data import read_scan

    listing = list_inputs(inputs, include=include, exclude=exclude)
    if listing.skipped:  # stop before reading anything (no partial output)
        first = listing.skipped[0]
        raise UserError(f"{first.path}: {first.reason}")
    for source in listing.scans:
        with user_errors_from(str(source)):
            volume = read_scan(source)
        yield source.name, str(source), volume
