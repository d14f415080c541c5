"""Two CPU processes (gloo, torchrun) equal one process accumulating two micro-batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from tapct_app.train import checkpoint as ckpt


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tapct_app", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_two_process_gloo_matches_single_process(phantom_store, tmp_path, run_tapct, tiny):
    tapct, tiny_args = run_tapct, tiny
    common = ["pretrain", "--data", str(phantom_store), *tiny_args(iterations=2, batch=1)]
    ddp = _torchrun(*common, "--output", str(tmp_path / "ddp"))
    errors = [ln for ln in (ddp.stdout + ddp.stderr).splitlines() if "error" in ln.lower()]
    assert ddp.returncode == 0, "\n".join(errors[:5])
    single = tapct(*common, "--set", "train.accumulation_steps=2",
                   "--output", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-3000:]

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 2
    a, b = summary["rank_checksums"]
    assert a == b  # the two ranks hold identical weights

    d = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ddp" / "checkpoints"))
    s = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "single" / "checkpoints"))
    assert d["samples_seen"] == s["samples_seen"] == 4
    for part in ("student", "teacher", "objective_state"):
        for key, value in s[part].items():
            torch.testing.assert_close(d[part][key], value, rtol=1e-4, atol=1e-5,
                                       msg=f"{part}.{key}")

    # resume the 2-process run on one process with the same global batch
    more = tapct("pretrain", "--data", str(phantom_store), *tiny_args(iterations=3, batch=1),
                 "--set", "train.accumulation_steps=2", "--output", str(tmp_path / "ddp"))
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming from" in more.stdout
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ddp" / "checkpoints"))[
        "iteration"] == 3
