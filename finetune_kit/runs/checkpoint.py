"""Checkpoints: atomic writes, tolerant loading, and a retention manager.

A checkpoint is a plain dict saved with :func:`torch.save`. Writes go to a temporary file
in the same folder, are flushed and fsynced, then renamed over the target with
:func:`os.replace`, so an interrupted run never leaves a truncated checkpoint behind.
Files are read back with :func:`finetune_kit.runs.safe_load.safe_torch_load` (no code runs).

:meth:`CheckpointManager.save` keeps this order, so a kill at any point leaves a loadable
``last.pt`` (see ``docs/reliability.md``): write the new file (temp + fsync + rename) ->
rewrite ``checkpoints.json`` and repoint ``last.pt`` / ``best.pt`` atomically -> only then
delete the files retention drops.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch

from finetune_kit.runs import faults
from finetune_kit.runs.atomic import atomic_write, atomic_write_text, refuse_symlinked_folder, remove_stale_temp
from finetune_kit.runs.checkpoint_index import (EPOCH_FILE, TRACKING_FILE, CheckpointEntry, CheckpointIndexError,
                                                FolderInUseError, check_checkpoint_folder, hold_folder, read_index)
from finetune_kit.runs.safe_load import UnsafeWeightsError, safe_torch_load

__all__ = [
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "load_resume_checkpoint",
    "extract_state_dict",
    "CheckpointManager",
    "CheckpointEntry",
    "CheckpointIndexError",
    "check_checkpoint_folder",
    "FolderInUseError",
    "hold_folder",
    "EPOCH_FILE",
]


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Save ``obj`` with :func:`torch.save` atomically (temp file + fsync + rename).

    Returns the path written.

    Raises:
        DiskWriteError: (an ``OSError``) no space, quota, read-only or no permission: one line naming
            the folder, the size of the tensors to write and the fix (see
            :func:`finetune_kit.runs.atomic.atomic_write`).
        Whatever else :func:`torch.save` raises; the target is then left untouched.
    """
    def write(fh):
        torch.save(obj, _DyingWriter(fh) if faults.mid_write_armed() else fh)

    return atomic_write(path, write, size_hint=_tensor_bytes(obj))


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists, tuples): about what :func:`torch.save` writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class _DyingWriter:
    """File wrapper for the ``mid_write`` fault: SIGKILLs the process once 4 KiB are written."""

    def __init__(self, fh) -> None:
        self.fh, self.n = fh, 0

    def write(self, data) -> int:
        out = self.fh.write(data)
        self.n += len(data)
        if self.n >= 4096:
            self.fh.flush()
            faults.fault_point("mid_write")
        return out

    def flush(self) -> None:
        self.fh.flush()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file written by :func:`atomic_save` (or any ``torch.save`` dict) without
    running code from it (:func:`~finetune_kit.runs.safe_load.safe_torch_load`).

    Raises:
        FileNotFoundError: ``path`` does not exist (message names it).
        UnsafeWeightsError: the file needs pickled code (names the opt-in flag).
        ValueError: the file is not a readable PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass the path of a .pt/.pth file written by a run")
    try:
        return safe_torch_load(path, map_location=map_location, what="checkpoint")
    except UnsafeWeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the path and a fix
        raise ValueError(f"checkpoint {path} is not a readable PyTorch file ({type(exc).__name__}: {exc}); "
                         "re-save it with torch.save or pass another file") from exc


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the model state dict inside ``obj``.

    Accepts a bare state dict or a whole checkpoint holding one under ``state_dict``,
    ``model``, ``model_state_dict``, ``state_dict_ema`` or ``net``; strips DataParallel /
    DDP ``module.`` prefixes (and ``_orig_mod.`` from ``torch.compile``).

    Raises:
        ValueError: nothing in ``obj`` looks like a state dict.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    sd: Any = obj
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if key in obj and isinstance(obj[key], Mapping):
            sd = obj[key]
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("no tensors found in the checkpoint: expected a state dict or a dict with a "
                         "'state_dict' or 'model' entry")
    out = {}
    for k, v in tensors.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


