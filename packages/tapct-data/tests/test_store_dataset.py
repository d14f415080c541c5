"""Normalisation, foreground stats, resizing, phantom, zarr store and the slab dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tapct_data import (
    ClipNormalize,
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


def _slab_store(tmp_path):
    from tapct_data import ScanSource, build_zarr_store, write_volume

    sources = []
    for i, shape in enumerate(((20, 32, 32), (5, 32, 32), (14, 40, 24))):
        path = write_volume(make_phantom(shape, seed=i)[0], tmp_path / f"scan{i}.nii.gz")
        sources.append(ScanSource(name=f"scan{i}", path=path, kind="nifti"))
    return build_zarr_store(sources, tmp_path / "s.zarr", chunks=(1, 32, 32)).path


def test_slab_dataset_raw_hu_padding_resize_and_determinism(tmp_path):
    from tapct_data import PretrainSlabDataset, ZarrVolumeStore

    path = _slab_store(tmp_path)
    store = ZarrVolumeStore(path)
    ds = PretrainSlabDataset(path, slab_depth=8, in_plane_size=(32, 32), seed=3)
    seen = set()
    for k in range(60):
        x = ds[k]
        assert x.shape == (1, 8, 32, 32) and x.dtype == torch.int16
        assert torch.equal(x, ds[k])
        name, start, _depth = ds._draw(k)
        seen.add(name)
        if name == "scan0":  # native size: exactly the stored slices
            assert torch.equal(x, store.read_slab(name, start, 8, dtype=torch.int16))
        if name == "scan1":  # 5 slices: 1 slice of air before, 2 after
            assert (x[0, 0] == -1024).all() and (x[0, 6:] == -1024).all()
            assert torch.equal(x[:, 1:6], store.read_slab(name, 0, 5, dtype=torch.int16))
    assert seen == {"scan0", "scan1", "scan2"}  # scan2 (40 x 24) resized to the canvas
    assert ds.short_scans() == [("scan1", 5)]  # what the app names in its padding note
    other = PretrainSlabDataset(path, slab_depth=8, in_plane_size=(32, 32), seed=4)
    assert any(not torch.equal(ds[k], other[k]) for k in range(5))
    normed = PretrainSlabDataset(
        path, 8, in_plane_size=(16, 16), normalize=ClipNormalize(), seed=3
    )[0]
    assert normed.dtype == torch.float32 and normed.shape == (1, 8, 16, 16)
    by_slices = PretrainSlabDataset(path, 8, (32, 32), scan_weighting="slices")
    names = [by_slices._draw(k)[0] for k in range(400)]
    assert names.count("scan0") > names.count("scan1") * 2  # 20 vs 5 slices
    with pytest.raises(ValueError, match="scan_weighting"):
        PretrainSlabDataset(path, 8, scan_weighting="scans")  # type: ignore[arg-type]


def test_sampler_with_dataloader_workers_gives_indexed_samples(tmp_path):
    from tapct_data import IterationBatchSampler, PretrainSlabDataset
    from torch.utils.data import DataLoader

    ds = PretrainSlabDataset(_slab_store(tmp_path), slab_depth=4, in_plane_size=(32, 32))
    sampler = IterationBatchSampler(2, 4, samples_seen=10, batch_size=2, rank=1, world_size=2)
    assert list(sampler) == [[12, 13], [16, 17]]
    batches = list(DataLoader(ds, batch_sampler=sampler, num_workers=1))
    assert torch.equal(batches[1], torch.stack([ds[16], ds[17]]))
    with pytest.raises(ValueError, match="rank"):
        IterationBatchSampler(0, 1, 0, 2, rank=2, world_size=2)
