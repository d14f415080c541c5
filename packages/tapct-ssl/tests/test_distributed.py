"""Two real processes (gloo, CPU): DDP over 2 x 2 images == one process with 4 images.

DDP averages gradients over processes and every term is a per-image mean, so the
gradients match; centers are all-reduced (sum and count), so they match; Sinkhorn-Knopp
all-reduces its sums, so its targets over 2 processes equal those over the whole batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).resolve().parent / "_ddp_worker.py"


@pytest.mark.slow
def test_two_processes_equal_one_big_batch(tmp_path: Path) -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    sys.path.insert(0, str(WORKER.parent))
    try:
        from _ddp_worker import run, run_rank
    finally:
        sys.path.remove(str(WORKER.parent))
    store = str(tmp_path / "store")
    # rank 1 in a child process, rank 0 here (saves one torch import on a busy machine)
    child = subprocess.Popen(
        [sys.executable, str(WORKER), "1", "2", store, str(tmp_path / "1.pt")],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        rank0 = run_rank(0, 2, store)
    finally:
        out, _ = child.communicate(timeout=300)
    assert child.returncode == 0, out
    rank1 = torch.load(tmp_path / "1.pt", weights_only=True)

    for mode in ("centering", "sinkhorn_knopp"):
        reference = run(mode, [0, 1, 2, 3], ddp=False)  # one process, all 4 images
        for result in (rank0, rank1):
            for step, (got, want) in enumerate(zip(result[mode]["grads"], reference["grads"])):
                for name in want:
                    torch.testing.assert_close(
                        got[name], want[name], rtol=1e-9, atol=1e-12, msg=f"{mode} {step} {name}"
                    )
            for key, value in reference["state"].items():
                torch.testing.assert_close(result[mode]["state"][key], value, msg=f"{mode} {key}")
