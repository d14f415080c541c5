"""``tapct embed``: dense patch features and window cls tokens of scans, plus a PCA picture.

Per scan ``NAME`` the output folder gets:

- ``NAME.safetensors`` (or ``NAME.zarr``) with ``patch_features (E, t, h, w)`` float32,
  ``cls_tokens (n_windows, E)`` float32 and ``window_positions (n_windows, 3)`` int64
  (start voxel of each sliding window, in the padded volume);
- ``NAME_pca.png``: the first three principal components of the patch features as RGB on
  the middle axial, coronal and sagittal planes, beside the CT;

and ``manifest.json`` lists every scan with its source, shapes, spacing (mm), the
feature grid's spacing (mm per patch), the model and the window settings. Outputs are
written into a temp folder and appear only when every scan succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tapct_app.errors import UserError

__all__ = ["embed_command", "pca_rgb", "save_pca_figure"]


def pca_rgb(features: Any) -> np.ndarray:
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

    x = np.asarray(features, dtype=np.float32)
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


def save_pca_figure(
    volume_hu: np.ndarray,
    rgb: np.ndarray,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    path: Path,
    title: str,
) -> None:
    """Draw the CT and the PCA colours on the middle axial, coronal and sagittal planes.

    Args:
        volume_hu: ``(D, H, W)`` HU.
        rgb: ``(t, h, w, 3)`` from :func:`pca_rgb`.
        spacing: ``(sd, sh, sw)`` mm of the volume.
        patch_size: ``(pd, ph, pw)`` voxels per patch.
        path: The PNG.
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    D, H, W = volume_hu.shape
    t, h, w, _ = rgb.shape
    sd, sh, sw = (float(s) for s in spacing)
    pd, ph, pw = patch_size
    ct = np.clip((volume_hu + 1000.0) / 1400.0, 0, 1)  # window [-1000, 400] HU
    # Planes: D runs inferior -> superior, H anterior -> posterior, W right -> left.
    planes = [
        ("axial", ct[D // 2], rgb[min(t - 1, (D // 2) // pd)], sh / sw, (ph * sh) / (pw * sw)),
        ("coronal", ct[::-1, H // 2], rgb[::-1, min(h - 1, (H // 2) // ph)], sd / sw,
         (pd * sd) / (pw * sw)),
        ("sagittal", ct[::-1, :, W // 2], rgb[::-1, :, min(w - 1, (W // 2) // pw)], sd / sh,
         (pd * sd) / (ph * sh)),
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _save_features(feats: Any, folder: Path, name: str, fmt: str) -> str:
    patch = feats.load_patch_features().contiguous().float()
    tensors = {
        "patch_features": patch,
        "cls_tokens": feats.cls_tokens.contiguous().float(),
        "window_positions": feats.window_positions.contiguous().long(),
    }
    if fmt == "safetensors":
        from safetensors.torch import save_file

        file = f"{name}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "tapct-embedding/1"})
        return file
    import zarr

    file = f"{name}.zarr"
    group = zarr.open_group(str(folder / file), mode="w")
    for key, value in tensors.items():
        arr = value.numpy()
        chunks = (arr.shape[0], 1, *arr.shape[2:]) if key == "patch_features" else arr.shape
        group.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=chunks)[...] = arr
    group.attrs["format"] = "tapct-embedding/1"
    return file


def embed_command(
    *,
    inputs: Sequence[Path],
    model: str,
    output: Path,
    roi: tuple[int, int, int] | None,
    overlap: float,
    fmt: str,
    in_plane: tuple[int, int] | None,
    device: str,
    pca: bool,
    console: Any,
) -> None:
    """Run ``tapct embed`` (see the module docstring).

    Raises:
        UserError: Missing/corrupt/non-CT input, a bad ``--roi``/``--overlap``/``--format``,
            or a model that cannot be loaded; nothing is left in ``output``.
    """
    import torch

    from tapct_app.backbone import load_backbone
    from tapct_app.outputs import atomic_output_dir
    from tapct_app.scans import check_inputs_exist, iter_scans
    from tapct_app.train.distributed import resolve_device

    check_inputs_exist(inputs)
    if not 0.0 <= overlap < 1.0:
        raise UserError(f"--overlap {overlap}: must lie in [0, 1)")
    if fmt not in ("safetensors", "zarr"):
        raise UserError(f"--format {fmt!r}: expected safetensors or zarr")
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from exc
    backbone = load_backbone(model, dev)
    patch = tuple(int(p) for p in backbone.patch_size)
    roi_size = tuple(roi) if roi is not None else tuple(int(s) for s in backbone.img_size)
    if any(r % p for r, p in zip(roi_size, patch, strict=True)):
        raise UserError(
            f"--roi {','.join(map(str, roi_size))}: each axis must be a multiple of the "
            f"model's patch size {','.join(map(str, patch))}"
        )
    from tapct_data import ClipNormalize, resize_for_eval
    from tapct_eval import extract_features

    normalize = ClipNormalize()
    manifest: dict[str, Any] = {
        "format": "tapct-embedding/1",
        "model": str(model),
        "model_config": getattr(backbone, "config", {}),
        "roi_size": list(roi_size),
        "overlap": overlap,
        "patch_size": list(patch),
        "in_plane": list(in_plane) if in_plane else None,
        "normalization": {"lower": normalize.lower, "upper": normalize.upper,
                          "mean": normalize.mean, "std": normalize.std},
        "scans": [],
    }
    with atomic_output_dir(output) as tmp:
        for name, source, volume in iter_scans(inputs):
            if in_plane is not None:
                volume = resize_for_eval(volume, in_plane=in_plane)
            hu = volume.data  # (1, D, H, W) HU
            x = normalize(hu).float()
            with torch.inference_mode():
                feats = extract_features(backbone, x, roi_size, overlap=overlap, device=dev)
            file = _save_features(feats, tmp, name, fmt)
            spacing = [float(s) for s in volume.spacing]
            entry = {
                "name": name,
                "source": source,
                "file": file,
                "volume_shape": list(hu.shape[1:]),
                "spacing_mm": spacing,
                "patch_features_shape": list(feats.load_patch_features().shape),
                "cls_tokens_shape": list(feats.cls_tokens.shape),
                "feature_spacing_mm": [s * p for s, p in zip(spacing, patch, strict=True)],
                "affine": np.asarray(volume.affine, dtype=float).tolist(),
            }
            if pca:
                rgb = pca_rgb(feats.load_patch_features().numpy())
                png = f"{name}_pca.png"
                save_pca_figure(hu[0].numpy(), rgb, spacing, patch, tmp / png,
                                f"{name}: first 3 principal components of patch features")
                entry["pca_png"] = png
            manifest["scans"].append(entry)
            console.print(
                f"{source}: volume {tuple(entry['volume_shape'])} -> features "
                f"{tuple(entry['patch_features_shape'])}, {entry['cls_tokens_shape'][0]} windows"
            )
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    console.print(f"wrote {len(manifest['scans'])} embedding(s) and manifest.json to {output}/")
