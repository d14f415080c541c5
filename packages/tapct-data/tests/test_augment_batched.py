"""The batched augmentation kernel: no host reads, constant work per batch, parity, import."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from tapct_data import (
    CropParams,
    GammaParams,
    MultiCropAugmentation,
    MultiCropConfig,
    RandomGaussianBlur,
    RandomResizedCrop3d,
    gaussian_blur2d,
)
from tapct_data._transform import BatchedRandomTransform
from torch.overrides import TorchFunctionMode

HOST_READS = {"item", "__bool__", "tolist", "__int__", "__float__", "__index__", "nonzero", "cpu"}


class CountTorchCalls(TorchFunctionMode):
    """Counts every Python-level torch call, and the ones that read a value to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.host_reads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS:
            self.host_reads[name] += 1
        return func(*args, **(kwargs or {}))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _small_aug(**kw) -> MultiCropAugmentation:
    return MultiCropAugmentation(
        global_crops_size=(4, 24, 24), local_crops_size=(4, 12, 12), local_crops_number=3, **kw
    )


def test_the_counter_sees_host_reads():
    t = torch.ones(2)
    with CountTorchCalls() as count:
        bool(t[0])
        t.sum().item()
        float(t[0])
        int(t[1])
        t.tolist()
        t.nonzero()
        t.cpu()
    assert set(count.host_reads) >= {"__bool__", "item", "__float__", "tolist", "nonzero", "cpu"}
    assert count.host_reads["__int__"] + count.host_reads["__index__"] >= 1


@pytest.mark.parametrize("depth", [4, 6, 3])  # slab as deep as the crop, deeper, shallower
def test_apply_reads_nothing_back_and_its_calls_do_not_grow_with_the_batch(depth):
    aug = _small_aug()
    counts = {}
    for b in (2, 16):
        x = torch.randint(-1000, 1000, (b, 1, depth, 40, 36), dtype=torch.int16)
        params = aug.sample(b, x.shape[2:], _gen(b))
        with CountTorchCalls() as count:
            out = aug.apply(x, params)
        assert dict(count.host_reads) == {}, f"host reads in apply at B={b}"
        assert out.global_crops.shape == (2 * b, 1, 4, 24, 24)
        counts[b] = count.calls
    assert counts[16] <= 1.25 * counts[2], counts


def _reference_crop(x, params, size, dtype=torch.float64):
    """Today's per-sample path: integer box, F.interpolate(antialias=True) per crop."""
    b, _c, depth, height, width = x.shape
    d, h, w = size
    vb = params.voxel_boxes((height, width)).round().long()
    outs = []
    for n in range(vb.shape[0]):
        i = n % b
        z0 = int(params.start[n])
        top, left, bh, bw = (int(t) for t in vb[n])
        index = torch.arange(z0, z0 + d).clamp(0, depth - 1)
        box = x[i][:, index, top : top + bh, left : left + bw].transpose(0, 1).to(dtype)
        if (bh, bw) != (h, w):
            box = F.interpolate(box, size=(h, w), mode="bilinear", antialias=True)
        outs.append(box.transpose(0, 1))
    return torch.stack(outs)


@pytest.mark.parametrize(
    ("in_shape", "size", "scale"),
    [
        ((4, 64, 64), (4, 56, 56), (0.32, 1.0)),  # global-like: mild downsampling
        ((4, 64, 64), (4, 24, 24), (0.05, 0.32)),  # local-like
        ((5, 37, 41), (4, 32, 32), (0.05, 1.0)),  # odd sizes, up- and downsampling
        ((4, 128, 96), (4, 16, 16), (0.3, 1.0)),  # strong downsampling (box ~ 6x the output)
    ],
)
def test_kernel_matches_the_antialiased_interpolate_path(in_shape, size, scale):
    crop = RandomResizedCrop3d(size, scale=scale)
    x = torch.randn(3, 1, *in_shape) * 300.0
    params = crop.sample(3, in_shape, _gen(7))
    out = crop.apply(x, params)
    span = float(x.max() - x.min())
    ref64 = _reference_crop(x, params, size, torch.float64)
    # Against the float64 antialiased interpolate: float32 rounding only.
    assert (out.double() - ref64).abs().max() <= 1e-6 * span
    # Against today's float32 path (its own float32 weights add ~1e-5 of the range).
    ref32 = _reference_crop(x, params, size, torch.float32)
    assert (out - ref32).abs().max() <= 5e-5 * span


def test_int16_and_any_in_plane_size_give_float32_of_the_same_crop():
    crop = RandomResizedCrop3d((4, 16, 16), scale=(0.2, 0.6))
    x = torch.randint(-1024, 2000, (2, 1, 4, 50, 70), dtype=torch.int16)
    params = crop.sample(2, (4, 50, 70), _gen(1))
    from_int = crop.apply(x, params)
    assert from_int.dtype == torch.float32
    assert torch.equal(from_int, crop.apply(x.float(), params))
    # Boxes are relative: the same params crop the same region of a 2x finer slab.
    fine = x.float().repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # (2, 1, 4, 100, 140)
    assert crop.apply(fine, params).shape == (2, 1, 4, 16, 16)
    left_half = CropParams(
        start=torch.zeros(1, dtype=torch.long),
        boxes=torch.tensor([[0.0, 0.0, 1.0, 0.5]], dtype=torch.float64),
    )
    coarse = torch.zeros(1, 1, 4, 10, 10)
    coarse[..., :5] = 1.0
    finer = coarse.repeat_interleave(4, 3).repeat_interleave(4, 4)  # (1, 1, 4, 40, 40)
    for slab in (coarse, finer):
        assert torch.allclose(crop.apply(slab, left_half), torch.ones(1, 1, 4, 16, 16))


