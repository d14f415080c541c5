"""The scan store: layout, crash safety (kill -9), resume, skip report, shards, the index."""

from __future__ import annotations

import builtins
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from tapct_data import (
    InputListing,
    ScanSource,
    Skipped,
    ZarrStoreCollection,
    ZarrVolumeStore,
    build_zarr_store,
    expand_inputs,
    open_stores,
    read_scan,
    read_volume,
    write_volume,
)
from tapct_data.phantom import make_phantom

SMALL = {"chunks": (1, 16, 16), "slices_per_file": 4}


def _scans(tmp_path: Path, shapes=((9, 24, 20), (5, 24, 20), (7, 16, 16), (3, 20, 20))):
    sources = []
    for i, shape in enumerate(shapes):
        image, _ = make_phantom(shape, seed=i)
        path = write_volume(image, tmp_path / "scans" / f"scan{i}.nii.gz")
        sources.append(ScanSource(name=f"scan{i}", path=path, kind="nifti"))
    return sources


def _bad(tmp_path: Path) -> ScanSource:
    path = tmp_path / "bad" / "notes.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a NIfTI file")
    return ScanSource(name="notes", path=path, kind="nifti")


def _snapshot(path: Path) -> dict:
    """Everything a reader sees: names, arrays, array attributes and index records."""
    store = ZarrVolumeStore(path)
    out = {}
    for name in store.names:
        array = zarr.open_array(str(path / name), mode="r")
        out[name] = (array[...].tobytes(), dict(array.attrs), store.shape(name), store.source(name))
    return out


