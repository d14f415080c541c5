"""Dataset fingerprint (nnU-Net style): foreground intensities, spacings and shapes.

The foreground is the patient's body, lungs included (:func:`body_mask`): the largest
connected component above ``threshold`` HU with its holes filled slice by slice in the
axial plane. A fixed number of foreground voxels is sampled per scan (seeded, nnU-Net v2
``DatasetFingerprintExtractor``) for the percentiles; mean, std, min and max are exact
over every foreground voxel. The 0.5/99.5 percentiles, mean and std give the
:class:`~tapct_data.NormalizeConfig` that pretraining and embedding use.

References:
    Isensee et al., nnU-Net (Nature Methods 2021), ``nnunetv2/experiment_planning/
    dataset_fingerprint/fingerprint_extractor.py`` and ``CTNormalization``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from ._workers import call_capturing_warnings
from .inputs import ScanSource, Skipped, skip_reason
from .normalize import NormalizeConfig
from .volume import Volume

__all__ = [
    "Fingerprint",
    "ForegroundStats",
    "body_mask",
    "compute_fingerprint",
    "compute_foreground_stats",
]

#: Foreground threshold of the body mask in HU (soft tissue and bone; air and lung below).
BODY_THRESHOLD_HU = -500.0


def body_mask(hu: torch.Tensor | np.ndarray, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """The patient's body, lungs and bowel gas included.

    The largest 6-connected component of ``hu > threshold`` (the body wall, the table is
    usually a smaller separate component), with the holes of each axial slice filled
    (``scipy.ndimage.binary_fill_holes`` per slice): the lungs are enclosed by the chest
    wall in every axial slice, whereas in 3D they connect to the air outside through the
    trachea, so a 3D fill leaves them out (on ``example_ct.nii.gz`` the 0.5 percentile is
    about -980 HU with the per-slice fill and -620 HU with a 3D fill).

    Args:
        hu: ``(D, H, W)`` or ``(1, D, H, W)`` HU (D the axial axis).
        threshold: HU threshold of the body wall.

    Returns:
        ``(D, H, W)`` bool numpy array (all False when nothing exceeds ``threshold``).

    Raises:
        ValueError: Not a single-channel 3-D volume.
    """
    from scipy import ndimage

    x = hu.detach().cpu().numpy() if isinstance(hu, torch.Tensor) else np.asarray(hu)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"body_mask needs a (D, H, W) or (1, D, H, W) volume, got {x.shape}")
    above = x > threshold
    labels, n = ndimage.label(above)
    if n == 0:
        return np.zeros(x.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    del labels
    for k in range(body.shape[0]):  # per axial slice
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


@attrs.frozen
class ForegroundStats:
    """Foreground intensity statistics in HU (nnU-Net's ``foreground_intensity_properties``).

    Attributes:
        lower: 0.5th percentile (of the sampled voxels).
        upper: 99.5th percentile (of the sampled voxels).
        mean: Mean over all foreground voxels (exact).
        std: Standard deviation over all foreground voxels (exact, population).
        median: Median (of the sampled voxels).
        min: Minimum over all foreground voxels.
        max: Maximum over all foreground voxels.
        n_voxels: Foreground voxels counted over all scans.
        n_samples: Voxels sampled for the percentiles.
    """

    lower: float
    upper: float
    mean: float
    std: float
    median: float
    min: float
    max: float
    n_voxels: int
    n_samples: int

    @property
    def normalize(self) -> NormalizeConfig:
        """The :class:`NormalizeConfig` these statistics define (clip 0.5/99.5, mean, std)."""
        return NormalizeConfig(self.lower, self.upper, self.mean, self.std)


@attrs.frozen
class _ScanStats:
    """One scan's contribution (what a worker process sends back)."""

    count: int
    total: float
    total_sq: float
    vmin: float
    vmax: float
    samples: np.ndarray  # (n,) float32
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]


