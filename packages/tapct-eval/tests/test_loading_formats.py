"""The MONAI loaders pick their reader by file type: NRRD and MetaImage are not handed to
PydicomReader (which failed on them with InvalidDicomError)."""

from __future__ import annotations

import importlib.util

import nrrd
import numpy as np
import pytest
import torch
from tapct_eval import load_image_monai, load_label_monai

HAS_ITK = importlib.util.find_spec("itk") is not None


def test_real_nrrd_label_on_its_dicom_series(shared_data):
    """dcmqi's liver (1) and spine (2) on the 3-slice series; the per-slice counts and the
    liver's side were read with SimpleITK (z, y, x in LPS, identity direction)."""
    label = load_label_monai(
        shared_data / "labels/ct_3slice_liver_spine_seg.nrrd", shared_data / "ct/ct_3slice_dicom"
    )
    assert label.dtype == torch.int64 and tuple(label.shape) == (3, 512, 512)
    assert label.unique().tolist() == [0, 1, 2]
    assert [int((label[z] == 1).sum()) for z in range(3)] == [36233, 35645, 35220]
    assert [int((label[z] == 2).sum()) for z in range(3)] == [4135, 4200, 4104]
    rows, cols = torch.nonzero(label[0] == 1).double().mean(0).tolist()
    assert rows == pytest.approx(238.9355, abs=1e-3)
    assert cols == pytest.approx(198.3720, abs=1e-3)  # patient right: the low W side
    image = load_image_monai(shared_data / "ct/ct_3slice_dicom", None)
    assert 0 < image[0][label == 1].mean() < 100  # liver, soft tissue in HU
    assert image[0][label == 2].mean() > 200  # spine, bone


def test_nrrd_ct_is_read_canonical_and_normalised(tmp_path):
    """A CT written with pynrrd in LPS: canonical (D, H, W) = the data's (z, y, x)."""
    rng = np.random.default_rng(0)
    data = rng.integers(-1500, 1500, size=(6, 5, 4)).astype(np.int16)  # (x, y, z) LPS
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.8, 0.8, 2.5]),
        "space origin": np.array([-10.0, 20.0, 30.0]),
    }
    path = tmp_path / "ct.nrrd"
    nrrd.write(str(path), data, header)
    image = load_image_monai(path, (-1000, 1000, 0, 1))
    expected = torch.from_numpy(data.transpose(2, 1, 0).astype(np.float32)).clamp(-1000, 1000)
    assert torch.equal(image, expected[None])
    label = load_label_monai(path)
    assert torch.equal(label, torch.from_numpy(data.transpose(2, 1, 0).astype(np.int64)))


def _write_mha(path, data):
    """A MetaImage (``.mha``, header + raw int16) with identity direction, by hand."""
    z, y, x = data.shape
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 2\n"
        f"DimSize = {x} {y} {z}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + data.astype("<i2").tobytes())


def test_metaimage_needs_itk_and_says_so(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    path = tmp_path / "ct.mha"
    _write_mha(path, data)
    if HAS_ITK:
        image = load_image_monai(path, None)
        assert torch.equal(image[0], torch.from_numpy(data.astype(np.float32)))
    else:
        with pytest.raises(ValueError, match=rf"^{path}: MetaImage \(mha\) needs itk"):
            load_image_monai(path, (-1000, 1000, 0, 1))
        with pytest.raises(ValueError, match="pip install itk"):
            load_label_monai(path)