def test_blur_of_a_batch_equals_blur_of_each_sample():
    x = torch.randn(4, 1, 3, 20, 24)
    sigma = torch.tensor([0.0, 0.4, 1.3, 2.0], dtype=torch.float64)
    batched = gaussian_blur2d(x, sigma, max_sigma=2.0)
    for i in range(4):
        alone = gaussian_blur2d(x[i : i + 1], sigma[i : i + 1])  # its own kernel length
        assert torch.allclose(batched[i : i + 1], alone, atol=1e-6)
    assert torch.equal(batched[0], x[0])


def test_blur_transform_reads_no_sigma_back():
    blur = RandomGaussianBlur(p=0.5)
    x = torch.randn(3, 1, 2, 16, 16)
    params = blur.sample(3, x.shape[2:], _gen(0))
    with CountTorchCalls() as count:
        blur.apply(x, params)
    assert dict(count.host_reads) == {}


class _Negate(BatchedRandomTransform):
    """A test augmentation: negate with probability p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def sample(self, batch_size, in_shape=(), generator=None) -> GammaParams:
        applied = torch.rand(batch_size, generator=generator) < self.p
        return GammaParams(gamma=torch.ones(batch_size, dtype=torch.float64), applied=applied)

    def apply(self, x, params):
        sign = torch.where(params.applied, -1.0, 1.0).to(x.device, x.dtype)
        return x * sign.view(-1, 1, 1, 1, 1)


def test_a_new_augmentation_is_one_class_and_one_line():
    class WithNegate(MultiCropAugmentation):
        def view_pipeline(self, crop, blur_p):
            return (*super().view_pipeline(crop, blur_p), _Negate(1.0))  # the one line

    x = torch.rand(2, 1, 4, 30, 30) + 1.0
    plain, negated = _small_aug(), WithNegate(_small_aug().config)
    params = negated.sample(2, x.shape[2:], _gen(3))
    assert len(params.global_crops) == 4 and params.local_crops[3].applied.shape == (6,)
    out = negated.apply(x, params)
    ref = plain.apply(x, attrs_drop_last(params))
    assert torch.allclose(out.global_crops, -ref.global_crops)
    assert torch.allclose(out.local_crops, -ref.local_crops)


def attrs_drop_last(params):
    import attrs

    return attrs.evolve(
        params, global_crops=params.global_crops[:-1], local_crops=params.local_crops[:-1]
    )


def test_config_defaults_validation_and_keyword_construction():
    cfg = MultiCropConfig()
    assert cfg.global_crops_size == (12, 224, 224) and cfg.local_crops_size == (12, 96, 96)
    assert cfg.local_crops_number == 8 and cfg.global_blur_p == (1.0, 0.1)
    assert cfg.global_crops_scale == (0.32, 1.0) and cfg.local_crops_scale == (0.05, 0.32)
    with pytest.raises(ValueError, match=r"global_crops_scale.*\(0\.9, 0\.2\)"):
        MultiCropConfig(global_crops_scale=(0.9, 0.2))
    with pytest.raises(ValueError, match=r"gamma_p.*1\.5"):
        MultiCropConfig(gamma_p=1.5)
    with pytest.raises(ValueError, match=r"local_crops_size.*\(0, 8, 8\)"):
        MultiCropConfig(local_crops_size=(0, 8, 8))
    with pytest.raises(TypeError, match="MultiCropConfig"):
        MultiCropAugmentation((4, 8, 8))  # type: ignore[arg-type]
    aug = MultiCropAugmentation(cfg, local_crops_number=2)
    assert aug.config.local_crops_number == 2 and aug.config.global_crops_size == (12, 224, 224)


def test_params_travel_to_a_device_and_give_the_same_crops():
    aug = _small_aug()
    x = torch.randn(2, 1, 4, 32, 32)
    params = aug.sample(2, x.shape[2:], _gen(0))
    same = aug.apply(x, params.to("cpu"))
    assert torch.equal(same.global_crops, aug.apply(x, params).global_crops)
    with pytest.raises(ValueError, match="sampled for 2 slabs, got 3"):
        aug.apply(torch.randn(3, 1, 4, 32, 32), params)


def test_tensor_path_imports_with_torch_alone():
    code = (
        "import sys\n"
        "for name in ('torchio', 'nibabel', 'zarr', 'SimpleITK', 'pydicom'):\n"
        "    sys.modules[name] = None\n"
        "import torch, tapct_data.multicrop, tapct_data.masking, tapct_data.collate\n"
        "from tapct_data import MultiCropAugmentation, MaskingGenerator3d, collate_slabs\n"
        "aug = MultiCropAugmentation(global_crops_size=(4, 8, 8), local_crops_size=(4, 4, 4))\n"
        "b = collate_slabs(torch.zeros(2, 1, 4, 16, 16), aug, MaskingGenerator3d((1, 2, 2)))\n"
        "print(tuple(aug.apply(b.slabs, b.params).local_crops.shape))\n"
        "try:\n"
        "    import tapct_data\n"
        "    tapct_data.read_volume\n"
        "except ImportError:\n"
        "    print('readers lazy')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(16,", "1,", "4,", "4,", "4)", "readers", "lazy"]
