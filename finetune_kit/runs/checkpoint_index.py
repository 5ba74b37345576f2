"""The index of a checkpoint folder (``checkpoints.json``), read as untrusted input.

A run folder may come from someone else (to resume, evaluate or rerun), so its index is checked
before anything acts on it: each entry must be a bare ``epoch_NNNN.pt`` whose number is the
entry's epoch. Anything else is a :class:`CheckpointIndexError` with one line naming the file and
the fix, never a repair that deletes files: an entry ``../../victim.txt`` would otherwise make the
retention delete a file outside the folder.

A checkpoint folder is also held by one process at a time (:func:`hold_folder`): a second run on
it (two ``--resume`` of one run) would delete the first one's temporary and epoch files.
"""
from __future__ import annotations

import json
import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_kit.runs.atomic import refuse_symlinked_folder

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no folder locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["EPOCH_FILE", "TRACKING_FILE", "CheckpointEntry", "CheckpointIndexError", "FolderInUseError",
           "FolderLock", "check_checkpoint_folder", "hold_folder", "read_index"]

#: the index file of a checkpoint folder
TRACKING_FILE = "checkpoints.json"

#: the only names a checkpoint index may list: bare ``epoch_NNNN.pt`` (4 digits or more) in its folder
EPOCH_FILE = re.compile(r"epoch_(\d{4,})\.pt")


class CheckpointIndexError(ValueError):
    """A run folder's ``checkpoints.json`` is not what a run writes (a name outside the folder, an
    epoch that contradicts its file name, not JSON): refused with one line, never repaired by
    deleting files."""


@dataclass
class CheckpointEntry:
    """One tracked checkpoint file: its name (relative to the manager's folder), epoch and metrics."""

    file: str
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)


def read_index(tracking: Path) -> list[CheckpointEntry]:
    """The entries of a ``checkpoints.json``, each checked: a bare ``epoch_NNNN.pt`` name whose
    number is the entry's ``epoch``, and numeric metrics.

    Raises:
        CheckpointIndexError: unreadable, not JSON, a symbolic link, or an entry that breaks the
            rule (one line naming the file, the entry and the fix).
    """
    fix = (f"this index was not written by a run (edited, or from elsewhere): delete {tracking} (the epoch files "
           "beside it are then adopted again) or resume another run")
    try:
        if tracking.is_symlink():
            raise ValueError("it is a symbolic link")
        data = json.loads(tracking.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointIndexError(f"{tracking} is not a readable checkpoint index ({' '.join(str(exc).split())}); "
                                   f"{fix}") from None
    entries = data.get("entries", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise CheckpointIndexError(f"{tracking}: no list of entries; {fix}")
    out = []
    for raw in entries:
        problem = _entry_problem(raw)
        if problem:
            shown = json.dumps(raw)[:160]
            raise CheckpointIndexError(f"{tracking}: entry {shown} {problem}; {fix}")
        out.append(CheckpointEntry(raw["file"], int(raw["epoch"]),
                                   {k: float(v) for k, v in (raw.get("metrics") or {}).items() if v is not None}))
    return out


def _entry_problem(raw: Any) -> str | None:
    """Why an index entry is refused, or None when it is a checkpoint of this folder."""
    if not isinstance(raw, dict) or set(raw) - {"file", "epoch", "metrics"}:
        return "is not {file, epoch, metrics}"
    name, epoch = raw.get("file"), raw.get("epoch")
    match = EPOCH_FILE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        return "is not a bare file name epoch_NNNN.pt inside the folder"
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch != int(match.group(1)):
        return f"has epoch {epoch!r}, not the {int(match.group(1))} of its file name"
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in metrics.values()):
        return "has metrics that are not numbers"
    return None


def check_checkpoint_folder(directory: str | os.PathLike) -> None:
    """Check a run's ``checkpoints/`` before a resume touches anything: not a symbolic link, and
    its ``checkpoints.json`` (when present) a valid index (:func:`read_index`). Reads only.

    Raises:
        ValueError: the folder is a symbolic link.
        CheckpointIndexError: the index is not what a run writes (names the file and the fix).
    """
    directory = Path(directory)
    refuse_symlinked_folder(directory, "checkpoint folder")
    tracking = directory / TRACKING_FILE
    if tracking.is_file() or tracking.is_symlink():
        read_index(tracking)


class FolderInUseError(ValueError):
    """Another process holds the checkpoint folder (a second ``--resume`` of one run): refused."""


#: checkpoint folders this process holds: resolved path -> [descriptor carrying the lock, handles alive]
_HELD: dict[str, list[int]] = {}


class FolderLock:
    """A handle on a held checkpoint folder (:func:`hold_folder`); the lock goes when the last handle
    of this process on that folder is garbage-collected, or when the process ends."""

    def __init__(self, key: str) -> None:
        self.key = key
        weakref.finalize(self, _release, key)


def _release(key: str) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        os.close(held[0])


def hold_folder(directory: Path) -> FolderLock | None:
    """Take an exclusive lock on ``directory`` (``flock`` on the folder itself, no file added) for
    as long as the returned handle lives, so two processes never run on one checkpoint folder: the
    second would delete the first's temp and epoch files. More handles in this process on the same
    folder are fine (a new manager on it). Where the system has no locks, returns None.

    Raises:
        FolderInUseError: another process holds it (one line naming the folder and the fix).
    """
    key = str(Path(directory).resolve())
    if fcntl is None:
        return None
    if key in _HELD:
        _HELD[key][1] += 1
        return FolderLock(key)
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderInUseError(f"{directory} is in use by another process (a run started or resumed on it is still "
                               "going): wait for it to end, or resume another run folder") from None
    except OSError:  # a file system without locks
        os.close(fd)
        return None
    _HELD[key] = [fd, 1]
    return FolderLock(key)
