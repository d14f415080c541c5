"""Linear probe: shapes, geometry, and learning a synthetic intensity task."""

from __future__ import annotations

import pytest
import torch
from tapct_eval import (
    LinearSegmentationProbe,
    ProbeTrainingConfig,
    evaluate_segmentation,
    extract_features,
    macro_dice,
    train_segmentation_probe,
)


def test_probe_shapes_and_patch_geometry():
    probe = LinearSegmentationProbe(8, 5, patch_size=(2, 4, 4))
    x = torch.randn(2, 8, 3, 4, 5)
    assert probe(x).shape == (2, 5, 3, 4, 5)
    assert probe(x, output_size=(5, 13, 20)).shape == (2, 5, 5, 13, 20)
    free = LinearSegmentationProbe(8, 5)
    assert free(x, output_size=(7, 9, 11)).shape == (2, 5, 7, 9, 11)
    assert sum(p.numel() for p in probe.parameters()) == 8 * 5 + 5  # one 1x1x1 conv
    with pytest.raises(ValueError, match="features must be"):
        probe(torch.randn(2, 7, 3, 4, 5))
    with pytest.raises(ValueError, match="num_classes"):
        LinearSegmentationProbe(8, 1)


def test_upsampling_keeps_constant_patches_in_place():
    """A constant logit field on the grid stays constant on the voxels it covers."""
    probe = LinearSegmentationProbe(1, 2, patch_size=(2, 4, 4))
    with torch.no_grad():
        probe.conv.weight.zero_()
        probe.conv.weight[1, 0] = 1.0
        probe.conv.bias.zero_()
    features = torch.ones(1, 1, 2, 2, 2)
    logits = probe(features, output_size=(3, 7, 6))
    torch.testing.assert_close(logits[0, 1], torch.ones(3, 7, 6))


def _synthetic(seed: int):
    """A box of class 1 (intensity 0) around a core of class 2 (intensity 1) in background
    (intensity -1), plus noise: the labels follow intensity, classes 0 and 2 never touch."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(16, 64, 64, dtype=torch.long)
    d0, h0, w0 = (int(torch.randint(0, 2, (1,), generator=g)) * s for s in (2, 8, 8))
    d1, h1, w1 = (int(torch.randint(7, 9, (1,), generator=g)) * s for s in (2, 8, 8))
    labels[d0:d1, h0:h1, w0:w1] = 1
    labels[d0 + 4 : d1 - 4, h0 + 16 : h1 - 16, w0 + 16 : w1 - 16] = 2
    volume = (labels.float() - 1.0 + 0.05 * torch.randn(labels.shape, generator=g))[None]
    return volume, labels


def test_probe_learns_intensity_classes(local_backbone):
    train = [_synthetic(s) for s in range(3)]
    test_volume, test_labels = _synthetic(10)
    feats = [
        extract_features(local_backbone, v, (8, 32, 32), overlap=0.0).patch_features
        for v, _ in train
    ]
    probe = train_segmentation_probe(
        feats,
        [y for _, y in train],
        3,
        patch_size=local_backbone.patch_size,
        config=ProbeTrainingConfig(steps=30, lr=0.1),
        seed=0,
    )
    test_feats = extract_features(
        local_backbone, test_volume, (8, 32, 32), overlap=0.0
    ).patch_features
    dice = evaluate_segmentation(probe, [test_feats], [test_labels])[0]
    assert dice.shape == (2,)
    assert macro_dice(dice) > 0.9, dice


def test_training_is_reproducible_per_seed():
    feats = [torch.randn(4, 2, 2, 2)]
    labels = [torch.randint(0, 3, (4, 8, 8), generator=torch.Generator().manual_seed(0))]
    cfg = ProbeTrainingConfig(steps=2, accumulation_steps=2)
    a = train_segmentation_probe(feats, labels, 3, patch_size=(2, 4, 4), config=cfg, seed=1)
    b = train_segmentation_probe(feats, labels, 3, patch_size=(2, 4, 4), config=cfg, seed=1)
    c = train_segmentation_probe(feats, labels, 3, patch_size=(2, 4, 4), config=cfg, seed=2)
    assert torch.equal(a.conv.weight, b.conv.weight)
    assert not torch.equal(a.conv.weight, c.conv.weight)
    with pytest.raises(ValueError, match="steps"):
        ProbeTrainingConfig(steps=0)
