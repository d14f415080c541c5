"""A chunked zarr store of CT scans (int16 HU): parallel, resumable, crash-safe, indexed.

Layout of a store folder ``STORE`` (a zarr v3 group)::

    STORE/zarr.json          the group (attribute ``format_version`` = 2)
    STORE/<name>/            one zarr array per scan, (D, H, W) int16 HU, canonical LPS,
                             array attributes spacing, affine, source, metadata
    STORE/_index/<name>.json one small record per complete scan (name, source, shape,
                             spacing): the completion marker, written last
    STORE/index.json         the consolidated index (all records), rebuilt at the end of
                             each build; opening reads it plus only the records newer than it
    STORE/skipped.jsonl      one JSON object per source that could not be read
                             (``{"path": ..., "reason": ...}``), rewritten by each build
    STORE/.tmp-*             arrays being written (removed by the next build)
    STORE/.lock              the build lock (`tapct_data.locking.folder_lock`)
    STORE/_incomplete        present while a build runs and after one that did not finish
                             (stopped at a bad scan, interrupted, killed); removed when a
                             build ends normally. Opening such a store warns
                             (`IncompleteStoreWarning`): it holds only some of its scans.

A scan is complete or absent, also after ``kill -9``: its array is written under a
temporary name and renamed into place (``os.replace``; a zarr v3 local array is a folder and
the rename is atomic), then its index record is written atomically (temporary file and
rename). Readers list only scans with a record, so a half-written array is never visible.
Rerunning a build skips scans whose record holds the same source, retries every skipped
source, rewrites ``skipped.jsonl`` and removes stale temporaries. One build per store at a
time (shards write separate stores): a build holds ``STORE/.lock`` (``fcntl.flock``, freed by
the kernel when the process dies), and a second build of the same store fails at once with
`tapct_data.locking.FolderLockedError` naming the holder. Any number of readers, also
during a build.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
import zarr

from ._workers import Captured, call_capturing_warnings
from .errors import IncompleteStoreWarning
from .faults import fault_point
from .formats import AIR_HU, is_zarr_store
from .inputs import InputListing, ScanSource, Skipped, read_scan, skip_reason
from .locking import LOCK_FILE, folder_lock
from .volume import Volume

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_CODEC",
    "StoreReport",
    "ZarrStoreCollection",
    "ZarrVolumeStore",
    "build_zarr_store",
    "open_stores",
]

FORMAT_VERSION = 2
INDEX_DIR = "_index"
INDEX_FILE = "index.json"
INCOMPLETE_FILE = "_incomplete"
_WARNED_INCOMPLETE: set[tuple[str, int]] = set()
SKIPPED_FILE = "skipped.jsonl"
TMP_PREFIX = ".tmp-"

#: One slice per chunk, whole slices: a 12-slice slab reads exactly 12 chunks (no over-read)
#: and each decodes in well under a millisecond (figures in `tapct_data.dataset`).
DEFAULT_CHUNKS: tuple[int, int, int] = (1, 512, 512)
#: Slices per file (zarr v3 sharding): 11 files for a 300-slice scan instead of 300, for
#: about 3 ms more CPU per 12-slice read (10.2 vs 7.3 ms); an archive of 10^5 scans stays
#: around 10^6 files.
DEFAULT_SLICES_PER_FILE = 32
#: Blosc LZ4 with byte shuffle: decodes several times faster than zstd at a similar size.
DEFAULT_CODEC = "blosc-lz4"
_CODECS = ("blosc-lz4", "blosc-zstd", "zstd", "none")

OnError = Literal["skip", "stop"]


# --------------------------------------------------------------------------- records


@attrs.frozen
class StoreReport:
    """What one `build_zarr_store` call did.

    Attributes:
        path: The store folder.
        written: Names of the scans written by this call.
        already_done: Names of the scans found complete (same source) and kept.
        skipped: Sources that could not be read (also in ``path / "skipped.jsonl"``).
    """

    path: Path
    written: tuple[str, ...]
    already_done: tuple[str, ...]
    skipped: tuple[Skipped, ...]

    @property
    def skipped_file(self) -> Path:
        """``path / "skipped.jsonl"``."""
        return self.path / SKIPPED_FILE


@attrs.frozen
class _Task:
    source: ScanSource
    store: Path
    chunks: tuple[int, int, int]
    codec: str
    slices_per_file: int | None
    allow_non_ct: bool = False


@attrs.frozen
class _Outcome:
    source: ScanSource
    record: dict[str, Any] | None = None  # written
    reason: str | None = None  # skipped
    error: BaseException | None = None


# --------------------------------------------------------------------------- writing


def _compressors(codec: str) -> Any:
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "blosc-lz4":
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    if codec == "blosc-zstd":
        return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    if codec == "zstd":
        return ZstdCodec(level=3)
    return None


def _write_json_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _convert_one(task: _Task) -> _Outcome:
    """Read one scan and commit it into the store (runs in a pool worker or in-process)."""
    source = task.source
    try:
        fault_point(f"store.read.{source.name}")  # a reader dying on this scan (tests)
        volume = read_scan(source, allow_non_ct=task.allow_non_ct)
    except Exception as exc:  # any reader failure is a bad scan, reported
        return _Outcome(source, reason=skip_reason(source, exc), error=exc)
    data = volume.data[0].round().clamp(-32768, 32767).to(torch.int16).numpy()
    meta = {k: v for k, v in volume.metadata.items() if isinstance(v, str | int | float | bool)}
    attributes = {
        "spacing": [float(s) for s in volume.spacing],
        "affine": np.asarray(volume.affine, dtype=float).tolist(),
        "source": str(source),
        "metadata": meta,
    }
    tmp = task.store / f"{TMP_PREFIX}{source.name}.{uuid.uuid4().hex[:8]}"
    chunks = tuple(min(c, s) for c, s in zip(task.chunks, data.shape, strict=True))
    shards = None
    if task.slices_per_file is not None and task.slices_per_file > chunks[0]:
        depth = -(-min(task.slices_per_file, data.shape[0]) // chunks[0]) * chunks[0]
        shards = (depth, *(-(-s // c) * c for c, s in zip(chunks[1:], data.shape[1:])))
    array = zarr.create_array(
        store=str(tmp),
        shape=data.shape,
        chunks=chunks,
        shards=shards,
        dtype="int16",
        fill_value=int(AIR_HU),
        compressors=_compressors(task.codec),
        attributes=attributes,
        zarr_format=3,
    )
    array[...] = data
    fault_point("store.mid_write")
    final = task.store / source.name
    if final.exists():  # an array without a record (interrupted before its record): replace
        shutil.rmtree(final)
    os.replace(tmp, final)
    fault_point("store.after_write")
    record = {
        "name": source.name,
        "source": str(source),
        "kind": source.kind,
        "shape": list(data.shape),
        "spacing": attributes["spacing"],
    }
    _write_json_atomic(task.store / INDEX_DIR / f"{source.name}.json", json.dumps(record))
    fault_point("store.after_record")
    return _Outcome(source, record=record)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """One thread for torch and zarr's codecs while converting in this process.

    ``workers=N`` means N single-threaded readers, in-process (``N == 1``) or in a pool,
    so the cores a user grants are the cores used. torch's thread count is restored on
    exit; zarr's codec threads follow ``threading.max_workers`` (set for the build; zarr
    honours it when it creates its thread pool, i.e. in a process that has not used zarr
    before, such as every pool worker).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with zarr.config.set({"threading.max_workers": 1}):
            yield
    finally:
        torch.set_num_threads(before)


