"""Contract tests of VisionTransformer3d: outputs, grids, masks, DDP, lists, layers."""

import pytest
import torch
from tapct_vit3d import VisionTransformer3d


def tiny(**overrides) -> VisionTransformer3d:
    args = {"img_size": (8, 32, 32), "patch_size": (4, 8, 8), "embed_dim": 32, "depth": 2,
            "num_heads": 2, "num_register_tokens": 4}
    args.update(overrides)
    torch.manual_seed(0)
    model = VisionTransformer3d(**args)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():  # make LayerScale and tokens non-trivial so tests have teeth
        for blk in model.blocks:
            blk.ls1.gamma.fill_(0.5)
            blk.ls2.gamma.fill_(0.5)
        model.mask_token.normal_(generator=torch.Generator().manual_seed(1))
        model.cls_token.normal_(generator=torch.Generator().manual_seed(2))
    return model.eval()


def test_output_dict_shapes_and_attributes():
    model = tiny()
    x = torch.randn(3, 1, 8, 32, 32)
    out = model.forward_features(x)
    assert set(out) == {"x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens",
                        "x_prenorm", "masks", "grid_size"}
    assert out["x_norm_clstoken"].shape == (3, 32)
    assert out["x_norm_regtokens"].shape == (3, 4, 32)
    assert out["x_norm_patchtokens"].shape == (3, 2 * 4 * 4, 32)
    assert out["x_prenorm"].shape == (3, 1 + 4 + 32, 32)
    assert out["grid_size"] == (2, 4, 4)
    assert out["masks"] is None
    torch.testing.assert_close(model.norm(out["x_prenorm"])[:, 0], out["x_norm_clstoken"])
    torch.testing.assert_close(model(x), out["x_norm_clstoken"])
    assert model.patch_size == (4, 8, 8) and model.n_blocks == 2 and model.embed_dim == 32
    assert model.num_register_tokens == 4 and len(model.blocks) == 2
    assert model.config["patch_size"] == [4, 8, 8] and model.config["img_size"] == [8, 32, 32]


def test_dinov2_parameter_names():
    names = set(tiny(depth=1).state_dict())
    expected = {
        "cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed.proj.weight",
        "patch_embed.proj.bias", "norm.weight", "norm.bias",
        *(f"blocks.0.{n}" for n in (
            "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
            "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
            "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma")),
    }
    assert names == expected
    model = tiny(depth=1)
    assert isinstance(model.patch_embed.proj, torch.nn.Conv3d)
    assert model.pos_embed.shape == (1, 1 + 2 * 4 * 4, 32)
    assert model.mask_token.shape == (1, 32) and model.cls_token.shape == (1, 1, 32)


def test_patch_embedding_equals_conv3d():
    model = tiny()
    x = torch.randn(2, 1, 8, 32, 48)
    tokens, grid = model.patch_embed(x)
    ref = model.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, t*h*w, E) in t h w order
    torch.testing.assert_close(tokens, ref, atol=1e-5, rtol=1e-5)
    assert grid == (2, 4, 6)


@pytest.mark.parametrize("size", [(4, 8, 8), (8, 32, 32), (12, 16, 40), (20, 8, 24), (4, 64, 8)])
def test_many_grids_work(size):
    model = tiny()
    out = model.forward_features(torch.randn(1, 1, *size))
    t, h, w = size[0] // 4, size[1] // 8, size[2] // 8
    assert out["grid_size"] == (t, h, w)
    assert out["x_norm_patchtokens"].shape == (1, t * h * w, 32)
    assert torch.isfinite(out["x_prenorm"]).all()


@pytest.mark.parametrize("size", [(5, 32, 32), (8, 30, 32), (8, 32, 33), (0, 32, 32)])
def test_bad_sizes_raise_naming_size_and_patch(size):
    model = tiny()
    with pytest.raises(ValueError, match=r"\(4, 8, 8\)") as info:
        model.forward_features(torch.randn(1, 1, *size))
    assert str(tuple(size)) in str(info.value)


