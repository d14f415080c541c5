"""Tests of resample_pos_embed: identity, hand-computed values, timm parity, errors."""

import pytest
import torch
from tapct_vit3d import resample_pos_embed
from timm.layers import resample_abs_pos_embed


def test_identity_returns_input_unchanged():
    pos = torch.randn(1, 2 * 3 * 4, 8)
    assert resample_pos_embed(pos, (2, 3, 4), (2, 3, 4)) is pos


def test_shapes_and_dtype_kept():
    pos = torch.randn(1, 3 * 28 * 28, 16, dtype=torch.bfloat16)
    out = resample_pos_embed(pos, (3, 28, 28), (75, 12, 20))
    assert out.shape == (1, 75 * 12 * 20, 16)
    assert out.dtype == torch.bfloat16


def test_halving_an_axis_averages_neighbour_pairs():
    # align_corners=False with an exact factor 2 samples at 2i + 0.5: the mean of 2i, 2i+1.
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 4 * 2 * 3, 5, generator=gen)
    out = resample_pos_embed(pos, (4, 2, 3), (2, 2, 3))
    grid = pos.reshape(4, 2, 3, 5)
    expected = (grid[0::2] + grid[1::2]) / 2
    torch.testing.assert_close(out.reshape(2, 2, 3, 5), expected)


def test_depth_one_to_many_replicates_slices():
    pos = torch.randn(1, 1 * 3 * 3, 4)
    out = resample_pos_embed(pos, (1, 3, 3), (5, 3, 3)).reshape(5, 9, 4)
    for k in range(5):
        torch.testing.assert_close(out[k], pos[0])


def test_matches_timm_bilinear_on_one_slice():
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(1, 7 * 5, 12, generator=gen)
    ours = resample_pos_embed(pos, (1, 7, 5), (1, 11, 9))
    ref = resample_abs_pos_embed(pos, new_size=[11, 9], old_size=[7, 5], num_prefix_tokens=0,
                                 interpolation="bilinear", antialias=False)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    ("shape", "old", "new", "error"),
    [
        ((1, 10, 4), (2, 2, 2), (2, 2, 2), ValueError),  # 10 != 8 tokens
        ((2, 8, 4), (2, 2, 2), (1, 1, 1), ValueError),  # batch 2
        ((1, 8, 4), (2, 2, 2), (0, 1, 1), ValueError),  # empty grid
        ((1, 8, 4), (2, 2), (1, 1, 1), ValueError),  # 2 entries
    ],
)
def test_bad_arguments_raise(shape, old, new, error):
    with pytest.raises(error):
        resample_pos_embed(torch.zeros(shape), old, new)


def test_integer_tensor_raises_type_error():
    with pytest.raises(TypeError):
        resample_pos_embed(torch.zeros(1, 8, 4, dtype=torch.long), (2, 2, 2), (1, 1, 1))
