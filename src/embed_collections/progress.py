"""Progress a reader sees wherever the run's stderr goes.

On a terminal, tqdm's bar; in a Jupyter notebook run from Python (`ec.run(...)`), tqdm.auto's
widget bar. Anywhere else (a file, a pipe, a notebook cell such as Kaggle's
`!embed-collections run`), a log line about every 10% or 30 s with count, percent, rate and ETA,
through the package logger, so it reaches stderr and the run's log file. Disabled: nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

from tqdm import tqdm
from tqdm.auto import tqdm as notebook_tqdm

log = logging.getLogger("embed_collections.progress")

LINE_STEP = 0.10  # a line every 10% of the total ...
LINE_SECONDS = 30.0  # ... or every 30 s, whichever comes first


class Progress:
    """Counts work done; renders a bar on a terminal, else periodic log lines."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str,
        enabled: bool = True,
        rate_unit: str = "",
        terminal: bool | None = None,
    ):
        self.total, self.label, self.unit, self.rate_unit = total, label, unit, rate_unit
        self.done = 0
        self.measured = 0  # what the rate counts: `unit`, or `rate_unit` when given
        self.active: float | None = None  # seconds spent on the work, when the caller times it
        self.started = self.last_time = time.monotonic()
        self.last_done = 0
        notebook = terminal is None and in_notebook()
        on_terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar: Any = None
        self.lines = enabled and not on_terminal and not notebook
        if enabled and notebook:
            self.bar = notebook_tqdm(total=total, desc=label, unit=unit)
        elif enabled and on_terminal:
            self.bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, count: int, measured: int | None = None, seconds: float | None = None) -> None:
        """Record `count` more units done (`measured` more of `rate_unit`, if it has one).

        `seconds`: time this work took, when other work runs in between (the rate uses the sum).
        """
        self.done += count
        self.measured += count if measured is None else measured
        if seconds is not None:
            self.active = (self.active or 0.0) + seconds
        first = self.done == count  # the first work done shows at once, not at the next 10%
        if self.bar is not None:
            self.bar.update(count)
            if first:
                self.bar.refresh()
            return
        if not self.lines or not self.total:
            return
        now = time.monotonic()
        step = self.done - self.last_done >= self.total * LINE_STEP
        if first or step or now - self.last_time >= LINE_SECONDS or self.done >= self.total:
            self.last_done, self.last_time = self.done, now
            log.info("%s", self.line(now))

    def reset(self, total: int) -> None:
        """Set the total once it is known (work counted so far is kept)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def line(self, now: float) -> str:
        """`all-MiniLM-L6-v2: 320/1000 chunks (32%), 41.2 chunks/s, ETA 17s`."""
        elapsed = max(now - self.started, 1e-9)
        spent = elapsed if self.active is None else self.active  # the work's own time, if timed
        rate = self.measured / max(spent, 1e-9)
        text = f"{self.label}: {self.done}/{self.total} {self.unit}s ({self.done / self.total:.0%})"
        text += f", {rate:.1f} {self.rate_unit or self.unit}s/s"
        if self.done < self.total and self.done:
            remaining = spent * (self.total - self.done) / self.done
            text += f", ETA {format_seconds(remaining)}"
        return text

    def close(self) -> None:
        """Close the bar (the log lines need no closing)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_seconds(seconds: float) -> str:
    """`45s`, `3m05s`, `2h10m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def in_notebook() -> bool:
    """Running inside a Jupyter kernel (a notebook cell calling the library, not `!cmd`)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    return type(shell).__name__ == "ZMQInteractiveShell"
