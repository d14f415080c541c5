"""Fixtures of the app's tests: a tiny pretraining setup on a shared phantom store."""

from __future__ import annotations

from pathlib import Path

import pytest

# Tiny model and crops: tap_nano_3d, crops (4,32,32)/(4,16,16), small heads.
TINY = [
    "model.name=tap_nano_3d",
    "model.drop_path_rate=0.1",
    "data.slab_depth=4",
    "data.in_plane_size=[40,40]",
    "data.num_workers=0",
    "crops.global_crops_size=[4,32,32]",
    "crops.local_crops_size=[4,16,16]",
    "crops.local_crops_number=2",
    "train.batch_size=2",
    "objective.dino_head_n_prototypes=256",
    "objective.dino_head_hidden_dim=64",
    "objective.dino_head_bottleneck_dim=32",
    "objective.ibot_head_n_prototypes=256",
    "objective.ibot_head_hidden_dim=64",
    "objective.ibot_head_bottleneck_dim=32",
    "checkpoint.every=2",
    "checkpoint.keep=5",
    "log_every=1",
]


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory) -> Path:
    """A zarr store of two small CT phantoms (built once per session)."""
    from tapct_app.train.data import prepare_stores, write_demo_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    paths = write_demo_phantoms(root / "nii", 2, (16, 48, 48), seed=0)
    return prepare_stores([str(p) for p in paths], root / "cache")[0]


@pytest.fixture
def tiny_config(phantom_store):
    """Build a tiny PretrainConfig on the phantom store: ``tiny_config(iterations, *sets)``."""
    from tapct_app.pretrain import resolve_pretrain_config

    def make(iterations: int = 4, *extra: str):
        return resolve_pretrain_config(
            "demo", [str(phantom_store)], iterations=iterations, device="cpu",
            overrides=[*TINY, *extra],
        )

    return make


@pytest.fixture
def tiny_sets() -> list[str]:
    """The ``--set`` overrides of the tiny setup (without the data source)."""
    return list(TINY)
