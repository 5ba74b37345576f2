"""Load a folder of runs into one pandas DataFrame (one row per run).

Every task writes the run-folder contract of :mod:`finetune_kit.run_dir`; this module reads
it back without any task-specific code, so it works for classification and compression
runs alike (and for folders of a sweep, where runs sit under ``SWEEP/trials/...``).

Column convention (nested values are flattened with dots, ``{"a": {"b": 1}}`` -> ``a.b``):

==========================  ===========================================================
``run``                     run folder path relative to the root given to :func:`load_runs`
``path``                    absolute run folder path
``status``                  ``completed``, ``failed``, ``pruned``, ``interrupted``,
                            ``crashed``, ``running`` or ``incomplete`` (:func:`run_status`)
``reason``                  why a run is not ``completed`` (``None`` otherwise)
``epochs``                  number of records in ``metrics.jsonl``
``config.<key>``            resolved config (``config.json``; wandb ``config.yaml`` when
                            the run has no ``config.json``)
``final.<key>``             final metrics (``metrics.json``; wandb summary when the run
                            has no ``metrics.json``)
``best.<key>``              best value over epochs of a per-epoch metric whose direction
                            is known (see :func:`metric_mode`), from ``metrics.jsonl``
``best_epoch.<key>``        the epoch of that best value (the record's ``epoch`` key)
``last.<key>``              value in the last ``metrics.jsonl`` record (every numeric key)
``wandb.summary.<key>``     wandb offline run summary (``files/wandb-summary.json``)
``checkpoint.<key>``        ``checkpoints/checkpoints.json``: ``metric``, ``mode``,
                            ``best``, ``last``, ``best_epoch``
==========================  ===========================================================

Names given by a user (``--metric val_auroc``, ``--group-by ft_strategy``) are resolved to
columns by :meth:`Results.resolve_metric` and :meth:`Results.resolve_param`, with a few
optional aliases (``strategy`` -> ``ft_strategy``, ``lr`` -> ``learning_rate``,
``lambda`` -> ``lmbda``) so the same words work for both tasks.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

__all__ = [
    "IncompleteRun",
    "Results",
    "discover_runs",
    "flatten",
    "load_run",
    "load_runs",
    "metric_mode",
    "run_status",
    "PARAM_ALIASES",
    "STALE_AFTER_S",
]

#: Files whose presence makes a folder a run folder.
RUN_MARKERS = ("config.json", "status.json", "metrics.jsonl", "metrics.json")

#: A run whose status is ``running`` but which wrote nothing for this long (seconds), and
#: whose process cannot be checked, is reported as ``crashed``. Default 30 minutes.
STALE_AFTER_S = 30 * 60

#: Optional aliases for parameter names: what a user types -> config keys to try, in order.
PARAM_ALIASES: dict[str, tuple[str, ...]] = {
    "strategy": ("ft_strategy", "strategy"),
    "lr": ("learning_rate", "lr", "learning-rate"),
    "learning-rate": ("learning_rate", "lr"),
    "lambda": ("lmbda", "lambda_", "lambda"),
    "lmbda": ("lmbda", "lambda_", "lambda"),
    "model": ("model_name", "model", "preset", "arch"),
    "epochs": ("num_epochs", "epochs"),
}

#: Config keys that identify a run rather than describe it; never treated as swept params.
IDENTITY_KEYS = {"output_dir", "experiment_tag", "run_dir", "run_name", "name", "resume", "wandb_project",
                 "checkpoint_dir", "log_dir", "project"}

_MIN_PATTERN = re.compile(r"(loss|bpp|ece|nll|error|err\b|mse|mae|brier|distortion|rate|time|seconds|"
                          r"memory|mem_|bd_rate|bdrate)", re.IGNORECASE)
_MAX_PATTERN = re.compile(r"(auroc|auc|acc|accuracy|psnr|ssim|f1|kappa|precision|recall|sensitivity|"
                          r"specificity|map\b|iou|dice|score|throughput)", re.IGNORECASE)
_MAX_LIST_FLATTEN = 16


def metric_mode(name: str) -> str | None:
    """Direction of a metric from its name: ``"max"``, ``"min"`` or ``None`` when unknown.

    ``*loss*``, ``bpp``, ``ece``, ``nll``, ``mse``, ``time``, ... are minimised; ``auroc``,
    ``accuracy``, ``psnr``, ``ssim``, ``f1``, ``kappa``, ... maximised. A min word wins
    when both appear (``psnr_loss`` -> ``"min"``); ``lr``-like keys give ``None``.
    """
    base = name.split(".")[-1]
    if re.search(r"(^|_)(lr|learning_rate|epoch|step|gamma|weight|temperature)s?($|_)", base, re.IGNORECASE) \
            and not _MIN_PATTERN.search(base) and not _MAX_PATTERN.search(base):
        return None
    if _MIN_PATTERN.search(base):
        return "min"
    if _MAX_PATTERN.search(base):
        return "max"
    return None


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


@dataclass
class IncompleteRun:
    """A run that did not finish: its folder, status and a one-line reason."""

    run: str
    path: Path
    status: str
    reason: str


@dataclass
class Results:
    """Runs of a folder: the DataFrame (all runs, ``status`` column) and the unfinished ones.

    Attributes:
        root: the folder that was loaded.
        df: one row per run (see the module docstring for the columns).
        incomplete: runs whose status is not ``completed``, with the reason.
    """

    root: Path
    df: pd.DataFrame
    incomplete: list[IncompleteRun] = field(default_factory=list)

    @property
    def completed(self) -> pd.DataFrame:
        """Rows of the completed runs only."""
        return self.df[self.df["status"] == "completed"].copy()

    def metric_columns(self, numeric: bool = True) -> list[str]:
        """Metric columns (``final.*``, ``best.*``, ``last.*``, ``wandb.summary.*``)."""
        cols = [c for c in self.df.columns if c.startswith(("final.", "best.", "last.", "wandb.summary."))]
        if numeric:
            cols = [c for c in cols if pd.api.types.is_numeric_dtype(self.df[c])]
        return cols

    def param_columns(self, varying: bool = True) -> list[str]:
        """Config columns; with ``varying`` only those with more than one value among completed runs.

        Identity keys (``output_dir``, ``experiment_tag``, ...) are left out.
        """
        cols = [c for c in self.df.columns if c.startswith("config.")
                and c.split(".")[-1] not in IDENTITY_KEYS]
        if not varying:
            return cols
        done = self.completed if len(self.completed) else self.df
        return [c for c in cols if done[c].astype(str).nunique(dropna=False) > 1]

    def resolve_metric(self, name: str) -> str:
        """Column for a metric name: the exact column, else ``final.NAME``, ``best.NAME``,
        ``last.NAME``, ``wandb.summary.NAME``, then ``final.`` with one ``_`` read as a level
        (``test_auroc`` -> ``final.test.auroc``), else a unique column ending in ``.NAME``.

        Raises:
            KeyError: no such metric; the message lists the available metric columns.
        """
        cols = list(self.df.columns)
        # "test_auroc" also matches a nested final metric {"test": {"auroc": ...}} (final.test.auroc)
        dotted = [name[:i] + "." + name[i + 1:] for i, ch in enumerate(name) if ch == "_"]
        for cand in (name, f"final.{name}", f"best.{name}", f"last.{name}", f"wandb.summary.{name}",
                     *[f"final.{d}" for d in dotted]):
            if cand in cols:
                return cand
        suffix = [c for c in self.metric_columns(numeric=False) if c.endswith("." + name)]
        if len(suffix) == 1:
            return suffix[0]
        avail = ", ".join(sorted(self.metric_columns())) or "(none: no run wrote metrics)"
        if len(suffix) > 1:
            raise KeyError(f"metric {name!r} is ambiguous ({', '.join(suffix)}): pass the full column name")
        raise KeyError(f"metric {name!r} not found in {self.root}; available metric columns: {avail}")

    def resolve_param(self, name: str) -> str:
        """Column for a parameter name: exact column, ``config.NAME``, an alias
        (:data:`PARAM_ALIASES`), or a unique config column ending in ``.NAME``.

        Raises:
            KeyError: no such parameter; the message lists the config columns that vary.
        """
        cols = list(self.df.columns)
        names = [name.lstrip("-")]
        names += [a for a in PARAM_ALIASES.get(names[0], ()) if a not in names]
        names += [n.replace("-", "_") for n in list(names) if "-" in n]
        for n in names:
            for cand in (n, f"config.{n}"):
                if cand in cols:
                    return cand
        for n in names:
            suffix = [c for c in cols if c.startswith("config.") and c.endswith("." + n)]
            if len(suffix) == 1:
                return suffix[0]
        varying = ", ".join(self.param_columns()) or "(no config value differs between runs)"
        raise KeyError(f"parameter {name!r} not found in the configs of {self.root}; "
                       f"config columns that vary: {varying}")


def discover_runs(root: str | os.PathLike) -> list[Path]:
    """Run folders under ``root`` (``root`` itself when it is one), sorted by path.

    A run folder holds at least one of ``config.json``, ``status.json``, ``metrics.jsonl``,
    ``metrics.json``; a folder holding a ``wandb/offline-run-*`` (or that is a wandb
    ``offline-run-*`` folder itself) outside any run folder also counts. Sub-folders of a
    run folder are not searched. Hidden folders are skipped.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist or is not a folder: "
                                "pass the --output_dir your runs were written to")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        is_run = any(m in filenames for m in RUN_MARKERS) or _wandb_runs(here) or _is_wandb_run(here)
        if is_run:
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
    return sorted(found)


