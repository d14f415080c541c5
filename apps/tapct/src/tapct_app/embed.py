"""``tapct embed``: dense patch features and window cls tokens of scans, plus a PCA picture.

Built for an archive: the inputs are those of every command (files, folders, DICOM trees,
zarr stores, lists); ``--workers`` readers run ahead of the model (which stays in this
process); every scan is committed on its own (its files written to temporaries in the
output folder and renamed into place, then ``manifest.json`` rewritten atomically with the
scan merged in), so a run killed at any point (``kill -9`` included) leaves only whole
scans and a rerun of the same command skips the scans already embedded with the same
model and settings. A scan that cannot be read is skipped and reported in
``skipped.jsonl`` (``--on-error skip``, the default) or stops the run (``--on-error stop``);
when nothing at all could be embedded the command fails with one line and leaves nothing.

Per scan ``NAME`` the output folder gets:

- ``NAME.safetensors`` (or ``NAME.zarr``) with ``patch_features (E, t, h, w)`` float32,
  ``cls_tokens (n_windows, E)`` float32 and ``window_positions (n_windows, 3)`` int64
  (start voxel of each sliding window, in the padded volume);
- ``NAME_pca.png``: the first three principal components of the patch features as RGB on
  the middle axial, coronal and sagittal planes, beside the CT;

and ``manifest.json`` lists every scan embedded into the folder (over all runs) with its
source, shapes, spacing (mm), the feature grid's spacing (mm per patch) and the id of its
settings; ``settings`` maps each id to the model (name and a digest of its weights), the
window settings, the precision and the intensity normalisation it was made with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from tapct_data import AIR_HU, ScanSource, skip_reason
from tapct_data.faults import fault_point

from tapct_app.errors import UserError, one_line, user_errors_from
from tapct_app.progress import CommandProgress

__all__ = ["EMBED_FORMAT", "EmbedReport", "embed_command"]

EMBED_FORMAT = "tapct-embedding/1"
ON_ERROR = ("skip", "stop")
_TMP_MARK = ".tmp-embed-"  # in the names of temporaries; a rerun removes what a kill left


# --------------------------------------------------------------------------- records


@attrs.frozen
class EmbedReport:
    """What one ``tapct embed`` run did.

    Attributes:
        output: The output folder.
        embedded: Names of the scans embedded by this run.
        already_done: Names skipped because the folder holds them with the same settings.
        skipped: ``(source, reason)`` of every scan that could not be read.
    """

    output: Path
    embedded: tuple[str, ...]
    already_done: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]

    def summary(self) -> str:
        """The final line: ``N embedded, M skipped (see DIR/skipped.jsonl)[, K already done]``."""
        text = f"{len(self.embedded)} embedded, {len(self.skipped)} skipped"
        if self.skipped:
            text += f" (see {self.output / 'skipped.jsonl'})"
        if self.already_done:
            text += f", {len(self.already_done)} already done"
        return text + f" in {self.output}"


@attrs.frozen(eq=False)
class _Scan:
    """A scan read by a worker: what crosses the process boundary (numpy, picklable)."""

    hu: np.ndarray  # (1, D, H, W) float32 HU, after the optional in-plane resize
    spacing: tuple[float, float, float]
    affine: list[list[float]]


# --------------------------------------------------------------------------- inputs


def _list_sources(
    inputs: Sequence[Path], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Any:
    """Expand the inputs as every command does (``tapct_app.scans.list_inputs``).

    Returns:
        The ``tapct_data.InputListing``: its scans (unique names, as ``tapct preprocess``
        gives them) and the walk-time skips (reported in ``skipped.jsonl``).

    Raises:
        UserError: A missing input, a zarr store given as an input with no complete scan
            (empty, or not written by ``tapct preprocess``), or no scan at all.
    """
    from tapct_data import ZarrVolumeStore, is_zarr_store

    from tapct_app.scans import check_inputs_exist, list_inputs

    check_inputs_exist(inputs)
    for path in inputs:
        if is_zarr_store(path):
            with user_errors_from(path):
                names = ZarrVolumeStore(path).names
            if not names:
                raise UserError(
                    f"{path}: no complete scans in this zarr store (empty, or not a store "
                    "written by `tapct preprocess`)"
                )
    return list_inputs(inputs, include=include, exclude=exclude)


def _read_source(
    source: ScanSource, in_plane: tuple[int, int] | None, allow_non_ct: bool = False
) -> _Scan | str:
    """Read one scan in HU (in a worker); a scan the user can fix gives its one-line reason.

    Module level, so a process pool can pickle it.

    Returns:
        The scan, or the reason it cannot be embedded (``"<source>: <problem>"``).
    """
    from tapct_data import read_scan

    volume: Any
    try:
        with user_errors_from(str(source)):
            volume = read_scan(source, allow_non_ct=allow_non_ct)
        if in_plane is not None:
            from tapct_data import resize_for_eval

            with user_errors_from(str(source), "in-plane resize"):
                volume = resize_for_eval(volume, in_plane=in_plane)
    except UserError as exc:
        return one_line(exc)
    return _Scan(
        hu=np.ascontiguousarray(volume.data.numpy(), dtype=np.float32),
        spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
        affine=np.asarray(volume.affine, dtype=float).tolist(),
    )


def _executor(workers: int) -> Executor:
    """Readers ahead of the model: one thread, or a pool of ``workers`` processes.

    A single reader is a thread (no start-up cost, reading overlaps the forward: the
    readers' heavy parts, zlib, SimpleITK and numpy, release the GIL); several are spawned
    processes, so DICOM parsing in Python scales with the cores (each pays one import of
    torch; fork is avoided because the parent holds CUDA and OpenMP state).
    """
    if workers == 1:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="tapct-embed-read")
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _read_ahead(
    sources: Sequence[ScanSource],
    in_plane: tuple[int, int] | None,
    workers: int,
    read: Callable[[ScanSource, tuple[int, int] | None], _Scan | str],
) -> Iterator[tuple[ScanSource, _Scan | str]]:
    """Yield ``(source, scan or reason)`` in order, keeping ``workers + 1`` reads in flight."""
    if not sources:
        return
    executor = _executor(workers)
    pending: deque[tuple[ScanSource, Future[_Scan | str]]] = deque()
    todo = iter(sources)
    try:
        for source in todo:
            pending.append((source, executor.submit(read, source, in_plane)))
            if len(pending) > workers:
                break
        while pending:
            source, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, executor.submit(read, nxt, in_plane)))
            yield source, future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- settings


def _model_normalization(model: str, backbone: Any, override: Path | None = None) -> Any:
    """The intensity normalisation the model expects: THE one place embed decides it.

    Returns:
        A ``tapct_data.ClipNormalize`` with the model's own statistics (its
        ``config.json``), or ``override`` (``--intensity-stats``) when given
        (:func:`tapct_app.intensity.model_normalize`; the paper's, with a note, for a
        preset or a model without them).
    """
    from tapct_data import ClipNormalize

    from tapct_app.intensity import model_normalize

    return ClipNormalize(model_normalize(model, override))


def _air_pad_value(normalize: Any) -> float:
    """The normalised value of air (-1024 HU, clipped like every voxel): the window padding."""
    import torch

    return float(normalize(torch.tensor([AIR_HU], dtype=torch.float32))[0])


def _weights_digest(model: Any) -> str:
    """A short SHA-256 of the backbone's state dict (names, shapes, dtypes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _settings_id(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- the folder


