"""soft_cross_entropy: equal to the plain float32 expression (values and gradients)."""

from __future__ import annotations

import pytest
import torch
from tapct_ssl import DINOLoss, iBOTPatchLoss, soft_cross_entropy


def _plain(logits: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    # what DINOLoss / iBOTPatchLoss computed before: full float32 log-softmax
    z = logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
    return -(targets.to(z.dtype) * torch.log_softmax(z / tau, dim=-1)).sum(-1)


@pytest.mark.parametrize("chunk_rows", [None, 1, 3, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_match_the_plain_expression(chunk_rows, dtype) -> None:
    g = torch.Generator().manual_seed(0)
    m, k = 10, 300
    logits = (3 * torch.randn(m, k, generator=g)).to(dtype).requires_grad_()
    targets = torch.softmax(torch.randn(m, k, generator=g) / 0.04, dim=-1)
    targets[3] *= 2.0  # a sum of two teacher views is a valid target too
    weights = torch.rand(m, generator=g)
    got = soft_cross_entropy(logits, targets, 0.1, chunk_rows=chunk_rows)
    (got * weights).sum().backward()
    grad = logits.grad.clone()
    logits.grad = None
    want = _plain(logits, targets, 0.1)
    (want * weights).sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.float(), logits.grad.float(), rtol=1e-5, atol=1e-5)


def test_float64_stays_float64_and_validation() -> None:
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(4, 6, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(lambda a: soft_cross_entropy(a, t, 0.5, chunk_rows=3), (x,))
    with pytest.raises(ValueError, match="must both be"):
        soft_cross_entropy(x, t[:3], 0.1)
    with pytest.raises(ValueError, match="temperature"):
        soft_cross_entropy(x, t, 0.0)


def test_losses_equal_the_plain_losses_within_1e_5() -> None:
    g = torch.Generator().manual_seed(1)
    k = 2048
    student = [torch.randn(5, k, generator=g, requires_grad=True) for _ in range(3)]
    teacher = [torch.softmax(torch.randn(5, k, generator=g) / 0.04, -1) for _ in range(2)]
    got = DINOLoss(k)(student, teacher)
    want = sum(_plain(s, t, 0.1).mean() for s in student for t in teacher)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    masks = torch.rand(4, 6, generator=g) < 0.5
    s = torch.randn(4, 6, k, generator=g)
    t = torch.softmax(torch.randn(4, 6, k, generator=g), -1)
    ce = _plain(s, t, 0.1)
    want = ((ce * masks).sum(-1) / masks.sum(-1).clamp(min=1)).mean()
    torch.testing.assert_close(iBOTPatchLoss(k)(s, t, masks), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        iBOTPatchLoss(k).forward_masked(s[masks], t[masks], masks), want, rtol=1e-5, atol=1e-5
    )


def test_saved_for_backward_is_only_the_inputs() -> None:
    """No (M, K) float32 tensor is kept: bf16 logits + the targets, nothing else big."""
    m, k = 64, 4096
    logits = torch.randn(m, k).bfloat16().requires_grad_()
    targets = torch.softmax(torch.randn(m, k), -1)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        soft_cross_entropy(logits, targets, 0.1, chunk_rows=8).sum()
    big = [t for t in saved if t.numel() >= m * k]
    assert len(big) == 2
    assert {t.dtype for t in big} == {torch.bfloat16, torch.float32}
    assert sum(t.numel() * t.element_size() for t in saved) <= m * k * 6 + 1024
