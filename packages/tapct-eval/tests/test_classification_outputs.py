"""Classification writes per-case predictions and a ROC figure, like the other head kinds."""

from __future__ import annotations

import csv

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from tapct_eval import plot_roc_curves, run_benchmark


def _load_image(path):
    i = int(path.stem[4:])
    g = torch.Generator().manual_seed(i)
    return torch.randn(1, 8, 16, 16, generator=g) + (0.3 if i % 2 else -0.3)


def test_classification_writes_predictions_and_roc(tmp_path, local_backbone):
    rows = ["image,split,label"] + [
        f"case{i}.npy,{'train' if i < 8 else 'test'},{i % 2}" for i in range(14)
    ]
    (tmp_path / "cases.csv").write_text("\n".join(rows))
    (tmp_path / "task.yaml").write_text(
        "name: cls\nkind: classification\nroi_size: [4, 8, 8]\nnum_classes: 1\n"
        "csv: cases.csv\nsteps: 5\naccumulation_steps: 2\nlr: 0.01\n"
    )
    out = tmp_path / "out"
    res = run_benchmark(
        tmp_path / "task.yaml", local_backbone, out, seeds=(0, 1), load_image=_load_image
    )
    assert [(p.seed, p.case_id) for p in res.predictions] == [
        (s, f"case{i}") for s in (0, 1) for i in range(8, 14)
    ]
    assert all(p.target == (float(int(p.case_id[4:]) % 2),) for p in res.predictions)
    with (out / "predictions.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 12 and written[0]["seed"] == "0"
    for seed, auc in zip((0, 1), res.per_seed, strict=True):
        rows_s = [r for r in written if r["seed"] == str(seed)]
        y = [int(float(r["target"])) for r in rows_s]
        scores = [float(r["prediction"]) for r in rows_s]
        assert all(0 < s < 1 for s in scores)  # sigmoid scores
        assert roc_auc_score(y, scores) == pytest.approx(auc)
    roc = res.files["roc"]
    assert roc.parent == out / "figures" and roc.name.startswith("cls_")
    assert roc.name.endswith("_roc.png") and plt.imread(roc).shape[0] > 100
    assert res.files["predictions"] == out / "predictions.csv"


def test_roc_figure_multiclass_and_multilabel(tmp_path):
    y = np.array([0, 1, 2, 0, 1, 2])
    scores = np.eye(3)[[0, 1, 2, 1, 1, 2]] * 0.8 + 0.1
    path = plot_roc_curves(np.eye(3)[y], scores, tmp_path / "mc.png", title="mc")
    assert plt.imread(path).shape == (400, 400, 4)
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])  # second label: a single class
    path = plot_roc_curves(
        labels, np.full((4, 2), 0.5), tmp_path / "ml.png", class_names=["a", "b"]
    )
    assert path.is_file()
    with pytest.raises(ValueError, match="differ"):
        plot_roc_curves(y, scores, tmp_path / "bad.png")
