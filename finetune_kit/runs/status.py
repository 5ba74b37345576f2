"""Status of a run folder, and the process checks behind it (shared by the results loader and sweeps).

A run's ``status.json`` says what the run last wrote (:mod:`finetune_kit.runs.run_dir`); a run
that says ``running`` may have crashed. :func:`run_status` tells them apart with the pid and
host recorded beside the status, and falls back on how long nothing was written.
:func:`pid_alive` and :func:`process_cmdline` are the process checks, also used by the sweep
lock and by a resumed sweep looking for orphaned trials.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

__all__ = ["STALE_AFTER_S", "STATUSES", "ago", "pid_alive", "process_cmdline", "recorded_status", "run_status"]

#: A run whose status is ``running`` but which wrote nothing for this long (seconds), and
#: whose process cannot be checked, is reported as ``crashed``. Default 30 minutes.
STALE_AFTER_S = 30 * 60

#: Every status :func:`run_status` (and the results loader) can give a run.
STATUSES = ("completed", "failed", "pruned", "interrupted", "crashed", "running", "incomplete", "unknown")


def pid_alive(pid: Any) -> bool | None:
    """Whether process ``pid`` exists on this machine.

    Returns True/False when it can be checked, None when ``pid`` is not a positive integer
    or the check itself fails. A process owned by another user counts as alive.
    """
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def process_cmdline(pid: Any) -> str:
    """Command line of process ``pid`` (arguments joined by spaces), or ``""`` when it cannot
    be read (no such process, or no ``/proc`` on this system)."""
    try:
        raw = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, TypeError, ValueError):
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def recorded_status(run_dir: str | os.PathLike | None) -> tuple[str | None, str | None]:
    """``(status, error)`` as written in a run folder's ``status.json``; ``(None, None)`` when
    ``run_dir`` is None or the file is missing or unreadable. No staleness check (see :func:`run_status`)."""
    if not run_dir:
        return None, None
    try:
        data = json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, Mapping):
        return None, None
    return (str(data["status"]) if data.get("status") is not None else None), data.get("error")


def ago(seconds: float) -> str:
    """``"45 s"``, ``"12 min"`` or ``"3.5 h"`` for a duration in seconds."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_status(path: Path, status_data: Mapping | None, has_final: bool, environment: Mapping | None = None,
               *, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> tuple[str, str | None]:
    """Status and reason of one run folder.

    * ``completed`` with ``metrics.json`` -> ``("completed", None)``;
      ``completed`` without it -> ``incomplete``.
    * ``failed`` -> ``failed`` with the recorded error; ``pruned`` (written by a sweep) -> ``pruned``;
      ``interrupted`` (a task stopped by Ctrl-C or ``--stop_after_epoch``, or a trial stopped
      with its sweep) -> ``interrupted``.
    * ``running``: when a ``pid`` is recorded (status.json or environment.json) on this
      host and that process is gone -> ``crashed``; when no pid can be checked and nothing
      was written for ``stale_after_s`` seconds -> ``crashed``; otherwise ``running``.
    * no ``status.json`` -> ``incomplete``.

    Args:
        path: the run folder (its files' modification times date the last write).
        status_data: content of ``status.json`` (None when missing).
        has_final: whether ``metrics.json`` was read.
        environment: content of ``environment.json`` (pid/host fallback).
        now: the current time (seconds since the epoch; default ``time.time()``).
        stale_after_s: seconds, see above. Default :data:`STALE_AFTER_S`.
    """
    now = time.time() if now is None else now
    if not status_data:
        return "incomplete", "no status.json" + ("" if has_final else " and no metrics.json")
    status = str(status_data.get("status"))
    error = status_data.get("error")
    if status == "completed":
        return ("completed", None) if has_final else ("incomplete", "status completed but metrics.json missing")
    if status == "failed":
        return "failed", str(error or "status failed (no error recorded)")
    if status == "pruned":
        return "pruned", str(error or "pruned by a sweep")
    if status == "interrupted":
        return "interrupted", str(error or "interrupted (resumable with --resume)")
    if status == "running":
        pid = status_data.get("pid") or (environment or {}).get("pid")
        host = status_data.get("host") or (environment or {}).get("host")
        same_host = host is None or host == os.uname().nodename
        alive = pid_alive(pid) if (pid and same_host) else None
        files = [path / n for n in ("status.json", "metrics.jsonl", "metrics.json")]
        last_write = max((f.stat().st_mtime for f in files if f.exists()), default=now)
        idle = now - last_write
        if alive is False:
            return "crashed", f"status running but its process {pid} is gone (last write {ago(idle)} ago)"
        if alive is None and idle > stale_after_s:
            return "crashed", f"status running but nothing written for {ago(idle)} (process presumably gone)"
        return "running", f"still running (last write {ago(idle)} ago)"
    return "incomplete", f"unknown status {status!r}"
