"""Deterministic fault injection for crash tests (``TAPCT_FAULT=point:n``).

With ``TAPCT_FAULT=store.after_write:3`` in the environment, the process kills itself with
SIGKILL (as ``kill -9`` would) the 3rd time it reaches `fault_point` ``"store.after_write"``.
Counts are per process. Unset (the normal case) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["fault_point"]

_COUNTS: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """SIGKILL this process at the n-th visit of ``name`` when ``TAPCT_FAULT`` asks for it."""
    spec = os.environ.get("TAPCT_FAULT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _COUNTS[name] += 1
    if _COUNTS[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
