"""``analyze`` as one call: load a folder of runs, resolve what the user asked for, draw the
figures and write the report (what ``finetune-kit analyze`` runs; usable from a notebook).

:func:`analyze_runs` takes the user's words (``metric="test_auroc"``, ``group_by="strategy"``,
``where=["lambda=0.0018"]``) and the tasks' knowledge (metric candidates, curve keys, declared
directions: see :mod:`finetune_kit.experiments.profiles`), and writes into ``output``:
``runs.csv``, the figures and ``report.md``. A sweep folder's Optuna study joins the report.
Input it cannot honour (no runs, an unknown metric or parameter, a ``--where`` no run matches,
a metric without a declared direction and no ``mode``) is an :class:`AnalysisError` with one line
before anything is written.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from finetune_kit.experiments import analysis
from finetune_kit.experiments.metric_names import epoch_key
from finetune_kit.experiments.plots import plot_comparison, plot_curves, plot_heatmap
from finetune_kit.experiments.results import Results, load_runs
from finetune_kit.experiments.study_report import find_study, join_trials, study_figures, study_section
from finetune_kit.experiments.sweep.space import parse_value
from finetune_kit.runs.status import STALE_AFTER_S

__all__ = ["AnalysisError", "AnalysisResult", "analyze_runs", "apply_where"]


class AnalysisError(ValueError):
    """Input ``analyze`` cannot honour; the message is one line naming the input and the fix."""


@dataclass
class AnalysisResult:
    """What :func:`analyze_runs` wrote.

    Attributes:
        report: the markdown report (also in ``output/report.md``).
        output: the folder written. metric_col: the ranked column (``final.test_auroc``).
        mode: ``"max"`` or ``"min"``. figures: file names of the figures, in ``output``.
    """

    report: str
    output: Path
    metric_col: str
    mode: str
    figures: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")


def apply_where(results: Results, where: Sequence[str]) -> Results:
    """Keep the runs matching every ``PARAM=VALUE`` of ``where`` (``VALUE`` read as JSON where it
    parses; numbers compared with a relative tolerance of 1e-6, other values as text).

    Raises:
        ValueError: an item without ``=``, or a value no run has (lists the values present).
        KeyError: an unknown parameter (from :meth:`Results.resolve_param`).
    """
    df = results.df
    for cond in where:
        if "=" not in cond:
            raise ValueError(f"--where {cond!r}: expected PARAM=VALUE, e.g. --where lambda=0.0018")
        key, _, raw = cond.partition("=")
        col = results.resolve_param(key.strip())
        value = parse_value(raw)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            num = df[col].apply(lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan)
            mask = np.isclose(num.to_numpy(dtype=float), float(value), rtol=1e-6, atol=0)
        else:
            mask = df[col].astype(str) == str(value)
        if not mask.any():
            values = ", ".join(sorted({str(v) for v in df[col].dropna()}))
            raise ValueError(f"--where {cond}: no run has {col}={raw}; values present: {values}")
        df = df[mask]
    results.df = df
    results.incomplete = [r for r in results.incomplete if r.run in set(df["run"])]
    return results


def _default_metric(results: Results, runs_dir: Path, candidates: Sequence[str]) -> str:
    for cand in candidates:
        try:
            return results.resolve_metric(cand)
        except KeyError:
            continue
    raise KeyError(f"no default metric found in {runs_dir}: pass --metric; available metric columns: "
                   f"{', '.join(results.metric_columns()) or '(none)'}")


def _heatmaps(results: Results, out: Path, metric_col: str, mode: str, maps: list[tuple[str, str]],
              group_col: str | None) -> list[str]:
    """One heatmap per pair (and per group value with ``group_col``); returns the file names."""
    short, figures = analysis.short_name, []
    for x_col, y_col in maps:
        groups: list[Any] = [None]
        if group_col and group_col not in (x_col, y_col):
            groups = analysis.sorted_values(results.completed[group_col].dropna().unique())
        for g in groups:
            part = results.df if g is None else results.df[results.df[group_col] == g]
            values, counts = analysis.heatmap_data(part, metric_col, x_col, y_col)
            if values.empty:
                continue
            suffix = f"_{short(group_col)}={analysis.fmt(g)}" if g is not None else ""
            name = _slug(f"heatmap_{metric_col}_{short(y_col)}_x_{short(x_col)}{suffix}") + ".png"
            title = f"{metric_col} ({'higher' if mode == 'max' else 'lower'} is better)" + \
                (f", {short(group_col)}={analysis.fmt(g)}" if g is not None else "")
            plot_heatmap(values, out / name, counts=counts, metric=metric_col, mode=mode, title=title,
                         x_label=short(x_col), y_label=short(y_col))
            figures.append(name)
    return figures


def _curve_key(results: Results, metric_col: str, curves: str | None, candidates: Sequence[str]) -> str | None:
    """``curves`` when given, else the metric's per-epoch key or the first curve candidate logged."""
    if curves is not None:
        return curves
    return next((c for c in (epoch_key(metric_col), *candidates) if f"last.{c}" in results.df.columns), None)


