"""Fixtures of the cross-package end-to-end tests (tiny models, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# tap_nano_3d with small heads and crops (4,32,32)/(4,16,16): seconds per iteration on CPU.
TINY_SETS = [
    "model.drop_path_rate=0.1",
    "data.slab_depth=4",
    "data.in_plane_size=[40,40]",
    "data.num_workers=0",
    "crops.global_crops_size=[4,32,32]",
    "crops.local_crops_size=[4,16,16]",
    "crops.local_crops_number=2",
    "objective.dino_head_n_prototypes=256",
    "objective.dino_head_hidden_dim=64",
    "objective.dino_head_bottleneck_dim=32",
    "objective.ibot_head_n_prototypes=256",
    "objective.ibot_head_hidden_dim=64",
    "objective.ibot_head_bottleneck_dim=32",
    # The paper's centering, whatever the demo uses: Sinkhorn-Knopp is a statistic of the
    # whole batch, so accumulating micro-batches cannot equal one big batch with it.
    "objective.centering=centering",
    "checkpoint.every=2",
    "log_every=1",
]


def tapct(*args: str, timeout: float = 600, extra_env: dict | None = None,
          cwd: Path | None = None):
    """Run ``python -m tapct_app ARGS`` (in ``cwd``) and return the CompletedProcess."""
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "tapct_app", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def tiny_args(*, iterations: int, batch: int = 2) -> list[str]:
    """CLI options of a tiny CPU run."""
    out = ["--config", "demo", "--preset", "tap_nano_3d", "--iterations", str(iterations),
           "--batch-size", str(batch), "--device", "cpu"]
    for s in TINY_SETS:
        out += ["--set", s]
    return out


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory) -> Path:
    """A zarr store of two small CT phantoms, built once."""
    from tapct_app.train.data import prepare_stores, write_demo_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    paths = write_demo_phantoms(root / "nii", 2, (16, 48, 48), seed=0)
    return prepare_stores([str(p) for p in paths], root / "cache")[0]


@pytest.fixture(scope="session")
def run_tapct():
    """The :func:`tapct` subprocess runner."""
    return tapct


@pytest.fixture(scope="session")
def tiny():
    """The :func:`tiny_args` builder."""
    return tiny_args
