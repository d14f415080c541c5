"""Reading the user's scans for the CLI: one clear error line per bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, user_errors_from

__all__ = ["check_inputs_exist", "iter_scans", "read_ct", "scan_name"]

_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".zarr")


def scan_name(path: str | Path) -> str:
    """A file-system-safe name for a scan: its file name without the image extension.

    Args:
        path: A scan file or folder.

    Returns:
        e.g. ``example_ct_sm`` for ``ct/example_ct_sm.nii.gz``.
    """
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "scan"


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


def read_ct(path: str | Path) -> Any:
    """Read a CT scan (NIfTI, NRRD, MHA, DICOM file or series folder) in HU.

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


def iter_scans(inputs: Sequence[str | Path]) -> Iterator[tuple[str, str, Any]]:
    """Yield ``(name, source, Volume)`` for every input; zarr stores yield each scan.

    Names are made unique by appending ``-2``, ``-3``, ... .

    Args:
        inputs: Scan files, DICOM folders or zarr stores.

    Yields:
        The scan's name, its source description, its ``tapct_data.Volume``.

    Raises:
        UserError: As :func:`read_ct`.
    """
    from tapct_app.train.data import is_zarr_store

    seen: dict[str, int] = {}

    def unique(name: str) -> str:
        seen[name] = seen.get(name, 0) + 1
        return name if seen[name] == 1 else f"{name}-{seen[name]}"

    for path in inputs:
        if is_zarr_store(path):
            from tapct_data import ZarrVolumeStore

            with user_errors_from(path):
                store = ZarrVolumeStore(path)
                names = list(store.names)
            for name in names:
                with user_errors_from(f"{path}:{name}"):
                    volume = store.read(name)
                yield unique(scan_name(name)), f"{path}:{name}", volume
        else:
            yield unique(scan_name(path)), str(path), read_ct(path)
