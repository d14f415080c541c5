"""Base class of the sample-then-apply transforms with a batched and a TorchIO path.

Pure torch: TorchIO is used as the base class when it is importable, so the tensor path of
``tapct_data`` (crops, intensity, multi-crop, masks) imports with torch alone; a
``tio.Subject`` input then needs TorchIO installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from ._random import generator_from

if TYPE_CHECKING:
    from torchio import Subject
    from torchio import Transform as _TorchIOTransform
else:
    try:
        from torchio import Transform as _TorchIOTransform
    except ImportError:  # torch-only install: the batched tensor path still works

        class _TorchIOTransform:
            """Stand-in base when TorchIO is absent: tensors work, subjects raise."""

            def __init__(self, **_: Any) -> None:
                pass

            def __call__(self, data: Any) -> Any:
                raise ImportError(
                    f"{type(self).__name__} on a {type(data).__name__} needs torchio "
                    "(pip install torchio); batched tensors (B, C, D, H, W) work without it"
                )


def spatial_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(D, H, W)`` from ``(D, H, W)``, ``(C, D, H, W)`` or ``(B, C, D, H, W)``."""
    dims = tuple(int(s) for s in in_shape)
    if len(dims) < 3 or min(dims) < 1:
        raise ValueError(f"in_shape must end with positive (D, H, W), got {dims}")
    return dims[-3], dims[-2], dims[-1]


def cat_params(records: Sequence[Any]) -> Any:
    """Concatenate params records of one type along the batch axis (crop-major).

    Every field of a params record is a tensor whose first axis is the batch.
    """
    cls = type(records[0])
    return cls(
        **{f.name: torch.cat([getattr(r, f.name) for r in records]) for f in attrs.fields(cls)}
    )


def map_params(record: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """A params record with ``fn`` applied to every tensor field (``.to(device)``, pinning)."""
    cls = type(record)
    return cls(**{f.name: fn(getattr(record, f.name)) for f in attrs.fields(cls)})


class BatchedRandomTransform(_TorchIOTransform):
    """A random transform that samples a small params record, then applies it.

    Two paths share the same ``apply``:

    * batched: ``transform(x, generator=g)`` with ``x (B, C, D, H, W)`` on any device;
      per-sample parameters are drawn on the CPU with ``g`` (or the global RNG), then
      applied on ``x``'s device with no per-sample loop and no host read.
    * TorchIO: ``transform(subject)`` on a ``tio.Subject`` (CPU). TorchIO stores
      ``(C, W, H, D)``; the images are permuted to ``(1, C, D, H, W)``, transformed with
      one params record drawn from the transform's own ``seed`` generator, and permuted
      back. Every ``tio.ScalarImage`` gets the same parameters (label maps are left out
      unless a subclass handles them).

    Subclasses implement ``sample(batch_size, in_shape, generator)`` and
    ``apply(x, params)``; params records are attrs classes of ``(B, ...)`` tensors.
    """

    def __init__(self, seed: int | torch.Generator | None = None) -> None:
        super().__init__(copy=True)
        self._generator = generator_from(seed)

    def sample(
        self,
        batch_size: int,
        in_shape: Sequence[int],
        generator: torch.Generator | None = None,
    ) -> Any:
        """Draw parameters for ``batch_size`` inputs of spatial shape ``(D, H, W)``."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        """Apply ``params`` deterministically to ``x (B, C, D, H, W)``."""
        raise NotImplementedError

    def new_affine(
        self, affine_dhw: np.ndarray, params: Any, in_shape: tuple[int, int, int]
    ) -> np.ndarray:
        """Affine (index ``(d, h, w)`` -> LPS mm) after ``apply`` on an input of spatial
        shape ``in_shape``; identity by default."""
        return affine_dhw

    def __call__(self, data: Any, generator: torch.Generator | None = None) -> Any:  # type: ignore[override]
        if isinstance(data, torch.Tensor) and data.ndim == 5:
            params = self.sample(data.shape[0], data.shape[2:], generator)
            return self.apply(data, params)
        if isinstance(data, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__} expects a batch (B, C, D, H, W) or a tio.Subject, got a "
                f"tensor of shape {tuple(data.shape)}"
            )
        return super().__call__(data)

    def apply_transform(self, subject: Subject) -> Subject:
        images = subject.get_images(intensity_only=True)
        if not images:
            return subject
        _c, w, h, d = images[0].data.shape
        params = self.sample(1, (d, h, w), self._generator)
        return apply_params_to_subject(self, subject, params)


_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def apply_params_to_subject(
    transform: BatchedRandomTransform, subject: Subject, params: Any
) -> Subject:
    """Apply a params record to every scalar image of a subject, in place (TorchIO path)."""
    for image in subject.get_images(intensity_only=True):
        x = image.data.permute(0, 3, 2, 1)[None]  # (1, C, D, H, W)
        out = transform.apply(x, params)[0].permute(0, 3, 2, 1).contiguous()  # (C, W, H, D)
        affine_dhw = (_RAS_LPS @ image.affine)[:, [2, 1, 0, 3]]
        new = transform.new_affine(affine_dhw, params, spatial_shape(x.shape))
        image.set_data(out)
        image.affine = _RAS_LPS @ new[:, [2, 1, 0, 3]]
    return subject
