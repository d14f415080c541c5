"""The training step: no host reads, a non-finite step skipped on the device, the guard."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from tapct_app.train import checkpoint as ckpt
from tapct_app.train.build import build_parts
from tapct_app.train.distributed import DistInfo
from tapct_app.train.host_syncs import HostReadCounter
from tapct_app.train.loop import TrainingDivergedError, run_pretraining
from tapct_app.train.step import train_step


def _parts_and_batch(tiny_config):
    parts = build_parts(tiny_config(4), DistInfo())
    slabs = torch.randn(2, 1, 4, 40, 40, generator=torch.Generator().manual_seed(0))
    batch = parts.collate([(10, slabs[0]), (11, slabs[1])])  # what a DataLoader worker makes
    return parts, batch


def test_step_reads_nothing_back_to_the_host(tiny_config):
    parts, batch = _parts_and_batch(tiny_config)
    train_step(parts, [batch], 0)
    # crops applied, forward, backward, clip, guard, optimizer, centers and EMA
    with HostReadCounter() as reads:
        out = train_step(parts, [batch], 1)
    assert reads.total == 0, reads.where
    from tapct_ssl import CollapseStats, DINOv2Terms

    # the objective's terms, the gradient norm, then the collapse monitors (no host read)
    assert out.names == (*DINOv2Terms.names(), "grad_norm", *CollapseStats.names())
    assert out.values.shape == (len(out.names),) and out.found_inf.item() == 0.0


def test_worker_collate_is_a_function_of_the_sample_indices(tiny_config):
    parts, batch = _parts_and_batch(tiny_config)
    again = parts.collate([(10, batch.slabs[0]), (11, batch.slabs[1])])
    other = parts.collate([(12, batch.slabs[0]), (13, batch.slabs[1])])
    assert again.seed == batch.seed != other.seed
    assert torch.equal(again.masks, batch.masks)
    assert torch.equal(again.mask_index.indices, batch.mask_index.indices)
    a = parts.augmentation.apply(batch.slabs, batch.params)
    b = parts.augmentation.apply(again.slabs, again.params)
    assert torch.equal(a.global_crops, b.global_crops) and torch.equal(a.local_crops, b.local_crops)


def test_non_finite_step_is_skipped_on_the_device(tiny_config):
    parts, batch = _parts_and_batch(tiny_config)
    train_step(parts, [batch], 0)
    before = {k: v.clone() for k, v in parts.objective.state_dict().items()}
    opt_before = [{k: v.clone() for k, v in s.items()} for s in parts.optimizer.state.values()]
    poisoned = attrs.evolve(batch, slabs=batch.slabs * float("nan"))
    out = train_step(parts, [poisoned], 1)
    assert out.found_inf.item() == 1.0
    for k, v in parts.objective.state_dict().items():  # student, teacher and centers
        assert torch.equal(v, before[k]), k
    for s, b in zip(parts.optimizer.state.values(), opt_before, strict=True):
        for k in b:
            assert torch.equal(s[k], b[k]), k  # step count and moments untouched


def test_guard_stops_at_the_next_fetch_and_writes_nothing_after(
    tiny_config, tmp_path: Path, monkeypatch
):
    from tapct_ssl import DINOv2Objective

    original = DINOv2Objective.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # iteration 2 only; its update is skipped on the device
            out = attrs.evolve(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(DINOv2Objective, "forward", poisoned)
    # fetches at iterations 0 (the first) and 3 (log and checkpoint): found at 3
    cfg = tiny_config(8, "log_every=4", "checkpoint.every=4")
    with pytest.raises(TrainingDivergedError, match="diverged at iteration 2") as info:
        run_pretraining(cfg, tmp_path / "run", progress=False)
    assert "last good checkpoint: none" in str(info.value)
    assert ckpt.list_checkpoints(tmp_path / "run" / "checkpoints") == []
    assert calls["n"] == 4  # stopped at the first fetch after the bad step


def test_grad_checkpointing_and_compile_keys_are_wired(tiny_config):
    plain = build_parts(tiny_config(4), DistInfo())
    assert not plain.objective.student_backbone.grad_checkpointing
    parts = build_parts(
        tiny_config(4, "model.grad_checkpointing=2", "train.compile=true"), DistInfo()
    )
    student, teacher = parts.objective.student_backbone, parts.objective.teacher_backbone
    assert student.grad_checkpointing and student._grad_checkpointing_every == 2
    for backbone in (student, teacher):  # compiled in place (nn.Module.compile)
        assert all(blk._compiled_call_impl is not None for blk in backbone.blocks)
    # same weights either way: the keys change how, not what, is computed
    for (k, a), b in zip(
        plain.objective.state_dict().items(), parts.objective.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
