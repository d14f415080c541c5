"""Private validation helpers shared by the modules of ``tapct_vit3d``."""

from __future__ import annotations

from collections.abc import Sequence


def as_triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """Return ``value`` as a tuple of three positive ints.

    Args:
        value: One int (used for all three axes) or a sequence of three ints ``(d, h, w)``.
        name: Argument name used in error messages.

    Returns:
        ``(d, h, w)`` as Python ints.

    Raises:
        TypeError: If ``value`` is neither an int nor a sequence of ints.
        ValueError: If it does not have three entries or any entry is not positive.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or three ints, got {value!r}")
    if isinstance(value, int):
        triple = (value, value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 3:
            raise ValueError(f"{name} must have three entries (d, h, w), got {tuple(value)!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must hold ints, got {tuple(value)!r}")
        triple = (int(value[0]), int(value[1]), int(value[2]))
    else:
        raise TypeError(f"{name} must be an int or three ints, got {value!r}")
    if min(triple) < 1:
        raise ValueError(f"{name} entries must be >= 1, got {triple!r}")
    return triple
