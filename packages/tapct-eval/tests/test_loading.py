from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import set_track_meta
from tapct_eval import ClipStats, clip_normalize, load_image_monai


@pytest.fixture
def nifti(tmp_path):
    path = tmp_path / "scan.nii.gz"
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 2.0, 1.0])), path)
    return path


def test_load_image_monai_gives_a_plain_canonical_tensor(nifti):
    image = load_image_monai(nifti, None)  # HU
    assert type(image).__name__ == "Tensor"
    assert tuple(image.shape) == (1, 6, 5, 4)
    stats = ClipStats(lower=10.0, upper=100.0, mean=20.0, std=5.0)
    normalised = load_image_monai(nifti, stats)
    assert torch.equal(normalised, (image.clamp(10.0, 100.0) - 20.0) / 5.0)
    assert torch.equal(clip_normalize(image, (10, 100, 20, 5)), normalised)


def test_load_image_monai_refuses_to_guess_without_an_affine(nifti):
    # With meta tracking off MONAI drops the affine; orienting would silently assume
    # identity, so the loader must stop with a clear error instead.
    set_track_meta(False)
    try:
        with pytest.raises(RuntimeError, match="meta tracking is off"):
            load_image_monai(nifti, None)
    finally:
        set_track_meta(True)


def test_clip_normalize_refuses_malformed_statistics():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="lower, upper, mean, std"):
        clip_normalize(x, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="std > 0"):
        clip_normalize(x, ClipStats(0.0, 1.0, 0.0, 0.0))
