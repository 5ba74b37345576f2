"""Fault-injection points for the reliability tests (inactive unless an environment variable asks).

``FINETUNE_KIT_FAULT=PHASE@N`` makes the process kill itself with ``SIGKILL`` at ``PHASE`` of
its ``N``-th checkpoint save (counted from 1 within the process; ``@N`` defaults to 1). The
phases of :meth:`finetune_kit.runs.checkpoint.CheckpointManager.save`, in order:

``before_write``   nothing of the new checkpoint is on disk yet.
``mid_write``      part of the new checkpoint is in its temporary file (killed inside the write).
``after_write``    the new file is complete and renamed into place; nothing points at it yet.
``after_repoint``  ``checkpoints.json``, ``last.pt`` and ``best.pt`` point at it; old files not pruned.

A kill is what a power cut, the OOM killer or ``kill -9`` does: no ``finally`` block, no flush.
"""
from __future__ import annotations

import os
import signal

__all__ = ["FAULT_ENV", "PHASES", "fault_point", "mid_write_armed", "next_save"]

FAULT_ENV = "FINETUNE_KIT_FAULT"
PHASES = ("before_write", "mid_write", "after_write", "after_repoint")
_save_count = 0


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    phase, _, n = spec.partition("@")
    return phase, int(n or 1)


def next_save() -> None:
    """Count one checkpoint save (called at the start of each save)."""
    global _save_count
    _save_count += 1


def _armed(phase: str) -> bool:
    target = _target()
    return target is not None and target == (phase, _save_count)


def mid_write_armed() -> bool:
    """Whether the current save should die inside its write (``mid_write``)."""
    return _armed("mid_write")


def fault_point(phase: str) -> None:
    """``SIGKILL`` this process when ``FINETUNE_KIT_FAULT`` names ``phase`` of the current save."""
    if _armed(phase):
        os.kill(os.getpid(), signal.SIGKILL)