def _init_worker() -> None:
    """One thread per worker process: the pool, not the threads, is the parallelism."""
    torch.set_num_threads(1)
    zarr.config.set({"threading.max_workers": 1})


_PRELOAD = ("tapct_data.store", "tapct_data.io", "tapct_data._dicom", "tapct_data._itk")


def _pool_context() -> Any:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Imported once in the fork server, not per worker: torch, zarr and every reader.
    context.set_forkserver_preload(list(_PRELOAD))
    return context


def _died(source: ScanSource, exitcode: int | None) -> str:
    """The reason of a scan whose reader process died (OOM killer, a crashing decoder)."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        hint = ", e.g. out of memory" if number == signal.SIGKILL else ", a crash in a reader"
        how = f"signal {number}{hint}"
    else:
        how = f"exit status {exitcode}"
    return f"the reader process died ({how})"


def _alone_main(task: _Task, conn: Any) -> None:
    """Entry of the process that retries one scan on its own (after a broken pool)."""
    _init_worker()
    conn.send(call_capturing_warnings(_convert_one, task))
    conn.close()


def _run_alone(task: _Task, context: Any) -> _Outcome:
    """Convert one scan in a process of its own; a dead process is the scan's skip reason."""
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_alone_main, args=(task, send), daemon=True)
    process.start()
    send.close()
    captured: Captured[_Outcome] | None = None
    try:
        captured = receive.recv()
    except EOFError:  # the process died before sending its outcome
        pass
    finally:
        receive.close()
        process.join()
    if captured is None:
        return _Outcome(task.source, reason=_died(task.source, process.exitcode))
    return captured.unwrap()  # its warnings, shown here (the app's policy)


