"""ABMIL: attention weights, masking, permutation invariance, learning, the three task types."""

from __future__ import annotations

import pytest
import torch
from tapct_eval import ABMIL, ABMILTrainingConfig, auc_score, predict_abmil, train_abmil


def test_attention_sums_to_one_and_ignores_padding():
    torch.manual_seed(0)
    model = ABMIL(6, 3, hidden_dim=8)
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[False] * 5, [False, False, True, True, True]])
    att = model.attention(x, mask)
    assert att.shape == (2, 5)
    torch.testing.assert_close(att.sum(1), torch.ones(2))
    assert torch.all(att[1, 2:] == 0)
    # padding content does not change the result
    x2 = x.clone()
    x2[1, 2:] = 100.0
    torch.testing.assert_close(model(x, mask), model(x2, mask))
    assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="unmasked"):
        model(x, torch.ones(2, 5, dtype=torch.bool))


def test_permutation_invariant_and_plain_attention():
    torch.manual_seed(0)
    for gated in (True, False):
        model = ABMIL(4, 1, hidden_dim=8, gated=gated)
        x = torch.randn(1, 7, 4)
        torch.testing.assert_close(model(x), model(x[:, torch.randperm(7)]))


def test_matches_hand_written_gated_attention():
    torch.manual_seed(0)
    model = ABMIL(3, 2, hidden_dim=4)
    x = torch.randn(1, 5, 3)
    v, u, w = model.attention_v, model.attention_u, model.attention_w
    a = w(torch.tanh(v(x[0])) * torch.sigmoid(u(x[0]))).squeeze(-1).softmax(0)
    expected = model.classifier((a[:, None] * x[0]).sum(0))
    torch.testing.assert_close(model(x)[0], expected)


def _bags(n, seed, n_labels=1):
    g = torch.Generator().manual_seed(seed)
    bags, targets = [], []
    for i in range(n):
        bag = torch.randn(6, 8, generator=g)
        y = [(i + j) % 2 for j in range(n_labels)]
        for j, yj in enumerate(y):
            if yj:
                bag[:3, j] += 3.0  # half of the instances carry the label
        bags.append(bag)
        targets.append(y[0] if n_labels == 1 else y)
    return bags, targets


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_learns_a_mil_task(task):
    n_out = {"binary": 1, "multiclass": 2, "multilabel": 2}[task]
    bags, y = _bags(40, 0, n_labels=2 if task == "multilabel" else 1)
    cfg = ABMILTrainingConfig(steps=40, accumulation_steps=4, lr=5e-2, hidden_dim=16)
    model = train_abmil(bags, y, task, n_out, config=cfg, seed=0)
    test_bags, y_test = _bags(16, 1, n_labels=2 if task == "multilabel" else 1)
    scores = predict_abmil(model, test_bags, task)
    if task == "multilabel":
        assert scores.shape == (16, 2)
        assert auc_score([t[0] for t in y_test], scores[:, 0]) > 0.8
    elif task == "multiclass":
        assert scores.shape == (16, 2)
        torch.testing.assert_close(scores.sum(1), torch.ones(16))
        assert auc_score(y_test, scores) > 0.8
    else:
        assert scores.shape == (16,)
        assert auc_score(y_test, scores) > 0.8


def test_validation():
    with pytest.raises(ValueError, match="num_classes=1"):
        train_abmil([torch.randn(2, 3)], [1], "binary", 2)
    with pytest.raises(ValueError, match="task"):
        train_abmil([torch.randn(2, 3)], [1], "regression", 1)
    with pytest.raises(ValueError, match="dropout"):
        ABMIL(3, 1, dropout=1.0)
