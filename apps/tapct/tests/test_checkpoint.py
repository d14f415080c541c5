"""Checkpoints: weights_only loading, atomic writes, pruning, RNG capture."""

from __future__ import annotations

import random

import pytest
import torch
from tapct_app.train import checkpoint as ckpt


def _state(i: int) -> dict:
    return {
        "iteration": i,
        "student": {"w": torch.full((2, 3), float(i))},
        "config": {"a": [1, 2], "b": {"c": "x"}, "d": None, "e": (1.5, True)},
        "rng": ckpt.capture_rng_state(),
    }


def test_roundtrip_with_weights_only(tmp_path):
    path = ckpt.save_checkpoint(_state(3), tmp_path, 3, keep=2)
    assert path.name == "checkpoint-00000003.pt"
    raw = torch.load(path, weights_only=True)  # plain values only
    assert raw["format"] == ckpt.CHECKPOINT_FORMAT
    back = ckpt.load_checkpoint(path)
    assert torch.equal(back["student"]["w"], torch.full((2, 3), 3.0))
    assert back["config"]["b"] == {"c": "x"}


def test_keep_last_k_and_latest(tmp_path):
    for i in (1, 2, 3, 10):
        ckpt.save_checkpoint(_state(i), tmp_path, i, keep=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["checkpoint-00000003.pt", "checkpoint-00000010.pt"]
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-00000010.pt"
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temp files left


def test_failed_write_leaves_previous_checkpoint(tmp_path):
    ckpt.save_checkpoint(_state(1), tmp_path, 1, keep=3)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_checkpoint({"bad": Unpicklable()}, tmp_path, 2, keep=3)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-00000001.pt"]
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_rejects_foreign_files(tmp_path):
    f = tmp_path / "x.pt"
    torch.save({"iteration": 1}, f)
    with pytest.raises(ValueError, match="not a tapct pretraining checkpoint"):
        ckpt.load_checkpoint(f)
    f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(f)


def test_rng_state_roundtrip(tmp_path):
    random.seed(1)
    torch.manual_seed(1)
    path = ckpt.save_checkpoint({"rng": ckpt.capture_rng_state()}, tmp_path, 0, keep=1)
    a = (random.random(), torch.rand(3))
    ckpt.restore_rng_state(ckpt.load_checkpoint(path)["rng"])
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ckpt.save_checkpoint({}, tmp_path, 1, keep=0)