@attrs.frozen
class Fingerprint:
    """A dataset fingerprint.

    Attributes:
        foreground: Foreground intensity statistics.
        spacing: ``{"median", "min", "max", "percentile_05", "percentile_95"}`` of the
            scans' ``(sd, sh, sw)`` spacing in mm, each a 3-list.
        shape: The same statistics of the scans' ``(D, H, W)`` shapes in voxels.
        n_scans: Scans that contributed.
        skipped: `Skipped` ``(path, reason)`` of every scan left out (unreadable, not CT,
            no foreground), reasons in the words of the exception.
        settings: How it was computed (``samples_per_scan``, ``seed``, ``threshold_hu``,
            ``foreground``).
    """

    foreground: ForegroundStats
    spacing: dict[str, list[float]]
    shape: dict[str, list[float]]
    n_scans: int
    skipped: tuple[Skipped, ...] = ()
    settings: dict[str, Any] = attrs.field(factory=dict)

    @property
    def normalize(self) -> NormalizeConfig:
        """The statistics for pretraining and embedding."""
        return self.foreground.normalize

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; its ``"normalize"`` loads with `NormalizeConfig.from_json`."""
        return {
            "format": "tapct-fingerprint/1",
            "normalize": self.normalize.to_dict(),
            "foreground_intensity": attrs.asdict(self.foreground),
            "spacing_mm": self.spacing,
            "shape_voxels": self.shape,
            "n_scans": self.n_scans,
            "n_voxels": self.foreground.n_voxels,
            "skipped": [s.to_dict() for s in self.skipped],
            "settings": dict(self.settings),
        }

    def save_json(self, path: str | PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON (temporary file, then rename).

        Args:
            path: The file; parent folders are created.

        Returns:
            The path.
        """
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, file)
        return file


def _describe(item: Any) -> str:
    if isinstance(item, Volume):
        return item.source or "<volume>"
    if isinstance(item, torch.Tensor):
        return f"<tensor {tuple(item.shape)}>"
    return str(item)


def _scan_stats(
    item: Any,
    index: int,
    reader: Callable[[Any], Volume] | None,
    seed: int,
    samples: int,
    threshold: float,
) -> _ScanStats:
    """Read one scan, mask its body and sample it (module level: runs in worker processes)."""
    if isinstance(item, Volume):
        volume = item
    elif isinstance(item, torch.Tensor):
        volume = Volume(item.reshape(1, *item.shape[-3:]), (1.0, 1.0, 1.0), np.eye(4))
    elif reader is not None:
        volume = reader(item)
    elif isinstance(item, ScanSource):
        from .inputs import read_scan

        volume = read_scan(item)
    else:
        from .io import read_volume

        volume = read_volume(item)
    x = volume.data.detach().cpu().float().numpy()[0]  # (D, H, W) HU
    mask = body_mask(x, threshold)
    fg = x[mask]
    if fg.size == 0:
        raise ValueError(f"{_describe(item)}: no foreground (no body above {threshold:g} HU)")
    rng = np.random.default_rng([seed, index])  # per scan: independent of worker order
    fg64 = fg.astype(np.float64)
    return _ScanStats(
        count=int(fg.size),
        total=float(fg64.sum()),
        total_sq=float(np.square(fg64).sum()),
        vmin=float(fg.min()),
        vmax=float(fg.max()),
        samples=fg[rng.integers(0, fg.size, samples)].astype(np.float32),
        spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
        shape=tuple(int(s) for s in x.shape),  # type: ignore[arg-type]
    )


