"""apply_schedules and build_optimizer: the app never reads param-group keys itself."""

from __future__ import annotations

import pytest
import torch
from tapct_ssl import (
    DINOv2Objective,
    DINOv2ObjectiveConfig,
    OptimConfig,
    apply_schedules,
    build_optimizer,
    build_schedulers,
)

SMALL = DINOv2ObjectiveConfig(
    dino_head_n_prototypes=16,
    dino_head_hidden_dim=8,
    dino_head_bottleneck_dim=4,
    ibot_head_n_prototypes=16,
    ibot_head_hidden_dim=8,
    ibot_head_bottleneck_dim=4,
)


def test_apply_schedules_sets_lr_wd_and_freeze(tiny_backbone) -> None:
    objective = DINOv2Objective(tiny_backbone(), SMALL)
    cfg = OptimConfig(
        total_iters=100, warmup_iters=10, warmup_teacher_temp_iters=30, freeze_last_layer_iters=5
    )
    optimizer = build_optimizer(objective, cfg, "cpu")
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["fused"]
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in objective.student_parameters()}
    sched = build_schedulers(cfg, global_batch_size=1024)
    for it, frozen in ((3, True), (50, False), (10**6, False)):
        values = apply_schedules(optimizer, sched, it)
        assert values.last_layer_frozen is frozen
        assert (values.lr, values.momentum, values.teacher_temp) == (
            sched.lr[it],
            sched.momentum[it],
            sched.teacher_temp[it],
        )
        for g in optimizer.param_groups:
            want = 0.0 if frozen and g["is_last_layer"] else values.lr * g["lr_multiplier"]
            assert g["lr"] == pytest.approx(want)
            assert g["weight_decay"] == pytest.approx(values.weight_decay * g["wd_multiplier"])
    assert any(g["is_last_layer"] for g in optimizer.param_groups)


def test_build_optimizer_uses_fused_adamw_on_cuda(tiny_backbone) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    objective = DINOv2Objective(tiny_backbone(), SMALL).cuda()
    optimizer = build_optimizer(objective, OptimConfig(), "cuda")
    assert optimizer.defaults["fused"]
