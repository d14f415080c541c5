"""3D block masking and the DINOv2 collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tapct_data import (
    CropBatch,
    MaskingConfig,
    MaskingGenerator3d,
    MultiCropAugmentation,
    SlabBatch,
    collate_data_and_cast,
    collate_slabs,
    sample_batch_masks,
)


@pytest.mark.parametrize(
    "grid", [(3, 4, 4), (1, 14, 14), (1, 64, 2), (16, 1, 1), (1, 1, 1), (2, 2, 2)]
)
def test_exact_counts_and_termination(grid):
    gen = MaskingGenerator3d(grid, seed=0)
    n = int(np.prod(grid))
    for request in {0, 1, n // 3, n // 2, n}:
        mask = gen(request)
        assert mask.shape == grid and mask.dtype == bool
        assert int(mask.sum()) == request
    assert int(gen(n + 5).sum()) == n  # capped at the grid


def test_every_index_can_be_masked():
    gen = MaskingGenerator3d((3, 5, 7), seed=1)
    seen = np.zeros((3, 5, 7), dtype=bool)
    for _ in range(300):
        seen |= gen(8)
    assert seen.all()


def test_blocks_are_cube_like_on_a_cube_grid():
    gen = MaskingGenerator3d((8, 8, 8), min_num_patches=16, max_num_patches=64, seed=0)
    mask = gen(64)
    # Blocks, not scattered patches: most masked patches have a masked neighbour along D.
    neighbours = mask[1:] & mask[:-1]
    assert neighbours.sum() >= 0.4 * mask.sum()


def test_generator_makes_it_reproducible():
    gen = MaskingGenerator3d((3, 8, 8))
    a = gen(40, generator=torch.Generator().manual_seed(3))
    b = gen(40, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(a, b)


def test_collate_record_shapes_and_dinov2_semantics():
    b = 4
    aug = MultiCropAugmentation(
        global_crops_size=(4, 32, 32), local_crops_size=(4, 16, 16), local_crops_number=2
    )
    crops = aug(torch.randn(b, 1, 6, 40, 40), generator=torch.Generator().manual_seed(0))
    mask_gen = MaskingGenerator3d((1, 4, 4))
    out = collate_data_and_cast(
        crops, mask_generator=mask_gen, generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(out, CropBatch)
    assert out.global_crops.shape == (2 * b, 1, 4, 32, 32)
    assert out.local_crops.shape == (2 * b, 1, 4, 16, 16)
    assert torch.equal(out.global_crops, crops.global_crops)  # crop-major, unchanged
    masks = out.masks
    assert masks.shape == (2 * b, 16) and masks.dtype == torch.bool
    assert int((masks.sum(1) > 0).sum()) == 4  # int(0.5 * 2B) masked crops
    # Stratified ratios: the masked counts are int(16 * r_i), r_i in bin i of (0.1, 0.5).
    edges = np.linspace(0.1, 0.5, 5)
    counts = sorted(int(c) for c in masks.sum(1) if c > 0)
    for i, count in enumerate(counts):
        assert int(16 * edges[i]) <= count <= int(16 * edges[i + 1])


def test_collate_masks_follow_the_config():
    grid = MaskingGenerator3d((2, 4, 4))
    gen = torch.Generator().manual_seed(1)
    none = sample_batch_masks(8, grid, MaskingConfig(mask_probability=0.0), gen)
    assert none.shape == (8, 32) and not none.any()
    full = sample_batch_masks(8, grid, MaskingConfig(mask_probability=1.0, mask_ratio=(0.5, 0.5)))
    assert (full.sum(1) == 16).all()
    with pytest.raises(ValueError, match="mask_probability"):
        MaskingConfig(mask_probability=1.5)
    with pytest.raises(ValueError, match=r"mask_ratio.*\(0\.6, 0\.2\)"):
        MaskingConfig(mask_ratio=(0.6, 0.2))


def test_collate_accepts_per_sample_crops_crop_major():
    aug = MultiCropAugmentation(
        global_crops_size=(4, 8, 8), local_crops_size=(4, 4, 4), local_crops_number=1
    )
    samples = [aug(torch.full((1, 1, 4, 8, 8), float(i))) for i in range(3)]
    out = collate_data_and_cast(
        samples,
        mask_generator=MaskingGenerator3d((1, 2, 2)),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.global_crops.shape == (6, 1, 4, 8, 8)
    assert out.local_crops.shape == (3, 1, 4, 4, 4)
    # Crop-major: rows 0..2 are crop 0 of samples 0, 1, 2.
    expected = torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
    assert torch.allclose(out.global_crops.flatten(1)[:, 0], expected, atol=1e-5)


def test_slab_collate_draws_params_and_masks_on_the_cpu_reproducibly():
    aug = MultiCropAugmentation(
        global_crops_size=(4, 16, 16), local_crops_size=(4, 8, 8), local_crops_number=2
    )
    slabs = [torch.randint(-1000, 1000, (1, 4, 32, 32), dtype=torch.int16) for _ in range(3)]
    grid = MaskingGenerator3d((1, 4, 4))

    def draw(seed: int) -> SlabBatch:
        return collate_slabs(
            slabs,
            aug,
            grid,
            crops_generator=torch.Generator().manual_seed(seed),
            masks_generator=torch.Generator().manual_seed(seed + 1),
        )

    a, b = draw(0), draw(0)
    assert a.slabs.shape == (3, 1, 4, 32, 32) and a.slabs.dtype == torch.int16
    assert a.masks.shape == (6, 16) and torch.equal(a.masks, b.masks)
    assert a.params.batch_size == 3 and a.params.global_crops[0].boxes.shape == (6, 4)
    crops = aug.apply(a.slabs, a.params)
    assert torch.equal(crops.global_crops, aug.apply(b.slabs, b.params).global_crops)
    assert crops.global_crops.dtype == torch.float32 and crops.local_crops.shape[0] == 6
    moved = a.to("cpu")
    assert isinstance(moved, SlabBatch) and torch.equal(moved.masks, a.masks)
