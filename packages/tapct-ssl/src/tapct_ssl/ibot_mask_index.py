"""Masked-token indices and weights of iBOT: the one place they are computed.

``ibot_mask_indices`` turns the ``(2B, N)`` bool masks of the global crops into the flat
indices of the masked tokens and each token's weight ``1 / (masked tokens of its image)``.
It runs wherever the masks are: in a DataLoader worker on the CPU (so the training step
never calls ``nonzero``, a host sync on a GPU), or inside the objective when no index is
given. ``DINOv2Objective`` and ``iBOTPatchLoss.forward_masked`` both consume its record.

Reference: DINOv2, dinov2/data/collate.py (``mask_indices_list``, ``masks_weight``).
"""

from __future__ import annotations

import attrs
import torch

__all__ = ["iBOTMaskIndex", "ibot_mask_indices"]


@attrs.frozen
class iBOTMaskIndex:
    """Which tokens are masked, and how much each weighs in the iBOT loss.

    Attributes:
        indices: ``(M,)`` long, indices into the flattened ``(2B * N)`` patch tokens of
            the global crops, ascending (``masks.flatten().nonzero()`` order).
        weights: ``(M,)`` float64, ``1 / (number of masked tokens of the token's image)``;
            every masked image thus weighs 1 in total whatever its mask ratio (float64 so
            double-precision runs stay exact; the loss casts it to its own dtype, which
            gives the correctly rounded float32 ``1 / n``).
        n_images: ``2B``, the number of global-crop images (masked or not), the divisor
            of the iBOT loss.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    n_images: int

    @property
    def n_masked(self) -> int:
        """``M``, the number of masked tokens (from the shape: no device sync)."""
        return int(self.indices.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> iBOTMaskIndex:
        """Return the record with both tensors on ``device`` (e.g. after the DataLoader)."""
        return iBOTMaskIndex(
            self.indices.to(device, non_blocking=non_blocking),
            self.weights.to(device, non_blocking=non_blocking),
            self.n_images,
        )


def ibot_mask_indices(masks: torch.Tensor) -> iBOTMaskIndex:
    """Flat masked-token indices and their ``1 / n`` weights from the iBOT masks.

    Call it where the masks are drawn (the DataLoader worker, CPU) and ship the record
    with the batch: computed on a GPU tensor it needs one host sync (``nonzero``).

    Args:
        masks: ``(2B, N)`` bool, True where the student sees the mask token
            (crop-major, as the global crops).

    Returns:
        The :class:`iBOTMaskIndex` (tensors on ``masks``' device).

    Raises:
        TypeError: ``masks`` is not a bool tensor.
        ValueError: ``masks`` is not 2-D.
    """
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor, got {getattr(masks, 'dtype', masks)!r}")
    if masks.ndim != 2:
        raise ValueError(f"masks must be (2B, N), got shape {tuple(masks.shape)}")
    indices = masks.flatten().nonzero().flatten()  # (M,)
    per_image = masks.sum(dim=1).clamp(min=1).to(torch.float64)  # (2B,)
    weights = (1.0 / per_image).index_select(0, indices // masks.shape[1])  # (M,)
    return iBOTMaskIndex(indices, weights, int(masks.shape[0]))
