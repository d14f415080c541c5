"""DINOv2 multi-crop for CT: 2 global + N local crops with gamma and blur."""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torchio as tio

from ._random import generator_from
from .crops import CropParams, RandomResizedCrop3d
from .intensity import BlurParams, GammaParams, RandomGamma, RandomGaussianBlur

__all__ = ["MultiCropAugmentation", "MultiCropParams"]


@attrs.frozen
class MultiCropParams:
    """Parameters of every crop: ``(crop, gamma, blur)`` per global and per local crop."""

    global_crops: tuple[tuple[CropParams, GammaParams, BlurParams], ...]
    local_crops: tuple[tuple[CropParams, GammaParams, BlurParams], ...]


class MultiCropAugmentation:
    """DINOv2's multi-crop (``dinov2/data/augmentations.py``) for CT volumes.

    Each crop is a `RandomResizedCrop3d` followed by `RandomGamma` (replacing colour
    jitter, paper section 3.2) and `RandomGaussianBlur`. Blur probabilities follow
    DINOv2's intent, not its inverted code (PR #411): first global crop always blurred
    (``p=1.0``), second ``p=0.1``, local crops ``p=0.5``. Gamma ``p=0.8`` on every crop (the
    probability of DINOv2's colour jitter). Global and local crops keep the same depth
    (paper Appendix D).

    Call on a batch ``x (B, C, S, H0, W0)`` on any device (GPU path), with
    ``generator=``; or on a ``tio.Subject`` (CPU path: its first scalar image, parameters
    from ``seed``), which returns the same dict with ``(C, d, h, w)`` tensors. Both paths
    run `sample` then `apply`.

    Args:
        global_crops_size: ``(d, h, w)`` of the 2 global crops.
        local_crops_size: ``(d, h, w)`` of the local crops.
        local_crops_number: Number of local crops (0 allowed).
        global_crops_scale: In-plane area fraction range of global crops.
        local_crops_scale: In-plane area fraction range of local crops.
        ratio: In-plane aspect ratio range.
        log_gamma: ``log(gamma)`` range.
        gamma_p: Gamma probability per crop.
        blur_sigma: Blur sigma range (voxels).
        global_blur_p: Blur probabilities of the two global crops.
        local_blur_p: Blur probability of local crops.
        seed: Seed or generator of the TorchIO path.

    Returns (``__call__``):
        ``{"global_crops": [2 x (B, C, d, Hg, Wg)], "local_crops": [n x (B, C, d, hl, wl)]}``.
    """

    def __init__(
        self,
        global_crops_size: tuple[int, int, int] = (12, 224, 224),
        local_crops_size: tuple[int, int, int] = (12, 96, 96),
        local_crops_number: int = 8,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        log_gamma: tuple[float, float] = (-0.3, 0.3),
        gamma_p: float = 0.8,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        global_blur_p: tuple[float, float] = (1.0, 0.1),
        local_blur_p: float = 0.5,
        seed: int | torch.Generator | None = None,
    ) -> None:
        if local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {local_crops_number}")
        self.global_crops_size = tuple(int(s) for s in global_crops_size)
        self.local_crops_size = tuple(int(s) for s in local_crops_size)
        self.local_crops_number = int(local_crops_number)
        self.global_crop = RandomResizedCrop3d(global_crops_size, global_crops_scale, ratio)
        self.local_crop = RandomResizedCrop3d(local_crops_size, local_crops_scale, ratio)
        self.gamma = RandomGamma(log_gamma, gamma_p)
        self.global_blurs = tuple(RandomGaussianBlur(blur_sigma, p) for p in global_blur_p)
        if len(self.global_blurs) != 2:
            raise ValueError(f"global_blur_p needs 2 values, got {global_blur_p}")
        self.local_blur = RandomGaussianBlur(blur_sigma, local_blur_p)
        self._generator = generator_from(seed)

    def sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None
    ) -> MultiCropParams:
        """Draw all parameters for a batch of shape ``(B, C, S, H0, W0)``."""
        glob = tuple(
            (
                self.global_crop.sample(shape, generator),
                self.gamma.sample(shape, generator),
                blur.sample(shape, generator),
            )
            for blur in self.global_blurs
        )
        local = tuple(
            (
                self.local_crop.sample(shape, generator),
                self.gamma.sample(shape, generator),
                self.local_blur.sample(shape, generator),
            )
            for _ in range(self.local_crops_number)
        )
        return MultiCropParams(global_crops=glob, local_crops=local)

    def apply(self, x: torch.Tensor, params: MultiCropParams) -> dict[str, list[torch.Tensor]]:
        """Apply parameters to ``x (B, C, S, H0, W0)``; deterministic."""
        if x.ndim != 5:
            raise ValueError(f"expected x of shape (B, C, S, H0, W0), got {tuple(x.shape)}")
        x = x.float()

        def run(crop: RandomResizedCrop3d, blur: RandomGaussianBlur, p: tuple) -> torch.Tensor:
            out = crop.apply(x, p[0])
            out = self.gamma.apply(out, p[1])
            return blur.apply(out, p[2])

        return {
            "global_crops": [
                run(self.global_crop, blur, p)
                for blur, p in zip(self.global_blurs, params.global_crops)
            ],
            "local_crops": [run(self.local_crop, self.local_blur, p) for p in params.local_crops],
        }

    def __call__(self, x: Any, generator: torch.Generator | None = None) -> dict[str, list]:
        if isinstance(x, tio.Subject):
            image = x.get_images(intensity_only=True)[0]
            batch = image.data.permute(0, 3, 2, 1)[None].float()  # (C,W,H,D) -> (1,C,D,H,W)
            params = self.sample(tuple(batch.shape), generator or self._generator)
            out = self.apply(batch, params)
            return {key: [t[0] for t in crops] for key, crops in out.items()}
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a (B, C, S, H0, W0) tensor or tio.Subject, got {type(x)}")
        return self.apply(x, self.sample(tuple(x.shape), generator))
