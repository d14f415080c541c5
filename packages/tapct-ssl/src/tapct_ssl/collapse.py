"""Collapse monitors of self-distillation: is the teacher still saying something?

A DINO-style run can collapse in two ways (Caron et al. 2021, section 5.3 and Fig. 7):

* **uniform**: every teacher target tends to the uniform distribution over the K
  prototypes, so the per-sample entropy rises to ``log K`` (the DINO term then sits at
  ``log K`` and stops moving);
* **one prototype**: every sample gets the same sharp target, so the entropy of the
  batch-mean target falls towards 0. Sinkhorn-Knopp forces the batch marginal to be
  uniform and so hides this mode in its own targets; the batch-mean entropy is therefore
  measured on the plain tempered softmax of the teacher logits (before centering or
  Sinkhorn-Knopp), where a single winning prototype shows under either method.

Two statistics of the teacher's cls embeddings see the same from the backbone side
(lightly's ``std_of_l2_normalized``; RankMe, Garrido et al. 2023):

* the standard deviation across the batch of the L2-normalised embeddings, averaged
  over the E dimensions: about ``1 / sqrt(E)`` when the embeddings spread over the unit
  sphere, near 0 when they are all the same vector;
* the effective rank ``exp(H(sigma / sum(sigma)))`` of the batch's embeddings (Roy and
  Vetterli 2007), between 1 and ``min(N, E)``. It needs an SVD, which synchronises a
  CUDA device, so a training loop computes it on logging steps only.

All statistics are per process (the local batch), in float32, and are returned as 0-d
tensors on the inputs' device (no host read). :func:`collapse_warnings` turns fetched
host values into warning lines with what to try.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import attrs
import torch

__all__ = [
    "CollapseStats",
    "batch_mean_entropy",
    "cls_embedding_std",
    "collapse_stats",
    "collapse_warnings",
    "effective_rank",
    "mean_entropy",
]

_TINY = 1e-12


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the rows of a probability matrix, in nats.

    Args:
        probs: ``(B, K)`` rows summing to 1 (any float dtype).

    Returns:
        0-d float32 tensor in ``[0, log K]``.
    """
    p = probs.float()
    return -(p * torch.log(p.clamp_min(_TINY))).sum(dim=-1).mean()


def batch_mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch-mean distribution ``H(mean_b p_b)``, in nats.

    Args:
        probs: ``(B, K)`` rows summing to 1.

    Returns:
        0-d float32 tensor in ``[0, log min(B, K)]`` for one-hot rows, ``[0, log K]`` in
        general; 0 when every row is the same one-hot vector.
    """
    mean = probs.float().mean(dim=0)  # (K,)
    return -(mean * torch.log(mean.clamp_min(_TINY))).sum()


def cls_embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Standard deviation across the batch of L2-normalised embeddings, mean over E.

    Args:
        embeddings: ``(B, E)`` with ``B >= 2``.

    Returns:
        0-d float32 tensor: about ``1 / sqrt(E)`` for embeddings spread over the unit
        sphere, 0 when all rows point the same way (lightly's
        ``std_of_l2_normalized``).

    Raises:
        ValueError: ``embeddings`` is not 2-D or has fewer than 2 rows.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be (B >= 2, E), got {tuple(embeddings.shape)}")
    z = torch.nn.functional.normalize(embeddings.float(), dim=1)
    return z.std(dim=0).mean()


def effective_rank(embeddings: torch.Tensor) -> torch.Tensor:
    """Effective rank of a batch of embeddings (Roy and Vetterli 2007; RankMe).

    ``exp(-sum_i q_i log q_i)`` with ``q = sigma / sum(sigma)`` the normalised singular
    values of the ``(N, E)`` matrix (not centred, as RankMe).

    Args:
        embeddings: ``(N, E)``.

    Returns:
        0-d float32 tensor in ``[1, min(N, E)]`` (1 for a rank-one or all-zero matrix).
        On CUDA the SVD synchronises the device: call it on logging steps only.

    Raises:
        ValueError: ``embeddings`` is not 2-D.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, E), got {tuple(embeddings.shape)}")
    sigma = torch.linalg.svdvals(embeddings.float())  # (min(N, E),)
    total = sigma.sum()
    q = sigma / total.clamp_min(_TINY)
    h = -(q * torch.log(q.clamp_min(_TINY))).sum()
    return torch.where(total > 0, torch.exp(h), torch.ones_like(h))


@attrs.frozen
class CollapseStats:
    """The per-step collapse monitors, 0-d float32 device tensors (nothing read).

    Iterating yields ``(name, tensor)`` pairs in field order, as
    :class:`~tapct_ssl.DINOv2Terms` does, so a logger writes them without a list of
    names of its own.

    Attributes:
        teacher_entropy: Mean per-sample entropy of the DINO targets the student is
            trained towards (after centering or Sinkhorn-Knopp), nats; ``log K`` means
            uniform collapse.
        teacher_batch_entropy: Entropy of the batch mean of ``softmax(z / tau)`` of the
            teacher's DINO logits (before centering or Sinkhorn-Knopp), nats; near 0
            means every sample picks the same prototype.
        cls_std: :func:`cls_embedding_std` of the teacher backbone's cls tokens.
    """

    teacher_entropy: torch.Tensor
    teacher_batch_entropy: torch.Tensor
    cls_std: torch.Tensor

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (the one list of monitor names)."""
        return tuple(f.name for f in attrs.fields(cls))

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for every field, in order."""
        for name in self.names():
            yield name, getattr(self, name)


