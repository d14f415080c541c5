"""Parity with timm: a 2D DINOv2-style ViT equals our 3D model on a one-slice volume.

The reference is timm's own ``VisionTransformer`` (test-only dependency) built like
``vit_small_patch14_reg4_dinov2`` / ``vit_small_patch14_dinov2`` but tiny, with random
weights (no download). Both models run on the trained grid with ``dynamic_img_size=False``,
so neither interpolates its positional embedding and the comparison is exact (float64).
"""

import pytest
import torch
from tapct_vit3d import VisionTransformer3d, inflate_2d_state_dict, inflate_patch_kernel
from timm.models.vision_transformer import VisionTransformer, _convert_dinov2

E, DEPTH, HEADS, PATCH, IMG = 48, 2, 3, 14, 56


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)


def timm_vit(reg_tokens: int, in_chans: int = 1, seed: int = 0) -> VisionTransformer:
    """Tiny timm ViT configured like vit_small_patch14(_reg4)_dinov2."""
    model = VisionTransformer(
        img_size=IMG, patch_size=PATCH, in_chans=in_chans, num_classes=0, embed_dim=E,
        depth=DEPTH, num_heads=HEADS, init_values=1e-5, reg_tokens=reg_tokens,
        no_embed_class=reg_tokens > 0, dynamic_img_size=False,
    ).double()
    _randomise(model, seed)
    return model.eval()


def ours(reg_tokens: int, patch_depth: int = 1, depth_in: int = 1) -> VisionTransformer3d:
    return VisionTransformer3d(
        img_size=(depth_in, IMG, IMG), patch_size=(patch_depth, PATCH, PATCH), in_chans=1,
        embed_dim=E, depth=DEPTH, num_heads=HEADS, num_register_tokens=reg_tokens,
    ).double().eval()


def _ours_all_tokens(model: VisionTransformer3d, x: torch.Tensor) -> torch.Tensor:
    out = model.forward_features(x)
    return torch.cat((out["x_norm_clstoken"][:, None], out["x_norm_regtokens"],
                      out["x_norm_patchtokens"]), dim=1)