def _prepare_output(output: Path) -> bool:
    """Create ``-o`` or remove the temporaries a killed run left; True if created here."""
    if output.is_dir():
        for stale in output.glob(f".*{_TMP_MARK}*"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
        return False
    output.mkdir(parents=True)
    return True


class _Manifest:
    """``manifest.json``: every scan of the folder, merged run after run, written atomically."""

    def __init__(self, output: Path) -> None:
        self.path = output / "manifest.json"
        self.settings: dict[str, Any] = {}
        self.scans: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != EMBED_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {EMBED_FORMAT!r}")
            self.settings = dict(data.get("settings", {}))
            self.scans = {e["name"]: e for e in data["scans"]}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(
                f"{self.path}: not a tapct embedding manifest ({one_line(exc)}); choose another -o"
            ) from exc

    def is_done(self, source: ScanSource, settings_id: str) -> bool:
        """True when ``source`` is in the folder, made with these settings, files present."""
        entry = self.scans.get(source.name)
        if entry is None or entry.get("settings_id") != settings_id:
            return False
        if entry.get("source") != str(source):
            return False
        files = [entry.get("file"), entry.get("pca_png")]
        return all((self.path.parent / f).exists() for f in files if f)

    def commit(self, entry: dict[str, Any], settings_id: str, settings: dict[str, Any]) -> None:
        """Merge one scan and rewrite the file atomically (temporary + rename)."""
        from tapct_app.outputs import atomic_write_bytes

        self.settings[settings_id] = settings
        self.scans[entry["name"]] = entry
        used = {e.get("settings_id") for e in self.scans.values()}
        data = {
            "format": EMBED_FORMAT,
            "settings": {k: v for k, v in self.settings.items() if k in used},
            "scans": [self.scans[n] for n in sorted(self.scans)],
        }
        atomic_write_bytes(self.path, json.dumps(data, indent=2).encode("utf-8"))


def _tmp_name(output: Path, final: str) -> Path:
    return output / f".{final}{_TMP_MARK}{os.getpid()}"


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary (file or folder) onto ``final``, replacing it."""
    if tmp.is_dir() and final.exists():
        old = final.with_name(f".{final.name}{_TMP_MARK}old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, final)


def _save_features(feats: Any, path: Path, fmt: str) -> None:
    """Write one scan's features to ``path`` (a safetensors file or a zarr folder)."""
    patch = feats.load_patch_features().contiguous().float()
    tensors = {
        "patch_features": patch,
        "cls_tokens": feats.cls_tokens.contiguous().float(),
        "window_positions": feats.window_positions.contiguous().long(),
    }
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": EMBED_FORMAT})
        return
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for key, value in tensors.items():
        arr = value.numpy()
        chunks = (arr.shape[0], 1, *arr.shape[2:]) if key == "patch_features" else arr.shape
        group.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=chunks)[...] = arr
    group.attrs["format"] = EMBED_FORMAT


