"""Intensity augmentations for single-channel CT: random gamma and Gaussian blur."""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange

from ._random import uniform
from ._transform import BatchedRandomTransform

__all__ = [
    "BlurParams",
    "GammaParams",
    "RandomGamma",
    "RandomGaussianBlur",
    "adjust_gamma",
    "gaussian_blur2d",
]


@attrs.frozen
class GammaParams:
    """Per-sample gamma exponents ``(B,)`` float64 (1.0 where the transform is skipped)."""

    gamma: torch.Tensor


@attrs.frozen
class BlurParams:
    """Per-sample blur sigmas in voxels ``(B,)`` float64 (0.0 where skipped)."""

    sigma: torch.Tensor


def adjust_gamma(
    x: torch.Tensor, gamma: torch.Tensor, value_range: tuple[float, float] | None = None
) -> torch.Tensor:
    """Gamma on values of any sign: rescale to [0, 1], power, map back.

    Convention (avoids the NaN of ``x ** gamma`` on negative HU or z-scores): per sample,
    ``lo, hi`` are ``value_range`` (values are clamped into it first) or, when None, the
    sample's own min and max; ``y = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma``.
    ``lo`` and ``hi`` are fixed points; a constant sample is returned unchanged.

    Args:
        x: ``(B, C, D, H, W)`` float tensor.
        gamma: ``(B,)`` exponents (> 0).
        value_range: Fixed ``(lo, hi)`` or None for per-sample min/max.

    Returns:
        Tensor like ``x``; finite wherever ``x`` is.
    """
    b = x.shape[0]
    flat = x.reshape(b, -1)
    if value_range is None:
        lo, hi = flat.amin(1), flat.amax(1)
    else:
        lo = torch.full((b,), float(value_range[0]), device=x.device, dtype=x.dtype)
        hi = torch.full((b,), float(value_range[1]), device=x.device, dtype=x.dtype)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    g = gamma.to(device=x.device, dtype=x.dtype)
    shape = (b,) + (1,) * (x.ndim - 1)
    lo, safe, g = lo.view(shape), safe.view(shape), g.view(shape)
    unit = ((x - lo) / safe).clamp(0.0, 1.0)
    out = lo + safe * unit.pow(g)
    keep = (span <= 0).view(shape) | (g == 1.0)
    return torch.where(keep, x if value_range is None else x.clamp(lo, lo + safe), out)


def _kernels(sigma: torch.Tensor, radius: int, device, dtype) -> torch.Tensor:
    """``(B, 2 radius + 1)`` normalised Gaussian kernels, each truncated at ceil(3 sigma)."""
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    s = sigma.to(device=device, dtype=torch.float64)[:, None]
    own = torch.ceil(3.0 * s)
    k = torch.exp(-0.5 * (offsets[None] / s.clamp_min(1e-12)) ** 2)
    k = torch.where(offsets[None].abs() <= own, k, torch.zeros_like(k))
    delta = (offsets == 0).to(torch.float64)[None].expand_as(k)
    k = torch.where(s > 0, k, delta)
    return (k / k.sum(1, keepdim=True)).to(dtype)


def gaussian_blur2d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """In-plane (per slice) separable Gaussian blur with a per-sample sigma.

    Each slice is blurred in H and W only (slices are not mixed, like DINOv2's 2D blur on
    each image). Kernels are truncated at ``ceil(3 sigma)`` per sample, so a sample's result
    does not depend on the rest of the batch; borders replicate. ``sigma == 0`` is identity.

    Args:
        x: ``(B, C, D, H, W)`` float tensor.
        sigma: ``(B,)`` standard deviations in voxels (>= 0).

    Returns:
        Tensor like ``x``.
    """
    b, c, d, h, w = x.shape
    if not bool((sigma > 0).any()):
        return x
    radius = math.ceil(3.0 * float(sigma.max()))
    kernel = _kernels(sigma, radius, x.device, x.dtype)[:, None, :]  # (B, 1, K)
    # Along W: rows of every sample are a batch, samples are the groups.
    rows = rearrange(x, "b c d h w -> (c d h) b w")
    rows = F.pad(rows, (radius, radius), mode="replicate")
    rows = F.conv1d(rows, kernel, groups=b)
    x = rearrange(rows, "(c d h) b w -> b c d h w", c=c, d=d, h=h)
    cols = rearrange(x, "b c d h w -> (c d w) b h")
    cols = F.pad(cols, (radius, radius), mode="replicate")
    cols = F.conv1d(cols, kernel, groups=b)
    return rearrange(cols, "(c d w) b h -> b c d h w", c=c, d=d, w=w)


