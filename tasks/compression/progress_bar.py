"""The progress bar of the compression commands: rich, as in classification.

Rich draws a live bar only on a terminal; when the output is piped or written to a log file the
bar is not drawn at all (no ``\\r`` frames), and the per-epoch lines carry the numbers. The bar is
transient (it disappears when its loop ends) and goes to stderr.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["ProgressBar"]


class ProgressBar:
    """Iterate over ``items`` with a rich bar labelled ``description`` (``total`` steps, None:
    ``len(items)`` when it has one); :meth:`set_postfix` shows values beside the bar (tqdm's name).

    ``enabled=False`` iterates without drawing anything. :meth:`close` ends the bar early (after a
    ``break``); exhausting the items closes it too.
    """

    def __init__(self, items: Iterable[Any], *, total: Optional[int] = None, description: str = "",
                 enabled: bool = True, console: Optional[Console] = None) -> None:
        self.items = items
        total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        console = console or Console(stderr=True)
        self.drawn = enabled and console.is_terminal  # piped or logged: nothing at all, not even a newline
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=console, transient=True, disable=not self.drawn)
        self._task = self._bar.add_task(description, total=total, info="")

    def __iter__(self) -> Iterator[Any]:
        self._bar.start()
        try:
            for item in self.items:
                yield item
                self._bar.advance(self._task)
        finally:
            self.close()

    def set_postfix(self, **values: Any) -> None:
        """Show ``key=value`` pairs beside the bar."""
        self._bar.update(self._task, info=" ".join(f"{k}={v}" for k, v in values.items()))

    def close(self) -> None:
        """Remove the bar (idempotent)."""
        self._bar.stop()
