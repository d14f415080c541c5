"""Collate multi-crops (or slabs plus their crop parameters) and iBOT masks into a batch."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from .masking import MaskingConfig, MaskingGenerator3d, sample_batch_masks
from .multicrop import MultiCropAugmentation, MultiCropParams, MultiCrops

__all__ = ["CropBatch", "SlabBatch", "collate_crops", "collate_data_and_cast", "collate_slabs"]


@attrs.frozen
class CropBatch:
    """A DINOv2 training batch of crops and iBOT masks (replaces the string-keyed dict).

    The objective takes these fields as explicit tensors; iBOT indices and weights come
    from ``tapct_ssl.ibot_mask_indices(masks)`` (one function computes them).

    Attributes:
        global_crops: ``(2 B, C, d, Hg, Wg)`` float, crop-major.
        local_crops: ``(n_local B, C, d, hl, wl)`` float, crop-major.
        masks: ``(2 B, N)`` bool, one row per global crop (``N`` tokens of its patch grid).
    """

    global_crops: torch.Tensor
    local_crops: torch.Tensor
    masks: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CropBatch:
        """All tensors on ``device``."""
        return CropBatch(*(t.to(device, non_blocking=non_blocking) for t in attrs.astuple(self)))

    def pin_memory(self) -> CropBatch:
        """Pinned copy (DataLoader ``pin_memory=True`` calls this on custom batch types)."""
        return CropBatch(*(t.pin_memory() for t in attrs.astuple(self)))


@attrs.frozen
class SlabBatch:
    """Slabs with their crop parameters and masks, drawn in a DataLoader worker.

    The crops are made later on the device: ``batch = batch.to(device, non_blocking=True)``,
    then ``augmentation.apply(batch.slabs, batch.params)`` (no host sync).

    Attributes:
        slabs: ``(B, C, S, H0, W0)`` as the dataset gives them (e.g. int16 or float32).
        params: `MultiCropParams` drawn for these slabs.
        masks: ``(2 B, N)`` bool iBOT masks of the global crops.
    """

    slabs: torch.Tensor
    params: MultiCropParams
    masks: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SlabBatch:
        """All tensors on ``device``."""
        return SlabBatch(
            slabs=self.slabs.to(device, non_blocking=non_blocking),
            params=self.params.to(device, non_blocking=non_blocking),
            masks=self.masks.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> SlabBatch:
        """Pinned copy (DataLoader ``pin_memory=True`` calls this on custom batch types)."""
        return SlabBatch(self.slabs.pin_memory(), self.params.pin_memory(), self.masks.pin_memory())


def collate_crops(samples: Sequence[MultiCrops]) -> MultiCrops:
    """Stack per-sample crops (TorchIO path, ``B = 1`` each) into the batched layout.

    Args:
        samples: ``B`` `MultiCrops`, each ``(V, C, d, h, w)`` per set (rows are views).

    Returns:
        `MultiCrops` with ``(V B, C, d, h, w)`` per set, crop-major.

    Raises:
        ValueError: no samples.
    """
    if not samples:
        raise ValueError("no samples to collate")

    def crop_major(tensors: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(tensors, dim=1)  # (V, B, C, d, h, w)
        return stacked.flatten(0, 1)

    return MultiCrops(
        global_crops=crop_major([s.global_crops for s in samples]),
        local_crops=crop_major([s.local_crops for s in samples]),
    )


def collate_data_and_cast(
    crops: MultiCrops | Sequence[MultiCrops],
    *,
    mask_generator: MaskingGenerator3d,
    masking: MaskingConfig | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> CropBatch:
    """DINOv2's ``collate_data_and_cast`` (``dinov2/data/collate.py``) for 3D crops.

    Masks follow `sample_batch_masks` (``int(2B * mask_probability)`` masked crops,
    stratified ratios, shuffled), drawn on the CPU.

    Args:
        crops: `MultiCropAugmentation` output (batched) or a list of per-sample outputs.
        mask_generator: Generator on the global crops' patch grid (``N = t*h*w``).
        masking: Mask probability and ratio (default `MaskingConfig()`).
        dtype: dtype of the collated crops.
        generator: Randomness of ratios, masks and shuffle (global RNG when None).

    Returns:
        `CropBatch`; the masks are CPU tensors (move the batch with `CropBatch.to`).

    Raises:
        ValueError: no samples.
    """
    if not isinstance(crops, MultiCrops):
        crops = collate_crops(list(crops))
    masks = sample_batch_masks(crops.global_crops.shape[0], mask_generator, masking, generator)
    return CropBatch(
        global_crops=crops.global_crops.to(dtype),
        local_crops=crops.local_crops.to(dtype),
        masks=masks,
    )


def collate_slabs(
    slabs: torch.Tensor | Sequence[torch.Tensor],
    augmentation: MultiCropAugmentation,
    mask_generator: MaskingGenerator3d,
    *,
    masking: MaskingConfig | None = None,
    crops_generator: torch.Generator | None = None,
    masks_generator: torch.Generator | None = None,
) -> SlabBatch:
    """Worker-side collate: stack slabs, draw crop parameters and masks on the CPU.

    Args:
        slabs: ``(B, C, S, H0, W0)`` tensor or ``B`` tensors ``(C, S, H0, W0)``.
        augmentation: Draws the crop parameters (`MultiCropAugmentation.sample`).
        mask_generator: Generator on the global crops' patch grid.
        masking: Mask probability and ratio (default `MaskingConfig()`).
        crops_generator: CPU generator of the crop parameters.
        masks_generator: CPU generator of the masks (separate stream, so changing the
            crop pipeline does not change the masks).

    Returns:
        `SlabBatch` of CPU tensors.

    Raises:
        ValueError: slabs not ``(B, C, S, H0, W0)``.
    """
    batch = slabs if isinstance(slabs, torch.Tensor) else torch.stack(list(slabs))
    if batch.ndim != 5:
        raise ValueError(f"expected slabs (B, C, S, H0, W0), got shape {tuple(batch.shape)}")
    b = batch.shape[0]
    params = augmentation.sample(b, batch.shape[2:], crops_generator)
    n_global = augmentation.config.n_global * b
    masks = sample_batch_masks(n_global, mask_generator, masking, masks_generator)
    return SlabBatch(slabs=batch, params=params, masks=masks)
