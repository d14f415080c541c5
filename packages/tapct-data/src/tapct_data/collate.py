"""Collate multi-crop outputs and iBOT masks into a DINOv2 training batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .masking import MaskingGenerator3d

__all__ = ["collate_crops", "collate_data_and_cast"]


def collate_crops(samples: Sequence[Mapping[str, Sequence[torch.Tensor]]]) -> dict[str, list]:
    """Stack per-sample crop dicts (TorchIO path) into the batched layout.

    Args:
        samples: ``B`` dicts ``{"global_crops": [(C, d, h, w)...], "local_crops": [...]}``.

    Returns:
        ``{"global_crops": [(B, C, d, h, w)...], "local_crops": [...]}``.
    """
    if not samples:
        raise ValueError("no samples to collate")
    return {
        key: [torch.stack([s[key][i] for s in samples]) for i in range(len(samples[0][key]))]
        for key in ("global_crops", "local_crops")
    }


def collate_data_and_cast(
    crops: Mapping[str, Sequence[torch.Tensor]] | Sequence[Mapping[str, Any]],
    *,
    mask_generator: MaskingGenerator3d,
    mask_ratio_tuple: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """DINOv2's ``collate_data_and_cast`` (``dinov2/data/collate.py``) for 3D crops.

    Crops are concatenated crop-major (all samples' crop 0, then crop 1, ...). Of the
    ``2B`` global crops, ``int(2B * mask_probability)`` get a mask whose ratio is drawn
    uniformly in a stratified bin of ``mask_ratio_tuple`` (bin ``i`` of ``linspace``); the
    rest get none; the masks are shuffled over the ``2B`` crops.

    Args:
        crops: `MultiCropAugmentation` output (batched dict) or a list of per-sample dicts.
        mask_generator: Generator on the global crops' patch grid (``N = t*h*w``).
        mask_ratio_tuple: ``(min, max)`` fraction of masked patches.
        mask_probability: Fraction of global crops that get a mask.
        dtype: dtype of the collated crops.
        generator: Randomness of ratios, masks and shuffle (global RNG when None).

    Returns:
        dict with ``collated_global_crops (2B, C, d, H, W)``, ``collated_local_crops
        (nB, C, d, h, w)``, ``collated_masks (2B, N) bool``, ``mask_indices_list (M,) long``
        (flat indices into ``2B * N``), ``masks_weight (M,) float`` (``1 / masked patches of
        its crop``), ``n_masked_patches (1,) long`` and ``upperbound int`` (sum of
        ``int(N * max ratio of each bin)``). Masks live on the crops' device.

    Raises:
        ValueError: bad ratios/probability or missing crops.
    """
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    lo, hi = mask_ratio_tuple
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(
            f"mask_ratio_tuple must satisfy 0 <= min <= max <= 1, got {mask_ratio_tuple}"
        )
    if not isinstance(crops, Mapping):
        crops = collate_crops(list(crops))
    if not crops["global_crops"]:
        raise ValueError("no global crops")
    global_crops = torch.cat(list(crops["global_crops"]), dim=0).to(dtype)
    local = list(crops["local_crops"])
    local_crops = (
        torch.cat(local, dim=0).to(dtype)
        if local
        else global_crops.new_empty((0, *global_crops.shape[1:]))
    )
    n_crops = global_crops.shape[0]
    n_tokens = mask_generator.num_patches
    n_masked = int(n_crops * mask_probability)
    probs = np.linspace(lo, hi, n_masked + 1)
    device = generator.device if generator is not None else torch.device("cpu")
    upperbound = 0
    masks = []
    for i in range(n_masked):
        u = float(torch.rand((), generator=generator, device=device))
        ratio = probs[i] + (probs[i + 1] - probs[i]) * u
        masks.append(torch.from_numpy(mask_generator(int(n_tokens * ratio), generator=generator)))
        upperbound += int(n_tokens * probs[i + 1])
    for _ in range(n_masked, n_crops):
        masks.append(torch.zeros(mask_generator.get_shape(), dtype=torch.bool))
    order = torch.randperm(n_crops, generator=generator, device=device).cpu()
    collated_masks = torch.stack([masks[i] for i in order.tolist()]).flatten(1)  # (2B, N)
    collated_masks = collated_masks.to(global_crops.device)
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    masks_weight = (
        (1 / collated_masks.sum(-1).clamp(min=1.0))
        .unsqueeze(-1)
        .expand_as(collated_masks)[collated_masks]
    ).float()
    return {
        "collated_global_crops": global_crops,
        "collated_local_crops": local_crops,
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.tensor(
            [mask_indices_list.shape[0]], dtype=torch.long, device=global_crops.device
        ),
        "upperbound": upperbound,
    }