def test_roundtrip_layout_and_reading(tmp_path):
    sources = _scans(tmp_path)
    report = build_zarr_store(sources, tmp_path / "s.zarr", **SMALL)
    assert report.written == ("scan0", "scan1", "scan2", "scan3") and report.skipped == ()
    store = ZarrVolumeStore(report.path)
    assert store.names == ["scan0", "scan1", "scan2", "scan3"] and len(store) == 4
    ref = read_volume(sources[0].path)
    back = store.read("scan0")
    assert torch.equal(back.data, ref.data.round())
    np.testing.assert_allclose(back.affine, ref.affine)
    assert store.shape("scan0") == (9, 24, 20) and store.source("scan0") == str(sources[0])
    slab = store.read_slab("scan0", 3, 5, dtype=torch.int16)
    assert slab.dtype == torch.int16 and torch.equal(slab.float(), ref.data[:, 3:8].round())
    with pytest.raises(ValueError, match="outside"):
        store.read_slab("scan1", 2, 5)
    # blosc-lz4 chunks of one slice, grouped 4 slices per file (zarr sharding)
    meta = json.loads((report.path / "scan0" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    files = [p for p in (report.path / "scan0" / "c").rglob("*") if p.is_file()]
    assert len(files) == 3  # 9 slices, 4 per file
    assert report.skipped_file.read_text() == "" and store.skipped == ()
    with pytest.raises(TypeError, match="expand_inputs"):
        build_zarr_store([sources[0].path], report.path)  # type: ignore[list-item]
    again = build_zarr_store(sources, report.path, **SMALL)
    assert again.written == () and again.already_done == report.written


def test_skip_report_rerun_retries_and_stop(tmp_path, shared_data):
    sources = [*_scans(tmp_path)[:2], _bad(tmp_path)]
    mha = shared_data / "robustness/image_2d.mha"
    sources.append(ScanSource(name="flat", path=mha, kind="itk"))
    walked = Skipped(path="x/trunc.dcm", reason="truncated pixel data")
    report = build_zarr_store(InputListing(tuple(sources), (walked,)), tmp_path / "s.zarr")
    assert report.written == ("scan0", "scan1")
    rows = [json.loads(line) for line in report.skipped_file.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["x/trunc.dcm", str(mha), str(sources[2])]
    assert rows[1]["reason"].startswith("2D image")  # the reason, without the path
    for row, source in zip(rows[1:], (sources[3], sources[2]), strict=True):
        with pytest.raises(ValueError) as err:  # the reader's own one-line error
            read_scan(source)
        assert f"{row['path']}: {row['reason']}" == " ".join(str(err.value).split())
    assert ZarrVolumeStore(report.path).skipped == report.skipped
    # A rerun retries the skipped sources and rewrites the report.
    write_volume(make_phantom((4, 16, 16))[0], sources[2].path)
    rerun = build_zarr_store(sources, report.path)
    assert rerun.written == ("notes",) and rerun.already_done == ("scan0", "scan1")
    assert [s.path for s in rerun.skipped] == [str(mha)]
    # on_error="stop": the first bad scan's own error; the scans before it are complete.
    rgb = shared_data / "robustness/nifti_rgb_not_hu.nii.gz"
    order = [sources[0], ScanSource(name="scan0b", path=rgb, kind="nifti"), sources[1]]
    with pytest.raises(ValueError, match="nifti_rgb_not_hu"):
        build_zarr_store(order, tmp_path / "stop.zarr", on_error="stop")
    assert ZarrVolumeStore(tmp_path / "stop.zarr").names == ["scan0"]
    resumed = build_zarr_store(order, tmp_path / "stop.zarr")
    assert resumed.already_done == ("scan0",) and resumed.written == ("scan1",)
    assert [s.path for s in resumed.skipped] == [str(order[1])]


def test_nothing_read_leaves_nothing_on_disk(tmp_path):
    out = tmp_path / "none.zarr"
    report = build_zarr_store([_bad(tmp_path)], out)
    assert report.written == () and len(report.skipped) == 1 and not out.exists()
    with pytest.raises(ValueError, match=r"notes\.nii\.gz"):
        build_zarr_store([_bad(tmp_path)], out, on_error="stop")
    assert not out.exists()


def test_two_workers_give_the_same_store(tmp_path):
    sources = [*_scans(tmp_path), _bad(tmp_path)]
    one = build_zarr_store(sources, tmp_path / "one.zarr", workers=1, **SMALL)
    two = build_zarr_store(sources, tmp_path / "two.zarr", workers=2, **SMALL)
    assert one.written == two.written and one.skipped == two.skipped
    assert _snapshot(one.path) == _snapshot(two.path)
    assert one.skipped_file.read_text() == two.skipped_file.read_text()


_CHILD = """
import json, sys
from pathlib import Path
from tapct_data import build_zarr_store
from tapct_data import ScanSource
paths, out = json.loads(sys.argv[1]), sys.argv[2]
sources = [ScanSource(name=Path(p).name.split(".")[0], path=Path(p), kind="nifti") for p in paths]
build_zarr_store(sources, out, chunks=(1, 16, 16), slices_per_file=4)
"""


def _child(paths, out, fault: str) -> int:
    env = {**os.environ, "TAPCT_FAULT": fault}
    args = [sys.executable, "-c", _CHILD, json.dumps([str(p) for p in paths]), str(out)]
    return subprocess.run(args, env=env, timeout=120).returncode


def test_kill_9_then_rerun_gives_the_uninterrupted_store(tmp_path):
    sources = _scans(tmp_path)
    paths = [s.path for s in sources]
    reference = build_zarr_store(sources, tmp_path / "ref.zarr", **SMALL).path
    out = tmp_path / "crashed.zarr"
    # Killed while writing scan1's array: a half-written temporary, never listed.
    assert _child(paths, out, "store.mid_write:2") == -signal.SIGKILL
    assert ZarrVolumeStore(out).names == ["scan0"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".tmp-scan1")]
    # Resumed, then killed after scan3's array is in place but before its record.
    assert _child(paths, out, "store.after_write:3") == -signal.SIGKILL
    assert (out / "scan3" / "zarr.json").is_file()
    visible = ZarrVolumeStore(out)
    assert visible.names == ["scan0", "scan1", "scan2"]
    for name in visible.names:
        assert torch.equal(visible.read(name).data, ZarrVolumeStore(reference).read(name).data)
    rerun = build_zarr_store(sources, out, **SMALL)
    assert rerun.written == ("scan3",) and rerun.already_done == ("scan0", "scan1", "scan2")
    assert _snapshot(out) == _snapshot(reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


_DYING_READER = """
import json, sys
from pathlib import Path
from tapct_data import ScanSource, build_zarr_store
paths, out = json.loads(sys.argv[1]), sys.argv[2]
sources = [ScanSource(name=Path(p).name.split(".")[0], path=Path(p), kind="nifti") for p in paths]
report = build_zarr_store(sources, out, workers=2, chunks=(1, 16, 16), slices_per_file=4)
print(json.dumps([list(report.written), [s.reason for s in report.skipped]]))
"""


def test_a_reader_process_that_dies_skips_its_scan_not_the_build(tmp_path):
    sources = _scans(tmp_path)
    paths = [str(s.path) for s in sources]
    reference = build_zarr_store(sources, tmp_path / "ref.zarr", **SMALL).path
    out = tmp_path / "s.zarr"
    # The reader of scan1 is killed (as by the OOM killer) each time it starts on scan1:
    # in the pool (which breaks) and again when retried on its own.
    env = {**os.environ, "TAPCT_FAULT": "store.read.scan1:1"}
    args = [sys.executable, "-c", _DYING_READER, json.dumps(paths), str(out)]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    written, reasons = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(written) == ["scan0", "scan2", "scan3"]
    assert reasons == ["the reader process died (signal 9, e.g. out of memory)"]
    rows = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert rows == [{"path": str(sources[1]), "reason": reasons[0]}]
    snapshot, want = _snapshot(out), _snapshot(reference)
    assert snapshot == {k: v for k, v in want.items() if k != "scan1"}
    # The rerun (the reader no longer dies) retries the skipped scan: the full store.
    rerun = build_zarr_store(sources, out, workers=2, **SMALL)
    assert rerun.written == ("scan1",) and rerun.skipped == ()
    assert _snapshot(out) == want


def test_shards_hold_every_scan_once_and_open_as_one_dataset(tmp_path):
    sources = [*_scans(tmp_path), _bad(tmp_path)]
    folder = tmp_path / "shards"
    reports = [
        build_zarr_store(sources, folder / f"shard-{k}.zarr", shard=(k, 2), **SMALL)
        for k in range(2)
    ]
    # every 2nd source of the sorted list: notes, scan1, scan3 | scan0, scan2
    assert [r.written for r in reports] == [("scan1", "scan3"), ("scan0", "scan2")]
    assert [len(r.skipped) for r in reports] == [1, 0]
    both = open_stores(folder)
    assert isinstance(both, ZarrStoreCollection) and sorted(both.names) == [
        "scan0",
        "scan1",
        "scan2",
        "scan3",
    ]
    assert both.names == open_stores([r.path for r in reports]).names
    assert torch.equal(
        both.read_slab("scan0", 1, 3), ZarrVolumeStore(reports[1].path).read_slab("scan0", 1, 3)
    )
    assert len(both.skipped) == 1 and both.source("scan2") == str(sources[2])
    build_zarr_store(sources[:1], folder / "dup.zarr", **SMALL)
    with pytest.raises(ValueError, match="scan0"):
        open_stores(folder)
    with pytest.raises(ValueError, match="shard"):
        build_zarr_store(sources, tmp_path / "x.zarr", shard=(2, 2))


def test_open_reads_no_per_scan_file(tmp_path, monkeypatch):
    sources = _scans(tmp_path)
    path = build_zarr_store(sources, tmp_path / "s.zarr", **SMALL).path
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    store = ZarrVolumeStore(path)
    assert store.names == [s.name for s in sources] and store.shape("scan3") == (3, 20, 20)
    assert sorted(Path(f).name for f in opened) == ["index.json", "zarr.json"]
    # A record newer than the consolidated index (a build killed before its end) is read,
    # alone; a consolidated entry whose record is gone is dropped.
    (path / "_index" / "scan3.json").unlink()
    opened.clear()
    assert ZarrVolumeStore(path).names == ["scan0", "scan1", "scan2"]
    (path / "index.json").write_text(json.dumps({"scans": {}}))
    opened.clear()
    assert ZarrVolumeStore(path).shape("scan1") == (5, 24, 20)
    assert sum(Path(f).parent.name == "_index" for f in opened) == 3


def test_pool_warnings_reach_the_parent_not_the_worker_stderr(tmp_path, shared_data, capfd):
    """A reader's warning in a pool worker is re-emitted in this process (the app's
    policy formats it), never printed raw (file:line + source line) by the worker."""
    from tapct_data.errors import DicomGeometryWarning

    tilt = shared_data / "robustness/dicom_gantry_tilt_14deg"
    plain = shared_data / "ct/ct_3slice_dicom"  # a second scan: a pool of 2 runs
    listing = expand_inputs([tilt, plain])
    with pytest.warns(DicomGeometryWarning, match=r"gantry tilt of 14\.00 degrees"):
        report = build_zarr_store(listing, tmp_path / "s.zarr", workers=2)
    assert len(report.written) == 2
    err = capfd.readouterr().err
    assert "DicomGeometryWarning" not in err and "gantry tilt" not in err