class CheckpointManager:
    """Keep the last ``keep_last`` and the best ``keep_best`` checkpoints in a folder.

    Files are named ``epoch_0007.pt``; a tracking file ``checkpoints.json`` lists them with
    their epoch and metrics, and ``last.pt`` / ``best.pt`` are kept as symbolic links (a
    copy where links are unsupported). Disk use is bounded by ``keep_last + keep_best``
    checkpoint files. A new manager on the same folder resumes from the tracking file.

    Args:
        directory: folder for the checkpoint files (created).
        keep_last: how many of the most recent checkpoints to keep (>= 1). Default 1.
        keep_best: how many of the best checkpoints by ``metric`` to keep (>= 0). Default 1.
        metric: name of the metric in ``save(..., metrics=)`` that ranks checkpoints.
        mode: ``"max"`` (higher is better, e.g. AUROC) or ``"min"`` (e.g. loss, bpp).

    The folder and its ``checkpoints.json`` are untrusted input (a run folder someone sent you):
    the index may only list bare ``epoch_NNNN.pt`` names whose number is their epoch, and a
    ``directory`` that is a symbolic link is refused, so nothing outside the folder is ever
    deleted, renamed or written.

    Raises:
        ValueError: on a bad ``keep_last``, ``keep_best`` or ``mode``, or ``directory`` is a
            symbolic link.
        FolderInUseError: another process manages ``directory`` (two ``--resume`` of one run).
        CheckpointIndexError: ``checkpoints.json`` is not JSON, or lists an entry that is not a
            bare ``epoch_NNNN.pt`` of its epoch (one line naming the file and the fix).
    """

    TRACKING_FILE = TRACKING_FILE

    def __init__(self, directory: str | os.PathLike, *, keep_last: int = 1, keep_best: int = 1,
                 metric: str | None = None, mode: str = "max") -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last}: must be at least 1 so a run can resume")
        if keep_best < 0:
            raise ValueError(f"keep_best={keep_best}: must be 0 or more")
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}: use 'max' (higher is better) or 'min'")
        if keep_best and metric is None:
            raise ValueError("keep_best > 0 needs metric=NAME to rank checkpoints")
        self.directory = Path(directory)
        refuse_symlinked_folder(self.directory, "checkpoint folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = hold_folder(self.directory)  # before any clean-up: a second run on the folder is refused
        self.keep_last, self.keep_best, self.metric, self.mode = keep_last, keep_best, metric, mode
        self.entries: list[CheckpointEntry] = []
        tracking = self.directory / self.TRACKING_FILE
        entries = read_index(tracking) if tracking.is_file() or tracking.is_symlink() else []
        self.removed_temp = remove_stale_temp(self.directory)
        self.entries = [e for e in entries if (self.directory / e.file).is_file()]
        self._recover()

    def epoch_files(self) -> list[tuple[int, Path]]:
        """``(epoch, path)`` of every ``epoch_NNNN.pt`` in the folder, newest first (tracked or not)."""
        out = []
        for p in self.directory.glob("epoch_*.pt"):
            try:
                out.append((int(p.stem.split("_", 1)[1]), p))
            except ValueError:
                continue
        return sorted(out, reverse=True)

    def _recover(self) -> None:
        """Bring the folder back to what the tracking file says after a kill: delete epoch files it
        does not list (a save killed before its repoint, or a prune killed half-way), and repoint
        ``last.pt`` / ``best.pt`` when they disagree with it. When it lists no existing file (a
        folder from an older version, or no tracking file), untracked epoch files are adopted
        instead, with the metrics they hold, so ``--resume`` can fall back on them."""
        tracked = {e.file for e in self.entries}
        orphans = [(ep, p) for ep, p in self.epoch_files() if p.name not in tracked]
        if not orphans:
            if self.entries:
                self._repair_links()
            return
        if self.entries:
            for _, p in orphans:
                p.unlink(missing_ok=True)
            self._repair_links()
            return
        for ep, p in orphans:
            try:
                ck = load_checkpoint(p)
            except (ValueError, FileNotFoundError):
                p.unlink(missing_ok=True)  # unreadable: it can never be resumed from
                continue
            m = ck.get("metrics") if isinstance(ck, Mapping) else None
            metrics = {k: float(v) for k, v in (m or {}).items() if isinstance(v, (int, float))}
            self.entries.append(CheckpointEntry(p.name, ep, metrics))
        if self.entries:
            self._prune_files(self._dropped())
            self._write_tracking()

    def _repair_links(self) -> None:
        for alias, target in (("last.pt", self.last()), ("best.pt", self.best())):
            link = self.directory / alias
            ok = (target is None and not link.exists()) or (
                target is not None and link.is_symlink() and os.readlink(link) == target.name)
            if not ok and not (target is not None and link.is_file() and not link.is_symlink()
                               and link.stat().st_size == target.stat().st_size):
                self._link(alias, target)

    # -- ranking -------------------------------------------------------------------
    def _score(self, e: CheckpointEntry) -> float:
        v = e.metrics.get(self.metric) if self.metric else None
        if v is None or v != v:  # missing or NaN ranks last
            return float("-inf")
        return float(v) if self.mode == "max" else -float(v)

    def best_entries(self) -> list[CheckpointEntry]:
        """Tracked entries, best first (by ``metric``/``mode``; ties: earlier epoch first)."""
        return sorted(self.entries, key=lambda e: (-self._score(e), e.epoch))

    def best(self) -> Path | None:
        """Path of the best checkpoint, or None when none is tracked (or ``keep_best`` is 0)."""
        if not self.entries or not self.keep_best:
            return None
        return self.directory / self.best_entries()[0].file

    def last(self) -> Path | None:
        """Path of the most recent checkpoint, or None when none is tracked."""
        if not self.entries:
            return None
        return self.directory / max(self.entries, key=lambda e: e.epoch).file

    def is_best(self, metrics: Mapping[str, float]) -> bool:
        """Whether a checkpoint with ``metrics`` would rank first among the tracked ones."""
        if not self.keep_best:
            return False
        candidate = CheckpointEntry("", 1 << 30, dict(metrics))
        best = self.best_entries()
        return not best or self._score(candidate) > self._score(best[0])

    # -- writing -------------------------------------------------------------------
    def save(self, state: Mapping[str, Any], epoch: int, metrics: Mapping[str, float] | None = None) -> Path:
        """Write ``state`` as the checkpoint of ``epoch``, crash-safe, then prune.

        Order: the new file (temp + fsync + rename) -> ``checkpoints.json`` and ``last.pt`` /
        ``best.pt`` atomically -> delete the files retention drops. A kill at any point leaves
        ``last.pt`` pointing at a complete file (the previous one or the new one). ``metrics``
        (plain floats) are stored in the tracking file and rank the checkpoint.

        Returns:
            the path of the new file.

        Raises:
            OSError: the write failed (e.g. ENOSPC); the previous checkpoints, the tracking file
                and the aliases are untouched and the partial temp file is removed.
        """
        faults.next_save()
        name = f"epoch_{epoch:04d}.pt"
        faults.fault_point("before_write")
        path = atomic_save(dict(state), self.directory / name)
        faults.fault_point("after_write")
        self.entries = [e for e in self.entries if e.epoch != epoch]
        self.entries.append(CheckpointEntry(name, int(epoch), {k: float(v) for k, v in (metrics or {}).items()}))
        dropped = self._dropped()
        self.entries = [e for e in self.entries if e not in dropped]
        self._write_tracking()
        faults.fault_point("after_repoint")
        self._prune_files(dropped)
        return path

    def truncate(self, after_epoch: int) -> list[Path]:
        """Forget and delete the tracked checkpoints of epochs after ``after_epoch``.

        Used when a run resumes from an earlier checkpoint than its latest: the later epochs
        belong to the abandoned trajectory and must not be ranked (``best.pt``) or kept
        (``last.pt``) beside the new ones. ``last.pt`` / ``best.pt`` and the tracking file are
        rewritten (the aliases are removed when nothing is left). Returns the deleted paths.
        """
        dropped = [e for e in self.entries if e.epoch > after_epoch]
        if not dropped:
            return []
        self.entries = [e for e in self.entries if e.epoch <= after_epoch]
        self._write_tracking()  # repoint first: a kill now leaves extra files, never a dangling alias
        self._prune_files(dropped)
        return [self.directory / e.file for e in dropped]

    def _dropped(self) -> list[CheckpointEntry]:
        """Tracked entries outside the retention (``keep_last`` newest + ``keep_best`` best)."""
        keep = {e.file for e in sorted(self.entries, key=lambda e: -e.epoch)[: self.keep_last]}
        keep |= {e.file for e in self.best_entries()[: self.keep_best]}
        return [e for e in self.entries if e.file not in keep]

    def _prune_files(self, dropped: list[CheckpointEntry]) -> None:
        live = {e.file for e in self.entries}
        for e in dropped:
            if e.file not in live and EPOCH_FILE.fullmatch(e.file):  # names were checked on reading; twice is cheap
                (self.directory / e.file).unlink(missing_ok=True)

    def _write_tracking(self) -> None:
        data = {"metric": self.metric, "mode": self.mode, "keep_last": self.keep_last,
                "keep_best": self.keep_best, "entries": [asdict(e) for e in self.entries],
                "last": self.last().name if self.last() else None,
                "best": self.best().name if self.best() else None}
        atomic_write_text(json.dumps(data, indent=2), self.directory / self.TRACKING_FILE)
        for alias, target in (("last.pt", self.last()), ("best.pt", self.best())):
            self._link(alias, target)

    def _link(self, alias: str, target: Path | None) -> None:
        link = self.directory / alias
        if target is None:
            link.unlink(missing_ok=True)  # nothing tracked: no alias to a deleted or foreign file
            return
        tmp = self.directory / f".{alias}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target.name, tmp)
        except OSError:  # filesystems without symlinks: fall back to a copy
            import shutil
            shutil.copyfile(target, tmp)
        os.replace(tmp, link)


def load_resume_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu"
                           ) -> tuple[dict, Path, str | None]:
    """The checkpoint a run resumes from, out of its ``checkpoints/`` folder.

    ``last.pt`` when it loads; otherwise (missing, dangling or unreadable) the newest
    ``epoch_NNNN.pt`` that loads, with a note saying so.

    Args:
        directory: the checkpoint folder (``RUN/checkpoints``).
        map_location: as for :func:`torch.load`. Default ``"cpu"``.

    Returns:
        ``(checkpoint dict, path loaded, note or None)``; the note is one line for the console.

    Raises:
        FileNotFoundError: no loadable checkpoint in the folder (names it and the fix).
        UnsafeWeightsError: a file needs pickled code (never bypassed silently).
    """
    directory = Path(directory)
    refuse_symlinked_folder(directory, "checkpoint folder")
    last = directory / "last.pt"
    problem = "missing" if not last.is_symlink() and not last.exists() else (
        "dangling (its target is gone)" if not last.exists() else None)
    if problem is None and last.is_symlink() and not EPOCH_FILE.fullmatch(os.readlink(last)):
        problem = f"a link out of the folder (to {os.readlink(last)}), not followed"
    if problem is None:
        try:
            return load_checkpoint(last, map_location), last, None
        except UnsafeWeightsError:
            raise
        except ValueError as exc:
            problem = f"unreadable ({exc})"
    files = []
    for p in directory.glob("epoch_*.pt"):
        try:
            files.append((int(p.stem.split("_", 1)[1]), p))
        except ValueError:
            continue
    for _, p in sorted(files, reverse=True):
        try:
            ck = load_checkpoint(p, map_location)
        except UnsafeWeightsError:
            raise
        except ValueError:
            continue
        return ck, p, f"{last} is {problem}; resuming from {p.name}, the newest loadable epoch file"
    raise FileNotFoundError(f"--resume {directory.parent}: no loadable checkpoint in {directory} (last.pt {problem}, "
                            "no readable epoch_*.pt); pass the folder of a run that finished at least one epoch")