def _summary(rows: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    a = np.asarray(rows, dtype=np.float64)
    return {
        "median": np.median(a, axis=0).tolist(),
        "min": a.min(axis=0).tolist(),
        "max": a.max(axis=0).tolist(),
        "percentile_05": np.percentile(a, 5, axis=0).tolist(),
        "percentile_95": np.percentile(a, 95, axis=0).tolist(),
    }


def _mp_context() -> Any:
    # fork where the platform has it (as torch's DataLoader): a spawned worker re-imports
    # torch (seconds each), which cost more than small scans take (measured in
    # benchmarks/bench_fingerprint.py); the workers run numpy/scipy only.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def compute_fingerprint(
    sources: Iterable[Any],
    *,
    samples_per_scan: int = 10_000,
    max_samples: int = 10_000_000,
    seed: int = 0,
    workers: int = 1,
    on_error: str = "skip",
    threshold: float = BODY_THRESHOLD_HU,
    reader: Callable[[Any], Volume] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Fingerprint:
    """Foreground intensity, spacing and shape statistics of a dataset (nnU-Net style).

    Per scan: read it, take its :func:`body_mask`, sample ``samples_per_scan`` foreground
    voxels uniformly with replacement (``numpy.random.default_rng([seed, i])`` for the
    ``i``-th source, so the result does not depend on ``workers``), and accumulate exact
    float64 sums for the mean and std. Scans are combined in source order. Percentiles are
    taken over the pooled samples, every scan weighing the same (as nnU-Net). At most
    ``max_samples`` samples are kept in all (``samples_per_scan`` is lowered to
    ``max_samples // n_sources`` for large datasets; nnU-Net does the same with its 10^8).

    Args:
        sources: `ScanSource` records (``expand_inputs(...).scans``, read with
            `read_scan`), paths (`read_volume`), `Volume` objects, ``(D, H, W)`` /
            ``(1, D, H, W)`` HU tensors (spacing 1 mm), or items ``reader`` reads.
        samples_per_scan: Foreground voxels sampled per scan (nnU-Net: 10,000).
        max_samples: Bound on all samples together (memory: 4 bytes each).
        seed: Seed of the sampling.
        workers: Processes reading scans in parallel (1: in this process). ``reader``
            must then be picklable (a module-level function).
        on_error: ``"skip"``: a scan that cannot be read or has no foreground is left out
            and listed in ``Fingerprint.skipped`` with the exception's text;
            ``"stop"``: the first such error (in source order) is raised.
        threshold: Body threshold in HU (:func:`body_mask`).
        reader: ``item -> Volume``; default `read_scan` / `read_volume` by type.
        progress: Called with ``(done, total)`` after each scan.

    Returns:
        The :class:`Fingerprint`; ``fingerprint.normalize`` is the `NormalizeConfig`.

    Raises:
        ValueError: Bad arguments; no source; no foreground voxel in any scan (one line
            with the number of scans and the first reason); with ``on_error="stop"``
            the first bad scan's error.
    """
    if samples_per_scan < 1 or max_samples < 1:
        raise ValueError(
            f"samples_per_scan ({samples_per_scan}) and max_samples ({max_samples}) must be >= 1"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    items = list(sources)
    if not items:
        raise ValueError("no scans to fingerprint")
    per_scan = max(1, min(samples_per_scan, max_samples // len(items)))
    args = [(item, i, reader, seed, per_scan, threshold) for i, item in enumerate(items)]

    results: list[_ScanStats] = []
    skipped: list[Skipped] = []

    def collect(item: Any, outcome: _ScanStats | BaseException) -> None:
        if isinstance(outcome, BaseException):
            if on_error == "stop":
                raise outcome
            skipped.append(Skipped(_describe(item), skip_reason(_describe(item), outcome)))
        else:
            results.append(outcome)
        if progress is not None:
            progress(len(results) + len(skipped), len(items))

    if workers == 1 or len(items) == 1:
        for a in args:
            try:
                outcome: _ScanStats | BaseException = _scan_stats(*a)
            except Exception as exc:  # skip-and-report: the reason is the exception's text
                outcome = exc
            collect(a[0], outcome)
    else:
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=_mp_context()) as pool:
            # warnings come back with each result, shown here (the app's policy)
            futures = [pool.submit(call_capturing_warnings, _scan_stats, *a) for a in args]
            try:
                for a, future in zip(args, futures, strict=True):
                    error = future.exception()  # the pool's own failure (a dead worker)
                    if error is not None:
                        outcome = error
                    else:
                        try:
                            outcome = future.result().unwrap()
                        except Exception as exc:  # the scan's error: skip-and-report
                            outcome = exc
                    collect(a[0], outcome)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    if not results:
        first = f"{skipped[0].path}: {skipped[0].reason}" if skipped else "?"
        raise ValueError(
            f"{first}; no scan could be fingerprinted ({len(skipped)} of {len(items)} "
            "skipped)"
        )
    count = sum(r.count for r in results)
    total = sum(r.total for r in results)
    total_sq = sum(r.total_sq for r in results)
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    pool_values = np.concatenate([r.samples for r in results])
    lower, median, upper = np.percentile(pool_values, [0.5, 50.0, 99.5])
    foreground = ForegroundStats(
        lower=float(lower),
        upper=float(upper),
        mean=float(mean),
        std=std,
        median=float(median),
        min=min(r.vmin for r in results),
        max=max(r.vmax for r in results),
        n_voxels=int(count),
        n_samples=int(pool_values.size),
    )
    return Fingerprint(
        foreground=foreground,
        spacing=_summary([r.spacing for r in results]),
        shape=_summary([r.shape for r in results]),
        n_scans=len(results),
        skipped=tuple(skipped),
        settings={
            "foreground": "body mask: largest component above threshold, holes filled per "
            "axial slice",
            "threshold_hu": float(threshold),
            "samples_per_scan": int(per_scan),
            "seed": int(seed),
        },
    )


def compute_foreground_stats(volumes_or_paths: Iterable[Any], **kwargs: Any) -> ForegroundStats:
    """The foreground intensity part of :func:`compute_fingerprint` (same arguments).

    Args:
        volumes_or_paths: As ``sources`` of :func:`compute_fingerprint`.
        **kwargs: Its keyword arguments; ``on_error`` defaults to ``"stop"`` here.

    Returns:
        `ForegroundStats`; ``.normalize`` is the `NormalizeConfig`.

    Raises:
        ValueError: As :func:`compute_fingerprint`.
    """
    kwargs.setdefault("on_error", "stop")
    return compute_fingerprint(volumes_or_paths, **kwargs).foreground
