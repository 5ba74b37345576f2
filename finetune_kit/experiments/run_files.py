"""Finding run folders and reading their files: JSON, JSON lines, wandb offline runs, flattening.

Nothing here knows a task; it reads the run-folder contract of :mod:`finetune_kit.runs.run_dir`
and the folders wandb writes, tolerating damaged files (a crash mid-write must not stop an
analysis).

wandb offline runs (``wandb/offline-run-YYYYmmdd_HHMMSS-ID/``): the config and summary come
from ``files/config.yaml`` and ``files/wandb-summary.json`` when wandb wrote them, else from
the run's record log ``run-ID.wandb`` (recent wandb versions write only that offline), which
also holds the exit code. The record log is decoded with wandb's own protobuf messages, so
reading it needs ``wandb`` installed; without it such a run has no config, summary or exit code.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = [
    "CONTAINER_KINDS",
    "CONTAINER_MARKERS",
    "RUN_MARKERS",
    "WandbRun",
    "discover_runs",
    "flatten",
    "is_container",
    "is_wandb_run",
    "read_json",
    "read_jsonl",
    "read_wandb_run",
    "wandb_runs_in",
]

#: Files whose presence makes a folder a run folder written by finetune-kit.
RUN_MARKERS = ("config.json", "status.json", "metrics.jsonl", "metrics.json")
#: Files that mark a folder as a container of runs (``compare`` writes ``comparison.json``).
CONTAINER_MARKERS = ("comparison.json",)
#: ``config.json`` ``kind`` values of containers of runs.
CONTAINER_KINDS = ("comparison", "sweep")
#: Files of a run that was started (:meth:`finetune_kit.runs.run_dir.RunDir.start`).
_STARTED_MARKERS = ("config.json", "status.json")

_MAX_LIST_FLATTEN = 16
_WANDB_RUN = re.compile(r"^(offline-)?run-\d{8}_\d{6}-\w+$")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts (and short lists) into ``{dotted.key: scalar}``.

    Lists of length 1 become their element; lists up to 16 items are indexed
    (``cm.0.1``); longer lists are kept as a compact string (so configs stay groupable).
    Non-finite floats become ``None``.
    """
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        if not obj and prefix:
            out[prefix] = None
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        if len(obj) == 1 and not isinstance(obj[0], (Mapping, list, tuple)):
            out.update(flatten(obj[0], prefix))
        elif 0 < len(obj) <= _MAX_LIST_FLATTEN and all(isinstance(v, (int, float, Mapping, list, tuple))
                                                        and not isinstance(v, bool) for v in obj):
            for i, v in enumerate(obj):
                out.update(flatten(v, f"{prefix}.{i}"))
        else:
            out[prefix] = json.dumps(obj, separators=(",", ":"), default=str)
    elif isinstance(obj, float) and not math.isfinite(obj):
        out[prefix] = None
    else:
        out[prefix] = obj
    return out


def is_wandb_run(path: Path) -> bool:
    """Whether ``path`` is a wandb run folder (``offline-run-YYYYmmdd_HHMMSS-ID`` or
    ``run-...``, holding ``files/`` or a ``run-ID.wandb`` record log)."""
    if not _WANDB_RUN.match(path.name) or not path.is_dir():
        return False
    return (path / "files").is_dir() or any(path.glob("*.wandb"))


def wandb_runs_in(run_path: Path) -> list[Path]:
    """wandb run folders in ``run_path/wandb/``, oldest first (their names start with the time)."""
    wb = run_path / "wandb"
    if not wb.is_dir():
        return []
    return sorted((p for p in wb.iterdir() if is_wandb_run(p)), key=lambda p: p.name.removeprefix("offline-"))


