"""Atomic file writes (no torch import, so light tools can use them).

Data goes to a temporary file in the target's folder, is flushed and fsynced, then renamed
over the target with :func:`os.replace`: readers see the old file or the new one, never a
truncated one, and an interrupted write leaves the old file untouched.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir", "remove_stale_temp", "TEMP_GLOB"]

#: Names of the temporary files :func:`atomic_write` makes (``.NAME.XXXXXXXX.tmp``).
TEMP_GLOB = ".*.tmp"


def atomic_write(path: str | os.PathLike, write_fn: Callable[[BinaryIO], object]) -> Path:
    """Call ``write_fn(fh)`` on a temporary binary file, then move it to ``path`` atomically.

    The file gets the usual permissions (``0o666 & ~umask``), not ``mkstemp``'s 0600.
    Returns the path. Whatever ``write_fn`` raises propagates; the target is then untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. Returns the path."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync ``folder`` so a rename inside it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.*.tmp``) a killed :func:`atomic_write` left in ``folder``.

    Call it only where no other process is writing into ``folder`` (when a run starts or
    resumes). Returns the deleted paths (empty when the folder does not exist).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(TEMP_GLOB):
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
