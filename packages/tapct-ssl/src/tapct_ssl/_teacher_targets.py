"""Teacher targets shared by the DINO and iBOT losses (private).

Both losses turn teacher logits into target distributions the same way: softmax after
subtracting a running center (DINO's centering), or Sinkhorn-Knopp normalisation
(SwAV). This base class holds the center and its pending statistics.

The center update is split in two, so that gradient accumulation equals one large batch:
``update_center`` only *accumulates* the sum and count of teacher logits, and
``apply_center_update`` (called once per optimizer step) all-reduces them and applies the
EMA. DINOv2 (dinov2/loss/dino_clstoken_loss.py) does the same split, but applies the
pending update lazily inside the next ``softmax_center_teacher`` call, i.e. once per
micro-batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tapct_ssl._distributed import all_reduce_max_, all_reduce_sum_
from tapct_ssl._precision import at_least_float32, autocast_disabled


def _check_unit_interval(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def check_temperature(name: str, value: float) -> float:
    """Return ``value`` as a float, raising ValueError unless it is > 0."""
    if not float(value) > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def _all_reduce_logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` along ``dim`` over this process' entries and every other process'.

    A stable two-collective form: the all-reduced maximum, then the all-reduced sum of
    ``exp(x - max)``. Empty local entries contribute nothing; a slot that is ``-inf``
    everywhere gives ``-inf``.
    """
    if x.shape[dim] > 0:
        top = x.amax(dim=dim, keepdim=True)
    else:
        shape = list(x.shape)
        shape[dim] = 1
        top = x.new_full(shape, float("-inf"))
    top = all_reduce_max_(top.detach().clone())
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = all_reduce_sum_(torch.exp(x - top).sum(dim=dim, keepdim=True))
    return torch.log(total) + top


def sinkhorn_knopp(
    teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int, n_samples: torch.Tensor
) -> torch.Tensor:
    """Sinkhorn-Knopp targets over all processes, in the log domain (float32 or float64).

    SwAV/DINOv2's algorithm: ``Q = exp(z / tau)^T`` (K x B) scaled to sum 1, then
    ``n_iterations`` times its rows are scaled to sum ``1 / K`` and its columns to sum
    ``1 / B``; finally ``Q * B`` so every sample's target sums to 1. Row sums are
    all-reduced, so B counts the samples of every process (``n_samples`` all-reduced).

    Every scaling is done on ``log Q`` with ``logsumexp``, so no entry underflows before
    it is normalised: DINOv2's form (and this function before) subtracts one global
    maximum before ``exp``, which zeroes every other sample's targets once logits differ
    by more than about 88 tau in float32 (teacher temperature 0.04: a gap of 3.5;
    dinov2#360). Where that form does not underflow the two are equal up to rounding
    (the initial scaling to sum 1 is a constant that the first row scaling cancels, so it
    is skipped). Collectives are guarded: none without ``torch.distributed``.

    Args:
        teacher_output: ``(B_local, K)`` teacher logits (``B_local`` may be 0).
        teacher_temp: tau > 0.
        n_iterations: number of row/column normalisation rounds (DINOv2: 3).
        n_samples: scalar tensor, this process' count to all-reduce into B.

    Returns:
        ``(B_local, K)`` targets, each row summing to 1.
    """
    with autocast_disabled(teacher_output.device):
        log_q = (at_least_float32(teacher_output) / teacher_temp).t()  # (K, B_local)
        n_prototypes = log_q.shape[0]
        total = all_reduce_sum_(n_samples.to(log_q.dtype).clone())
        log_k, log_b = math.log(n_prototypes), torch.log(total)
        for _ in range(n_iterations):
            log_q = log_q - (_all_reduce_logsumexp(log_q, dim=1) + log_k)  # rows: 1 / K
            log_q = log_q - (torch.logsumexp(log_q, dim=0, keepdim=True) + log_b)  # cols: 1/B
        return torch.exp(log_q + log_b).t()


