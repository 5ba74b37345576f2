"""Load a folder of runs into one pandas DataFrame (one row per run).

Every task writes the run-folder contract of :mod:`finetune_kit.runs.run_dir`; this module reads
it back without any task-specific code, so it works for the runs of every task alike (and
for folders of a sweep, where runs sit under ``SWEEP/trials/...``).

Column convention (nested values are flattened with dots, ``{"a": {"b": 1}}`` -> ``a.b``):

==========================  ===========================================================
``run``                     run folder path relative to the root given to :func:`load_runs`
``path``                    absolute run folder path
``status``                  ``completed``, ``failed``, ``pruned``, ``interrupted``,
                            ``crashed``, ``running``, ``incomplete`` (:func:`run_status`) or
                            ``unknown`` (a wandb-only run without an exit record)
``reason``                  why a run is not ``completed`` (``None`` otherwise)
``epochs``                  number of records in ``metrics.jsonl``
``config.<key>``            resolved config (``config.json``; the wandb config when the
                            run has no ``config.json``)
``final.<key>``             final metrics (``metrics.json``; the wandb summary for a
                            wandb-only run)
``best.<key>``              best value over epochs of a per-epoch metric whose direction
                            is known (see :func:`metric_mode`; directions the tasks
                            hand in: ``metric_modes``), from ``metrics.jsonl``
``best_epoch.<key>``        the epoch of that best value (the record's ``epoch`` key)
``last.<key>``              value in the last ``metrics.jsonl`` record (every numeric key)
``wandb.summary.<key>``     wandb summary: of the run's ``wandb/`` runs merged oldest
                            first (a resumed run has several), or of a wandb-only run
``checkpoint.<key>``        ``checkpoints/checkpoints.json``: ``metric``, ``mode``,
                            ``best``, ``last``, ``best_epoch``
==========================  ===========================================================

Names given by a user (``--metric val_auroc``, ``--group-by ft_strategy``) are resolved to
columns by :meth:`Results.resolve_metric` and :meth:`Results.resolve_param`, with a few
optional aliases (``strategy`` -> ``ft_strategy``, ``lr`` -> ``learning_rate``,
``lambda`` -> ``lmbda``) so the same words work across tasks.

Finding and reading the files is :mod:`finetune_kit.experiments.run_files`; a run's status is
:mod:`finetune_kit.runs.status`. ``discover_runs``, ``flatten``, ``run_status``,
``RUN_MARKERS`` and ``STALE_AFTER_S`` are re-exported here, where they used to live, and so are
:func:`metric_mode` and :func:`epoch_key` (:mod:`finetune_kit.experiments.metric_names`).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from finetune_kit.experiments.run_files import (RUN_MARKERS, discover_runs, flatten, is_wandb_run, read_json, read_jsonl,
                                    read_wandb_run, wandb_runs_in)
from finetune_kit.experiments.metric_names import epoch_key, metric_mode
from finetune_kit.runs.status import STALE_AFTER_S, run_status

__all__ = [
    "IncompleteRun",
    "Results",
    "discover_runs",
    "epoch_key",
    "flatten",
    "load_run",
    "load_runs",
    "metric_mode",
    "run_status",
    "run_value",
    "PARAM_ALIASES",
    "rename_metrics",
    "RUN_MARKERS",
    "STALE_AFTER_S",
]

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
        """Column for a metric name: the exact column, else ``final.NAME``, ``final.`` with one ``_``
        read as a level (``test_auroc`` -> ``final.test.auroc``), ``best.NAME``, ``last.NAME``,
        ``wandb.summary.NAME``, else a unique column ending in ``.NAME``. The run folder's own files
        come first; the wandb summary is the last resort (runs made with ``--wandb disabled`` have
        none); :meth:`fill_from_wandb` completes a ``final.*`` column from it.

        Raises:
            KeyError: no such metric; the message lists the available metric columns.
        """
        cols = list(self.df.columns)
        # "test_auroc" also matches a nested final metric {"test": {"auroc": ...}} (final.test.auroc)
        dotted = [name[:i] + "." + name[i + 1:] for i, ch in enumerate(name) if ch == "_"]
        for cand in (name, f"final.{name}", *[f"final.{d}" for d in dotted], f"best.{name}", f"last.{name}",
                     f"wandb.summary.{name}"):
            if cand in cols:
                return cand
        suffix = [c for c in self.metric_columns(numeric=False) if c.endswith("." + name)]
        if len(suffix) == 1:
            return suffix[0]
        avail = ", ".join(sorted(self.metric_columns())) or "(none: no run wrote metrics)"
        if len(suffix) > 1:
            raise KeyError(f"metric {name!r} is ambiguous ({', '.join(suffix)}): pass the full column name")
        raise KeyError(f"metric {name!r} not found in {self.root}; available metric columns: {avail}")

    def fill_from_wandb(self, metric_col: str) -> int:
        """Fill the runs without a value in ``metric_col`` (a ``final.*`` column) from their wandb summary
        (``final.test.auroc`` <- ``wandb.summary.test_auroc`` / ``.test.auroc``), in place; returns how many."""
        if not metric_col.startswith("final.") or metric_col not in self.df.columns:
            return 0
        key = metric_col[len("final."):]
        filled = 0
        for col in dict.fromkeys((f"wandb.summary.{key}", f"wandb.summary.{key.replace('.', '_')}")):
            if col in self.df.columns:
                take = self.df[metric_col].isna() & pd.to_numeric(self.df[col], errors="coerce").notna()
                self.df.loc[take, metric_col] = pd.to_numeric(self.df.loc[take, col])
                filled += int(take.sum())
        return filled

    def without_metric(self, metric_col: str) -> pd.DataFrame:
        """Completed runs that hold no number for ``metric_col`` (not ranked; ``analyze`` names them)."""
        done = self.completed
        return done if metric_col not in done.columns else done[pd.to_numeric(done[metric_col], errors="coerce").isna()]

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


def load_run(path: str | os.PathLike, root: str | os.PathLike | None = None, *,
             now: float | None = None, stale_after_s: float = STALE_AFTER_S,
             metric_modes: Mapping[str, str] | None = None,
             metric_renames: Sequence[tuple[Sequence[str], Mapping[str, str]]] = ()) -> dict[str, Any]:
    """One run folder as a flat dict (one DataFrame row; columns as in the module docstring).

    ``path`` is a finetune-kit run folder (its ``wandb/`` runs' summaries are merged into
    ``wandb.summary.*``) or a wandb run folder on its own (a *wandb-only* run: config and
    summary from wandb; status ``completed``/``failed`` from its exit record, ``unknown``
    without one). ``root`` names the run (``run`` column, relative path; default: the
    parent). ``now``/``stale_after_s``: see :func:`run_status`. ``metric_modes``: metric
    directions handed in by the tasks (see :func:`metric_mode`; default none), used for the
    ``best.*`` columns. ``metric_renames``: ``[(config keys, {old: new}), ...]``, older metric names
    -> today's (the tasks' profiles declare them,
    :func:`~finetune_kit.experiments.profiles.metric_renames`), applied to the ``metrics.jsonl`` and
    ``metrics.json`` keys of a run whose ``config.json`` holds all those keys; a record holding both
    spellings keeps today's value. Unreadable files do not raise; they make the status ``incomplete``
    and are named in ``reason``.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    try:
        name = str(path.relative_to(root)) if path != root else path.name
    except ValueError:  # an explicit run folder outside root
        name = path.name
    row: dict[str, Any] = {"run": name, "path": str(path.resolve())}
    wandb_only = is_wandb_run(path) and not any((path / m).is_file() for m in RUN_MARKERS)
    history: list[dict] = []
    notes: list[str] = []
    if wandb_only:
        wb = read_wandb_run(path)
        config, final, wb_summary = wb.config, wb.summary, wb.summary
        status, reason = _wandb_only_status(wb.exit_code)
        notes.append("wandb run only (no finetune-kit run files)")
    else:
        problems: list[str] = []
        config, err = read_json(path / "config.json")
        problems += [err] if err else []
        final, err = read_json(path / "metrics.json")
        problems += [err] if err else []
        status_data, err = read_json(path / "status.json")
        problems += [err] if err else []
        environment, _ = read_json(path / "environment.json")
        history, bad_lines = read_jsonl(path / "metrics.jsonl")
        wb_config, wb_summary = {}, {}
        for wb in map(read_wandb_run, wandb_runs_in(path)):  # oldest first: later values win
            wb_config.update(wb.config)
            wb_summary.update(wb.summary)
        if config is None and wb_config:
            config = wb_config
        status, reason = run_status(path, status_data, isinstance(final, Mapping), environment,
                                    now=now, stale_after_s=stale_after_s)
        if problems and status == "completed":
            status = "incomplete"
        notes = problems + ([f"{bad_lines} unreadable line(s) in metrics.jsonl"] if bad_lines else [])
    if notes:
        reason = "; ".join(([reason] if reason else []) + notes)
    row["status"], row["reason"] = status, reason
    for keys, renames in metric_renames:
        if isinstance(config, Mapping) and all(k in config for k in keys):
            history = [rename_metrics(r, renames) for r in history]
            final = rename_metrics(final, renames) if isinstance(final, Mapping) else final
    row["epochs"] = len(history)
    for k, v in flatten(config or {}).items():
        row[f"config.{k}"] = v
    for k, v in flatten(final or {}).items():
        if k.startswith("config.") and config is not None:
            continue  # a copy of the resolved config inside metrics.json: already in config.*
        row[f"final.{k}"] = v
    row.update(_history_columns(history, metric_modes))
    for k, v in flatten(wb_summary).items():
        row[f"wandb.summary.{k}"] = v
    row.update(_checkpoint_columns(path))
    return row


