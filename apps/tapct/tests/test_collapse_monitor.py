"""Collapse monitors in the training log, and a collapse provoked on purpose."""

from __future__ import annotations

import io
import json
import math

from rich.console import Console
from tapct_app.train.loop import run_pretraining

MONITORS = ("teacher_entropy", "teacher_batch_entropy", "cls_std", "cls_effective_rank")


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_uniform_collapse_is_warned(tiny_config, tmp_path):
    # A teacher temperature of 50 makes every target the uniform distribution over the
    # K = 256 prototypes from the first step: the DINO term is then log K whatever the
    # student does, the textbook uniform collapse (Caron et al. 2021, Fig. 7).
    cfg = tiny_config(
        3,
        "objective.centering=centering",
        "optim.warmup_teacher_temp=50",
        "optim.teacher_temp=50",
        "optim.warmup_iters=0",
    )
    out = io.StringIO()
    run_pretraining(cfg, tmp_path / "run", console=Console(file=out, width=300), progress=False)
    text = out.getvalue()
    assert "tapct: warning: iteration 0: teacher targets are near uniform" in text
    assert "optim.warmup_iters" in text and "sinkhorn_knopp" in text
    # Once per kind, not at every logged step.
    assert text.count("near uniform") == 1
    records = _records(tmp_path / "run")
    for r in records:
        assert r["teacher_entropy"] > 0.999 * math.log(256)


def test_monitors_are_logged(tiny_config, tmp_path):
    cfg = tiny_config(3)
    run_pretraining(cfg, tmp_path / "run", progress=False)
    records = _records(tmp_path / "run")
    assert [r["iteration"] for r in records] == [0, 1, 2]
    n_rows = 2 * 2  # 2 global crops x batch 2 teacher cls tokens per step
    for r in records:
        assert set(MONITORS) <= set(r)
        assert 0 <= r["teacher_entropy"] <= math.log(256) + 1e-4
        assert 0 <= r["teacher_batch_entropy"] <= math.log(256) + 1e-4
        assert r["cls_std"] > 0
        assert 1.0 <= r["cls_effective_rank"] <= n_rows + 1e-4


def test_hook_is_quiet_during_the_warm_up():
    from tapct_app.train.loop import CollapseHook

    out = io.StringIO()
    hook = CollapseHook(Console(file=out, width=300), 256, 48, 4, quiet_until=10)
    collapsed = {"teacher_entropy": math.log(256), "cls_std": 0.0, "cls_effective_rank": 1.0}
    hook.on_log(9, collapsed)
    assert out.getvalue() == "" and hook.lines == []
    hook.on_log(10, collapsed)
    hook.on_log(11, collapsed)
    assert len(hook.lines) == 3  # three kinds, each said once
    assert all(line.startswith("tapct: warning: iteration 10:") for line in hook.lines)
