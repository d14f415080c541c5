"""Normalisation, foreground stats, resizing, phantom, zarr store and the slab dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tapct_data import (
    PretrainSlabDataset,
    Volume,
    ZarrVolumeStore,
    build_zarr_store,
    read_volume,
    resample_to_spacing,
    resize_for_eval,
    write_volume,
)
from tapct_data.phantom import PHANTOM_LABELS, make_phantom
from torch.utils.data import DataLoader


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


def _make_store(tmp_path, shapes=((20, 48, 40), (5, 48, 40))):
    paths = []
    for i, shape in enumerate(shapes):
        image, _ = make_phantom(shape, seed=i)
        paths.append(write_volume(image, tmp_path / "scans" / f"scan{i}.nii.gz"))
    store = build_zarr_store(paths, tmp_path / "store.zarr", chunks=(4, 16, 16))
    return store, paths


def test_zarr_store_roundtrip_and_resume(tmp_path):
    store_path, paths = _make_store(tmp_path)
    store = ZarrVolumeStore(store_path)
    assert len(store) == 2 and store.names == ["scan0", "scan1"]
    ref = read_volume(paths[0])
    back = store.read("scan0")
    assert torch.equal(back.data, ref.data.round())
    np.testing.assert_allclose(back.affine, ref.affine)
    assert torch.equal(store.read_slab("scan0", 3, 5), ref.data[:, 3:8].round())
    with pytest.raises(ValueError, match="outside"):
        store.read_slab("scan1", 2, 5)
    # Simulate an interrupted write: an array without the completion marker is ignored ...
    import zarr

    group = zarr.open_group(str(store_path), mode="a")
    group["scan1"].attrs["complete"] = False
    group["scan1"][0] = 0
    assert ZarrVolumeStore(store_path).names == ["scan0"]
    # ... and rewritten on resume, while complete scans are skipped.
    calls = []
    build_zarr_store(
        paths, store_path, chunks=(4, 16, 16), progress=lambda i, n, name: calls.append(name)
    )
    resumed = ZarrVolumeStore(store_path)
    assert resumed.names == ["scan0", "scan1"]
    assert torch.equal(resumed.read("scan1").data, read_volume(paths[1]).data.round())


def test_store_skips_bad_scans_with_a_record(tmp_path, shared_data):
    good = write_volume(make_phantom((4, 16, 16))[0], tmp_path / "good.nii.gz")
    bad = shared_data / "robustness/image_2d.mha"
    with pytest.warns(UserWarning, match="skipped"):
        path = build_zarr_store([good, bad], tmp_path / "s.zarr")
    import zarr

    assert "2D image" in zarr.open_group(str(path), mode="r").attrs["failed"][str(bad)]
    assert ZarrVolumeStore(path).names == ["good"]


def test_slab_dataset_shapes_determinism_short_scans_and_sharding(tmp_path):
    store_path, _ = _make_store(tmp_path)
    ds = PretrainSlabDataset(store_path, slab_depth=8, in_plane_size=(32, 32), seed=0)
    a = ds[7]
    assert a.shape == (1, 8, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, ds[7])
    # Short scan (5 slices): padded with air, which normalises to the lower clip.
    norm_air = (-1008.0 + 86.8086) / 322.6347
    found_short = False
    for k in range(40):
        x = ds[k]
        if float(x[0, 0].max() - x[0, 0].min()) < 1e-4:  # a padded slice
            found_short = True
            assert torch.allclose(x[0, 0], torch.full_like(x[0, 0], norm_air), atol=1e-5)
    assert found_short
    # Ranks partition the global indices; workers do not change the order; resume works.
    r0 = PretrainSlabDataset(store_path, 8, (32, 32), rank=0, world_size=2)
    r1 = PretrainSlabDataset(store_path, 8, (32, 32), rank=1, world_size=2)
    it0, it1 = iter(r0), iter(r1)
    assert torch.equal(next(it0), ds[0]) and torch.equal(next(it1), ds[1])
    assert torch.equal(next(it0), ds[2])
    assert r0.state_dict()["position"] == 2
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert torch.equal(batch, torch.stack([ds[0], ds[1]]))
    ds.load_state_dict({"position": 5})
    assert torch.equal(next(iter(ds)), ds[5])


def test_volume_torchio_roundtrip(shared_data):
    vol = read_volume(shared_data / "ct/example_ct_sm.nii.gz")
    back = Volume.from_torchio(vol.to_torchio())
    assert torch.equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine)