def rename_metrics(record: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    """``record`` (a ``metrics.jsonl`` line or ``metrics.json``) with the old metric names of ``renames``
    (old -> new) renamed; a name present in both spellings keeps today's value."""
    out = {renames.get(k, k): v for k, v in record.items()}
    out.update({k: v for k, v in record.items() if k in renames.values()})
    return out


def _wandb_only_status(exit_code: int | None) -> tuple[str, str | None]:
    if exit_code is None:
        return "unknown", "no exit record (still running, killed, or not recorded by this wandb version)"
    if exit_code == 0:
        return "completed", None
    return "failed", f"wandb run exited with code {exit_code}"


def _history_columns(history: list[Mapping[str, Any]], modes: Mapping[str, str] | None = None) -> dict[str, Any]:
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
        mode = metric_mode(k, modes)
        if nums and mode:
            e, v = (max if mode == "max" else min)(nums, key=lambda t: t[1])
            out[f"best.{k}"], out[f"best_epoch.{k}"] = v, e
    return out


def _checkpoint_columns(path: Path) -> dict[str, Any]:
    data, _ = read_json(path / "checkpoints" / "checkpoints.json")
    if not isinstance(data, Mapping):
        return {}
    out = {f"checkpoint.{k}": data.get(k) for k in ("metric", "mode", "best", "last")}
    best = data.get("best")
    for e in data.get("entries") or []:
        if isinstance(e, Mapping) and e.get("file") == best:
            out["checkpoint.best_epoch"] = e.get("epoch")
    return out


def load_runs(root: str | os.PathLike, *, stale_after_s: float = STALE_AFTER_S,
              runs: Iterable[str | os.PathLike] | None = None,
              metric_modes: Mapping[str, str] | None = None,
              metric_renames: Sequence[tuple[Sequence[str], Mapping[str, str]]] = ()) -> Results:
    """Load every run folder under ``root`` (see :func:`discover_runs`) into :class:`Results`.

    Args:
        root: a folder of runs (e.g. ``runs/`` or a sweep's ``SWEEP/trials``), or one run folder.
        stale_after_s: seconds without writes after which a ``running`` run whose process
            cannot be checked is reported ``crashed``. Default 1800.
        runs: explicit run folders to load instead of discovering them.
        metric_modes: metric directions handed in by the tasks, ``{name: "max" | "min"}``
            (e.g. :func:`~finetune_kit.experiments.profiles.metric_directions` of the task
            profiles); they decide ``best.*`` where a name's words do not. Default none.
        metric_renames: ``[(config keys, {old: new}), ...]`` (see :func:`load_run`; e.g.
            :func:`~finetune_kit.experiments.profiles.metric_renames` of the task profiles). Default none.

    Raises:
        FileNotFoundError: ``root`` is missing, or holds no run folder (message says what
            a run folder contains).
    """
    root = Path(root)
    paths = [Path(p) for p in runs] if runs is not None else discover_runs(root)
    if not paths:
        raise FileNotFoundError(f"{root} has no run folders (folders with config.json/status.json/metrics.json"
                                "/metrics.jsonl, or wandb offline-run-* folders): pass the --output_dir your "
                                "runs were written to")
    now = time.time()
    rows = [load_run(p, root, now=now, stale_after_s=stale_after_s, metric_modes=metric_modes,
                     metric_renames=metric_renames) for p in paths]
    df = _merge_config_layouts(pd.DataFrame(rows))
    front = ["run", "status", "reason", "epochs"]
    order = front + sorted(c for c in df.columns if c.startswith("config.")) + \
        sorted(c for c in df.columns if c not in front and not c.startswith("config."))
    df = df[order]
    df = df.apply(_numeric_if_possible)
    incomplete = [IncompleteRun(r["run"], Path(r["path"]), r["status"], r["reason"] or "")
                  for r in rows if r["status"] != "completed"]
    return Results(root=root, df=df, incomplete=incomplete)


def _merge_config_layouts(df: pd.DataFrame) -> pd.DataFrame:
    """One column per setting when runs of one folder wrote their config flat (``config.seed``, earlier
    versions) and nested in sections (``config.runtime.seed``): a section column whose flat twin
    exists and which no run has together with it is folded into the flat column."""
    for col in [c for c in df.columns if c.startswith("config.") and c.count(".") == 2]:
        flat = "config." + col.rsplit(".", 1)[1]
        if flat in df.columns and not (df[flat].notna() & df[col].notna()).any():
            df[flat] = df[flat].where(df[flat].notna(), df[col])
            df = df.drop(columns=col)
    return df


def run_value(run_dir: str | os.PathLike, metric: str,
              metric_modes: Mapping[str, str] | None = None) -> tuple[float | None, str | None]:
    """``(value, error)`` of ``metric`` in one finished run, the name resolved as ``analyze
    --metric`` does (:meth:`Results.resolve_metric`: final value, else best over epochs;
    ``metric_modes`` as in :func:`load_runs`, default none).

    Never raises for a bad run: ``error`` (one line, value None) when the run is not
    ``completed``, lacks the metric (lists what it has) or holds no number for it.
    """
    row = load_run(run_dir, metric_modes=metric_modes)
    if row["status"] != "completed":
        return None, f"run ended with status {row['status']}: {row['reason']}"
    res = Results(Path(run_dir), pd.DataFrame([row]))
    try:
        col = res.resolve_metric(metric)
    except KeyError as exc:
        return None, str(exc.args[0])
    value = row.get(col)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return None, f"metric {col} has no numeric value in {run_dir}"
    return float(value), None


def _numeric_if_possible(col: pd.Series) -> pd.Series:
    """Columns of numbers (and None) become float/int; mixed columns stay as they are."""
    if col.dtype != object:
        return col
    values = col.dropna()
    if len(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pd.to_numeric(col)
    return col
