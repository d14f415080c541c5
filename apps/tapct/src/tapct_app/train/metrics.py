"""Training metrics: JSON lines (always), TensorBoard (when installed), a loss-curve PNG."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "plot_loss_curve", "read_metrics"]


class MetricsLogger:
    """Append one JSON object per logged iteration to ``metrics.jsonl``.

    On resume the file is first truncated to the lines *before* the resumed iteration,
    so lines written after the last checkpoint of an interrupted run are not duplicated.
    When ``torch.utils.tensorboard`` (the ``tensorboard`` package) is importable the same
    scalars also go to ``<folder>/tensorboard``.

    Args:
        folder: The run directory.
        resume_from: The iteration training resumes at (0 for a fresh run).
        tensorboard: Also write TensorBoard events when available (the
            ``tapct[tensorboard]`` extra); when it is not installed,
            ``tensorboard_off`` says so in one line.
    """

    def __init__(self, folder: str | Path, resume_from: int = 0, tensorboard: bool = True) -> None:
        self.path = Path(folder) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) < resume_from]
        with self.path.open("w", encoding="utf-8") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        #: Why no TensorBoard events are written (one line for the user), or None.
        self.tensorboard_off: str | None = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=resume_from)
            except ImportError:
                self.tensorboard_off = (
                    f"TensorBoard: off (the tensorboard package is not installed; "
                    f"pip install 'tapct[tensorboard]' or uv sync --extra tensorboard to write "
                    f"{Path(folder) / 'tensorboard'}); metrics go to {self.path}"
                )

    def log(self, iteration: int, values: Mapping[str, float]) -> None:
        """Write one record.

        Args:
            iteration: The iteration the values belong to (0-based).
            values: Scalar metrics (floats or ints).
        """
        record: dict[str, Any] = {"iteration": int(iteration)}
        record.update({k: float(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, float(value), iteration)

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (a torn last line is skipped).

    Args:
        path: The file; a missing file gives an empty list.

    Returns:
        The records in file order.
    """
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_loss_curve(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Plot the total loss and its terms against the iteration into a PNG.

    Args:
        records: Metrics records with ``iteration`` and ``loss`` (and optional
            ``dino_local_crops_loss``, ``dino_global_crops_loss``, ``koleo_loss``,
            ``ibot_loss``).
        path: The PNG to write.

    Returns:
        The path, or None when there is nothing to plot.
    """
    records = [r for r in records if "loss" in r and math.isfinite(r["loss"])]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r["iteration"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(its, [r["loss"] for r in records], label="loss (total)", linewidth=2)
    for key in ("dino_local_crops_loss", "dino_global_crops_loss", "ibot_loss", "koleo_loss"):
        if key in records[0]:
            ax.plot(its, [r.get(key, math.nan) for r in records], label=key, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("TAP-CT 3D DINOv2 pretraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