@pytest.mark.parametrize("reg_tokens", [4, 0])
def test_timm_parity_on_one_slice(reg_tokens):
    ref = timm_vit(reg_tokens)
    model = ours(reg_tokens)
    model.load_state_dict(inflate_2d_state_dict(ref.state_dict(), model), strict=True)
    x = torch.randn(2, 1, IMG, IMG, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.forward_features(x)  # (B, 1 + R + N, E), final norm applied
        got = _ours_all_tokens(model, x[:, :, None])  # (B, 1, 1, H, W) volume
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        # intermediate layers, reshaped: timm (B, E, h, w) vs ours (B, E, 1, h, w)
        ref_layers = ref.get_intermediate_layers(x, n=2, reshape=True, norm=True)
        our_layers = model.get_intermediate_layers(x[:, :, None], n=2, reshape=True)
    for a, b in zip(our_layers, ref_layers):
        torch.testing.assert_close(a[:, :, 0], b, rtol=1e-10, atol=1e-10)


def test_dinov2_hub_layout_matches_timm_conversion():
    # Build a DINOv2 hub state dict (cls position inside pos_embed, register_tokens,
    # mask_token); timm's own _convert_dinov2 turns it into the reference model.
    gen = torch.Generator().manual_seed(7)
    donor = timm_vit(4, seed=3).state_dict()
    cls_pos = torch.randn(1, 1, E, generator=gen, dtype=torch.float64)
    hub = {k: v.clone() for k, v in donor.items() if k not in ("reg_token", "pos_embed")}
    hub["register_tokens"] = donor["reg_token"].clone()
    hub["pos_embed"] = torch.cat((cls_pos, donor["pos_embed"]), dim=1)
    hub["cls_token"] = donor["cls_token"] - cls_pos
    hub["mask_token"] = torch.randn(1, E, generator=gen, dtype=torch.float64)
    ref = timm_vit(4)
    ref.load_state_dict(_convert_dinov2(dict(hub), ref), strict=True)
    model = ours(4)
    model.load_state_dict(inflate_2d_state_dict(hub, model), strict=True)
    assert torch.equal(model.mask_token, hub["mask_token"])
    x = torch.randn(1, 1, IMG, IMG, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(_ours_all_tokens(model, x[:, :, None]),
                                   ref.forward_features(x), rtol=1e-10, atol=1e-10)


def test_rgb_kernel_summed_for_grey_input():
    ref = timm_vit(4, in_chans=3, seed=5)
    model = ours(4)
    model.load_state_dict(inflate_2d_state_dict(ref.state_dict(), model), strict=True)
    x = torch.randn(1, 1, IMG, IMG, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(_ours_all_tokens(model, x[:, :, None]),
                                   ref.forward_features(x.repeat(1, 3, 1, 1)),
                                   rtol=1e-10, atol=1e-10)


def test_deep_patches_follow_the_documented_rules():
    ref = timm_vit(4, seed=9)
    x2d = torch.randn(1, 1, IMG, IMG, dtype=torch.float64)
    with torch.no_grad():
        expected = ref.forward_features(x2d)
    # "mean": a volume constant along depth gives the 2D response on every slice-patch
    model = ours(4, patch_depth=4, depth_in=4)
    model.load_state_dict(inflate_2d_state_dict(ref.state_dict(), model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(_ours_all_tokens(model, x2d[:, :, None].repeat(1, 1, 4, 1, 1)),
                                   expected, rtol=1e-10, atol=1e-10)
    # "center": only slice pd // 2 of each patch counts
    model.load_state_dict(inflate_2d_state_dict(ref.state_dict(), model, depth_rule="center"))
    vol = torch.randn(1, 1, 4, IMG, IMG, dtype=torch.float64)
    vol[:, :, 2] = x2d
    with torch.no_grad():
        torch.testing.assert_close(_ours_all_tokens(model, vol), expected,
                                   rtol=1e-10, atol=1e-10)


def test_positions_resampled_onto_a_3d_grid():
    ref = timm_vit(4)
    model = VisionTransformer3d(img_size=(8, 112, 112), patch_size=(4, PATCH, PATCH),
                                embed_dim=E, depth=DEPTH, num_heads=HEADS).double()
    sd = inflate_2d_state_dict(ref.state_dict(), model)
    assert sd["pos_embed"].shape == (1, 1 + 2 * 8 * 8, E)
    grid = sd["pos_embed"][0, 1:].reshape(2, 8, 8, E)
    torch.testing.assert_close(grid[0], grid[1])  # depth-1 source: same position per slice
    assert torch.count_nonzero(sd["pos_embed"][0, 0]) == 0  # timm folded cls pos into token


def test_inflate_patch_kernel_values():
    w = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2)
    mean = inflate_patch_kernel(w, 4)
    assert mean.shape == (2, 1, 4, 2, 2)
    torch.testing.assert_close(mean.sum(2), w)
    center = inflate_patch_kernel(w, 3, "center")
    torch.testing.assert_close(center[:, :, 1], w)
    assert torch.count_nonzero(center[:, :, [0, 2]]) == 0
    with pytest.raises(ValueError, match="rule"):
        inflate_patch_kernel(w, 2, "max")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model_kwargs", "match"),
    [
        ({"num_register_tokens": 0}, "register"),
        ({"embed_dim": 96}, "shape mismatches"),
    ],
)
def test_mismatches_raise(model_kwargs, match):
    ref = timm_vit(4)
    args = {"img_size": (1, IMG, IMG), "patch_size": (1, PATCH, PATCH), "embed_dim": E,
            "depth": DEPTH, "num_heads": HEADS, **model_kwargs}
    with pytest.raises(ValueError, match=match):
        inflate_2d_state_dict(ref.state_dict(), VisionTransformer3d(**args))


def test_swiglu_checkpoint_is_rejected():
    sd = dict(timm_vit(0).state_dict())
    sd["blocks.0.mlp.w12.weight"] = sd.pop("blocks.0.mlp.fc1.weight")
    with pytest.raises(ValueError, match="SwiGLU"):
        inflate_2d_state_dict(sd, ours(0))
