"""tapct_ssl's objective on tapct_vit3d's ViT (the two packages together, as the app uses them).

Moved out of ``packages/tapct-ssl/tests``: a package's own tests import no other package of
the workspace, so that each package's tests run in a venv holding that package alone.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tapct_ssl import DINOv2Objective, DINOv2ObjectiveConfig
from torch import nn

tapct_vit3d = pytest.importorskip("tapct_vit3d")

K = 32
SMALL = DINOv2ObjectiveConfig(
    dino_head_n_prototypes=K,
    dino_head_hidden_dim=24,
    dino_head_bottleneck_dim=8,
    ibot_head_n_prototypes=K + 8,
    ibot_head_hidden_dim=24,
    ibot_head_bottleneck_dim=8,
)


def collate(global_crops, local_crops, masks):
    """Crop-major batch ``(global_crops, local_crops, masks)`` from per-crop tensors."""
    return (
        torch.cat(list(global_crops)),
        torch.cat(list(local_crops)) if local_crops else None,
        torch.cat(list(masks)),
    )


def _capture(module: nn.Module, store: list[torch.Tensor]):
    return module.register_forward_hook(lambda m, i, o: store.append(o.detach()))


def test_one_step_on_tapct_vit3d() -> None:
    torch.manual_seed(0)
    backbone = tapct_vit3d.create_model("tap_nano_3d")
    objective = DINOv2Objective(backbone, SMALL)
    n_images, grid = 2, (3, 4, 4)
    gen = torch.Generator().manual_seed(0)
    globals_ = [torch.randn(n_images, 1, 12, 32, 32, generator=gen) for _ in range(2)]
    locals_ = [torch.randn(n_images, 1, 12, 16, 16, generator=gen) for _ in range(8)]
    n_tokens = grid[0] * grid[1] * grid[2]
    masks = [torch.rand(n_images, n_tokens, generator=gen) < 0.3 for _ in range(2)]

    batch = collate(globals_, locals_, masks)
    teacher_before = copy.deepcopy(objective.teacher.state_dict())
    student_before = copy.deepcopy(objective.student.state_dict())
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)

    out = objective(*batch, teacher_temp=0.04)
    assert all(torch.isfinite(v).all() for _, v in out)
    assert out.ibot_loss > 0 and out.dino_local_crops_loss > 0
    out.loss.backward()
    assert all(p.grad is not None for p in objective.student.parameters())
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert all(
        torch.equal(v, teacher_before[k]) for k, v in objective.teacher.state_dict().items()
    )  # the forward/backward/step left the teacher alone
    changed = [
        k
        for k, v in objective.student.state_dict().items()
        if not torch.equal(v, student_before[k])
    ]
    assert "backbone.blocks.0.attn.qkv.weight" in changed and "dino_head.mlp.0.weight" in changed

    objective.update(momentum=0.9)
    student_after = dict(objective.student.named_parameters())
    for name, t in objective.teacher.named_parameters():
        torch.testing.assert_close(t, 0.9 * teacher_before[name] + 0.1 * student_after[name])
    assert objective.dino_loss.center.abs().sum() > 0  # center moved once


def test_teacher_runs_without_drop_path_on_tapct_vit3d() -> None:
    """The student may use stochastic depth; the teacher (eval mode) is deterministic."""
    torch.manual_seed(0)
    objective = DINOv2Objective(tapct_vit3d.create_model("tap_nano_3d", drop_path_rate=0.5), SMALL)
    objective.train()
    gen = torch.Generator().manual_seed(1)
    globals_ = [torch.randn(2, 1, 12, 32, 32, generator=gen) for _ in range(2)]
    masks = [torch.zeros(2, 48, dtype=torch.bool) for _ in range(2)]
    batch = collate(globals_, [], masks)
    teacher_out: list[torch.Tensor] = []
    student_out: list[torch.Tensor] = []
    hooks = [
        _capture(objective.teacher["dino_head"], teacher_out),
        _capture(objective.student["dino_head"], student_out),
    ]
    for _ in range(2):
        objective(*batch, teacher_temp=0.04)
    for h in hooks:
        h.remove()
    assert torch.equal(teacher_out[0], teacher_out[1])
    assert not torch.equal(student_out[0], student_out[1])  # drop path active in the student
