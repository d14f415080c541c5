"""``tapct embed`` over an archive: resume, manifest merge, skip-and-report, kill -9, guards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tapct_app.cli import main

ROI = ["--roi", "4,32,32", "--device", "cpu", "--no-pca"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A seeded tap_nano_3d in a model folder (a preset would give new random weights)."""
    from tapct_vit3d import create_model, save_pretrained

    torch.manual_seed(0)
    return save_pretrained(create_model("tap_nano_3d"), tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    """Three small CT phantoms (NIfTI), 8 x 32 x 40 voxels."""
    from tapct_app.train.data import write_demo_phantoms

    return write_demo_phantoms(tmp_path_factory.mktemp("scans"), 3, (8, 32, 40), seed=0)


@pytest.fixture
def bad_scan(tmp_path) -> Path:
    path = tmp_path / "notes.nii.gz"
    path.write_text("not an image")
    return path


def _embed(paths, model_dir, out, *extra) -> int:
    return main(
        ["embed", *map(str, paths), "--model", str(model_dir), "-o", str(out), *ROI, *extra]
    )


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if not ln.startswith("tapct: warning")]


def _count_reads(monkeypatch) -> list[str]:
    import tapct_app.embed as embed

    reads: list[str] = []
    real = embed._read_source

    def counting(source, in_plane, **kwargs):
        reads.append(source.name)
        return real(source, in_plane, **kwargs)

    monkeypatch.setattr(embed, "_read_source", counting)
    return reads


def test_resume_skips_done_scans_and_the_manifest_merges(
    scans, model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "emb"
    reads = _count_reads(monkeypatch)
    assert _embed(scans[:1], model_dir, out) == 0
    assert reads == ["phantom-000"]
    first = (out / "phantom-000.safetensors").stat().st_mtime_ns
    assert _embed(scans[:2], model_dir, out) == 0  # one done, one new
    assert reads == ["phantom-000", "phantom-001"]  # the done scan was not read again
    assert (out / "phantom-000.safetensors").stat().st_mtime_ns == first
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"1 embedded, 0 skipped, 1 already done in {out}"
    )
    assert _embed(scans[2:], model_dir, out) == 0  # another invocation, other scans
    manifest = _manifest(out)
    assert [s["name"] for s in manifest["scans"]] == ["phantom-000", "phantom-001", "phantom-002"]
    assert len(manifest["settings"]) == 1
    assert {s["settings_id"] for s in manifest["scans"]} == set(manifest["settings"])
    assert [s["source"] for s in manifest["scans"]] == [str(p) for p in scans]
    # Other settings re-embed the scan and the manifest records both settings.
    assert _embed(scans[:1], model_dir, out, "--overlap", "0.5") == 0
    manifest = _manifest(out)
    assert len(manifest["scans"]) == 3 and len(manifest["settings"]) == 2
    assert reads == ["phantom-000", "phantom-001", "phantom-002", "phantom-000"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_bad_scan_is_skipped_and_reported(scans, bad_scan, model_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    assert _embed([scans[0], bad_scan], model_dir, out) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[-1] == f"1 embedded, 1 skipped (see {out / 'skipped.jsonl'}) in {out}"
    (record,) = [json.loads(ln) for ln in (out / "skipped.jsonl").read_text().splitlines()]
    assert record["path"] == str(bad_scan)
    assert record["reason"] and not record["reason"].startswith(str(bad_scan))
    assert [s["name"] for s in _manifest(out)["scans"]] == ["phantom-000"]
    bad_scan.unlink()  # the user removes the bad file: the rerun rewrites the report
    assert _embed([scans[0]], model_dir, out) == 0
    assert not (out / "skipped.jsonl").exists()


def test_on_error_stop_keeps_the_scans_before(scans, model_dir, tmp_path, capsys):
    bad_scan = tmp_path / "phantom-0005.nii.gz"  # scans are embedded in name order
    bad_scan.write_text("not an image")
    out = tmp_path / "emb"
    assert _embed([scans[0], bad_scan, scans[1]], model_dir, out, "--on-error", "stop") == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"tapct: error: {bad_scan}: ")
    assert [s["name"] for s in _manifest(out)["scans"]] == ["phantom-000"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "phantom-000.safetensors"]


def test_nothing_readable_is_one_line_and_leaves_nothing(bad_scan, model_dir, tmp_path, capsys):
    other = tmp_path / "other.nii.gz"
    other.write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "emb"
    assert _embed([bad_scan, other], model_dir, out) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"tapct: error: {bad_scan}: ")
    assert line.endswith("; nothing embedded (1 more skipped)")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.nii.gz", "other.nii.gz"]


@pytest.mark.parametrize("kind", ["empty", "foreign"])
def test_empty_or_foreign_store_is_one_line(kind, model_dir, tmp_path, capsys):
    import zarr

    store = tmp_path / "s.zarr"
    group = zarr.open_group(str(store), mode="w")
    if kind == "foreign":
        group.create_array("image", shape=(4, 8, 8), dtype="f4")[...] = 1.0
    out = tmp_path / "emb"
    assert _embed([store], model_dir, out) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line == (
        f"tapct: error: {store}: no complete scans in this zarr store (empty, or "
        "not a store written by `tapct preprocess`)"
    )
    assert not out.exists()


