"""3D block masking for iBOT (paper section 3.1, "Masking strategy")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np
import torch

__all__ = ["MaskingConfig", "MaskingGenerator3d", "sample_batch_masks"]


def _floats(value: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


@attrs.frozen
class MaskingConfig:
    """iBOT block masking (paper section 3.1, Table 7; DINOv2's ``ibot`` section).

    Attributes:
        mask_probability: Fraction of the global crops that get a mask (0.5).
        mask_ratio: ``(min, max)`` fraction of patches masked in a masked crop (0.1, 0.5),
            stratified over the masked crops of a batch.
        min_num_patches: Smallest block volume, patches (4).
        max_num_patches: Largest block volume; None = the request.
        min_aspect: Smallest block aspect ratio (0.3).
        max_aspect: Largest aspect ratio; None = ``1 / min_aspect``.

    Raises:
        ValueError: naming the bad value.
    """

    mask_probability: float = attrs.field(default=0.5, converter=float)
    mask_ratio: tuple[float, ...] = attrs.field(default=(0.1, 0.5), converter=_floats)
    min_num_patches: int = attrs.field(default=4, converter=int)
    max_num_patches: int | None = attrs.field(
        default=None, converter=attrs.converters.optional(int)
    )
    min_aspect: float = attrs.field(default=0.3, converter=float)
    max_aspect: float | None = attrs.field(default=None, converter=attrs.converters.optional(float))

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {self.mask_probability}")
        lo_hi = self.mask_ratio
        if not (len(lo_hi) == 2 and 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0):
            raise ValueError(f"mask_ratio must satisfy 0 <= min <= max <= 1, got {lo_hi}")
        if self.min_num_patches < 1:
            raise ValueError(f"min_num_patches must be >= 1, got {self.min_num_patches}")
        if self.max_num_patches is not None and self.max_num_patches < 1:
            raise ValueError(f"max_num_patches must be >= 1 or None, got {self.max_num_patches}")
        top = self.max_aspect if self.max_aspect is not None else 1.0 / max(self.min_aspect, 1e-12)
        if not 0 < self.min_aspect <= top:
            raise ValueError(
                f"need 0 < min_aspect <= max_aspect, got {self.min_aspect}, {self.max_aspect}"
            )


class MaskingGenerator3d:
    """Block-wise masks on a ``(t, h, w)`` patch grid (BEiT/DINOv2 ``MaskingGenerator`` in 3D).

    Blocks are placed until the requested number of patches is masked. Each block samples
    a volume ``a ~ U(min_num_patches, max)`` patches, a height-width aspect
    ``r_hw`` and a height-depth aspect ``r_hd``, both log-uniform in
    ``[min_aspect, max_aspect]`` (paper section 3.1: cube-like blocks), giving
    ``h = (a r_hw r_hd)^(1/3)``, ``w = h / r_hw``, ``t = h / r_hd`` (rounded, clamped to
    the grid). Corners are uniform over every valid position, so every index can be masked.
    A block is accepted when it adds between 1 and the remaining budget of new patches;
    after 10 failed attempts in a row, the remainder is filled with single random patches,
    so the count is exactly the request (capped at the grid size) on any grid shape and the
    loop always ends.

    Args:
        input_size: Patch grid ``(t, h, w)``; an int means a cube.
        num_masking_patches: Default request when called without an argument.
        min_num_patches: Smallest block volume (patches).
        max_num_patches: Largest block volume; None = the request.
        min_aspect: Smallest aspect ratio; ``max_aspect`` defaults to ``1 / min_aspect``.
        max_aspect: Largest aspect ratio.
        seed: Seed of the default generator.

    Raises:
        ValueError: non-positive grid or invalid ranges.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int, int],
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(input_size, int):
            input_size = (input_size,) * 3
        self.depth, self.height, self.width = (int(s) for s in input_size)
        if min(self.depth, self.height, self.width) < 1:
            raise ValueError(f"input_size must be positive (t, h, w), got {input_size}")
        if min_num_patches < 1:
            raise ValueError(f"min_num_patches must be >= 1, got {min_num_patches}")
        max_aspect = max_aspect or 1.0 / min_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.num_patches = self.depth * self.height * self.width
        self.num_masking_patches = num_masking_patches or 0
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = max_num_patches
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_config(
        cls, input_size: int | tuple[int, int, int], config: MaskingConfig, seed: int | None = None
    ) -> MaskingGenerator3d:
        """The generator of ``config``'s block parameters on the patch grid ``input_size``."""
        return cls(
            input_size,
            min_num_patches=config.min_num_patches,
            max_num_patches=config.max_num_patches,
            min_aspect=config.min_aspect,
            max_aspect=config.max_aspect,
            seed=seed,
        )

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator3d(input_size=({self.depth}, {self.height}, {self.width}), "
            f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches})"
        )

    def get_shape(self) -> tuple[int, int, int]:
        """The grid ``(t, h, w)``."""
        return self.depth, self.height, self.width

    def _block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        low = min(self.min_num_patches, budget)
        for _ in range(10):
            volume = rng.uniform(low, budget)
            r_hw = math.exp(rng.uniform(*self.log_aspect_ratio))
            r_hd = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = (volume * r_hw * r_hd) ** (1.0 / 3.0)
            bh = min(max(round(h), 1), self.height)
            bw = min(max(round(h / r_hw), 1), self.width)
            bt = min(max(round(h / r_hd), 1), self.depth)
            z = int(rng.integers(0, self.depth - bt + 1))
            y = int(rng.integers(0, self.height - bh + 1))
            x = int(rng.integers(0, self.width - bw + 1))
            block = mask[z : z + bt, y : y + bh, x : x + bw]
            new = int(block.size - block.sum())
            if 0 < new <= budget:
                block[...] = True
                return new
        return 0

    def __call__(
        self,
        num_masking_patches: int | None = None,
        generator: torch.Generator | int | None = None,
    ) -> np.ndarray:
        """Sample a mask with exactly ``min(num_masking_patches, t*h*w)`` True entries.

        Args:
            num_masking_patches: Patches to mask (default: the constructor's value).
            generator: A ``torch.Generator`` or int seed; None uses the internal generator
                (seeded by ``seed``).

        Returns:
            ``(t, h, w)`` bool numpy array.
        """
        target = self.num_masking_patches if num_masking_patches is None else num_masking_patches
        target = max(0, min(int(target), self.num_patches))
        if isinstance(generator, torch.Generator):
            seed = int(
                torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device)
            )
            rng = np.random.default_rng(seed)
        elif generator is not None:
            rng = np.random.default_rng(int(generator))
        else:
            rng = self._rng
        mask = np.zeros(self.get_shape(), dtype=bool)
        count = 0
        while count < target:
            budget = target - count
            if self.max_num_patches is not None:
                budget = min(budget, self.max_num_patches)
            added = self._block(mask, budget, rng)
            if added == 0:
                break
            count += added
        if count < target:  # top up with single patches (elongated or nearly full grids)
            free = np.flatnonzero(~mask.reshape(-1))
            mask.reshape(-1)[rng.choice(free, target - count, replace=False)] = True
        return mask


