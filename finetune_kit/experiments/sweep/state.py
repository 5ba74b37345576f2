"""A sweep folder's state file and lock, and stopping a trial's processes.

``SWEEP/sweep_state.json`` holds the sweep's spec and every trial (written atomically, so a
killed sweep leaves the previous state, never a truncated one). ``SWEEP/.sweep.lock`` marks
the folder as taken by one sweep process: it is created with ``O_CREAT | O_EXCL`` (two sweeps
started at once cannot both get it) and holds the owner's pid, host, command line and start
time. A lock is taken over only when it is provably stale: written on this host by a process
that is gone, or whose pid now runs another command. A lock from another host is never
touched (that host's process cannot be checked from here).
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from finetune_kit.runs.atomic import atomic_write_text
from finetune_kit.runs.status import pid_alive, process_cmdline
from finetune_kit.experiments.sweep.config import SweepError

__all__ = ["FINISHED", "LOCK_FILE", "STATE_FILE", "SweepLock", "load_state", "save_state", "stop_group"]

STATE_FILE = "sweep_state.json"
LOCK_FILE = ".sweep.lock"
#: Trial statuses that are final (a resumed sweep skips them).
FINISHED = ("completed", "failed", "pruned")


def load_state(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The sweep state of a folder, or None when it has none.

    Raises:
        SweepError: the state file is unreadable (names it).
    """
    path = Path(output_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise SweepError(f"{path} is not valid JSON ({exc}); move it away to start the sweep afresh") from exc


def save_state(output_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``output_dir/sweep_state.json`` atomically (``updated`` set to now)."""
    state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(json.dumps(state, indent=2, default=str), Path(output_dir) / STATE_FILE)


class SweepLock:
    """The lock of one sweep folder, held by this process between :meth:`acquire` and :meth:`release`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._mine: str | None = None

    def acquire(self) -> None:
        """Take the lock, reclaiming a stale one (see the module docstring).

        Raises:
            SweepError: another sweep holds it (this host: its process runs; another host:
                always), or the lock file is unreadable. The message names the lock file.
        """
        info = {"pid": os.getpid(), "host": platform.node(),
                "cmdline": process_cmdline(os.getpid()) or " ".join([sys.executable, *sys.argv]),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        text = json.dumps(info)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._reclaim_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            self._mine = text
            return
        raise SweepError(f"could not take the sweep lock {self.path}: other sweeps keep taking it; "
                         "start one sweep per folder")

    def release(self) -> None:
        """Remove the lock when it is still this process's (never another sweep's)."""
        if self._mine is None:
            return
        try:
            if self.path.read_text(encoding="utf-8") == self._mine:
                self.path.unlink()
        except OSError:
            pass
        self._mine = None

    def _read_other(self) -> tuple[str, dict] | None:
        """(text, content) of the existing lock; None when it went away. A lock just created by
        another sweep may be empty for a moment: it is re-read for up to a second."""
        for _ in range(20):
            try:
                seen = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
            try:
                other = json.loads(seen)
                if isinstance(other, dict) and isinstance(other.get("pid"), int) and other.get("host"):
                    return seen, other
            except ValueError:
                pass
            time.sleep(0.05)
        raise SweepError(f"sweep lock {self.path} is unreadable; if no sweep is working on this folder, "
                         f"remove it (rm {self.path}) and re-run")

    def _reclaim_if_stale(self) -> None:
        found = self._read_other()
        if found is None:
            return  # released meanwhile: try again
        seen, other = found
        pid, host = other["pid"], str(other["host"])
        remove = f"if that sweep is no longer running, remove the lock (rm {self.path}) and re-run"
        if host != platform.node():
            raise SweepError(f"another sweep (pid {pid} on host {host}) holds {self.path}; {remove}")
        if _is_live_sweep(pid, other.get("cmdline")):
            raise SweepError(f"another sweep (pid {pid}) holds {self.path}; wait for it, or stop it (kill {pid}) "
                             "and re-run to resume")
        # stale: move it aside, and put it back if it was replaced by a live lock meanwhile
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_text(encoding="utf-8") != seen:
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
        finally:
            aside.unlink(missing_ok=True)


def _is_live_sweep(pid: int, cmdline: str | None) -> bool:
    """Whether ``pid`` (on this host) still runs the sweep that wrote a lock: alive and running
    the recorded command line (or, for a lock without one, a command mentioning ``sweep``).
    When the command line cannot be read, an alive pid counts as the sweep."""
    if pid_alive(pid) is False:
        return False
    current = process_cmdline(pid)
    if not current:
        return True
    return current == cmdline if cmdline else "sweep" in current


def stop_group(pid: int, proc: subprocess.Popen | None = None, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of ``pid`` (a trial started in its own session), SIGKILL it
    after ``grace_s`` seconds (default 10). With ``proc``, waits for it (its returncode is set)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        if proc is not None:
            proc.wait()
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not pid_alive(pid):
            break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        proc.wait()
