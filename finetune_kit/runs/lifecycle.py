"""One run lifecycle for every training loop: what ``status.json`` says when a run ends.

Every loop (classification, compression training, compression fine-tuning) wraps its work in
:func:`run_lifecycle`, so the three states a finished process can leave mean one thing
everywhere (the sweep's resume logic and ``analyze`` read them):

=============== ==========================================================================
``completed``   the loop ran to its end.
``interrupted`` it stopped before the end without an error: Ctrl-C (``KeyboardInterrupt``)
                or a planned stop the loop asked for (``--stop_after_epoch``). Resumable
                with ``--resume RUN``.
``failed``      an exception ended it; the error (``Type: message``) is recorded.
=============== ==========================================================================

``KeyboardInterrupt`` and exceptions are re-raised after recording, so the caller (the CLI)
still decides how to report them; the logger is always closed. A failure also appends its full
traceback to ``RUN/traceback.log`` (:data:`TRACEBACK_LOG`) and tags the exception with the run
folder (attribute ``finetune_kit_run_dir``), so the CLI can print the same one line
(:func:`error_line`) as ``status.json`` and point at the log instead of the terminal.
"""
from __future__ import annotations

import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from finetune_kit.runs.atomic import append_line

if TYPE_CHECKING:  # pragma: no cover
    from finetune_kit.runs.logger import RunLogger
    from finetune_kit.runs.run_dir import RunDir

__all__ = ["RunOutcome", "run_lifecycle", "resume_hint", "error_line", "write_traceback", "TRACEBACK_LOG"]

#: File in the run folder that collects the tracebacks of failures.
TRACEBACK_LOG = "traceback.log"


def error_line(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` on one line (whitespace collapsed): what ``status.json``
    records for a failure and what the CLI prints after ``error:``."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def write_traceback(folder, exc: BaseException) -> "Path | None":
    """Append the traceback of ``exc`` to ``folder/traceback.log``; returns its path (None when it
    cannot be written)."""
    import time
    from pathlib import Path

    path = Path(folder) / TRACEBACK_LOG
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        append_line(path, f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {error_line(exc)}\n{text}")  # never through a link
    except OSError:
        return None
    return path


def resume_hint(run: "RunDir") -> str:
    """The one-line hint recorded with ``interrupted``: ``continue with --resume RUN``."""
    return f"continue with --resume {run.path}"


@dataclass
class RunOutcome:
    """Handle a loop uses inside :func:`run_lifecycle` to end early on purpose.

    Attributes:
        stopped: the reason given to :meth:`stop` (None while the run is going to complete).
    """

    stopped: str | None = None

    def stop(self, reason: str) -> None:
        """Record that the loop stops before its end on purpose (status ``interrupted``)."""
        self.stopped = reason


@contextmanager
def run_lifecycle(run: "RunDir", logger: "RunLogger | None" = None) -> Iterator[RunOutcome]:
    """Record a run's status around its work (see the module docstring for the states).

    Args:
        run: the run folder (its ``status.json`` is written; a disabled ``RunDir`` on a
            non-main rank writes nothing).
        logger: closed (wandb finished) however the block ends; optional.

    Yields:
        a :class:`RunOutcome`; call ``outcome.stop(reason)`` for a planned early stop.

    Raises:
        whatever the block raises, after recording ``interrupted`` or ``failed``.
    """
    outcome = RunOutcome()
    run.set_status("running")
    try:
        yield outcome
    except KeyboardInterrupt:
        run.set_status("interrupted", f"interrupted by the user; {resume_hint(run)}")
        raise
    except BaseException as exc:  # SystemExit from a library too: the run did not finish
        try:
            run.set_status("failed", error_line(exc))
        except OSError:  # a full or read-only disk: the error that says so is what the user must see
            pass
        if run.enabled:
            write_traceback(run.path, exc)
            try:
                exc.finetune_kit_run_dir = str(run.path)  # type: ignore[attr-defined]
            except (AttributeError, TypeError):  # pragma: no cover - exceptions without __dict__
                pass
        raise
    else:
        if outcome.stopped:
            run.set_status("interrupted", f"{outcome.stopped}; {resume_hint(run)}")
        else:
            run.set_status("completed")
    finally:
        if logger is not None:
            logger.finish()