def _run_pool(
    queue: deque[_Task], workers: int, context: Any
) -> Generator[_Outcome, None, list[_Task]]:
    """Outcomes from one pool over ``queue`` (consumed); at most ``2 * workers`` in flight.

    Returns:
        The tasks in flight when a worker died (the pool is then unusable), else ``[]``.
    """
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        pending: dict[Future[Captured[_Outcome]], _Task] = {}
        try:
            while True:
                while queue and len(pending) < 2 * workers:
                    task = queue.popleft()
                    # warnings come back with the outcome, shown here (the app's policy)
                    pending[pool.submit(call_capturing_warnings, _convert_one, task)] = task
                if not pending:
                    return []
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    task = pending.pop(future)
                    try:
                        outcome = future.result().unwrap()
                    except BrokenProcessPool:
                        pending[future] = task
                        broken = True
                        continue
                    yield outcome
                if broken:  # every task in flight that did not finish is a suspect
                    wait(pending)  # a broken pool fails them all, at once
                    suspects = []
                    for future, task in sorted(pending.items(), key=lambda i: i[1].source.name):
                        if future.exception() is None:
                            yield future.result().unwrap()
                        else:
                            suspects.append(task)
                    pending.clear()
                    return suspects
        finally:  # a stop (or an error) lets running scans finish and drops the rest
            for future in pending:
                future.cancel()


def _run(tasks: Sequence[_Task], workers: int) -> Iterator[_Outcome]:
    """Outcomes of ``tasks`` in completion order.

    ``workers == 1`` converts in this process, single-threaded. Otherwise a pool of
    ``workers`` single-threaded processes; when one dies (the OOM killer, a segfaulting
    decoder) the pool breaks: the scans then in flight are retried one at a time, each
    in a process of its own, so the one that kills its reader is isolated and reported
    (`_died`), and a fresh pool takes the rest.
    """
    if workers <= 1 or len(tasks) <= 1:
        with _single_threaded():
            for task in tasks:
                yield _convert_one(task)
        return
    context = _pool_context()
    queue = deque(tasks)
    while queue:
        suspects = yield from _run_pool(queue, workers, context)
        for task in suspects:
            yield _run_alone(task, context)


def _sources_of(
    sources: Sequence[ScanSource] | InputListing,
) -> tuple[list[ScanSource], list[Skipped]]:
    if isinstance(sources, InputListing):
        return list(sources.scans), list(sources.skipped)
    items = list(sources)
    wrong = next((s for s in items if not isinstance(s, ScanSource)), None)
    if wrong is not None:
        raise TypeError(
            f"build_zarr_store takes ScanSource records, got {type(wrong).__name__} "
            f"{wrong!r}; expand paths with tapct_data.expand_inputs(paths)"
        )
    return items, []


