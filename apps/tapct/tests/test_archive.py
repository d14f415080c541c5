"""``tapct preprocess`` on a whole archive tree (issue 9, "Must show"), built from copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tapct_app.cli import main


@pytest.fixture
def archive(shared_data: Path, tmp_path: Path) -> Path:
    """Every kind of entry an archive holds; returns the folder holding ``archive/``."""

    def cp(src: str, dst: str) -> None:
        path = tmp_path / dst
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / src, path)

    cp("ct/example_ct_sm.nii.gz", "archive/nifti/p1/ct.nii.gz")  # NIfTI in nested folders
    cp("ct/example_ct_sm.nii.gz", "archive/nifti/p2/sub/ct.nii.gz")
    # Two DICOM series copied into one folder (one without a UID), a DICOM SEG beside them.
    for f in sorted((shared_data / "ct/example_ct_dicom").iterdir()):
        cp(f"ct/example_ct_dicom/{f.name}", f"archive/dicom/mixed/{f.name}")
    for f in sorted((shared_data / "ct/ct_3slice_dicom").iterdir()):
        cp(f"ct/ct_3slice_dicom/{f.name}", f"archive/dicom/mixed/3slice_{f.name}")
    cp("labels/ct_3slice_liver_SEG.dcm", "archive/dicom/mixed/liver_SEG.dcm")
    cp("ct/ct_small_slice.dcm", "archive/loose.dcm")  # a loose slice
    cp("robustness/dicom_truncated_pixels.dcm", "archive/bad/truncated.dcm")
    (tmp_path / "archive/bad/notes.nii.gz").write_text("not a NIfTI file")
    cp("mr/example_mr_sm.nii.gz", "archive/mr/mr.nii.gz")  # not CT
    cp("labels/example_ct_sm_seg.nii.gz", "archive/nifti/p1/seg.nii.gz")  # a label map
    cp("ct/example_ct_sm.nii.gz", "extra/e1.nii.gz")  # reached through a list file
    (tmp_path / "extra/list.txt").write_text("# scans outside the archive\ne1.nii.gz\n")
    return tmp_path


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_preprocess_an_archive_tree(archive, shared_data, capsys):
    from tapct_data import ZarrVolumeStore, read_volume

    a, store = archive / "archive", archive / "s.zarr"
    inputs = [str(a), str(archive / "extra/list.txt")]
    before = _files(archive)
    assert main(["preprocess", *inputs, "--dry-run"]) == 0
    dry = capsys.readouterr().out.strip().splitlines()
    assert _files(archive) == before  # --dry-run writes nothing
    assert dry[-1] == "10 scans, 0 skipped, left out: 1 DICOM SEG"

    assert main(["preprocess", *inputs, "-o", str(store), "--workers", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"6 scans written, 4 skipped (see {store / 'skipped.jsonl'})"
    s = ZarrVolumeStore(store)
    ct_sm = tuple(read_volume(shared_data / "ct/example_ct_sm.nii.gz").data.shape[1:])
    shapes = {n: s.shape(n) for n in s.names}
    (no_uid,) = [n for n in shapes if n.startswith("dicom_mixed_") and shapes[n][0] == 20]
    (three,) = [n for n in shapes if n.startswith("dicom_mixed_") and shapes[n][0] == 3]
    assert shapes == {
        no_uid: (20, 512, 512),
        three: (3, 512, 512),
        "e1": ct_sm,
        "loose": (1, 128, 128),
        "nifti_p1_ct": ct_sm,
        "nifti_p2_sub_ct": ct_sm,
    }
    assert s.source("e1") == str(archive / "extra/e1.nii.gz")
    rows = [json.loads(line) for line in (store / "skipped.jsonl").read_text().splitlines()]
    want = {
        "bad/notes.nii.gz": "cannot read NIfTI",
        "bad/truncated.dcm": "corrupt or truncated pixel data",
        "mr/mr.nii.gz": "values look far from HU",
        "nifti/p1/seg.nii.gz": "looks like a label map",
    }
    assert [r["path"] for r in rows] == [str(a / p) for p in want]
    for row, words in zip(rows, want.values(), strict=True):
        assert row["reason"].startswith(words), row  # the path is in row["path"]
    # The dry run listed exactly these scans and sources, grouped the same way.
    listed = {line.split()[0] for line in dry[:-1]}
    assert listed == set(shapes) | {"bad_notes", "bad_truncated", "mr_mr", "nifti_p1_seg"}
    assert any(
        line.startswith(no_uid) and "without SeriesInstanceUID, 20 files" in line for line in dry
    )
