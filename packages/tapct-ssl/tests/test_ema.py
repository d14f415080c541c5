"""update_ema: momentum 0 copies, 1 keeps, the formula in between, wrapped students."""

from __future__ import annotations

import copy

import pytest
import torch
from tapct_ssl import update_ema
from torch import nn


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    return teacher, student


def test_momentum_zero_copies_one_keeps() -> None:
    teacher, student = _pair()
    before = copy.deepcopy(teacher.state_dict())
    update_ema(teacher, student, 1.0)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    update_ema(teacher, student, 0.0)
    for (_, t), (_, s) in zip(teacher.named_parameters(), student.named_parameters()):
        assert torch.equal(t, s)


def test_formula_and_wrapped_student() -> None:
    teacher, student = _pair()
    t0 = [p.detach().clone() for p in teacher.parameters()]
    wrapped = nn.Module()
    wrapped.module = student  # DDP-style "module." prefix
    update_ema(teacher, wrapped, 0.9)
    for t, t_before, s in zip(teacher.parameters(), t0, student.parameters()):
        torch.testing.assert_close(t, 0.9 * t_before + 0.1 * s)
        assert not t.requires_grad or t.grad is None


def test_errors() -> None:
    teacher, student = _pair()
    with pytest.raises(ValueError, match="momentum"):
        update_ema(teacher, student, 1.1)
    with pytest.raises(ValueError, match="differ"):
        update_ema(teacher, nn.Linear(4, 3), 0.5)