def test_wrong_rank_and_channels_raise():
    model = tiny()
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        model.forward_features(torch.randn(1, 8, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        model.forward_features(torch.randn(1, 2, 8, 32, 32))


def test_masks_replace_exactly_the_masked_tokens():
    model = tiny()
    x = torch.randn(2, 1, 8, 32, 32)
    gen = torch.Generator().manual_seed(3)
    masks = torch.rand(2, 32, generator=gen) < 0.4
    masks[0, 0] = True
    masks[1, -1] = True
    clean, _ = model.prepare_tokens_with_masks(x)
    masked, _ = model.prepare_tokens_with_masks(x, masks)
    R = model.num_register_tokens
    patch_clean, patch_masked = clean[:, 1 + R:], masked[:, 1 + R:]
    pos = model.pos_embed[:, 1:].expand(2, -1, -1)
    # masked positions: mask token + position (mask token goes in before the position)
    torch.testing.assert_close(patch_masked[masks], (model.mask_token + pos[masks]))
    # everything else is untouched
    torch.testing.assert_close(patch_masked[~masks], patch_clean[~masks])
    torch.testing.assert_close(masked[:, : 1 + R], clean[:, : 1 + R])
    out = model.forward_features(x, masks)
    assert out["masks"] is masks
    # an all-False mask changes nothing
    none = model.forward_features(x, torch.zeros(2, 32, dtype=torch.bool))
    torch.testing.assert_close(none["x_prenorm"], model.forward_features(x)["x_prenorm"])


def test_registers_have_no_position_and_sit_after_cls():
    model = tiny()
    tokens, _ = model.prepare_tokens_with_masks(torch.randn(2, 1, 8, 32, 32))
    torch.testing.assert_close(tokens[:, 1:5], model.register_tokens.expand(2, -1, -1))
    torch.testing.assert_close(tokens[:, 0], (model.cls_token + model.pos_embed[:, :1])[:, 0]
                               .expand(2, -1))


@pytest.mark.parametrize("bad", [torch.zeros(2, 31, dtype=torch.bool), torch.zeros(2, 32)])
def test_bad_masks_raise(bad):
    model = tiny()
    with pytest.raises((ValueError, TypeError)):
        model.forward_features(torch.randn(2, 1, 8, 32, 32), bad)


def test_mask_token_in_graph_without_masks():
    model = tiny().train()
    model.forward_features(torch.randn(2, 1, 8, 32, 32))["x_norm_patchtokens"].sum().backward()
    assert model.mask_token.grad is not None
    assert torch.count_nonzero(model.mask_token.grad) == 0
    assert all(p.grad is not None for p in model.parameters())


def test_masked_backward_reaches_mask_token():
    model = tiny().train()
    masks = torch.zeros(1, 32, dtype=torch.bool)
    masks[0, 5] = True
    cls = model.forward_features(torch.randn(1, 1, 8, 32, 32), masks)["x_norm_clstoken"]
    # a sum of LayerNorm outputs has zero gradient: use a random projection
    (cls * torch.randn(cls.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.count_nonzero(model.mask_token.grad) > 0


def test_forward_features_list_equals_separate_calls():
    model = tiny()
    xs = [torch.randn(2, 1, 8, 32, 32), torch.randn(3, 1, 8, 16, 16)]
    masks = [torch.rand(2, 32, generator=torch.Generator().manual_seed(0)) < 0.5, None]
    outs = model.forward_features_list(xs, masks)
    assert model.forward_features(xs, masks)[1]["grid_size"] == (2, 2, 2)
    for x, m, out in zip(xs, masks, outs):
        ref = model.forward_features(x, m)
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(out[key], ref[key])
        assert out["grid_size"] == ref["grid_size"]
    with pytest.raises(ValueError, match="masks"):
        model.forward_features_list(xs, [None])


def test_get_intermediate_layers_matches_dinov2_semantics():
    model = tiny(depth=3)
    x = torch.randn(2, 1, 8, 32, 32)
    out = model.forward_features(x)
    last = model.get_intermediate_layers(x, n=1)
    assert len(last) == 1 and last[0].shape == (2, 32, 32)
    torch.testing.assert_close(last[0], out["x_norm_patchtokens"])
    layers = model.get_intermediate_layers(x, n=[0, 2], reshape=True, return_class_token=True)
    assert len(layers) == 2
    patches, cls = layers[1]
    assert patches.shape == (2, 32, 2, 4, 4) and cls.shape == (2, 32)
    torch.testing.assert_close(cls, out["x_norm_clstoken"])
    # (B, E, t, h, w) holds token (t h w) order
    torch.testing.assert_close(patches[:, :, 1, 2, 3], out["x_norm_patchtokens"][:, 16 + 8 + 3])
    raw = model.get_intermediate_layers(x, n=1, norm=False)[0]
    torch.testing.assert_close(raw, out["x_prenorm"][:, 5:])
    with pytest.raises(ValueError):
        model.get_intermediate_layers(x, n=4)
    with pytest.raises(ValueError):
        model.get_intermediate_layers(x, n=[3])


def test_drop_path_is_per_sample_and_reproducible():
    model = tiny(drop_path_rate=0.5).train()
    x = torch.randn(8, 1, 8, 32, 32)
    a = model.forward_features(x, generator=torch.Generator().manual_seed(0))["x_prenorm"]
    b = model.forward_features(x, generator=torch.Generator().manual_seed(0))["x_prenorm"]
    c = model.forward_features(x, generator=torch.Generator().manual_seed(1))["x_prenorm"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    model.eval()
    torch.testing.assert_close(model.forward_features(x)["x_prenorm"],
                               model.forward_features(x)["x_prenorm"])


def test_pos_cache_follows_parameter_updates():
    model = tiny()
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        first = model.forward_features(x)["x_prenorm"]
        model.pos_embed.add_(1.0)
        second = model.forward_features(x)["x_prenorm"]
    assert not torch.allclose(first, second)
    with torch.no_grad():
        model.pos_embed.sub_(1.0)
        torch.testing.assert_close(model.forward_features(x)["x_prenorm"], first)


def test_constructor_validation():
    with pytest.raises(ValueError, match="num_heads"):
        VisionTransformer3d(img_size=(4, 8, 8), patch_size=(4, 8, 8), embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match=r"patch size \(4, 8, 8\)"):
        VisionTransformer3d(img_size=(6, 8, 8), patch_size=(4, 8, 8), embed_dim=32, num_heads=2)
    with pytest.raises(ValueError, match="drop_path_rate"):
        VisionTransformer3d(img_size=(4, 8, 8), patch_size=(4, 8, 8), embed_dim=32,
                            num_heads=2, drop_path_rate=1.0)


def test_reset_parameters_is_seeded():
    a, b = tiny(depth=1), tiny(depth=1)
    a.reset_parameters(torch.Generator().manual_seed(5))
    b.reset_parameters(torch.Generator().manual_seed(5))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert a.blocks[0].ls1.gamma.detach()[0].item() == pytest.approx(1e-5)
    assert a.pos_embed.detach().std().item() == pytest.approx(0.02, rel=0.2)


def test_bf16_autocast_forward_backward():
    model = tiny().train()
    x = torch.randn(2, 1, 8, 16, 16)
    masks = torch.zeros(2, 8, dtype=torch.bool)
    masks[:, 2] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_features(x, masks)
        ref = model.forward_features(x, masks)["x_norm_patchtokens"].float()
    assert torch.isfinite(out["x_norm_patchtokens"].float()).all()
    out["x_norm_clstoken"].float().square().sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.dtype == torch.float32
    full = tiny().forward_features(x, masks)["x_norm_patchtokens"]
    torch.testing.assert_close(ref, full, atol=0.1, rtol=0.05)
