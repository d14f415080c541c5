"""DINOv2 multi-crop for CT: 2 global + N local crops with gamma and blur."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs
import torch

from ._random import generator_from
from ._transform import (
    BatchedRandomTransform,
    _TorchIOSpatial,
    _TorchIOTransform,
    canonical_shape,
    cat_params,
    check_same_grid,
    from_canonical,
    is_label,
    map_params,
    spatial_shape,
    to_canonical,
)
from .crops import RandomResizedCrop3d
from .intensity import RandomGamma, RandomGaussianBlur

if TYPE_CHECKING:
    from torchio import Subject

__all__ = [
    "MultiCropAugmentation",
    "MultiCropConfig",
    "MultiCropParams",
    "MultiCropViews",
    "MultiCrops",
]

# Keywords of ``tio.Transform`` (the rest of MultiCropAugmentation's keywords are config fields).
_TORCHIO_KEYWORDS = frozenset(
    {"p", "copy", "include", "exclude", "keys", "keep", "parse_input", "label_keys"}
)


def _ints(value: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _floats(value: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def _range(name: str, value: tuple[float, ...], low: float, high: float | None = None) -> None:
    ok = len(value) == 2 and low <= value[0] <= value[1]
    if ok and high is not None:
        ok = value[1] <= high
    if not ok:
        bound = f"{low} <= min <= max" + (f" <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be (min, max) with {bound}, got {value}")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


@attrs.frozen
class MultiCropConfig:
    """Multi-crop parameters (paper section 3.1-3.2, Table 7; DINOv2's ``crops`` section).

    Attributes:
        global_crops_size: ``(d, H, W)`` of the 2 global crops, voxels.
        local_crops_size: ``(d, h, w)`` of the local crops; the same depth as the global
            crops (paper Appendix D: shallower local crops hurt).
        local_crops_number: Number of local crops per sample (0 allowed).
        global_crops_scale: In-plane area fraction range of the global crops.
        local_crops_scale: In-plane area fraction range of the local crops.
        ratio: In-plane aspect ratio ``w / h`` range (log-uniform).
        log_gamma: ``log(gamma)`` range of the random gamma (replaces colour jitter).
        gamma_p: Gamma probability per crop (DINOv2's colour-jitter probability).
        gamma_value_range: Fixed ``(lo, hi)`` of the gamma rescale, or None for each
            crop's own min/max (`adjust_gamma`).
        blur_sigma: Gaussian blur sigma range, voxels (DINOv2: (0.1, 2.0)).
        global_blur_p: Blur probabilities of the two global crops (DINOv2's intent 1.0,
            0.1, not its inverted code, PR #411).
        local_blur_p: Blur probability of the local crops.
        pad_value: Fill of slices missing in inputs shallower than ``d``; None = each
            sample's minimum (air).

    Raises:
        ValueError: naming the bad value (non-positive sizes, different depths, bad ranges
            or probabilities).
    """

    global_crops_size: tuple[int, ...] = attrs.field(default=(12, 224, 224), converter=_ints)
    local_crops_size: tuple[int, ...] = attrs.field(default=(12, 96, 96), converter=_ints)
    local_crops_number: int = attrs.field(default=8, converter=int)
    global_crops_scale: tuple[float, ...] = attrs.field(default=(0.32, 1.0), converter=_floats)
    local_crops_scale: tuple[float, ...] = attrs.field(default=(0.05, 0.32), converter=_floats)
    ratio: tuple[float, ...] = attrs.field(default=(3 / 4, 4 / 3), converter=_floats)
    log_gamma: tuple[float, ...] = attrs.field(default=(-0.3, 0.3), converter=_floats)
    gamma_p: float = attrs.field(default=0.8, converter=float)
    gamma_value_range: tuple[float, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_floats)
    )
    blur_sigma: tuple[float, ...] = attrs.field(default=(0.1, 2.0), converter=_floats)
    global_blur_p: tuple[float, ...] = attrs.field(default=(1.0, 0.1), converter=_floats)
    local_blur_p: float = attrs.field(default=0.5, converter=float)
    pad_value: float | None = attrs.field(default=None, converter=attrs.converters.optional(float))

    def __attrs_post_init__(self) -> None:
        for name in ("global_crops_size", "local_crops_size"):
            size = getattr(self, name)
            if len(size) != 3 or min(size) < 1:
                raise ValueError(f"{name} must be 3 positive ints (d, h, w), got {size}")
        if self.local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {self.local_crops_number}")
        _range("global_crops_scale", self.global_crops_scale, 1e-12, 1.0)
        _range("local_crops_scale", self.local_crops_scale, 1e-12, 1.0)
        _range("ratio", self.ratio, 1e-12)
        _range("log_gamma", self.log_gamma, float("-inf"))
        _range("blur_sigma", self.blur_sigma, 1e-12)
        _probability("gamma_p", self.gamma_p)
        _probability("local_blur_p", self.local_blur_p)
        if len(self.global_blur_p) != 2:
            raise ValueError(f"global_blur_p needs 2 values, got {self.global_blur_p}")
        for p in self.global_blur_p:
            _probability("global_blur_p", p)
        if self.gamma_value_range is not None and not (
            len(self.gamma_value_range) == 2
            and self.gamma_value_range[0] < self.gamma_value_range[1]
        ):
            raise ValueError(
                f"gamma_value_range must be (lo, hi) with lo < hi, got {self.gamma_value_range}"
            )

    @property
    def n_global(self) -> int:
        """Number of global crops (2, as DINOv2)."""
        return len(self.global_blur_p)


# One params record per transform of a view's pipeline, each with ``V B`` rows (crop-major).
ViewSetParams = tuple[Any, ...]


@attrs.frozen
class MultiCropParams:
    """Parameters of every crop, drawn on the CPU by `MultiCropAugmentation.sample`.

    Per crop set (global, local): one params record per transform of the view pipeline
    (`CropParams`, `GammaParams`, `BlurParams` by default), each batched over all views
    of the set, crop-major: row ``v B + b`` is view ``v`` of sample ``b``.

    Attributes:
        global_crops: Records with ``2 B`` rows.
        local_crops: Records with ``n_local B`` rows (empty tuple when there are none).
        batch_size: ``B``.
    """

    global_crops: ViewSetParams
    local_crops: ViewSetParams
    batch_size: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultiCropParams:
        """Every tensor moved to ``device`` (e.g. once per step, ``non_blocking`` if pinned)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> MultiCropParams:
        """Pinned copy (DataLoader ``pin_memory=True`` calls this on custom batch types)."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MultiCropParams:
        return attrs.evolve(
            self,
            global_crops=tuple(map_params(p, fn) for p in self.global_crops),
            local_crops=tuple(map_params(p, fn) for p in self.local_crops),
        )


class MultiCrops(NamedTuple):
    """The crops of a batch, crop-major as DINOv2's collate.

    Attributes:
        global_crops: ``(2 B, C, d, Hg, Wg)`` float32; rows ``0..B-1`` are global crop 0 of
            every sample, rows ``B..2B-1`` global crop 1.
        local_crops: ``(n_local B, C, d, hl, wl)`` float32 (``n_local = 0``: zero rows).
    """

    global_crops: torch.Tensor
    local_crops: torch.Tensor

    @classmethod
    def from_subject(cls, subject: Subject, n_global: int = 2) -> MultiCrops:
        """The crops of a subject returned by `MultiCropAugmentation`, as tensors.

        Args:
            subject: With scalar images ``global_0``, ``global_1``, ``local_0``, ...
            n_global: Number of global crops.

        Returns:
            `MultiCrops` with ``B = 1`` (rows are views) in the canonical ``(C, d, h, w)``
            layout, whatever the images' storage orientation.
        """

        def stack(names: list[str]) -> torch.Tensor:
            images = [subject.get_image(n) for n in names]
            return torch.stack([to_canonical(im.data, im.affine)[0] for im in images])

        local = sorted(
            (k for k in subject.get_images_names() if k.startswith("local_")),
            key=lambda k: int(k.split("_")[1]),
        )
        global_crops = stack([f"global_{i}" for i in range(n_global)])
        if local:
            local_crops = stack(local)
        else:
            local_crops = global_crops.new_empty((0, *global_crops.shape[1:2], 0, 0, 0))
        return cls(global_crops=global_crops, local_crops=local_crops)


class MultiCropAugmentation(_TorchIOTransform):
    """DINOv2's multi-crop (``dinov2/data/augmentations.py``) for CT volumes.

    Each view is a pipeline of sample-then-apply transforms (`view_pipeline`): a
    `RandomResizedCrop3d`, `RandomGamma` (replacing colour jitter, paper section 3.2) and
    `RandomGaussianBlur`; adding an augmentation is one class and one line there. Blur
    probabilities follow DINOv2's intent, not its inverted code (PR #411): first global
    crop always blurred (``p=1.0``), second ``p=0.1``, local crops ``p=0.5``. Gamma
    ``p=0.8`` on every crop. Global and local crops keep the same depth (Appendix D).

    `sample` draws every parameter on the CPU from a ``torch.Generator`` (so it runs in a
    DataLoader worker); `apply` runs on the slabs' device as one batched op per transform
    and crop set (the views of a set differ only in their sampling probabilities), with no
    per-sample Python loop and no tensor value read back to the host.

    As a TorchIO transform (e.g. the last step of a ``tio.Compose``) it takes a subject
    with one selected scalar image (a CT) and returns the subject with that image replaced
    by the views ``global_0``, ``global_1``, ``local_0``, ... (each in the image's own axis
    order with its affine); each selected label map ``L`` is cropped with the same boxes
    (nearest neighbour, no gamma or blur) into ``L_global_0``, ..., ``L_local_0``, ...
    The history records the deterministic `MultiCropViews` (not invertible: TorchIO warns
    and skips it). `MultiCrops.from_subject` stacks the views back into tensors.

    Args:
        config: `MultiCropConfig`; keyword arguments build (or override) one instead,
            e.g. ``MultiCropAugmentation(local_crops_number=2)``.
        seed: Seed or generator of the TorchIO path.
        **overrides: `MultiCropConfig` fields, and ``tio.Transform`` keywords
            (``include``, ``exclude``, ``copy``, ...).

    Raises:
        TypeError: ``config`` not a `MultiCropConfig`.
        ValueError: invalid config values; on a subject, not exactly one selected scalar
            image, or selected images on different voxel grids.

    Shapes:
        ``(B, C, S, H0, W0)`` (float or int16, any in-plane size) -> `MultiCrops` of
        ``(2 B, C, d, Hg, Wg)`` and ``(n_local B, C, d, hl, wl)`` float32.
    """

    def __init__(
        self,
        config: MultiCropConfig | None = None,
        *,
        seed: int | torch.Generator | None = None,
        **overrides: Any,
    ) -> None:
        if config is not None and not isinstance(config, MultiCropConfig):
            raise TypeError(
                f"config must be a MultiCropConfig (keyword arguments for its fields), got "
                f"{type(config).__name__}"
            )
        torchio_kwargs = {k: v for k, v in overrides.items() if k in _TORCHIO_KEYWORDS}
        fields = {k: v for k, v in overrides.items() if k not in _TORCHIO_KEYWORDS}
        super().__init__(**torchio_kwargs)
        base = config if config is not None else MultiCropConfig()
        self.config = attrs.evolve(base, **fields) if fields else base
        cfg = self.config
        self.global_crop = RandomResizedCrop3d(
            cfg.global_crops_size, cfg.global_crops_scale, cfg.ratio, cfg.pad_value
        )
        self.local_crop = RandomResizedCrop3d(
            cfg.local_crops_size, cfg.local_crops_scale, cfg.ratio, cfg.pad_value
        )
        self.global_views = tuple(
            self.view_pipeline(self.global_crop, p) for p in cfg.global_blur_p
        )
        self.local_views = tuple(
            self.view_pipeline(self.local_crop, cfg.local_blur_p)
            for _ in range(cfg.local_crops_number)
        )
        self._generator = generator_from(seed)
        self._call_generator: torch.Generator | None = None

    def view_pipeline(
        self, crop: RandomResizedCrop3d, blur_p: float
    ) -> tuple[BatchedRandomTransform, ...]:
        """The transforms of one view, in order (one line per augmentation)."""
        cfg = self.config
        return (
            crop,
            RandomGamma(cfg.log_gamma, cfg.gamma_p, cfg.gamma_value_range),
            RandomGaussianBlur(cfg.blur_sigma, blur_p),
        )

    def sample(
        self,
        batch_size: int,
        in_shape: Sequence[int],
        generator: torch.Generator | None = None,
    ) -> MultiCropParams:
        """Draw all parameters for ``batch_size`` slabs of spatial shape ``(S, H0, W0)``.

        The draws are in the order global view 0, 1, then each local view, and within a
        view the pipeline's order (same stream as before the batched rewrite, so runs and
        resumes stay reproducible given the generator's seed).

        Args:
            batch_size: ``B``.
            in_shape: ``(S, H0, W0)`` of the reference grid the boxes are rounded on (a
                longer shape's last three entries are used). `apply` accepts slabs of any
                in-plane size: boxes are relative.
            generator: CPU ``torch.Generator`` (global RNG when None).

        Returns:
            `MultiCropParams` of CPU tensors.
        """
        b = int(batch_size)
        shape = spatial_shape(in_shape)

        def draw(views: tuple[tuple[BatchedRandomTransform, ...], ...]) -> ViewSetParams:
            per_view = [tuple(t.sample(b, shape, generator) for t in view) for view in views]
            if not per_view:
                return ()
            return tuple(cat_params(records) for records in zip(*per_view, strict=True))

        return MultiCropParams(
            global_crops=draw(self.global_views),
            local_crops=draw(self.local_views),
            batch_size=b,
        )

    @staticmethod
    def _apply_set(
        x: torch.Tensor,
        views: tuple[tuple[BatchedRandomTransform, ...], ...],
        records: ViewSetParams,
    ) -> torch.Tensor:
        crop, *rest = views[0]
        out = crop.apply(x, records[0])  # (V B, C, d, h, w) float32
        for transform, params in zip(rest, records[1:], strict=True):
            out = transform.apply(out, params)
        return out

    def apply(self, slabs: torch.Tensor, params: MultiCropParams) -> MultiCrops:
        """Apply ``params`` to ``slabs (B, C, S, H0, W0)`` on their device; deterministic.

        Args:
            slabs: ``(B, C, S, H0, W0)`` float or integer tensor (any in-plane size).
            params: From `sample` (CPU or already on ``slabs``' device).

        Returns:
            `MultiCrops`, float32 on ``slabs``' device, crop-major.

        Raises:
            ValueError: ``slabs`` not 5-D or not ``params.batch_size`` samples.
        """
        if slabs.ndim != 5:
            raise ValueError(f"expected slabs of shape (B, C, S, H0, W0), got {tuple(slabs.shape)}")
        if slabs.shape[0] != params.batch_size:
            raise ValueError(
                f"params were sampled for {params.batch_size} slabs, got {slabs.shape[0]}"
            )
        global_crops = self._apply_set(slabs, self.global_views, params.global_crops)
        if self.local_views:
            local_crops = self._apply_set(slabs, self.local_views, params.local_crops)
        else:
            local_crops = global_crops.new_empty((0, slabs.shape[1], *self.config.local_crops_size))
        return MultiCrops(global_crops=global_crops, local_crops=local_crops)

    def __call__(self, x: Any, generator: torch.Generator | None = None) -> Any:  # type: ignore[override]
        """`sample` then `apply` on a batch; on a ``tio.Subject``, TorchIO's call.

        Args:
            x: ``(B, C, S, H0, W0)`` tensor, or a ``tio.Subject`` (any input TorchIO parses).
            generator: Generator of the draws (a subject: None = the ``seed`` generator).

        Returns:
            `MultiCrops` for a tensor; for a subject, the subject with the views (see the
            class docstring).

        Raises:
            ValueError: a tensor that is not 5-D.
        """
        if isinstance(x, torch.Tensor):
            if x.ndim != 5:
                raise ValueError(f"expected x of shape (B, C, S, H0, W0), got {tuple(x.shape)}")
            return self.apply(x, self.sample(x.shape[0], x.shape[2:], generator))
        self._call_generator = generator
        try:
            return super().__call__(x)
        finally:
            self._call_generator = None

    def apply_transform(self, subject: Subject) -> Subject:
        """Replace the subject's images by ``global_0``, ..., ``local_0``, ... (TorchIO hook).

        Label maps ``L`` are cropped with the same boxes into ``L_global_0``, ....
        """
        images = subject.get_images_dict(
            intensity_only=False, include=self.include, exclude=self.exclude
        )
        scalars = [name for name, image in images.items() if not is_label(image)]
        if len(scalars) != 1:
            raise ValueError(
                f"MultiCropAugmentation crops one scalar image per subject, got "
                f"{scalars or 'none'}; select it with include=[...] or exclude=[...]"
            )
        shape = canonical_shape(images[scalars[0]])
        params = self.sample(1, shape, self._call_generator or self._generator)
        fixed = MultiCropViews(
            attrs.asdict(self.config),
            params,
            shape,
            include=self.include,
            exclude=self.exclude,
            copy=self.copy,
        )
        subject = fixed.apply_transform(subject)
        subject.add_transform(fixed, fixed._get_reproducing_arguments())
        return subject

    def _add_transform_to_subject_history(self, subject: Subject) -> None:
        """Not recorded: the deterministic `MultiCropViews` it applied is."""


class MultiCropViews(_TorchIOSpatial):
    """Deterministic multi-crop of a ``tio.Subject`` (what `MultiCropAugmentation` records).

    Applies one `MultiCropParams` (``B = 1``) to the selected images through the canonical
    ``(C, D, H, W)`` layout: the scalar image becomes ``global_0``, ``global_1``,
    ``local_0``, ... (crop, gamma, blur, as the batched `MultiCropAugmentation.apply`);
    each label map ``L`` becomes ``L_global_0``, ... (nearest-neighbour crop only). Each
    view is stored back in its source image's axis order with its own affine. Not
    invertible (the views replace the image).

    Args:
        config: `MultiCropConfig` fields as a dict.
        params: The sampled `MultiCropParams` (``batch_size == 1``).
        in_shape: Canonical ``(D, H, W)`` the params were drawn on.
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ...).

    Raises:
        ValueError: ``params`` not for one sample; images whose canonical shape is not
            ``in_shape`` or on different grids.
    """

    def __init__(
        self,
        config: dict[str, Any],
        params: MultiCropParams,
        in_shape: Sequence[int],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if params.batch_size != 1:
            raise ValueError(f"params must be for one sample, got batch_size {params.batch_size}")
        self.config = dict(config)
        self.params = params
        self.in_shape = spatial_shape(in_shape)
        self.args_names = ["config", "params", "in_shape"]

    def apply_transform(self, subject: Subject) -> Subject:
        """Replay the recorded multi-crop views on ``subject`` (TorchIO history hook)."""
        import torchio as tio

        aug = MultiCropAugmentation(MultiCropConfig(**self.config))
        images = subject.get_images_dict(
            intensity_only=False, include=self.include, exclude=self.exclude
        )
        canonical = {n: to_canonical(im.data, im.affine) for n, im in images.items()}
        check_same_grid(self.name, canonical)
        sets = (
            ("global", aug.global_crop, self.params.global_crops, aug.config.n_global),
            ("local", aug.local_crop, self.params.local_crops, aug.config.local_crops_number),
        )
        for name, image in images.items():
            x, affine, orientation = canonical[name]
            if spatial_shape(x.shape) != self.in_shape:
                raise ValueError(
                    f"{self.name}: params drawn for (D, H, W) {self.in_shape}, image {name!r} "
                    f"is {spatial_shape(x.shape)}"
                )
            label = is_label(image)
            crops = None if label else aug.apply(x[None], self.params)
            subject.remove_image(name)
            for kind, crop, records, n_views in sets:
                if n_views == 0:
                    continue
                if crops is None:
                    views = crop.apply_label(x[None], records[0])
                else:
                    views = crops.global_crops if kind == "global" else crops.local_crops
                for v in range(n_views):
                    row = map_params(records[0], _row_of(v))
                    new_affine = crop.new_affine(affine, row, self.in_shape)
                    data, affine_ras = from_canonical(views[v], new_affine, orientation)
                    key = f"{name}_{kind}_{v}" if label else f"{kind}_{v}"
                    cls = tio.LabelMap if label else tio.ScalarImage
                    subject.add_image(cls(tensor=data, affine=affine_ras), key)
        return subject


def _row_of(v: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Row ``v`` of a params field, keeping the batch axis."""
    return lambda t: t[v : v + 1]
