"""KoLeo regulariser (Kozachenko-Leonenko differential entropy estimator).

Reference: Sablayrolles et al. 2019, "Spreading vectors for similarity search";
DINOv2, dinov2/loss/koleo_loss.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tapct_ssl._precision import at_least_float32, autocast_disabled


class KoLeoLoss(nn.Module):
    """``-mean_i log(||x_i - x_nn(i)|| + eps)`` on L2-normalised features.

    The nearest neighbour ``nn(i)`` is the row with the largest dot product with ``x_i``,
    itself excluded. Computed in float32 (float64 stays float64) with autocast off. It
    spreads the batch's features uniformly; it is a batch statistic (per process, as in
    DINOv2), so it is not additive over micro-batches.

    Args:
        eps: added inside the log and used for the normalisation and the pairwise
            distance (DINOv2: 1e-8).

    Shapes:
        forward: ``(B, E) -> ()``. With ``B < 2`` there is no neighbour: the result is 0,
        still connected to the graph (``0 * x.sum()``).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, student_output: torch.Tensor) -> torch.Tensor:
        """Compute the KoLeo loss.

        Args:
            student_output: ``(B, E)`` features (DINOv2: the backbone cls tokens of one
                global crop).

        Returns:
            Scalar tensor (float32, or float64 for float64 input).

        Raises:
            ValueError: input is not 2-D.
        """
        if student_output.ndim != 2:
            raise ValueError(f"KoLeoLoss expects (B, E), got {tuple(student_output.shape)}")
        with autocast_disabled(student_output.device):
            x = at_least_float32(student_output)
            if x.shape[0] < 2:
                return x.sum() * 0.0
            x = F.normalize(x, p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                dots = x @ x.t()  # (B, B)
                dots.fill_diagonal_(-2.0)  # below any cosine: never its own neighbour
                neighbour = dots.argmax(dim=1)  # (B,)
            distances = F.pairwise_distance(x, x[neighbour], p=2, eps=self.eps)  # (B,)
            return -torch.log(distances + self.eps).mean()
