"""The benchmark runner's progress callback, and the PCA picture of patch features."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from tapct_eval import run_benchmark
from tapct_eval.figures import pca_rgb, plot_pca_planes


def test_run_benchmark_reports_every_case_and_every_step(tmp_path, local_backbone):
    rows = ["image,split,label"] + [
        f"case{i}.npy,{'train' if i < 4 else 'test'},{i % 2}" for i in range(6)
    ]
    (tmp_path / "cases.csv").write_text("\n".join(rows))
    (tmp_path / "task.yaml").write_text(
        "name: cls\nkind: classification\nroi_size: [4, 8, 8]\nnum_classes: 1\n"
        "csv: cases.csv\nsteps: 3\naccumulation_steps: 2\nlr: 0.01\n"
    )

    def load_image(path):
        i = int(path.stem[4:])
        return torch.full((1, 8, 16, 16), 1.0 if i % 2 else -1.0)

    calls: list[tuple[int, int, str]] = []
    run_benchmark(
        tmp_path / "task.yaml", local_backbone, tmp_path / "out", seeds=(0, 1),
        load_image=load_image, figures=False, progress=lambda *a: calls.append(a),
    )  # fmt: skip
    total = 6 + 2 * 3  # one unit per case's features, one per optimizer step of each seed
    assert [c[0] for c in calls] == list(range(1, total + 1))
    assert {c[1] for c in calls} == {total}
    assert calls[0][2] == "features of case0"
    assert calls[5][2] == "features of case5"
    assert [c[2] for c in calls[6:]] == [f"seed {s}: step {k}/3" for s in (0, 1) for k in (1, 2, 3)]


def test_pca_rgb_follows_the_dominant_direction_of_the_features():
    t, h, w, E = 4, 3, 5, 6
    g = np.random.default_rng(0)
    depth = np.broadcast_to(np.arange(t, dtype=np.float32)[:, None, None], (t, h, w))
    direction = g.normal(size=E).astype(np.float32)
    feats = direction[:, None, None, None] * 10 * depth + 0.01 * g.normal(size=(E, t, h, w))
    rgb = pca_rgb(torch.from_numpy(feats.astype(np.float32)))
    assert rgb.shape == (t, h, w, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    # The first colour is the first principal component (sklearn), min-max scaled: it
    # orders the slices by depth (in one of the two directions PCA may choose).
    first = PCA(n_components=1).fit_transform(feats.reshape(E, -1).T)[:, 0].reshape(t, h, w)
    corr = np.corrcoef(rgb[..., 0].ravel(), first.ravel())[0, 1]
    assert corr > 0.99
    slice_means = rgb[..., 0].mean(axis=(1, 2))
    assert np.all(np.diff(slice_means) > 0) or np.all(np.diff(slice_means) < 0)


def test_plot_pca_planes_writes_a_png(tmp_path):
    rgb = np.random.default_rng(0).random((3, 4, 4, 3)).astype(np.float32)
    volume = np.full((6, 32, 32), -1000.0, dtype=np.float32)
    path = plot_pca_planes(volume, rgb, (2.0, 1.0, 1.0), (2, 8, 8), tmp_path / "a" / "p.png", "t")
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 700)  # figsize (11, 7) at 100 dpi
