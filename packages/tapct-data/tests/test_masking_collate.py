"""3D block masking and the DINOv2 collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tapct_data import MaskingGenerator3d, MultiCropAugmentation, collate_data_and_cast


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


def test_collate_keys_shapes_and_dinov2_semantics():
    b = 4
    aug = MultiCropAugmentation((4, 32, 32), (4, 16, 16), local_crops_number=2)
    crops = aug(torch.randn(b, 1, 6, 40, 40), generator=torch.Generator().manual_seed(0))
    mask_gen = MaskingGenerator3d((1, 4, 4))
    out = collate_data_and_cast(
        crops, mask_generator=mask_gen, generator=torch.Generator().manual_seed(0)
    )
    assert set(out) == {
        "collated_global_crops",
        "collated_local_crops",
        "collated_masks",
        "mask_indices_list",
        "masks_weight",
        "n_masked_patches",
        "upperbound",
    }
    assert out["collated_global_crops"].shape == (2 * b, 1, 4, 32, 32)
    assert out["collated_local_crops"].shape == (2 * b, 1, 4, 16, 16)
    # Crop-major: rows 0..B-1 are crop 0 of every sample.
    assert torch.equal(out["collated_global_crops"][:b], crops["global_crops"][0])
    masks = out["collated_masks"]
    assert masks.shape == (2 * b, 16) and masks.dtype == torch.bool
    assert int((masks.sum(1) > 0).sum()) == 4  # int(0.5 * 2B) masked crops
    assert torch.equal(out["mask_indices_list"], masks.flatten().nonzero().flatten())
    assert out["n_masked_patches"].tolist() == [int(masks.sum())]
    per_crop = masks.sum(1)
    expected_w = (1.0 / per_crop.clamp(min=1)).repeat_interleave(per_crop)
    assert torch.allclose(out["masks_weight"], expected_w.float())
    # Weights sum to one per masked crop.
    assert out["masks_weight"].sum().item() == pytest.approx(4.0)
    # upperbound: sum of int(N * upper edge of each of the 4 bins over (0.1, 0.5)).
    edges = np.linspace(0.1, 0.5, 5)[1:]
    assert out["upperbound"] == sum(int(16 * e) for e in edges)
    assert int(masks.sum()) <= out["upperbound"]


def test_collate_accepts_per_sample_dicts():
    samples = [
        {"global_crops": [torch.zeros(1, 4, 8, 8)] * 2, "local_crops": [torch.zeros(1, 4, 4, 4)]}
        for _ in range(3)
    ]
    out = collate_data_and_cast(
        samples,
        mask_generator=MaskingGenerator3d((1, 2, 2)),
        generator=torch.Generator().manual_seed(0),
    )
    assert out["collated_global_crops"].shape == (6, 1, 4, 8, 8)
    assert out["collated_local_crops"].shape == (3, 1, 4, 4, 4)
