"""Metrics logger, atomic outputs, batch sampler, seeds, error helpers."""

from __future__ import annotations

import json

import pytest
from tapct_app.errors import UserError, one_line, user_errors_from
from tapct_app.outputs import atomic_output_dir
from tapct_app.train.data import IterationBatchSampler, derive_seed
from tapct_app.train.metrics import MetricsLogger, plot_loss_curve, read_metrics


def test_metrics_logger_truncates_on_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for it in range(6):
        log.log(it, {"loss": 10.0 - it, "lr": 0.1})
    log.close()
    log = MetricsLogger(tmp_path, resume_from=4, tensorboard=False)
    log.log(4, {"loss": 1.0})
    log.close()
    its = [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert its == [0, 1, 2, 3, 4]
    png = plot_loss_curve(read_metrics(tmp_path / "metrics.jsonl"), tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_metrics_skips_torn_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(json.dumps({"iteration": 0, "loss": 1.0}) + "\n{\"iteration\": 1, \"lo")
    assert read_metrics(f) == [{"iteration": 0, "loss": 1.0}]


def test_atomic_output_dir_publishes_on_success_and_cleans_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "fail") as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_output_dir(out) as tmp:  # existing folder: entries replaced
        (tmp / "a.txt").write_text("2")
    assert (out / "a.txt").read_text() == "2"


def test_sampler_ddp_layout_equals_accumulation():
    kw = {"start_iteration": 2, "end_iteration": 4, "samples_seen": 100, "batch_size": 3}
    single = list(IterationBatchSampler(**kw, accumulation_steps=2, rank=0, world_size=1))
    r0 = list(IterationBatchSampler(**kw, accumulation_steps=1, rank=0, world_size=2))
    r1 = list(IterationBatchSampler(**kw, accumulation_steps=1, rank=1, world_size=2))
    assert single == [r0[0], r1[0], r0[1], r1[1]]
    assert single[0] == [100, 101, 102] and single[-1] == [109, 110, 111]


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, i, s) for i in range(20) for s in range(4)}) == 80
    assert 0 <= derive_seed("x") < 2**63


def test_user_errors_from_makes_one_line_with_path(tmp_path):
    p = tmp_path / "scan.nii.gz"
    with pytest.raises(UserError) as info, user_errors_from(p):
        raise ValueError(f"{p}: corrupt\n header")
    assert str(info.value) == f"{p}: corrupt header"
    with pytest.raises(UserError, match="no such file or directory"), user_errors_from(p):
        raise FileNotFoundError(p)
    assert one_line(RuntimeError()) == "RuntimeError"
