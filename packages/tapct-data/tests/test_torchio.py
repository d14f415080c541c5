"""The transforms as TorchIO transforms: label maps, orientation, history, include/exclude.

The real scan ``ct/example_ct_sm.nii.gz`` (RAS-stored, 3 mm) read by TorchIO as a user
would, with a label map built in the test whose value encodes its voxel's position, so
every check decodes where each output voxel came from and compares it with the affines.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchio as tio
from tapct_data import (
    AdjustGamma,
    ClipNormalize,
    GaussianBlur2d,
    MultiCropAugmentation,
    MultiCrops,
    RandomGamma,
    RandomGaussianBlur,
    RandomResizedCrop3d,
    ResizedCrop3d,
    read_volume,
)
from tapct_data._transform import to_canonical


@pytest.fixture(scope="module")
def ct_path(shared_data):
    return shared_data / "ct" / "example_ct_sm.nii.gz"


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(3, *shape)`` world coordinates (mm) of every voxel centre."""
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:]).reshape(3, *shape)


def _subject(path) -> tio.Subject:
    """The real CT, a label coding each voxel's index (+1) and world-coordinate images."""
    ct = tio.ScalarImage(path)
    shape = ct.spatial_shape
    code = torch.arange(1, int(np.prod(shape)) + 1, dtype=torch.int32).view(1, *shape)
    world = torch.from_numpy(_world(ct.affine, shape)).float()
    return tio.Subject(
        ct=ct,
        label=tio.LabelMap(tensor=code, affine=ct.affine),
        world=tio.ScalarImage(tensor=world, affine=ct.affine),  # x, y, z in mm (RAS)
    )


def _decode(label: tio.LabelMap, shape: tuple[int, int, int]) -> np.ndarray:
    """``(3, *label.spatial_shape)`` source voxel index of every label voxel."""
    flat = label.data[0].numpy().astype(np.int64) - 1
    return np.stack(np.unravel_index(flat, shape))


def test_label_follows_the_ct_voxel_for_voxel_in_a_compose(ct_path):
    subject = _subject(ct_path)
    shape, affine = subject["ct"].spatial_shape, subject["ct"].affine
    assert subject["ct"].orientation == ("R", "A", "S")
    for seed in range(4):
        crop = RandomResizedCrop3d((8, 48, 40), scale=(0.1, 1.0), seed=seed)
        out = tio.Compose([ClipNormalize(include=["ct"]), crop])(subject)
        # The fault: the CT was cropped to (1, 32, 32, 12) and the label left whole.
        for name in ("ct", "label", "world"):
            assert out[name].spatial_shape == (40, 48, 8)  # RAS (W, H, D) order kept
            np.testing.assert_allclose(out[name].affine, out["ct"].affine)
        assert out["label"].data.dtype == torch.int32  # nearest: codes never blended
        # Each label voxel holds the source voxel containing its centre (nearest
        # neighbour): the world point of the output voxel, mapped into the input grid,
        # is within half a voxel of the decoded source index.
        source = _decode(out["label"], shape)
        centre = _world(out["label"].affine, out["label"].spatial_shape).reshape(3, -1)
        in_index = np.linalg.inv(affine)[:3] @ np.vstack([centre, np.ones(centre.shape[1])])
        offset = np.abs(in_index - source.reshape(3, -1))
        assert offset.max() <= 0.5 + 1e-6, seed
        # The scalar images sit on the same grid: the world-coordinate image, resampled
        # by the antialiased linear kernel, gives each output voxel's own coordinates
        # (within 0.4 mm, an eighth of a 3 mm voxel, inside the box; the rim is truncated).
        world_out = out["world"].data.numpy()[:, 1:-1, 1:-1, :]
        expected = _world(out["world"].affine, out["world"].spatial_shape)[:, 1:-1, 1:-1, :]
        error = np.abs(world_out - expected)  # mm; a one-voxel shift would be >= 3 mm
        assert error.max() < 0.4 and error.mean() < 0.1, (seed, error.max())


