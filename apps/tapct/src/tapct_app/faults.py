"""Deterministic fault injection for the kill tests: ``TAPCT_FAULT=POINT:N``.

A command calls :func:`fault_point` at the points where a crash matters (after a scan is
committed, between two writes). When the environment variable ``TAPCT_FAULT`` names that
point, e.g. ``TAPCT_FAULT=embed.after_scan:2``, the process sends itself ``SIGKILL`` on
the N-th time it passes the point: no ``finally``, no ``atexit``, exactly what ``kill -9``
or the OOM killer does. Unset (every normal run), the call costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAULT_ENV", "fault_point"]

FAULT_ENV = "TAPCT_FAULT"

_passes: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die with ``SIGKILL`` here when ``$TAPCT_FAULT`` is ``name:N`` and this is pass N.

    Args:
        name: The point, ``"<command>.<where>"`` (e.g. ``"embed.after_scan"``).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