class RandomGamma(BatchedRandomTransform):
    """Random gamma, applied with probability ``p`` per sample (replaces colour jitter).

    Paper section 3.2 ("SSL Augmentations"). ``log(gamma) ~ U(log_gamma)`` (TorchIO's
    ``RandomGamma`` parameterisation); the value convention is `adjust_gamma`'s (rescale
    to [0, 1] with ``value_range`` or the per-sample min/max, power, map back), so negative
    HU or z-scores never give NaN.

    Args:
        log_gamma: Range of ``log(gamma)``.
        p: Probability of applying it to a sample.
        value_range: ``(lo, hi)`` or None (per-sample min/max).
        seed: Seed or generator of the TorchIO path.

    Raises:
        ValueError: ``p`` outside [0, 1] or an empty range.
    """

    def __init__(
        self,
        log_gamma: tuple[float, float] = (-0.3, 0.3),
        p: float = 0.8,
        value_range: tuple[float, float] | None = None,
        seed: int | torch.Generator | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not log_gamma[0] <= log_gamma[1]:
            raise ValueError(f"log_gamma must be (min, max), got {log_gamma}")
        if value_range is not None and not value_range[0] < value_range[1]:
            raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range}")
        super().__init__(seed)
        self.log_gamma = (float(log_gamma[0]), float(log_gamma[1]))
        self.p = float(p)
        self.value_range = value_range
        self.args_names = ["log_gamma", "p", "value_range"]

    def sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None
    ) -> GammaParams:
        """Draw ``(B,)`` gammas (1.0 where not applied)."""
        b = shape[0]
        apply = uniform(b, 0.0, 1.0, generator) < self.p
        gamma = torch.exp(uniform(b, *self.log_gamma, generator))
        return GammaParams(gamma=torch.where(apply, gamma, torch.ones_like(gamma)))

    def apply(self, x: torch.Tensor, params: GammaParams) -> torch.Tensor:
        """Deterministic gamma; see `adjust_gamma`."""
        return adjust_gamma(x, params.gamma, self.value_range)


class RandomGaussianBlur(BatchedRandomTransform):
    """Random in-plane Gaussian blur, applied with probability ``p`` per sample.

    As DINOv2's ``GaussianBlur`` (``dinov2/data/transforms.py``: sigma ~ U(0.1, 2.0)), but
    ``p`` is the probability of blurring. DINOv2 passes ``p=1 - p`` to
    ``RandomApply`` (the inverted probability of its PR #411); this class does not copy
    that: ``p=1.0`` always blurs, ``p=0.1`` blurs one sample in ten.

    Args:
        sigma: Range of the standard deviation in voxels.
        p: Probability of blurring a sample.
        seed: Seed or generator of the TorchIO path.

    Raises:
        ValueError: ``p`` outside [0, 1] or invalid sigma range.
    """

    def __init__(
        self,
        sigma: tuple[float, float] = (0.1, 2.0),
        p: float = 0.5,
        seed: int | torch.Generator | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not 0.0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma must satisfy 0 < min <= max, got {sigma}")
        super().__init__(seed)
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.p = float(p)
        self.args_names = ["sigma", "p"]

    def sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None
    ) -> BlurParams:
        """Draw ``(B,)`` sigmas (0.0 where not applied)."""
        b = shape[0]
        apply = uniform(b, 0.0, 1.0, generator) < self.p
        sigma = uniform(b, *self.sigma, generator)
        return BlurParams(sigma=torch.where(apply, sigma, torch.zeros_like(sigma)))

    def apply(self, x: torch.Tensor, params: BlurParams) -> torch.Tensor:
        """Deterministic blur; see `gaussian_blur2d`."""
        return gaussian_blur2d(x, params.sigma)