def _write_skipped(
    output: Path, skipped: Sequence[tuple[str, str]], read_now: Sequence[str] = ()
) -> None:
    """Merge this run's skips into ``skipped.jsonl`` (one ``{"path", "reason"}`` a line).

    Like ``manifest.json``, the file covers every run into the folder: earlier entries
    stay, except those of paths this run read again (embedded now, or skipped again with
    the reason of now) and those whose file is gone. Removed when nothing is left.

    Args:
        output: The embedding folder.
        skipped: This run's ``(path, reason)`` pairs.
        read_now: Source paths this run embedded.
    """
    from tapct_app.outputs import atomic_write_bytes

    path = output / "skipped.jsonl"
    fresh = {p for p, _ in skipped} | set(read_now)
    kept: list[tuple[str, str]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line of a killed run
            old = row.get("path") if isinstance(row, dict) else None
            if old is not None and old not in fresh and Path(old).exists():
                kept.append((str(row.get("path")), str(row.get("reason"))))
    merged = [*kept, *skipped]
    if not merged:
        path.unlink(missing_ok=True)
        return
    lines = [json.dumps({"path": p, "reason": r}) for p, r in merged]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- the command


def embed_command(
    *,
    inputs: Sequence[Path],
    model: str,
    output: Path,
    roi: tuple[int, int, int] | None,
    overlap: float,
    fmt: str,
    in_plane: tuple[int, int] | None,
    device: str,
    pca: bool,
    console: Any,
    workers: int = 1,
    on_error: str = "skip",
    sw_batch_size: int = 4,
    intensity_stats: Path | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    allow_non_ct: bool = False,
) -> EmbedReport:
    """Run ``tapct embed`` (see the module docstring).

    Args:
        inputs: Scan files, folders (walked, DICOM grouped into series), zarr stores,
            ``.txt``/``.csv`` lists (``tapct_app.scans.list_inputs``).
        model: Model folder or preset.
        output: The output folder (created; an existing one is added to).
        roi: Window ``(d, h, w)`` voxels; None = the model's input size.
        overlap: Window overlap in ``[0, 1)``.
        fmt: ``"safetensors"`` or ``"zarr"``.
        in_plane: Resize each slice to ``(H, W)`` first, or None.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        pca: Write the PCA picture per scan.
        console: A rich console for progress and the final line.
        workers: Readers ahead of the model (1 = one thread, more = processes).
        on_error: ``"skip"`` (report in ``skipped.jsonl``) or ``"stop"`` at a bad scan.
        sw_batch_size: Windows per forward.
        intensity_stats: ``--intensity-stats`` JSON overriding the model's statistics.
        include: ``--include`` glob patterns (only matching files are embedded).
        exclude: ``--exclude`` glob patterns (matching files are left out).
        allow_non_ct: ``--allow-non-ct``: embed MR and other non-HU volumes anyway.

    Returns:
        The :class:`EmbedReport` (its :meth:`~EmbedReport.summary` is printed).

    Raises:
        UserError: A bad option, ``-o`` an existing file or a folder with a foreign
            ``manifest.json``, an empty or foreign zarr store, a model that cannot be
            loaded, a bad scan with ``--on-error stop``, or no scan embedded at all (the
            first reason, with the count); a folder this run created is removed then.
    """
    import torch

    from tapct_app.devices import resolve_device
    from tapct_app.models import load_backbone

    if not 0.0 <= overlap < 1.0:
        raise UserError(f"--overlap {overlap}: must lie in [0, 1)")
    if fmt not in ("safetensors", "zarr"):
        raise UserError(f"--format {fmt!r}: expected safetensors or zarr")
    if on_error not in ON_ERROR:
        raise UserError(f"--on-error {on_error!r}: expected skip or stop")
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    if sw_batch_size < 1:
        raise UserError(f"--sw-batch-size {sw_batch_size}: must be at least 1")
    from tapct_app.outputs import check_output

    check_output(output, "folder")
    listing = _list_sources(inputs, include, exclude)
    sources: list[ScanSource] = list(listing.scans)
    walk_skipped = [(s.path, s.reason) for s in listing.skipped]  # found by the walk
    if on_error == "stop" and walk_skipped:
        raise UserError(f"{walk_skipped[0][0]}: {walk_skipped[0][1]}")
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from exc
    backbone, _ = load_backbone(model, dev)
    patch = tuple(int(p) for p in backbone.patch_size)
    roi_size = tuple(roi) if roi is not None else tuple(int(s) for s in backbone.img_size)
    if any(r % p for r, p in zip(roi_size, patch, strict=True)):
        raise UserError(
            f"--roi {','.join(map(str, roi_size))}: each axis must be a multiple of the "
            f"model's patch size {','.join(map(str, patch))}"
        )
    from tapct_eval import extract_features

    normalize = _model_normalization(model, backbone, intensity_stats)
    pad_value = _air_pad_value(normalize)
    settings: dict[str, Any] = {
        "model": str(model),
        "model_weights_sha256": _weights_digest(backbone),
        "model_config": getattr(backbone, "config", {}),
        "roi_size": list(roi_size),
        "overlap": overlap,
        "patch_size": list(patch),
        "in_plane": list(in_plane) if in_plane else None,
        "precision": "bf16" if dev.type == "cuda" else "float32",
        "pad_value": pad_value,
        "normalization": {
            "lower": normalize.lower,
            "upper": normalize.upper,
            "mean": normalize.mean,
            "std": normalize.std,
        },
        "format": fmt,
        "pca": pca,
    }
    settings = json.loads(json.dumps(settings))  # the manifest's JSON view (tuples -> lists)
    sid = _settings_id(settings)

    created = _prepare_output(output)
    manifest = _Manifest(output)
    done = [s for s in sources if manifest.is_done(s, sid)]
    todo = [s for s in sources if not manifest.is_done(s, sid)]
    embedded: list[str] = []
    embedded_paths: list[str] = []
    skipped: list[tuple[str, str]] = list(walk_skipped)
    progress = CommandProgress(console, "embed").start()
    progress(0, len(todo), line=False)
    for path, reason in walk_skipped:
        console.print(f"{path}: skipped: {reason}", markup=False, highlight=False, soft_wrap=True)
    try:
        for source, scan in _read_ahead(
            todo, in_plane, workers, functools.partial(_read_source, allow_non_ct=allow_non_ct)
        ):
            if isinstance(scan, str):
                if on_error == "stop":
                    raise UserError(scan)
                reason = skip_reason(source, scan)
                skipped.append((str(source), reason))
                progress.advance(f"{source}: skipped: {reason}")
                continue
            hu = torch.from_numpy(scan.hu)  # (1, D, H, W) HU
            x = normalize(hu).float()
            with torch.inference_mode():
                feats = extract_features(
                    backbone,
                    x,
                    roi_size,
                    overlap=overlap,
                    sw_batch_size=sw_batch_size,
                    device=dev,
                    pad_value=pad_value,
                )
            entry = _commit_scan(output, source, scan, feats, fmt, patch, pca, sid)
            manifest.commit(entry, sid, settings)
            embedded.append(source.name)
            embedded_paths.append(str(source))
            fault_point("embed.after_scan")
            progress.advance(
                f"{source}: volume {tuple(entry['volume_shape'])} -> features "
                f"{tuple(entry['patch_features_shape'])}, {entry['cls_tokens_shape'][0]} windows"
            )
    except BaseException:
        progress.close()
        for tmp in output.glob(f".*{_TMP_MARK}{os.getpid()}"):  # this run's unfinished files
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if created and not any(output.iterdir()):
            output.rmdir()
        raise
    progress.close()
    if not embedded and not done:
        if created:
            shutil.rmtree(output)
        first, reason = skipped[0] if skipped else ("", "no scans given")
        more = f" ({len(skipped) - 1} more skipped)" if len(skipped) > 1 else ""
        raise UserError(f"{first}: {reason}; nothing embedded{more}")
    _write_skipped(output, skipped, embedded_paths)
    report = EmbedReport(output, tuple(embedded), tuple(s.name for s in done), tuple(skipped))
    console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
    return report


def _commit_scan(
    output: Path,
    source: ScanSource,
    scan: _Scan,
    feats: Any,
    fmt: str,
    patch: tuple[int, ...],
    pca: bool,
    settings_id: str,
) -> dict[str, Any]:
    """Write one scan's files to temporaries, rename them into place; returns its entry."""
    name = source.name
    file = f"{name}.{fmt}"
    tmp = _tmp_name(output, file)
    _save_features(feats, tmp, fmt)
    patch_features = feats.load_patch_features()
    entry: dict[str, Any] = {
        "name": name,
        "source": str(source),
        "file": file,
        "settings_id": settings_id,
        "volume_shape": list(scan.hu.shape[1:]),
        "spacing_mm": list(scan.spacing),
        "patch_features_shape": list(patch_features.shape),
        "cls_tokens_shape": list(feats.cls_tokens.shape),
        "feature_spacing_mm": [s * p for s, p in zip(scan.spacing, patch, strict=True)],
        "affine": scan.affine,
    }
    published = [(tmp, output / file)]
    if pca:
        from tapct_eval.figures import pca_rgb, plot_pca_planes  # matplotlib: only when drawing

        png = f"{name}_pca.png"
        tmp_png = _tmp_name(output, png)
        rgb = pca_rgb(patch_features.numpy())
        plot_pca_planes(
            scan.hu[0],
            rgb,
            scan.spacing,
            patch,
            tmp_png,
            f"{name}: first 3 principal components of patch features",
        )
        entry["pca_png"] = png
        published.append((tmp_png, output / png))
    for tmp_path, final in published:
        _publish(tmp_path, final)
    return entry
