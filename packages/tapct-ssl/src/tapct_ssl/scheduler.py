"""Cosine schedule with linear warmup and an optional frozen start.

Reference: DINOv2, dinov2/utils/utils.py (``CosineScheduler``).
"""

from __future__ import annotations

import math


class CosineScheduler:
    """Per-iteration values: ``freeze_iters`` zeros, a linear warmup, then a cosine.

    * ``it < freeze_iters``: 0.
    * warmup, ``k = it - freeze_iters`` in ``[0, warmup_iters)``: linearly spaced from
      ``start_warmup_value`` (k = 0) to ``base_value`` (k = warmup_iters - 1), inclusive,
      as ``numpy.linspace`` in DINOv2.
    * cosine, ``j`` in ``[0, n)`` with ``n = total_iters - warmup_iters - freeze_iters``:
      ``final + 0.5 (base - final) (1 + cos(pi j / n))``.
    * ``it >= total_iters``: ``final_value`` (queried past its end a schedule returns its
      final value).

    Args:
        base_value: value after warmup (e.g. the lr).
        final_value: value at and past the end.
        total_iters: length of the schedule (>= 0).
        warmup_iters: linear warmup length (>= 0).
        start_warmup_value: warmup starting value.
        freeze_iters: leading iterations at 0 (DINOv2 freezes the head's last layer).

    Raises:
        ValueError: a negative length, or ``freeze_iters + warmup_iters > total_iters``.

    Example:
        >>> s = CosineScheduler(1.0, 0.0, total_iters=10, warmup_iters=2)
        >>> s[0], s[1], s[10]
        (0.0, 1.0, 0.0)
    """

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0,
        freeze_iters: int = 0,
    ) -> None:
        for name, value in (
            ("total_iters", total_iters),
            ("warmup_iters", warmup_iters),
            ("freeze_iters", freeze_iters),
        ):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value}")
        if freeze_iters + warmup_iters > total_iters:
            raise ValueError(
                f"freeze_iters ({freeze_iters}) + warmup_iters ({warmup_iters}) exceed "
                f"total_iters ({total_iters})"
            )
        self.base_value = float(base_value)
        self.final_value = float(final_value)
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.start_warmup_value = float(start_warmup_value)
        self.freeze_iters = int(freeze_iters)
        self._n_cosine = self.total_iters - self.warmup_iters - self.freeze_iters

    def __len__(self) -> int:
        """Return ``total_iters``."""
        return self.total_iters

    def __getitem__(self, it: int) -> float:
        """Value at iteration ``it`` (0-based).

        Args:
            it: iteration, ``>= 0``; any value ``>= total_iters`` gives ``final_value``.

        Returns:
            The scheduled value as a Python float.

        Raises:
            TypeError: ``it`` is not an int.
            ValueError: ``it < 0``.
        """
        if isinstance(it, bool) or not isinstance(it, int):
            raise TypeError(f"iteration must be an int, got {it!r}")
        if it < 0:
            raise ValueError(f"iteration must be >= 0, got {it}")
        if it >= self.total_iters:
            return self.final_value
        if it < self.freeze_iters:
            return 0.0
        k = it - self.freeze_iters
        if k < self.warmup_iters:
            if self.warmup_iters == 1:  # numpy.linspace(start, base, 1) == [start]
                return self.start_warmup_value
            step = (self.base_value - self.start_warmup_value) / (self.warmup_iters - 1)
            return self.start_warmup_value + step * k
        j = k - self.warmup_iters
        cosine = 1.0 + math.cos(math.pi * j / self._n_cosine)
        return self.final_value + 0.5 * (self.base_value - self.final_value) * cosine

    def __repr__(self) -> str:
        """Return a constructor-like representation."""
        return (
            f"CosineScheduler(base_value={self.base_value}, final_value={self.final_value}, "
            f"total_iters={self.total_iters}, warmup_iters={self.warmup_iters}, "
            f"start_warmup_value={self.start_warmup_value}, freeze_iters={self.freeze_iters})"
        )
