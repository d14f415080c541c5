"""iBOT masked-patch cross-entropy.

Reference: Zhou et al. 2021 (iBOT); DINOv2, dinov2/loss/ibot_patch_loss.py.
"""

from __future__ import annotations

import torch

from tapct_ssl._teacher_targets import TeacherTargets, check_temperature, sinkhorn_knopp
from tapct_ssl.cross_entropy import soft_cross_entropy
from tapct_ssl.ibot_mask_index import ibot_mask_indices, iBOTMaskIndex


class iBOTPatchLoss(TeacherTargets):
    """iBOT loss on masked patch tokens, with its own center (or Sinkhorn-Knopp).

    Each masked token contributes ``CE(p_t, log_softmax(z_s / student_temp))`` weighted by
    ``1 / (number of masked tokens of its image)``; the weighted sum is divided by the
    number of images (masked or not). So every masked image weighs the same whatever its
    mask ratio, and images without a mask contribute 0 (DINOv2's weighting).

    Center protocol as in ``DINOLoss``: ``update_center`` accumulates (here the masked
    teacher tokens), ``apply_center_update`` applies once per optimizer step.

    Args:
        patch_out_dim: K, number of patch prototypes (paper: 65,536).
        student_temp: student temperature (DINOv2: 0.1).
        center_momentum: center EMA momentum (DINOv2: 0.9).

    Raises:
        TypeError: ``patch_out_dim`` is not an int.
        ValueError: ``patch_out_dim < 1``, ``student_temp <= 0`` or momentum outside [0, 1].

    Attributes:
        center: ``(1, K)`` float32 buffer (saved in the state dict).
    """

    def __init__(
        self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__(patch_out_dim, student_temp, center_momentum)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor | None = None,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets over the masked tokens of all processes.

        Unlike DINOv2, the all-reduce of the token count is skipped when
        ``torch.distributed`` is not initialised, so single-process runs work.

        Args:
            teacher_output: ``(M_local, K)`` teacher logits of the masked tokens.
            teacher_temp: tau > 0.
            n_masked_patches_tensor: this process' number of masked tokens (scalar or
                ``(1,)`` tensor); defaults to ``M_local``.
            n_iterations: row/column normalisation rounds (DINOv2: 3).

        Returns:
            ``(M_local, K)`` targets, each row summing to 1.

        Raises:
            ValueError: wrong shape, ``teacher_temp <= 0`` or ``n_iterations < 1``.
        """
        self._check_logits("teacher_output", teacher_output)
        tau = check_temperature("teacher_temp", teacher_temp)
        if n_iterations < 1:
            raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
        if n_masked_patches_tensor is None:
            count = torch.tensor(float(teacher_output.shape[0]), device=teacher_output.device)
        else:
            count = n_masked_patches_tensor.detach().reshape(()).to(teacher_output.device)
        return sinkhorn_knopp(teacher_output, tau, n_iterations, count)

    def forward(
        self,
        student_patch_tokens: torch.Tensor,
        teacher_patch_tokens: torch.Tensor,
        student_masks_flat: torch.Tensor,
    ) -> torch.Tensor:
        """Dense form: loss from all tokens, keeping the masked ones.

        Args:
            student_patch_tokens: ``(B, N, K)`` student logits.
            teacher_patch_tokens: ``(B, N, K)`` teacher targets.
            student_masks_flat: ``(B, N)`` bool, True where the student saw the mask token.

        Returns:
            Scalar: ``-mean_b [sum_n m[b,n] CE[b,n] / max(1, sum_n m[b,n])]``.

        Raises:
            ValueError: shapes that do not match.
        """
        if student_patch_tokens.shape != teacher_patch_tokens.shape or (
            student_patch_tokens.ndim != 3 or student_patch_tokens.shape[-1] != self.out_dim
        ):
            raise ValueError(
                f"student {tuple(student_patch_tokens.shape)} and teacher "
                f"{tuple(teacher_patch_tokens.shape)} patch tokens must both be (B, N, "
                f"{self.out_dim})"
            )
        if tuple(student_masks_flat.shape) != tuple(student_patch_tokens.shape[:2]):
            raise ValueError(
                f"student_masks_flat {tuple(student_masks_flat.shape)} must be (B, N) = "
                f"{tuple(student_patch_tokens.shape[:2])}"
            )
        b, n, k = student_patch_tokens.shape
        per_token = soft_cross_entropy(
            student_patch_tokens.reshape(b * n, k),
            teacher_patch_tokens.reshape(b * n, k),
            self.student_temp,
        ).view(b, n)  # (B, N), cross-entropy (positive)
        masks = student_masks_flat.to(per_token.dtype)
        per_image = (per_token * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1.0)  # (B,)
        return per_image.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        mask_index: iBOTMaskIndex | torch.Tensor,
    ) -> torch.Tensor:
        """Sparse form: loss from the masked tokens only (what the objective uses).

        Args:
            student_patch_tokens_masked: ``(M, K)`` student logits of the masked tokens,
                in the order of ``mask_index.indices``.
            teacher_patch_tokens_masked: ``(M, K)`` teacher targets for the same tokens.
            mask_index: the :class:`~tapct_ssl.iBOTMaskIndex` of the batch (weights
                ``1 / masked tokens of the image`` and the number of images), or the
                ``(2B, N)`` bool masks it is computed from (:func:`ibot_mask_indices`).

        Returns:
            Scalar: ``-sum_i w_i sum_k t[i,k] log_softmax(s / student_temp)[i,k] / 2B``.

        Raises:
            ValueError: shapes that do not match.
        """
        if student_patch_tokens_masked.shape != teacher_patch_tokens_masked.shape or (
            student_patch_tokens_masked.ndim != 2
            or student_patch_tokens_masked.shape[-1] != self.out_dim
        ):
            raise ValueError(
                f"student {tuple(student_patch_tokens_masked.shape)} and teacher "
                f"{tuple(teacher_patch_tokens_masked.shape)} masked tokens must both be "
                f"(M, {self.out_dim})"
            )
        if isinstance(mask_index, torch.Tensor):
            mask_index = ibot_mask_indices(mask_index)
        if mask_index.n_masked != student_patch_tokens_masked.shape[0]:
            raise ValueError(
                f"mask_index has {mask_index.n_masked} masked tokens for "
                f"{student_patch_tokens_masked.shape[0]} rows of logits"
            )
        per_token = soft_cross_entropy(
            student_patch_tokens_masked, teacher_patch_tokens_masked, self.student_temp
        )  # (M,)
        weighted = per_token * mask_index.weights.to(per_token.dtype)
        return weighted.sum() / mask_index.n_images
