"""Analysis of a folder of runs: rankings, heatmap tables, comparisons, recommendations, report.

Everything here works on the DataFrame of :func:`finetune_kit.experiments.results.load_runs` and on
column names (``config.learning_rate``, ``best.val_auroc``); use
:meth:`~finetune_kit.experiments.results.Results.resolve_metric` / ``resolve_param`` to turn the words a
user types into columns. Only completed runs are ranked; unfinished ones are listed in the
report with the reason.

Seeds: runs that differ only in their seed (``config.seed``, or any config column named
``seed``) form one *configuration*; recommendations give the mean, standard deviation
(sample, ``ddof=1``) and count over its seeds, and say when the runner-up is within noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from finetune_kit.experiments.metric_names import metric_mode, undeclared_message
from finetune_kit.experiments.results import Results

__all__ = [
    "Recommendation",
    "aggregate_configs",
    "build_report",
    "comparison_data",
    "fmt",
    "heatmap_data",
    "recommend",
    "resolve_mode",
    "seed_column",
    "short_name",
    "sorted_values",
    "top_k",
]


def resolve_mode(metric_col: str, mode: str | None, modes: Mapping[str, str] | None = None) -> str:
    """``mode`` if given, else the metric's direction as the tasks declare it in ``modes``
    (:func:`~finetune_kit.experiments.profiles.metric_directions`; default none).

    Raises:
        ValueError: ``mode`` is neither ``"max"`` nor ``"min"``, or it is None and ``modes``
            declares no direction for ``metric_col`` (the message says how to declare one).
    """
    if mode is None:
        declared = metric_mode(metric_col, modes)
        if declared is None:
            raise ValueError(undeclared_message(metric_col))
        return declared
    if mode not in ("max", "min"):
        raise ValueError(f"mode {mode!r}: use 'max' (higher is better) or 'min' (lower is better)")
    return mode


def fmt(v: Any) -> str:
    """Short text for a value in a table: 4 significant digits, e-notation for small numbers;
    ``-`` for a missing value (None, NaN), ``inf``/``-inf`` for infinities (a PSNR of a perfect
    reconstruction)."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def seed_column(df: pd.DataFrame) -> str | None:
    """The config column holding the random seed, or None when there is none."""
    for c in df.columns:
        if c.startswith("config.") and c.split(".")[-1] in ("seed", "random_seed"):
            return c
    return None


def _check_columns(df: pd.DataFrame, *cols: str | None) -> None:
    for c in cols:
        if c is not None and c not in df.columns:
            raise KeyError(f"column {c!r} not in the runs table; resolve names with Results.resolve_metric/"
                           "resolve_param first")


def short_name(col: str | None) -> str:
    """A column name as shown to people: a config column by its option name, the section dropped
    (``config.learning_rate`` and ``config.optim.learning_rate`` -> ``learning_rate``; option names are
    unique within a task's config); other columns unchanged; ``""`` for None."""
    if col is None:
        return ""
    return col.rsplit(".", 1)[1] if col.startswith("config.") else col


def sorted_values(values: Sequence[Any]) -> list[Any]:
    """Distinct-value lists (group values, heatmap axes) in order: NaN dropped, sorted by value,
    or by text when the values cannot be compared (mixed types)."""
    vals = [v for v in values if not (isinstance(v, (float, np.floating)) and math.isnan(v))]
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=str)


def _completed(df: pd.DataFrame, metric_col: str) -> pd.DataFrame:
    out = df[df["status"] == "completed"] if "status" in df.columns else df
    return out[out[metric_col].notna()]


