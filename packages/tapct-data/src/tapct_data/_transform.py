"""Base classes of the sample-then-apply transforms, with a batched and a TorchIO path.

Pure torch: TorchIO is used as the base class when it is importable, so the tensor path of
``tapct_data`` (crops, intensity, multi-crop, masks) imports with torch alone; a
``tio.Subject`` input then needs TorchIO installed.

TorchIO conventions followed on a ``tio.Subject`` (TorchIO's ``RandomGamma`` -> ``Gamma``):
a random transform draws one params record, builds the deterministic transform holding it
(`ParamsTransform`), applies that and records it in ``subject.history`` (the random one is
not recorded), so ``subject.get_composed_history()`` replays the exact same result and
``subject.apply_inverse_transform()`` inverts what is invertible (TorchIO warns and skips
the rest). Both take TorchIO's ``include``, ``exclude``, ``copy`` (and every other
``tio.Transform`` keyword).

Orientation: TorchIO stores each image as ``(C, I, J, K)`` in its file's voxel order with
a RAS affine. Each image is brought to the canonical ``(C, D, H, W)`` LPS layout with the
axial axis first (DESIGN.md section 3; the axes found from the affine by nibabel's
``io_orientation``, flips and transposes only), transformed there, and put back in its own
voxel order with its affine updated; so a RAS-stored and an LPS-stored copy of a subject
give the same crop of the same anatomy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from ._random import generator_from

if TYPE_CHECKING:
    from torchio import Image, Subject
    from torchio import IntensityTransform as _TorchIOIntensity
    from torchio import SpatialTransform as _TorchIOSpatial
    from torchio import Transform as _TorchIOTransform
else:
    try:
        from torchio import IntensityTransform as _TorchIOIntensity
        from torchio import SpatialTransform as _TorchIOSpatial
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

        _TorchIOIntensity = _TorchIOSpatial = _TorchIOTransform


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


# ---------------------------------------------------------------------------------------
# TorchIO image <-> canonical (C, D, H, W) LPS
# ---------------------------------------------------------------------------------------

_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
# Canonical target before the final transpose: array axes toward +L, +P, +S.
_TARGET = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def _reorient(
    data: torch.Tensor, affine: np.ndarray, transform: np.ndarray
) -> tuple[torch.Tensor, np.ndarray]:
    """Flip and transpose ``(C, I, J, K)`` by a nibabel orientation transform (torch port
    of ``nibabel.orientations.apply_orientation``), with the matching affine."""
    from nibabel.orientations import inv_ornt_aff

    flips = [ax + 1 for ax in range(3) if transform[ax, 1] == -1]
    out = data.flip(flips) if flips else data
    order = np.argsort(transform[:, 0])
    out = out.permute(0, *(int(o) + 1 for o in order))
    return out, affine @ inv_ornt_aff(transform, tuple(data.shape[1:]))


def to_canonical(
    data: torch.Tensor, affine_ras: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A TorchIO image's tensor in the canonical layout.

    Args:
        data: ``(C, I, J, K)`` in the image's voxel order (``tio.Image.data``).
        affine_ras: ``(4, 4)`` map from ``(i, j, k)`` to RAS mm (``tio.Image.affine``).

    Returns:
        ``(x (C, D, H, W), affine (4, 4) from (d, h, w) to LPS mm, orientation)``; the
        orientation (nibabel ``(3, 2)`` array of the image's axes) goes to `from_canonical`.
    """
    from nibabel.orientations import io_orientation, ornt_transform

    affine_lps = _RAS_LPS @ np.asarray(affine_ras, dtype=np.float64)
    current = io_orientation(affine_lps)
    out, affine = _reorient(data, affine_lps, ornt_transform(current, _TARGET))
    return out.permute(0, 3, 2, 1), affine[:, [2, 1, 0, 3]], current


def from_canonical(
    x: torch.Tensor, affine_dhw: np.ndarray, orientation: np.ndarray
) -> tuple[torch.Tensor, np.ndarray]:
    """Inverse of `to_canonical`: ``(C, D, H, W)`` back to the image's own voxel order.

    Returns:
        ``(data (C, I, J, K) contiguous, affine (4, 4) to RAS mm)``.
    """
    from nibabel.orientations import ornt_transform

    lps = x.permute(0, 3, 2, 1)
    out, affine = _reorient(lps, affine_dhw[:, [2, 1, 0, 3]], ornt_transform(_TARGET, orientation))
    return out.contiguous(), _RAS_LPS @ affine


