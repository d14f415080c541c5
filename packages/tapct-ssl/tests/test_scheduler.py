"""CosineScheduler and the paper's schedules (Table 7)."""

from __future__ import annotations

import math

import attrs
import pytest
from tapct_ssl import CosineScheduler, OptimConfig, build_schedulers


def test_values_at_start_end_of_warmup_end_and_past_end() -> None:
    s = CosineScheduler(1.0, 0.1, total_iters=110, warmup_iters=10, start_warmup_value=0.0)
    assert len(s) == 110
    assert s[0] == 0.0
    assert s[5] == pytest.approx(5 / 9)  # linspace(0, 1, 10)[5]
    assert s[9] == pytest.approx(1.0)  # last warmup iteration reaches the base value
    assert s[10] == pytest.approx(1.0)  # cosine starts at base
    assert s[60] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 50 / 100)))
    assert s[109] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 99 / 100)))
    assert s[110] == 0.1 and s[10**9] == 0.1  # past the end: final value


def test_warmup_zero_and_freeze() -> None:
    s = CosineScheduler(2.0, 0.0, total_iters=4)
    assert [s[i] for i in range(5)] == pytest.approx(
        [2.0, 1.0 + math.sqrt(0.5), 1.0, 1.0 - math.sqrt(0.5), 0.0]
    )
    f = CosineScheduler(1.0, 0.0, total_iters=6, warmup_iters=2, freeze_iters=2)
    assert [f[i] for i in range(4)] == pytest.approx([0.0, 0.0, 0.0, 1.0])
    one = CosineScheduler(1.0, 0.5, total_iters=3, warmup_iters=1, start_warmup_value=0.2)
    assert one[0] == pytest.approx(0.2)  # numpy.linspace(0.2, 1.0, 1) == [0.2], as DINOv2


def test_constant_schedule_is_linear_warmup_then_constant() -> None:
    # DINOv2's teacher temperature: base == final, total == warmup
    t = CosineScheduler(0.07, 0.07, total_iters=30, warmup_iters=30, start_warmup_value=0.04)
    assert t[0] == pytest.approx(0.04)
    assert t[29] == pytest.approx(0.07)
    assert t[30] == pytest.approx(0.07) and t[1000] == pytest.approx(0.07)
    empty = CosineScheduler(0.07, 0.07, total_iters=0)
    assert empty[0] == 0.07


def test_validation() -> None:
    with pytest.raises(ValueError, match="exceed total_iters"):
        CosineScheduler(1.0, 0.0, total_iters=5, warmup_iters=4, freeze_iters=2)
    with pytest.raises(ValueError, match="warmup_iters"):
        CosineScheduler(1.0, 0.0, total_iters=5, warmup_iters=-1)
    s = CosineScheduler(1.0, 0.0, total_iters=5)
    with pytest.raises(ValueError, match="-1"):
        s[-1]
    with pytest.raises(TypeError):
        s[1.5]  # type: ignore[index]


def test_paper_schedules() -> None:
    cfg = OptimConfig()
    sched = build_schedulers(cfg, global_batch_size=2048)
    peak = 0.0035 * math.sqrt(2048 / 1024)
    assert sched.lr[0] == 0.0
    assert sched.lr[24_999] == pytest.approx(peak)
    assert sched.lr[125_000] == pytest.approx(1e-6)
    assert sched.weight_decay[0] == pytest.approx(0.04)
    assert sched.weight_decay[125_000] == pytest.approx(0.4)
    assert sched.momentum[0] == pytest.approx(0.992)
    assert sched.momentum[200_000] == pytest.approx(1.0)
    assert sched.teacher_temp[0] == pytest.approx(0.04)
    assert sched.teacher_temp[37_499] == pytest.approx(0.07)
    assert sched.teacher_temp[37_500] == pytest.approx(0.07)
    assert sched.teacher_temp[18_750] == pytest.approx(0.04 + 0.03 * 18_750 / 37_499)
    assert sched.is_last_layer_frozen(1_249) and not sched.is_last_layer_frozen(1_250)
    assert cfg.clip_grad == 3.0 and cfg.layerwise_decay == 0.9 and cfg.patch_embed_lr_mult == 0.2


def test_short_run_keeps_the_proportions() -> None:
    sched = build_schedulers(OptimConfig(), total_iters=1000, global_batch_size=1024)
    assert sched.lr.warmup_iters == 200
    assert sched.teacher_temp.total_iters == 300
    assert sched.freeze_last_layer_iters == 10
    assert sched.lr[199] == pytest.approx(0.0035)
    assert sched.lr[1000] == pytest.approx(1e-6)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="base_lr"):
        OptimConfig(base_lr=0.0)
    with pytest.raises(ValueError, match="warmup_iters"):
        OptimConfig(
            total_iters=10, warmup_iters=20, warmup_teacher_temp_iters=5, freeze_last_layer_iters=1
        )
    with pytest.raises(ValueError, match="momentum_teacher"):
        OptimConfig(momentum_teacher=1.5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        OptimConfig().base_lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="global_batch_size"):
        OptimConfig().scaled_lr(0)