def analyze_runs(runs_dir: str | os.PathLike, *, metric: str | None = None, mode: str | None = None,
                 group_by: str | None = None, top_k: int = 5, heatmap: Sequence[str] | None = None,
                 compare_param: str | None = None, also: Sequence[str] = (), where: Sequence[str] = (),
                 curves: str | None = None, output: str | os.PathLike | None = None,
                 stale_after_min: float = STALE_AFTER_S / 60, storage: str | None = None,
                 study_name: str | None = None, metric_candidates: Sequence[str] = (),
                 curve_candidates: Sequence[str] = (), metric_modes: dict[str, str] | None = None,
                 metric_renames: Sequence[tuple[Sequence[str], Mapping[str, str]]] = ()) -> AnalysisResult:
    """Rank the runs under ``runs_dir``, draw heatmaps, a comparison and curves, recommend
    settings and write ``report.md`` and ``runs.csv`` (see ``docs/analysis.md``).

    Args:
        runs_dir: folder of run folders (``runs/``, a compare or sweep folder).
        metric: name or column to rank by; default the first of ``metric_candidates`` present.
        mode: ``"max"``/``"min"``; default the direction ``metric_modes`` declares for the metric.
        group_by: parameter to group by (top-k, recommendations, heatmaps per value).
        top_k: runs listed per group (>= 1). Default 5.
        heatmap: ``(PARAM_X, PARAM_Y)``: heatmap of the metric over two parameters.
        compare_param: plot the metric against this parameter, one line per group.
        also: other metrics shown beside the ranked one in the top-k tables.
        where: ``PARAM=VALUE`` filters (:func:`apply_where`).
        curves: per-epoch key drawn for every run; default the metric's per-epoch key, else the
            first of ``curve_candidates`` logged.
        output: folder for the report, table and figures; default ``runs_dir/analysis``.
        stale_after_min: minutes without writes after which a ``running`` run whose process
            cannot be checked is reported crashed. Default 30.
        storage / study_name: the Optuna storage and study of a sweep folder (default: its
            ``optuna.db``, the only study or the one named like the folder).
        metric_candidates / curve_candidates / metric_modes / metric_renames: what the tasks declare
            (:mod:`finetune_kit.experiments.profiles`).

    Returns:
        :class:`AnalysisResult` (the report, the folder, the metric column, the mode, the figures).

    Raises:
        AnalysisError: no runs, an unknown metric/parameter, a bad ``where``, ``top_k < 1``, or no
            direction for the metric (one line; nothing written).
    """
    runs_dir = Path(runs_dir)
    try:
        if top_k < 1:
            raise ValueError(f"--top-k {top_k}: must be at least 1")
        study = find_study(runs_dir, storage, study_name)
        results = load_runs(runs_dir, stale_after_s=stale_after_min * 60, metric_modes=metric_modes,
                            metric_renames=metric_renames)
        if study is not None:
            results.df = join_trials(results.df, study)
        if where:
            results = apply_where(results, where)
        metric_col = results.resolve_metric(metric) if metric else _default_metric(results, runs_dir, metric_candidates)
        mode = analysis.resolve_mode(metric_col, mode, metric_modes)
        group_col = results.resolve_param(group_by) if group_by else None
        if heatmap is not None and len(heatmap) != 2:
            raise ValueError(f"--heatmap {' '.join(heatmap)}: give two parameters, PARAM_X PARAM_Y")
        maps = [(results.resolve_param(heatmap[0]), results.resolve_param(heatmap[1]))] if heatmap else []
        compare_col = results.resolve_param(compare_param) if compare_param else None
        extra = [results.resolve_metric(a) for a in also]
        results.fill_from_wandb(metric_col)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise AnalysisError(str(exc.args[0]) if exc.args else str(exc)) from None

    out = Path(output) if output is not None else runs_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    results.df.to_csv(out / "runs.csv", index=False)
    figures = _heatmaps(results, out, metric_col, mode, maps, group_col)
    if compare_col:
        gcol = group_col if group_col != compare_col else None
        comp = analysis.comparison_data(results.df, metric_col, compare_col, gcol)
        if not comp.empty:
            name = _slug(f"compare_{metric_col}_vs_{analysis.short_name(compare_col)}") + ".png"
            plot_comparison(comp, compare_col, out / name, group_col=gcol, metric=metric_col, mode=mode)
            figures.append(name)
    curve_key = _curve_key(results, metric_col, curves, curve_candidates)
    if curve_key:
        name = _slug(f"curves_{curve_key}") + ".png"
        params = [c for c in results.param_columns() if c != group_col][:3]
        if plot_curves(results.df, curve_key, out / name, group_col=group_col, label_cols=params):
            figures.append(name)
    report = analysis.build_report(results, metric_col, mode, group_col=group_col, k=top_k, heatmaps=maps,
                                   compare_col=compare_col, figures=figures, extra=extra)
    if study is not None:
        drawn = study_figures(study, out)
        figures += drawn
        report = report.rstrip("\n") + "\n\n" + study_section(study, drawn)
    (out / "report.md").write_text(report)
    return AnalysisResult(report=report, output=out, metric_col=metric_col, mode=mode, figures=figures)
