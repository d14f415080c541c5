"""Faults a fresh user found, each with its input: seeded presets, foreign output folders,
the embed skip report over several runs, the presets table in a pipe, checkpoint hints."""

from __future__ import annotations

import json

import pytest
import torch
from tapct_app.cli import main
from tapct_app.errors import UserError


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("tapct: error:")]


def test_a_preset_is_the_same_random_network_on_every_call():
    from tapct_app.models import load_backbone

    before = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a, _ = load_backbone("tap_nano_3d")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        b, _ = load_backbone("tap_nano_3d")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG untouched


def test_timm_and_monai_encoders_are_seeded_too():
    pytest.importorskip("timm")
    from tapct_app.encoders import load_encoder

    for spec in ("timm:vit_tiny_patch16_224", "monai:SegResNet"):
        a, b = load_encoder(spec), load_encoder(spec)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), spec


def test_export_refuses_a_folder_of_other_files(tiny_config, tmp_path, capsys):
    from tapct_app.train.loop import run_pretraining

    run = tmp_path / "run"
    run_pretraining(tiny_config(2), run, progress=False)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "README.md").write_text("# my notes\n")
    assert main(["export", str(run), "-o", str(foreign)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"tapct: error: {foreign}: holds other files (README.md)")
    assert (foreign / "README.md").read_text() == "# my notes\n"  # untouched
    assert sorted(p.name for p in foreign.iterdir()) == ["README.md"]
    # a new folder, then the same folder again (its own earlier export) both work
    out = tmp_path / "model"
    assert main(["export", str(run), "-o", str(out)]) == 0
    assert main(["export", str(run), "-o", str(out)]) == 0
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in out.iterdir()}
    # a training checkpoint given as --model names the way out
    from tapct_app.models import load_backbone
    from tapct_app.train.checkpoint import latest_checkpoint

    with pytest.raises(UserError, match="tapct export RUN_OR_CHECKPOINT -o MODEL_DIR"):
        load_backbone(str(latest_checkpoint(run / "checkpoints")))


def test_embed_skip_report_covers_every_run_into_the_folder(tmp_path):
    from tapct_app.embed import _write_skipped

    out = tmp_path / "emb"
    out.mkdir()
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_text("x")
    b.write_text("y")

    def rows():
        path = out / "skipped.jsonl"
        return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []

    _write_skipped(out, [(str(a), "not an image")])
    _write_skipped(out, [(str(b), "truncated")])  # a second run over other inputs
    assert [(r["path"], r["reason"]) for r in rows()] == [
        (str(a), "not an image"), (str(b), "truncated")
    ]
    _write_skipped(out, [(str(b), "still truncated")], read_now=[str(a)])  # a now embedded
    assert [(r["path"], r["reason"]) for r in rows()] == [(str(b), "still truncated")]
    b.unlink()  # the user removed the bad file: its entry goes
    _write_skipped(out, [])
    assert not (out / "skipped.jsonl").exists()


def test_presets_table_is_whole_in_a_pipe(capsys, monkeypatch):
    from tapct_vit3d import list_models

    monkeypatch.setenv("COLUMNS", "60")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for name in list_models():
        assert f" {name} " in out, name
