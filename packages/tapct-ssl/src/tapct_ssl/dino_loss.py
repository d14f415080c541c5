"""DINO cross-entropy on cls-token prototypes.

Reference: Caron et al. 2021 (DINO); DINOv2, dinov2/loss/dino_clstoken_loss.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tapct_ssl._teacher_targets import TeacherTargets, check_temperature, sinkhorn_knopp
from tapct_ssl.cross_entropy import soft_cross_entropy


class DINOLoss(TeacherTargets):
    """DINO loss with teacher centering or Sinkhorn-Knopp targets.

    ``forward`` returns, as DINOv2 does, ``sum_{s, t} -mean_b sum_k t[b, k] log_softmax(s
    / student_temp)[b, k]`` over every (student, teacher) pair of the two lists: a sum of
    batch-mean cross-entropies. It is computed with
    :func:`~tapct_ssl.cross_entropy.soft_cross_entropy` (row chunks, no full float32
    logits kept for backward), once per student view against the sum of the teacher
    views (the cross-entropy is linear in the target). Normalising by the number of
    pairs is the caller's job (``DINOv2Objective`` divides by 18 for 2 global + 8 local
    crops).

    Center protocol: ``softmax_center_teacher`` reads the center, ``update_center``
    accumulates teacher logits, ``apply_center_update`` applies the EMA once per optimizer
    step (DINOv2 applies it in the next ``softmax_center_teacher``; here it is explicit so
    gradient accumulation matches one large batch).

    Args:
        out_dim: K, number of prototypes (paper: 65,536).
        student_temp: student temperature (DINOv2: 0.1).
        center_momentum: center EMA momentum (DINOv2: 0.9).

    Raises:
        TypeError: ``out_dim`` is not an int.
        ValueError: ``out_dim < 1``, ``student_temp <= 0`` or momentum outside [0, 1].

    Attributes:
        center: ``(1, K)`` float32 buffer (saved in the state dict).
    """

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__(out_dim, student_temp, center_momentum)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp teacher targets (SwAV), B = the global batch over all processes.

        Args:
            teacher_output: ``(B_local, K)`` teacher logits.
            teacher_temp: tau > 0.
            n_iterations: row/column normalisation rounds (DINOv2: 3).

        Returns:
            ``(B_local, K)`` float32 (or float64) targets; each row sums to 1 and, over
            all processes, each prototype receives ``B / K`` mass.

        Raises:
            ValueError: wrong shape, ``teacher_temp <= 0`` or ``n_iterations < 1``.
        """
        self._check_logits("teacher_output", teacher_output)
        tau = check_temperature("teacher_temp", teacher_temp)
        if n_iterations < 1:
            raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
        count = torch.tensor(teacher_output.shape[0] * 1.0, device=teacher_output.device)
        # B = local batch summed over processes (DINOv2: local batch x world size).
        return sinkhorn_knopp(teacher_output, tau, n_iterations, count)

    def forward(
        self,
        student_output_list: Sequence[torch.Tensor],
        teacher_out_softmaxed_centered_list: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Sum over all (student, teacher) pairs of the batch-mean cross-entropy.

        Args:
            student_output_list: views of ``(B, K)`` student logits.
            teacher_out_softmaxed_centered_list: views of ``(B, K)`` teacher targets
                (from ``softmax_center_teacher`` or ``sinkhorn_knopp_teacher``).

        Returns:
            Scalar loss (float32, or float64 for float64 inputs).

        Raises:
            ValueError: an empty list, or shapes that differ.
        """
        if len(student_output_list) == 0 or len(teacher_out_softmaxed_centered_list) == 0:
            raise ValueError(
                "DINOLoss needs at least one student and one teacher view, got "
                f"{len(student_output_list)} and {len(teacher_out_softmaxed_centered_list)}"
            )
        shape = tuple(teacher_out_softmaxed_centered_list[0].shape)
        for t in teacher_out_softmaxed_centered_list:
            if tuple(t.shape) != shape:
                raise ValueError(f"teacher views differ in shape: {tuple(t.shape)} vs {shape}")
        # the cross-entropy is linear in the target: one pass per student view with the
        # sum of the teacher views (sum over pairs of the batch-mean cross-entropies)
        teacher_sum = torch.stack(list(teacher_out_softmaxed_centered_list)).sum(dim=0)
        terms: list[torch.Tensor] = []
        for s in student_output_list:
            if tuple(s.shape) != shape or len(shape) != 2 or shape[-1] != self.out_dim:
                raise ValueError(
                    f"student view {tuple(s.shape)} and teacher view {shape} must both be "
                    f"(B, {self.out_dim})"
                )
            terms.append(soft_cross_entropy(s, teacher_sum, self.student_temp).mean())
        return torch.stack(terms).sum()
