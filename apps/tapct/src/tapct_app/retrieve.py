"""``tapct retrieve``: lesion patch retrieval in a follow-up scan (paper section 4.4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tapct_app.errors import UserError, user_errors_from

__all__ = ["retrieve_command", "voxel_mask_to_patches"]


def voxel_mask_to_patches(mask: Any, patch_size: tuple[int, int, int]) -> Any:
    """Mark every patch that contains at least one voxel of a mask.

    Args:
        mask: ``(D, H, W)`` bool tensor on the scan's voxel grid.
        patch_size: ``(pd, ph, pw)``.

    Returns:
        ``(t, h, w)`` bool with ``(t, h, w) = ceil((D, H, W) / patch_size)`` (the grid of
        ``tapct_eval.extract_features``).
    """
    import torch
    import torch.nn.functional as F

    pooled = F.max_pool3d(
        mask.float()[None, None], kernel_size=patch_size, stride=patch_size, ceil_mode=True
    )
    return pooled[0, 0] > 0.5 if pooled.numel() else torch.zeros(0, dtype=torch.bool)


def retrieve_command(
    query_scan: Path,
    query_mask: Path,
    target_scan: Path,
    *,
    model: str,
    output: Path,
    top_k: int,
    label: int | None,
    roi: tuple[int, int, int] | None,
    device: str,
    console: Any,
    intensity_stats: Path | None = None,
    allow_non_ct: bool = False,
) -> None:
    """Average the lesion's patch embeddings in one scan and rank the follow-up's patches.

    Writes ``retrieval.json`` (top-k patch positions, their voxel boxes and cosine
    scores), ``similarity.safetensors`` (the ``(t, h, w)`` map) and ``retrieval.png``.
    ``allow_non_ct`` (``--allow-non-ct``) reads non-HU scans anyway.

    Raises:
        UserError: Missing or unreadable inputs, an empty mask, a bad ``--roi``.
    """
    from safetensors.torch import save_file
    from tapct_eval import (
        extract_features,
        masked_patch_features,
        plot_retrieval_heatmap,
        retrieve_patches,
    )

    from tapct_app.devices import resolve_device
    from tapct_app.intensity import model_normalize
    from tapct_app.models import load_backbone
    from tapct_app.outputs import atomic_output_dir, check_output
    from tapct_app.readers import ScanLoaders
    from tapct_app.scans import check_inputs_exist

    check_inputs_exist([query_scan, query_mask, target_scan])
    check_output(output, "folder", owned_by="retrieval.json")
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: must be >= 1")
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from exc
    backbone, _ = load_backbone(model, dev)
    patch = backbone.patch_size  # (pd, ph, pw) ints
    roi_size = tuple(roi) if roi is not None else tuple(int(s) for s in backbone.img_size)
    if any(r % p for r, p in zip(roi_size, patch, strict=True)):
        raise UserError(f"--roi {roi_size}: each axis must be a multiple of the patch size {patch}")
    loaders = ScanLoaders(model_normalize(model, intensity_stats), allow_non_ct=allow_non_ct)
    q_img = loaders.load_image(query_scan)
    q_lab = loaders.load_label(query_mask, query_scan)
    lesion = q_lab == label if label is not None else q_lab > 0
    if not bool(lesion.any()):
        which = f"label {label}" if label is not None else "any label > 0"
        raise UserError(f"{query_mask}: the mask has no voxel with {which}")
    t_img = loaders.load_image(target_scan)
    q_feats = extract_features(backbone, q_img, roi_size, device=dev).load_patch_features()
    t_feats = extract_features(backbone, t_img, roi_size, device=dev).load_patch_features()
    patch_mask = voxel_mask_to_patches(lesion, patch)
    with user_errors_from(query_mask):
        query = masked_patch_features(q_feats, patch_mask)
    result = retrieve_patches(query, t_feats, k=top_k)
    with atomic_output_dir(output) as tmp:
        sim = {"similarity": result.similarity.contiguous()}
        save_file(sim, str(tmp / "similarity.safetensors"))
        plot_retrieval_heatmap(
            t_img, result.similarity, tmp / "retrieval.png", top_positions=result.positions,
            patch_size=patch, title=f"{target_scan.name}: similarity to the lesion of "
            f"{query_scan.name}",
        )
        affine = loaders.volume(target_scan).affine  # (d, h, w, 1) -> LPS mm
        matches: list[dict[str, Any]] = []
        for i, (pos, score) in enumerate(
            zip(result.positions.tolist(), result.scores.tolist(), strict=True)
        ):
            start = [int(v) * p for v, p in zip(pos, patch, strict=True)]
            centre = [s + (p - 1) / 2 for s, p in zip(start, patch, strict=True)]
            world = affine @ [*centre, 1.0]
            matches.append({
                "rank": i + 1,
                "patch": [int(v) for v in pos],
                "voxel_start": start,
                "voxel_size": list(patch),
                "centre_lps_mm": [round(float(v), 2) for v in world[:3]],
                "cosine": float(score),
            })  # fmt: skip
        info = {
            "axes": "patch and voxel indices are (d, h, w) of the canonical array: d "
            "inferior->superior, h anterior->posterior, w right->left (LPS, axial first); "
            "centre_lps_mm is the patch centre in patient coordinates (DICOM LPS, mm)",
            "query_scan": str(query_scan),
            "query_mask": str(query_mask),
            "target_scan": str(target_scan),
            "model": str(model),
            "query_patches": int(patch_mask.sum()),
            "top_k": matches,
        }
        (tmp / "retrieval.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    best = matches[0]
    console.print(
        f"lesion of {query_scan.name} ({info['query_patches']} patches) -> best match in "
        f"{target_scan.name} at voxel {tuple(best['voxel_start'])} (cosine {best['cosine']:.3f}); "
        f"wrote {output}/"
    )
