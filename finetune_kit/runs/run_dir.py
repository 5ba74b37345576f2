"""Run folders: every run writes its resolved config, environment, metrics and status.

Layout of a run folder (the contract the analysis tools read)::

    RUN/
      config.json       resolved configuration (all options, defaults filled in)
      environment.json  versions of finetune-kit/python/torch/timm/compressai, the git commit of the
                        package's checkout (and whether it had uncommitted changes), host, CPU/GPU,
                        command line, ``command`` (the command that made the run: ``classify``,
                        ``compress finetune`` ...; :func:`recorded_command`) and ``inputs``:
                        fingerprints of the data and weights used (:func:`fingerprint_inputs`)
      status.json       {"status": ..., "error": ..., "updated": ..., "pid": ..., "host": ...}
                        status is running | completed | failed | interrupted (stopped on purpose,
                        resumable) | pruned (stopped by a sweep); pid/host let readers tell a
                        crashed run (process gone) from a running one
      metrics.jsonl     one JSON object per epoch (or evaluation step)
      metrics.json      final metrics of the run (written at the end)
      checkpoints/      managed by :class:`finetune_kit.runs.checkpoint.CheckpointManager`
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from finetune_kit.runs.atomic import DISK_ERRNOS, append_line, atomic_write_text, disk_write_error

__all__ = ["RunDir", "new_run_dir", "safe_name", "child_path", "environment_info", "to_jsonable", "fingerprint", "fingerprint_inputs",
           "git_info", "recorded_command"]


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars, paths, dataclasses and pydantic models to JSON types.

    NaN and infinities become ``None`` so the files stay strict JSON.
    """
    import dataclasses

    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def git_info(folder: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout that holds ``folder`` (default: this
    package's source folder), or None when that folder is not tracked in a git work tree (an
    installed wheel; a site-packages inside a repository's ``.venv``) or git is absent.

    ``dirty`` is True when tracked files have uncommitted changes (untracked files are ignored).
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if git("rev-parse", "--is-inside-work-tree") != "true" or git("ls-files", "--error-unmatch", "--", ".") is None:
        return None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """A fingerprint of one input of a run.

    A file (weights, a checkpoint, a split file): ``{"path", "kind": "file", "bytes",
    "sha256"}``, the SHA-256 of its content. A folder (a data set): ``{"path", "kind": "folder",
    "files", "bytes", "sha256"}``, the SHA-256 over its sorted file list (every file below it,
    hidden ones included, as ``relative/path<TAB>size<TAB>mtime_ns``), so a changed, added,
    removed or touched file changes it without reading the images. Symbolic links are followed.
    A missing path: ``{"path", "kind": "missing"}``.
    """
    p = Path(path)
    base: dict[str, Any] = {"path": str(p.resolve()) if p.exists() else str(p)}
    if p.is_file():
        return {**base, "kind": "file", "bytes": p.stat().st_size, "sha256": _sha256_file(p)}
    if not p.is_dir():
        return {**base, "kind": "missing"}
    lines, total = [], 0
    for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
        dirnames.sort()
        for name in filenames:
            f = Path(dirpath) / name
            try:
                st = f.stat()
            except OSError:
                continue
            total += st.st_size
            lines.append(f"{f.relative_to(p).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n")
    digest = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    return {**base, "kind": "folder", "files": len(lines), "bytes": total, "sha256": digest}


def fingerprint_inputs(inputs: Mapping[str, str | os.PathLike | None]) -> dict[str, Any]:
    """``{name: fingerprint(path)}`` (see :func:`fingerprint`) for each input that is given
    (None and empty values are left out), e.g. ``{"data": folder, "weights": file}``."""
    return {name: fingerprint(path) for name, path in inputs.items() if path}


def environment_info() -> dict[str, Any]:
    """Versions and hardware facts that make a result traceable to where it ran: the
    finetune-kit version (package metadata) and :func:`git_info` of its checkout, python and
    library versions, host, CPU/GPU, torch threads, command line and time."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from importlib.metadata import PackageNotFoundError, version

    try:
        info["finetune_kit"] = version("finetune-kit")
    except PackageNotFoundError:
        info["finetune_kit"] = None
    info["git"] = git_info()

    # package metadata, not imports: importing timm/compressai just for a version costs seconds
    for mod, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"),
                      ("compressai", "compressai"), ("albumentations", "albumentations"),
                      ("sklearn", "scikit-learn"), ("numpy", "numpy")):
        try:
            info[mod] = version(dist)
        except PackageNotFoundError:
            info[mod] = None
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        pass
    return info


def safe_name(name: str, default: str = "run") -> str:
    """``name`` as one path component that stays inside its parent folder: characters other than
    letters, digits, ``-``, ``_`` and ``.`` become ``-`` (so ``/`` and ``\\`` never survive), and
    leading/trailing ``-`` and ``.`` are stripped (no ``.``, ``..`` or hidden names); ``default``
    when nothing is left. ``"x/../../escaped"`` -> ``"x-..-..-escaped"``."""
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "-" for c in str(name))
    return safe.strip("-.") or default


def child_path(parent: str | os.PathLike, name: str, *, what: str = "--name", prefix: str = "") -> Path:
    """``parent/(prefix + safe_name(name))``, checked to lie inside ``parent`` (a user's name that
    becomes a folder: ``evaluate --name``, ``--experiment_tag``, sweep trial names).

    Raises:
        ValueError: the result would leave ``parent`` (cannot happen after :func:`safe_name`;
            kept as the guard that names ``what``).
    """
    parent = Path(parent)
    child = parent / f"{prefix}{safe_name(name)}"
    if os.path.commonpath([parent.resolve(), child.resolve()]) != str(parent.resolve()):
        raise ValueError(f"{what} {name!r} would write outside {parent}; use letters, digits, -, _ and .")
    return child


def new_run_dir(output_dir: str | os.PathLike, name: str) -> Path:
    """Create and return a fresh run folder ``output_dir/name-YYYYmmdd-HHMMSS[-k]``.

    ``name`` is sanitised by :func:`safe_name` (letters, digits, ``-``, ``_`` and ``.``), so the
    folder is always directly inside ``output_dir``. The folder is created atomically (``mkdir``
    without ``exist_ok``), so two runs started at once never share one.

    Raises:
        DiskWriteError: ``output_dir`` is read-only, not writable or full (one line with the fix).
    """
    safe = safe_name(name)
    base = Path(output_dir) / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while True:
        try:
            path.mkdir(parents=True)  # not exist_ok: of two runs started in the same second, one gets -1
            return path
        except FileExistsError:
            path, k = Path(f"{base}-{k}"), k + 1
        except OSError as exc:
            if exc.errno in DISK_ERRNOS:
                raise disk_write_error(exc, path) from None
            raise


class RunDir:
    """Writer for one run folder (see the module docstring for the layout).

    Only the main process of a distributed run should write: pass ``enabled=False`` on
    other ranks and every method becomes a no-op.
    """

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        """Folder for checkpoint files."""
        return self.path / "checkpoints"

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as indented JSON to ``RUN/name`` atomically."""
        target = self.path / name
        if self.enabled:
            atomic_write_text(json.dumps(to_jsonable(data), indent=2), target)
        return target

    def read_json(self, name: str) -> Any:
        """Read ``RUN/name`` as JSON. Raises FileNotFoundError naming the file."""
        target = self.path / name
        if not target.is_file():
            raise FileNotFoundError(f"{target} not found: is {self.path} a run folder written by finetune-kit?")
        return json.loads(target.read_text())

    def start(self, config: Any, inputs: Mapping[str, str | os.PathLike | None] | None = None,
              command: str | None = None) -> None:
        """Write ``config.json``, ``environment.json`` and status ``running``.

        Args:
            config: the resolved configuration (anything :func:`to_jsonable` takes).
            inputs: ``{name: path}`` of the run's inputs (``{"data": folder, "weights": file}``);
                their fingerprints (:func:`fingerprint_inputs`) go to ``environment.json``
                under ``inputs``. None values are skipped.
            command: the command that made the run, as a user types it after the program
                (``"classify"``, ``"compress finetune"``); recorded as ``environment.json``
                ``command`` and read back by :func:`recorded_command`. Default none (not recorded).
        """
        self.write_json("config.json", config)
        info = environment_info()
        if command:
            info["command"] = str(command)
        if self.enabled:
            info["inputs"] = fingerprint_inputs(inputs or {})
        self.write_json("environment.json", info)
        self.set_status("running")

    def set_status(self, status: str, error: str | None = None) -> None:
        """Record ``running``, ``completed``, ``failed`` (with the error message),
        ``interrupted`` or ``pruned``, with this process's pid and host."""
        self.write_json("status.json", {"status": status, "error": error,
                                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "pid": os.getpid(), "host": platform.node()})

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl``.

        On resume, records of epochs at or after the resumed epoch are dropped first
        (see :meth:`truncate_history`), so the file never holds an epoch twice.
        """
        if not self.enabled:
            return
        append_line(self.path / "metrics.jsonl", json.dumps(to_jsonable(dict(record))) + "\n")  # never through a link

    def history(self) -> list[dict[str, Any]]:
        """All records of ``metrics.jsonl`` (empty when absent)."""
        target = self.path / "metrics.jsonl"
        if not target.is_file():
            return []
        return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]

    def truncate_history(self, before_epoch: int, key: str = "epoch") -> None:
        """Keep only records with ``record[key] < before_epoch`` (used when resuming)."""
        if not self.enabled:
            return
        kept = [r for r in self.history() if r.get(key, -1) < before_epoch]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.path / "metrics.jsonl")


def recorded_command(path: str | os.PathLike) -> str | None:
    """The command recorded in run folder ``path`` (``environment.json`` ``command``, written by
    :meth:`RunDir.start`), e.g. ``"classify"`` or ``"compress finetune"``; None for a folder that
    records none (written before it was recorded, or not a run folder) or whose file does not parse."""
    target = Path(path) / "environment.json"
    try:
        command = json.loads(target.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return command if isinstance(command, str) and command else None
