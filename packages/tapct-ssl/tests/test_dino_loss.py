"""DINOLoss: formulas written out, Sinkhorn-Knopp sums, and parity with lightly."""

from __future__ import annotations

import math

import pytest
import torch
from lightly.loss import DINOLoss as LightlyDINOLoss
from tapct_ssl import DINOLoss, dino_crop_terms


def _log_softmax_by_hand(x: torch.Tensor) -> torch.Tensor:
    # log p_k = x_k - log sum_j exp(x_j), written without torch's log_softmax
    return x - torch.log(torch.exp(x).sum(-1, keepdim=True))


def test_softmax_center_teacher_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64)
    loss = DINOLoss(7).double()
    loss.center.copy_(torch.randn(1, 7, generator=g, dtype=torch.float64))
    tau = 0.04
    e = torch.exp((z - loss.center) / tau)
    expected = e / e.sum(-1, keepdim=True)
    got = loss.softmax_center_teacher(z, tau)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(-1), torch.ones(5, dtype=torch.float64))


def test_softmax_center_teacher_is_float32_inside_bf16_autocast() -> None:
    z = torch.randn(4, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DINOLoss(6).softmax_center_teacher(z, 0.05)
    assert out.dtype == torch.float32


def test_forward_is_sum_over_pairs_of_batch_mean_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    students = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    teachers = [torch.softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), -1)] * 1
    teachers.append(torch.softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), -1))
    expected = 0.0
    for s in students:
        log_p = _log_softmax_by_hand(s / 0.1)
        for t in teachers:
            for b in range(3):
                expected += -sum(float(t[b, k] * log_p[b, k]) for k in range(5)) / 3
    got = DINOLoss(5).double()(students, teachers)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_forward_rejects_bad_shapes() -> None:
    loss = DINOLoss(5)
    with pytest.raises(ValueError, match="at least one"):
        loss([], [torch.zeros(2, 5)])
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        loss([torch.zeros(2, 4)], [torch.zeros(2, 5)])
    with pytest.raises(ValueError, match="student_temp"):
        DINOLoss(5, student_temp=0.0)
    with pytest.raises(ValueError, match="center_momentum"):
        DINOLoss(5, center_momentum=1.5)


def test_center_update_accumulates_then_applies_once() -> None:
    g = torch.Generator().manual_seed(2)
    loss = DINOLoss(4, center_momentum=0.9).double()
    c0 = torch.randn(1, 4, generator=g, dtype=torch.float64)
    loss.center.copy_(c0)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, 4, generator=g, dtype=torch.float64)
    loss.update_center(a)
    loss.update_center(b)
    torch.testing.assert_close(loss.center, c0)  # nothing applied yet
    assert loss.has_pending_update
    loss.apply_center_update()
    mean = torch.cat([a, b]).mean(0, keepdim=True)
    torch.testing.assert_close(loss.center, 0.9 * c0 + 0.1 * mean)
    assert not loss.has_pending_update
    loss.apply_center_update()  # nothing pending: no change
    torch.testing.assert_close(loss.center, 0.9 * c0 + 0.1 * mean)


def test_center_update_under_a_process_group(gloo_group: None) -> None:
    torch.manual_seed(3)
    z = torch.randn(6, 4)
    loss = DINOLoss(4)
    loss.update_center(z)
    loss.apply_center_update()  # all-reduce over 1 process
    torch.testing.assert_close(loss.center, 0.1 * z.mean(0, keepdim=True))


def _sinkhorn_reference(z: torch.Tensor, tau: float, n_iter: int) -> torch.Tensor:
    # DINOv2's algorithm (dinov2/loss/dino_clstoken_loss.py), single process, no shift
    q = torch.exp(z / tau).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(n_iter):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


@pytest.mark.parametrize("n_iter", [3, 200])
def test_sinkhorn_knopp_row_and_column_sums(n_iter: int) -> None:
    g = torch.Generator().manual_seed(4)
    b, k = 12, 6
    z = torch.randn(b, k, generator=g, dtype=torch.float64)
    q = DINOLoss(k).double().sinkhorn_knopp_teacher(z, 0.5, n_iterations=n_iter)
    # every sample's target sums to 1 (the last normalisation is over samples)
    torch.testing.assert_close(q.sum(1), torch.ones(b, dtype=torch.float64))
    # every prototype gets B / K of the mass (exact at convergence, close after 3 rounds)
    tol = 1e-9 if n_iter == 200 else 0.05
    torch.testing.assert_close(
        q.sum(0), torch.full((k,), b / k, dtype=torch.float64), atol=tol * b / k, rtol=0
    )
    torch.testing.assert_close(q, _sinkhorn_reference(z, 0.5, n_iter))


def test_sinkhorn_knopp_is_stable_for_large_logits() -> None:
    # exp(20 / 0.04) = exp(500) overflows float32: DINOv2's unshifted version gives NaN;
    # subtracting the global max is exact, so the float64 reference still agrees.
    z = 20.0 + 0.5 * torch.randn(6, 4, generator=torch.Generator().manual_seed(7))
    q = DINOLoss(4).sinkhorn_knopp_teacher(z, 0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(6))
    torch.testing.assert_close(q, _sinkhorn_reference(z.double(), 0.04, 3).float())


