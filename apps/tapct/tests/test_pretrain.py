"""The pretraining engine on phantoms: exact resume, checkpoints, export, NaN guard."""

from __future__ import annotations

import json

import attrs
import pytest
import torch
from tapct_app.train import checkpoint as ckpt
from tapct_app.train.loop import TrainingDivergedError, run_pretraining


def _final_state(folder):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(folder / "checkpoints"))


def test_resume_equals_uninterrupted(tiny_config, tmp_path):
    cfg = tiny_config(4)
    full = run_pretraining(cfg, tmp_path / "full", progress=False)
    assert full.iterations_done == 4 and full.model_dir is not None

    part = run_pretraining(cfg, tmp_path / "split", stop_after=2, progress=False)
    assert part.iterations_done == 2 and part.model_dir is None  # no export before the end
    resumed = run_pretraining(cfg, tmp_path / "split", progress=False)
    assert resumed.start_iteration == 2 and resumed.iterations_done == 4

    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "split")
    assert a["iteration"] == b["iteration"] == 4
    assert a["samples_seen"] == b["samples_seen"] == 8
    for part_name in ("student", "teacher", "objective_state"):
        assert a[part_name].keys() == b[part_name].keys()
        for key in a[part_name]:
            assert torch.equal(a[part_name][key], b[part_name][key]), (part_name, key)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    # the metrics file has each iteration once, in order
    its = [json.loads(line)["iteration"] for line in
           (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert its == [0, 1, 2, 3]


def test_checkpoint_contents_and_export(tiny_config, tmp_path):
    from tapct_vit3d import load_pretrained

    cfg = tiny_config(2)
    result = run_pretraining(cfg, tmp_path / "run", progress=False)
    state = torch.load(result.checkpoint, weights_only=True)  # plain values only
    for key in ("student", "teacher", "objective_state", "optimizer", "rng", "config",
                "iteration", "samples_seen"):
        assert key in state
    assert state["config"]["model"]["name"] == "tap_nano_3d"
    assert any("center" in k for k in state["objective_state"])  # DINO/iBOT centers
    # the exported encoder is the teacher backbone
    model = load_pretrained(result.model_dir)
    teacher = {k[len("backbone."):]: v for k, v in state["teacher"].items()
               if k.startswith("backbone.")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, teacher[k]), k
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    # the export at the end of the run carries the same model card as `tapct export`
    from huggingface_hub import ModelCard

    card = ModelCard.load(result.model_dir / "README.md")
    assert card.data.library_name == "tapct_vit3d" and "tap_nano_3d" in card.data.tags
    assert "samples seen" in card.text and "4" in card.text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["iterations_done"] == 2 and summary["first_loss"] > 0


def test_nan_guard_stops_before_writing(tiny_config, tmp_path, monkeypatch):
    from tapct_ssl import DINOv2Objective

    original = DINOv2Objective.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 3:  # iteration 2 goes bad
            out = attrs.evolve(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(DINOv2Objective, "forward", poisoned)
    cfg = tiny_config(4, "checkpoint.every=1")
    with pytest.raises(TrainingDivergedError, match="diverged at iteration 2") as info:
        run_pretraining(cfg, tmp_path / "run", progress=False)
    assert "checkpoint-00000002.pt" in str(info.value)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert names == ["checkpoint-00000001.pt", "checkpoint-00000002.pt"]
    good = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / names[-1])
    assert all(torch.isfinite(v).all() for v in good["student"].values())
    assert not (tmp_path / "run" / "model").exists()