class TeacherTargets(nn.Module):
    """Center state and teacher-target helpers of DINO and iBOT (private base).

    Args:
        out_dim: K, number of prototypes.
        student_temp: student softmax temperature (> 0).
        center_momentum: EMA momentum of the center, in [0, 1].

    Raises:
        TypeError: ``out_dim`` is not an int.
        ValueError: ``out_dim < 1``, a temperature <= 0 or a momentum outside [0, 1].
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, student_temp: float, center_momentum: float) -> None:
        super().__init__()
        if isinstance(out_dim, bool) or not isinstance(out_dim, int):
            raise TypeError(f"out_dim must be an int, got {out_dim!r}")
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        self.out_dim = out_dim
        self.student_temp = check_temperature("student_temp", student_temp)
        self.center_momentum = _check_unit_interval("center_momentum", center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))
        # Pending statistics are plain attributes, not buffers: DDP's buffer broadcast
        # must not overwrite one process' partial sums with another's.
        self._pending_sum: torch.Tensor | None = None
        self._pending_count: torch.Tensor | None = None

    def _check_logits(self, name: str, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[-1] != self.out_dim:
            raise ValueError(f"{name} must have shape (B, {self.out_dim}), got {tuple(x.shape)}")

    @torch.no_grad()
    def softmax_center_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """Centered, sharpened teacher distribution ``softmax((z - c) / tau)``.

        Computed in float32 (float64 input stays float64) with autocast off; no gradient.
        Does not change the center (see ``update_center`` / ``apply_center_update``).

        Args:
            teacher_output: ``(B, K)`` teacher logits.
            teacher_temp: tau > 0 (paper: 0.04 -> 0.07).

        Returns:
            ``(B, K)`` probabilities, rows summing to 1.

        Raises:
            ValueError: wrong shape or ``teacher_temp <= 0``.
        """
        self._check_logits("teacher_output", teacher_output)
        tau = check_temperature("teacher_temp", teacher_temp)
        with autocast_disabled(teacher_output.device):
            z = at_least_float32(teacher_output)
            return F.softmax((z - self.center.to(z.dtype)) / tau, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """Accumulate teacher logits for the next center update (no collective here).

        Call once per micro-batch; the center itself changes only in
        ``apply_center_update``, so every micro-batch of an optimizer step sees the same
        center and the update uses the mean over all of them.

        Args:
            teacher_output: ``(B, K)`` teacher logits (``B`` may be 0).

        Raises:
            ValueError: wrong shape.
        """
        self._check_logits("teacher_output", teacher_output)
        z = at_least_float32(teacher_output.detach())
        batch_sum = z.sum(dim=0)  # (K,)
        count = torch.tensor(float(z.shape[0]), device=z.device, dtype=z.dtype)
        if self._pending_sum is None or self._pending_count is None:
            self._pending_sum, self._pending_count = batch_sum, count
        else:
            self._pending_sum = self._pending_sum + batch_sum.to(self._pending_sum.dtype)
            self._pending_count = self._pending_count + count.to(self._pending_count.dtype)

    @torch.no_grad()
    def apply_center_update(self, skip: torch.Tensor | None = None) -> None:
        """Apply ``c <- m c + (1 - m) mean(z)`` with the accumulated logits.

        The sum and the count are all-reduced in one collective when
        ``torch.distributed`` is initialised, so the mean runs over every process'
        teacher logits since the last call. No-op when nothing is pending; when the
        global count is 0 (e.g. no masked patch anywhere) the center is kept.
        Every process must call it the same number of times.

        Args:
            skip: optional 0-dim bool tensor: where True the center is kept exactly
                (and the pending statistics dropped), decided on the device without a
                host sync (a step whose loss or gradient was not finite).
        """
        if self._pending_sum is None or self._pending_count is None:
            return
        stats = torch.cat([self._pending_sum, self._pending_count.view(1)])
        stats = all_reduce_sum_(stats)
        self._pending_sum, self._pending_count = None, None
        total = stats[-1]
        batch_center = (stats[:-1] / total.clamp_min(1.0)).to(self.center.dtype)
        # no host sync: with a global count of 0 the momentum becomes 1 (center kept)
        momentum = torch.where(total > 0, self.center_momentum, 1.0).to(self.center.dtype)
        if skip is None:
            self.center.mul_(momentum).add_((1.0 - momentum) * batch_center.view_as(self.center))
            return
        new = self.center * momentum + (1.0 - momentum) * batch_center.view_as(self.center)
        self.center.copy_(torch.where(skip, self.center, new))  # a NaN batch never leaks in

    @property
    def has_pending_update(self) -> bool:
        """Whether ``update_center`` was called since the last ``apply_center_update``."""
        return self._pending_sum is not None
