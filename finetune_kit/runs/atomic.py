"""Atomic file writes (no torch import, so light tools can use them).

Data goes to a temporary file in the target's folder, is flushed and fsynced, then renamed
over the target with :func:`os.replace`: readers see the old file or the new one, never a
truncated one, and an interrupted write leaves the old file untouched.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir", "remove_stale_temp", "refuse_symlinked_folder",
           "append_line", "DiskWriteError", "DISK_ERRNOS", "disk_write_error", "TEMP_GLOB"]

#: Names of the temporary files :func:`atomic_write` makes (``.NAME.XXXXXXXX.tmp``).
TEMP_GLOB = ".*.tmp"


#: errno values of a write refused for lack of room or rights; :func:`atomic_write` reports them
#: as :class:`DiskWriteError` (one line naming the folder and the fix)
DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


class DiskWriteError(OSError):
    """A file could not be written for lack of space, quota or rights (``errno`` kept); the message
    is one line naming the folder, the bytes needed when known, and the fix."""

    def __str__(self) -> str:
        return str(self.strerror)


def disk_write_error(exc: OSError, path: Path, size_hint: int | None = None) -> DiskWriteError:
    """The :class:`DiskWriteError` for ``exc`` (its ``errno`` one of :data:`DISK_ERRNOS`) raised while
    writing ``path``: one line naming the folder, the bytes needed (``size_hint``) and free, the fix."""
    folder = path.parent
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        free = None
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    need = f"needs about {_mb(size_hint)}" if size_hint and full else ""
    have = f"{_mb(free)} free" if free is not None and full else ""
    room = f" ({', '.join(x for x in (need, have) if x)})" if need or have else ""
    if full:
        fix = "free space there or write the run to another output folder"
    else:
        fix = "make the folder writable or write the run to another output folder"
    return DiskWriteError(exc.errno, f"cannot write {path.name} in {folder}: {DISK_ERRNOS[exc.errno]}{room}; {fix}; "
                                     "a file already there is left as it was")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


class _Recorder:
    """File wrapper that remembers the ``OSError`` of a failed ``write``: :func:`torch.save` turns
    it into ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, which names
    neither the cause nor the fix."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def atomic_write(path: str | os.PathLike, write_fn: Callable[[BinaryIO], object], *,
                 size_hint: int | None = None) -> Path:
    """Call ``write_fn(fh)`` on a temporary binary file, then move it to ``path`` atomically.

    The file gets the usual permissions (``0o666 & ~umask``), not ``mkstemp``'s 0600.
    ``size_hint`` (bytes, optional) is quoted in the message of a full disk.
    Returns the path.

    Raises:
        DiskWriteError: no space, quota exceeded, read-only or permission denied (ENOSPC, EDQUOT,
            EROFS, EACCES, EPERM), also when ``write_fn`` (e.g. :func:`torch.save`) hid that
            error behind its own; the target is untouched and the temp file removed.
        Whatever else ``write_fn`` raises propagates; the target is then untouched.
    """
    path = Path(path)
    recorder = None
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            recorder = _Recorder(fh)
            write_fn(recorder)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = exc if isinstance(exc, OSError) else (recorder.error if recorder is not None else None)
        if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS and not isinstance(cause, DiskWriteError):
            raise disk_write_error(cause, path, size_hint) from exc
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

    Raises:
        ValueError: ``folder`` is a symbolic link (see :func:`refuse_symlinked_folder`).
    """
    folder = Path(folder)
    refuse_symlinked_folder(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(TEMP_GLOB):
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def refuse_symlinked_folder(folder: str | os.PathLike, what: str = "folder") -> None:
    """Refuse a run's own sub-folder (``checkpoints/``, ``scale_best/``) that is a symbolic link.

    Clean-up deletes files in these folders and saves write into them; through a link that would
    touch files outside the run folder (a run folder someone sent you is untrusted input).

    Raises:
        ValueError: ``folder`` is a symbolic link (one line naming it, its target and the fix).
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise ValueError(f"{what} {folder} is a symbolic link (to {os.readlink(folder)}); a run's own folders are "
                         "never followed out of it: replace the link with a real folder (copy the files in)")


def append_line(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` (created 0o666 & ~umask), refusing to follow a symbolic link: a
    link planted in a run folder must not make a run write outside it.

    Raises:
        OSError: ``path`` is a symbolic link (ELOOP) or cannot be written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
