"""Training data: sources -> zarr store cache -> slab dataset -> per-iteration batches.

The order of samples is a pure function of ``(seed, sample index)``: the sample index
of micro-batch ``a`` on rank ``r`` at iteration ``it`` is
``samples_seen + (it - start) * global_batch + (r * accumulation_steps + a) * batch + j``.
Resuming therefore continues the data stream exactly (DINOv2's resume does not), and a
run on 2 processes sees the same samples as a single process accumulating 2
micro-batches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Sampler

from tapct_app.errors import UserError, user_errors_from

__all__ = [
    "IndexedSlabs",
    "IterationBatchSampler",
    "derive_seed",
    "prepare_store",
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


def prepare_store(
    sources: Sequence[str | Path],
    cache_dir: Path,
    progress: Callable[..., Any] | None = None,
) -> Path:
    """Return a zarr store holding ``sources``, building a cached one when needed.

    A single zarr store is used as is. Scan files and DICOM folders are converted with
    ``tapct_data.build_zarr_store`` into ``cache_dir/scans-<hash>.zarr``, where the hash
    is of the resolved source paths, so a rerun with the same sources reuses (and
    resumes) the cache.

    Args:
        sources: Scan files, DICOM folders, or exactly one zarr store.
        cache_dir: Folder of the cache (under the run's output directory).
        progress: Passed to ``build_zarr_store``.

    Returns:
        The store path.

    Raises:
        UserError: If a source is missing, a zarr store is mixed with scans, or a scan
            cannot be converted (the message names the file).
    """
    if not sources:
        raise UserError("no training data given (use --data PATH)")
    paths = [Path(s).expanduser() for s in sources]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
    from tapct_data import is_zarr_store

    stores = [p for p in paths if is_zarr_store(p)]
    if stores:
        if len(paths) != 1:
            raise UserError(f"{stores[0]}: give one zarr store alone, not mixed with other data")
        return stores[0]
    resolved = sorted(str(p.resolve()) for p in paths)
    key = hashlib.sha1(json.dumps(resolved).encode()).hexdigest()[:10]
    store = cache_dir / f"scans-{key}.zarr"
    cache_dir.mkdir(parents=True, exist_ok=True)
    from tapct_data import build_zarr_store

    with user_errors_from(", ".join(str(p) for p in paths) if len(paths) == 1 else "data"):
        build_zarr_store([str(p) for p in paths], store, progress=progress, on_error="raise")
    return store


class IterationBatchSampler(Sampler[list[int]]):
    """Yield this rank's micro-batches of sample indices, iteration by iteration.

    Args:
        start_iteration: First iteration to yield.
        end_iteration: One past the last iteration.
        samples_seen: Global sample index at ``start_iteration``.
        batch_size: Samples per micro-batch.
        accumulation_steps: Micro-batches per iteration on this rank.
        rank: This process's rank.
        world_size: Number of processes.
    """

    def __init__(
        self,
        start_iteration: int,
        end_iteration: int,
        samples_seen: int,
        batch_size: int,
        accumulation_steps: int,
        rank: int,
        world_size: int,
    ) -> None:
        self.start, self.end = start_iteration, end_iteration
        self.samples_seen = samples_seen
        self.batch_size, self.accum = batch_size, accumulation_steps
        self.rank, self.world_size = rank, world_size

    @property
    def global_batch(self) -> int:
        """Samples per iteration over all ranks and micro-batches."""
        return self.batch_size * self.accum * self.world_size

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.end):
            base = self.samples_seen + (it - self.start) * self.global_batch
            for a in range(self.accum):
                shard = self.rank * self.accum + a
                first = base + shard * self.batch_size
                yield list(range(first, first + self.batch_size))


class IndexedSlabs(Dataset):
    """Map-style view of ``tapct_data.PretrainSlabDataset``: index ``k`` -> sample ``k``.

    ``PretrainSlabDataset[k]`` is a pure function of ``(seed, k)`` (a scan and a start
    slice drawn from a generator seeded with both), so indexing it with the global sample
    indices of :class:`IterationBatchSampler` gives every rank its own samples and makes
    resume exact; a map-style wrapper lets the DataLoader use that sampler.

    Args:
        dataset: An object whose ``[k]`` returns the slab ``(1, S, H0, W0)`` of sample ``k``.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(index)]