def test_a_pure_crop_carries_the_ct_values_and_the_label_exactly(ct_path):
    subject = _subject(ct_path)
    ct = subject["ct"].data[0].numpy()
    d, h, w = 10, 30, 40
    in_shape = (30, 101, 122)  # canonical (D, H, W) of the (122, 101, 30) RAS file
    box = (7 / 101, 11 / 122, h / 101, w / 122)  # box == output size: no resampling
    out = ResizedCrop3d((d, h, w), start=5, box=box, in_shape=in_shape)(subject)
    source = _decode(out["label"], subject["ct"].spatial_shape)
    np.testing.assert_array_equal(out["ct"].data[0].numpy(), ct[tuple(source)])
    # LPS rows/columns run against RAS storage: the crop covers i (R->L) and j (A->P)
    # counted from the far end, slices k from 5 on.
    assert sorted(set(source[2].ravel())) == list(range(5, 15))
    assert sorted(set(source[1].ravel())) == list(range(101 - 7 - h, 101 - 7))
    assert sorted(set(source[0].ravel())) == list(range(122 - 11 - w, 122 - 11))
    # The inverse (TorchIO's Crop -> Pad rule) puts it back: exact inside the box.
    back = out.apply_inverse_transform()
    np.testing.assert_allclose(back["ct"].affine, subject["ct"].affine, atol=1e-9)
    inside = back["label"].data[0] > 0
    assert int(inside.sum()) == d * h * w
    np.testing.assert_array_equal(back["label"].data[0][inside], subject["label"].data[0][inside])
    np.testing.assert_array_equal(back["ct"].data[0][inside], subject["ct"].data[0][inside])
    assert float(back["ct"].data[0][~inside].max()) == float(out["ct"].data.min())  # air


def test_ras_and_lps_stored_copies_give_the_same_crop(ct_path):
    ras = _subject(ct_path)
    lps = tio.ToOrientation("LPS")(ras)
    slp = tio.ToOrientation("SLP")(ras)  # axial axis first in storage
    assert lps["ct"].orientation == ("L", "P", "S")
    outs = [RandomResizedCrop3d((6, 32, 24), scale=(0.1, 0.6), seed=3)(s) for s in (ras, lps, slp)]
    assert outs[1]["ct"].orientation == ("L", "P", "S")  # storage order kept
    assert outs[2]["ct"].spatial_shape == (6, 24, 32)
    canonical = [{n: to_canonical(o[n].data, o[n].affine) for n in ("ct", "label")} for o in outs]
    for other in canonical[1:]:
        for name in ("ct", "label"):
            assert torch.equal(other[name][0], canonical[0][name][0])
            np.testing.assert_allclose(other[name][1], canonical[0][name][1], atol=1e-6)
    # The canonical layout is the readers' one (tapct_data.read_volume of the same file).
    volume = read_volume(ct_path)
    x, affine_dhw, _ = to_canonical(ras["ct"].data, ras["ct"].affine)
    assert torch.equal(x.float(), volume.data.float())
    np.testing.assert_allclose(affine_dhw, volume.affine, atol=1e-4)


