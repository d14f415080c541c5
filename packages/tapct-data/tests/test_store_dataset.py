"""Normalisation, foreground stats, resizing, phantom, zarr store and the slab dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tapct_data import (
    Volume,
    read_volume,
    resample_to_spacing,
    resize_for_eval,
)
from tapct_data.phantom import PHANTOM_LABELS, make_phantom


def test_resize_for_eval_and_resample(shared_data):
    vol = read_volume(shared_data / "ct/example_ct_sm.nii.gz")
    out = resize_for_eval(vol, (224, 224))
    assert out.shape == (30, 224, 224)
    assert out.spacing[0] == pytest.approx(3.0)
    assert out.spacing[1] == pytest.approx(3.0 * 101 / 224)
    # The field of view is kept: first and last voxel edges coincide.
    corner_old = vol.affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    corner_new = out.affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(corner_old, corner_new, atol=1e-6)
    labels = torch.randint(0, 5, (1, 4, 10, 10))
    small = resize_for_eval(labels, (20, 20))
    assert small.dtype == labels.dtype and set(small.unique().tolist()) <= set(range(5))
    iso = resample_to_spacing(vol, (1.5, 1.5, 1.5))
    assert iso.shape == (60, 202, 244) and iso.spacing == pytest.approx((1.5, 1.5, 1.5))


def test_phantom_anatomy_hu_and_orientation():
    image, labels = make_phantom((32, 64, 64), seed=0, noise_std=0.0)
    assert image.shape == labels.shape == (32, 64, 64)
    assert image.spacing == pytest.approx((10.0, 6.25, 6.25))
    data, lab = image.data[0], labels.data[0]
    assert set(lab.unique().tolist()) == set(PHANTOM_LABELS)
    expected = {1: -100, 2: 50, 3: -850, 4: 450, 5: 700, 6: 60, 7: 30, 8: 180}
    for k, hu in expected.items():
        assert float(data[lab == k].mean()) == pytest.approx(hu)
    # Liver on the patient's right (small W), spine posterior (large H), lungs superior.
    liver = (lab == 6).nonzero().float().mean(0)
    spine = (lab == 4).nonzero().float().mean(0)
    lungs = (lab == 3).nonzero().float().mean(0)
    assert liver[2] < 32 and spine[1] > 40 and lungs[0] > 20
    again, _ = make_phantom((32, 64, 64), seed=0, noise_std=0.0)
    assert torch.equal(again.data, image.data)


def test_volume_torchio_roundtrip(shared_data):
    vol = read_volume(shared_data / "ct/example_ct_sm.nii.gz")
    back = Volume.from_torchio(vol.to_torchio())
    assert torch.equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine)