def build_zarr_store(
    sources: Sequence[ScanSource] | InputListing,
    store: str | PathLike[str],
    *,
    workers: int = 1,
    on_error: OnError = "skip",
    shard: tuple[int, int] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
    codec: str = DEFAULT_CODEC,
    slices_per_file: int | None = DEFAULT_SLICES_PER_FILE,
    allow_non_ct: bool = False,
) -> StoreReport:
    """Convert scans into one zarr store, in parallel, resumably, skipping bad scans.

    Each scan becomes an int16 HU array ``(D, H, W)`` (rounded, clipped to int16) in the
    canonical orientation; see the module docstring for the layout and why a scan is
    complete or absent after any crash, ``kill -9`` included.

    Args:
        sources: Scans to convert (``tapct_data.expand_inputs(...)``, or its ``.scans``);
            names must be unique. The walk-time ``skipped`` of a listing are reported too.
        store: The store folder (created when missing).
        workers: Single-threaded readers (torch and zarr's codecs limited to one thread
            each), so ``workers`` is the number of cores used: 1 converts in this process;
            more run a ``ProcessPoolExecutor`` (forkserver start method; each worker writes
            its own arrays). A worker that dies (the OOM killer, a segfaulting decoder)
            does not stop the build: the scans in flight are retried one at a time in a
            process of their own and the one that kills its reader is skipped with the
            reason "the reader process died (signal 9, e.g. out of memory)". With
            ``workers=1`` such a crash ends this process (the store stays resumable).
        on_error: ``"skip"``: record a bad source in ``skipped.jsonl`` and continue.
            ``"stop"``: raise the first bad source's error (a walk-time skip of a listing
            counts, raised before anything is read); scans committed before it stay
            complete and a rerun resumes.
        shard: ``(k, n)``: process only the k-th of every n sources (0-based) of the list
            sorted by name, e.g. one SLURM array task of n; walk-time skips are split the
            same way, so n shard stores report every source once.
        progress: Called as ``progress(done, total, name)`` after each scan of this call.
        chunks: Chunk shape ``(d, h, w)`` in voxels (clipped to each scan's shape).
        codec: ``"blosc-lz4"`` (default), ``"blosc-zstd"``, ``"zstd"`` or ``"none"``.
        slices_per_file: Chunks grouped into one file per this many slices (zarr v3
            sharding codec; reads still fetch single chunks); None: one file per chunk.
        allow_non_ct: Read non-CT volumes anyway (`read_scan`'s switch, with a
            `NotCTWarning`) instead of skipping them.

    Returns:
        A `StoreReport`. When nothing is in the store at the end (every source skipped and
        none done before), a store folder created by this call is removed again, so a run
        that read nothing leaves nothing on disk; the report still lists the skips.

    Raises:
        TypeError: ``sources`` holds something else than `ScanSource` (e.g. paths).
        ValueError: Bad arguments, duplicate names, a folder that is not a scan store, or
            (``on_error="stop"``) the first bad source's error (its own type, e.g.
            ``NotCTError``, with the message naming the source).
        tapct_data.locking.FolderLockedError: Another process is building this store
            (nothing is written).
    """
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if len(chunks) != 3 or min(chunks) < 1:
        raise ValueError(f"chunks must be 3 positive ints, got {chunks}")
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {_CODECS}, got {codec!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    scans, skipped = _sources_of(sources)
    scans.sort(key=lambda s: s.name)
    names = [s.name for s in scans]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two sources have the scan name {dup!r}; names must be unique")
    if shard is not None:
        k, n = shard
        if not (n >= 1 and 0 <= k < n):
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
        scans, skipped = scans[k::n], skipped[k::n]
    if on_error == "stop" and skipped:
        raise ValueError(f"{skipped[0].path}: {skipped[0].reason}")

    path = Path(store)
    created = not path.exists()
    group_path = path / "zarr.json"
    if not created and not group_path.is_file() and any(
        p.name != LOCK_FILE for p in path.iterdir()
    ):
        raise ValueError(f"{path}: exists and is not a scan store; choose another --output")
    path.mkdir(parents=True, exist_ok=True)
    with folder_lock(path):  # one build per store: a second one fails here, writing nothing
        return _build_locked(
            path, created, scans, skipped, workers, on_error, progress, chunks, codec,
            slices_per_file, allow_non_ct,
        )  # fmt: skip


def _build_locked(
    path: Path,
    created: bool,
    scans: list[ScanSource],
    skipped: list[Skipped],
    workers: int,
    on_error: OnError,
    progress: Callable[[int, int, str], None] | None,
    chunks: tuple[int, int, int],
    codec: str,
    slices_per_file: int | None,
    allow_non_ct: bool = False,
) -> StoreReport:
    """`build_zarr_store` once the store's lock is held."""
    group_path = path / "zarr.json"
    try:
        if not group_path.is_file():
            zarr.open_group(str(path), mode="a", zarr_format=3).attrs["format_version"] = (
                FORMAT_VERSION
            )
        _check_format(path)
        (path / INDEX_DIR).mkdir(exist_ok=True)
        _remove_temporaries(path)
        _write_json_atomic(
            path / INCOMPLETE_FILE,
            json.dumps({"sources": len(scans), "started": time.time()}) + "\n",
        )
        index = _load_index(path)
        todo: list[ScanSource] = []
        done: list[str] = []
        for source in scans:
            record = index.get(source.name)
            same = record is not None and record.get("source") == str(source)
            if same and (path / source.name / "zarr.json").is_file():
                done.append(source.name)
                continue
            if record is not None:  # another source under this name, or its array is gone
                (path / INDEX_DIR / f"{source.name}.json").unlink(missing_ok=True)
            todo.append(source)
        tasks = [
            _Task(s, path, tuple(chunks), codec, slices_per_file, allow_non_ct)  # type: ignore[arg-type]
            for s in todo
        ]
        written: list[str] = []
        bad: dict[str, Skipped] = {}
        count = 0
        try:
            for outcome in _run(tasks, workers):
                count += 1
                if outcome.record is not None:
                    written.append(outcome.source.name)
                else:
                    reason = outcome.reason or "unreadable"
                    bad[outcome.source.name] = Skipped(path=str(outcome.source), reason=reason)
                    if on_error == "stop":
                        err = outcome.error
                        if isinstance(err, ValueError):
                            raise err
                        raise ValueError(f"{outcome.source}: {reason}")
                if progress is not None:
                    progress(count, len(tasks), outcome.source.name)
        finally:
            order = {s.name: i for i, s in enumerate(scans)}
            report = tuple(skipped) + tuple(bad[n] for n in sorted(bad, key=order.__getitem__))
            _write_skipped(path, report)
            _write_consolidated(path)
        (path / INCOMPLETE_FILE).unlink(missing_ok=True)  # the build ended normally
    finally:
        if created and path.exists() and not _index_names(path):
            shutil.rmtree(path, ignore_errors=True)
    return StoreReport(
        path=path, written=tuple(sorted(written)), already_done=tuple(done), skipped=report
    )


def _check_format(path: Path, *, reading: bool = False) -> bool:
    """True for a scan store of this format; False for a foreign zarr group when reading."""
    attrs_ = json.loads((path / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})
    version = attrs_.get("format_version")
    if version is None and reading:
        return False  # a zarr group not written by build_zarr_store: no scans
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: a scan store of format {version!r}, this tapct reads format "
            f"{FORMAT_VERSION}; rebuild it with tapct preprocess into a new folder"
        )
    return True


