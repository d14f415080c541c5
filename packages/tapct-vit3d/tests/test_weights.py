"""Weights from anywhere: prefixes found by name, timm DINOv2 into a 3D model (FlexiViT
kernel resize checked against timm), a hub id from a local cache offline, the model card."""

import json

import pytest
import tapct_vit3d
import timm
import torch
from huggingface_hub import ModelCard, constants
from tapct_vit3d import (
    create_model,
    find_prefix,
    inflate_patch_kernel,
    load_pretrained,
    load_weights,
    resample_patch_embed,
)
from timm.layers import resample_patch_embed as timm_resample_patch_embed


def _randomised(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize(("old", "new", "mode"), [
    (14, 8, "bicubic"), (14, 16, "bicubic"), (16, 8, "bilinear"), (8, 16, "bilinear"),
])
def test_patch_kernel_resize_equals_timm(old, new, mode):
    w = torch.randn(6, 3, old, old, generator=torch.Generator().manual_seed(old + new))
    ours = resample_patch_embed(w, (new, new), interpolation=mode)
    torch.testing.assert_close(ours, timm_resample_patch_embed(w, [new, new], mode),
                               rtol=1e-5, atol=1e-6)
    # a 3D kernel is resized slice by slice in-plane
    w3 = torch.stack([w, 2 * w], dim=2)  # (E, C, 2, old, old)
    got = resample_patch_embed(w3, (new, new), interpolation=mode)
    torch.testing.assert_close(got[:, :, 1], 2 * ours, rtol=1e-5, atol=1e-5)


def test_upsampled_kernel_sees_upsampled_patches_the_same():
    # FlexiViT's defining property: <resize(x), resample(w)> = <x, w> (exact when upsampling)
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(4, 1, 8, 8, generator=gen), torch.randn(3, 1, 8, 8, generator=gen)
    w16 = resample_patch_embed(w, (16, 16), interpolation="bilinear")
    x16 = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(torch.einsum("bchw,echw->be", x16, w16),
                               torch.einsum("bchw,echw->be", x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prefix", ["", "vit.", "tapct.", "model.encoder.", "module.",
                                    "backbone.", "module.teacher.backbone."])
def test_prefix_found_by_parameter_names(prefix):
    ref = _randomised(create_model("tap_nano_3d"), seed=1)
    sd = {prefix + k: v for k, v in ref.state_dict().items()}
    sd[prefix.replace("encoder", "decoder") + "head.weight"] = torch.zeros(2, 48)
    if prefix:
        sd["optimizer.state.0.exp_avg"] = torch.zeros(3)  # noise beside the backbone
    model = create_model("tap_nano_3d")
    assert find_prefix(sd, model.state_dict()) == prefix
    report = load_weights(model, sd)
    assert report.prefix == prefix and report.missing == []
    x = torch.randn(1, 1, 12, 64, 64)
    assert torch.equal(model.eval()(x), ref(x))


def test_teacher_wins_a_tie_and_explicit_prefix(tmp_path):
    student = _randomised(create_model("tap_nano_3d"), seed=2)
    teacher = _randomised(create_model("tap_nano_3d"), seed=3)
    sd = {**{f"student.backbone.{k}": v for k, v in student.state_dict().items()},
          **{f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}}
    torch.save({"model": sd, "iteration": 7}, tmp_path / "ckpt.pth")  # nested container
    x = torch.randn(1, 1, 12, 64, 64)
    model = load_pretrained(tmp_path / "ckpt.pth", preset="tap_nano_3d")
    assert torch.equal(model(x), teacher(x))
    model = load_pretrained(tmp_path / "ckpt.pth", preset="tap_nano_3d",
                            prefix="model.student.backbone.")
    assert torch.equal(model(x), student(x))
    with pytest.raises(ValueError, match=r"prefix 'vit\.'"):
        load_pretrained(tmp_path / "ckpt.pth", preset="tap_nano_3d", prefix="vit.")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = {f"vit.{k}": v for k, v in create_model("tap_nano_3d").state_dict().items()}
    del sd["vit.blocks.1.mlp.fc2.bias"]
    sd["vit.extra_proj.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias.*extra_proj\.weight"):
        load_weights(create_model("tap_nano_3d"), sd)
    report = load_weights(create_model("tap_nano_3d"), sd, strict=False)
    assert report.missing == ["blocks.1.mlp.fc2.bias"]
    assert report.unexpected == ["extra_proj.weight"]
    assert any("blocks.1.mlp.fc2.bias" in line for line in report.lines())


def test_timm_dinov2_patch14_into_patch_4x8x8(tmp_path):
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56, depth=2)
    torch.save(vit.state_dict(), tmp_path / "dinov2_s14.pth")
    model = create_model("tap_s_3d", depth=2)  # patch (4, 8, 8), 4 registers
    report = load_weights(model, tmp_path / "dinov2_s14.pth", strict=False)
    assert report.layout == "2d" and report.prefix == ""
    assert report.missing == ["mask_token", "register_tokens"]  # new: kept at init
    kernel = vit.state_dict()["patch_embed.proj.weight"]  # (384, 3, 14, 14)
    expected = inflate_patch_kernel(
        timm_resample_patch_embed(kernel, [8, 8]).sum(dim=1, keepdim=True), 4)
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(), expected,
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(model.blocks[1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight)
    assert model.pos_embed.shape == (1, 1 + 3 * 28 * 28, 384)
    assert any("14, 14" in c and "FlexiViT" in c for c in report.conversions)


def _cache_layout(cache, repo_id, folder, revision="0123456789abcdef0123456789abcdef01234567"):
    """Put a model folder into a Hugging Face hub cache as a download would."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_hub_id_from_local_cache_offline(tmp_path, monkeypatch):
    ref = _randomised(create_model("tap_nano_3d"), seed=6)
    meta = {"normalize": {"lower": -1000.0, "upper": 1000.0, "mean": 0.0, "std": 500.0}}
    folder = ref.save_pretrained(tmp_path / "saved", metadata=meta)
    cache = tmp_path / "hub"
    _cache_layout(cache, "someone/tapct-nano", folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = load_pretrained("someone/tapct-nano", cache_dir=cache)
    x = torch.randn(1, 1, 12, 64, 64)
    assert torch.equal(model(x), ref(x))
    assert tapct_vit3d.read_model_metadata("someone/tapct-nano", cache_dir=cache) == meta
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1"):
        load_pretrained("someone/not-cached", cache_dir=cache)


def test_model_card(tmp_path):
    model = create_model("tap_nano_3d")
    meta = {"normalize": {"lower": -1008.0, "upper": 822.0, "mean": -86.8, "std": 322.6}}
    folder = model.save_pretrained(tmp_path / "m", metadata=meta, model_card={
        "base_model": "facebook/dinov2-small", "training": {"train": {"iterations": 3}},
        "data": {"scans": 2}, "tags": ["demo"]})
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "tapct_vit3d"
    assert card.data.base_model == "facebook/dinov2-small"
    assert card.data.license == "other" and "demo" in card.data.tags
    assert "[-1008.0, 822.0] HU" in card.text and "mean -86.8 HU" in card.text
    assert json.loads(card.text.split("```json\n")[1].split("```")[0]) == {
        "train": {"iterations": 3}}
    assert load_pretrained(folder).config == model.config
