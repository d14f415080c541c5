"""Crops, gamma, blur and multi-crop: shapes, slice integrity, statistics, path parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchio as tio
from tapct_data import (
    MultiCropAugmentation,
    MultiCrops,
    RandomGamma,
    RandomGaussianBlur,
    RandomResizedCrop3d,
    Volume,
    adjust_gamma,
    gaussian_blur2d,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(9, 37, 41), (4, 32, 32), (2, 13, 50), (1, 7, 7), (17, 64, 23)])
def test_crop_shape_always_exact(shape):
    crop = RandomResizedCrop3d((4, 32, 32), scale=(0.05, 1.0))
    x = torch.randn(3, 1, *shape)
    for seed in range(5):
        assert crop(x, generator=_gen(seed)).shape == (3, 1, 4, 32, 32)


def test_depth_block_is_consecutive_slices_never_mixed():
    d, h, w = 20, 40, 40
    x = torch.arange(d, dtype=torch.float32).view(1, 1, d, 1, 1).expand(4, 1, d, h, w).clone()
    crop = RandomResizedCrop3d((6, 24, 24), scale=(0.1, 1.0))
    g = _gen(1)
    params = crop.sample(4, x.shape[2:], g)
    out = crop.apply(x, params)
    for i in range(4):
        start = int(params.start[i])
        expected = torch.arange(start, start + 6, dtype=torch.float32)
        # Every output slice is exactly one input slice: constant and equal to its index.
        # (interpolation weights sum to 1 up to float rounding; a neighbour slice would add >= 1)
        assert torch.allclose(out[i, 0].amin((1, 2)), expected, atol=1e-4)
        assert torch.allclose(out[i, 0].amax((1, 2)), expected, atol=1e-4)


def test_shallow_input_is_padded_by_documented_rule():
    x = torch.arange(3, dtype=torch.float32).view(1, 1, 3, 1, 1).expand(2, 1, 3, 8, 8) + 10.0
    crop = RandomResizedCrop3d((6, 8, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    params = crop.sample(2, x.shape[2:], _gen(0))
    out = crop.apply(x, params)
    for i in range(2):
        start = int(params.start[i])
        assert -3 <= start <= 0
        values = out[i, 0, :, 0, 0]
        for k in range(6):
            src = start + k
            assert values[k].item() == pytest.approx(
                10.0 + src if 0 <= src < 3 else 10.0
            )  # pad = sample minimum


def test_identity_box_returns_the_input():
    x = torch.randn(2, 1, 5, 16, 16)
    crop = RandomResizedCrop3d((5, 16, 16), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(crop(x, generator=_gen(0)), x)


def test_area_and_aspect_follow_requested_ranges():
    crop = RandomResizedCrop3d((2, 8, 8), scale=(0.05, 0.32), ratio=(3 / 4, 4 / 3))
    params = crop.sample(4000, (4, 200, 200), _gen(3))
    top, left, height, width = params.voxel_boxes((200, 200)).round().long().unbind(1)
    assert torch.allclose(params.voxel_boxes((200, 200)), params.voxel_boxes((200, 200)).round())
    area = (height * width).double() / (200 * 200)
    ratio = width.double() / height.double()
    # Rounding to whole voxels blurs the bounds by a voxel.
    assert area.min() >= 0.05 - 0.01 and area.max() <= 0.32 + 0.01
    assert ratio.min() >= 0.75 - 0.05 and ratio.max() <= 4 / 3 + 0.05
    # Area uniform on [0.05, 0.32]: mean 0.185; log-ratio symmetric: mean ~0.
    assert abs(float(area.mean()) - 0.185) < 0.01
    assert abs(float(ratio.log().mean())) < 0.02
    assert (top + height <= 200).all() and (left + width <= 200).all()
    assert top.min() == 0 and (top + height).max() == 200


def test_same_seed_same_crops_and_generator_matters():
    x = torch.randn(2, 1, 8, 32, 32)
    crop = RandomResizedCrop3d((4, 16, 16))
    assert torch.equal(crop(x, generator=_gen(5)), crop(x, generator=_gen(5)))
    assert not torch.equal(crop(x, generator=_gen(5)), crop(x, generator=_gen(6)))


def _subject(x: torch.Tensor) -> tio.Subject:
    vol = Volume(
        data=x, spacing=(2.0, 1.0, 1.0), affine=np.diag([2.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]]
    )
    return tio.Subject(image=vol.to_torchio())


@pytest.mark.parametrize(
    "transform",
    [
        RandomResizedCrop3d((4, 16, 16), scale=(0.1, 1.0)),
        RandomGamma(p=1.0),
        RandomGaussianBlur(p=1.0),
    ],
)
def test_torchio_path_equals_batched_path(transform):
    x = torch.randn(1, 6, 20, 24) * 300
    params = transform.sample(1, x.shape[1:], _gen(2))
    batched = transform.apply(x[None], params)[0]
    transform._generator = _gen(2)  # the TorchIO path draws from its own generator
    subject = transform(_subject(x))
    torchio_out = Volume.from_torchio(subject["image"]).data
    assert torch.allclose(torchio_out, batched, atol=1e-5)


def test_crop_updates_affine_on_the_torchio_path():
    x = torch.randn(1, 6, 20, 24)
    crop = RandomResizedCrop3d((6, 20, 24), scale=(1.0, 1.0), ratio=(1.2, 1.2), seed=0)
    subject = _subject(x)
    before = Volume.from_torchio(subject["image"]).affine
    after = Volume.from_torchio(crop(subject)["image"]).affine
    np.testing.assert_allclose(after[:3, 0], before[:3, 0])  # depth untouched


def test_gamma_on_negative_values_is_finite_and_keeps_range():
    x = torch.linspace(-1000, 800, 1000).view(1, 1, 10, 10, 10)
    x = torch.cat([x, x / 300.0])  # HU and z-scores
    for gamma in (0.5, 1.0, 2.0):
        out = adjust_gamma(x, torch.tensor([gamma, gamma]))
        assert torch.isfinite(out).all()
        assert torch.allclose(out.flatten(1).amin(1), x.flatten(1).amin(1))
        assert torch.allclose(out.flatten(1).amax(1), x.flatten(1).amax(1))
    # Hand-computed: midpoint of [-1000, 800] with gamma 2 -> -1000 + 1800 * 0.25 = -550.
    mid = torch.tensor([-1000.0, -100.0, 800.0]).view(1, 1, 1, 1, 3)
    assert adjust_gamma(mid, torch.tensor([2.0]))[0, 0, 0, 0, 1].item() == pytest.approx(-550.0)
    fixed = adjust_gamma(mid, torch.tensor([2.0]), value_range=(-1000.0, 800.0))
    assert fixed[0, 0, 0, 0, 1].item() == pytest.approx(-550.0)


def test_blur_matches_an_independent_gaussian_and_sigma_zero_is_identity():
    x = torch.zeros(2, 1, 2, 31, 31)
    x[:, :, :, 15, 15] = 1.0
    out = gaussian_blur2d(x, torch.tensor([1.5, 0.0]))
    assert torch.equal(out[1], x[1])
    r = torch.arange(-5, 6, dtype=torch.float64)  # truncated at ceil(3 * 1.5) = 5
    g = torch.exp(-0.5 * (r / 1.5) ** 2)
    g = g / g.sum()
    expected = (g[:, None] * g[None, :]).float()
    assert torch.allclose(out[0, 0, 0, 10:21, 10:21], expected, atol=1e-6)
    assert torch.allclose(out[0, 0, 1], out[0, 0, 0])  # slices not mixed
    assert out[0].sum().item() == pytest.approx(2.0, abs=1e-4)


def test_blur_probabilities_are_not_inverted():
    x = (2, 1, 1, 4, 4)
    always = RandomGaussianBlur(p=1.0).sample(1000, x[2:], _gen(0)).effective()
    rarely = RandomGaussianBlur(p=0.1).sample(1000, x[2:], _gen(0)).effective()
    assert (always > 0).all()
    assert 0.05 < float((rarely > 0).double().mean()) < 0.15


def test_multicrop_shapes_devices_and_blur_policy():
    aug = MultiCropAugmentation(
        global_crops_size=(4, 32, 32), local_crops_size=(4, 16, 16), local_crops_number=3
    )
    x = torch.randn(2, 1, 10, 48, 40)
    out = aug(x, generator=_gen(0))
    assert out.global_crops.shape == (2 * 2, 1, 4, 32, 32)
    assert out.local_crops.shape == (3 * 2, 1, 4, 16, 16)
    assert out.global_crops.dtype == torch.float32
    b = 500
    params = aug.sample(b, (10, 48, 40), _gen(1))
    blurred = params.global_crops[2].applied.double()  # (2B,) crop-major
    assert blurred[:b].mean() == 1.0  # global crop 0: always blurred
    assert blurred[b:].mean() < 0.2  # global crop 1: p = 0.1
    assert 0.4 < float(params.local_crops[2].applied.double().mean()) < 0.6
    subject = _subject(x[0])
    single = MultiCrops.from_subject(aug(subject))
    assert single.global_crops.shape == (2, 1, 4, 32, 32)
    assert single.local_crops.shape == (3, 1, 4, 16, 16)


def test_multicrop_subject_equals_batched_for_same_params():
    aug = MultiCropAugmentation(
        global_crops_size=(4, 16, 16), local_crops_size=(4, 8, 8), local_crops_number=2
    )
    x = torch.randn(1, 8, 20, 20)
    params = aug.sample(1, x.shape[1:], _gen(4))
    batched = aug.apply(x[None], params)
    single = MultiCrops.from_subject(aug(_subject(x), generator=_gen(4)))
    for a, b in zip(batched, single, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.gpu
def test_cuda_batched_path_matches_cpu():
    aug = MultiCropAugmentation(
        global_crops_size=(4, 32, 32), local_crops_size=(4, 16, 16), local_crops_number=2
    )
    x = torch.randn(2, 1, 8, 48, 48)
    params = aug.sample(2, x.shape[2:], _gen(0))
    cpu = aug.apply(x, params)
    gpu = aug.apply(x.cuda(), params.to("cuda"))
    for a, b in zip(cpu, gpu, strict=True):
        assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-4)


def test_validation_errors_name_the_value():
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop3d((4, 8, 8), scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="p must be"):
        RandomGamma(p=1.5)
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        RandomGamma()(torch.zeros(1, 4, 4, 4))
    assert math.isfinite(RandomGamma().sample(3).gamma.sum().item())
