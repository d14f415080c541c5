"""Metric values against hand-computed ones, edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tapct_eval import (
    UndefinedMetricWarning,
    auc_score,
    dice_per_class,
    macro_dice,
    micro_average_precision,
    multilabel_micro_auc,
    summarize_folds,
)


def test_dice_hand_computed_and_empty_class_rules():
    # classes: 1 overlaps partially, 2 is a false positive on empty truth,
    # 3 is absent from both, 4 is missed entirely
    truth = torch.tensor([[1, 1, 1, 0, 4, 4]])
    pred = torch.tensor([[1, 1, 0, 2, 0, 0]])
    dice = dice_per_class(pred, truth, num_classes=5)
    # class 1: |A∩B| = 2, |A| = 2, |B| = 3 -> 2*2 / 5 = 0.8
    assert dice[0].item() == pytest.approx(0.8)
    assert dice[1].item() == 0.0  # false positive on an empty truth
    assert math.isnan(dice[2].item())  # absent in both: excluded
    assert dice[3].item() == 0.0  # missed
    assert macro_dice(dice) == pytest.approx((0.8 + 0 + 0) / 3)
    assert math.isnan(macro_dice(torch.tensor([math.nan, math.nan])))


def test_dice_validation():
    with pytest.raises(ValueError, match="differ"):
        dice_per_class(torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dice_per_class(torch.tensor([2]), torch.tensor([0]), 2)


def test_auc_hand_computed():
    # positives 0.8, 0.4; negatives 0.6, 0.2: pairs won 3 of 4 -> 0.75
    assert auc_score([1, 1, 0, 0], [0.8, 0.4, 0.6, 0.2]) == pytest.approx(0.75)
    # multi-class one-vs-rest, perfect ranking
    probs = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.2 / 3
    assert auc_score([0, 1, 2, 0], probs) == pytest.approx(1.0)


def test_micro_auc_and_ap_hand_computed():
    y = np.array([[1, 0], [0, 1]])
    s = np.array([[0.9, 0.3], [0.2, 0.1]])
    # pooled: positives 0.9, 0.1; negatives 0.3, 0.2 -> won pairs 2 of 4 -> 0.5
    assert multilabel_micro_auc(y, s) == pytest.approx(0.5)
    # pooled ranking 0.9(+), 0.3(-), 0.2(-), 0.1(+): AP = 1/2 * (1/1 + 2/4) = 0.75
    assert micro_average_precision(y, s) == pytest.approx(0.75)


def test_single_class_folds_are_nan_with_a_warning_and_nanmean():
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(auc_score([1, 1, 1], [0.1, 0.5, 0.9]))
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(multilabel_micro_auc(np.zeros((2, 2)), np.ones((2, 2))))
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(micro_average_precision(np.zeros((2, 2)), np.ones((2, 2))))
    with pytest.warns(UndefinedMetricWarning, match="1 of 3"):
        summary = summarize_folds([0.6, math.nan, 0.8])
    assert summary.mean == pytest.approx(0.7)
    assert summary.std == pytest.approx(0.1)
    assert (summary.n_valid, summary.n_total) == (2, 3)
    assert "2/3 valid" in str(summary)
