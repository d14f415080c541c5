"""The device-side watch over a run's step values, read by the host in one transfer.

Each step's :class:`~tapct_app.train.step.StepOutput` stays on the device. The
:class:`StepMonitor` keeps, also on the device, the first iteration whose values were
not finite (its update was skipped there) and those values; :meth:`StepMonitor.fetch`
reads the latest values and that record in one ``.cpu()`` every ``log_every`` steps and
before each checkpoint, and raises :class:`TrainingDivergedError` when a step since
the previous fetch was not finite. So a checkpoint is only written after a fetch that
saw finite values.
"""

from __future__ import annotations

import attrs
import torch

from tapct_app.errors import UserError
from tapct_app.train.step import StepOutput

__all__ = ["Fetched", "StepMonitor", "TrainingDivergedError"]


class TrainingDivergedError(UserError):
    """The loss or gradient became NaN/inf; nothing was written for that iteration."""


@attrs.frozen
class Fetched:
    """Host values of the last step before a fetch.

    Attributes:
        iteration: The step's 0-based iteration.
        values: Its terms (``loss`` first) and ``grad_norm``, by name.
    """

    iteration: int
    values: dict[str, float]


class StepMonitor:
    """Track non-finite steps on the device; fetch values to the host on request.

    Args:
        device: The training device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._first_bad: torch.Tensor = torch.full((), -1.0, device=device)  # ()
        self._bad_values: torch.Tensor | None = None  # (T,)
        self._last: StepOutput | None = None
        self._last_iteration = -1

    def observe(self, iteration: int, output: StepOutput) -> None:
        """Record a step (device ops only: no host sync).

        Args:
            iteration: The step's iteration.
            output: Its output.
        """
        newly = (self._first_bad < 0) & (output.found_inf > 0)  # ()
        self._first_bad = torch.where(newly, float(iteration), self._first_bad)
        bad = self._bad_values if self._bad_values is not None else output.values
        self._bad_values = torch.where(newly, output.values, bad)
        self._last, self._last_iteration = output, iteration

    def fetch(self, last_good_checkpoint: object = None) -> Fetched:
        """Read the last step's values and the non-finite record in one transfer.

        Args:
            last_good_checkpoint: Named in the error message (a path or None).

        Returns:
            The last step's values.

        Raises:
            TrainingDivergedError: If a step since the run (re)started was not finite,
                naming its iteration and values.
            RuntimeError: If no step was observed.
        """
        if self._last is None or self._bad_values is None:
            raise RuntimeError("StepMonitor.fetch before any step")
        out = self._last
        host = torch.cat([out.values, self._first_bad.reshape(1), self._bad_values]).cpu()
        flat = host.tolist()
        n = out.values.numel()
        values = dict(zip(out.names, flat[:n], strict=True))
        first_bad = int(flat[n])
        if first_bad >= 0:
            bad = dict(zip(out.names, flat[n + 1 :], strict=True))
            terms = ", ".join(f"{k}={v:.4g}" for k, v in bad.items())
            raise TrainingDivergedError(
                f"training diverged at iteration {first_bad}: loss or gradient is not finite "
                f"({terms}); its update was skipped and nothing was written after it; "
                f"last good checkpoint: {last_good_checkpoint or 'none'}; "
                "try a lower optim.base_lr or a longer warm-up"
            )
        return Fetched(iteration=self._last_iteration, values=values)
