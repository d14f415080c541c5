"""``update(momentum, skip=...)``: a non-finite step leaves centers and teacher untouched."""

from __future__ import annotations

import torch
from tapct_ssl import DINOLoss, update_ema
from torch import nn


def test_update_ema_skip_keeps_teacher_exactly_and_otherwise_matches() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    update_ema(teacher, student, 0.9, skip=torch.tensor(True))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    reference = nn.Linear(4, 3)
    reference.load_state_dict(before)
    update_ema(reference, student, 0.9)
    update_ema(teacher, student, 0.9, skip=torch.tensor(False))
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, reference.state_dict()[k], rtol=0, atol=1e-7)


def test_center_update_skip_drops_a_nan_batch() -> None:
    loss = DINOLoss(5, center_momentum=0.9)
    loss.update_center(torch.randn(3, 5))
    loss.apply_center_update()
    center = loss.center.clone()
    loss.update_center(torch.full((3, 5), float("nan")))
    loss.apply_center_update(skip=torch.tensor(True))
    assert torch.equal(loss.center, center) and not loss.has_pending_update
    loss.update_center(torch.ones(3, 5))
    loss.apply_center_update(skip=torch.tensor(False))
    torch.testing.assert_close(loss.center, 0.9 * center + 0.1)
