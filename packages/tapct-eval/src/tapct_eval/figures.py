"""PNG figures: segmentation overlays (paper Fig. 4), retrieval heat maps (paper Fig. 2),
prediction scatter plots (regression, survival), ROC curves (classification), localisation
markers and the PCA picture of patch features (``tapct embed``).

Matplotlib runs with the Agg backend (no display needed). Axial slices ``x[k]`` of the
canonical ``(D, H, W)`` arrays display in the radiological convention (patient right on
the image left).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "pca_rgb",
    "plot_localisation",
    "plot_pca_planes",
    "plot_prediction_scatter",
    "plot_retrieval_heatmap",
    "plot_roc_curves",
    "plot_segmentation_overlay",
]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _label_rgba(labels: np.ndarray, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    cmap = plt.get_cmap("tab20", max(num_classes, 2))
    rgba = cmap(labels % cmap.N)
    rgba[..., 3] = np.where(labels > 0, alpha, 0.0)
    return rgba


def _save(fig, path: str | Path, fmt: str | None = None) -> Path:
    """Lay out, write ``fig`` at 100 dpi to ``path`` (parents created), close it.

    ``fmt`` forces the file format (e.g. ``"png"`` for a temporary name without the
    suffix); by default matplotlib takes it from the suffix.
    """
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format=fmt)
    plt.close(fig)
    return path


def plot_segmentation_overlay(
    image: torch.Tensor | np.ndarray,
    truth: torch.Tensor | np.ndarray,
    prediction: torch.Tensor | np.ndarray,
    path: str | Path,
    *,
    slices: Sequence[int] | None = None,
    num_classes: int | None = None,
    title: str | None = None,
) -> Path:
    """Write axial slices with ground truth and prediction overlays as a PNG.

    Args:
        image: ``(1, D, H, W)`` or ``(D, H, W)`` volume (any units; shown in grey).
        truth: ``(D, H, W)`` int labels.
        prediction: ``(D, H, W)`` int labels.
        path: PNG file to write (parents are created).
        slices: axial indices to show (default: 3 evenly spaced slices with foreground).
        num_classes: for a stable colour per class (default: max label + 1).
        title: figure title.

    Returns:
        The written path.

    Raises:
        ValueError: when the shapes differ.
    """
    img = _np(image)
    img = img[0] if img.ndim == 4 else img
    gt, pr = _np(truth).astype(np.int64), _np(prediction).astype(np.int64)
    if not img.shape == gt.shape == pr.shape:
        raise ValueError(f"image {img.shape}, truth {gt.shape}, prediction {pr.shape} differ")
    k = int(num_classes or max(gt.max(), pr.max()) + 1)
    if slices is None:
        fg = np.flatnonzero(gt.reshape(len(gt), -1).any(1))
        pool = fg if len(fg) else np.arange(len(gt))
        slices = sorted(
            {int(pool[int(i)]) for i in np.linspace(0, len(pool) - 1, min(3, len(pool)))}
        )
    fig, axes = plt.subplots(len(slices), 3, figsize=(9, 3 * len(slices)), squeeze=False)
    for row, z in zip(axes, slices):
        for ax, (name, overlay) in zip(row, (("image", None), ("truth", gt), ("prediction", pr))):
            ax.imshow(img[z], cmap="gray")
            if overlay is not None:
                ax.imshow(_label_rgba(overlay[z], k), interpolation="nearest")
            ax.set_title(f"{name}, slice {z}", fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_retrieval_heatmap(
    image: torch.Tensor | np.ndarray,
    similarity: torch.Tensor | np.ndarray,
    path: str | Path,
    *,
    top_positions: torch.Tensor | np.ndarray | None = None,
    patch_size: Sequence[int] = (1, 1, 1),
    slice_index: int | None = None,
    title: str | None = None,
) -> Path:
    """Write an axial slice with the cosine-similarity map of a retrieval as a PNG.

    Args:
        image: ``(1, D, H, W)`` or ``(D, H, W)`` target volume.
        similarity: ``(t, h, w)`` similarity on the patch grid (from
            :func:`~tapct_eval.retrieve_patches`); upsampled by ``patch_size``
            (nearest) and cropped to the image.
        path: PNG file to write.
        top_positions: ``(k, 3)`` patch positions to mark (best first).
        patch_size: ``(pd, ph, pw)``.
        slice_index: axial voxel slice (default: the slice of the best patch).
        title: figure title.

    Returns:
        The written path.
    """
    img = _np(image)
    img = img[0] if img.ndim == 4 else img
    sim = torch.as_tensor(_np(similarity), dtype=torch.float32)[None, None]
    full = tuple(g * p for g, p in zip(sim.shape[2:], patch_size))
    sim = F.interpolate(sim, size=full, mode="nearest")[
        0, 0, : img.shape[0], : img.shape[1], : img.shape[2]
    ]
    tops = None if top_positions is None else _np(top_positions).reshape(-1, 3)
    if slice_index is None:
        slice_index = (
            int(tops[0, 0] * patch_size[0] + patch_size[0] // 2)
            if tops is not None and len(tops)
            else int(sim.flatten(1).amax(1).argmax())
        )
    slice_index = min(max(slice_index, 0), img.shape[0] - 1)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(img[slice_index], cmap="gray")
    axes[0].set_title(f"target, slice {slice_index}", fontsize=8)
    axes[1].imshow(img[slice_index], cmap="gray")
    heat = axes[1].imshow(sim[slice_index].numpy(), cmap="jet", alpha=0.5, vmin=-1, vmax=1)
    if tops is not None:
        for i, j, k in tops:
            if i * patch_size[0] <= slice_index < (i + 1) * patch_size[0]:
                axes[1].add_patch(
                    plt.Rectangle(
                        (k * patch_size[2] - 0.5, j * patch_size[1] - 0.5),
                        patch_size[2],
                        patch_size[1],
                        fill=False,
                        color="white",
                    )
                )
    axes[1].set_title("cosine similarity", fontsize=8)
    fig.colorbar(heat, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def pca_rgb(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Project patch features onto their first three principal components, scaled to [0, 1].

    Args:
        features: ``(E, t, h, w)`` float tensor or array.

    Returns:
        ``(t, h, w, 3)`` float32 array in [0, 1] (each component min-max scaled over the
        volume; robust 1/99 percentiles).

    Raises:
        ValueError: If ``features`` is not 4-D.
    """
    from sklearn.decomposition import PCA

    x = _np(features).astype(np.float32, copy=False)
    if x.ndim != 4:
        raise ValueError(f"features must be (E, t, h, w), got shape {x.shape}")
    E, t, h, w = x.shape
    flat = x.reshape(E, -1).T  # (N, E)
    k = min(3, flat.shape[0], E)
    comps = PCA(n_components=k, svd_solver="full").fit_transform(flat)  # (N, k)
    if k < 3:
        comps = np.concatenate([comps, np.zeros((comps.shape[0], 3 - k), np.float32)], axis=1)
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    rgb = np.clip((comps - lo) / np.maximum(hi - lo, 1e-8), 0.0, 1.0)
    return rgb.reshape(t, h, w, 3).astype(np.float32)