def test_history_replays_exactly_and_inversion_says_what_it_skips(ct_path):
    subject = _subject(ct_path)
    pipeline = tio.Compose(
        [
            ClipNormalize(exclude=["world"]),
            RandomResizedCrop3d((8, 32, 32), scale=(0.2, 1.0), seed=1),
            RandomGamma(p=1.0, seed=2, exclude=["world"]),
            RandomGaussianBlur(p=1.0, seed=3, exclude=["world"]),
        ]
    )
    out = pipeline(subject)
    history = out.history
    assert [type(t) for t in history] == [ClipNormalize, ResizedCrop3d, AdjustGamma, GaussianBlur2d]
    assert history[2].exclude == ["world"]
    assert history[2].gamma != 1.0 and history[3].sigma > 0
    replay = out.get_composed_history()(subject)
    for name in ("ct", "label", "world"):
        assert torch.equal(replay[name].data, out[name].data)
        np.testing.assert_array_equal(replay[name].affine, out[name].affine)
    with pytest.warns(RuntimeWarning) as caught:
        back = out.apply_inverse_transform()
    skipped = {str(w.message) for w in caught}
    assert {
        f"Skipping {n} as it is not invertible"
        for n in ("ClipNormalize", "AdjustGamma", "GaussianBlur2d")
    } <= skipped
    for name in ("ct", "label", "world"):
        assert back[name].spatial_shape == subject[name].spatial_shape
        np.testing.assert_allclose(back[name].affine, subject[name].affine, atol=1e-9)
    # Inverted label voxels inside the box decode to a source voxel at most one crop
    # voxel away (the crop downsampled the box); outside the box: background 0.
    inside = back["label"].data[0] > 0
    codes = back["label"].data[0][inside].numpy().astype(np.int64) - 1
    source = np.stack(np.unravel_index(codes, subject["ct"].spatial_shape))
    own = np.stack(np.nonzero(inside.numpy()))
    step = np.array(history[1].box[3:1:-1]) * np.array([122, 101]) / 32  # (i, j) mm/voxel
    assert (np.abs(source[:2] - own[:2]) <= np.ceil(step)[:, None]).all()
    assert (source[2] == own[2]).all()  # slices are never resampled
    assert ResizedCrop3d((1, 1, 1), 0, (0, 0, 1, 1), (1, 1, 1)).is_invertible()
    assert not AdjustGamma(2.0).is_invertible()


def test_intensity_transforms_touch_scalar_images_only_and_honour_include(ct_path):
    subject = _subject(ct_path)
    subject.add_image(
        tio.ScalarImage(tensor=subject["ct"].data.clone(), affine=subject["ct"].affine), "ct2"
    )
    for transform in (
        ClipNormalize(),
        RandomGamma(p=1.0, seed=0),
        RandomGaussianBlur(p=1.0, seed=0),
    ):
        out = transform(subject)
        assert torch.equal(out["label"].data, subject["label"].data)
        assert not torch.equal(out["ct"].data, subject["ct"].data.float())
        assert torch.equal(out["ct"].data, out["ct2"].data)  # same sampled parameters
        only = type(transform)(include=["ct2"]) if isinstance(transform, ClipNormalize) else None
        if only is not None:
            kept = only(subject)
            assert torch.equal(kept["ct"].data, subject["ct"].data)
            assert not torch.equal(kept["ct2"].data, subject["ct2"].data.float())
    blurred = RandomGaussianBlur(p=1.0, seed=0, exclude=["ct", "world"])(subject)
    assert torch.equal(blurred["ct"].data, subject["ct"].data)
    assert not torch.equal(blurred["ct2"].data, subject["ct2"].data.float())
    # The blur is in the axial plane: a constant-per-slice volume is left unchanged.
    slab = torch.arange(30, dtype=torch.float32).view(1, 1, 1, 30).expand(1, 122, 101, 30)
    flat = tio.Subject(ct=tio.ScalarImage(tensor=slab.clone(), affine=subject["ct"].affine))
    blurred_flat = RandomGaussianBlur(p=1.0, seed=0)(flat)["ct"].data
    np.testing.assert_allclose(blurred_flat.numpy(), slab.numpy(), rtol=1e-6, atol=1e-5)
    # A spatial transform that excludes the label leaves it whole.
    cropped = RandomResizedCrop3d((4, 16, 16), seed=0, exclude=["label"])(subject)
    assert cropped["label"].spatial_shape == subject["label"].spatial_shape
    assert cropped["ct"].spatial_shape == (16, 16, 4)


