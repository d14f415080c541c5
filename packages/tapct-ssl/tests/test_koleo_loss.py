"""KoLeoLoss against the estimator written out with loops."""

from __future__ import annotations

import math

import pytest
import torch
from tapct_ssl import KoLeoLoss


def _koleo_by_hand(x: torch.Tensor, eps: float = 1e-8) -> float:
    rows = [r / max(math.sqrt(float((r * r).sum())), eps) for r in x]
    total = 0.0
    for i, xi in enumerate(rows):
        best, best_j = -math.inf, -1
        for j, xj in enumerate(rows):
            if j != i and float((xi * xj).sum()) > best:
                best, best_j = float((xi * xj).sum()), j
        # torch.nn.PairwiseDistance adds eps to the difference (as DINOv2's pdist)
        d = math.sqrt(float(((xi - rows[best_j] + eps) ** 2).sum()))
        total += -math.log(d + eps)
    return total / len(rows)


def test_matches_formula() -> None:
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert KoLeoLoss()(x).item() == pytest.approx(_koleo_by_hand(x), rel=1e-10)


def test_known_value_on_orthogonal_vectors() -> None:
    # 4 orthonormal vectors: every nearest neighbour is at distance sqrt(2)
    x = torch.eye(4, dtype=torch.float64) * 3.0
    assert KoLeoLoss()(x).item() == pytest.approx(-math.log(math.sqrt(2.0)), rel=1e-6)


def test_spread_features_have_lower_loss() -> None:
    g = torch.Generator().manual_seed(1)
    clustered = torch.ones(8, 4) + 0.01 * torch.randn(8, 4, generator=g)
    spread = torch.randn(8, 4, generator=g)
    assert KoLeoLoss()(spread) < KoLeoLoss()(clustered)


def test_float32_inside_bf16_autocast_and_gradient() -> None:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2)).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = KoLeoLoss()(x)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


def test_single_sample_gives_zero_in_graph() -> None:
    x = torch.randn(1, 4, requires_grad=True)
    loss = KoLeoLoss()(x)
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(B, E\)"):
        KoLeoLoss()(torch.zeros(2, 3, 4))