@torch.no_grad()
def collapse_stats(
    targets: torch.Tensor, logits: torch.Tensor, teacher_temp: float, cls_tokens: torch.Tensor
) -> CollapseStats:
    """The collapse monitors of one teacher pass (device ops only: no sync).

    Args:
        targets: ``(B, K)`` DINO targets used by the loss (rows sum to 1).
        logits: ``(B, K)`` the teacher's DINO head logits they were made from.
        teacher_temp: The teacher temperature of the step (> 0).
        cls_tokens: ``(B, E)`` the teacher backbone's cls tokens.

    Returns:
        The :class:`CollapseStats` (``cls_std`` is NaN for a single row).
    """
    plain = torch.softmax(logits.float() / float(teacher_temp), dim=-1)  # (B, K)
    if cls_tokens.shape[0] >= 2:
        std = cls_embedding_std(cls_tokens)
    else:
        std = torch.full((), math.nan, device=cls_tokens.device)
    return CollapseStats(
        teacher_entropy=mean_entropy(targets),
        teacher_batch_entropy=batch_mean_entropy(plain),
        cls_std=std,
    )


def _advice(centering: str, uniform: bool = False) -> str:
    """What to try, appended to every collapse warning (Sinkhorn-Knopp when not in use).

    For uniform targets a lower teacher temperature comes first: it is what ended that
    collapse in the issue-12 search (a 48-wide model on one CT stayed at ``log K`` with
    0.04 -> 0.07 and 0.02 -> 0.04 whatever K, batch or learning rate; 0.005 -> 0.01, the
    ``cpu_small`` config, learnt).
    """
    sk = ", Sinkhorn-Knopp (objective.centering=sinkhorn_knopp)"
    if centering == "sinkhorn_knopp":
        sk = ""
    temp = (
        "a lower teacher temperature (optim.warmup_teacher_temp, optim.teacher_temp), "
        if uniform
        else ""
    )
    return (
        f"try {temp}a longer warm-up (optim.warmup_iters){sk} or a lower learning rate "
        "(optim.base_lr)"
    )


def collapse_warnings(
    values: Mapping[str, float],
    n_prototypes: int,
    embed_dim: int,
    batch: int,
    centering: str = "centering",
) -> list[str]:
    """Warning lines for fetched monitor values that show a collapse.

    Thresholds: per-sample target entropy above ``0.99 log K`` (uniform targets: a
    collapsed run reaches ``log K`` itself; the 100-step CPU demo with Sinkhorn-Knopp, 16
    rows and K = 1024 sits at 0.97-0.98 ``log K``, weak targets but not collapsed);
    batch-mean entropy below ``0.1 log min(B, K)`` (one prototype for everything); cls
    standard deviation below ``0.1 / sqrt(E)``; effective rank (when present) below
    ``max(1.5, 0.05 min(B, E))``. A healthy run sits far from each (targets sharp,
    ``std ~ 1/sqrt(E)``, rank a sizeable fraction of ``min(B, E)``).

    Args:
        values: Host values with some of ``teacher_entropy``, ``teacher_batch_entropy``,
            ``cls_std``, ``cls_effective_rank`` (missing or non-finite ones are ignored).
        n_prototypes: K of the DINO head.
        embed_dim: E of the backbone.
        batch: Rows the statistics were computed over (teacher cls tokens per process).
        centering: The run's ``objective.centering`` (``centering`` or
            ``sinkhorn_knopp``): Sinkhorn-Knopp is suggested only when not already used.

    Returns:
        One line per collapse sign found (empty when healthy), each ending with what to
        try.
    """
    log_k = math.log(n_prototypes)
    out: list[str] = []

    def get(name: str) -> float | None:
        v = values.get(name)
        return float(v) if v is not None and math.isfinite(float(v)) else None

    h = get("teacher_entropy")
    if h is not None and h > 0.99 * log_k:
        out.append(
            f"teacher targets are near uniform (entropy {h:.3f} of log K = {log_k:.3f}): "
            f"the run is collapsing; {_advice(centering, uniform=True)}"
        )
    hb = get("teacher_batch_entropy")
    floor = 0.1 * math.log(max(2, min(batch, n_prototypes)))
    if hb is not None and hb < floor:
        out.append(
            f"every sample gets the same teacher prototype (batch-mean entropy {hb:.3f} "
            f"< {floor:.3f}): the run is collapsing; {_advice(centering)}"
        )
    std = get("cls_std")
    healthy = 1.0 / math.sqrt(embed_dim)
    if std is not None and std < 0.1 * healthy:
        out.append(
            f"cls embeddings are nearly identical across the batch (std {std:.2e}, healthy "
            f"about 1/sqrt(E) = {healthy:.3f}): the run is collapsing; {_advice(centering)}"
        )
    rank = get("cls_effective_rank")
    rank_floor = max(1.5, 0.05 * min(batch, embed_dim))
    if rank is not None and rank < rank_floor:
        out.append(
            f"cls embeddings span about one direction (effective rank {rank:.2f} of at most "
            f"{min(batch, embed_dim)}): the run is collapsing; {_advice(centering)}"
        )
    return out
