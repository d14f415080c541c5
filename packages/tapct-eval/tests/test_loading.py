from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monai.data import set_track_meta
from tapct_eval import load_image_monai


@pytest.fixture
def nifti(tmp_path):
    path = tmp_path / "scan.nii.gz"
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 2.0, 1.0])), path)
    return path


def test_load_image_monai_gives_a_plain_canonical_tensor(nifti):
    image = load_image_monai(nifti)
    assert type(image).__name__ == "Tensor"
    assert tuple(image.shape) == (1, 6, 5, 4)


def test_load_image_monai_refuses_to_guess_without_an_affine(nifti):
    # With meta tracking off MONAI drops the affine; orienting would silently assume
    # identity, so the loader must stop with a clear error instead.
    set_track_meta(False)
    try:
        with pytest.raises(RuntimeError, match="meta tracking is off"):
            load_image_monai(nifti)
    finally:
        set_track_meta(True)