def sample_batch_masks(
    n_images: int,
    mask_generator: MaskingGenerator3d,
    masking: MaskingConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """iBOT masks of a batch's global crops, DINOv2's ``collate_data_and_cast`` rule.

    Of the ``n_images`` (``2 B``) global crops, ``int(n_images * mask_probability)`` get a
    mask; mask ``i`` masks ``int(N * r_i)`` patches (exactly: `MaskingGenerator3d`) with
    ``r_i`` uniform in bin ``i`` of ``linspace(min, max, n_masked + 1)`` (stratified
    ratios); the rest get none; the masks are shuffled over the crops. Runs on the CPU
    (a DataLoader worker); the draws are the same as before the typed batch record.

    Args:
        n_images: Number of global crops ``2 B``.
        mask_generator: Generator on the global crops' patch grid (``N = t h w``).
        masking: Probability and ratio range (default `MaskingConfig()`).
        generator: Randomness of ratios, masks and shuffle (global RNG when None).

    Returns:
        ``(n_images, N)`` bool CPU tensor, rows in the crop-major order of the crops.

    References:
        DINOv2 ``dinov2/data/collate.py``.
    """
    masking = masking if masking is not None else MaskingConfig()
    lo, hi = masking.mask_ratio
    n_tokens = mask_generator.num_patches
    n_masked = int(n_images * masking.mask_probability)
    probs = np.linspace(lo, hi, n_masked + 1)
    device = generator.device if generator is not None else torch.device("cpu")
    masks = []
    for i in range(n_masked):
        u = float(torch.rand((), generator=generator, device=device))
        ratio = probs[i] + (probs[i + 1] - probs[i]) * u
        masks.append(torch.from_numpy(mask_generator(int(n_tokens * ratio), generator=generator)))
    for _ in range(n_masked, n_images):
        masks.append(torch.zeros(mask_generator.get_shape(), dtype=torch.bool))
    order = torch.randperm(n_images, generator=generator, device=device).cpu()
    if not masks:
        return torch.zeros((0, n_tokens), dtype=torch.bool)
    return torch.stack([masks[i] for i in order.tolist()]).flatten(1)  # (2B, N)
