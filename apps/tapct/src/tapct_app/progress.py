"""Progress of a long command over many scans: a rich bar on a terminal, plain lines in logs.

On a terminal (``console.is_terminal``): a transient bar with the count, scans/s, elapsed
time and ETA. Otherwise (a SLURM log, a pipe): one plain line per ~5 % of the scans, e.g.
``preprocess: 105/2100 scans (5%), 3.41 scans/s, eta 0:09:45``, so a log of 10^5 scans
stays about 20 lines long. The hook matches ``tapct_data.build_zarr_store(progress=...)``.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

__all__ = ["ScanProgress"]


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class ScanProgress:
    """``progress(done, total, name)`` hook for a rich console; use as a context manager.

    Args:
        console: A ``rich.console.Console``.
        label: The command, printed first (``"preprocess"``).
        every: Plain mode: a line each time this fraction of the scans more is done.
    """

    def __init__(self, console: Any, label: str, *, every: float = 0.05) -> None:
        self.console = console
        self.label = label
        self.every = every
        self.bar: Any = None
        self.task: Any = None
        self.start = time.perf_counter()
        self.next_line = 0.0

    def __enter__(self) -> ScanProgress:
        if getattr(self.console, "is_terminal", False):
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                ProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            class _Rate(ProgressColumn):
                def render(self, task: Any) -> Text:
                    speed = task.finished_speed or task.speed
                    return Text(f"{speed:.2f} scans/s" if speed else "- scans/s")

            self.bar = Progress(
                TextColumn(self.label, markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
        self.start = time.perf_counter()
        return self

    def __call__(self, done: int, total: int, name: str = "") -> None:
        """Record that ``done`` of ``total`` scans of this run are finished."""
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(self.label, total=total)
            self.bar.update(self.task, completed=done, total=total)
            return
        if total <= 0 or (done < total and done / total < self.next_line):
            return
        self.next_line = done / total + self.every
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = _duration((total - done) / rate) if rate > 0 else "?"
        self.console.print(
            f"{self.label}: {done}/{total} scans ({100 * done // total}%), "
            f"{rate:.2f} scans/s, eta {eta}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