def _remove_temporaries(path: Path) -> None:
    for folder in (path, path / INDEX_DIR):
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(TMP_PREFIX):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)


def _write_skipped(path: Path, skipped: Iterable[Skipped]) -> None:
    lines = [json.dumps({"path": s.path, "reason": s.reason}) + "\n" for s in skipped]
    _write_json_atomic(path / SKIPPED_FILE, "".join(lines))


# --------------------------------------------------------------------------- the index


def _index_names(path: Path) -> set[str]:
    """Names with a record: one directory listing, no file opened."""
    folder = path / INDEX_DIR
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {
            e.name[:-5]
            for e in entries
            if e.name.endswith(".json") and not e.name.startswith(TMP_PREFIX)
        }


def _read_record(path: Path, name: str) -> dict[str, Any]:
    return json.loads((path / INDEX_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _load_index(path: Path) -> dict[str, dict[str, Any]]:
    """The records of all complete scans: the consolidated index, refreshed when stale.

    Reads ``index.json`` and lists ``_index/``; only records missing from the consolidated
    index are opened (none after a finished build), records no longer listed are dropped.
    """
    names = _index_names(path)
    consolidated: dict[str, dict[str, Any]] = {}
    file = path / INDEX_FILE
    if file.is_file():
        consolidated = json.loads(file.read_text(encoding="utf-8")).get("scans", {})
    index = {n: r for n, r in consolidated.items() if n in names}
    for name in names - index.keys():
        index[name] = _read_record(path, name)
    return dict(sorted(index.items()))


def _write_consolidated(path: Path) -> None:
    index = _load_index(path)
    _write_json_atomic(
        path / INDEX_FILE, json.dumps({"format_version": FORMAT_VERSION, "scans": index})
    )


# --------------------------------------------------------------------------- reading


class ZarrVolumeStore:
    """Read access to a store made by `build_zarr_store` (complete scans only).

    Opening reads two small files and lists one folder, whatever the number of scans; a
    scan's array metadata is read when the scan is first used. A zarr group not written by
    `build_zarr_store` holds no scans (``names == []``).

    Args:
        path: The store folder.

    Raises:
        FileNotFoundError: no scan store at ``path``.
        ValueError: a scan store of another format version (rebuild it).
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"{self.path}: no zarr scan store")
        ours = _check_format(self.path, reading=True)
        self._index = _load_index(self.path) if ours else {}
        self.names: list[str] = list(self._index)
        self._arrays: dict[str, zarr.Array] = {}
        #: False while a build runs or after one that did not finish (see the module doc).
        try:
            key = (str(self.path.resolve()), (self.path / INCOMPLETE_FILE).stat().st_mtime_ns)
        except FileNotFoundError:
            key = None
        self.complete = key is None
        if key is not None and key not in _WARNED_INCOMPLETE:
            _WARNED_INCOMPLETE.add(key)  # once per unfinished build and process
            warnings.warn(
                f"{self.path}: not finished by `tapct preprocess` (a build running, stopped "
                f"or interrupted): only its {len(self.names)} complete scan(s) are used; "
                "rerun the same preprocess command to finish it",
                IncompleteStoreWarning,
                stacklevel=2,
            )

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen arrays lazily
        return {**self.__dict__, "_arrays": {}}

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __repr__(self) -> str:
        return f"ZarrVolumeStore({str(self.path)!r}, {len(self)} scans)"

    def _record(self, name: str) -> Mapping[str, Any]:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"{name!r} not in {self.path}; have {self.names[:10]}...") from None

    def _array(self, name: str) -> zarr.Array:
        array = self._arrays.get(name)
        if array is None:
            self._record(name)
            array = zarr.open_array(str(self.path / name), mode="r")
            self._arrays[name] = array
        return array

    def shape(self, name: str) -> tuple[int, int, int]:
        """``(D, H, W)`` of a scan (from the index)."""
        d, h, w = self._record(name)["shape"]
        return int(d), int(h), int(w)

    def source(self, name: str) -> str:
        """The source the scan was read from (as ``str(ScanSource)`` printed it)."""
        return str(self._record(name)["source"])

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """The sources the last build could not read (``skipped.jsonl``)."""
        file = self.path / SKIPPED_FILE
        if not file.is_file():
            return ()
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
        return tuple(Skipped(path=r["path"], reason=r["reason"]) for r in rows if r)

    def read(self, name: str) -> Volume:
        """The whole scan as a `Volume` (``data (1, D, H, W)`` float32 HU)."""
        array = self._array(name)
        attributes = array.attrs
        return Volume(
            data=torch.from_numpy(np.asarray(array[...], dtype=np.float32))[None],
            spacing=attributes["spacing"],
            affine=np.asarray(attributes["affine"]),
            source=str(attributes["source"]),
            metadata=dict(attributes.get("metadata", {})),  # type: ignore[arg-type]
        )

    def read_slab(
        self, name: str, start: int, depth: int, *, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Slices ``start .. start + depth - 1`` as ``(1, depth, H, W)`` HU.

        Only the chunks holding these slices are read.

        Args:
            name: Scan name.
            start: First slice.
            depth: Number of slices.
            dtype: ``torch.float32`` (default) or ``torch.int16`` (the stored values, no
                conversion: the loader's fast path).

        Raises:
            ValueError: the slab is not inside the scan.
        """
        array = self._array(name)
        n = self.shape(name)[0]
        if start < 0 or depth < 1 or start + depth > n:
            raise ValueError(
                f"slab [{start}, {start + depth}) outside scan {name!r} with {n} slices"
            )
        slab = torch.from_numpy(np.ascontiguousarray(array[start : start + depth]))[None]
        return slab if dtype == torch.int16 else slab.to(dtype)


class ZarrStoreCollection:
    """Several scan stores (e.g. the shards of one archive) read as one dataset.

    Same reading interface as `ZarrVolumeStore` (``names``, ``read``, ``read_slab``,
    ``shape``, ``source``, ``skipped``); names are the union, in store order then name
    order.

    Args:
        stores: Open stores.

    Raises:
        ValueError: no store, or a scan name in two stores (names the stores).
    """

    def __init__(self, stores: Sequence[ZarrVolumeStore]) -> None:
        if not stores:
            raise ValueError("no scan store given")
        self.stores = tuple(stores)
        self._owner: dict[str, ZarrVolumeStore] = {}
        for store in self.stores:
            for name in store.names:
                other = self._owner.setdefault(name, store)
                if other is not store:
                    raise ValueError(
                        f"scan {name!r} is in both {other.path} and {store.path}; "
                        "stores read together need unique names (shards of one listing)"
                    )
        self.names: list[str] = [n for s in self.stores for n in s.names]

    @property
    def path(self) -> Path:
        """The first store's path (for messages)."""
        return self.stores[0].path

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._owner

    def __repr__(self) -> str:
        return f"ZarrStoreCollection({len(self.stores)} stores, {len(self)} scans)"

    def _store(self, name: str) -> ZarrVolumeStore:
        try:
            return self._owner[name]
        except KeyError:
            raise KeyError(f"{name!r} in none of {len(self.stores)} stores") from None

    def shape(self, name: str) -> tuple[int, int, int]:
        """``(D, H, W)`` of a scan."""
        return self._store(name).shape(name)

    def source(self, name: str) -> str:
        """The source the scan was read from."""
        return self._store(name).source(name)

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """The skipped sources of every store."""
        return tuple(s for store in self.stores for s in store.skipped)

    def read(self, name: str) -> Volume:
        """The whole scan (see `ZarrVolumeStore.read`)."""
        return self._store(name).read(name)

    def read_slab(
        self, name: str, start: int, depth: int, *, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """A slab (see `ZarrVolumeStore.read_slab`)."""
        return self._store(name).read_slab(name, start, depth, dtype=dtype)


def open_stores(
    paths: str | PathLike[str] | Sequence[str | PathLike[str]],
) -> ZarrStoreCollection:
    """Open one or several scan stores, or folders of stores, as one dataset.

    Args:
        paths: Store folders, or folders whose direct sub-folders are stores (e.g. the
            ``shard-*.zarr`` of a SLURM array), in any mix.

    Returns:
        A `ZarrStoreCollection` over the stores in the given order (sub-folders sorted).

    Raises:
        FileNotFoundError: a path that is neither a store nor a folder holding stores.
        ValueError: a scan name in two stores.
    """
    items = [paths] if isinstance(paths, str | PathLike) else list(paths)
    stores: list[ZarrVolumeStore] = []
    for item in items:
        p = Path(item)
        if is_zarr_store(p):
            stores.append(ZarrVolumeStore(p))
            continue
        inner = sorted(c for c in p.iterdir() if is_zarr_store(c)) if p.is_dir() else []
        if not inner:
            raise FileNotFoundError(f"{p}: neither a zarr scan store nor a folder of stores")
        stores.extend(ZarrVolumeStore(c) for c in inner)
    return ZarrStoreCollection(stores)
