"""Reading real scans: canonical orientation, HU, alignment and every robustness case."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from tapct_data import (
    DicomGeometryWarning,
    NotCTError,
    NotCTWarning,
    Volume,
    read_label,
    read_volume,
    resample_label,
    write_volume,
)


def test_nifti_shape_spacing_and_hu(shared_data):
    vol = read_volume(shared_data / "ct/example_ct.nii.gz")
    # 122 x 101 x 112 stored RAS (i, j, k) -> canonical (D, H, W) = (112, 101, 122)
    assert vol.shape == (112, 101, 122)
    assert vol.data.dtype == torch.float32
    assert vol.spacing == pytest.approx((3.0, 3.0, 3.0))
    # Canonical axes: D toward superior (+z), H toward posterior (+y), W toward left (+x).
    assert vol.affine[2, 0] > 0 and vol.affine[1, 1] > 0 and vol.affine[0, 2] > 0
    data = vol.data[0]
    corner = data[:, :5, :5]  # anterior-right corner: air outside the body
    assert corner.median() < -900
    assert -100 < float(data[data > -200].median()) < 100  # soft tissue
    assert float(data.max()) > 700  # bone


def test_reoriented_copies_give_the_same_canonical_array(shared_data, tmp_path):
    src = nib.load(shared_data / "ct/example_ct_sm.nii.gz")
    reference = read_volume(shared_data / "ct/example_ct_sm.nii.gz")
    data = np.asarray(src.dataobj)
    for codes in [
        ("L", "A", "S"),
        ("L", "P", "S"),
        ("R", "P", "I"),
        ("S", "R", "A"),
        ("A", "S", "L"),
    ]:
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(src.affine), nib.orientations.axcodes2ornt(codes)
        )
        new_data = nib.orientations.apply_orientation(data, transform)
        new_affine = src.affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
        path = tmp_path / f"{''.join(codes)}.nii.gz"
        nib.save(nib.Nifti1Image(new_data, new_affine), path)
        assert nib.aff2axcodes(nib.load(path).affine) == codes
        vol = read_volume(path)
        assert torch.equal(vol.data, reference.data), codes
        np.testing.assert_allclose(vol.affine, reference.affine, atol=1e-4)


def test_nifti_scaling_applied_once_and_slope_zero_is_unscaled(shared_data, tmp_path):
    reference = read_volume(shared_data / "ct/example_ct_sm.nii.gz")
    src = nib.load(shared_data / "ct/example_ct_sm.nii.gz")
    raw = np.asarray(src.dataobj).astype(np.int16)
    stored = ((raw.astype(np.float64) + 1024.0) / 2.0).round().astype(np.int16)
    img = nib.Nifti1Image(stored, src.affine)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol = read_volume(tmp_path / "scaled.nii.gz")
    expected = torch.from_numpy(stored.astype(np.float32) * 2 - 1024)
    assert torch.allclose(vol.data[0], expected.permute(2, 1, 0).flip(1, 2))
    assert torch.allclose(vol.data, reference.data, atol=1.0)
    img0 = nib.Nifti1Image(raw, src.affine)
    img0.header["scl_slope"] = 0.0
    img0.header["scl_inter"] = 5.0
    nib.save(img0, tmp_path / "slope0.nii.gz")
    assert torch.equal(read_volume(tmp_path / "slope0.nii.gz").data, reference.data)


def test_qform_sform_disagreement_warns_and_uses_sform(shared_data, tmp_path):
    src = nib.load(shared_data / "ct/example_ct_sm.nii.gz")
    img = nib.Nifti1Image(np.asarray(src.dataobj), src.affine)
    img.set_sform(src.affine, code=2)
    shifted = src.affine.copy()
    shifted[:3, 3] += 50.0
    img.set_qform(shifted, code=1)
    nib.save(img, tmp_path / "both.nii.gz")
    with pytest.warns(UserWarning, match="qform and sform disagree"):
        vol = read_volume(tmp_path / "both.nii.gz")
    ref = read_volume(shared_data / "ct/example_ct_sm.nii.gz")
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)


def test_write_read_roundtrip(shared_data, tmp_path):
    vol = read_volume(shared_data / "ct/example_ct_dicom")
    out = write_volume(vol, tmp_path / "out.nii.gz")
    back = read_volume(out)
    assert torch.equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert nib.aff2axcodes(nib.load(out).affine) == ("L", "P", "S")


def test_dicom_series_and_its_las_label_line_up(shared_data):
    vol = read_volume(shared_data / "ct/example_ct_dicom")
    assert vol.shape == (20, 512, 512)
    assert vol.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))  # 2 mm step, not 3 mm
    assert vol.metadata["modality"] == "CT" and "series_uid" in vol.metadata
    label = read_label(shared_data / "labels/example_ct_dicom_seg.nii.gz")
    assert label.shape == vol.shape and label.data.dtype == torch.int64
    np.testing.assert_allclose(label.affine, vol.affine, atol=1e-3)
    fg, bg = vol.data[label.data > 0], vol.data[label.data == 0]
    assert float(fg.mean()) > 0 > -500 > float(bg.mean())
    # The label flipped back along W would no longer fit the anatomy.
    flipped = label.data.flip(-2)
    assert float(vol.data[flipped > 0].mean()) < float(fg.mean()) - 100


def test_three_slice_series_in_anatomical_order(shared_data):
    import pydicom

    vol = read_volume(shared_data / "ct/ct_3slice_dicom")
    assert vol.shape == (3, 512, 512)
    z = []
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        ds = pydicom.dcmread(shared_data / "ct/ct_3slice_dicom" / name)
        z.append(float(ds.ImagePositionPatient[2]))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        # PixelPaddingValue -2000 (signed storage) marks the outside of the field of view:
        # air (-1024 HU), not -2000 * 1 - 1024 = -3024 HU.
        assert int(ds.PixelPaddingValue) == -2000 and (ds.pixel_array == -2000).any()
        hu[ds.pixel_array == -2000] = -1024.0
        index = round((z[-1] - vol.affine[2, 3]) / vol.affine[2, 0])
        assert torch.equal(vol.data[0, index], torch.from_numpy(hu.astype(np.float32)))
    assert z[0] > z[1] > z[2]  # file names run superior -> inferior
    assert vol.affine[2, 0] > 0  # D runs inferior -> superior


def test_three_slice_labels_nrrd_and_seg(shared_data):
    vol = read_volume(shared_data / "ct/ct_3slice_dicom")
    nrrd = read_label(shared_data / "labels/ct_3slice_liver_spine_seg.nrrd", reference=vol)
    seg = read_label(shared_data / "labels/ct_3slice_liver_SEG.dcm", reference=vol)
    assert nrrd.shape == seg.shape == vol.shape
    assert set(nrrd.data.unique().tolist()) == {0, 1, 2}
    assert set(seg.data.unique().tolist()) == {0, 1}
    liver = float(vol.data[nrrd.data == 1].mean())
    spine = float(vol.data[nrrd.data == 2].mean())
    assert 0 < liver < 100 and spine > 200
    # The SEG liver and the NRRD liver are the same structure (Dice > 0.9).
    a, b = nrrd.data == 1, seg.data == 1
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_label_resampled_onto_a_different_reference(shared_data):
    vol = read_volume(shared_data / "ct/example_ct_sm.nii.gz")
    label = read_label(shared_data / "labels/example_ct_sm_seg.nii.gz")
    assert label.shape == vol.shape
    # The label on the whole scan's grid: it covers slices 82-111 of the parent.
    parent = read_volume(shared_data / "ct/example_ct.nii.gz")
    on_parent = read_label(shared_data / "labels/example_ct_sm_seg.nii.gz", reference=parent)
    assert on_parent.shape == parent.shape
    assert on_parent.metadata["resampled"]
    # The data README: same voxels as the parent's slices 82-111 but the parent's origin kept,
    # so in world coordinates the label lands on the parent's first 30 slices.
    assert torch.equal(parent.data[0, 82:112], vol.data[0])
    np.testing.assert_allclose(parent.affine, vol.affine, atol=1e-4)
    assert torch.equal(on_parent.data[0, :30], label.data[0])
    assert on_parent.data[0, 30:].sum() == 0
    # The same in two steps (read on its own grid, then resample), as the app does.
    assert torch.equal(resample_label(label, parent).data, on_parent.data)
    assert resample_label(label, vol) is label  # same grid: returned as is


def test_single_slice_and_enhanced_multiframe(shared_data):
    one = read_volume(shared_data / "ct/ct_small_slice.dcm")
    assert one.shape == (1, 128, 128)
    enhanced = read_volume(shared_data / "robustness/enhanced_ct_multiframe.dcm")
    assert enhanced.shape[0] == 2 and enhanced.metadata["modality"] == "CT"
    assert float(enhanced.data.min()) == pytest.approx(-1024.0)  # rescale from functional groups


def test_gantry_tilt_is_resampled_with_a_warning(shared_data):
    with pytest.warns(DicomGeometryWarning, match="gantry tilt of 14"):
        vol = read_volume(shared_data / "robustness/dicom_gantry_tilt_14deg")
    assert vol.metadata["gantry_tilt_deg"] == pytest.approx(14.0, abs=0.1)
    # Orthogonal grid: the slice axis is the normal, its length the distance between planes.
    cols = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    np.testing.assert_allclose(cols.T @ cols, np.eye(3), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("dicom_missing_slice", "uneven slice steps"),
        ("dicom_two_slabs_gap", "uneven slice steps"),
        ("dicom_same_position", "duplicate slice positions"),
        ("dicom_truncated_pixels.dcm", "truncated pixel data"),
        ("dicom_no_file_meta.dcm", "no DICOM preamble or file meta"),
        ("nifti_rgb_not_hu.nii.gz", "RGB"),
        ("image_2d.mha", "2D image"),
    ],
)
def test_robustness_cases_raise_naming_file(shared_data, name, match):
    with pytest.raises(ValueError, match=match) as info:
        read_volume(shared_data / "robustness" / name, allow_non_ct=True)
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["dicom_jpegls_mr", "dicom_rle_mr"])
def test_compressed_mr_series_not_ct_rule(shared_data, name):
    with pytest.raises(NotCTError, match="Modality is 'MR'"):
        read_volume(shared_data / "robustness" / name)
    with pytest.warns(NotCTWarning):
        vol = read_volume(shared_data / "robustness" / name, allow_non_ct=True)
    assert vol.data.numel() == 256 * 256 * 4 and torch.isfinite(vol.data).all()


def test_mr_nifti_not_ct(shared_data):
    with pytest.raises(NotCTError, match="far from HU"):
        read_volume(shared_data / "mr/example_mr_sm.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotCTWarning)
        vol = read_volume(shared_data / "mr/example_mr_sm.nii.gz", allow_non_ct=True)
    assert "non_ct" in vol.metadata


def test_jpeg2000_series_decodes(shared_data):
    import pydicom

    first = sorted((shared_data / "ct/example_ct_dicom").iterdir())[0]
    assert pydicom.dcmread(first).file_meta.TransferSyntaxUID.is_compressed


def test_several_series_in_one_folder_listed(shared_data, tmp_path):
    for sub in ("ct/ct_3slice_dicom", "robustness/dicom_two_slabs_gap"):
        for f in (shared_data / sub).iterdir():
            (tmp_path / f"{sub.replace('/', '_')}_{f.name}").write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="2 series in one folder") as info:
        read_volume(tmp_path)
    import pydicom

    uid = str(
        pydicom.dcmread(next((shared_data / "ct/ct_3slice_dicom").iterdir())).SeriesInstanceUID
    )
    assert uid in str(info.value)
    assert read_volume(tmp_path, series_uid=uid).shape == (3, 512, 512)


def test_volume_validation():
    with pytest.raises(ValueError, match="shape"):
        Volume(data=torch.zeros(2, 2), spacing=(1, 1, 1), affine=np.eye(4))
    with pytest.raises(ValueError, match="spacing"):
        Volume(data=torch.zeros(1, 2, 2, 2), spacing=(1, 0, 1), affine=np.eye(4))


@pytest.mark.parametrize("spacing", ["0.5", ["0.5", "0.5", "0.5"]])
def test_bad_pixel_spacing_is_a_value_error_naming_the_file(shared_data, tmp_path, spacing):
    # One number used to escape as a TypeError (so build_zarr_store's on_error="skip"
    # did not catch it); three numbers failed later with an anonymous unpacking error.
    import pydicom

    ds = pydicom.dcmread(shared_data / "ct/ct_small_slice.dcm")
    ds.PixelSpacing = spacing
    path = tmp_path / "bad_spacing.dcm"
    ds.save_as(path)
    with pytest.raises(ValueError, match="PixelSpacing must be 2 numbers") as info:
        read_volume(path)
    assert "bad_spacing.dcm" in str(info.value)
