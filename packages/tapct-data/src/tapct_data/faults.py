"""Deterministic fault injection for the crash (kill -9) tests: ``TAPCT_FAULT=POINT:N``.

Code calls :func:`fault_point` where a crash matters (between two writes, after a scan is
committed). When the environment variable ``TAPCT_FAULT`` names that point, e.g.
``TAPCT_FAULT=store.after_write:3``, the process sends itself ``SIGKILL`` on the N-th
pass: no ``finally``, no ``atexit``, exactly what ``kill -9`` or the OOM killer does.
``TAPCT_FAULT=POINT:N:stop`` sends ``SIGSTOP`` instead: the process halts there, holding
whatever it holds (e.g. its output's lock, `tapct_data.locking`), until the test sends
``SIGCONT`` or ``SIGKILL``. Counts are per process. Unset (every normal run), a call
costs one dictionary lookup. The one implementation for the library and the ``tapct``
app (which imports it).

Points in use (a point name holds no ``:``):

- ``store.read.<scan name>`` (before a scan is read, in the reader process),
  ``store.mid_write``, ``store.after_write``, ``store.after_record``
  (`tapct_data.build_zarr_store`);
- ``embed.after_scan`` (``tapct embed``);
- ``pretrain.after_step`` (``tapct pretrain``: after an optimizer step, before its
  metrics line and checkpoint), ``checkpoint.mid_write`` (the checkpoint's temporary
  file written, not yet renamed), ``checkpoint.after_write`` (renamed into place, older
  checkpoints not yet pruned).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["FAULT_ENV", "fault_point"]

#: The environment variable read by :func:`fault_point`.
FAULT_ENV = "TAPCT_FAULT"

_COUNTS: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """Die with ``SIGKILL`` here when ``$TAPCT_FAULT`` is ``name:N`` and this is pass N.

    With ``name:N:stop`` the process stops itself (``SIGSTOP``) on pass N instead, once.

    Args:
        name: The point, ``"<component>.<where>"`` (e.g. ``"store.after_write"``).

    Raises:
        ValueError: ``N`` in ``$TAPCT_FAULT`` is not an integer.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    count, _, action = rest.partition(":")
    _COUNTS[name] += 1
    if _COUNTS[name] == int(count or 1) or (_COUNTS[name] > int(count or 1) and not action):
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
