"""The CLI's input handling: archives expand to named scans, mistakes are one line."""

from __future__ import annotations

import shutil

import pytest
from tapct_app.errors import UserError
from tapct_app.scans import iter_scans, listing_lines


def test_folder_of_nifti_and_dicom_yields_every_scan(shared_data, tmp_path):
    ct = shared_data / "ct"
    for rel in ("s0001/ct.nii.gz", "s0002/ct.nii.gz"):
        (tmp_path / rel).parent.mkdir(parents=True)
        shutil.copyfile(ct / "example_ct_sm.nii.gz", tmp_path / rel)
    shutil.copytree(ct / "ct_3slice_dicom", tmp_path / "s0003/dicom")
    got = [(name, volume.shape) for name, _source, volume in iter_scans([tmp_path])]
    assert [g[1] for g in got] == [(30, 101, 122), (30, 101, 122), (3, 512, 512)]
    assert [g[0] for g in got][:2] == ["s0001_ct", "s0002_ct"]
    assert got[2][0].startswith("s0003_dicom_")
    lines = listing_lines([tmp_path], exclude=["*/dicom/*"])
    assert lines[-1] == "2 scans, 0 skipped" and lines[0].startswith("s0001_ct  nifti  ")


def test_clash_and_empty_input_are_one_line_errors(shared_data, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copyfile(shared_data / "ct/example_ct_sm.nii.gz", tmp_path / sub / "ct.nii.gz")
    with pytest.raises(UserError, match="both give the scan name 'ct'"):
        list(iter_scans([tmp_path / "a", tmp_path / "b"]))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"empty: no scans found; left out: 1 not an image file"):
        list(iter_scans([tmp_path / "empty"]))
    with pytest.raises(UserError, match="no such file or directory"):
        list(iter_scans([tmp_path / "missing"]))