def test_output_that_is_a_file_is_one_line(scans, model_dir, tmp_path, capsys):
    out = tmp_path / "emb.txt"
    out.write_text("mine")
    assert _embed(scans[:1], model_dir, out) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == [
        f"tapct: error: {out}: exists and is not a folder (-o needs a folder)"
    ]
    assert "Traceback" not in err and out.read_text() == "mine"


def test_foreign_manifest_is_one_line(scans, model_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "something-else"}')
    assert _embed(scans[:1], model_dir, out) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"tapct: error: {out / 'manifest.json'}: not a tapct embedding")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def _tensors(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p)) for p in sorted(out.glob("*.safetensors"))}


def test_kill_9_mid_archive_then_rerun_equals_an_uninterrupted_run(scans, model_dir, tmp_path):
    reference = tmp_path / "ref"
    assert _embed(scans, model_dir, reference) == 0
    out = tmp_path / "emb"
    cmd = [
        sys.executable,
        "-m",
        "tapct_app",
        "embed",
        *map(str, scans),
        "--model",
        str(model_dir),
        "-o",
        str(out),
        *ROI,
    ]
    env = {**os.environ, "TAPCT_FAULT": "embed.after_scan:2"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [s["name"] for s in _manifest(out)["scans"]] == ["phantom-000", "phantom-001"]
    env.pop("TAPCT_FAULT")
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "1 embedded, 0 skipped, 2 already done" in rerun.stdout
    assert _manifest(out) == _manifest(reference)
    got, want = _tensors(out), _tensors(reference)
    assert got.keys() == want.keys() == {f"phantom-{i:03d}.safetensors" for i in range(3)}
    for name, tensors in want.items():
        for key, value in tensors.items():
            assert torch.equal(got[name][key], value), (name, key)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_two_reader_processes_give_the_same_embeddings(scans, bad_scan, model_dir, tmp_path):
    one, two = tmp_path / "w1", tmp_path / "w2"
    inputs = [scans[0], bad_scan, scans[1]]
    assert _embed(inputs, model_dir, one, "--workers", "1") == 0
    assert _embed(inputs, model_dir, two, "--workers", "2") == 0
    assert _manifest(one) == _manifest(two)
    assert (one / "skipped.jsonl").read_text() == (two / "skipped.jsonl").read_text()
    for name, tensors in _tensors(one).items():
        for key, value in tensors.items():
            assert torch.equal(_tensors(two)[name][key], value)


def test_windows_are_padded_with_normalised_air():
    from tapct_app.embed import _air_pad_value
    from tapct_data import ClipNormalize

    # -1024 HU is clipped to the paper's lower bound -1008 HU, then z-normalised.
    assert _air_pad_value(ClipNormalize()) == pytest.approx((-1008.0 + 86.8086) / 322.6347)
    assert _air_pad_value(ClipNormalize(lower=-1100.0)) == pytest.approx(
        (-1024.0 + 86.8086) / 322.6347
    )


def test_a_tree_is_embedded_with_the_names_and_skips_of_preprocess(
    shared_data, model_dir, tmp_path, capsys
):
    """A folder walk: NIfTI in sub-folders, a DICOM series folder, bad files (walk and read)."""
    import shutil

    from tapct_data import expand_inputs

    tree = tmp_path / "archive"
    (tree / "p1" / "ct").mkdir(parents=True)
    shutil.copy(shared_data / "ct" / "example_ct_sm.nii.gz", tree / "p1" / "ct" / "scan.nii.gz")
    shutil.copytree(shared_data / "ct" / "ct_3slice_dicom", tree / "p2" / "series")
    (tree / "p1" / "notes.nii.gz").write_text("not a NIfTI file")  # read-time skip
    (tree / "broken.dcm").write_text("not DICOM")  # walk-time skip (no DICOM tags)
    out = tmp_path / "emb"
    assert _embed([tree], model_dir, out, "--in-plane", "32,32") == 0
    listing = expand_inputs(tree)  # the names preprocess gives
    names = [s["name"] for s in _manifest(out)["scans"]]
    assert names == ["p1_ct_scan", listing.names[-1]] and names[1].startswith("p2_series_")
    assert [s["volume_shape"] for s in _manifest(out)["scans"]] == [[30, 32, 32], [3, 32, 32]]
    rows = [json.loads(ln) for ln in (out / "skipped.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(tree / "broken.dcm"), str(tree / "p1/notes.nii.gz")]
    assert rows[0]["reason"].startswith("cannot parse DICOM header")
    assert rows[1]["reason"].startswith("cannot read NIfTI")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"2 embedded, 2 skipped (see {out / 'skipped.jsonl'}) in {out}"
    # --exclude drops the bad files before anything is read; --on-error stop then passes.
    out2 = tmp_path / "emb2"
    args = ["--in-plane", "32,32", "--exclude", "*notes*", "--exclude", "broken.dcm"]
    assert _embed([tree], model_dir, out2, *args, "--on-error", "stop") == 0
    assert [s["name"] for s in _manifest(out2)["scans"]] == names
    assert not (out2 / "skipped.jsonl").exists()
