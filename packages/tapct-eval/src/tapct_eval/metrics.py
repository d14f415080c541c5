"""Segmentation and classification metrics with the edge cases decided and documented.

Dice (paper section 3.3.1): per class, computed with MONAI's ``compute_dice`` on one-hot
maps, background excluded. Convention for classes absent from a case:

- absent in both prediction and truth: excluded (NaN), so it neither helps nor hurts;
- absent in the truth but predicted (false positives on an empty truth): 0;
- present in the truth but not predicted: 0.

The macro Dice of a case is the nanmean over its non-NaN classes (NaN if none).

Classification (paper section 3.3.2): AUC (binary, or one-vs-rest for multi-class),
micro-averaged multi-label AUC and micro-averaged average precision, from scikit-learn.
With a single class present in ``y_true`` (a fold without positives, say) these are
undefined: the functions return NaN with a warning, and :func:`summarize_folds` averages
with ``nanmean`` and reports how many folds were valid.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "FoldSummary",
    "UndefinedMetricWarning",
    "auc_score",
    "dice_per_class",
    "macro_dice",
    "micro_average_precision",
    "multilabel_micro_auc",
    "summarize_folds",
]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for this input (e.g. AUC with one class) and is NaN."""


def dice_per_class(
    prediction: torch.Tensor, target: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Dice of every non-background class of one case.

    Args:
        prediction: predicted labels ``(D, H, W)`` int (values in ``0..num_classes-1``).
        target: true labels ``(D, H, W)`` int, same shape.
        num_classes: number of classes including background (label 0).

    Returns:
        ``(num_classes - 1,)`` float32: Dice of classes ``1..num_classes-1``; NaN where the
        class is absent in both prediction and truth, 0 for false positives on an empty
        truth (see module docstring).

    Raises:
        ValueError: on shape mismatch, ``num_classes < 2`` or labels out of range.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    for name, labels in (("prediction", prediction), ("target", target)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"{name} labels must be in [0, {num_classes - 1}], found "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
    pred = F.one_hot(prediction.long(), num_classes).movedim(-1, 0)[None]  # (1, C, D, H, W)
    true = F.one_hot(target.long(), num_classes).movedim(-1, 0)[None]
    dice = compute_dice(pred, true, include_background=False, ignore_empty=False)[0].float()
    both_empty = (pred[0, 1:].flatten(1).sum(1) == 0) & (true[0, 1:].flatten(1).sum(1) == 0)
    dice[both_empty] = float("nan")
    return dice


def macro_dice(per_class: torch.Tensor) -> float:
    """Macro Dice: the nanmean of per-class Dice (NaN when every class is NaN).

    Args:
        per_class: ``(C - 1,)`` per-class Dice from :func:`dice_per_class`.

    Returns:
        The mean over non-NaN classes as a float.
    """
    valid = per_class[~torch.isnan(per_class)]
    return float(valid.mean()) if valid.numel() else float("nan")


def _single_class(y: np.ndarray) -> bool:
    return len(np.unique(y)) < 2


def auc_score(y_true: Sequence[int] | np.ndarray, scores: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve, binary or multi-class (one-vs-rest, macro).

    Args:
        y_true: ``(n,)`` integer class labels.
        scores: ``(n,)`` scores of the positive class (binary) or ``(n, K)`` class
            probabilities (multi-class; rows summing to 1).

    Returns:
        The AUC, or NaN with :class:`UndefinedMetricWarning` when ``y_true`` holds a
        single class.

    Raises:
        ValueError: on length mismatch.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) != len(s):
        raise ValueError(f"y_true has {len(y)} samples, scores {len(s)}")
    if _single_class(y):
        warnings.warn(
            "AUC is undefined with a single class in y_true; returning NaN",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return float("nan")
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim == 2 and s.shape[1] == 2 and set(np.unique(y)) <= {0, 1}:
        s = s[:, 1]
    if s.ndim == 1:
        return float(roc_auc_score(y, s))
    return float(roc_auc_score(y, s, multi_class="ovr", labels=np.arange(s.shape[1])))


def _multilabel_inputs(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"y_true and scores must both be (n, L), got {y.shape} and {s.shape}")
    return y, s


def multilabel_micro_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Micro-averaged multi-label ROC AUC (all (sample, label) pairs pooled).

    Args:
        y_true: ``(n, L)`` binary indicators.
        scores: ``(n, L)`` scores.

    Returns:
        The micro AUC, NaN with :class:`UndefinedMetricWarning` when the pooled labels
        hold a single value.

    Raises:
        ValueError: on shape mismatch.
    """
    y, s = _multilabel_inputs(y_true, scores)
    if _single_class(y.ravel()):
        warnings.warn(
            "micro AUC is undefined when every label has one value; returning NaN",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(roc_auc_score(y, s, average="micro"))


def micro_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Micro-averaged average precision (paper's RSNA2022 metric).

    Args:
        y_true: ``(n, L)`` binary indicators (or ``(n,)`` binary labels).
        scores: scores of the same shape.

    Returns:
        The micro AP, NaN with :class:`UndefinedMetricWarning` when there is no positive.

    Raises:
        ValueError: on shape mismatch.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} differ")
    if not (y == 1).any():
        warnings.warn(
            "average precision is undefined without positives; returning NaN",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(average_precision_score(y, s, average="micro"))


@attrs.frozen
class FoldSummary:
    """Mean +- std over folds or seeds, ignoring undefined (NaN) values.

    Attributes:
        mean: nanmean of the values.
        std: population std (ddof 0) of the valid values.
        n_valid: number of non-NaN values.
        n_total: number of values.
    """

    mean: float
    std: float
    n_valid: int
    n_total: int

    def __str__(self) -> str:
        text = f"{self.mean:.3f} ± {self.std:.3f}"
        return (
            text
            if self.n_valid == self.n_total
            else f"{text} ({self.n_valid}/{self.n_total} valid)"
        )


def summarize_folds(values: Sequence[float]) -> FoldSummary:
    """Summarise per-fold (or per-seed) values with nanmean and the count of valid ones.

    Args:
        values: one metric value per fold; NaN marks an undefined fold.

    Returns:
        :class:`FoldSummary`; mean and std are NaN when no value is valid (with a warning).
    """
    arr = np.asarray(list(values), dtype=np.float64)
    valid = arr[~np.isnan(arr)]
    if len(valid) < len(arr):
        warnings.warn(
            f"{len(arr) - len(valid)} of {len(arr)} folds are undefined (NaN)",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    if not len(valid):
        return FoldSummary(math.nan, math.nan, 0, len(arr))
    return FoldSummary(float(valid.mean()), float(valid.std()), len(valid), len(arr))
