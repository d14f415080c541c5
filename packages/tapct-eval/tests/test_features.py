"""Sliding-window feature extraction: geometry, parity with a direct forward, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from tapct_eval import FeatureExtractor, extract_features
from tapct_eval._windows import padded_shape, scan_interval, window_starts


def _direct(model, volume):
    out = model.forward_features(volume[None])
    t, h, w = (s // p for s, p in zip(volume.shape[1:], model.patch_size))
    patch = rearrange(out["x_norm_patchtokens"], "b (t h w) e -> b e t h w", t=t, h=h, w=w)
    return patch[0], out["x_norm_clstoken"][0]


def test_one_window_equals_direct_forward(tiny_vit):
    volume = torch.randn(1, 6, 16, 20)
    feats = extract_features(tiny_vit, volume, roi_size=(6, 16, 20), overlap=0.5)
    with torch.no_grad():
        patch, cls = _direct(tiny_vit, volume)
    assert feats.patch_features.shape == (16, 3, 4, 5)
    assert feats.cls_tokens.shape == (1, 16)
    assert feats.window_positions.tolist() == [[0, 0, 0]]
    torch.testing.assert_close(feats.patch_features, patch, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.cls_tokens[0], cls, atol=1e-5, rtol=1e-5)


def test_get_intermediate_layers_backbone(layers_only_vit):
    volume = torch.randn(1, 4, 8, 8)
    feats = extract_features(layers_only_vit, volume, roi_size=(4, 8, 8))
    with torch.no_grad():
        ((patch, cls),) = layers_only_vit.get_intermediate_layers(
            volume[None], reshape=True, return_class_token=True
        )
    torch.testing.assert_close(feats.patch_features, patch[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.cls_tokens[0], cls[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(9, 18, 13), (2, 5, 3)])
def test_many_windows_match_a_local_model_on_the_whole_volume(local_backbone, shape, overlap):
    """A patch-local model gives the same features whatever the windows, if they are aligned."""
    volume = torch.randn(1, *shape)
    feats = extract_features(local_backbone, volume, roi_size=(4, 8, 8), overlap=overlap)
    pshape = padded_shape(shape, (4, 8, 8), (2, 4, 4))
    padded = F.pad(
        volume, [0, pshape[2] - shape[2], 0, pshape[1] - shape[1], 0, pshape[0] - shape[0]]
    )
    with torch.no_grad():
        direct = local_backbone.proj(padded[None])[0]
    grid = tuple(-(-s // p) for s, p in zip(shape, (2, 4, 4)))
    assert feats.patch_features.shape == (8, *grid)
    torch.testing.assert_close(
        feats.patch_features, direct[:, : grid[0], : grid[1], : grid[2]], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(
    ("shape", "roi", "patch", "overlap"),
    [
        ((300, 40, 40), (1, 16, 16), (1, 16, 16), 0.75),  # thin ROI axis, high overlap
        ((7, 9, 11), (12, 16, 16), (4, 8, 8), 0.25),  # ROI larger than the image
        ((50, 50, 50), (4, 8, 8), (4, 8, 8), 0.99),
        ((33, 65, 17), (12, 32, 8), (4, 8, 8), 0.0),
    ],
)
def test_every_voxel_covered_and_stride_positive(shape, roi, patch, overlap):
    stride = scan_interval(roi, patch, overlap)
    assert all(s >= p and s % p == 0 and s <= r for s, p, r in zip(stride, patch, roi))
    pshape = padded_shape(shape, roi, patch)
    assert all(ps >= max(s, r) and ps % p == 0 for ps, s, r, p in zip(pshape, shape, roi, patch))
    cover = np.zeros(pshape, dtype=np.int32)
    for d, h, w in window_starts(pshape, roi, stride):
        assert d % patch[0] == 0 and h % patch[1] == 0 and w % patch[2] == 0
        cover[d : d + roi[0], h : h + roi[1], w : w + roi[2]] += 1
    assert cover.min() >= 1
    assert cover.shape == pshape  # no window runs past the padded volume


def test_small_volume_padded_and_cropped_back(local_backbone):
    volume = torch.randn(1, 3, 5, 6)
    feats = extract_features(local_backbone, volume, roi_size=(4, 8, 8))
    assert feats.padded_shape == (4, 8, 8)
    assert feats.grid_size == (2, 2, 2)
    assert feats.volume_shape == (3, 5, 6)


def test_streamed_to_zarr_equals_in_memory(tiny_vit, tmp_path):
    volume = torch.randn(1, 10, 12, 12)
    mem = extract_features(tiny_vit, volume, roi_size=(4, 8, 8), overlap=0.5, sw_batch_size=3)
    streamed = extract_features(
        tiny_vit, volume.numpy(), roi_size=(4, 8, 8), overlap=0.5, output=tmp_path / "f.zarr"
    )
    assert not isinstance(streamed.patch_features, torch.Tensor)
    torch.testing.assert_close(
        streamed.load_patch_features(), mem.patch_features, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(streamed.cls_tokens, mem.cls_tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(streamed.window_positions, mem.window_positions)
    assert len(mem.cls_tokens) == len(
        window_starts(mem.padded_shape, (4, 8, 8), scan_interval((4, 8, 8), (2, 4, 4), 0.5))
    )


def test_feature_extractor_is_the_configured_function(tiny_vit):
    volume = torch.randn(1, 8, 8, 8)
    extractor = FeatureExtractor(roi_size=(4, 8, 8), overlap=0.5)
    a = extractor(tiny_vit, volume)
    b = extract_features(tiny_vit, volume, (4, 8, 8), overlap=0.5)
    assert torch.equal(a.patch_features, b.patch_features)
    assert tiny_vit.training  # the model's mode is restored


def test_validation_errors(tiny_vit):
    volume = torch.randn(1, 8, 8, 8)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        extract_features(tiny_vit, volume, roi_size=(3, 8, 8))
    with pytest.raises(ValueError, match="overlap"):
        extract_features(tiny_vit, volume, roi_size=(4, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match=r"\(1, D, H, W\)"):
        extract_features(tiny_vit, volume[0], roi_size=(4, 8, 8))
    with pytest.raises(ValueError, match="overlap"):
        FeatureExtractor(roi_size=(4, 8, 8), overlap=-0.1)
    with pytest.raises(TypeError, match="patch_size"):
        extract_features(torch.nn.Linear(2, 2), volume, roi_size=(4, 8, 8))


def test_sw_batch_size_does_not_change_the_features(tiny_vit):
    volume = torch.randn(1, 10, 20, 12)
    one = extract_features(tiny_vit, volume, (4, 8, 8), overlap=0.5, sw_batch_size=1)
    many = extract_features(tiny_vit, volume, (4, 8, 8), overlap=0.5, sw_batch_size=5)
    assert len(one.cls_tokens) > 5  # several batches, the last one partial
    torch.testing.assert_close(many.patch_features, one.patch_features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(many.cls_tokens, one.cls_tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(many.window_positions, one.window_positions)


def test_pad_value_fills_the_border_patches_only(local_backbone):
    """Air padding changes exactly the patches that reach into padding (a local model)."""
    volume = torch.randn(1, 5, 9, 8)  # D, H not whole patches of (2, 4, 4): padded
    air = -2.86  # about (clip(-1024 HU) - mean) / std with the paper's statistics
    zero = extract_features(local_backbone, volume, (4, 8, 8), pad_value=0.0)
    filled = extract_features(local_backbone, volume, (4, 8, 8), pad_value=air)
    diff = (zero.patch_features - filled.patch_features).abs().amax(dim=0)  # (t, h, w)
    border = torch.zeros_like(diff, dtype=torch.bool)
    border[-1] = True  # depth 5 -> the 3rd patch row holds 1 voxel and 1 padded slice
    border[:, -1] = True  # height 9 -> the 3rd patch column holds 1 row and 3 padded rows
    assert (diff[border] > 1e-3).all()
    assert (diff[~border] == 0).all()
    with torch.no_grad():
        padded = F.pad(volume, [0, 0, 0, 3, 0, 1], value=air)
        direct = local_backbone.proj(padded[None])[0]
    torch.testing.assert_close(filled.patch_features, direct, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_is_close_to_float32(tiny_vit):
    volume = torch.randn(1, 8, 16, 16)
    fp32 = extract_features(tiny_vit, volume, (4, 8, 8), autocast=False)
    bf16 = extract_features(tiny_vit, volume, (4, 8, 8), autocast=True)  # CPU bf16 autocast
    assert bf16.patch_features.dtype == torch.float32
    assert not torch.equal(bf16.patch_features, fp32.patch_features)  # it did run in bf16
    torch.testing.assert_close(bf16.patch_features, fp32.patch_features, atol=0.1, rtol=0.05)


@pytest.mark.gpu
def test_cuda_path_matches_cpu(tiny_vit):
    volume = torch.randn(1, 12, 24, 24)
    cpu = extract_features(tiny_vit, volume, (4, 8, 8), overlap=0.5, autocast=False)
    gpu = extract_features(
        tiny_vit.cuda(), volume, (4, 8, 8), overlap=0.5, device="cuda", sw_batch_size=8
    )  # bf16 autocast by default on CUDA
    assert gpu.patch_features.device.type == "cpu"
    torch.testing.assert_close(gpu.patch_features, cpu.patch_features, atol=0.1, rtol=0.05)
    torch.testing.assert_close(gpu.cls_tokens, cpu.cls_tokens, atol=0.1, rtol=0.05)


def test_gaussian_blend_streamed_equals_in_memory(tiny_vit, tmp_path):
    """Streamed rows blended outside MONAI give MONAI's own gaussian blend."""
    volume = torch.randn(1, 10, 12, 12)
    kwargs = {"roi_size": (4, 8, 8), "overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.2}
    mem = extract_features(tiny_vit, volume, **kwargs)
    streamed = extract_features(tiny_vit, volume.numpy(), output=tmp_path / "g.zarr", **kwargs)
    torch.testing.assert_close(
        streamed.load_patch_features(), mem.patch_features, atol=1e-5, rtol=1e-5
    )
    const = extract_features(tiny_vit, volume, roi_size=(4, 8, 8), overlap=0.5)
    # overlapping windows of a global-attention model disagree, so the weights matter
    assert (mem.patch_features - const.patch_features).abs().max() > 1e-3


def test_gaussian_blend_of_one_cell_is_monai_weighted_mean(local_backbone):
    """Where two windows overlap, a cell is their weighted mean with MONAI's weights."""
    from tapct_eval.features import blend_weights

    class Shifted(torch.nn.Module):
        """Features = window start depth (known per window), to read the blend weights."""

        patch_size = (2, 4, 4)
        embed_dim = 1

        def forward_features(self, x):
            n = x.shape[2] // 2 * (x.shape[3] // 4) * (x.shape[4] // 4)
            tokens = x[:, :, :1, :1, :1].reshape(-1, 1, 1).expand(-1, n, 1)
            return {"x_norm_patchtokens": tokens}

    # the first voxel of each window holds its start depth: windows start at 0 and 2
    volume = torch.zeros(1, 6, 4, 4)
    volume[0, 2, 0, 0] = 2.0
    feats = extract_features(Shifted(), volume, (4, 4, 4), overlap=0.5, mode="gaussian")
    w = blend_weights((4, 4, 4), (2, 4, 4), "gaussian")[:, 0, 0]  # weights of rows 0, 1
    # cell row 1 is row 1 of window 0 (value 0) and row 0 of window 1 (value 2)
    expected = (w[1] * 0.0 + w[0] * 2.0) / (w[1] + w[0])
    torch.testing.assert_close(feats.patch_features[0, 1, 0, 0], expected)
    assert feats.patch_features[0, 0, 0, 0] == 0.0 and feats.patch_features[0, 2, 0, 0] == 2.0


def test_blend_options_are_validated(tiny_vit):
    volume = torch.randn(1, 8, 8, 8)
    with pytest.raises(ValueError, match="mode"):
        extract_features(tiny_vit, volume, (4, 8, 8), mode="max")
    with pytest.raises(ValueError, match="sigma_scale"):
        extract_features(tiny_vit, volume, (4, 8, 8), mode="gaussian", sigma_scale=0.0)
