"""iBOTPatchLoss: the DINOv2 weighting written out, dense vs sparse forms, SK guard."""

from __future__ import annotations

import pytest
import torch
from tapct_ssl import ibot_mask_indices, iBOTPatchLoss


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, n, k = 3, 4, 5
    student = torch.randn(b, n, k, generator=g, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(b, n, k, generator=g, dtype=torch.float64), -1)
    masks = torch.tensor(
        [[True, False, True, True], [False, False, False, False], [False, True, False, False]]
    )
    return student, teacher, masks


def _expected(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> float:
    # per masked token CE(t, log_softmax(s / 0.1)), weight 1 / (masked tokens of its
    # image), summed, divided by the number of images (3, including the unmasked one)
    total = 0.0
    b, n, _ = student.shape
    for i in range(b):
        n_i = int(masks[i].sum())
        for j in range(n):
            if not masks[i, j]:
                continue
            x = student[i, j] / 0.1
            log_p = x - torch.log(torch.exp(x).sum())
            ce = -float((teacher[i, j] * log_p).sum())
            total += ce / n_i
    return total / b


def test_forward_matches_formula() -> None:
    s, t, m = _inputs()
    got = iBOTPatchLoss(5).double()(s, t, m)
    assert got.item() == pytest.approx(_expected(s, t, m), rel=1e-12)


def test_forward_masked_matches_formula_and_dense_form() -> None:
    s, t, m = _inputs(1)
    loss = iBOTPatchLoss(5).double()
    got = loss.forward_masked(s[m], t[m], m)  # default masks_weight
    assert got.item() == pytest.approx(_expected(s, t, m), rel=1e-12)
    torch.testing.assert_close(got, loss(s, t, m))


def test_forward_masked_with_a_mask_index() -> None:
    s, t, m = _inputs(2)
    loss = iBOTPatchLoss(5).double()
    index = ibot_mask_indices(m)
    torch.testing.assert_close(index.indices, m.flatten().nonzero().flatten())
    expected_w = (1.0 / m.sum(-1, keepdim=True).clamp(min=1).double()).expand_as(m)[m]
    torch.testing.assert_close(index.weights, expected_w)
    assert index.n_images == 3 and index.n_masked == int(m.sum())
    got = loss.forward_masked(s[m], t[m], index)
    assert got.item() == pytest.approx(_expected(s, t, m), rel=1e-12)
    with pytest.raises(ValueError, match="mask_index has 4 masked tokens for 5 rows"):
        loss.forward_masked(torch.cat([s[m], s[m][:1]]), torch.cat([t[m], t[m][:1]]), index)


def test_mask_index_validation() -> None:
    with pytest.raises(TypeError, match="bool"):
        ibot_mask_indices(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2B, N"):
        ibot_mask_indices(torch.zeros(2, 3, 4, dtype=torch.bool))
    empty = ibot_mask_indices(torch.zeros(2, 3, dtype=torch.bool))
    assert empty.n_masked == 0 and empty.weights.dtype == torch.float64


def test_patch_center_update() -> None:
    loss = iBOTPatchLoss(3, center_momentum=0.5).double()
    z1 = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    z2 = torch.tensor([[3.0, 2.0, 1.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    loss.update_center(z1)
    loss.update_center(torch.zeros(0, 3, dtype=torch.float64))  # a micro-batch with no mask
    loss.update_center(z2)
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64))
    loss.update_center(torch.zeros(0, 3, dtype=torch.float64))
    loss.apply_center_update()  # no masked token anywhere: center kept
    torch.testing.assert_close(loss.center, torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64))


def test_sinkhorn_knopp_single_process_and_count(gloo_group: None) -> None:
    z = torch.randn(10, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = iBOTPatchLoss(4).double()
    q = loss.sinkhorn_knopp_teacher(z, 0.1, n_masked_patches_tensor=torch.tensor([10]))
    torch.testing.assert_close(q.sum(1), torch.ones(10, dtype=torch.float64))
    torch.testing.assert_close(q, loss.sinkhorn_knopp_teacher(z, 0.1))


def test_sinkhorn_knopp_without_process_group() -> None:
    # DINOv2 calls dist.all_reduce unguarded here; a plain single-process call must work
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(4))
    q = iBOTPatchLoss(4).sinkhorn_knopp_teacher(z, 0.1, torch.tensor(7))
    torch.testing.assert_close(q.sum(1), torch.ones(7))
    empty = iBOTPatchLoss(4).sinkhorn_knopp_teacher(torch.zeros(0, 4), 0.1)
    assert empty.shape == (0, 4)


def test_shape_validation() -> None:
    loss = iBOTPatchLoss(5)
    with pytest.raises(ValueError, match="student_masks_flat"):
        loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(M, 5\)"):
        loss.forward_masked(
            torch.zeros(4, 5), torch.zeros(3, 5), torch.ones(1, 4, dtype=torch.bool)
        )