def plot_pca_planes(
    volume_hu: np.ndarray,
    rgb: np.ndarray,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    path: str | Path,
    title: str,
) -> Path:
    """Draw the CT and the PCA colours on the middle axial, coronal and sagittal planes.

    Args:
        volume_hu: ``(D, H, W)`` HU.
        rgb: ``(t, h, w, 3)`` from :func:`pca_rgb` (one colour per patch).
        spacing: ``(sd, sh, sw)`` mm of the volume.
        patch_size: ``(pd, ph, pw)`` voxels per patch.
        path: The PNG.
        title: Figure title.
    Returns:
        The written path.
    """
    D, H, W = volume_hu.shape
    t, h, w, _ = rgb.shape
    sd, sh, sw = (float(s) for s in spacing)
    pd, ph, pw = patch_size
    ct = np.clip((volume_hu + 1000.0) / 1400.0, 0, 1)  # window [-1000, 400] HU
    # Planes: D runs inferior -> superior, H anterior -> posterior, W right -> left.
    planes = [
        ("axial", ct[D // 2], rgb[min(t - 1, (D // 2) // pd)], sh / sw, (ph * sh) / (pw * sw)),
        (
            "coronal",
            ct[::-1, H // 2],
            rgb[::-1, min(h - 1, (H // 2) // ph)],
            sd / sw,
            (pd * sd) / (pw * sw),
        ),
        (
            "sagittal",
            ct[::-1, :, W // 2],
            rgb[::-1, :, min(w - 1, (W // 2) // pw)],
            sd / sh,
            (pd * sd) / (ph * sh),
        ),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11, 7), dpi=100)
    for col, (name, img, col_rgb, aspect, aspect_rgb) in enumerate(planes):
        axes[0, col].imshow(img, cmap="gray", aspect=aspect, interpolation="nearest")
        axes[0, col].set_title(f"CT {name}")
        axes[1, col].imshow(col_rgb, aspect=aspect_rgb, interpolation="nearest")
        axes[1, col].set_title(f"PCA 1-3 {name}")
        for ax in axes[:, col]:
            ax.set_axis_off()
    fig.suptitle(title)
    return _save(fig, path, fmt="png")  # embed writes it under a temporary name


def plot_prediction_scatter(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    identity: bool = False,
    marked: np.ndarray | torch.Tensor | None = None,
) -> Path:
    """Write a scatter plot of one value against another (e.g. prediction vs truth) as a PNG.

    Args:
        x: ``(n,)`` values on the horizontal axis.
        y: ``(n,)`` values on the vertical axis.
        path: PNG file to write (parents are created).
        xlabel: horizontal axis label (with units).
        ylabel: vertical axis label.
        title: figure title.
        identity: draw the line ``y = x`` (prediction against truth).
        marked: ``(n,)`` bool; those points are drawn as crosses (e.g. censored cases).

    Returns:
        The written path.

    Raises:
        ValueError: when ``x`` and ``y`` differ in length.
    """
    xs, ys = _np(x).reshape(-1), _np(y).reshape(-1)
    if xs.shape != ys.shape:
        raise ValueError(f"x {xs.shape} and y {ys.shape} differ")
    mark = np.zeros(len(xs), bool) if marked is None else _np(marked).reshape(-1).astype(bool)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(xs[~mark], ys[~mark], marker="o", s=18)
    if mark.any():
        ax.scatter(xs[mark], ys[mark], marker="x", s=18)
    if identity and len(xs):
        lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=8)
    return _save(fig, path)


def plot_roc_curves(
    y_true: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write ROC curves (one per class or label, one-vs-rest) as a PNG.

    Each curve is :func:`sklearn.metrics.roc_curve` of one column; its legend entry gives
    the column's AUC (:func:`sklearn.metrics.roc_auc_score`). A column whose truth holds a
    single class has no ROC curve and is listed as ``undefined``.

    Args:
        y_true: ``(n,)`` 0/1 truth (binary) or ``(n, K)`` 0/1 indicators (multi-label, or
            a one-hot multi-class truth).
        scores: ``(n,)`` positive-class scores or ``(n, K)`` per-column scores.
        path: PNG file to write (parents are created).
        class_names: ``K`` legend names (default ``class 0..K-1``; ``positive`` for one).
        title: figure title.

    Returns:
        The written path.

    Raises:
        ValueError: when ``y_true`` and ``scores`` differ in shape.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = _np(y_true), _np(scores).astype(np.float64)
    y, s = (y[:, None] if y.ndim == 1 else y), (s[:, None] if s.ndim == 1 else s)
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} differ")
    k = y.shape[1]
    names = (
        list(class_names)
        if class_names
        else (["positive"] if k == 1 else [f"class {i}" for i in range(k)])
    )
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
    for i in range(k):
        if len(np.unique(y[:, i])) < 2:
            ax.plot([], [], label=f"{names[i]} (undefined)")
            continue
        fpr, tpr, _ = roc_curve(y[:, i], s[:, i])
        ax.plot(fpr, tpr, label=f"{names[i]} (AUC {roc_auc_score(y[:, i], s[:, i]):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=8)
    return _save(fig, path)


def plot_localisation(
    image: torch.Tensor | np.ndarray,
    truth: Sequence[float] | np.ndarray,
    prediction: Sequence[float] | np.ndarray,
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Write the axial slice through a structure with its true and predicted centre as a PNG.

    Args:
        image: ``(1, D, H, W)`` or ``(D, H, W)`` volume.
        truth: ``(z, y, x)`` true position in voxels (fractional allowed).
        prediction: ``(z, y, x)`` predicted position in voxels.
        path: PNG file to write.
        title: figure title.

    Returns:
        The written path.
    """
    img = _np(image)
    img = img[0] if img.ndim == 4 else img
    t, p = np.asarray(truth, float), np.asarray(prediction, float)
    k = int(np.clip(round(t[0]), 0, img.shape[0] - 1))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(img[k], cmap="gray")
    ax.plot(t[2], t[1], "o", color="lime", markersize=8, fillstyle="none", label="truth")
    ax.plot(p[2], p[1], "x", color="red", markersize=8, label=f"prediction (slice {p[0]:.0f})")
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title(title or f"slice {k}", fontsize=8)
    ax.axis("off")
    return _save(fig, path)
