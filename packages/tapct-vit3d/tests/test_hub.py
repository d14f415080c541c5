"""save_pretrained / from_pretrained round trips, DINOv2-layout checkpoints, hub errors."""

import json

import pytest
import tapct_vit3d
import torch
from safetensors.torch import save_file
from tapct_vit3d import (
    KNOWN_RELEASES,
    VisionTransformer3d,
    convert_dinov2_checkpoint,
    create_model,
    load_pretrained,
)


def _randomised(model: VisionTransformer3d, seed: int = 0) -> VisionTransformer3d:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def test_round_trip_is_exact(tmp_path):
    model = _randomised(create_model("tap_nano_3d", num_register_tokens=2, img_size=(8, 32, 32)))
    folder = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["embed_dim"] == 48 and config["num_register_tokens"] == 2
    assert config["img_size"] == [8, 32, 32]
    loaded = VisionTransformer3d.from_pretrained(folder)
    assert loaded.config == model.config and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(1, 1, 8, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert torch.equal(load_pretrained(str(folder / "model.safetensors"))(x), model(x))


class _NotATensor:
    """A Python object ``torch.load(weights_only=True)`` must refuse."""


def test_state_dict_files_load_without_unpickling_objects(tmp_path):
    ref = _randomised(create_model("tap_nano_3d"), seed=5)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")  # a plain state dict
    model = load_pretrained(tmp_path, preset="tap_nano_3d")
    x = torch.randn(1, 1, 12, 64, 64)
    assert torch.equal(model(x), ref(x))
    evil = tmp_path / "evil" / "weights.pth"
    evil.parent.mkdir()
    torch.save({"model": ref.state_dict(), "args": _NotATensor()}, evil)
    with pytest.raises(ValueError, match="never unpickled"):
        load_pretrained(evil, preset="tap_nano_3d")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="not a weights file"):
        load_pretrained(tmp_path / "w.txt", preset="tap_nano_3d")


def _dinov2_layout(model: VisionTransformer3d, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict as the DINOv2 trainer writes it: chunked blocks, heads, a prefix."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // 2}.{index}." + key.split(".", 2)[2]  # chunks of 2 blocks
        out[prefix + key] = value.clone()
    out[prefix.replace("backbone", "dino_head") + "mlp.0.weight"] = torch.zeros(2, 2)
    return out


def test_released_layout_loads_into_preset(tmp_path):
    # a TAP-CT-release-like file: DINOv2 names, no config of ours; the preset gives the shape
    ref = _randomised(create_model("tap_nano_3d"), seed=1)
    save_file(dict(ref.state_dict()), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2-3d"}))
    with pytest.raises(ValueError, match="preset"):
        load_pretrained(tmp_path)
    model = load_pretrained(tmp_path, preset="tap_nano_3d")
    x = torch.randn(2, 1, 12, 64, 64)
    assert torch.equal(model(x), ref(x))


def test_training_checkpoint_layout_converts():
    ref = _randomised(create_model("tap_nano_3d"), seed=2)
    sd = _dinov2_layout(ref, prefix="teacher.backbone.")
    converted = convert_dinov2_checkpoint(sd, create_model("tap_nano_3d"))
    assert set(converted) == set(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_other_pos_grid_is_resampled():
    src = _randomised(create_model("tap_nano_3d", img_size=(12, 32, 32)), seed=3)
    target = create_model("tap_nano_3d")  # grid (3, 8, 8) vs checkpoint (3, 4, 4)
    converted = convert_dinov2_checkpoint(src.state_dict(), target)
    assert converted["pos_embed"].shape == target.pos_embed.shape
    torch.testing.assert_close(converted["pos_embed"][:, 0], src.pos_embed[:, 0])
    target.load_state_dict(converted, strict=True)
    # the resampled grid reproduces the source's own resampling of its embedding
    x = torch.randn(1, 1, 12, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), src(x))


def test_mismatched_checkpoint_lists_problems():
    sd = create_model("tap_nano_3d").state_dict()
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"norm\.weight.*extra\.weight"):
        convert_dinov2_checkpoint(sd, create_model("tap_nano_3d"))


def test_known_release_hub_id_uses_its_preset(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    ref = _randomised(create_model("tap_nano_3d"), seed=4)
    save_file(dict(ref.state_dict()), str(tmp_path / "model.safetensors"))
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append((repo_id, filename))
        if filename == "config.json":
            raise EntryNotFoundError("no config")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setitem(KNOWN_RELEASES, "fomofo/tap-ct-test", "tap_nano_3d")
    model = load_pretrained("fomofo/tap-ct-test")
    assert calls[0] == ("fomofo/tap-ct-test", "model.safetensors")
    x = torch.randn(1, 1, 12, 64, 64)
    assert torch.equal(model(x), ref(x))
    assert KNOWN_RELEASES["fomofo/tap-ct-b-3d"] == "tap_b_3d"
    assert KNOWN_RELEASES["fomofo/tap-ct-s-3d"] == "tap_s_3d"


def test_hub_id_offline_fails_clearly(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="network") as info:
        tapct_vit3d.load_pretrained("fomofo/tap-ct-b-3d", cache_dir=tmp_path)
    assert "local folder" in str(info.value)


def test_missing_path_raises():
    with pytest.raises(FileNotFoundError):
        load_pretrained("./no/such/folder")


def test_metadata_is_stored_in_config_json_and_read_back(tmp_path):
    model = _randomised(create_model("tap_nano_3d", img_size=(8, 32, 32)))
    meta = {"normalize": {"lower": -1000.0, "upper": 900.0, "mean": -50.0, "std": 300.0}}
    folder = model.save_pretrained(tmp_path / "m", metadata=meta)
    config = json.loads((folder / "config.json").read_text())
    assert config[tapct_vit3d.METADATA_KEY] == meta and config["embed_dim"] == 48
    assert tapct_vit3d.read_model_metadata(folder) == meta
    assert tapct_vit3d.read_model_metadata(folder / "model.safetensors") == meta
    loaded = VisionTransformer3d.from_pretrained(folder)  # the extra key is ignored
    x = torch.randn(1, 1, 8, 32, 32)
    assert torch.equal(loaded(x), model(x))
    old = model.save_pretrained(tmp_path / "old")  # a model saved without metadata
    assert tapct_vit3d.read_model_metadata(old) == {}
    (old / "config.json").unlink()
    assert tapct_vit3d.read_model_metadata(old) == {}
    with pytest.raises(TypeError, match="JSON"):
        model.save_pretrained(tmp_path / "bad", metadata={"x": object()})
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"config\.json"):
        tapct_vit3d.read_model_metadata(folder)
