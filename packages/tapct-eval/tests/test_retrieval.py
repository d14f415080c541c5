"""Patch retrieval by cosine similarity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tapct_eval import masked_patch_features, retrieve_patches


def test_retrieval_finds_the_planted_patch_and_scores_are_cosines():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(16, 3, 4, 5, generator=g)
    signature = torch.randn(16, generator=g)
    target[:, 2, 1, 3] = 5 * signature
    queries = signature[None] + 0.01 * torch.randn(4, 16, generator=g)
    hit = retrieve_patches(queries, target, k=3)
    assert hit.positions[0].tolist() == [2, 1, 3]
    assert hit.positions.shape == (3, 2 + 1) and hit.similarity.shape == (3, 4, 5)
    expected = F.cosine_similarity(target[:, 0, 0, 0], queries.mean(0), dim=0)
    assert hit.similarity[0, 0, 0].item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.all(hit.scores[:-1] >= hit.scores[1:])
    assert hit.scores[0].item() == pytest.approx(hit.similarity.max().item())


def test_masked_features_and_validation():
    feats = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2, 2)
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[1, 0, 1] = True
    assert masked_patch_features(feats, mask).tolist() == [[5.0, 13.0]]
    with pytest.raises(ValueError, match="no patch"):
        masked_patch_features(feats, torch.zeros(2, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="E=3"):
        retrieve_patches(torch.randn(2, 3), feats)
    with pytest.raises(ValueError, match="k"):
        retrieve_patches(torch.randn(2, 2), feats, k=0)
