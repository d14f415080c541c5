"""Intensity statistics end to end: fingerprint -> pretrain -> exported model -> embed."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tapct_app.cli import main
from tapct_app.errors import UserError
from tapct_app.intensity import model_normalize
from tapct_app.pretrain import resolve_pretrain_config
from tapct_app.train.loop import run_pretraining
from tapct_data import NormalizeConfig
from tapct_vit3d import create_model, read_model_metadata

from .conftest import TINY

CUSTOM = NormalizeConfig(lower=-1000.0, upper=400.0, mean=-300.0, std=250.0)


def test_intensity_stats_flow_into_the_dataset_and_the_exported_model(
    phantom_store, tmp_path, monkeypatch
):
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"normalize": CUSTOM.to_dict(), "n_scans": 2}))
    cfg = resolve_pretrain_config(
        "demo",
        [str(phantom_store)],
        iterations=2,
        device="cpu",
        overrides=TINY,
        intensity_stats=stats,
    )
    assert cfg.data.normalize == CUSTOM
    assert resolve_pretrain_config("demo", [str(phantom_store)]).data.normalize == (
        NormalizeConfig()  # default: the paper's
    )
    via_set = resolve_pretrain_config(
        "demo", [str(phantom_store)], overrides=["data.normalize.std=100"]
    )
    assert via_set.data.normalize == NormalizeConfig(std=100.0)
    with pytest.raises(UserError, match="std"):
        resolve_pretrain_config("demo", [str(phantom_store)], overrides=["data.normalize.std=0"])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(UserError, match=r"bad\.json"):
        resolve_pretrain_config("demo", [str(phantom_store)], intensity_stats=bad)

    seen = []
    original = NormalizeConfig.apply

    def recording(self, x):
        seen.append((self, x.dtype))
        return original(self, x)

    # The loader ships int16 HU; the step normalises on the device with the run's stats.
    monkeypatch.setattr(NormalizeConfig, "apply", recording)
    result = run_pretraining(cfg, tmp_path / "run", progress=False)
    assert seen and {config for config, _ in seen} == {CUSTOM}
    assert {dtype for _, dtype in seen} == {torch.int16}
    assert read_model_metadata(result.model_dir) == {"normalize": CUSTOM.to_dict()}
    assert model_normalize(str(result.model_dir)) == CUSTOM


def _embed(scan, model_dir, out, *extra) -> tuple[torch.Tensor, dict]:
    rc = main(
        [
            "embed",
            str(scan),
            "--model",
            str(model_dir),
            "-o",
            str(out),
            "--no-pca",
            "--device",
            "cpu",
            *extra,
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    scan_entry = manifest["scans"][0]
    features = load_file(str(out / scan_entry["file"]))["patch_features"]
    return features, manifest["settings"][scan_entry["settings_id"]]  # the scan's settings


def test_embed_uses_the_models_own_statistics(shared_data, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("tap_nano_3d")
    paper = model.save_pretrained(tmp_path / "paper")  # no metadata: the paper's values
    meta = {"normalize": CUSTOM.to_dict()}
    custom = model.save_pretrained(tmp_path / "custom", metadata=meta)
    scan = shared_data / "ct" / "example_ct_sm.nii.gz"
    f_paper, m_paper = _embed(scan, paper, tmp_path / "e1")
    assert "no intensity statistics recorded" in capsys.readouterr().err  # the note
    f_custom, m_custom = _embed(scan, custom, tmp_path / "e2")
    assert "intensity" not in capsys.readouterr().err
    assert m_paper["normalization"] == NormalizeConfig().to_dict()
    assert m_custom["normalization"] == CUSTOM.to_dict()
    assert f_paper.shape == f_custom.shape
    assert not torch.allclose(f_paper, f_custom)  # other statistics, other embedding
    override = tmp_path / "override.json"
    override.write_text(json.dumps(NormalizeConfig().to_dict()))
    f_override, m_override = _embed(
        scan, custom, tmp_path / "e3", "--intensity-stats", str(override)
    )
    assert m_override["normalization"] == NormalizeConfig().to_dict()
    assert torch.equal(f_override, f_paper)


def test_model_normalize_order_and_errors(tmp_path):
    model = create_model("tap_nano_3d")
    folder = model.save_pretrained(tmp_path / "m", metadata={"normalize": CUSTOM.to_dict()})
    assert model_normalize(str(folder)) == CUSTOM
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(NormalizeConfig(std=99.0).to_dict()))
    assert model_normalize(str(folder), plain) == NormalizeConfig(std=99.0)
    with pytest.warns(UserWarning, match="paper"):
        assert model_normalize("tap_nano_3d") == NormalizeConfig()
    broken = model.save_pretrained(tmp_path / "b", metadata={"normalize": {"lower": 1}})
    with pytest.raises(UserError, match=r"config\.json"):
        model_normalize(str(broken))
    with pytest.raises(UserError, match=r"missing\.json"):
        model_normalize(str(folder), tmp_path / "missing.json")


def test_fingerprint_command_writes_stats_pretrain_can_read(shared_data, tmp_path, capsys):
    bad = tmp_path / "fake.nii.gz"
    bad.write_text("not a nifti")
    scan = shared_data / "ct" / "example_ct.nii.gz"
    out = tmp_path / "stats.json"
    rc = main(["fingerprint", str(scan), str(bad), "-o", str(out), "--workers", "1"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "1 scan(s) skipped" in printed and "fake.nii.gz" in printed
    doc = json.loads(out.read_text())
    stats = NormalizeConfig.from_json(out)
    assert stats.lower < -900  # the lungs are part of the body foreground
    assert doc["n_scans"] == 1 and doc["skipped"][0]["path"] == str(bad)
    assert doc["spacing_mm"]["median"] == [3.0, 3.0, 3.0]

    rc = main(["fingerprint", str(scan), str(bad), "--on-error", "stop", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "fake.nii.gz" in err

    air = tmp_path / "air.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), -1024, np.int16), np.eye(4)), air)
    rc = main(["fingerprint", str(air), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "no foreground" in err and len(err.strip().splitlines()) == 1
    assert main(["fingerprint", str(scan), "--on-error", "raise"]) == 2