def _sinkhorn_global_max_float32(z: torch.Tensor, tau: float, n_iter: int) -> torch.Tensor:
    # the previous implementation: subtract the one global max, then exp (float32)
    logits = z.float() / tau
    q = torch.exp(logits - logits.amax()).t()
    k, b = q.shape
    q = q / q.sum()
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(n_iter):
        q = q / q.sum(dim=1, keepdim=True).clamp_min(tiny) / k
        q = q / q.sum(dim=0, keepdim=True).clamp_min(tiny) / b
    return (q * b).t()


def test_sinkhorn_knopp_log_domain_keeps_every_row_for_a_far_sample() -> None:
    """Issue 13: tau 0.04 and one sample's logits 6 above the rest (dinov2#360)."""
    g = torch.Generator().manual_seed(8)
    z = torch.randn(8, 16, generator=g)
    z[0] += 6.0
    old = _sinkhorn_global_max_float32(z, 0.04, 3)
    assert (old.sum(1)[1:] < 0.5).all()  # the old form loses every other sample
    q = DINOLoss(16).sinkhorn_knopp_teacher(z, 0.04)
    torch.testing.assert_close(q.sum(1), torch.ones(8))
    torch.testing.assert_close(q, _sinkhorn_reference(z.double(), 0.04, 3).float())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sinkhorn_knopp_equals_the_previous_form_where_that_was_right(seed: int) -> None:
    z = torch.randn(12, 32, generator=torch.Generator().manual_seed(seed))
    for tau in (0.04, 0.07, 0.5):
        old = _sinkhorn_global_max_float32(z, tau, 3)
        torch.testing.assert_close(old.sum(1), torch.ones(12))  # ordinary input: it was right
        torch.testing.assert_close(DINOLoss(32).sinkhorn_knopp_teacher(z, tau), old)


def test_sinkhorn_knopp_under_a_process_group(gloo_group: None) -> None:
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(5))
    q = DINOLoss(5).sinkhorn_knopp_teacher(z, 0.1)
    torch.testing.assert_close(q, _sinkhorn_reference(z.double(), 0.1, 3).float())


@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
def test_multi_crop_dino_terms_match_lightly(teacher_temp: float) -> None:
    """2 global + 8 local crops: our normalised terms == lightly.loss.DINOLoss.

    lightly takes ``teacher_out`` (global views) and ``student_out`` (all views, globals
    first), drops the pairs with the same view index and divides by pairs x batch; its
    forward centers with its own buffer and then updates it, so both start from the
    same non-zero center and we pass the temperature explicitly (no warmup schedule).
    """
    g = torch.Generator().manual_seed(6)
    b, k, n_local = 4, 32, 8
    teacher_logits = [torch.randn(b, k, generator=g) for _ in range(2)]
    student_global = [torch.randn(b, k, generator=g) for _ in range(2)]
    student_local = [torch.randn(b, k, generator=g) for _ in range(n_local)]
    center = torch.randn(1, k, generator=g) * 0.1

    ours = DINOLoss(k, student_temp=0.1, center_momentum=0.9)
    ours.center.copy_(center)
    targets = [ours.softmax_center_teacher(t, teacher_temp) for t in teacher_logits]
    local, glob = dino_crop_terms(ours, student_global, student_local, targets)

    theirs = LightlyDINOLoss(
        output_dim=k,
        warmup_teacher_temp=teacher_temp,
        teacher_temp=teacher_temp,
        student_temp=0.1,
        center_momentum=0.9,
    )
    theirs.center.copy_(center.view(1, 1, k))
    expected = theirs(teacher_logits, student_global + student_local, teacher_temp=teacher_temp)
    torch.testing.assert_close(local + glob, expected, rtol=1e-5, atol=1e-6)

    # the global term alone: 2 of the 18 pairs (student crop A vs teacher crop B)
    theirs_global = LightlyDINOLoss(output_dim=k, student_temp=0.1)
    theirs_global.center.copy_(center.view(1, 1, k))
    only_global = theirs_global(teacher_logits, student_global, teacher_temp=teacher_temp)
    torch.testing.assert_close(glob, only_global * 2 / 18, rtol=1e-5, atol=1e-6)

    # center update after the step: lightly updated in forward, we update explicitly
    ours.update_center(torch.cat(teacher_logits))
    ours.apply_center_update()
    torch.testing.assert_close(ours.center, theirs.center.view(1, k), rtol=1e-5, atol=1e-7)


def test_dino_crop_terms_counts_pairs() -> None:
    loss = DINOLoss(3)
    t = [torch.full((2, 3), 1 / 3)] * 2
    s_g = [torch.zeros(2, 3)] * 2
    s_l = [torch.zeros(2, 3)] * 8
    local, glob = dino_crop_terms(loss, s_g, s_l, t)
    # uniform student and teacher: every pair costs log(3); 16 + 2 pairs over 18
    assert local.item() == pytest.approx(16 / 18 * math.log(3), rel=1e-6)
    assert glob.item() == pytest.approx(2 / 18 * math.log(3), rel=1e-6)
    with pytest.raises(ValueError, match="2 global crops or at least 1 local"):
        dino_crop_terms(loss, s_g[:1], [], t[:1])