def _is_wandb_run(path: Path) -> bool:
    return re.match(r"(offline-)?run-", path.name) is not None and (path / "files").is_dir()


def _wandb_runs(path: Path) -> list[Path]:
    wb = path / "wandb"
    if not wb.is_dir():
        return []
    return sorted(p for p in wb.glob("*run-*") if p.is_dir() and (p / "files").is_dir())


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(data, error) for a JSON file; data is None when missing or unreadable."""
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} unreadable ({exc})"


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Records of a JSON-lines file and the count of unreadable lines (a crash mid-write)."""
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


def _wandb_files(run_path: Path) -> tuple[dict, dict]:
    """(config, summary) of the latest wandb run of a run folder (empty dicts when none)."""
    runs = [run_path] if _is_wandb_run(run_path) else _wandb_runs(run_path)
    if not runs:
        return {}, {}
    files = runs[-1] / "files"
    summary, _ = _read_json(files / "wandb-summary.json")
    config: dict = {}
    if (files / "config.yaml").is_file():
        try:
            import yaml

            raw = yaml.safe_load((files / "config.yaml").read_text()) or {}
            for k, v in raw.items():
                if str(k).startswith("_") or k == "wandb_version":
                    continue
                config[k] = v.get("value") if isinstance(v, Mapping) and "value" in v else v
        except Exception:  # noqa: BLE001 - a damaged wandb file must not stop the analysis
            config = {}
    summary = {k: v for k, v in (summary or {}).items() if not str(k).startswith("_")}
    return config, summary


