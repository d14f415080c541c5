"""Base class of the sample-then-apply transforms with a batched and a TorchIO path."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchio as tio

from ._random import generator_from


class BatchedRandomTransform(tio.Transform):
    """A random transform that samples a small params record, then applies it.

    Two paths share the same ``apply``:

    * batched: ``transform(x, generator=g)`` with ``x (B, C, D, H, W)`` on any device;
      per-sample parameters are drawn with ``g`` (or the global RNG), then applied.
    * TorchIO: ``transform(subject)`` on a ``tio.Subject`` (CPU). TorchIO stores
      ``(C, W, H, D)``; the images are permuted to ``(1, C, D, H, W)``, transformed with
      one params record drawn from the transform's own ``seed`` generator, and permuted
      back. Every ``tio.ScalarImage`` gets the same parameters (label maps are left out
      unless a subclass handles them).

    Subclasses implement ``sample(shape, generator)`` and ``apply(x, params)``.
    """

    def __init__(self, seed: int | torch.Generator | None = None) -> None:
        super().__init__(copy=True)
        self._generator = generator_from(seed)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Any:
        """Draw per-sample parameters for a batch of shape ``(B, C, D, H, W)``."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        """Apply ``params`` deterministically to ``x (B, C, D, H, W)``."""
        raise NotImplementedError

    def new_affine(self, affine_dhw: np.ndarray, params: Any) -> np.ndarray:
        """Affine (index ``(d, h, w)`` -> LPS mm) after ``apply``; identity by default."""
        return affine_dhw

    def __call__(self, data: Any, generator: torch.Generator | None = None) -> Any:  # type: ignore[override]
        if isinstance(data, torch.Tensor) and data.ndim == 5:
            params = self.sample(tuple(data.shape), generator)
            return self.apply(data, params)
        if isinstance(data, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__} expects a batch (B, C, D, H, W) or a tio.Subject, got a "
                f"tensor of shape {tuple(data.shape)}"
            )
        return super().__call__(data)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        images = subject.get_images(intensity_only=True)
        if not images:
            return subject
        c, w, h, d = images[0].data.shape
        params = self.sample((1, c, d, h, w), self._generator)
        return apply_params_to_subject(self, subject, params)


_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def apply_params_to_subject(
    transform: BatchedRandomTransform, subject: tio.Subject, params: Any
) -> tio.Subject:
    """Apply a params record to every scalar image of a subject, in place (TorchIO path)."""
    for image in subject.get_images(intensity_only=True):
        x = image.data.permute(0, 3, 2, 1)[None].float()  # (1, C, D, H, W)
        out = transform.apply(x, params)[0].permute(0, 3, 2, 1).contiguous()  # (C, W, H, D)
        affine_dhw = (_RAS_LPS @ image.affine)[:, [2, 1, 0, 3]]
        new = transform.new_affine(affine_dhw, params)
        image.set_data(out)
        image.affine = _RAS_LPS @ new[:, [2, 1, 0, 3]]
    return subject
