"""Soft-target cross-entropy over many prototypes without full float32 logits.

DINO and iBOT compare a teacher distribution with ``log_softmax(z_s / tau_s)`` over
K = 65,536 prototypes. Written plainly (``-(t * log_softmax(s.float() / tau)).sum(-1)``)
autograd keeps a float32 copy of the logits, their scaled copy and the log-softmax for
every row: about 12 bytes per row and prototype on top of the logits themselves. Here the
rows are processed in chunks by a custom autograd function that saves only its inputs
(the student logits in their own dtype, e.g. bfloat16, and the teacher targets) and
recomputes one chunk's softmax in backward; float32 temporaries never exceed one chunk
(``chunk_rows x K``).

Gradient: with ``z = s / tau`` and ``T = sum_k t_k``,
``d CE / d s = (softmax(z) * T - t) / tau``.
"""

from __future__ import annotations

from typing import Any

import torch

from tapct_ssl._precision import at_least_float32, autocast_disabled

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "soft_cross_entropy"]

#: Elements (rows x prototypes) of one chunk: 2**24, i.e. 64 MiB of float32 temporaries.
DEFAULT_CHUNK_ELEMENTS: int = 2**24


def _chunk_size(n_cols: int, chunk_rows: int | None) -> int:
    step = DEFAULT_CHUNK_ELEMENTS // max(n_cols, 1) if chunk_rows is None else chunk_rows
    return max(1, int(step))


class _SoftCrossEntropy(torch.autograd.Function):
    """Row-chunked ``-(t * log_softmax(s / tau)).sum(-1)`` saving only ``s`` and ``t``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        chunk_rows: int | None,
    ) -> torch.Tensor:
        n_rows, n_cols = logits.shape
        out = logits.new_empty((n_rows,), dtype=at_least_float32(logits).dtype)
        step = _chunk_size(n_cols, chunk_rows)
        with autocast_disabled(logits.device):
            for i in range(0, n_rows, step):
                z = at_least_float32(logits[i : i + step]) / temperature
                t = targets[i : i + z.shape[0]].to(z.dtype)
                # -(t . (z - lse)) = lse * sum(t) - t . z
                lse = torch.logsumexp(z, dim=-1)
                out[i : i + z.shape[0]] = lse * t.sum(-1) - (t * z).sum(-1)
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        (grad_out,) = grads
        logits, targets = ctx.saved_tensors
        tau, chunk_rows = ctx.temperature, ctx.chunk_rows
        n_rows, n_cols = logits.shape
        grad = torch.empty_like(logits)
        step = _chunk_size(n_cols, chunk_rows)
        with autocast_disabled(logits.device):
            for i in range(0, n_rows, step):
                z = at_least_float32(logits[i : i + step]) / tau
                t = targets[i : i + z.shape[0]].to(z.dtype)
                g = grad_out[i : i + z.shape[0]].to(z.dtype).unsqueeze(-1)  # (rows, 1)
                p = torch.softmax(z, dim=-1)
                grad[i : i + z.shape[0]] = ((p * t.sum(-1, keepdim=True) - t) * (g / tau)).to(
                    grad.dtype
                )
        return grad, None, None, None


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    *,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Per-row ``-sum_k t[i, k] log_softmax(logits / temperature)[i, k]``, chunked.

    Equal to the plain expression (float32 math, float64 kept) within rounding; the
    gradient flows to ``logits`` only (``targets`` are the teacher's, without gradient).
    Rows of ``targets`` need not sum to 1 (a sum of several teacher views is allowed: the
    cross-entropy is linear in the target).

    Args:
        logits: ``(M, K)`` student logits, any float dtype (bfloat16 under autocast).
        targets: ``(M, K)`` teacher targets (no gradient).
        temperature: student temperature > 0 (DINOv2: 0.1).
        chunk_rows: rows per chunk; default ``2**24 // K`` (256 rows for K = 65,536).

    Returns:
        ``(M,)`` float32 (float64 for float64 logits) cross-entropies.

    Raises:
        ValueError: shapes differ or are not 2-D, ``temperature <= 0`` or ``chunk_rows < 1``.
    """
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be (M, K)"
        )
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    out: torch.Tensor = _SoftCrossEntropy.apply(
        logits, targets.detach(), float(temperature), chunk_rows
    )
    return out