def top_k(df: pd.DataFrame, metric_col: str, mode: str = "max", k: int = 5, group_col: str | None = None,
          params: Sequence[str] = (), extra: Sequence[str] = ()) -> pd.DataFrame:
    """The ``k`` best completed runs by ``metric_col`` (per group when ``group_col`` is given).

    Returns a DataFrame with ``[group_col,] rank, run, *params, metric_col, *extra`` (rank 1
    is best; ties keep the order of the runs table; ``extra`` are other metric columns shown
    beside it). Runs without a value for the metric are left out.

    Raises:
        KeyError: a column is missing. ValueError: bad ``mode`` or ``k < 1``.
    """
    mode = resolve_mode(metric_col, mode)
    if k < 1:
        raise ValueError(f"top-k={k}: must be at least 1")
    _check_columns(df, metric_col, group_col, *params, *extra)
    done = _completed(df, metric_col)
    cols = ([group_col] if group_col else []) + ["run", *[p for p in params if p != group_col], metric_col,
                                                 *[e for e in extra if e != metric_col]]
    done = done.sort_values(metric_col, ascending=(mode == "min"), kind="stable")
    if group_col:
        parts = []
        for g in sorted_values(done[group_col].dropna().unique()):
            part = done[done[group_col] == g].head(k)[cols].copy()
            part.insert(1, "rank", range(1, len(part) + 1))
            parts.append(part)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[group_col, "rank"] + cols[1:])
    out = done.head(k)[cols].copy()
    out.insert(0, "rank", range(1, len(out) + 1))
    return out.reset_index(drop=True)


def aggregate_configs(df: pd.DataFrame, metric_col: str, params: Sequence[str],
                      seed_col: str | None = None) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one run), count and seeds of ``metric_col`` per configuration.

    A configuration is a unique combination of ``params`` (the seed column excluded).
    Returns columns ``*params, mean, std, n, seeds, runs``.
    """
    params = [p for p in params if p != seed_col]
    _check_columns(df, metric_col, seed_col, *params)
    done = _completed(df, metric_col)
    if not params:
        done = done.assign(_all="all")
        params = ["_all"]
    rows = []
    for key, part in done.groupby(params, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        vals = part[metric_col].astype(float)
        rows.append({**dict(zip(params, key)), "mean": vals.mean(),
                     "std": vals.std(ddof=1) if len(vals) > 1 else float("nan"), "n": len(vals),
                     "seeds": ",".join(fmt(s) for s in part[seed_col]) if seed_col else "",
                     "runs": ",".join(part["run"])})
    out = pd.DataFrame(rows)
    return out.drop(columns=["_all"]) if "_all" in out.columns else out


@dataclass
class Recommendation:
    """Best configuration (of one group, or overall) by mean over seeds.

    Attributes:
        group: the group value (None overall). params: the configuration.
        mean, std, n: of the metric over the configuration's runs (std NaN when n == 1).
        runner_up: the second-best configuration's params and mean (None when alone).
        within_noise: True when the runner-up's mean lies within one std of the best
            (of either), i.e. the seeds do not separate them.
    """

    group: Any
    params: dict[str, Any]
    mean: float
    std: float
    n: int
    runner_up: dict[str, Any] | None = None
    runner_up_mean: float | None = None
    within_noise: bool | None = None
    runs: list[str] = field(default_factory=list)


def recommend(df: pd.DataFrame, metric_col: str, mode: str, params: Sequence[str],
              group_col: str | None = None, seed_col: str | None = None) -> list[Recommendation]:
    """One :class:`Recommendation` per group (or one overall) by mean of ``metric_col`` over seeds."""
    mode = resolve_mode(metric_col, mode)
    seed_col = seed_col if seed_col is not None else seed_column(df)
    params = [p for p in params if p not in (seed_col, group_col)]
    groups = [None] if not group_col else sorted_values(_completed(df, metric_col)[group_col].dropna().unique())
    recs = []
    for g in groups:
        part = df if g is None else df[df[group_col] == g]
        agg = aggregate_configs(part, metric_col, params, seed_col)
        if agg.empty:
            continue
        agg = agg.sort_values("mean", ascending=(mode == "min"), kind="stable").reset_index(drop=True)
        best = agg.iloc[0]
        rec = Recommendation(group=g, params={p: best[p] for p in params}, mean=float(best["mean"]),
                             std=float(best["std"]), n=int(best["n"]), runs=str(best["runs"]).split(","))
        if len(agg) > 1:
            second = agg.iloc[1]
            rec.runner_up = {p: second[p] for p in params}
            rec.runner_up_mean = float(second["mean"])
            spread = np.nanmax([best["std"], second["std"], 0.0])
            rec.within_noise = bool(spread > 0 and abs(best["mean"] - second["mean"]) <= spread) \
                if not (math.isnan(best["std"]) and math.isnan(second["std"])) else None
        recs.append(rec)
    return recs


def heatmap_data(df: pd.DataFrame, metric_col: str, x_col: str, y_col: str,
                 agg: str = "mean") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pivot of ``metric_col`` over two parameters: (values, counts).

    ``values.loc[y, x]`` is the ``agg`` (``mean``, ``median``, ``max`` or ``min``) of the
    completed runs with that pair of values (several seeds -> their mean); ``counts`` holds
    how many runs each cell aggregates. Rows (y) and columns (x) are sorted by value.

    Raises:
        KeyError: a column is missing. ValueError: ``x_col == y_col`` or unknown ``agg``.
    """
    _check_columns(df, metric_col, x_col, y_col)
    if x_col == y_col:
        raise ValueError(f"heatmap needs two different parameters, got {x_col} twice")
    if agg not in ("mean", "median", "max", "min"):
        raise ValueError(f"agg {agg!r}: use mean, median, max or min")
    done = _completed(df, metric_col)
    xs, ys = sorted_values(done[x_col].unique()), sorted_values(done[y_col].unique())
    grouped = done.groupby([y_col, x_col])[metric_col]
    values = grouped.agg(agg).unstack(x_col).reindex(index=ys, columns=xs)
    counts = grouped.size().unstack(x_col).reindex(index=ys, columns=xs).fillna(0).astype(int)
    return values, counts


