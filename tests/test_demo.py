"""The built-in demo: ``tapct pretrain`` with no arguments trains on phantoms and learns."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_default_demo_runs_and_the_loss_falls(tmp_path, run_tapct):
    # The default demo, run in an empty folder; only the length is shortened (the
    # schedules span the shortened run, exactly as they span 100 iterations by default).
    result = run_tapct("pretrain", "--iterations", "40", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "tapct-demo"
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "loss_curve.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows]
    assert len(losses) >= 8
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    # Every term of the objective has to take part in the fall, not KoLeo alone.
    assert last < first - 0.3, losses
    for key in ("dino_local_crops_loss", "ibot_loss"):
        assert sum(r[key] for r in rows[-3:]) < sum(r[key] for r in rows[:3]), key
    assert "loss: first" in result.stdout
