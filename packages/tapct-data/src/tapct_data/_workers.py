"""Warnings raised in worker processes, shown by the parent: the one helper of every pool.

A warning raised in a pool worker (a forkserver or spawned process) would be printed by
that process with Python's default format (file, line number and source line), bypassing
the policy of the application that called the library (``tapct: warning: ...``). Every
pool of this package therefore runs its work through `call_capturing_warnings` in the
worker and calls `Captured.unwrap` in the parent, which re-emits each warning there with
`warnings.warn`, where the caller's filters and ``showwarning`` apply (and where
``pytest.warns`` sees it). Used by `tapct_data.store` and `tapct_data.fingerprint`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

T = TypeVar("T")


@attrs.frozen
class Captured(Generic[T]):
    """The result of a call made in a worker, with the warnings it raised.

    Attributes:
        value: The return value (None when the call raised).
        error: The exception the call raised, or None.
        warnings: ``(category, message)`` of each warning, in the order raised.
    """

    value: T | None
    error: Exception | None
    warnings: tuple[tuple[type[Warning], str], ...] = ()

    def unwrap(self) -> T:
        """In the parent: re-emit the warnings (`warnings.warn`), then return or raise.

        Returns:
            The call's return value.

        Raises:
            Exception: The exception the call raised in the worker.
        """
        for category, message in self.warnings:
            warnings.warn(message, category, stacklevel=2)
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def call_capturing_warnings(fn: Callable[..., T], *args: Any) -> Captured[T]:
    """In a worker: ``fn(*args)`` with every warning recorded instead of printed.

    All warnings are recorded (filter ``"always"``), so the parent's filters, not the
    worker's defaults, decide what is shown and how often. An exception of ``fn`` is
    returned in `Captured.error` (with the warnings raised before it), not raised.

    Args:
        fn: A picklable (module-level) function.
        *args: Its arguments.

    Returns:
        The `Captured` result; the parent calls `Captured.unwrap`.
    """
    error: Exception | None = None
    value: T | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn(*args)
        except Exception as exc:  # handed to the parent, which raises it (unwrap)
            error = exc
    recorded = tuple((w.category, str(w.message)) for w in caught)
    return Captured(value, error, recorded)
