"""Attention-based multiple-instance learning head (paper section 3.3.2).

Gated attention pooling of Ilse et al. 2018 ("Attention-based Deep Multiple Instance
Learning", eq. 9): ``a_k = softmax_k(w^T (tanh(V x_k) * sigmoid(U x_k)))``, ``z = sum_k a_k
x_k``, logits ``= classifier(z)``. The paper applies it to the windows' [CLS] embeddings
(or to patch embeddings), trained with batch 1 and 16 gradient-accumulation steps (C.1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ABMIL", "ABMILTrainingConfig", "predict_abmil", "train_abmil"]

TaskType = Literal["binary", "multiclass", "multilabel"]


class ABMIL(nn.Module):
    """Gated (or plain) attention MIL pooling followed by a linear classifier.

    Args:
        in_dim: instance width E.
        num_classes: outputs (1 for a binary task with a sigmoid, K for multi-class
            softmax, L for multi-label sigmoids).
        hidden_dim: attention hidden width (Ilse et al. use 128).
        gated: gated attention (tanh * sigmoid) when True, plain tanh attention otherwise.
        dropout: dropout on the instances before attention and on the pooled embedding.

    Raises:
        ValueError: on non-positive sizes or dropout outside ``[0, 1)``.

    Shapes:
        ``forward(x (B, N, E), mask (B, N) bool | None) -> logits (B, num_classes)``;
        ``mask`` is True at **padding** instances (ignored), like PyTorch's
        ``key_padding_mask``; every bag needs at least one unmasked instance.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 128,
        gated: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(in_dim, num_classes, hidden_dim) < 1:
            raise ValueError(
                f"sizes must be >= 1, got in_dim={in_dim}, num_classes={num_classes}, "
                f"hidden_dim={hidden_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.num_classes, self.gated = in_dim, num_classes, gated
        self.dropout = nn.Dropout(dropout)
        self.attention_v = nn.Linear(in_dim, hidden_dim)
        self.attention_u = nn.Linear(in_dim, hidden_dim) if gated else None
        self.attention_w = nn.Linear(hidden_dim, 1)
        self.classifier = nn.Linear(in_dim, num_classes)

    def _check(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must be (B, N, {self.in_dim}), got {tuple(x.shape)}")
        if mask is not None:
            if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
                raise ValueError(
                    f"mask must be bool {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
                )
            if bool(mask.all(dim=1).any()):
                raise ValueError("every bag needs at least one unmasked instance")

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights of the instances.

        Args:
            x: ``(B, N, E)`` instances.
            mask: ``(B, N)`` bool, True at padding; those get weight 0.

        Returns:
            ``(B, N)`` weights, non-negative, summing to 1 over unmasked instances.

        Raises:
            ValueError: on bad shapes or a fully masked bag.
        """
        self._check(x, mask)
        hidden = torch.tanh(self.attention_v(x))  # (B, N, hidden)
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(x))
        scores = self.attention_w(hidden).squeeze(-1)  # (B, N)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Bag logits.

        Args:
            x: ``(B, N, E)`` instances (e.g. window cls tokens).
            mask: ``(B, N)`` bool, True at padding instances.

        Returns:
            ``(B, num_classes)`` logits.
        """
        x = self.dropout(x)
        weights = self.attention(x, mask)  # (B, N)
        pooled = torch.einsum("bn,bne->be", weights, x)  # (B, E)
        return self.classifier(self.dropout(pooled))


@attrs.frozen
class ABMILTrainingConfig:
    """Training of the ABMIL head.

    Attributes:
        steps: optimizer steps.
        accumulation_steps: bags per step, one at a time (paper C.1: 16).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        hidden_dim: attention width.
        gated: gated attention.
        dropout: ABMIL dropout.
    """

    steps: int = 100
    accumulation_steps: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden_dim: int = 128
    gated: bool = True
    dropout: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.steps < 1 or self.accumulation_steps < 1:
            raise ValueError(
                f"steps and accumulation_steps must be >= 1, got {self.steps}, "
                f"{self.accumulation_steps}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _loss(logits: torch.Tensor, target: torch.Tensor, task: TaskType) -> torch.Tensor:
    if task == "multiclass":
        return F.cross_entropy(logits, target.long().view(-1))
    return F.binary_cross_entropy_with_logits(logits, target.float().view_as(logits))


def train_abmil(
    bags: Sequence[torch.Tensor],
    targets: Sequence[int | Sequence[int]] | torch.Tensor,
    task: TaskType,
    num_classes: int,
    *,
    config: ABMILTrainingConfig = ABMILTrainingConfig(),
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> ABMIL:
    """Train an :class:`ABMIL` head on bags of frozen embeddings, batch 1 with accumulation.

    Args:
        bags: per case ``(N_i, E)`` instances (window cls tokens).
        targets: per case an int class (binary: 0/1, multi-class: 0..K-1) or a length-L
            0/1 vector (multi-label).
        task: ``"binary"`` (1 logit, BCE), ``"multiclass"`` (K logits, CE) or
            ``"multilabel"`` (L logits, BCE).
        num_classes: 1 for binary, K or L otherwise.
        config: optimiser and head settings.
        seed: seeds initialisation, dropout and the visiting order.
        device: where to train.
        on_step: called with the number of optimizer steps done after each step
            (progress reporting).

    Returns:
        The trained head (eval mode).

    Raises:
        ValueError: on an unknown task, inconsistent ``num_classes`` or empty input.
    """
    if task not in ("binary", "multiclass", "multilabel"):
        raise ValueError(f"task must be binary, multiclass or multilabel, got {task!r}")
    if task == "binary" and num_classes != 1:
        raise ValueError(f"a binary task has num_classes=1 (one logit), got {num_classes}")
    if not bags or len(bags) != len(targets):
        raise ValueError(f"need as many bags as targets (>0), got {len(bags)}, {len(targets)}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ABMIL(
            bags[0].shape[-1], num_classes, config.hidden_dim, config.gated, config.dropout
        ).to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        target_t = [torch.as_tensor(t) for t in targets]
        order: list[int] = []
        for step in range(config.steps):
            opt.zero_grad(set_to_none=True)
            for _ in range(config.accumulation_steps):
                if not order:
                    order = torch.randperm(len(bags), generator=generator).tolist()
                i = order.pop()
                logits = model(bags[i].to(device, torch.float32)[None])  # (1, num_classes)
                loss = _loss(logits, target_t[i].to(device)[None], task)
                (loss / config.accumulation_steps).backward()
            opt.step()
            if on_step is not None:
                on_step(step + 1)
    return model.eval()


@torch.no_grad()
def predict_abmil(model: ABMIL, bags: Sequence[torch.Tensor], task: TaskType) -> torch.Tensor:
    """Scores of bags: sigmoid (binary ``(n,)``, multi-label ``(n, L)``) or softmax ``(n, K)``.

    Args:
        model: trained head.
        bags: per case ``(N_i, E)``.
        task: as in :func:`train_abmil`.

    Returns:
        float32 scores on the CPU.
    """
    device = next(model.parameters()).device
    logits = torch.cat([model(b.to(device, torch.float32)[None]) for b in bags]).cpu()
    if task == "multiclass":
        return logits.softmax(-1)
    scores = logits.sigmoid()
    return scores[:, 0] if task == "binary" else scores
