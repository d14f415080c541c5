"""Progress of every long command: a rich bar on a terminal, plain uncut lines in logs.

One facility for ``pretrain``, ``preprocess``, ``fingerprint``, ``embed`` and
``benchmark``. On a terminal (``console.is_terminal``): a rich bar with the count, the
rate, elapsed time, ETA and the latest details. Otherwise (a SLURM log, a pipe, CI): plain
lines, never wrapped and never cut at the console width, e.g.
``preprocess: 105/2100 scans (5%), 3.41 scans/s, eta 0:09:45``; by default one line per
~5 % of the work or per minute, whichever comes first, so a log of 10^5 scans stays short
and a slow run still shows it is alive. The hook signature ``progress(done, total, name)``
matches ``tapct_data.build_zarr_store(progress=...)``,
``tapct_data.compute_fingerprint(progress=...)`` and
``tapct_eval.run_benchmark(progress=...)``.
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

__all__ = ["CommandProgress", "ScanProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a duration in seconds (rounded to whole seconds)."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def _rate(per_second: float, unit: str) -> str:
    if per_second <= 0:
        return f"- {unit}/s"
    digits = 0 if per_second >= 100 else 2 if per_second >= 1 else 2 - math.floor(
        math.log10(per_second)
    )  # three significant digits below 1/s (0.0123 steps/s), never an exponent
    return f"{per_second:.{digits}f} {unit}/s"


class CommandProgress:
    """``progress(done, total, name="")`` hook for a rich console; a context manager.

    Args:
        console: A ``rich.console.Console`` (``is_terminal`` picks the bar or plain lines).
        label: The command, printed first (``"preprocess"``).
        unit: What is counted (``"scans"``, ``"it"``, ``"steps"``).
        every: Plain mode: a line each time this fraction of the total more is done.
        interval_s: Plain mode: also a line when this many seconds passed since the last.
        initial: Work already done before this run (a resumed pretraining); the rate and
            ETA count only this run's work.
        transient: Remove the bar from the terminal when done.
    """

    def __init__(
        self,
        console: Any,
        label: str,
        *,
        unit: str = "scans",
        every: float = 0.05,
        interval_s: float = 60.0,
        initial: int = 0,
        transient: bool = True,
    ) -> None:
        self.console = console
        self.label = label
        self.unit = unit
        self.every = every
        self.interval_s = interval_s
        self.initial = initial
        self.transient = transient
        self.done = initial
        self.total = 0
        self.bar: Any = None
        self.task: Any = None
        self.started = time.perf_counter()
        self.last_line = self.started
        self.next_line_at = 0  # plain mode: the next line when this many are done

    @property
    def terminal(self) -> bool:
        """True when a live bar is shown (the console is a terminal)."""
        return bool(getattr(self.console, "is_terminal", False))

    def __enter__(self) -> CommandProgress:
        return self.start()

    def start(self) -> CommandProgress:
        """Show the bar (on a terminal) and start the clock; returns ``self``."""
        if self.terminal and self.bar is None:
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

            unit = self.unit

            class _Rate(ProgressColumn):
                def render(self, task: Any) -> Text:
                    return Text(_rate(task.finished_speed or task.speed or 0.0, unit))

            self.bar = Progress(
                TextColumn(self.label, markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}", markup=False),
                console=self.console,
                transient=self.transient,
            )
            self.bar.start()
        self.started = self.last_line = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar (idempotent)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    # ------------------------------------------------------------------ reporting

    def __call__(
        self,
        done: int,
        total: int,
        name: str = "",
        *,
        info: str | None = None,
        line: bool | None = None,
    ) -> None:
        """Record that ``done`` of ``total`` units are finished.

        Args:
            done: Units finished so far (including ``initial``).
            total: All units of the run.
            name: What was just finished (a scan, a case); shown after the numbers.
            info: More details (the latest losses); the bar's last column on a terminal
                (``None``: the bar keeps the details it shows).
            line: Plain mode: ``True`` always prints a line, ``False`` never, ``None``
                when another ``every`` of the total is done or ``interval_s`` passed
                (and at the end).
        """
        self.done, self.total = done, total
        details = ", ".join(part for part in (name, info) if part)
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(
                    self.label, total=total, completed=self.initial, info=""
                )
            fields = {"info": details} if (name or info is not None) else {}
            self.bar.update(self.task, completed=done, total=total, **fields)
            return
        if line is False or total <= 0:
            return
        now = time.perf_counter()
        due = (
            done >= total or done >= self.next_line_at or now - self.last_line >= self.interval_s
        )
        if line is None and not due:
            return
        self.next_line_at = done + max(1, math.ceil(self.every * total))
        self.last_line = now
        self.print(self.status_line(details))

    def status_line(self, details: str = "") -> str:
        """``label: done/total unit (p%), rate, eta H:MM:SS[, details]`` (plain text)."""
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100 * self.done // self.total if self.total > 0 else 0
        text = (
            f"{self.label}: {self.done}/{self.total} {self.unit} ({pct}%), "
            f"{_rate(rate, self.unit)}, eta {eta}"
        )
        return f"{text}, {details}" if details else text

    def print(self, text: str) -> None:
        """Print one line literally (no markup), above the bar on a terminal, never cut."""
        console = self.bar.console if self.bar is not None else self.console
        console.print(text, markup=False, highlight=False, soft_wrap=True, crop=False)

    def advance(self, message: str = "", *, total: int | None = None) -> None:
        """One more unit done, with a line about it (``embed``: one line per scan).

        On a terminal the message is printed above the bar; otherwise one plain line
        with the count, rate and ETA, then the message.

        Args:
            message: What was done (printed literally).
            total: The total, when it is not yet known to the hook.
        """
        total = self.total if total is None else total
        if self.bar is not None:
            if message:
                self.print(message)
            self(self.done + 1, total)
        else:
            self(self.done + 1, total, message, line=True)


#: The name ``preprocess`` used first.
ScanProgress = CommandProgress
