"""TEMPORARY STAND-IN for ``tapct_data.inputs`` / ``tapct_data.formats`` (helper "inputs").

Only the names `store.py` needs, with the signatures of /work/spec/INTERFACES.md, so the
store's tests run before the ``inputs`` branch lands. REMOVE this module when rebasing onto
a main that has ``tapct_data.inputs``; import from ``.inputs`` / ``.formats`` instead.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import attrs

from .volume import Volume

AIR_HU: float = -1024.0


@attrs.frozen
class ScanSource:
    name: str
    path: Path
    kind: str
    files: tuple[Path, ...] = ()
    series_uid: str | None = None
    store_key: str | None = None

    def __str__(self) -> str:
        return str(self.path)


@attrs.frozen
class Skipped:
    path: str
    reason: str


@attrs.frozen
class InputListing:
    scans: tuple[ScanSource, ...]
    skipped: tuple[Skipped, ...] = ()
    left_out: dict[str, int] = attrs.field(factory=dict)


def read_scan(source: ScanSource, *, allow_non_ct: bool = False) -> Volume:
    from .io import read_volume

    try:
        return read_volume(source.path, allow_non_ct=allow_non_ct)
    except ValueError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(str(source)) else f"{source}: {msg}") from exc


def is_zarr_store(path: str | PathLike[str]) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in ("zarr.json", ".zgroup"))


def expand_inputs(inputs, *, include=(), exclude=(), expand_stores=True) -> InputListing:
    """STAND-IN: one scan per given path (today's behaviour), names made unique."""
    import re

    suffixes = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
    scans, seen = [], set()
    for item in inputs:
        path = Path(item)
        base = path.name
        for suffix in suffixes:
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", base) or "scan"
        name, i = base, 1
        while name in seen:
            name, i = f"{base}_{i}", i + 1
        seen.add(name)
        kind = "dicom" if path.is_dir() or path.suffix == ".dcm" else "nifti"
        scans.append(ScanSource(name=name, path=path, kind=kind))
    return InputListing(tuple(sorted(scans, key=lambda s: s.name)))
