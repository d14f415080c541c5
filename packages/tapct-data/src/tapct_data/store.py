"""A chunked zarr store of CT scans (int16 HU), resumable and safe to interrupt."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from .formats import AIR_HU
from .inputs import scan_name
from .volume import Volume

__all__ = ["ZarrVolumeStore", "build_zarr_store"]

FORMAT_VERSION = 1


def _unique_names(sources: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for src in sources:
        base = scan_name(Path(src).name)
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}_{count}")
    return names


def _mapping_attr(group: zarr.Group, key: str, where: Path) -> Mapping[str, Any]:
    """The group attribute ``key`` (a JSON object; ``{}`` when absent)."""
    value = group.attrs.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{where}: attribute {key!r} is not a mapping ({value!r}); not a scan store"
        )
    return value


def build_zarr_store(
    sources: Sequence[str | PathLike[str]] | str | PathLike[str],
    store: str | PathLike[str],
    *,
    progress: Callable[[int, int, str], None] | None = None,
    chunks: tuple[int, int, int] = (8, 256, 256),
    reader: Callable[[Path], Volume] | None = None,
    on_error: str = "skip",
) -> Path:
    """Convert scans (files or DICOM folders) into one zarr group, resumably.

    Layout: one array per scan, ``(D, H, W)`` int16 HU (rounded, clipped to int16), in the
    canonical orientation, chunked ``chunks`` along D and in-plane; array attributes
    ``spacing``, ``affine``, ``source``, ``metadata`` and ``complete``. Group attributes
    ``manifest`` (name -> source, shape, spacing) and ``failed`` (source -> error).

    Safe to interrupt: ``complete=True`` is written last, and readers (`ZarrVolumeStore`)
    ignore arrays without it; on a rerun, complete scans from the same source are skipped
    and incomplete ones are deleted and rewritten. A scan is therefore complete or absent.

    Args:
        sources: Scan paths, or one folder whose entries (files and sub-folders) are scans.
        store: Output path of the zarr group (created if missing).
        progress: Called as ``progress(index, total, name)`` after each scan.
        chunks: Chunk shape ``(d, h, w)`` in voxels.
        reader: ``path -> Volume``; default `read_volume`.
        on_error: ``"skip"`` (record in ``failed``, warn, continue) or ``"raise"``.

    Returns:
        The store path.

    Raises:
        ValueError: bad ``on_error``/``chunks``, or a scan failure with ``on_error="raise"``.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if len(chunks) != 3 or min(chunks) < 1:
        raise ValueError(f"chunks must be 3 positive ints, got {chunks}")
    if reader is None:
        from .io import read_volume

        reader = read_volume
    if isinstance(sources, str | PathLike):
        folder = Path(sources)
        paths = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    else:
        paths = [Path(s) for s in sources]
    store = Path(store)
    group = zarr.open_group(str(store), mode="a")
    group.attrs.setdefault("format_version", FORMAT_VERSION)
    manifest: dict[str, Any] = dict(_mapping_attr(group, "manifest", store))
    failed = {str(k): str(v) for k, v in _mapping_attr(group, "failed", store).items()}
    names = _unique_names(paths)
    for index, (path, name) in enumerate(zip(paths, names)):
        if name in group:
            existing = group[name]
            if existing.attrs.get("complete") and existing.attrs.get("source") == str(path):
                if progress:
                    progress(index + 1, len(paths), name)
                continue
            del group[name]  # incomplete (interrupted) or another source: rewrite
        try:
            volume = reader(path)
        except ValueError as exc:
            if on_error == "raise":
                raise
            failed[str(path)] = str(exc)
            group.attrs["failed"] = failed
            warnings.warn(f"skipped {path}: {exc}", UserWarning, stacklevel=2)
            continue
        data = volume.data[0].round().clamp(-32768, 32767).to(torch.int16).numpy()
        array = group.create_array(
            name,
            shape=data.shape,
            chunks=tuple(min(c, s) for c, s in zip(chunks, data.shape)),
            dtype="int16",
            fill_value=int(AIR_HU),
        )
        array[...] = data
        meta = {k: v for k, v in volume.metadata.items() if isinstance(v, str | int | float)}
        array.attrs.update(
            {
                "spacing": list(volume.spacing),
                "affine": np.asarray(volume.affine).tolist(),
                "source": str(path),
                "metadata": meta,
            }
        )
        array.attrs["complete"] = True  # written last: the completion marker
        manifest[name] = {
            "source": str(path),
            "shape": list(data.shape),
            "spacing": list(volume.spacing),
        }
        group.attrs["manifest"] = manifest
        failed.pop(str(path), None)
        group.attrs["failed"] = failed
        if progress:
            progress(index + 1, len(paths), name)
    return store


class ZarrVolumeStore:
    """Read access to a store made by `build_zarr_store` (complete scans only).

    Args:
        path: The zarr group.

    Raises:
        FileNotFoundError: no store at ``path``.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no zarr store")
        self._group = zarr.open_group(str(self.path), mode="r")
        manifest = _mapping_attr(self._group, "manifest", self.path)
        self._arrays: dict[str, zarr.Array] = {}
        for name in sorted(manifest):
            item = self._group.get(name)
            if isinstance(item, zarr.Array) and item.attrs.get("complete"):
                self._arrays[name] = item
        self.names: list[str] = list(self._arrays)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ZarrVolumeStore({str(self.path)!r}, {len(self)} scans)"

    def _array(self, name: str):
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"{name!r} not in the store; have {self.names[:10]}...") from None

    def shape(self, name: str) -> tuple[int, int, int]:
        """``(D, H, W)`` of a scan."""
        return tuple(self._array(name).shape)  # type: ignore[return-value]

    def read(self, name: str) -> Volume:
        """The whole scan as a `Volume` (``data (1, D, H, W)`` float32 HU)."""
        array = self._array(name)
        attrs = array.attrs
        return Volume(
            data=torch.from_numpy(array[...].astype(np.float32))[None],
            spacing=attrs["spacing"],
            affine=np.asarray(attrs["affine"]),
            source=attrs["source"],
            metadata=dict(attrs.get("metadata", {})),
        )

    def read_slab(self, name: str, start: int, depth: int) -> torch.Tensor:
        """Slices ``start .. start + depth - 1`` as ``(1, depth, H, W)`` float32 HU.

        Only the chunks along D that hold these slices are read.

        Raises:
            ValueError: the slab is not inside the scan.
        """
        array = self._array(name)
        if start < 0 or depth < 1 or start + depth > array.shape[0]:
            raise ValueError(
                f"slab [{start}, {start + depth}) outside scan {name!r} "
                f"with {array.shape[0]} slices"
            )
        return torch.from_numpy(array[start : start + depth].astype(np.float32))[None]