def test_spatial_transform_refuses_images_on_different_grids(ct_path):
    subject = _subject(ct_path)
    small = tio.LabelMap(
        tensor=torch.zeros(1, 61, 50, 15, dtype=torch.int32), affine=np.diag([-6.0, -6.0, 6.0, 1.0])
    )
    subject.add_image(small, "coarse")
    with pytest.raises(ValueError, match=r"'coarse'.*not on the same voxel grid"):
        RandomResizedCrop3d((4, 16, 16), seed=0)(subject)
    out = RandomResizedCrop3d((4, 16, 16), seed=0, exclude=["coarse"])(subject)
    assert out["ct"].spatial_shape == (16, 16, 4)


def test_multicrop_is_the_last_step_of_a_compose(ct_path):
    subject = _subject(ct_path)
    aug = MultiCropAugmentation(
        global_crops_size=(4, 32, 32),
        local_crops_size=(4, 16, 16),
        local_crops_number=2,
        seed=5,
        exclude=["world"],
    )
    out = tio.Compose([ClipNormalize(include=["ct"]), aug])(subject)
    names = set(out.get_images_names())
    assert names == {
        "world",
        "global_0",
        "global_1",
        "local_0",
        "local_1",
        "label_global_0",
        "label_global_1",
        "label_local_0",
        "label_local_1",
    }
    for view in ("global_0", "global_1", "local_0", "local_1"):
        image, label = out[view], out[f"label_{view}"]
        assert isinstance(image, tio.ScalarImage) and isinstance(label, tio.LabelMap)
        assert image.spatial_shape == label.spatial_shape
        np.testing.assert_allclose(image.affine, label.affine)
        source = _decode(label, subject["ct"].spatial_shape)
        centre = _world(label.affine, label.spatial_shape).reshape(3, -1)
        in_index = np.linalg.inv(subject["ct"].affine)[:3] @ np.vstack(
            [centre, np.ones(centre.shape[1])]
        )
        assert np.abs(in_index - source.reshape(3, -1)).max() <= 0.5 + 1e-6
    assert out["global_0"].spatial_shape == (32, 32, 4) and out["local_1"].spatial_shape == (
        16,
        16,
        4,
    )
    # The views equal the batched path's for the recorded parameters.
    fixed = out.history[-1]
    normalized = ClipNormalize()(subject["ct"].data)
    x = to_canonical(normalized, subject["ct"].affine)[0][None]
    batched = aug.apply(x, fixed.params)
    views = MultiCrops.from_subject(out)
    assert torch.allclose(views.global_crops, batched.global_crops, atol=1e-6)
    assert torch.allclose(views.local_crops, batched.local_crops, atol=1e-6)
    replay = out.get_composed_history()(subject)
    assert all(torch.equal(replay[n].data, out[n].data) for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not out.get_composed_history().is_invertible()
    with pytest.raises(ValueError, match="one scalar image"):
        MultiCropAugmentation(local_crops_number=0)(subject)


def test_nearest_crop_is_interpolate_nearest_exact_of_each_box():
    import torch.nn.functional as F
    from tapct_data import nearest_crop3d

    crop = RandomResizedCrop3d((3, 12, 9), scale=(0.05, 1.0))
    x = torch.randint(0, 1000, (2, 1, 7, 40, 31), dtype=torch.int32)
    params = crop.sample(6, (7, 40, 31), torch.Generator().manual_seed(0))  # 3 views x 2
    out = nearest_crop3d(x, params, (3, 12, 9))
    assert out.dtype == torch.int32 and out.shape == (6, 1, 3, 12, 9)
    for n, (top, left, bh, bw) in enumerate(params.voxel_boxes((40, 31)).round().long().tolist()):
        s = int(params.start[n])
        box = x[n % 2, :, s : s + 3, top : top + bh, left : left + bw].float()
        expected = F.interpolate(box, size=(12, 9), mode="nearest-exact").to(torch.int32)
        assert torch.equal(out[n], expected), n