def _pid_alive(pid: Any) -> bool | None:
    """True/False when ``pid`` can be checked on this machine, None otherwise."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
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


def run_status(path: Path, status_data: Mapping | None, has_final: bool, environment: Mapping | None = None,
               *, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> tuple[str, str | None]:
    """Status and reason of one run folder.

    * ``completed`` with ``metrics.json`` -> ``("completed", None)``;
      ``completed`` without it -> ``incomplete``.
    * ``failed`` -> ``failed`` with the recorded error; ``pruned`` (written by a sweep) -> ``pruned``;
      ``interrupted`` (a task stopped by Ctrl-C or ``--stop_after_epoch``) -> ``interrupted``.
    * ``running``: when a ``pid`` is recorded (status.json or environment.json) on this
      host and that process is gone -> ``crashed``; when no pid can be checked and nothing
      was written for ``stale_after_s`` seconds -> ``crashed``; otherwise ``running``.
    * no ``status.json`` -> ``incomplete``.
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
        alive = _pid_alive(pid) if (pid and same_host) else None
        files = [path / n for n in ("status.json", "metrics.jsonl", "metrics.json")]
        last_write = max((f.stat().st_mtime for f in files if f.exists()), default=now)
        idle = now - last_write
        if alive is False:
            return "crashed", f"status running but its process {pid} is gone (last write {_ago(idle)} ago)"
        if alive is None and idle > stale_after_s:
            return "crashed", f"status running but nothing written for {_ago(idle)} (process presumably gone)"
        return "running", f"still running (last write {_ago(idle)} ago)"
    return "incomplete", f"unknown status {status!r}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def load_run(path: str | os.PathLike, root: str | os.PathLike | None = None, *,
             now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> dict[str, Any]:
    """One run folder as a flat dict (one DataFrame row; columns as in the module docstring)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    try:
        name = str(path.relative_to(root)) if path != root else path.name
    except ValueError:  # an explicit run folder outside root
        name = path.name
    row: dict[str, Any] = {"run": name, "path": str(path.resolve())}
    problems: list[str] = []
    config, err = _read_json(path / "config.json")
    problems += [err] if err else []
    final, err = _read_json(path / "metrics.json")
    problems += [err] if err else []
    status_data, err = _read_json(path / "status.json")
    problems += [err] if err else []
    environment, _ = _read_json(path / "environment.json")
    history, bad_lines = _read_jsonl(path / "metrics.jsonl")
    wb_config, wb_summary = _wandb_files(path)
    wandb_only = config is None and final is None and status_data is None and bool(wb_summary)
    if config is None and wb_config:
        config = wb_config
    if wandb_only:
        final, status_data = wb_summary, {"status": "completed"}  # all a wandb-only run has

    status, reason = run_status(path, status_data, isinstance(final, Mapping), environment,
                                now=now, stale_after_s=stale_after_s)
    if problems and status == "completed":
        status = "incomplete"
    notes = problems + ([f"{bad_lines} unreadable line(s) in metrics.jsonl"] if bad_lines else [])
    notes += ["wandb run only (no finetune-kit run files)"] if wandb_only else []
    if notes:
        reason = "; ".join(([reason] if reason else []) + notes)
    row["status"], row["reason"] = status, reason
    row["epochs"] = len(history)
    for k, v in flatten(config or {}).items():
        row[f"config.{k}"] = v
    for k, v in flatten(final or {}).items():
        if k.startswith("config.") and config is not None:
            continue  # a copy of the resolved config inside metrics.json: already in config.*
        row[f"final.{k}"] = v
    row.update(_history_columns(history))
    for k, v in flatten(wb_summary).items():
        row[f"wandb.summary.{k}"] = v
    row.update(_checkpoint_columns(path))
    return row


def _history_columns(history: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not history:
        return out
    flat = [flatten(r) for r in history]
    keys: list[str] = []
    for r in flat:
        keys += [k for k in r if k not in keys]
    for k in keys:
        if k in ("epoch", "step"):
            continue
        series = [(r.get("epoch", i), r.get(k)) for i, r in enumerate(flat)]
        nums = [(e, float(v)) for e, v in series if isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(float(v))]
        last = flat[-1].get(k)
        if isinstance(last, (int, float, str, bool)) or last is None:
            out[f"last.{k}"] = last
        mode = metric_mode(k)
        if nums and mode:
            e, v = (max if mode == "max" else min)(nums, key=lambda t: t[1])
            out[f"best.{k}"], out[f"best_epoch.{k}"] = v, e
    return out


def _checkpoint_columns(path: Path) -> dict[str, Any]:
    data, _ = _read_json(path / "checkpoints" / "checkpoints.json")
    if not isinstance(data, Mapping):
        return {}
    out = {f"checkpoint.{k}": data.get(k) for k in ("metric", "mode", "best", "last")}
    best = data.get("best")
    for e in data.get("entries") or []:
        if isinstance(e, Mapping) and e.get("file") == best:
            out["checkpoint.best_epoch"] = e.get("epoch")
    return out


def load_runs(root: str | os.PathLike, *, stale_after_s: float = STALE_AFTER_S,
              runs: Iterable[str | os.PathLike] | None = None) -> Results:
    """Load every run folder under ``root`` (see :func:`discover_runs`) into :class:`Results`.

    Args:
        root: a folder of runs (e.g. ``runs/`` or a sweep's ``SWEEP/trials``), or one run folder.
        stale_after_s: seconds without writes after which a ``running`` run whose process
            cannot be checked is reported ``crashed``. Default 1800.
        runs: explicit run folders to load instead of discovering them.

    Raises:
        FileNotFoundError: ``root`` is missing, or holds no run folder (message says what
            a run folder contains).
    """
    root = Path(root)
    paths = [Path(p) for p in runs] if runs is not None else discover_runs(root)
    if not paths:
        raise FileNotFoundError(f"{root} has no run folders (folders with config.json/status.json/metrics.json"
                                "/metrics.jsonl): pass the --output_dir your runs were written to")
    now = time.time()
    rows = [load_run(p, root, now=now, stale_after_s=stale_after_s) for p in paths]
    df = pd.DataFrame(rows)
    front = ["run", "status", "reason", "epochs"]
    order = front + sorted(c for c in df.columns if c.startswith("config.")) + \
        sorted(c for c in df.columns if c not in front and not c.startswith("config."))
    df = df[order]
    df = df.apply(_numeric_if_possible)
    incomplete = [IncompleteRun(r["run"], Path(r["path"]), r["status"], r["reason"] or "")
                  for r in rows if r["status"] != "completed"]
    return Results(root=root, df=df, incomplete=incomplete)


def _numeric_if_possible(col: pd.Series) -> pd.Series:
    """Columns of numbers (and None) become float/int; mixed columns stay as they are."""
    if col.dtype != object:
        return col
    values = col.dropna()
    if len(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pd.to_numeric(col)
    return col
