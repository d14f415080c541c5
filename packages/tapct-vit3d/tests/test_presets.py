"""Every preset builds and trains; paper numbers (Table 3, section 4.5) hold."""

import pytest
import torch
from tapct_vit3d import PRESETS, PatchEmbed3d, create_model, list_models, preset_config

PAPER = {
    # name: (patch, img, embed_dim, depth, heads) from TAP-CT paper Table 3
    "tap_s_2d": ((1, 16, 16), (1, 224, 224), 384, 12, 6),
    "tap_b_2d": ((1, 16, 16), (1, 224, 224), 768, 12, 12),
    "tap_s_2p5d": ((1, 16, 16), (6, 224, 224), 384, 12, 6),
    "tap_b_2p5d": ((1, 16, 16), (6, 224, 224), 768, 12, 12),
    "tap_s_3d": ((4, 8, 8), (12, 224, 224), 384, 12, 6),
    "tap_b_3d": ((4, 8, 8), (12, 224, 224), 768, 12, 12),
}


def test_list_models_has_paper_and_cpu_presets():
    names = list_models()
    assert names[:6] == list(PAPER)
    assert {"tap_ti_3d", "tap_micro_3d", "tap_nano_3d"} <= set(names)


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_presets_match_table_3(name):
    patch, img, width, depth, heads = PAPER[name]
    cfg = preset_config(name)
    assert tuple(cfg["patch_size"]) == patch and tuple(cfg["img_size"]) == img
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (width, depth, heads)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_forward_and_backward(name):
    cfg = preset_config(name)
    small = {} if name in ("tap_nano_3d",) else {"depth": 1, "embed_dim": 32, "num_heads": 2}
    model = create_model(name, **small).train()
    pd, ph, pw = cfg["patch_size"]
    x = torch.randn(2, 1, 2 * pd, 2 * ph, 3 * pw)
    out = model.forward_features(x)
    E = small.get("embed_dim", cfg["embed_dim"])
    assert out["x_norm_patchtokens"].shape == (2, 12, E)
    assert out["x_norm_regtokens"].shape == (2, 4, E)
    loss = (out["x_norm_clstoken"] ** 2).sum() + (out["x_norm_patchtokens"] ** 2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _vit_param_count(E: int, depth: int, patch_voxels: int, n_patches: int, R: int = 4) -> int:
    block = 12 * E * E + 15 * E  # qkv 3E^2+3E, proj E^2+E, fc1 4E^2+4E, fc2 4E^2+E, 2 LN, 2 LS
    return (depth * block + 2 * E  # final norm
            + patch_voxels * E + E  # patch embed (1 channel)
            + E + R * E + E  # cls, registers, mask token
            + (1 + n_patches) * E)  # pos embed incl. cls position


def test_tap_b_3d_has_about_86m_parameters():
    with torch.device("meta"):  # shapes only, nothing allocated
        model = create_model("tap_b_3d")
    n = sum(p.numel() for p in model.parameters())
    assert n == _vit_param_count(768, 12, 4 * 8 * 8, 3 * 28 * 28)
    assert 85e6 < n < 88e6  # paper: ViT-B ~86M


def test_tap_s_3d_parameter_count():
    with torch.device("meta"):
        model = create_model("tap_s_3d")
    n = sum(p.numel() for p in model.parameters())
    assert n == _vit_param_count(384, 12, 4 * 8 * 8, 3 * 28 * 28)
    assert 21e6 < n < 23e6  # ViT-S ~22M


def test_300_slice_volume_gives_58800_patch_tokens():
    # paper section 4.5: (300, 224, 224) with patch (4, 8, 8) -> 75 x 28 x 28 tokens
    embed = PatchEmbed3d((4, 8, 8), in_chans=1, embed_dim=768)
    with torch.no_grad():
        tokens, grid = embed(torch.zeros(1, 1, 300, 224, 224))
    assert grid == (75, 28, 28)
    assert tokens.shape == (1, 58_800, 768)
    with torch.device("meta"):  # the whole tap_b_3d model, shapes only
        out = create_model("tap_b_3d").forward_features(torch.empty(1, 1, 300, 224, 224))
    assert out["x_norm_patchtokens"].shape == (1, 58_800, 768)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="tap_b_3d") as info:
        create_model("tap_x_3d")
    assert "tap_nano_3d" in str(info.value) and "tap_x_3d" in str(info.value)


def test_overrides_apply_and_bad_override_raises():
    model = create_model("tap_nano_3d", drop_path_rate=0.2, num_register_tokens=0)
    assert model.config["drop_path_rate"] == 0.2 and model.register_tokens is None
    with pytest.raises(TypeError):
        create_model("tap_nano_3d", not_an_arg=1)
