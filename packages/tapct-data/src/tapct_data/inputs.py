"""One way to name inputs: files, folders, DICOM trees, zarr stores and list files -> scans.

`expand_inputs` turns what a user types (``tapct preprocess archive/ extra.nii.gz
list.txt``) into a sorted list of `ScanSource` records, each with a unique, stable name;
`read_scan` reads one of them (a module-level function, so process pools can pickle it).

Rules (each one is tested):

* **A file** with an image suffix of `tapct_data.formats.FORMATS` is one scan. A DICOM file
  is one scan too (one slice, or an Enhanced multi-frame volume).
* **A folder** is walked recursively. Every NIfTI/NRRD/MetaImage file is a scan. Files
  with a DICOM suffix, without a suffix or whose last suffix is a number (named after a
  UID) get one header read (``stop_before_pixels``, no pixel data) and count as DICOM
  when real DICOM tags are found (with or without the 128-byte preamble). DICOM image
  files anywhere below the folder are grouped into series by ``SeriesInstanceUID``
  (two series in one folder are two scans; a series split over folders is one scan).
  When folders hold copies of the same instances (the same SOPInstanceUID, or the same
  ImagePositionPatient in two folders: a copied series, or two encodings of it), the
  group is split by folder, each copy a scan of its own. An empty or missing UID groups
  by folder. Inside one group, files that differ in
  orientation or rows x columns are split into separate scans (as dcm2niix does); an
  Enhanced (multi-frame) file is a scan on its own. Hidden files and folders (``.name``)
  are ignored, as are files that are not images (``.txt``, ``.json``, ``.raw`` beside an
  ``.mhd``, ...; counted in ``left_out["not an image file"]``).
* **DICOM objects that are not images to pretrain on** are left out with a count in
  `InputListing.left_out`: SEG, RTSTRUCT and other RT objects, SR and key-object
  documents, presentation states, encapsulated documents, secondary captures (dose
  screenshots), DICOM without pixel rows, and localizers/scouts (``ImageType`` contains
  ``LOCALIZER``).
* **DICOMDIR is ignored**: the walk reads every file the DICOMDIR would point to anyway,
  so following it would only add a second, possibly stale, index.
* **A zarr store** (a folder with ``zarr.json`` or ``.zgroup``) is never descended into:
  with ``expand_stores=True`` each complete scan in it is a `ScanSource` of kind
  ``"zarr"`` named by its key in the store, otherwise the store is one source.
* **A list file**: ``.txt`` (one path per line, relative to the list file's folder,
  ``#`` starts a comment, blank lines ignored) or ``.csv`` with a ``path`` column; each
  entry is expanded like a folder or file. A CSV written by `write_listing` (columns
  ``name, kind, path, series_uid, store_key, files``) is taken as is, without a walk,
  so the shards of a preprocessing job need not each walk the archive.
* **include / exclude**: `fnmatch` patterns (``*`` also matches ``/``), tested against
  the path relative to its input argument (POSIX separators) and each of its trailing
  parts down to the file name, so ``segmentations/*`` matches
  ``s0001/segmentations/liver.nii.gz`` at any depth and ``ct.nii.gz`` every such file.
  A file is kept when it matches at least one include pattern (if any are given) and no
  exclude pattern. For a DICOM series the test is per file, before grouping.

Names (`scan_name`): the path relative to the input argument it came from, image suffix
dropped, folders joined with ``_`` and characters outside ``[A-Za-z0-9_.-]`` replaced by
``_``: input ``archive/`` holding ``d1/a.nii.gz`` gives ``d1_a``. A single file given as
an argument is named by its stem (``ct.nii.gz`` -> ``ct``); a list entry by the entry as
written (``s0001/ct.nii.gz`` -> ``s0001_ct``). A DICOM series is named by its folder
(relative to the argument; the argument's own name when the series lies at its top)
plus ``_`` and the first 8 hex digits of the SHA-1 of its SeriesInstanceUID (of the
folder for a series without UID; of UID and geometry for a split series); a series of
one file (a loose slice, an Enhanced multi-frame file) is named like a file. A name thus
depends only on the path inside its own argument: adding an input never renames the
others. When flattening makes two paths of one argument collide (``d1/a.nii.gz`` and
``d1_a.nii.gz``), every one of them gets ``-`` and 6 hex digits of its own path's hash.
Two arguments giving the same name raise ``ValueError`` naming both paths (give their
common folder as one input instead); the same file reached twice is listed once.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from .formats import image_format, is_zarr_store, might_be_dicom, strip_image_suffix
from .volume import Volume

__all__ = [
    "InputListing",
    "ScanSource",
    "Skipped",
    "expand_inputs",
    "format_listing",
    "read_scan",
    "scan_name",
    "skip_reason",
    "write_listing",
]

KINDS = ("nifti", "itk", "dicom", "zarr")
_LISTING_COLUMNS = ("name", "kind", "path", "series_uid", "store_key", "files")
_FILES_SEP = "|"

# SOP Class UID prefixes (PS3.4 Annex B) and Modalities of DICOM objects that are not CT
# images to read; the value is the key in `InputListing.left_out`.
_LEFT_OUT_SOP = (
    ("1.2.840.10008.1.3.10", "DICOMDIR"),
    ("1.2.840.10008.5.1.4.1.1.66", "DICOM SEG"),  # .66.4 SEG; .66.x registration, fiducials
    ("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT"),
    ("1.2.840.10008.5.1.4.1.1.481", "RT object"),
    ("1.2.840.10008.5.1.4.1.1.88", "SR"),  # structured reports, key object selection
    ("1.2.840.10008.5.1.4.1.1.11", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.7", "secondary capture"),
)
_LEFT_OUT_MODALITY = {
    "SEG": "DICOM SEG",
    "RTSTRUCT": "RTSTRUCT",
    "RTPLAN": "RT object",
    "RTDOSE": "RT object",
    "RTRECORD": "RT object",
    "RTIMAGE": "RT object",
    "SR": "SR",
    "KO": "SR",
    "PR": "presentation state",
    "DOC": "encapsulated document",
    "REG": "DICOM SEG",
}
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "ImageType",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "NumberOfFrames",
]


@attrs.frozen
class ScanSource:
    """One scan to read: a file, a DICOM series or a scan inside a zarr store.

    Attributes:
        name: Unique, stable, file-system-safe scan name (see the module docstring).
        path: The file; for a DICOM series its (first) folder; for kind ``"zarr"`` the store.
        kind: ``"nifti"``, ``"itk"`` (NRRD/MetaImage), ``"dicom"`` or ``"zarr"``.
        files: DICOM: the series' files, in any order (empty for other kinds).
        series_uid: DICOM: the SeriesInstanceUID (None when the files have none).
        store_key: Kind ``"zarr"``: the scan's name inside the store (None: the whole store,
            from ``expand_stores=False``).
    """

    name: str
    path: Path = attrs.field(converter=Path)
    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    files: tuple[Path, ...] = attrs.field(
        default=(), converter=lambda fs: tuple(Path(f) for f in fs)
    )
    series_uid: str | None = None
    store_key: str | None = None

    def __str__(self) -> str:
        """What error lines and ``skipped.jsonl`` print: the path, plus the series or key."""
        if self.kind == "zarr":
            return f"{self.path}:{self.store_key}" if self.store_key else str(self.path)
        if self.kind == "dicom" and self.files and self.files != (self.path,):
            uid = self.series_uid or "without SeriesInstanceUID"
            return f"{self.path} (DICOM series {uid}, {len(self.files)} files)"
        return str(self.path)


def skip_reason(source: object, error: BaseException | str) -> str:
    """Why a scan is skipped, in THE one wording of ``skipped.jsonl`` and the CLI's errors.

    The reason is the problem only, never the path: ``Skipped.path`` holds the source, and
    the one-line error of a command is ``f"{path}: {reason}"``. Readers often start their
    message with the file, folder or series description; that prefix is removed. An error
    that is not a ``ValueError`` (the readers' "bad input" type) keeps its class name.
    Used by `build_zarr_store`, `compute_fingerprint` and ``tapct embed``.

    Args:
        source: The `ScanSource` (or path, or description) the error is about.
        error: The exception, or a message already on one line.

    Returns:
        The reason on one line, e.g. ``"2D image of size (256, 256); a volume needs 3
        dimensions"``.
    """
    text = " ".join(str(error).split())
    if isinstance(error, BaseException):
        if not text:
            text = type(error).__name__
        elif not isinstance(error, ValueError):
            text = f"{type(error).__name__}: {text}"
    prefixes = {str(source), str(getattr(source, "path", source))}
    for prefix in sorted(prefixes, key=len, reverse=True):
        for form in (f"{prefix}: ", f"'{prefix}': "):
            if text.startswith(form):
                return text[len(form) :] or text
    return text


@attrs.frozen
class Skipped:
    """A source that is not read, with the reason; one line of ``skipped.jsonl``.

    Attributes:
        path: The file, folder or source description (``str(ScanSource)``).
        reason: The problem, in the words of the one-line CLI errors.
    """

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """``{"path": ..., "reason": ...}`` for ``skipped.jsonl``."""
        return {"path": self.path, "reason": self.reason}


@attrs.frozen
class InputListing:
    """The expanded inputs.

    Attributes:
        scans: Sorted by name; names are unique.
        skipped: Found at walk time but not readable as a scan (e.g. a ``.dcm`` whose
            header does not parse), with the reason.
        left_out: Counts of what the walk left out on purpose, by kind (``"DICOM SEG"``,
            ``"RTSTRUCT"``, ``"localizer"``, ``"not an image file"``, ...).
    """

    scans: tuple[ScanSource, ...]
    skipped: tuple[Skipped, ...] = ()
    left_out: Mapping[str, int] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return len(self.scans)

    @property
    def names(self) -> list[str]:
        """The scan names, in order."""
        return [s.name for s in self.scans]


# ---------------------------------------------------------------------------- names


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "scan"


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def _clean_parts(path: str | PurePosixPath) -> tuple[str, ...]:
    """Path parts without the anchor, ``.`` and ``..`` (for names only)."""
    return tuple(p for p in PurePosixPath(path).parts if p not in ("/", ".", ".."))


def scan_name(relative: str | PathLike[str], *, series_uid: str | None = None) -> str:
    """The scan name for a path relative to its input argument (module docstring rules).

    Args:
        relative: e.g. ``"d1/a.nii.gz"`` (a file) or ``"p1/ct"`` (a DICOM series' folder);
            separators may be ``/`` or the platform's. A bare file name gives its stem.
        series_uid: For a DICOM series: the text whose hash is appended (its UID).

    Returns:
        e.g. ``"d1_a"``, ``"ct"`` for ``"ct.nii.gz"``, ``"p1_ct_1a2b3c4d"`` for a series.
    """
    parts = list(_clean_parts(str(relative).replace(os.sep, "/")))
    if parts and series_uid is None:
        parts[-1] = strip_image_suffix(parts[-1])
    name = _sanitize("_".join(parts))
    return name if series_uid is None else f"{name}_{_short_hash(series_uid)}"


# ---------------------------------------------------------------------------- walking


@attrs.frozen
class _Entry:
    """A file found under one input argument."""

    path: Path
    rel: PurePosixPath  # relative to the argument's root; for list entries incl. the entry
    arg: int  # which input argument (or list entry) it came from


@attrs.define
class _Walk:
    """Mutable state of one expansion."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]
    expand_stores: bool
    scans: list[tuple[int, ScanSource, str]] = attrs.field(factory=list)  # (arg, scan, rel)
    skipped: list[Skipped] = attrs.field(factory=list)
    left_out: Counter[str] = attrs.field(factory=Counter)
    n_args: int = 0

    def wanted(self, rel: PurePosixPath) -> bool:
        parts = rel.parts
        tails = ["/".join(parts[i:]) for i in range(len(parts))]  # a/b/c.nii, b/c.nii, c.nii

        def hit(patterns: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatch(t, p) for p in patterns for t in tails)

        return (not self.include or hit(self.include)) and not hit(self.exclude)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_files(root: Path, walk: _Walk, arg: int, prefix: PurePosixPath) -> Iterable[_Entry]:
    """Files under ``root`` (sorted, hidden ones pruned); zarr stores handled on the way."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = PurePosixPath(*Path(os.path.relpath(here, root)).parts)
        keep = []
        for d in sorted(dirnames):
            if _is_hidden(d):
                continue
            sub = here / d
            if is_zarr_store(sub):
                _add_store(sub, walk, arg, prefix / rel_dir / d)
                continue
            keep.append(d)
        dirnames[:] = keep  # never descend into hidden folders or zarr stores
        for f in sorted(filenames):
            if not _is_hidden(f):
                yield _Entry(here / f, prefix / rel_dir / f, arg)


def _add_store(store: Path, walk: _Walk, arg: int, rel: PurePosixPath) -> None:
    if not walk.expand_stores:
        name = scan_name(rel.as_posix() if rel.parts else store.name)
        walk.scans.append((arg, ScanSource(name, store, "zarr"), rel.as_posix()))
        return
    from .store import ZarrVolumeStore

    try:
        keys = list(ZarrVolumeStore(store).names)
    except (OSError, ValueError, KeyError) as exc:
        walk.skipped.append(Skipped(str(store), f"cannot open the zarr store ({exc})"))
        return
    for key in keys:
        if walk.wanted(PurePosixPath(key)):
            walk.scans.append((arg, ScanSource(_sanitize(key), store, "zarr", store_key=key), key))


@attrs.frozen
class _DicomHeader:
    entry: _Entry
    uid: str
    geometry: tuple[Any, ...]
    multiframe: bool
    instance: str = ""  # SOPInstanceUID ("" when absent)
    position: tuple[float, ...] = ()  # ImagePositionPatient in mm, to 0.01 mm (() if absent)


def _read_header(entry: _Entry, walk: _Walk) -> _DicomHeader | None:
    """One header read; None (and a count or a skip) for what is not a DICOM CT image."""
    from pydicom.filereader import read_partial
    from pydicom.tag import Tag

    announced = (fmt := image_format(entry.path)) is not None and fmt.kind == "dicom"
    if not announced and not _looks_like_dicom(entry.path):
        walk.left_out["not an image file"] += 1
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with entry.path.open("rb") as handle:  # stop after Columns: no pixel bytes read
                ds = read_partial(
                    handle,
                    stop_when=_past_columns,
                    force=True,
                    specific_tags=[Tag(k) for k in _HEADER_TAGS],
                )
        sop = str(ds.get("SOPClassUID", "") or "")
        has_rows = "Rows" in ds and "Columns" in ds
        if not sop and not has_rows:
            raise ValueError("no DICOM image tags (SOPClassUID, Rows, Columns) found")
        modality = str(ds.get("Modality", "") or "").upper()
        image_type = [str(v).upper() for v in _as_list(ds.get("ImageType"))]
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        iop = tuple(round(float(v), 3) for v in _as_list(ds.get("ImageOrientationPatient")))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        instance = str(ds.get("SOPInstanceUID", "") or "").strip()
        position = tuple(round(float(v), 2) for v in _as_list(ds.get("ImagePositionPatient")))
    except Exception as exc:
        if announced:
            walk.skipped.append(Skipped(str(entry.path), f"cannot parse DICOM header ({exc})"))
        else:
            walk.left_out["not an image file"] += 1
        return None
    why = None
    for prefix, label in _LEFT_OUT_SOP:
        if sop == prefix or sop.startswith(prefix + "."):
            why = label
            break
    if why is None and modality in _LEFT_OUT_MODALITY:
        why = _LEFT_OUT_MODALITY[modality]
    if why is None and "LOCALIZER" in image_type:
        why = "localizer"
    if why is None and not has_rows:
        why = "DICOM without pixel data"
    if why is not None:
        walk.left_out[why] += 1
        return None
    return _DicomHeader(entry, uid, (rows, cols, iop), frames > 1, instance, position)


def _past_columns(tag: Any, vr: Any, length: int) -> bool:
    """Stop the header parse after (0028,0011) Columns: every tag the walk needs is read."""
    return int(tag) > 0x00280011


def _looks_like_dicom(path: Path) -> bool:
    """Cheap test before parsing a file without a DICOM suffix.

    True with the ``DICM`` magic at byte 128 (PS3.10 preamble), or without a preamble when
    the file starts with a little-endian tag of group 0x0002 (file meta) or 0x0008
    (identifying), where every DICOM dataset begins. A large binary file that is not
    DICOM is thus never parsed.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and int.from_bytes(head[:2], "little") in (0x0002, 0x0008)


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _copies_in_folders(members: list[_DicomHeader]) -> bool:
    """True when two folders hold the same instance: copies of one series, not its parts.

    The same SOPInstanceUID, or the same ImagePositionPatient (at one geometry), in files
    of different folders: two copies of a series, or two encodings of it (JPEG-LS and RLE
    exports), whose merge would hold every slice twice.
    """
    folders: dict[tuple[Any, ...], PurePosixPath] = {}
    for h in members:
        folder = h.entry.rel.parent
        keys: list[tuple[Any, ...]] = [("sop", h.instance)] if h.instance else []
        if h.position:
            keys.append(("position", h.geometry, h.position))
        for key in keys:
            if folders.setdefault(key, folder) != folder:
                return True
    return False


def _group_dicom(headers: list[_DicomHeader], walk: _Walk, root_name: str) -> None:
    """Series by UID (by folder without one), split by geometry; one scan per group.

    A UID group whose folders hold copies of the same instances (`_copies_in_folders`)
    is split by folder: each copy is a series of its own, named after its folder.
    """
    by_uid: dict[tuple[Any, ...], list[_DicomHeader]] = defaultdict(list)
    for h in headers:
        base: tuple[str, ...] = (
            ("uid", h.uid) if h.uid else ("folder", h.entry.rel.parent.as_posix())
        )
        if h.multiframe:
            base = (*base, "file", h.entry.rel.as_posix())
        by_uid[(h.entry.arg, base)].append(h)
    by_key: dict[tuple[Any, ...], list[_DicomHeader]] = defaultdict(list)
    for (arg, base), members in by_uid.items():
        if base[0] == "uid" and len(members) > 1 and _copies_in_folders(members):
            for h in members:
                by_key[(arg, (*base, "in", h.entry.rel.parent.as_posix()))].append(h)
        else:
            by_key[(arg, base)] = members
    for (arg, base), members in by_key.items():
        by_geometry: dict[tuple[Any, ...], list[_DicomHeader]] = defaultdict(list)
        for h in members:
            by_geometry[h.geometry].append(h)
        split = len(by_geometry) > 1
        for geometry, group in sorted(by_geometry.items(), key=lambda item: repr(item[0])):
            files = sorted(h.entry.path for h in group)
            rels = sorted(h.entry.rel for h in group)
            folders = sorted({r.parent for r in rels})
            common = PurePosixPath(os.path.commonpath([f.as_posix() for f in folders]))
            uid = group[0].uid or None
            hash_text = uid if uid else f"folder:{base[1]}"
            if split or group[0].multiframe:
                hash_text += f"|{'/'.join(map(str, base[2:]))}|{geometry!r}"
            if len(group) == 1:  # a loose slice or an Enhanced file: named like a file
                name = scan_name(rels[0])
            else:
                folder_name = common.as_posix() if _clean_parts(common) else root_name
                name = scan_name(folder_name, series_uid=hash_text)
            path = files[0] if len(files) == 1 else files[0].parent
            walk.scans.append(
                (arg, ScanSource(name, path, "dicom", files=files, series_uid=uid), str(rels[0]))
            )


def _expand_path(
    path: Path,
    arg: int,
    walk: _Walk,
    *,
    entry_text: str | None,
    dicom: list[_DicomHeader],
    roots: dict[int, str],
) -> None:
    """Expand one input argument (``entry_text``: the list line it came from, if any)."""
    if not path.exists():
        walk.skipped.append(Skipped(str(path), "no such file or directory"))
        return
    prefix = PurePosixPath(*_clean_parts(entry_text)) if entry_text is not None else None
    if is_zarr_store(path):
        _add_store(path, walk, arg, prefix or PurePosixPath())
        return
    if path.is_dir():
        roots[arg] = prefix.as_posix() if prefix and prefix.parts else path.resolve().name
        entries: Iterable[_Entry] = _walk_files(path, walk, arg, prefix or PurePosixPath())
    elif path.suffix.lower() in (".txt", ".csv") and entry_text is None:
        _expand_list(path, walk, dicom, roots)
        return
    else:
        rel = prefix if prefix is not None and prefix.parts else PurePosixPath(path.name)
        roots[arg] = rel.parent.as_posix() if rel.parent.parts else path.parent.resolve().name
        entries = [_Entry(path, rel, arg)]
    for entry in entries:
        if not walk.wanted(entry.rel):
            continue
        fmt = image_format(entry.path)
        if fmt is not None and fmt.kind != "dicom":
            walk.scans.append(
                (arg, ScanSource(scan_name(entry.rel), entry.path, fmt.kind), str(entry.rel))
            )
        elif entry.path.name.upper() == "DICOMDIR":
            walk.left_out["DICOMDIR"] += 1
        elif might_be_dicom(entry.path):
            header = _read_header(entry, walk)
            if header is None:
                continue
            if not path.is_dir():  # a DICOM file given by itself: named by its stem
                name = scan_name(entry.rel)
                walk.scans.append(
                    (
                        arg,
                        ScanSource(
                            name,
                            entry.path,
                            "dicom",
                            files=(entry.path,),
                            series_uid=header.uid or None,
                        ),
                        str(entry.rel),
                    )
                )
            else:
                dicom.append(header)
        else:
            walk.left_out["not an image file"] += 1


def _expand_list(
    list_file: Path, walk: _Walk, dicom: list[_DicomHeader], roots: dict[int, str]
) -> None:
    """A ``.txt`` / ``.csv`` list: each entry expands like an argument named by its text."""
    base = list_file.parent
    if list_file.suffix.lower() == ".csv":
        with list_file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
        if set(_LISTING_COLUMNS) <= columns:
            for row in rows:
                walk.n_args += 1
                files = [Path(f) for f in row["files"].split(_FILES_SEP) if f]
                source = ScanSource(
                    row["name"],
                    Path(row["path"]),
                    row["kind"],
                    files=files,
                    series_uid=row["series_uid"] or None,
                    store_key=row["store_key"] or None,
                )
                walk.scans.append((walk.n_args, source, row["name"]))
            return
        if "path" not in columns:
            raise ValueError(
                f"{list_file}: a CSV input needs a 'path' column, has {sorted(columns)}"
            )
        lines = [row["path"].strip() for row in rows]
    else:
        lines = []
        for raw in list_file.read_text(encoding="utf-8").splitlines():
            text = raw.split("#", 1)[0].strip()
            if text:
                lines.append(text)
    for text in lines:
        if not text:
            continue
        walk.n_args += 1
        _expand_path(base / text, walk.n_args, walk, entry_text=text, dicom=dicom, roots=roots)


def _unique(walk: _Walk, paths_of_args: Mapping[int, str]) -> list[ScanSource]:
    """Make names unique inside each argument; refuse clashes between arguments."""
    # The same scan reached twice (a folder and a file inside it): keep the first.
    seen: set[tuple[Any, ...]] = set()
    items = []
    for arg, scan, rel in walk.scans:
        key = (
            scan.kind,
            str(scan.path.resolve()),
            scan.store_key,
            scan.series_uid,
            len(scan.files),
            str(scan.files[0].resolve()) if scan.files else None,  # one resolve per scan
        )
        if key in seen:
            continue
        seen.add(key)
        items.append((arg, scan, rel))
    by_arg_name: dict[tuple[int, str], list[tuple[ScanSource, str]]] = defaultdict(list)
    for arg, scan, rel in items:
        by_arg_name[(arg, scan.name)].append((scan, rel))
    renamed: list[tuple[int, ScanSource]] = []
    for (arg, name), group in by_arg_name.items():
        if len(group) == 1:
            renamed.append((arg, group[0][0]))
            continue
        for scan, rel in group:  # flattening clash inside one argument: hash of own path
            renamed.append((arg, attrs.evolve(scan, name=f"{name}-{_short_hash(rel, 6)}")))
    owner: dict[str, tuple[int, ScanSource]] = {}
    for arg, scan in sorted(renamed, key=lambda item: (item[0], str(item[1]))):
        if scan.name in owner:
            other_arg, other = owner[scan.name]
            raise ValueError(
                f"{other} and {scan} both give the scan name {scan.name!r} (from inputs "
                f"{paths_of_args.get(other_arg, '?')} and {paths_of_args.get(arg, '?')}); give "
                "their common folder as one input so the names carry their folders, or "
                "use --exclude"
            )
        owner[scan.name] = (arg, scan)
    return sorted((scan for _arg, scan in renamed), key=lambda s: s.name)


def expand_inputs(
    inputs: str | PathLike[str] | Sequence[str | PathLike[str]],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    expand_stores: bool = True,
) -> InputListing:
    """Expand files, folders, zarr stores and list files into named scans.

    See the module docstring for every rule (walk, DICOM grouping, what is left out,
    list files, patterns, names). Only headers are read (one per DICOM file, no pixels).

    Args:
        inputs: One path or several: scan files, folders, zarr stores, ``.txt``/``.csv``
            lists.
        include: fnmatch patterns; when given, only files matching one are kept.
        exclude: fnmatch patterns; matching files are dropped.
        expand_stores: True: one source per scan of a zarr store; False: the store itself.

    Returns:
        `InputListing` with scans sorted by name, walk-time skips and left-out counts. A
        missing input path is a `Skipped` entry ("no such file or directory").

    Raises:
        ValueError: two input arguments give the same scan name (both paths named), a CSV
            without a ``path`` column.
    """
    if isinstance(inputs, str | PathLike):
        inputs = [inputs]
    walk = _Walk(tuple(include), tuple(exclude), expand_stores)
    dicom: list[_DicomHeader] = []
    roots: dict[int, str] = {}
    paths_of_args: dict[int, str] = {}
    for item in inputs:
        walk.n_args += 1
        paths_of_args[walk.n_args] = str(item)
        first = walk.n_args
        _expand_path(Path(item), first, walk, entry_text=None, dicom=dicom, roots=roots)
        for arg in range(first + 1, walk.n_args + 1):  # list entries
            paths_of_args[arg] = str(item)
    by_arg: dict[int, list[_DicomHeader]] = defaultdict(list)
    for h in dicom:
        by_arg[h.entry.arg].append(h)
    for arg, headers in sorted(by_arg.items()):
        _group_dicom(headers, walk, roots.get(arg, "series"))
    scans = _unique(walk, paths_of_args)
    return InputListing(
        scans=tuple(scans),
        skipped=tuple(sorted(walk.skipped, key=lambda s: s.path)),
        left_out=dict(sorted(walk.left_out.items())),
    )


# ---------------------------------------------------------------------------- reading


def read_scan(source: ScanSource, *, allow_non_ct: bool = False) -> Volume:
    """Read one expanded scan as a canonical `Volume` (HU float32, LPS, axial first).

    A module-level function of a picklable record, so ``ProcessPoolExecutor.map`` can run
    it. Files go through `tapct_data.read_volume`; a DICOM series reads exactly its
    ``files``; a zarr scan is read from its store.

    Args:
        source: From `expand_inputs`.
        allow_non_ct: As in `read_volume` (MR, label maps read with a warning).

    Returns:
        The `Volume` (``data (1, D, H, W)`` float32 HU); ``source`` is ``str(source)``.

    Raises:
        FileNotFoundError: the file is gone.
        LabelMapError: the volume looks like a label map (a `NotCTError`).
        NotCTError: Modality not CT, or values far from HU.
        ValueError: corrupt, truncated or unsupported data, pixel values that cannot be
            CT, a zarr scan missing from its store; the message starts with the file,
            folder or ``store:key``.
    """
    from .io import read_volume

    if source.kind == "zarr":
        if source.store_key is None:
            raise ValueError(f"{source}: a whole zarr store, not one scan (expand_stores=True)")
        from .store import ZarrVolumeStore

        try:
            return ZarrVolumeStore(source.path).read(source.store_key)
        except KeyError as exc:
            raise ValueError(f"{source}: not in the store ({exc})") from None
    if source.kind == "dicom" and source.files:
        label = source.path if len(source.files) > 1 else source.files[0]
        try:
            volume = read_volume(label, files=source.files, allow_non_ct=allow_non_ct)
        except (ValueError, OSError) as exc:
            # "<folder>: problem" -> "<folder> (DICOM series <uid>, N files): problem"
            text, head = str(exc), f"{label}: "
            if str(source) == str(label) or not text.startswith(head):
                raise
            raise type(exc)(f"{source}: {text[len(head) :]}") from exc
    else:
        volume = read_volume(source.path, allow_non_ct=allow_non_ct)
    volume.source = str(source)
    return volume


# ---------------------------------------------------------------------------- listings


def format_listing(listing: InputListing) -> list[str]:
    """Lines for ``--dry-run``: one per scan, then the skips and the left-out counts.

    Returns:
        e.g. ``["d1_a  nifti  /data/d1/a.nii.gz", ..., "2 scans, 1 skipped, left out:
        1 DICOM SEG"]``; user paths are plain text (print them without markup).
    """
    lines = []
    width = max((len(s.name) for s in listing.scans), default=0)
    for scan in listing.scans:
        lines.append(f"{scan.name:<{width}}  {scan.kind:<5}  {scan}")
    for skip in listing.skipped:
        lines.append(f"skipped: {skip.path}: {skip.reason}")
    summary = f"{len(listing.scans)} scans, {len(listing.skipped)} skipped"
    if listing.left_out:
        summary += ", left out: " + ", ".join(f"{n} {k}" for k, n in listing.left_out.items())
    lines.append(summary)
    return lines


def write_listing(listing: InputListing | Sequence[ScanSource], path: str | PathLike[str]) -> Path:
    """Write the scans as a ``.csv`` listing that `expand_inputs` reads back without a walk.

    Columns ``name, kind, path, series_uid, store_key, files`` (DICOM files joined with
    ``|``); paths absolute, so the file can be handed to shards on other machines that
    mount the same archive. Written to a temporary file and renamed (atomic).

    Args:
        listing: An `InputListing` or its scans.
        path: Output ``.csv`` file.

    Returns:
        The written path.

    Raises:
        ValueError: the path does not end in ``.csv``.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: a listing is written as .csv (a DICOM series is many files)")
    scans = listing.scans if isinstance(listing, InputListing) else tuple(listing)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_LISTING_COLUMNS)
        for s in scans:
            writer.writerow(
                [
                    s.name,
                    s.kind,
                    os.path.abspath(s.path),
                    s.series_uid or "",
                    s.store_key or "",
                    _FILES_SEP.join(os.path.abspath(f) for f in s.files),
                ]
            )
    os.replace(tmp, path)
    return path