def canonical_shape(image: Image) -> tuple[int, int, int]:
    """``(D, H, W)`` of a TorchIO image in the canonical layout (no data is read)."""
    from nibabel.orientations import io_orientation

    axes = io_orientation(_RAS_LPS @ np.asarray(image.affine, dtype=np.float64))[:, 0]
    by_axis = {int(a): int(n) for a, n in zip(axes, image.spatial_shape, strict=True)}
    return by_axis[2], by_axis[1], by_axis[0]


def is_label(image: Image) -> bool:
    """Whether a TorchIO image is a ``LabelMap`` (resampled nearest, never intensity-changed)."""
    import torchio as tio

    return isinstance(image, tio.LabelMap)


# ---------------------------------------------------------------------------------------
# Random transforms (sample) and deterministic ones (apply)
# ---------------------------------------------------------------------------------------


class BatchedRandomTransform(_TorchIOTransform):
    """A random transform that samples a small params record, then applies it.

    Two paths share the same ``apply``:

    * batched: ``transform(x, generator=g)`` with ``x (B, C, D, H, W)`` on any device;
      per-sample parameters are drawn on the CPU with ``g`` (or the global RNG), then
      applied on ``x``'s device with no per-sample loop and no host read.
    * TorchIO: ``transform(subject)`` on a ``tio.Subject`` (CPU). One params record
      (``B = 1``) is drawn (from ``generator`` if given, else the transform's own ``seed``
      generator, else the global RNG) on the canonical
      ``(D, H, W)`` of the first selected image, and `fixed` turns it into the
      deterministic `ParamsTransform` that is applied and recorded in the subject's
      history. Spatial transforms (``spatial = True``) apply it to every selected image,
      label maps with `apply_label` (nearest neighbour); intensity transforms to the
      scalar images only.

    Subclasses implement ``sample(batch_size, in_shape, generator)``,
    ``apply(x, params)`` and `fixed`; spatial ones also `apply_label` and `new_affine`.
    Params records are attrs classes of ``(B, ...)`` tensors.

    Args:
        seed: Seed or generator of the TorchIO path.
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ``p``
            is not one: subclasses use ``p`` for their per-sample probability).
    """

    spatial = False

    def __init__(self, seed: int | torch.Generator | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._generator = generator_from(seed)
        self._call_generator: torch.Generator | None = None

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

    def apply_label(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        """Apply ``params`` to a label map ``(B, C, D, H, W)`` (spatial transforms only)."""
        raise NotImplementedError(f"{type(self).__name__} has no label-map path")

    def new_affine(
        self, affine_dhw: np.ndarray, params: Any, in_shape: tuple[int, int, int]
    ) -> np.ndarray:
        """Affine (index ``(d, h, w)`` -> LPS mm) after ``apply`` on an input of spatial
        shape ``in_shape``; identity by default."""
        return affine_dhw

    def fixed(self, params: Any, in_shape: tuple[int, int, int]) -> ParamsTransform:
        """The deterministic TorchIO transform applying ``params`` (one row), with this
        transform's ``include``/``exclude``/``copy``."""
        raise NotImplementedError

    def _base_kwargs(self) -> dict[str, Any]:
        return {"include": self.include, "exclude": self.exclude, "copy": self.copy}

    def __call__(self, data: Any, generator: torch.Generator | None = None) -> Any:  # type: ignore[override]
        if isinstance(data, torch.Tensor) and data.ndim == 5:
            params = self.sample(data.shape[0], data.shape[2:], generator)
            return self.apply(data, params)
        if isinstance(data, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__} expects a batch (B, C, D, H, W) or a tio.Subject, got a "
                f"tensor of shape {tuple(data.shape)}"
            )
        self._call_generator = generator
        try:
            return super().__call__(data)
        finally:
            self._call_generator = None

    def apply_transform(self, subject: Subject) -> Subject:
        """Draw one parameter record and apply it to every selected image (TorchIO hook).

        Returns:
            ``subject`` with the images changed and this draw recorded in its history as
            the deterministic transform (TorchIO's ``RandomGamma`` -> ``Gamma`` rule).
        """
        images = subject.get_images(
            intensity_only=not self.spatial, include=self.include, exclude=self.exclude
        )
        if not images:
            return subject
        shape = canonical_shape(images[0])
        params = self.sample(1, shape, self._call_generator or self._generator)
        fixed = self.fixed(params, shape)
        subject = fixed.apply_transform(subject)
        subject.add_transform(fixed, fixed._get_reproducing_arguments())
        return subject

    def _add_transform_to_subject_history(self, subject: Subject) -> None:
        """Not recorded: the deterministic transform it applied is (TorchIO's rule)."""


class ParamsTransform(_TorchIOTransform):
    """Deterministic TorchIO transform applying one sampled params record (``B = 1``).

    The TorchIO face of a `BatchedRandomTransform`: what ``subject.history`` holds and
    ``get_composed_history()`` rebuilds from ``args_names``. Its parameters are plain
    numbers; `random` and `params` turn them back into the transform and the record of
    the batched path, so both paths run the same ``apply``.
    """

    spatial = False

    def random(self) -> BatchedRandomTransform:
        """The random transform whose ``apply`` this one uses."""
        raise NotImplementedError

    def params(self) -> Any:
        """The params record (one row) this transform applies."""
        raise NotImplementedError

    def apply_transform(self, subject: Subject) -> Subject:
        """Apply this transform's fixed parameters to every selected image (TorchIO hook)."""
        images: dict[str, Image] = subject.get_images_dict(  # type: ignore[call-overload]
            intensity_only=not self.spatial, include=self.include, exclude=self.exclude
        )
        apply_params_to_images(self, images)
        return subject

    def apply_canonical(
        self, x: torch.Tensor, affine_dhw: np.ndarray, label: bool
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Apply to one canonical image ``(C, D, H, W)``; returns the output and its affine."""
        random, params = self.random(), self.params()
        shape = spatial_shape(x.shape)
        out = (random.apply_label if label else random.apply)(x[None], params)[0]
        return out, random.new_affine(affine_dhw, params, shape)


def check_same_grid(
    who: str, canonical: dict[str, tuple[torch.Tensor, np.ndarray, np.ndarray]]
) -> None:
    """Raise unless every canonical image has the same ``(D, H, W)`` and affine.

    Args:
        who: The transform's name, for the message.
        canonical: Image name -> `to_canonical` result.

    Raises:
        ValueError: naming two images on different grids (one set of crop parameters
            cannot keep them aligned).
    """
    if len(canonical) < 2:
        return
    (ref, (x0, a0, _)), *others = canonical.items()
    for name, (x, a, _) in others:
        if x.shape[1:] != x0.shape[1:] or not np.allclose(a, a0, rtol=1e-5, atol=1e-3):
            raise ValueError(
                f"{who}: images {ref!r} (D, H, W) {tuple(x0.shape[1:])} and {name!r} "
                f"{tuple(x.shape[1:])} are not on the same voxel grid; resample one onto the "
                "other first (tio.Resample(target=...)) or select images with include=/exclude="
            )


def apply_params_to_images(transform: ParamsTransform, images: dict[str, Image]) -> None:
    """Apply a `ParamsTransform` to TorchIO images in place, each through the canonical
    layout and back to its own voxel order.

    Raises:
        ValueError: a spatial transform over images on different grids (`check_same_grid`).
    """
    canonical = {name: to_canonical(image.data, image.affine) for name, image in images.items()}
    if transform.spatial:
        check_same_grid(transform.name, canonical)
    for name, image in images.items():
        x, affine, orientation = canonical[name]
        out, new_affine = transform.apply_canonical(x, affine, is_label(image))
        data, affine_ras = from_canonical(out, new_affine, orientation)
        image.set_data(data)
        image.affine = affine_ras


class SpatialParamsTransform(ParamsTransform, _TorchIOSpatial):
    """A `ParamsTransform` over every selected image, label maps included."""

    spatial = True


class IntensityParamsTransform(ParamsTransform, _TorchIOIntensity):
    """A `ParamsTransform` over the selected scalar images only."""
