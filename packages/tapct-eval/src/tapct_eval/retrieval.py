"""Patch retrieval by cosine similarity (paper section 4.4, Figure 2)."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["RetrievalResult", "masked_patch_features", "retrieve_patches"]


@attrs.frozen(eq=False)
class RetrievalResult:
    """Top-k patches of a target scan for a query.

    Attributes:
        positions: ``(k, 3)`` int64 patch-grid indices ``(i, j, l)`` of the best matches,
            best first.
        scores: ``(k,)`` float32 cosine similarities of those patches.
        similarity: ``(t, h, w)`` float32 cosine similarity of every target patch.
        query: ``(E,)`` the mean query embedding.
    """

    positions: torch.Tensor
    scores: torch.Tensor
    similarity: torch.Tensor
    query: torch.Tensor


def masked_patch_features(features: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """Embeddings of the patches inside a mask on the patch grid.

    Args:
        features: ``(E, t, h, w)``.
        patch_mask: ``(t, h, w)`` bool.

    Returns:
        ``(M, E)`` features of the masked patches.

    Raises:
        ValueError: on a shape mismatch or an empty mask.
    """
    if features.ndim != 4 or patch_mask.shape != features.shape[1:]:
        raise ValueError(
            f"mask {tuple(patch_mask.shape)} must match the grid of {tuple(features.shape)}"
        )
    if not bool(patch_mask.any()):
        raise ValueError("patch_mask selects no patch")
    return rearrange(features, "e t h w -> t h w e")[patch_mask.bool()]


def retrieve_patches(
    query_features: torch.Tensor, target_features: torch.Tensor, k: int = 10
) -> RetrievalResult:
    """Rank every patch of a target scan by cosine similarity to a query.

    The query (e.g. the patches inside a lesion mask of one scan) is averaged to one
    embedding; each target patch is scored by cosine similarity to it.

    Args:
        query_features: ``(M, E)`` query patch embeddings (or ``(E,)``).
        target_features: ``(E, t, h, w)`` dense features of the target scan.
        k: number of best patches to return (clipped to the number of patches).

    Returns:
        :class:`RetrievalResult` with top-k grid positions, their scores and the full
        similarity map ``(t, h, w)``.

    Raises:
        ValueError: on empty queries, mismatched widths or ``k < 1``.
    """
    if query_features.ndim == 1:
        query_features = query_features[None]
    if query_features.ndim != 2 or query_features.shape[0] == 0:
        raise ValueError(f"query_features must be (M>0, E), got {tuple(query_features.shape)}")
    if target_features.ndim != 4 or target_features.shape[0] != query_features.shape[1]:
        raise ValueError(
            f"target_features must be (E={query_features.shape[1]}, t, h, w), got "
            f"{tuple(target_features.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query = query_features.float().mean(0)  # (E,)
    grid = target_features.shape[1:]
    flat = rearrange(target_features.float(), "e t h w -> (t h w) e")
    sim = F.cosine_similarity(flat, query[None], dim=1)  # (t*h*w,)
    scores, index = sim.topk(min(k, sim.numel()))
    positions = torch.stack(torch.unravel_index(index, tuple(grid)), dim=1)
    return RetrievalResult(positions.long(), scores, sim.reshape(grid), query)