def comparison_data(df: pd.DataFrame, metric_col: str, param_col: str,
                    group_col: str | None = None) -> pd.DataFrame:
    """Mean/std/count of ``metric_col`` per value of ``param_col`` (per group when given).

    Returns columns ``[group_col,] param_col, mean, std, n``, sorted by group then value.
    """
    _check_columns(df, metric_col, param_col, group_col)
    done = _completed(df, metric_col)
    keys = ([group_col] if group_col else []) + [param_col]
    out = done.groupby(keys, dropna=False)[metric_col].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n"}).sort_values(keys, kind="stable").reset_index(drop=True)


# -- report -------------------------------------------------------------------------------------
def _md_table(df: pd.DataFrame, rename: dict[str, str] | None = None) -> str:
    if df.empty:
        return "(no completed runs)\n"
    df = df.rename(columns=rename or {})
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v).replace("|", "/") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{short_name(k)}={fmt(v)}" for k, v in params.items()) or "(the only configuration)"


def build_report(results: Results, metric_col: str, mode: str, *, group_col: str | None = None,
                 k: int = 5, heatmaps: Sequence[tuple[str, str]] = (), compare_col: str | None = None,
                 figures: Sequence[str] = (), params: Sequence[str] | None = None,
                 extra: Sequence[str] = ()) -> str:
    """Markdown report: summary, top-k (per group; ``extra`` metric columns shown beside the
    ranked one), recommendations (overall and per group), heatmap tables, comparison,
    unfinished runs, and links to ``figures`` (paths relative to the report)."""
    mode = resolve_mode(metric_col, mode)
    df = results.df
    seed_col = seed_column(df)
    params = list(params) if params is not None else results.param_columns()
    shown = [p for p in params if p != seed_col] + ([seed_col] if seed_col in params else [])
    counts = df["status"].value_counts().to_dict()
    arrow = "higher is better" if mode == "max" else "lower is better"
    lines = [f"# Analysis of `{results.root}`", "",
             f"- runs: {len(df)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})",
             f"- metric: `{metric_col}` ({arrow})",
             f"- parameters that vary: {', '.join(f'`{short_name(p)}`' for p in params) or '(none)'}",
             f"- grouped by: `{short_name(group_col)}`" if group_col else "- grouped by: (no grouping)",
             f"- seeds: `{short_name(seed_col)}` ({df[seed_col].nunique()} distinct)" if seed_col
             else "- seeds: none recorded",
             ""]
    done = _completed(df, metric_col)
    left_out = len(df) - len(done)
    if left_out:
        why = {"without the metric": len(results.without_metric(metric_col)), "unfinished": len(results.incomplete)}
        lines.insert(lines.index("") if "" in lines else len(lines),
                     f"- left out of the ranking: {left_out} run(s) ("
                     + ", ".join(f"{n} {k}" for k, n in why.items() if n) + "; listed at the end)")
    if done.empty:
        lines += [f"No completed run has a value for `{metric_col}`.", ""]
    else:
        title = f"## Top {k} runs" + (f" per `{short_name(group_col)}`" if group_col else "")
        table = top_k(df, metric_col, mode, k, group_col, shown, extra)
        lines += [title, "", _md_table(table, {c: short_name(c) for c in table.columns})]
        lines += ["## Recommendations", ""]
        recs = recommend(df, metric_col, mode, params, None, seed_col)
        if group_col:
            recs += recommend(df, metric_col, mode, params, group_col, seed_col)
        for i, rec in enumerate(recs):
            where = f"**{short_name(group_col)}={fmt(rec.group)}**: " if rec.group is not None else \
                ("**overall**: " if group_col else "")
            spread = f" ± {fmt(rec.std)}" if not math.isnan(rec.std) else ""
            seeds = f" over {rec.n} runs/seeds" if rec.n > 1 else " (1 run: no spread available)"
            text = f"- {where}{_params_text(rec.params)} -> `{metric_col}` = {fmt(rec.mean)}{spread}{seeds}"
            if rec.runner_up is not None:
                text += f"; runner-up {_params_text(rec.runner_up)} at {fmt(rec.runner_up_mean)}"
                if rec.runner_up_mean == rec.mean:
                    text += " (a tie: more seeds or a finer metric needed to choose)"
                elif rec.within_noise:
                    text += " (within seed noise: run more seeds before choosing)"
            lines.append(text)
        lines.append("")
        for x_col, y_col in heatmaps:
            groups = [None] if not group_col or group_col in (x_col, y_col) else \
                sorted_values(done[group_col].dropna().unique())
            for g in groups:
                part = df if g is None else df[df[group_col] == g]
                values, n = heatmap_data(part, metric_col, x_col, y_col)
                suffix = f" ({short_name(group_col)}={fmt(g)})" if g is not None else ""
                title = f"## `{metric_col}`: `{short_name(y_col)}` (rows) x `{short_name(x_col)}` (columns)"
                lines += [title + suffix, "", _heatmap_md(values, n, x_col, y_col)]
        if compare_col:
            comp = comparison_data(df, metric_col, compare_col, group_col if group_col != compare_col else None)
            lines += [f"## `{metric_col}` against `{short_name(compare_col)}`", "",
                      _md_table(comp, {c: short_name(c) for c in comp.columns})]
    missing = results.without_metric(metric_col)
    if len(missing):
        lines += [f"## Completed runs without `{metric_col}` (not ranked)", "", "| run | reason |", "|---|---|"]
        lines += [f"| {r} | no value for `{metric_col}` in metrics.json, metrics.jsonl or a wandb summary |"
                  for r in missing["run"]]
        lines.append("")
    if results.incomplete:
        lines += ["## Unfinished runs (not ranked)", "", "| run | status | reason |", "|---|---|---|"]
        lines += [f"| {r.run} | {r.status} | {r.reason.replace('|', '/')} |" for r in results.incomplete]
        lines.append("")
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _heatmap_md(values: pd.DataFrame, counts: pd.DataFrame, x_col: str, y_col: str) -> str:
    head = f"| {short_name(y_col)} \\ {short_name(x_col)} | " + " | ".join(fmt(c) for c in values.columns) + " |"
    sep = "|" + "|".join("---" for _ in range(len(values.columns) + 1)) + "|"
    rows = []
    for y in values.index:
        cells = []
        for x in values.columns:
            v, n = values.loc[y, x], counts.loc[y, x]
            cells.append(fmt(v) + (f" (n={n})" if n > 1 else ""))
        rows.append(f"| {fmt(y)} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows]) + "\n"
