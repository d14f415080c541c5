"""Input expansion on trees built from copies of the real scans, names, and reading reasons."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from tapct_data import (
    AIR_HU,
    DicomGeometryWarning,
    LabelMapError,
    NotCTError,
    ScanSource,
    build_zarr_store,
    expand_inputs,
    format_listing,
    image_suffix,
    is_zarr_store,
    read_scan,
    read_volume,
    scan_name,
    strip_image_suffix,
    write_listing,
)


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _copy_series(src_dir: Path, dst_dir: Path, prefix: str = "") -> list[Path]:
    return [_copy(f, dst_dir / f"{prefix}{f.name}") for f in sorted(src_dir.iterdir())]


def _uid_of(folder: Path) -> str:
    return str(pydicom.dcmread(next(iter(sorted(folder.iterdir())))).SeriesInstanceUID)


def _h(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


@pytest.fixture
def archive(shared_data, tmp_path) -> Path:
    """One input folder with every kind of entry (no series UID used twice)."""
    root = tmp_path / "archive"
    ct = shared_data / "ct"
    for rel in ("nifti/d1/a.nii.gz", "nifti/d2/a.nii.gz", "nifti/a_1.nii.gz"):
        _copy(ct / "example_ct_sm.nii.gz", root / rel)
    # Two DICOM series copied into one folder, a DICOM SEG beside them.
    _copy_series(ct / "example_ct_dicom", root / "dicom/mixed")
    _copy_series(ct / "ct_3slice_dicom", root / "dicom/mixed", prefix="3slice_")
    _copy(shared_data / "labels/ct_3slice_liver_SEG.dcm", root / "dicom/mixed/liver_SEG.dcm")
    _copy(ct / "ct_small_slice.dcm", root / "loose/ct_small_slice.dcm")
    _copy(shared_data / "robustness/dicom_truncated_pixels.dcm", root / "bad/truncated.dcm")
    (root / "bad/x.nii.gz").write_text("not an image at all\n")
    _copy(shared_data / "mr/example_mr_sm.nii.gz", root / "mr/example_mr_sm.nii.gz")
    _copy(shared_data / "labels/example_ct_sm_seg.nii.gz", root / "labels/ct_seg.nii.gz")
    # Ignored: hidden files and folders, non-image files.
    _copy(ct / "example_ct_sm.nii.gz", root / ".hidden/a.nii.gz")
    _copy(ct / "example_ct_sm.nii.gz", root / "nifti/.a.nii.gz")
    (root / "notes.txt").write_text("a note\n")
    (root / "nifti/meta.json").write_text("{}\n")
    return root


ARCHIVE_NAMES = {
    "nifti_d1_a": "nifti",
    "nifti_d2_a": "nifti",
    "nifti_a_1": "nifti",
    "loose_ct_small_slice": "dicom",
    "bad_truncated": "dicom",
    "bad_x": "nifti",
    "mr_example_mr_sm": "nifti",
    "labels_ct_seg": "nifti",
}


def test_archive_expands_to_every_scan_with_clear_names(archive, shared_data):
    listing = expand_inputs(archive)
    uid3 = _uid_of(shared_data / "ct/ct_3slice_dicom")
    expected = dict(ARCHIVE_NAMES)
    expected[f"dicom_mixed_{_h(uid3)}"] = "dicom"
    expected[f"dicom_mixed_{_h('folder:dicom/mixed')}"] = "dicom"  # the series without UID
    assert {s.name: s.kind for s in listing.scans} == expected
    assert listing.names == sorted(listing.names)
    assert dict(listing.left_out) == {"DICOM SEG": 1, "not an image file": 2}
    assert listing.skipped == ()
    series = {s.name: s for s in listing.scans if s.kind == "dicom" and len(s.files) > 1}
    assert sorted(len(s.files) for s in series.values()) == [3, 20]
    assert series[f"dicom_mixed_{_h(uid3)}"].series_uid == uid3
    assert series[f"dicom_mixed_{_h('folder:dicom/mixed')}"].series_uid is None
    lines = format_listing(listing)
    assert lines[-1] == "10 scans, 0 skipped, left out: 1 DICOM SEG, 2 not an image file"


def test_archive_scans_read_or_fail_with_their_reason(archive):
    by_name = {s.name: s for s in expand_inputs(archive).scans}
    shapes = {}
    for name, source in by_name.items():
        if name.startswith(("nifti_", "dicom_", "loose_")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DicomGeometryWarning)
                volume = read_scan(source)
            shapes[name] = volume.shape
            assert volume.source == str(source)
    assert shapes["nifti_d1_a"] == shapes["nifti_a_1"] == (30, 101, 122)
    assert sorted(v for k, v in shapes.items() if k.startswith("dicom_")) == [
        (3, 512, 512),
        (20, 512, 512),
    ]
    assert shapes["loose_ct_small_slice"] == (1, 128, 128)
    with pytest.raises(ValueError, match="truncated pixel data") as info:
        read_scan(by_name["bad_truncated"])
    assert "truncated.dcm" in str(info.value)
    with pytest.raises(ValueError, match="cannot read NIfTI") as info:
        read_scan(by_name["bad_x"])
    assert "x.nii.gz" in str(info.value)
    with pytest.raises(NotCTError, match="far from HU"):
        read_scan(by_name["mr_example_mr_sm"])
    with pytest.raises(LabelMapError, match=r"looks like a label map \(42 distinct integer"):
        read_scan(by_name["labels_ct_seg"])


def test_series_split_over_two_folders_is_one_scan(shared_data, tmp_path):
    files = sorted((shared_data / "ct/ct_3slice_dicom").iterdir())
    _copy(files[0], tmp_path / "s/part1" / files[0].name)
    for f in files[1:]:
        _copy(f, tmp_path / "s/part2" / f.name)
    (listing_scan,) = expand_inputs(tmp_path / "s").scans
    uid = _uid_of(shared_data / "ct/ct_3slice_dicom")
    assert listing_scan.name == f"s_{_h(uid)}"  # the argument's own name: series at its top
    assert len(listing_scan.files) == 3
    assert read_scan(listing_scan).shape == (3, 512, 512)


def test_copies_of_one_series_in_two_folders_are_two_scans(shared_data, tmp_path):
    """Two copies (same SOPInstanceUIDs) are not merged into one series of duplicates."""
    src = shared_data / "ct/ct_3slice_dicom"
    _copy_series(src, tmp_path / "dup/a")
    _copy_series(src, tmp_path / "dup/b")
    scans = expand_inputs(tmp_path / "dup").scans
    uid = _uid_of(src)
    assert [s.name for s in scans] == [f"a_{_h(uid)}", f"b_{_h(uid)}"]
    for scan, folder in zip(scans, ("a", "b"), strict=True):
        assert scan.path == tmp_path / "dup" / folder and scan.series_uid == uid
        assert [f.parent.name for f in scan.files] == [folder] * 3
        assert read_scan(scan).shape == (3, 512, 512)


def test_two_encodings_of_one_series_are_two_scans(shared_data, tmp_path):
    """JPEG-LS and RLE exports of one series (one UID, same positions): one scan each."""
    for name in ("dicom_jpegls_mr", "dicom_rle_mr"):
        _copy_series(shared_data / "robustness" / name, tmp_path / "mr" / name)
    scans = expand_inputs(tmp_path / "mr").scans
    uid = _uid_of(shared_data / "robustness/dicom_rle_mr")
    assert [s.name for s in scans] == [f"dicom_jpegls_mr_{_h(uid)}", f"dicom_rle_mr_{_h(uid)}"]
    assert [len(s.files) for s in scans] == [4, 4]
    assert [s.path.name for s in scans] == ["dicom_jpegls_mr", "dicom_rle_mr"]


def test_dicom_without_extension_and_single_file_inputs(shared_data, tmp_path):
    _copy(shared_data / "ct/ct_small_slice.dcm", tmp_path / "dir/IM0001")
    listing = expand_inputs(tmp_path / "dir")
    assert [(s.name, s.kind) for s in listing.scans] == [("IM0001", "dicom")]
    assert read_scan(listing.scans[0]).shape == (1, 128, 128)
    # A file given by itself is named by its stem.
    single = expand_inputs(shared_data / "ct/example_ct_sm.nii.gz")
    assert single.names == ["example_ct_sm"]
    assert expand_inputs(shared_data / "ct/ct_small_slice.dcm").names == ["ct_small_slice"]


def test_localizer_and_geometry_split(shared_data, tmp_path):
    ds = pydicom.dcmread(shared_data / "ct/ct_small_slice.dcm")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(tmp_path / "scout.dcm")
    # One UID, two orientations: split into two scans (as dcm2niix does).
    for k, iop in enumerate(([1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1])):
        ds = pydicom.dcmread(shared_data / "ct/ct_small_slice.dcm")
        ds.ImageOrientationPatient = iop
        ds.save_as(tmp_path / f"slice{k}.dcm")
    listing = expand_inputs(tmp_path)
    assert listing.left_out == {"localizer": 1}
    assert sorted(s.name for s in listing.scans) == ["slice0", "slice1"]


def test_list_files_txt_and_csv(shared_data, tmp_path):
    ct = shared_data / "ct"
    _copy(ct / "example_ct_sm.nii.gz", tmp_path / "s0001/ct.nii.gz")
    _copy(ct / "example_ct_sm.nii.gz", tmp_path / "s0002/ct.nii.gz")
    _copy_series(ct / "ct_3slice_dicom", tmp_path / "s0003/dicom")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/scans.txt").write_text(
        "# my scans\n../s0001/ct.nii.gz\n\n../s0002/ct.nii.gz  # the second\n../s0003\n"
    )
    txt = expand_inputs(tmp_path / "lists/scans.txt")
    uid = _uid_of(ct / "ct_3slice_dicom")
    assert txt.names == ["s0001_ct", "s0002_ct", f"s0003_dicom_{_h(uid)}"]
    (tmp_path / "scans.csv").write_text("path,age\ns0001/ct.nii.gz,50\ns0002/ct.nii.gz,60\n")
    assert expand_inputs(tmp_path / "scans.csv").names == ["s0001_ct", "s0002_ct"]
    (tmp_path / "bad.csv").write_text("file\ns0001/ct.nii.gz\n")
    with pytest.raises(ValueError, match="'path' column"):
        expand_inputs(tmp_path / "bad.csv")
    # A written listing reads back as the same sources, without a walk.
    written = write_listing(txt, tmp_path / "listing.csv")
    again = expand_inputs(written)
    assert [(s.name, s.kind, len(s.files)) for s in again.scans] == [
        (s.name, s.kind, len(s.files)) for s in txt.scans
    ]
    assert read_scan(again.scans[-1]).shape == (3, 512, 512)


def test_include_exclude_patterns(archive):
    only_nifti = expand_inputs(archive, include=["nifti/*"])
    assert only_nifti.names == ["nifti_a_1", "nifti_d1_a", "nifti_d2_a"]
    by_name = expand_inputs(archive, include=["a.nii.gz"])  # the file name also matches
    assert by_name.names == ["nifti_d1_a", "nifti_d2_a"]
    no_labels = expand_inputs(archive, exclude=["labels/*", "*.dcm", "bad/*"])
    assert "labels_ct_seg" not in no_labels.names
    assert all(s.kind != "dicom" or len(s.files) == 20 for s in no_labels.scans)
    # A pattern with a folder matches at any depth (TotalSegmentator's s0001/segmentations/).
    assert expand_inputs(archive, include=["d1/*"]).names == ["nifti_d1_a"]
    assert "nifti_d1_a" not in expand_inputs(archive, exclude=["d1/*"]).names


def test_names_unique_and_stable_when_an_input_is_added(shared_data, tmp_path):
    ct = shared_data / "ct/example_ct_sm.nii.gz"
    for rel in ("a/d1/a.nii.gz", "a/d2/a.nii.gz", "a/a_1.nii.gz"):
        _copy(ct, tmp_path / rel)
    first = expand_inputs(tmp_path / "a")
    assert first.names == ["a_1", "d1_a", "d2_a"]
    _copy(ct, tmp_path / "b/d1/b.nii.gz")
    both = expand_inputs([tmp_path / "a", tmp_path / "b"])
    assert both.names == ["a_1", "d1_a", "d1_b", "d2_a"]
    assert {s.name: s.path for s in first.scans} == {
        s.name: s.path for s in both.scans if s.name in first.names
    }
    # Flattening clash inside one input: both kept, each with its own path's hash.
    _copy(ct, tmp_path / "a/d1_a.nii.gz")
    names = expand_inputs(tmp_path / "a").names
    assert len(names) == 4 and sum(n.startswith("d1_a-") for n in names) == 2
    # Two inputs giving one name: an error naming both paths, never a silent drop.
    _copy(ct, tmp_path / "c/a_1.nii.gz")
    with pytest.raises(ValueError, match="both give the scan name 'a_1'") as info:
        expand_inputs([tmp_path / "a", tmp_path / "c"])
    assert str(tmp_path / "a/a_1.nii.gz") in str(info.value)
    assert str(tmp_path / "c/a_1.nii.gz") in str(info.value)
    # The same file reached twice is one scan.
    assert expand_inputs([tmp_path / "b", tmp_path / "b/d1/b.nii.gz"]).names == ["d1_b"]


def test_zarr_store_expanded_not_descended(shared_data, tmp_path):
    store = tmp_path / "data/cache.zarr"
    build_zarr_store(expand_inputs([shared_data / "ct/ct_small_slice.dcm"]), store)
    _copy(shared_data / "ct/example_ct_sm.nii.gz", store / "inner.nii.gz")
    assert is_zarr_store(store)
    listing = expand_inputs(tmp_path / "data")
    assert [(s.name, s.kind, s.store_key) for s in listing.scans] == [
        ("ct_small_slice", "zarr", "ct_small_slice")
    ]
    assert str(listing.scans[0]) == f"{store}:ct_small_slice"
    assert read_scan(listing.scans[0]).shape == (1, 128, 128)
    whole = expand_inputs(store, expand_stores=False).scans
    assert [(s.kind, s.store_key, s.path) for s in whole] == [("zarr", None, store)]


def test_missing_input_and_unparseable_dcm_are_skipped_with_reasons(shared_data, tmp_path):
    _copy(shared_data / "robustness/dicom_no_file_meta.dcm", tmp_path / "d/no_meta.dcm")
    (tmp_path / "d/README").write_text("no extension, not DICOM\n")
    listing = expand_inputs([tmp_path / "d", tmp_path / "missing"])
    reasons = {Path(s.path).name: s.reason for s in listing.skipped}
    assert reasons["missing"] == "no such file or directory"
    assert reasons["no_meta.dcm"].startswith("cannot parse DICOM header")
    assert listing.left_out == {"not an image file": 1}


def test_formats_table():
    assert image_suffix("a/CT.NII.GZ") == ".nii.gz" and image_suffix("x.txt") is None
    assert strip_image_suffix("ct.nii.gz") == "ct" and strip_image_suffix("s.zarr") == "s"
    assert strip_image_suffix("CT.1.2.3") == "CT.1.2.3"
    assert scan_name("d1/a.nii.gz") == "d1_a" and scan_name("a b.mha") == "a_b"
    assert AIR_HU == -1024.0
    with pytest.raises(ValueError, match="kind"):
        ScanSource("x", Path("x"), "png")


# ------------------------------------------------------------------ reading: reasons, padding


def test_garbage_pixels_are_not_ct(tmp_path):
    noise = np.random.default_rng(0).integers(-32768, 32767, (20, 20, 20), dtype=np.int16)
    path = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(noise, np.eye(4)), path)
    with pytest.raises(ValueError, match=r"pixel values cannot be CT \(9\d% of voxels outside"):
        read_volume(path)


def _slice(shared_data: Path, stored: np.ndarray, **tags) -> pydicom.Dataset:
    ds = pydicom.dcmread(shared_data / "ct/ct_small_slice.dcm")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def _disc(n: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 <= radius**2


def test_padding_value_of_real_and_unsigned_series_reads_as_air(shared_data, tmp_path):
    vol = read_volume(shared_data / "ct/ct_3slice_dicom")
    stored = pydicom.dcmread(shared_data / "ct/ct_3slice_dicom/01.dcm").pixel_array
    assert (stored == -2000).any() and float(vol.data.min()) == AIR_HU  # not -3024 HU
    assert vol.metadata["padding_voxels"] > 0
    # Unsigned storage: -2000 wraps to 63536; outside the disc reads as air, not 62512 HU.
    inside = _disc(32, 12)
    pixels = np.where(inside, 1024 + 40, 63536).astype(np.uint16)
    ds = _slice(shared_data, pixels, PixelRepresentation=0)
    del ds.PixelPaddingValue
    ds.add_new(0x00280120, "US", 63536)  # PixelPaddingValue as an unsigned tool writes it
    ds.save_as(tmp_path / "unsigned.dcm")
    data = read_volume(tmp_path / "unsigned.dcm").data[0, 0]
    assert torch.all(data[torch.from_numpy(~inside)] == AIR_HU)
    assert torch.all(data[torch.from_numpy(inside)] == 40.0)


def test_gantry_tilt_never_blends_padding_into_tissue(shared_data, tmp_path):
    n, step, angle = 64, 2.0, np.radians(20.0)
    inside = _disc(n, 24)
    pixels = np.where(inside, 1024 + 40, -2000).astype(np.int16)  # signed padding -2000
    folder = tmp_path / "tilted"
    folder.mkdir()
    for k in range(8):
        ds = _slice(
            shared_data,
            pixels,
            PixelRepresentation=1,
            PixelPaddingValue=-2000,
            PixelSpacing=[1.0, 1.0],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            ImagePositionPatient=[0.0, k * step * np.tan(angle), k * step],
            InstanceNumber=k + 1,
        )
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"{k:02d}.dcm")
    with pytest.warns(DicomGeometryWarning, match="gantry tilt of 20"):
        vol = read_volume(folder)
    data = vol.data[0]
    assert float(data.min()) == AIR_HU  # no rim voxel blended below air (was -3024..-1024)
    assert float(data.max()) == pytest.approx(40.0, abs=1e-3)
    blended = (data > AIR_HU) & (data < 40.0 - 1e-3)
    assert int(blended.sum()) == 0  # tissue next to padding is never mixed with it