def discover_runs(root: str | os.PathLike) -> list[Path]:
    """Run folders under ``root`` (``root`` itself when it is one), at any depth, sorted by path.

    A folder is a *run* when it holds one of :data:`RUN_MARKERS` and is not a *container of
    runs*. A container is a folder marked as one (it holds one of :data:`CONTAINER_MARKERS`, e.g.
    a ``compare`` folder's ``comparison.json``, or its ``config.json`` has ``"kind":
    "comparison"``) or a folder with markers that has a *started* run (one with ``config.json``
    or ``status.json``) somewhere below it. Containers are searched, at any nesting (a folder of
    compare folders, a sweep of sweeps). Inside a run, sub-folders that are not started runs
    (``checkpoints/``, ``eval-NAME/`` results, its own ``wandb/``) are part of the run, not runs.

    A wandb run folder (``offline-run-*``) that is not inside a run folder is a run of its own
    (a *wandb-only* run), so a ``wandb/`` folder next to run folders adds its runs beside them
    and never hides them. Hidden folders (``.x``, ``__x``) and symbolic links to folders are
    skipped.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist or is not a folder: "
                                "pass the --output_dir your runs were written to")
    found: list[Path] = []
    _walk(root, found)
    return sorted(found)


def _walk(folder: Path, found: list[Path]) -> bool:
    """Add the runs in ``folder`` (itself or below) to ``found``; whether a started run is there."""
    if is_wandb_run(folder):
        found.append(folder)
        return False
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return False
    files = {e.name for e in entries if e.is_file()}
    subdirs = [Path(e.path) for e in entries
               if e.is_dir(follow_symlinks=False) and not e.name.startswith((".", "__"))]
    if not any(m in files for m in RUN_MARKERS):
        return any([_walk(d, found) for d in subdirs])
    n = len(found)
    inner = any([_walk(d, found) for d in subdirs if d.name not in ("checkpoints", "wandb")])
    if inner or is_container(folder):
        inner = any([_walk(d, found) for d in subdirs if d.name == "wandb"]) or inner
        return inner
    del found[n:]  # eval-NAME/ results and the like belong to this run
    found.append(folder)
    return bool(files & set(_STARTED_MARKERS))


def is_container(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is marked as a container of runs (see :func:`discover_runs`): it holds
    one of :data:`CONTAINER_MARKERS` or its ``config.json`` says ``"kind": "comparison"``
    (or ``"sweep"``). Unreadable files count as no mark."""
    folder = Path(folder)
    if any((folder / m).is_file() for m in CONTAINER_MARKERS):
        return True
    config, _ = read_json(folder / "config.json")
    return isinstance(config, Mapping) and config.get("kind") in CONTAINER_KINDS


def read_json(path: Path) -> tuple[Any, str | None]:
    """(data, error) for a JSON file; data is None when missing or unreadable, error says why
    in a few words (None when the file is fine or absent)."""
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} unreadable ({exc})"


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Records (JSON objects) of a JSON-lines file and the count of unreadable lines (a crash
    mid-write). A missing file gives ``([], 0)``."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, bad


# -- wandb ------------------------------------------------------------------------------------------
@dataclass
class WandbRun:
    """What an analysis needs from one wandb run folder.

    Attributes:
        path: the run folder. config: ``{key: value}`` (wandb's own ``_`` keys left out).
        summary: final summary values (``_`` keys left out). exit_code: from the record
            log's exit record; None when there is none (still running, killed, or unreadable).
    """

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def read_wandb_run(path: Path) -> WandbRun:
    """Config, summary and exit code of a wandb run folder (see the module docstring).

    Never raises for damaged files: what cannot be read is left empty.
    """
    run = WandbRun(path)
    files = path / "files"
    summary, _ = read_json(files / "wandb-summary.json")
    have_summary = isinstance(summary, Mapping)
    run.summary = {k: v for k, v in (summary or {}).items() if not str(k).startswith("_")} if have_summary else {}
    have_config = (files / "config.yaml").is_file()
    if have_config:
        run.config = _wandb_config_yaml(files / "config.yaml")
    logs = sorted(path.glob("*.wandb"))
    if logs:
        config, summary, run.exit_code = _scan_wandb_log(logs[-1])
        if not have_config:
            run.config = config
        if not have_summary:
            run.summary = summary
    return run


def _wandb_config_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml

        raw = yaml.safe_load(path.read_text()) or {}
    except Exception:  # noqa: BLE001 - a damaged wandb file must not stop the analysis
        return {}
    return {k: v.get("value") if isinstance(v, Mapping) and "value" in v else v
            for k, v in raw.items() if not str(k).startswith("_") and k != "wandb_version"}


def _wandb_log_records(path: Path) -> Iterator[bytes]:
    """Payloads of a wandb record log: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log blocks of 32 KiB holding chunks with a 7-byte header (crc32, length, type:
    1 full, 2 first, 3 middle, 4 last). Stops quietly at a truncated or zero-filled tail."""
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        return
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        if kind == 0 or len(chunk) < length:
            return
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def _scan_wandb_log(path: Path) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """(config, summary, exit code) from a ``run-ID.wandb`` record log; empty when wandb is
    not installed or the log cannot be decoded."""
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except Exception:  # noqa: BLE001 - wandb is optional
        return {}, {}, None
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    exit_code = None

    def apply(target: dict[str, Any], items) -> None:
        for item in items:
            key = item.key or ".".join(item.nested_key)
            if not key or key.startswith("_"):
                continue
            try:
                target[key] = json.loads(item.value_json)
            except ValueError:
                target[key] = item.value_json

    try:
        for payload in _wandb_log_records(path):
            rec = pb.Record()
            rec.ParseFromString(payload)
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                apply(config, rec.run.config.update)
                apply(summary, rec.run.summary.update)
            elif kind == "config":
                apply(config, rec.config.update)
            elif kind == "summary":
                apply(summary, rec.summary.update)
            elif kind == "exit":
                exit_code = int(rec.exit.exit_code)
    except Exception:  # noqa: BLE001 - a damaged log must not stop the analysis; keep what was read
        pass
    return config, summary, exit_code
