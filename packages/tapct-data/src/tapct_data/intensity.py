"""Intensity augmentations for single-channel CT: random gamma and Gaussian blur."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from ._random import uniform
from ._transform import BatchedRandomTransform, IntensityParamsTransform

__all__ = [
    "AdjustGamma",
    "BlurParams",
    "GammaParams",
    "GaussianBlur2d",
    "RandomGamma",
    "RandomGaussianBlur",
    "adjust_gamma",
    "gaussian_blur2d",
]


@attrs.frozen
class GammaParams:
    """Per-sample gamma, CPU tensors with one row per crop.

    Attributes:
        gamma: ``(B,)`` float64 drawn exponents.
        applied: ``(B,)`` bool, whether the gamma is applied (probability ``p``).
    """

    gamma: torch.Tensor
    applied: torch.Tensor

    def effective(self) -> torch.Tensor:
        """``(B,)`` exponents with 1.0 (identity) where not applied."""
        return torch.where(self.applied, self.gamma, torch.ones_like(self.gamma))


@attrs.frozen
class BlurParams:
    """Per-sample in-plane Gaussian blur, CPU tensors with one row per crop.

    Attributes:
        sigma: ``(B,)`` float64 drawn standard deviations in voxels.
        applied: ``(B,)`` bool, whether the blur is applied (probability ``p``).
    """

    sigma: torch.Tensor
    applied: torch.Tensor

    def effective(self) -> torch.Tensor:
        """``(B,)`` sigmas with 0.0 (identity) where not applied."""
        return torch.where(self.applied, self.sigma, torch.zeros_like(self.sigma))


def adjust_gamma(
    x: torch.Tensor, gamma: torch.Tensor, value_range: Sequence[float] | None = None
) -> torch.Tensor:
    """Gamma on values of any sign: rescale to [0, 1], power, map back.

    Convention (avoids the NaN of ``x ** gamma`` on negative HU or z-scores): per sample,
    ``lo, hi`` are ``value_range`` (values are clamped into it first) or, when None, the
    sample's own min and max; ``y = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma``.
    ``lo`` and ``hi`` are fixed points; a constant sample is returned unchanged.

    Args:
        x: ``(B, C, D, H, W)`` tensor (integer HU is promoted to float32).
        gamma: ``(B,)`` exponents (> 0).
        value_range: Fixed ``(lo, hi)`` or None for per-sample min/max.

    Returns:
        Tensor like ``x`` (float32 for an integer ``x``); finite wherever ``x`` is.
    """
    if not x.is_floating_point():
        x = x.float()
    b = x.shape[0]
    flat = x.reshape(b, -1)
    if value_range is None:
        lo, hi = flat.amin(1), flat.amax(1)
    else:
        lo = torch.full((b,), float(value_range[0]), device=x.device, dtype=x.dtype)
        hi = torch.full((b,), float(value_range[1]), device=x.device, dtype=x.dtype)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    g = gamma.to(device=x.device, dtype=x.dtype, non_blocking=True)
    shape = (b,) + (1,) * (x.ndim - 1)
    lo, safe, g = lo.view(shape), safe.view(shape), g.view(shape)
    unit = ((x - lo) / safe).clamp(0.0, 1.0)
    out = lo + safe * unit.pow(g)
    keep = (span <= 0).view(shape) | (g == 1.0)
    return torch.where(keep, x if value_range is None else x.clamp(lo, lo + safe), out)


def _kernels(sigma: torch.Tensor, radius: int, device, dtype) -> torch.Tensor:
    """``(B, 2 radius + 1)`` normalised Gaussian kernels, each truncated at ceil(3 sigma)."""
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    s = sigma.to(device=device, dtype=torch.float64, non_blocking=True)[:, None]
    own = torch.ceil(3.0 * s)
    k = torch.exp(-0.5 * (offsets[None] / s.clamp_min(1e-12)) ** 2)
    k = torch.where(offsets[None].abs() <= own, k, torch.zeros_like(k))
    delta = (offsets == 0).to(torch.float64)[None].expand_as(k)
    k = torch.where(s > 0, k, delta)
    return (k / k.sum(1, keepdim=True)).to(dtype)


def gaussian_blur2d(
    x: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None
) -> torch.Tensor:
    """In-plane (per slice) separable Gaussian blur with a per-sample sigma.

    Each slice is blurred in H and W only (slices are not mixed, like DINOv2's 2D blur on
    each image). Kernels are truncated at ``ceil(3 sigma)`` per sample, so a sample's result
    does not depend on the rest of the batch; borders replicate. ``sigma == 0`` is identity.
    One grouped convolution per axis for the whole batch (every slice of every sample is a
    group with its sample's kernel), no per-sample loop.

    Args:
        x: ``(B, C, D, H, W)`` tensor (integer HU is promoted to float32).
        sigma: ``(B,)`` standard deviations in voxels (>= 0), CPU or on ``x``'s device.
        max_sigma: Upper bound of ``sigma`` fixing the kernel length ``2 ceil(3 max) + 1``
            without reading ``sigma`` back to the host (the transforms pass their range's
            maximum). None reads ``sigma.max()`` (one host sync).

    Returns:
        Tensor like ``x`` (float32 for an integer ``x``).

    Raises:
        ValueError: ``sigma`` not of shape ``(B,)``.
    """
    if not x.is_floating_point():
        x = x.float()
    b, c, d, h, w = x.shape
    if tuple(sigma.shape) != (b,):
        raise ValueError(f"sigma must have shape ({b},), got {tuple(sigma.shape)}")
    top = float(sigma.max()) if max_sigma is None else float(max_sigma)
    radius = math.ceil(3.0 * top)
    if radius == 0:
        return x
    kernel = _kernels(sigma, radius, x.device, x.dtype)  # (B, K)
    k = kernel.shape[1]
    weight = kernel.repeat_interleave(c * d, dim=0)  # (B*C*D, K): one group per slice
    planes = x.reshape(1, b * c * d, h, w)
    planes = F.pad(planes, (radius, radius, radius, radius), mode="replicate")
    planes = F.conv2d(planes, weight.view(b * c * d, 1, 1, k), groups=b * c * d)  # along W
    planes = F.conv2d(planes, weight.view(b * c * d, 1, k, 1), groups=b * c * d)  # along H
    return planes.view(b, c, d, h, w)


class RandomGamma(BatchedRandomTransform):
    """Random gamma, applied with probability ``p`` per sample (replaces colour jitter).

    Paper section 3.2 ("SSL Augmentations"). ``log(gamma) ~ U(log_gamma)`` (TorchIO's
    ``RandomGamma`` parameterisation); the value convention is `adjust_gamma`'s (rescale
    to [0, 1] with ``value_range`` or the per-sample min/max, power, map back), so negative
    HU or z-scores never give NaN.

    On a ``tio.Subject`` one gamma is drawn and applied to every selected scalar image
    (each its own "sample" for the min/max); label maps are never touched. The history
    records the deterministic `AdjustGamma` (gamma 1.0 when not applied); like TorchIO's
    ``Gamma`` it is not invertible.

    Args:
        log_gamma: Range of ``log(gamma)``.
        p: Probability of applying it to a sample.
        value_range: ``(lo, hi)`` or None (per-sample min/max).
        seed: Seed or generator of the TorchIO path.
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ...).

    Raises:
        ValueError: ``p`` outside [0, 1] or an empty range.
    """

    def __init__(
        self,
        log_gamma: Sequence[float] = (-0.3, 0.3),
        p: float = 0.8,
        value_range: Sequence[float] | None = None,
        seed: int | torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not log_gamma[0] <= log_gamma[1]:
            raise ValueError(f"log_gamma must be (min, max), got {log_gamma}")
        if value_range is not None and not value_range[0] < value_range[1]:
            raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range}")
        super().__init__(seed, **kwargs)
        self.log_gamma = (float(log_gamma[0]), float(log_gamma[1]))
        self.p = float(p)
        self.value_range = (
            None if value_range is None else (float(value_range[0]), float(value_range[1]))
        )
        self.args_names = ["log_gamma", "p", "value_range"]

    def sample(
        self,
        batch_size: int,
        in_shape: Sequence[int] = (),
        generator: torch.Generator | None = None,
    ) -> GammaParams:
        """Draw ``(B,)`` gammas and apply flags on the CPU (``in_shape`` is not used)."""
        b = int(batch_size)
        applied = uniform(b, 0.0, 1.0, generator) < self.p
        gamma = torch.exp(uniform(b, *self.log_gamma, generator))
        return GammaParams(gamma=gamma, applied=applied)

    def apply(self, x: torch.Tensor, params: GammaParams) -> torch.Tensor:
        """Deterministic gamma; see `adjust_gamma`."""
        return adjust_gamma(x, params.effective(), self.value_range)

    def fixed(self, params: GammaParams, in_shape: tuple[int, int, int]) -> AdjustGamma:
        """The deterministic `AdjustGamma` of row 0 (``in_shape`` is not used)."""
        gamma = float(params.effective()[0])
        return AdjustGamma(gamma, self.value_range, **self._base_kwargs())


class AdjustGamma(IntensityParamsTransform):
    """Deterministic gamma on the scalar images of a ``tio.Subject`` (`adjust_gamma`).

    What `RandomGamma` records in ``subject.history`` (as TorchIO's ``RandomGamma`` records
    ``Gamma``); not invertible, as TorchIO's ``Gamma``.

    Args:
        gamma: The exponent (> 0; 1.0 is the identity, up to clamping into
            ``value_range``).
        value_range: ``(lo, hi)`` or None (each image's min/max).
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ...).

    Raises:
        ValueError: ``gamma <= 0``.
    """

    def __init__(
        self, gamma: float, value_range: Sequence[float] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not float(gamma) > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.gamma = float(gamma)
        self.value_range = None if value_range is None else tuple(float(v) for v in value_range)
        self.args_names = ["gamma", "value_range"]

    def random(self) -> RandomGamma:
        """The random transform this gamma is one draw of."""
        return RandomGamma(value_range=self.value_range)

    def params(self) -> GammaParams:
        """This gamma as a one-sample ``GammaParams`` record."""
        return GammaParams(
            gamma=torch.tensor([self.gamma], dtype=torch.float64),
            applied=torch.tensor([True]),
        )


class RandomGaussianBlur(BatchedRandomTransform):
    """Random in-plane Gaussian blur, applied with probability ``p`` per sample.

    As DINOv2's ``GaussianBlur`` (``dinov2/data/transforms.py``: sigma ~ U(0.1, 2.0)), but
    ``p`` is the probability of blurring. DINOv2 passes ``p=1 - p`` to
    ``RandomApply`` (the inverted probability of its PR #411); this class does not copy
    that: ``p=1.0`` always blurs, ``p=0.1`` blurs one sample in ten.

    On a ``tio.Subject`` one sigma is drawn and every selected scalar image is blurred in
    its axial plane (found from its affine, whatever its storage orientation); label maps
    are never touched. The history records the deterministic `GaussianBlur2d` (sigma 0.0
    when not applied); like TorchIO's ``Blur`` it is not invertible.

    Args:
        sigma: Range of the standard deviation in voxels.
        p: Probability of blurring a sample.
        seed: Seed or generator of the TorchIO path.
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ...).

    Raises:
        ValueError: ``p`` outside [0, 1] or invalid sigma range.
    """

    def __init__(
        self,
        sigma: Sequence[float] = (0.1, 2.0),
        p: float = 0.5,
        seed: int | torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not 0.0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma must satisfy 0 < min <= max, got {sigma}")
        super().__init__(seed, **kwargs)
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.p = float(p)
        self.args_names = ["sigma", "p"]

    def sample(
        self,
        batch_size: int,
        in_shape: Sequence[int] = (),
        generator: torch.Generator | None = None,
    ) -> BlurParams:
        """Draw ``(B,)`` sigmas and apply flags on the CPU (``in_shape`` is not used)."""
        b = int(batch_size)
        applied = uniform(b, 0.0, 1.0, generator) < self.p
        sigma = uniform(b, *self.sigma, generator)
        return BlurParams(sigma=sigma, applied=applied)

    def apply(self, x: torch.Tensor, params: BlurParams) -> torch.Tensor:
        """Deterministic blur; see `gaussian_blur2d` (kernel length from ``sigma[1]``)."""
        return gaussian_blur2d(x, params.effective().to(x.device), max_sigma=self.sigma[1])

    def fixed(self, params: BlurParams, in_shape: tuple[int, int, int]) -> GaussianBlur2d:
        """The deterministic `GaussianBlur2d` of row 0 (``in_shape`` is not used)."""
        return GaussianBlur2d(float(params.effective()[0]), **self._base_kwargs())


class GaussianBlur2d(IntensityParamsTransform):
    """Deterministic in-plane Gaussian blur of the scalar images of a ``tio.Subject``.

    What `RandomGaussianBlur` records in ``subject.history``; each axial slice (found from
    the image's affine) is blurred with `gaussian_blur2d`. Not invertible, as TorchIO's
    ``Blur``.

    Args:
        sigma: Standard deviation in voxels (0.0: identity).
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ...).

    Raises:
        ValueError: ``sigma < 0``.
    """

    def __init__(self, sigma: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not float(sigma) >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.args_names = ["sigma"]

    def random(self) -> RandomGaussianBlur:
        """The random transform this blur is one draw of."""
        return _FixedBlur(self.sigma)

    def params(self) -> BlurParams:
        """This blur as a one-sample ``BlurParams`` record (sigma in voxels)."""
        return BlurParams(
            sigma=torch.tensor([self.sigma], dtype=torch.float64), applied=torch.tensor([True])
        )


class _FixedBlur(RandomGaussianBlur):
    """A `RandomGaussianBlur` whose kernel length fits one known sigma (0 allowed)."""

    def __init__(self, sigma: float) -> None:
        super().__init__(sigma=(max(sigma, 1e-12), max(sigma, 1e-12)), p=1.0)
