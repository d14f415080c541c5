"""Count the places where a tensor value is read back to the host (a device sync on GPU).

:class:`HostReadCounter` is a ``TorchFunctionMode`` that counts calls such as
``Tensor.item``, ``bool(t)``, ``float(t)``, ``t.tolist()``, ``t.cpu()`` and
``nonzero`` made while it is active, by name and with the first caller outside torch.
It works on any device (on CPU nothing is synchronised, but the same calls would be a
sync on CUDA), so a CPU test can prove a step reads nothing back. On CUDA,
``torch.cuda.set_sync_debug_mode("warn")`` is the ground truth; the benchmark uses both.
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["HOST_READS", "HostReadCounter"]

_T = torch.Tensor
HOST_READS: dict[Any, str] = {
    _T.item: "item",
    _T.__bool__: "bool",
    _T.__float__: "float",
    _T.__int__: "int",
    _T.__index__: "index",
    _T.tolist: "tolist",
    _T.cpu: "cpu",
    _T.numpy: "numpy",
    _T.nonzero: "nonzero",
    torch.nonzero: "nonzero",
}
"""Tensor functions that read a value back to the host (name for the report)."""


class HostReadCounter(TorchFunctionMode):
    """Count host reads of tensor values while active.

    Attributes:
        counts: ``Counter`` of read names (``item``, ``bool``, ``cpu``, ...).
        where: ``Counter`` of ``"file:line name"`` of the first frame outside torch.

    Example:
        >>> with HostReadCounter() as reads:
        ...     step()
        >>> reads.total
        0
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.where: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """All counted reads."""
        return sum(self.counts.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = HOST_READS.get(func)
        if name is None and func is _T.to and args[0].device.type != "cpu":
            target = args[1] if len(args) > 1 else kwargs.get("device")
            if isinstance(target, str | torch.device) and torch.device(target).type == "cpu":
                name = "to(cpu)"  # a device -> host copy (a CPU tensor's .to(cpu) is none)
        if name is not None:
            self.counts[name] += 1
            for frame in reversed(traceback.extract_stack()[:-1]):
                if "/torch/" not in frame.filename:
                    self.where[f"{frame.filename}:{frame.lineno} {name}"] += 1
                    break
        return func(*args, **kwargs)
