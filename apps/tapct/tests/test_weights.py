"""Weights from anywhere in the CLI: ``--model`` hub ids from a local cache (offline),
``pretrain --init`` from a timm DINOv2 state dict, resume over ``--init``, model cards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tapct_app.cli import main

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _into_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay a model folder out as ``huggingface_hub`` stores a download (snapshot + ref)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


def _offline(monkeypatch, hf_home: Path) -> None:
    """``HF_HOME=hf_home HF_HUB_OFFLINE=1`` for this process (huggingface_hub read its
    environment at import, so its constants are set too)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_embed_model_by_hub_id_from_the_cache_offline(tmp_path, monkeypatch, capsys):
    import json

    from tapct_app.embed import _weights_digest
    from tapct_app.train.data import write_demo_phantoms
    from tapct_vit3d import create_model, load_pretrained

    torch.manual_seed(0)
    stats = {"lower": -900.0, "upper": 700.0, "mean": -50.0, "std": 300.0}
    folder = create_model("tap_nano_3d").save_pretrained(tmp_path / "saved",
                                                         metadata={"normalize": stats})
    hf_home = tmp_path / "hf"
    _into_hub_cache(hf_home / "hub", "someone/tapct-nano", folder)
    scans = write_demo_phantoms(tmp_path / "scans", 1, (8, 32, 32), seed=0)
    args = ["embed", str(scans[0]), "--roi", "4,32,32", "--device", "cpu", "--no-pca"]
    _offline(monkeypatch, hf_home)
    assert main([*args, "--model", "someone/tapct-nano", "-o", str(tmp_path / "by_id")]) == 0
    (settings,) = json.loads((tmp_path / "by_id" / "manifest.json").read_text())[
        "settings"].values()
    assert settings["model"] == "someone/tapct-nano"
    assert settings["model_weights_sha256"] == _weights_digest(load_pretrained(folder))
    assert settings["normalization"] == stats  # the metadata came through the cache too

    # not in the cache, offline: one line, exit status 2, nothing written
    capsys.readouterr()
    rc = main([*args, "--model", "someone/not-cached", "-o", str(tmp_path / "none")])
    errors = [ln for ln in capsys.readouterr().err.splitlines()
              if not ln.startswith("tapct: warning")]
    assert rc == 2 and len(errors) == 1, errors
    assert errors[0].startswith("tapct: error: someone/not-cached: ")
    assert "HF_HUB_OFFLINE=1" in errors[0]
    assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def dinov2_pth(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A timm ``vit_small_patch14_dinov2`` state dict with random weights, as a .pth file."""
    import timm

    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56,
                            depth=2)  # ViT-S width and heads; 2 blocks keep the test fast
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in vit.state_dict().items()}
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14.pth"
    torch.save(sd, path)
    return path, sd


def test_pretrain_init_from_timm_dinov2(dinov2_pth, phantom_store, tiny_sets, tmp_path, capsys):
    from tapct_vit3d import load_pretrained

    path, sd = dinov2_pth
    out = tmp_path / "run"
    sets = [a for s in [*tiny_sets, "model.name=tap_s_3d", "model.overrides.depth=2",
                        "model.drop_path_rate=0.0"] for a in ("--set", s)]
    rc = main(["pretrain", "--data", str(phantom_store), "-o", str(out), "--device", "cpu",
               "--iterations", "2", "--init", str(path), *sets])
    stdout = " ".join(capsys.readouterr().out.split())
    assert rc == 0, stdout
    assert f"--init: weights from {path} (2d layout" in stdout
    assert "kept at init): mask_token, register_tokens" in stdout
    assert "in-plane patch (14, 14) -> (8, 8)" in stdout
    teacher = load_pretrained(out / "model")  # the exported teacher after 2 iterations
    assert teacher.patch_size == (4, 8, 8) and teacher.embed_dim == 384
    for name in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "norm.weight"):
        got, src = teacher.state_dict()[name].flatten(), sd[name].flatten()
        assert torch.corrcoef(torch.stack([got, src]))[0, 1] > 0.99, name
    assert (out / "config.yaml").read_text().count(str(path)) == 1
    # our own training checkpoint is a valid --init too: its teacher is found by name
    from tapct_app.models import init_backbone
    from tapct_vit3d import create_model

    (ckpt,) = sorted((out / "checkpoints").glob("checkpoint-*.pt"))
    report = init_backbone(create_model("tap_s_3d", depth=2), str(ckpt))
    assert report.prefix == "teacher.backbone." and report.missing == []

    # resume wins over --init (said), and export writes the model card
    rc = main(["pretrain", "--data", str(phantom_store), "-o", str(out), "--device", "cpu",
               "--iterations", "3", "--init", str(path), *sets])
    stdout = " ".join(capsys.readouterr().out.split())
    assert rc == 0 and "the checkpoint's weights win over --init" in stdout
    assert "--init: weights from" not in stdout
    from huggingface_hub import ModelCard

    assert main(["export", str(out), "-o", str(tmp_path / "exported")]) == 0
    card = ModelCard.load(tmp_path / "exported" / "README.md")
    assert card.data.library_name == "tapct_vit3d" and card.data.license == "other"
    assert "tap_s_3d" in card.data.tags and card.data.base_model is None  # a file, no hub id
    assert f"Initialised from `{path}`" in card.text
    assert "| iterations trained | 3 of 3 |" in card.text
    assert "| scans (in the stores) | 2 |" in card.text
    assert "clipped to [-1008.0, 822.0] HU" in card.text


def test_init_errors_are_one_line(tmp_path, capsys, tiny_sets, phantom_store):
    rc = main(["pretrain", "--data", str(phantom_store), "-o", str(tmp_path / "o"),
               "--init", str(tmp_path / "missing.pth")])
    err = capsys.readouterr().err
    assert rc == 2 and f"tapct: error: {tmp_path / 'missing.pth'}: no such file" in err
    wide = tmp_path / "wide.pth"  # a ViT-S checkpoint into the nano preset: widths differ
    from tapct_vit3d import create_model

    torch.save(create_model("tap_s_3d", depth=1).state_dict(), wide)
    sets = [a for s in tiny_sets for a in ("--set", s)]
    rc = main(["pretrain", "--data", str(phantom_store), "-o", str(tmp_path / "o2"),
               "--device", "cpu", "--iterations", "1", "--init", str(wide), *sets])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" not in ln]
    assert rc == 2 and len(err) == 1 and "shape mismatches" in err[0], err
    assert not (tmp_path / "o2").exists()


def test_load_backbone_resolves_every_kind(tmp_path, monkeypatch):
    from tapct_app.errors import UserError
    from tapct_app.models import init_backbone, load_backbone
    from tapct_vit3d import create_model

    torch.manual_seed(1)
    meta = {"normalize": {"lower": -1000.0, "upper": 1000.0, "mean": 0.0, "std": 400.0}}
    folder = create_model("tap_nano_3d").save_pretrained(tmp_path / "m", metadata=meta)
    x = torch.randn(1, 1, 12, 64, 64)
    ref, got_meta = load_backbone(str(folder))
    assert got_meta == meta
    by_file, _ = load_backbone(str(folder / "model.safetensors"))
    assert torch.equal(by_file(x), ref(x))
    with pytest.warns(UserWarning, match="RANDOM"):
        preset, preset_meta = load_backbone("tap_nano_3d")
    assert preset_meta == {} and preset.embed_dim == 48
    hf_home = tmp_path / "hf"
    _into_hub_cache(hf_home / "hub", "org/nano", folder)
    _offline(monkeypatch, hf_home)
    by_id, id_meta = load_backbone("org/nano")
    assert torch.equal(by_id(x), ref(x)) and id_meta == meta
    fresh = create_model("tap_nano_3d")
    assert init_backbone(fresh, "org/nano").layout == "3d"  # --init from a hub id
    assert torch.equal(fresh.eval()(x), ref(x))
    with pytest.raises(UserError, match=r"^no/such: no such local folder; as a hub id: "):
        load_backbone("no/such")
    with pytest.raises(UserError, match="not a hub id"):
        load_backbone("./nothing-here")
